//! A set of clients published as an immutable, segmented snapshot.
//!
//! Publishers [`load`](MemberSet::load) the current [`Snapshot`] from an [`ArcSwap`] without
//! taking any lock and walk it. Writers (join/leave) are serialised by a mutex and publish a new
//! snapshot. To keep a join storm on one channel from costing O(n²), the snapshot is split into
//! segments of at most [`SEGMENT`] members: a change copies one or two segments plus the list of
//! segment pointers, O(SEGMENT + n/SEGMENT), and every other segment is shared with the previous
//! snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;

use crate::hub::client::ClientShared;

/// Members per segment. 256 keeps both a segment copy and the pointer list short up to
/// ~65k members (where n/SEGMENT reaches SEGMENT).
pub(crate) const SEGMENT: usize = 256;

type Segment = Arc<[Arc<ClientShared>]>;

/// An immutable view of the members at one point in time.
#[derive(Default)]
pub(crate) struct Snapshot {
    /// All segments are full except possibly the last; none is empty.
    segments: Vec<Segment>,
    len: usize,
}

impl Snapshot {
    /// Number of members.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every member, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<ClientShared>> {
        self.segments.iter().flat_map(|s| s.iter())
    }
}

/// Where a member sits in the current snapshot.
#[derive(Clone, Copy)]
struct Slot {
    segment: usize,
    pos: usize,
}

/// A set of clients keyed by client id.
pub(crate) struct MemberSet {
    /// The published snapshot; replaced (never mutated) by writers holding `index`.
    snapshot: ArcSwap<Snapshot>,
    /// Client id → slot in `snapshot`. The mutex also serialises writers, so the snapshot a
    /// writer loads is always the one the index describes.
    index: Mutex<HashMap<u64, Slot>>,
}

impl MemberSet {
    pub(crate) fn new() -> Self {
        MemberSet {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            index: Mutex::default(),
        }
    }

    fn index(&self) -> MutexGuard<'_, HashMap<u64, Slot>> {
        // The index is only mutated after the new snapshot is fully built, so a panic while
        // holding the lock cannot leave it inconsistent: recovering from poison is sound.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current snapshot, without locking. Holding it keeps that version alive.
    pub(crate) fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Number of members.
    pub(crate) fn len(&self) -> usize {
        self.snapshot.load().len
    }

    /// The member with this id, if present.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<ClientShared>> {
        let index = self.index();
        let slot = *index.get(&id)?;
        let snap = self.snapshot.load();
        Some(Arc::clone(&snap.segments[slot.segment][slot.pos]))
    }

    /// Adds `client`; returns `false` if it was already a member.
    pub(crate) fn insert(&self, client: &Arc<ClientShared>) -> bool {
        let mut index = self.index();
        if index.contains_key(&client.id) {
            return false;
        }
        let cur = self.snapshot.load_full();
        let mut segments = cur.segments.clone();
        let slot = match segments.last_mut() {
            Some(last) if last.len() < SEGMENT => {
                let mut grown = Vec::with_capacity(last.len() + 1);
                grown.extend(last.iter().cloned());
                grown.push(Arc::clone(client));
                let pos = last.len();
                *last = grown.into();
                Slot {
                    segment: segments.len() - 1,
                    pos,
                }
            }
            _ => {
                segments.push(Arc::from([Arc::clone(client)]));
                Slot {
                    segment: segments.len() - 1,
                    pos: 0,
                }
            }
        };
        self.snapshot.store(Arc::new(Snapshot {
            segments,
            len: cur.len + 1,
        }));
        index.insert(client.id, slot);
        true
    }

    /// Removes the member with this id; returns `false` if it was not a member.
    ///
    /// The hole is filled with the last member of the last segment, so every segment but the
    /// last stays full.
    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut index = self.index();
        let Some(&slot) = index.get(&id) else {
            return false;
        };
        let cur = self.snapshot.load_full();
        let mut segments = cur.segments.clone();
        let last_seg = segments.len() - 1;
        let mut last: Vec<_> = segments[last_seg].to_vec();
        let moved = last.pop().expect("segments are never empty");
        let moved_slot = if slot.segment == last_seg {
            if slot.pos < last.len() {
                last[slot.pos] = Arc::clone(&moved);
                Some(slot)
            } else {
                None // the removed member was the last one
            }
        } else {
            let mut hole: Vec<_> = segments[slot.segment].to_vec();
            hole[slot.pos] = Arc::clone(&moved);
            segments[slot.segment] = hole.into();
            Some(slot)
        };
        if last.is_empty() {
            segments.pop();
        } else {
            segments[last_seg] = last.into();
        }
        self.snapshot.store(Arc::new(Snapshot {
            segments,
            len: cur.len - 1,
        }));
        index.remove(&id);
        if let Some(s) = moved_slot {
            index.insert(moved.id, s);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn ids(set: &MemberSet) -> Vec<u64> {
        let mut v: Vec<u64> = set.load().iter().map(|c| c.id).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn matches_a_hash_set_model_across_segment_boundaries() {
        let set = MemberSet::new();
        let clients: Vec<_> = (0..3 * SEGMENT as u64 + 7)
            .map(ClientShared::for_test)
            .collect();
        let mut model = HashSet::new();
        // A deterministic pseudo-random walk of inserts and removes.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let c = &clients[(x % clients.len() as u64) as usize];
            if x & (1 << 40) == 0 {
                assert_eq!(set.insert(c), model.insert(c.id));
            } else {
                assert_eq!(set.remove(c.id), model.remove(&c.id));
            }
            assert_eq!(set.len(), model.len());
        }
        let mut expected: Vec<_> = model.iter().copied().collect();
        expected.sort_unstable();
        assert_eq!(ids(&set), expected);
        for c in &clients {
            assert_eq!(set.get(c.id).map(|m| m.id), model.get(&c.id).copied());
        }
        let snap = set.load();
        let n = snap.segments.len();
        for (i, s) in snap.segments.iter().enumerate() {
            assert!(!s.is_empty());
            assert!(
                i + 1 == n || s.len() == SEGMENT,
                "only the last segment may be partial"
            );
        }
    }

    #[test]
    fn a_loaded_snapshot_is_immutable() {
        let set = MemberSet::new();
        let a = ClientShared::for_test(1);
        let b = ClientShared::for_test(2);
        set.insert(&a);
        let before = set.load();
        set.insert(&b);
        set.remove(1);
        assert_eq!(before.iter().map(|c| c.id).collect::<Vec<_>>(), [1]);
        assert_eq!(ids(&set), [2]);
    }
}
