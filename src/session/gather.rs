//! One vectored write of the queued frames, with runs of small frames copied together.
//!
//! The kernel's cost of a `writev` grows with the number of segments as well as with the bytes:
//! for frames of a few dozen bytes, walking the iovec array costs more than copying the bytes.
//! So consecutive small frames are copied into one contiguous piece of a per-thread scratch
//! buffer (uWebSockets' cork buffer, without keeping it per connection), and large frames are
//! still handed over by reference. The bytes written, in order, are exactly those of the frames:
//! the caller accounts for a (partial) write against its queue as if every frame had been its
//! own segment, and an idle connection still keeps no write buffer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use super::outbox::Chunk;

/// Segments of one vectored write at most (Linux allows 1024 iovecs).
const MAX_IOV: usize = 512;
/// Frames up to this size are copied next to their small neighbours.
const SMALL_FRAME: usize = 512;
/// Bytes copied per write at most; further small frames go by reference.
const SCRATCH_BYTES: usize = 64 << 10;

thread_local! {
    /// Scratch space for the copied runs and the plan, reused by every session this thread
    /// polls.
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { bytes: Vec::new(), segments: Vec::new() })
    };
}

struct Scratch {
    bytes: Vec<u8>,
    segments: Vec<Segment>,
}

/// One segment of the write: a range of the scratch buffer, or a frame by index.
#[derive(Clone, Copy)]
enum Segment {
    Copied(u32, u32),
    Frame(u32),
}

/// Writes the front of `frames` with one vectored write; the result is that of the write.
pub(crate) fn poll_write<S: AsyncWrite + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    frames: &VecDeque<Chunk>,
) -> Poll<io::Result<usize>> {
    if frames.len() == 1 {
        return Pin::new(io).poll_write(cx, &frames[0]);
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            let Scratch { bytes, segments } = &mut *scratch;
            plan(frames, bytes, segments);
            // Usually a few segments: a small array is cheaper to set up.
            if segments.len() <= FEW {
                write_segments::<S, FEW>(io, cx, frames, bytes, segments)
            } else {
                write_segments::<S, MAX_IOV>(io, cx, frames, bytes, segments)
            }
        }
        // Only if a stream's write re-entered another session's write on this thread: the
        // front frame alone, as for a single frame.
        Err(_) => Pin::new(io).poll_write(cx, &frames[0]),
    })
}

/// Segments that fit the small array of [`poll_write`].
const FEW: usize = 16;

fn write_segments<S: AsyncWrite + Unpin, const N: usize>(
    io: &mut S,
    cx: &mut Context<'_>,
    frames: &VecDeque<Chunk>,
    bytes: &[u8],
    segments: &[Segment],
) -> Poll<io::Result<usize>> {
    let mut slices = [IoSlice::new(&[]); N];
    for (slot, segment) in slices.iter_mut().zip(segments) {
        *slot = IoSlice::new(match *segment {
            Segment::Copied(start, end) => &bytes[start as usize..end as usize],
            Segment::Frame(i) => &frames[i as usize],
        });
    }
    Pin::new(io).poll_write_vectored(cx, &slices[..segments.len().min(N)])
}

/// Splits the front of `frames` into `segments`, copying runs of small frames into `scratch`.
/// The segments cover a prefix of `frames`, in order, in at most [`MAX_IOV`] segments.
fn plan(frames: &VecDeque<Chunk>, scratch: &mut Vec<u8>, segments: &mut Vec<Segment>) {
    scratch.clear();
    segments.clear();
    // The open run of small frames: its first frame and its start in `scratch`.
    let mut run: Option<(usize, usize)> = None;
    // Offsets fit in u32: the scratch holds at most SCRATCH_BYTES, the queue fewer frames.
    let close = |(first, start): (usize, usize), scratch: &mut Vec<u8>| {
        if scratch.len() - start == frames[first].len() {
            // A run of one frame: no need for the copy.
            scratch.truncate(start);
            Segment::Frame(first as u32)
        } else {
            Segment::Copied(start as u32, scratch.len() as u32)
        }
    };
    for (i, frame) in frames.iter().enumerate() {
        let small = frame.len() <= SMALL_FRAME && scratch.len() + frame.len() <= SCRATCH_BYTES;
        if small && run.is_some() {
            scratch.extend_from_slice(frame);
            continue;
        }
        // This frame needs a segment of its own (and the open run one more).
        if segments.len() + 1 + usize::from(run.is_some()) > MAX_IOV {
            break;
        }
        if let Some(open) = run.take() {
            segments.push(close(open, scratch));
        }
        if small {
            run = Some((i, scratch.len()));
            scratch.extend_from_slice(frame);
        } else {
            segments.push(Segment::Frame(i as u32));
        }
    }
    if let Some(open) = run {
        segments.push(close(open, scratch));
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// The bytes the segments stand for, concatenated, and how many frames they cover.
    fn planned(frames: &VecDeque<Chunk>) -> (Vec<u8>, usize, usize) {
        let mut scratch = Vec::new();
        let mut segments = Vec::new();
        plan(frames, &mut scratch, &mut segments);
        let mut bytes = Vec::new();
        for segment in &segments {
            match *segment {
                Segment::Copied(a, b) => bytes.extend_from_slice(&scratch[a as usize..b as usize]),
                Segment::Frame(i) => bytes.extend_from_slice(&frames[i as usize]),
            }
        }
        (bytes, segments.len(), scratch.len())
    }

    fn frames(sizes: &[usize]) -> VecDeque<Chunk> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| Chunk::one(Bytes::from(vec![i as u8; len])))
            .collect()
    }

    fn concat(frames: &VecDeque<Chunk>, count: usize) -> Vec<u8> {
        frames.iter().take(count).flat_map(|f| f.to_vec()).collect()
    }

    #[test]
    fn random_queues_are_planned_as_an_exact_prefix_within_the_limits() {
        let mut random = crate::session::test_random();
        let mut next = move |bound: usize| random(bound as u64) as usize;
        for _ in 0..200 {
            let count = 1 + next(1500);
            // Mostly small frames, some large, with the mix varying from queue to queue.
            let large_percent = next(40);
            let sizes: Vec<usize> = (0..count)
                .map(|_| {
                    if next(100) < large_percent {
                        SMALL_FRAME + 1 + next(3000)
                    } else {
                        1 + next(SMALL_FRAME)
                    }
                })
                .collect();
            let f = frames(&sizes);
            let (bytes, segments, copied) = planned(&f);
            assert!((1..=MAX_IOV).contains(&segments));
            assert!(copied <= SCRATCH_BYTES);
            // The segments end on a frame boundary and cover at least one frame per segment.
            let mut covered = 0;
            let mut len = 0;
            while len < bytes.len() {
                len += f[covered].len();
                covered += 1;
            }
            assert_eq!(len, bytes.len());
            assert!(covered >= segments);
            // Only the segment limit ends a plan early.
            assert!(covered == count || segments >= MAX_IOV - 1);
            assert_eq!(bytes, concat(&f, covered));
        }
    }

    #[test]
    fn small_frames_become_one_segment_and_large_ones_stay_by_reference() {
        let f = frames(&[40, 50, 60, 4000, 70, 80, 5000]);
        let (bytes, segments, copied) = planned(&f);
        assert_eq!(bytes, concat(&f, f.len()));
        assert_eq!(segments, 4);
        assert_eq!(copied, 40 + 50 + 60 + 70 + 80);
    }

    #[test]
    fn a_lone_small_frame_is_not_copied() {
        let f = frames(&[4000, 30, 5000, 20]);
        let (bytes, segments, copied) = planned(&f);
        assert_eq!(bytes, concat(&f, f.len()));
        assert_eq!(segments, 4);
        assert_eq!(copied, 0);
    }

    #[test]
    fn the_scratch_limit_sends_further_small_frames_by_reference() {
        let count = SCRATCH_BYTES / SMALL_FRAME + 10;
        let f = frames(&vec![SMALL_FRAME; count]);
        let (bytes, segments, copied) = planned(&f);
        assert_eq!(bytes, concat(&f, count));
        assert_eq!(copied, SCRATCH_BYTES);
        assert_eq!(segments, 1 + 10);
    }

    #[test]
    fn the_segment_limit_covers_a_prefix_of_the_queue() {
        // Alternating large and small frames need one segment each.
        let sizes: Vec<usize> = (0..2 * MAX_IOV).map(|i| [600, 10][i % 2]).collect();
        let f = frames(&sizes);
        let (bytes, segments, _) = planned(&f);
        assert_eq!(segments, MAX_IOV);
        assert_eq!(bytes, concat(&f, MAX_IOV));
    }

    #[test]
    fn a_run_that_fills_the_last_segment_is_closed_there() {
        let mut sizes = vec![600; MAX_IOV - 1];
        sizes.extend([10, 20, 30, 600]);
        let f = frames(&sizes);
        let (bytes, segments, copied) = planned(&f);
        assert_eq!(segments, MAX_IOV);
        assert_eq!(copied, 60);
        assert_eq!(bytes, concat(&f, MAX_IOV + 2));
    }
}
