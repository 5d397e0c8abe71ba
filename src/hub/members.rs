//! A set of clients published as an immutable, segmented snapshot.
//!
//! Publishers [`load`](MemberSet::load) the current [`Snapshot`] from an [`ArcSwap`] without
//! taking any lock and walk it. Writers (join/leave) are serialised by a mutex and publish a new
//! snapshot. To keep a join storm on one channel (or a connection storm on the set of all
//! clients) from costing O(n²), the snapshot is a two-level tree: segments of at most
//! [`SEGMENT`] members, grouped in pages of at most [`PAGE`] segments. A change copies one or
//! two segments, their pages and the list of pages, O(SEGMENT + PAGE + n / (SEGMENT × PAGE)),
//! and shares everything else with the previous snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;

use crate::hub::client::ClientShared;

/// Members per segment.
#[cfg(not(test))]
pub(crate) const SEGMENT: usize = 256;
/// Segments per page: with [`SEGMENT`], a page holds 16,384 members, and the list of pages
/// stays under 64 up to a million members.
#[cfg(not(test))]
pub(crate) const PAGE: usize = 64;
// Small in unit tests, so that a few dozen members cross every boundary.
#[cfg(test)]
pub(crate) const SEGMENT: usize = 8;
#[cfg(test)]
pub(crate) const PAGE: usize = 4;

type Segment = Arc<[Arc<ClientShared>]>;
type Page = Arc<[Segment]>;

/// An immutable view of the members at one point in time.
#[derive(Default)]
pub(crate) struct Snapshot {
    /// All pages are full (of full segments) except possibly the last; within the last page,
    /// all segments are full except possibly the last. No page or segment is empty.
    pages: Vec<Page>,
    len: usize,
}

impl Snapshot {
    /// Number of members.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every member, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<ClientShared>> {
        self.pages
            .iter()
            .flat_map(|p| p.iter())
            .flat_map(|s| s.iter())
    }
}

/// Where a member sits in the current snapshot.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Slot {
    page: usize,
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

/// `page` with its segment `i` replaced by `segment` (a copy of the page's pointers).
fn with_segment(page: &Page, i: usize, segment: Segment) -> Page {
    let mut segments = page.to_vec();
    segments[i] = segment;
    segments.into()
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
        Some(Arc::clone(&snap.pages[slot.page][slot.segment][slot.pos]))
    }

    /// Adds `client`; returns `false` if it was already a member.
    pub(crate) fn insert(&self, client: &Arc<ClientShared>) -> bool {
        let mut index = self.index();
        if index.contains_key(&client.id) {
            return false;
        }
        let cur = self.snapshot.load_full();
        let mut pages = cur.pages.clone();
        let alone: Segment = Arc::from([Arc::clone(client)]);
        let slot = match pages.last_mut() {
            None => {
                pages.push(Arc::from([alone]));
                Slot {
                    page: 0,
                    segment: 0,
                    pos: 0,
                }
            }
            Some(page) => {
                let page_no = cur.pages.len() - 1;
                let last = page.len() - 1;
                let segment = &page[last];
                if segment.len() < SEGMENT {
                    let mut grown = Vec::with_capacity(segment.len() + 1);
                    grown.extend(segment.iter().cloned());
                    grown.push(Arc::clone(client));
                    let pos = segment.len();
                    *page = with_segment(page, last, grown.into());
                    Slot {
                        page: page_no,
                        segment: last,
                        pos,
                    }
                } else if page.len() < PAGE {
                    let mut segments = page.to_vec();
                    segments.push(alone);
                    *page = segments.into();
                    Slot {
                        page: page_no,
                        segment: last + 1,
                        pos: 0,
                    }
                } else {
                    pages.push(Arc::from([alone]));
                    Slot {
                        page: page_no + 1,
                        segment: 0,
                        pos: 0,
                    }
                }
            }
        };
        self.snapshot.store(Arc::new(Snapshot {
            pages,
            len: cur.len + 1,
        }));
        index.insert(client.id, slot);
        true
    }

    /// Removes the member with this id; returns `false` if it was not a member.
    ///
    /// The hole is filled with the very last member, so every segment and page but the last
    /// stays full.
    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut index = self.index();
        let Some(&slot) = index.get(&id) else {
            return false;
        };
        let cur = self.snapshot.load_full();
        let mut pages = cur.pages.clone();
        // Take the last member out.
        let last_page = pages.len() - 1;
        let last_segment = pages[last_page].len() - 1;
        let mut tail: Vec<_> = pages[last_page][last_segment].to_vec();
        let moved = tail.pop().expect("segments are never empty");
        let moved_from = Slot {
            page: last_page,
            segment: last_segment,
            pos: tail.len(),
        };
        if !tail.is_empty() {
            pages[last_page] = with_segment(&pages[last_page], last_segment, tail.into());
        } else if last_segment > 0 {
            pages[last_page] = pages[last_page][..last_segment].into();
        } else {
            pages.pop();
        }
        // Fill the hole with it, unless it was the member removed.
        let refilled = slot != moved_from;
        if refilled {
            let page = &pages[slot.page];
            let mut hole: Vec<_> = page[slot.segment].to_vec();
            hole[slot.pos] = Arc::clone(&moved);
            pages[slot.page] = with_segment(page, slot.segment, hole.into());
        }
        self.snapshot.store(Arc::new(Snapshot {
            pages,
            len: cur.len - 1,
        }));
        index.remove(&id);
        if refilled {
            index.insert(moved.id, slot);
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

    /// The set holds exactly `model`, `get` finds every member, and the tree is packed.
    fn check(set: &MemberSet, model: &HashSet<u64>, clients: &[Arc<ClientShared>]) {
        assert_eq!(set.len(), model.len());
        let mut expected: Vec<_> = model.iter().copied().collect();
        expected.sort_unstable();
        assert_eq!(ids(set), expected);
        for c in clients {
            assert_eq!(set.get(c.id).map(|m| m.id), model.get(&c.id).copied());
        }
        let snap = set.load();
        let pages = snap.pages.len();
        for (p, page) in snap.pages.iter().enumerate() {
            assert!(!page.is_empty());
            assert!(
                p + 1 == pages || page.len() == PAGE,
                "only the last page may be partial"
            );
            for (i, s) in page.iter().enumerate() {
                assert!(!s.is_empty());
                assert!(
                    p + 1 == pages && i + 1 == page.len() || s.len() == SEGMENT,
                    "only the very last segment may be partial"
                );
            }
        }
    }

    #[test]
    fn matches_a_hash_set_model_across_segment_and_page_boundaries() {
        let set = MemberSet::new();
        let clients: Vec<_> = (0..(3 * SEGMENT * PAGE + 7) as u64)
            .map(ClientShared::for_test)
            .collect();
        let mut model = HashSet::new();
        // A deterministic pseudo-random walk of inserts and removes, then everybody in and
        // everybody out (in a scrambled order), checked after every step.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5_000 {
            let r = next();
            let c = &clients[(r % clients.len() as u64) as usize];
            if r & (1 << 40) == 0 {
                assert_eq!(set.insert(c), model.insert(c.id));
            } else {
                assert_eq!(set.remove(c.id), model.remove(&c.id));
            }
            check(&set, &model, &clients);
        }
        for c in &clients {
            assert_eq!(set.insert(c), model.insert(c.id));
        }
        check(&set, &model, &clients);
        assert_eq!(
            set.load().pages.len(),
            4,
            "three full pages and a partial one"
        );
        let mut order: Vec<usize> = (0..clients.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        for i in order {
            assert!(set.remove(clients[i].id));
            model.remove(&clients[i].id);
            check(&set, &model, &clients);
        }
        assert!(set.load().pages.is_empty());
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
