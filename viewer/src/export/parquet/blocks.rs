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
//! Memory: one entry of 48 bytes (address and [`Open`]) per open allocation, the live blocks,
//! in 64 maps so that growing never holds two copies of all of them; and one per early free
//! while it waits (a tick's worth at most in a trace without losses).

use std::collections::VecDeque;
use std::collections::hash_map::Entry;

use crate::model::hash::FastMap;

/// An allocation not freed yet (its address is the key it is kept under). Kept small: the
/// export holds one per live block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Open {
    /// Bytes requested (the newest, after a resize in place).
    pub size: u64,
    /// Trace time of the allocation.
    pub time: u64,
    /// Block size of its page; 0 if the page was not known.
    pub block_size: u64,
    /// How many allocations a sampled one stands for (1 with every stack; 0 without a stack).
    pub weight: f32,
    /// Heap (thread) that allocated it.
    pub heap: u32,
    /// Leaf stack node (0: no stack).
    pub stack: u32,
    /// Its page's bin; [`NO_BIN`] if the page was not known.
    pub bin: u16,
}

/// [`Open::bin`] of a block whose page was not known.
pub const NO_BIN: u16 = u16::MAX;

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

/// Maps of open allocations, split by address so that no map doubles all at once (a doubling
/// holds the old and the new table together).
const SHARDS: usize = 64;

fn shard(addr: u64) -> usize {
    (addr >> 4) as usize % SHARDS
}

/// Open allocations and early frees, by address.
pub struct Pairing {
    /// The oldest open allocation at each address.
    open: Vec<FastMap<u64, Open>>,
    /// Newer open allocations at an address that already has one (rare), oldest first.
    newer: FastMap<u64, VecDeque<Open>>,
    /// Frees whose allocation has not arrived, oldest first.
    early: FastMap<u64, VecDeque<Freed>>,
}

impl Default for Pairing {
    fn default() -> Self {
        Self {
            open: (0..SHARDS).map(|_| FastMap::default()).collect(),
            newer: FastMap::default(),
            early: FastMap::default(),
        }
    }
}

impl Pairing {
    /// An allocation at `addr`: `Some` if an early free was waiting for it (the block's whole
    /// life).
    pub fn alloc(&mut self, addr: u64, a: Open) -> Option<(Open, Freed)> {
        if let Some(q) = self.early.get_mut(&addr) {
            let f = q.pop_front();
            if q.is_empty() {
                self.early.remove(&addr);
            }
            if let Some(f) = f {
                return Some((a, f));
            }
        }
        match self.open[shard(addr)].entry(addr) {
            Entry::Occupied(_) => self.newer.entry(addr).or_default().push_back(a),
            Entry::Vacant(v) => {
                v.insert(a);
            }
        }
        None
    }

    /// A free by the program: the allocation it ends, or `None` if that has not arrived.
    pub fn free(&mut self, addr: u64, f: Freed) -> Option<(Open, Freed)> {
        let open = &mut self.open[shard(addr)];
        let Some(oldest) = open.remove(&addr) else {
            self.early.entry(addr).or_default().push_back(f);
            return None;
        };
        if let Some(q) = self.newer.get_mut(&addr) {
            if let Some(next) = q.pop_front() {
                open.insert(addr, next);
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
        } else if let Some(b) = self.open[shard(addr)].get_mut(&addr) {
            b.size = size;
        }
    }

    /// Frees still waiting for their allocation.
    pub fn early_frees(&self) -> u64 {
        self.early.values().map(|q| q.len() as u64).sum()
    }

    /// Everything still open (live at the end) with its address, in no particular order.
    pub fn into_open(self) -> impl Iterator<Item = (u64, Open)> {
        let newer = self
            .newer
            .into_iter()
            .flat_map(|(addr, q)| q.into_iter().map(move |a| (addr, a)));
        self.open.into_iter().flatten().chain(newer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(size: u64, time: u64) -> Open {
        Open {
            size,
            time,
            block_size: 16,
            weight: 0.0,
            heap: 1,
            stack: 0,
            bin: 1,
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
                    b'A' => p.alloc(0x40, open(10, 1)),
                    b'B' => p.alloc(0x40, open(20, 3)),
                    _ => p.free(0x40, freed(2)),
                };
                rows.extend(row);
            }
            assert_eq!(rows.len(), 1, "{}", order.escape_ascii());
            assert_eq!((rows[0].0.time, rows[0].1.time), (1, 2));
            let live: Vec<_> = p.into_open().collect();
            assert_eq!(live.len(), 1);
            assert_eq!((live[0].0, live[0].1.time, live[0].1.size), (0x40, 3, 20));
        }
    }

    #[test]
    fn a_resize_sets_the_newest_allocation() {
        let mut p = Pairing::default();
        p.alloc(0x40, open(10, 1));
        p.alloc(0x40, open(20, 3));
        p.resize(0x40, 25);
        let (first, _) = p.free(0x40, freed(4)).unwrap();
        assert_eq!(first.size, 10);
        let live: Vec<_> = p.into_open().collect();
        assert_eq!(live[0].1.size, 25);
    }

    #[test]
    fn a_free_without_its_allocation_waits() {
        let mut p = Pairing::default();
        assert!(p.free(0x80, freed(5)).is_none());
        assert_eq!(p.early_frees(), 1);
        assert_eq!(p.into_open().count(), 0);
    }
}
