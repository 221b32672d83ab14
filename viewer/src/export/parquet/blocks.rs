//! Pairing each allocation with its free, for the `blocks` table: one row per allocation.
//!
//! Events of different threads within one clock tick arrive in no particular order (see
//! `heaplens_alloc::event`), so pairing follows the model's live blocks (`model::live`): per
//! address, the allocations not yet freed, oldest first, and the frees whose allocation has not
//! arrived yet. A free takes the oldest open allocation at its address (the late free of a
//! block its owner already handed out again frees the older one); an allocation that finds an
//! early free is freed by it at once. What is open at the end was live at exit: its row has no
//! free time. A `Resize` (realloc in place) sets the newest allocation's size, as the model
//! does, so the live rows' sizes add up to the model's live requested bytes.
//!
//! Memory: one entry per open allocation (the live blocks), and one per early free while it
//! waits (a tick's worth at most in a trace without losses).

use std::collections::VecDeque;
use std::collections::hash_map::Entry;

use crate::model::hash::FastMap;

/// An allocation not freed yet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Open {
    /// The pointer returned.
    pub addr: u64,
    /// Bytes requested (the newest, after a resize in place).
    pub size: u64,
    /// Block size of its page, if the page was known.
    pub block_size: Option<u64>,
    /// Its page's bin, if the page was known.
    pub bin: Option<u16>,
    /// Heap (thread) that allocated it.
    pub heap: u32,
    /// Trace time of the allocation.
    pub time: u64,
    /// Leaf stack node (0: no stack).
    pub stack: u32,
    /// How many allocations a sampled one stands for (1 with every stack; 0 without a stack).
    pub weight: f64,
}

/// A free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freed {
    /// Trace time of the free.
    pub time: u64,
    /// Heap (thread) that freed it.
    pub heap: u32,
    /// Freed by a thread that does not own the page.
    pub cross_thread: bool,
}

/// Open allocations and early frees, by address.
#[derive(Default)]
pub struct Pairing {
    /// The oldest open allocation at each address.
    open: FastMap<u64, Open>,
    /// Newer open allocations at an address that already has one (rare), oldest first.
    newer: FastMap<u64, VecDeque<Open>>,
    /// Frees whose allocation has not arrived, oldest first.
    early: FastMap<u64, VecDeque<Freed>>,
}

impl Pairing {
    /// An allocation: `Some` if an early free was waiting for it (the block's whole life).
    pub fn alloc(&mut self, a: Open) -> Option<(Open, Freed)> {
        if let Some(q) = self.early.get_mut(&a.addr) {
            let f = q.pop_front();
            if q.is_empty() {
                self.early.remove(&a.addr);
            }
            if let Some(f) = f {
                return Some((a, f));
            }
        }
        match self.open.entry(a.addr) {
            Entry::Occupied(_) => self.newer.entry(a.addr).or_default().push_back(a),
            Entry::Vacant(v) => {
                v.insert(a);
            }
        }
        None
    }

    /// A free by the program: the allocation it ends, or `None` if that has not arrived.
    pub fn free(&mut self, addr: u64, f: Freed) -> Option<(Open, Freed)> {
        let Some(oldest) = self.open.remove(&addr) else {
            self.early.entry(addr).or_default().push_back(f);
            return None;
        };
        if let Some(q) = self.newer.get_mut(&addr) {
            if let Some(next) = q.pop_front() {
                self.open.insert(addr, next);
            }
            if q.is_empty() {
                self.newer.remove(&addr);
            }
        }
        Some((oldest, f))
    }

    /// A realloc in place: the newest allocation at `addr` now holds `size` bytes.
    pub fn resize(&mut self, addr: u64, size: u64) {
        if let Some(b) = self.newer.get_mut(&addr).and_then(|q| q.back_mut()) {
            b.size = size;
        } else if let Some(b) = self.open.get_mut(&addr) {
            b.size = size;
        }
    }

    /// Frees still waiting for their allocation.
    pub fn early_frees(&self) -> u64 {
        self.early.values().map(|q| q.len() as u64).sum()
    }

    /// Everything still open (live at the end), in no particular order.
    pub fn into_open(self) -> impl Iterator<Item = Open> {
        self.open
            .into_values()
            .chain(self.newer.into_values().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(addr: u64, size: u64, time: u64) -> Open {
        Open {
            addr,
            size,
            block_size: Some(16),
            bin: Some(1),
            heap: 1,
            time,
            stack: 0,
            weight: 0.0,
        }
    }

    fn freed(time: u64) -> Freed {
        Freed {
            time,
            heap: 2,
            cross_thread: true,
        }
    }

    #[test]
    fn any_order_pairs_each_allocation_with_its_own_free() {
        // True order: alloc a (t1), free a (t2, reported late), alloc b at the same address (t3).
        for order in [b"AFB", b"ABF", b"FAB"] {
            let mut p = Pairing::default();
            let mut rows = Vec::new();
            for &op in order {
                let row = match op {
                    b'A' => p.alloc(open(0x40, 10, 1)),
                    b'B' => p.alloc(open(0x40, 20, 3)),
                    _ => p.free(0x40, freed(2)),
                };
                rows.extend(row);
            }
            assert_eq!(rows.len(), 1, "{}", order.escape_ascii());
            assert_eq!((rows[0].0.time, rows[0].1.time), (1, 2));
            let live: Vec<_> = p.into_open().collect();
            assert_eq!(live.len(), 1);
            assert_eq!((live[0].time, live[0].size), (3, 20));
        }
    }

    #[test]
    fn a_resize_sets_the_newest_allocation() {
        let mut p = Pairing::default();
        p.alloc(open(0x40, 10, 1));
        p.alloc(open(0x40, 20, 3));
        p.resize(0x40, 25);
        let (first, _) = p.free(0x40, freed(4)).unwrap();
        assert_eq!(first.size, 10);
        let live: Vec<_> = p.into_open().collect();
        assert_eq!(live[0].size, 25);
    }

    #[test]
    fn a_free_without_its_allocation_waits() {
        let mut p = Pairing::default();
        assert!(p.free(0x80, freed(5)).is_none());
        assert_eq!(p.early_frees(), 1);
        assert_eq!(p.into_open().count(), 0);
    }
}
