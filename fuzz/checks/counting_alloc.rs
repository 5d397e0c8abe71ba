//! A global allocator that attributes memory to the code that allocated it.
//!
//! Every allocation carries a small header recording whether it was made while this thread
//! was counting ([`MemProbe::start`]..[`MemProbe::stop`]). Freeing a counted allocation
//! subtracts it again, wherever and whenever that happens, so the running total is exactly
//! the memory still alive out of what the counted code allocated. Used by the `frame_decode`
//! fuzz binary only (the main crate forbids `unsafe`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use crate::check::MemProbe;

/// Header in front of every allocation: at least 16 bytes, and the allocation's alignment.
const HEADER: usize = 16;

/// Marks a counted allocation in its header.
const COUNTED: usize = 0xC0C0_C0C0;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The allocator; install with `#[global_allocator]`.
pub(crate) struct Counting;

fn outer(layout: Layout) -> (Layout, usize) {
    let offset = HEADER.max(layout.align());
    let outer = Layout::from_size_align(layout.size() + offset, offset)
        .expect("allocation size overflows with the counting header");
    (outer, offset)
}

fn add(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every block comes from `System` with a layout that has room for the header in front
// of the caller's block, at the caller's alignment; `dealloc` recomputes the same layout from
// the caller's layout, as `GlobalAlloc` guarantees it is passed the layout used to allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (outer, offset) = outer(layout);
        // SAFETY: `outer` has a non-zero size (it includes the header).
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        let counted = COUNTING.try_with(Cell::get).unwrap_or(false);
        if counted {
            add(layout.size() as isize);
        }
        // SAFETY: `offset >= 16`, so the word before the caller's block is inside `outer`, and
        // `offset` is a multiple of 16, so that word is aligned.
        unsafe {
            let user = base.add(offset);
            (user.sub(std::mem::size_of::<usize>()) as *mut usize).write(if counted {
                COUNTED
            } else {
                0
            });
            user
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (outer, offset) = outer(layout);
        // SAFETY: `ptr` came from `alloc` above with this layout, so the header word is ours.
        let mark = unsafe { (ptr.sub(std::mem::size_of::<usize>()) as *const usize).read() };
        if mark == COUNTED {
            add(-(layout.size() as isize));
        }
        // SAFETY: `ptr - offset` is the block `System` returned for `outer`.
        unsafe { System.dealloc(ptr.sub(offset), outer) }
    }
}

/// The [`MemProbe`] backed by [`Counting`].
pub(crate) struct Probe;

impl MemProbe for Probe {
    fn reset(&self) {
        LIVE.with(|l| l.set(0));
        PEAK.with(|p| p.set(0));
    }

    fn start(&self) {
        PEAK.with(|p| p.set(LIVE.with(Cell::get)));
        COUNTING.with(|c| c.set(true));
    }

    fn stop(&self) -> (isize, isize) {
        COUNTING.with(|c| c.set(false));
        (LIVE.with(Cell::get), PEAK.with(Cell::get))
    }
}
