//! Live blocks: what the program holds, with the size it asked for (internal fragmentation, leaks).
//!
//! A counted multiset of block addresses, so that it does not matter in which order a tick's events
//! arrive: a cross-thread free may come before the `Alloc` it frees (the count goes to -1 and the
//! `Alloc` cancels it), and an address freed by another thread can be handed out again by its
//! owner before that free is reported (the count goes to 2, and the late free takes the older
//! instance). When every event of a quiet interval has arrived, each address has a count of 0
//! (gone) or 1, with the newest requested size.
//!
//! Where it lives, for speed: a page keeps a [`LiveTable`] indexed by block number (one array
//! access next to the page counters the same event touches, no hashing), laid out for the page's
//! current block size. Blocks that no page table can hold go to two overflow maps keyed by block
//! start (an aligned block spilled from a table: by the address it was handed out at, see
//! [`InteriorPointers`]):
//! - *untabled*: blocks of huge pages (one block each, of any size);
//! - *pending*: what an event must look at first, and that is empty most of the time: a free that
//!   arrived before its page was set up for its block size, or before its segment was announced
//!   (its allocation cancels it), and the unsettled entries of a table whose page was set up anew
//!   or whose segment was freed (a late cross-thread free then finds its block there). Entries
//!   remember the generation of the segment they were allocated in, so a late free after the
//!   segment's address was reused finds the right segment's page.
//!
//! `requested_bytes` is the sum of the newest sizes of the blocks with a count of at least 1:
//! exact whenever the counts are settled.

use serde::{Deserialize, Serialize};

use super::Model;
use super::hash::FastMap;

/// An overflow entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveBlock {
    /// Allocations minus frees seen at this address (1 for a live block once settled).
    pub count: i32,
    /// Generation of the segment the newest allocation was in.
    pub generation: u32,
    /// Requested size of the newest allocation.
    pub size: u64,
    /// Generation of the oldest allocation while `count >= 2`.
    pub older_generation: u32,
}

/// A block address and its state, as the queries return it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Block start.
    pub addr: u64,
    /// Requested size of the newest allocation.
    pub size: u64,
    /// Allocations minus frees (1: live; below 0: frees whose allocation has not arrived).
    pub count: i32,
}

const SIZE_BITS: u32 = 22;
const SIZE_MASK: u32 = (1 << SIZE_BITS) - 1;
const COUNT_MAX: i32 = (1 << (31 - SIZE_BITS)) - 1;

#[inline(always)]
fn unpack(v: u32) -> (i32, u64) {
    ((v as i32) >> SIZE_BITS, u64::from(v & SIZE_MASK))
}

#[inline(always)]
fn pack(count: i32, size: u64) -> u32 {
    ((count.clamp(-COUNT_MAX - 1, COUNT_MAX) as u32) << SIZE_BITS)
        | size.min(u64::from(SIZE_MASK)) as u32
}

/// A page's live blocks by block number: count and requested size packed in 32 bits (blocks on
/// tables are at most `LARGE_OBJ_SIZE_MAX` = 2 MiB, under the 22 size bits).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LiveTable {
    slots: Vec<u32>,
    /// Slots that are not zero.
    nonzero: u32,
    /// Which free list each freed block went to ([`super::page::BlockState`] as a byte; 0 when
    /// not known). Not saved in keyframes: after a seek the lists of earlier frees are inferred
    /// from the page's counts (see [`super::Page::block_states`]).
    #[serde(skip)]
    lists: Vec<u8>,
}

impl PartialEq for LiveTable {
    /// Equal when the same blocks have the same counts and sizes (lengths may differ).
    fn eq(&self, o: &Self) -> bool {
        let n = self.slots.len().max(o.slots.len());
        (0..n).all(|i| self.get(i) == o.get(i))
    }
}

impl Eq for LiveTable {}

impl LiveTable {
    /// `(count, requested size)` of block `i`.
    pub fn get(&self, i: usize) -> (i32, u64) {
        self.slots.get(i).map_or((0, 0), |&v| unpack(v))
    }

    /// Non-zero slots as `(index, count, size)`.
    pub fn entries(&self) -> impl Iterator<Item = (usize, i32, u64)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0)
            .map(|(i, &v)| {
                let (c, s) = unpack(v);
                (i, c, s)
            })
    }

    /// The list block `i` was last put on (0: not known).
    pub fn list_of(&self, i: usize) -> u8 {
        self.lists.get(i).copied().unwrap_or(0)
    }

    /// Records that block `i` (a valid slot) went onto `list`.
    #[inline]
    pub(crate) fn set_list(&mut self, i: usize, list: u8) {
        if i >= self.lists.len() {
            self.lists.resize(self.slots.len().max(i + 1), 0);
        }
        self.lists[i] = list;
    }

    /// Every block on list `a.0` moves to `a.1`, and every block on `b.0` to `b.1` (a collect
    /// moves whole lists; `(0, 0)` moves nothing). One branch-free pass, which the compiler
    /// vectorises: a collect on a page of 4096 blocks walked them a byte at a time (a third of the
    /// keyframe model's time in a recording).
    pub(crate) fn move_lists(&mut self, a: (u8, u8), b: (u8, u8)) {
        for l in &mut self.lists {
            let v = *l;
            *l = if v == a.0 {
                a.1
            } else if v == b.0 {
                b.1
            } else {
                v
            };
        }
    }

    /// Forgets the lists (the page was set up anew).
    pub(crate) fn clear_lists(&mut self) {
        self.lists.clear();
    }

    /// Whether every slot is zero.
    pub fn is_settled(&self) -> bool {
        self.nonzero == 0
    }

    /// Makes room for `n` blocks.
    pub(crate) fn ensure(&mut self, n: usize) {
        if self.slots.len() < n {
            self.slots.resize(n, 0);
        }
    }

    /// Slot `i`, growing the table up to `limit` blocks.
    #[inline(always)]
    pub(crate) fn slot(&mut self, i: usize, limit: usize) -> Option<&mut u32> {
        if i >= self.slots.len() {
            if i >= limit {
                return None;
            }
            self.slots.resize(i + 1, 0);
        }
        Some(&mut self.slots[i])
    }

    /// Counts an allocation of `size` bytes in slot `i` (growing up to `limit` blocks); false if
    /// `i` is out of range.
    #[inline(always)]
    pub(crate) fn alloc(
        &mut self,
        i: usize,
        limit: usize,
        live: &mut LiveBlocks,
        size: u64,
    ) -> bool {
        let Some(slot) = self.slot(i, limit) else {
            return false;
        };
        let was = *slot;
        let (c, s) = unpack(was);
        let (c, s) = live.alloc_pair(c, s, size.min(u64::from(SIZE_MASK)));
        *slot = if c == 0 { 0 } else { pack(c, s) };
        let now = *slot;
        self.nonzero = self.nonzero + u32::from(now != 0) - u32::from(was != 0);
        true
    }

    /// Counts a free in slot `i` (growing up to `limit` blocks); false if `i` is out of range.
    #[inline(always)]
    pub(crate) fn free(&mut self, i: usize, limit: usize, live: &mut LiveBlocks) -> bool {
        let Some(slot) = self.slot(i, limit) else {
            return false;
        };
        let was = *slot;
        let (c, s) = unpack(was);
        let (c, s) = live.free_pair(c, s);
        *slot = if c == 0 { 0 } else { pack(c, s) };
        let now = *slot;
        self.nonzero = self.nonzero + u32::from(now != 0) - u32::from(was != 0);
        true
    }

    /// Sets the requested size of the live block in slot `i`; false if there is none.
    pub(crate) fn resize(&mut self, i: usize, live: &mut LiveBlocks, size: u64) -> bool {
        let Some(slot) = self.slots.get_mut(i) else {
            return false;
        };
        let (c, s) = unpack(*slot);
        if c < 1 {
            return false;
        }
        let size = size.min(u64::from(SIZE_MASK));
        live.requested = live
            .requested
            .wrapping_add((size as i64).wrapping_sub(s as i64));
        *slot = pack(c, size);
        true
    }

    /// Empties the table, returning the non-zero entries.
    pub(crate) fn take_unsettled(&mut self) -> Vec<(usize, i32, u64)> {
        let out = if self.nonzero == 0 {
            Vec::new()
        } else {
            self.entries().collect()
        };
        if self.nonzero != 0 {
            self.slots.fill(0);
        }
        self.slots.truncate(0);
        self.nonzero = 0;
        out
    }
}

/// The interior addresses that aligned allocations on page tables were handed out at, by
/// block start (two at most: a block allocated again before another thread's free of it is
/// reported). Aligned allocations are rare, so this stays small.
///
/// It tells another thread's free of an interior address apart: the free of the aligned block
/// that holds it (also after its page was freed, which clears the page's aligned mark), or an
/// early free of a block of the page's next layout, reported before the page was set up for it (recorded from the stress workload: such a free of 0x...180, counted
/// in the old layout's block at 0x...000, freed a block allocated at its start, whose own free
/// was then unmatched). Not in keyframes: a model read from one does not know the addresses of
/// the blocks allocated before it ([`InteriorPointers::known`] is false) and frees them as before.
#[derive(Clone, Debug, Default)]
pub(crate) struct InteriorPointers {
    by_start: FastMap<u64, [u64; 2]>,
    /// Whether every allocation since the model began is recorded here (not a keyframe's model).
    pub(crate) known: bool,
}

impl InteriorPointers {
    /// None recorded yet, by a model that sees every allocation from its start.
    pub(crate) fn new() -> Self {
        Self {
            by_start: FastMap::default(),
            known: true,
        }
    }

    /// The one interior address the block at `start` is allocated at, if exactly one is known.
    pub(crate) fn only(&self, start: u64) -> Option<u64> {
        match self.by_start.get(&start) {
            Some(&[p, 0] | &[0, p]) if p != 0 => Some(p),
            _ => None,
        }
    }

    /// Records an aligned allocation at `ptr`, inside the block at `start`.
    pub(crate) fn insert(&mut self, start: u64, ptr: u64) {
        let e = self.by_start.entry(start).or_insert([0; 2]);
        if !e.contains(&ptr) {
            let slot = e.iter().position(|&p| p == 0).unwrap_or(1);
            e[slot] = ptr;
        }
    }

    /// Whether a free of `ptr` may be the free of a block allocated at `start`: `ptr` is the block
    /// start, or an interior address an allocation of it was handed out at, or what the block's
    /// allocations were is not known.
    pub(crate) fn may_free(&self, start: u64, ptr: u64) -> bool {
        ptr == start || !self.known || self.holds(start, ptr)
    }

    /// Whether an allocation of the block at `start` is known to have been handed out at `ptr`.
    pub(crate) fn holds(&self, start: u64, ptr: u64) -> bool {
        self.by_start.get(&start).is_some_and(|e| e.contains(&ptr))
    }

    /// Forgets `ptr` of the block at `start` (it was freed).
    pub(crate) fn remove(&mut self, start: u64, ptr: u64) {
        if ptr == start || self.by_start.is_empty() {
            return;
        }
        if let Some(e) = self.by_start.get_mut(&start) {
            for p in e.iter_mut().filter(|p| **p == ptr) {
                *p = 0;
            }
            if *e == [0; 2] {
                self.by_start.remove(&start);
            }
        }
    }

    /// Forgets the blocks in `lo..hi` (their page was set up anew).
    pub(crate) fn forget_range(&mut self, lo: u64, hi: u64) {
        if !self.by_start.is_empty() {
            self.by_start.retain(|&start, _| !(lo..hi).contains(&start));
        }
    }
}

/// Which overflow map an entry lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Entries an event on a page must look at first: early frees of blocks whose page or
    /// segment was not set up yet, and entries spilled from a page table (late frees of an
    /// earlier layout). Empty most of the time.
    Pending,
    /// Blocks of pages without a table (huge pages) or at addresses the table cannot hold.
    Untabled,
}

/// Totals over every live block, and the overflow maps.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LiveBlocks {
    pending: FastMap<u64, LiveBlock>,
    untabled: FastMap<u64, LiveBlock>,
    requested: i64,
    live: i64,
}

impl LiveBlocks {
    /// Number of live blocks (addresses with a count of at least 1).
    pub fn len(&self) -> u64 {
        self.live.max(0) as u64
    }

    /// No live block.
    pub fn is_empty(&self) -> bool {
        self.live <= 0
    }

    /// Bytes requested by the live blocks.
    pub fn requested_bytes(&self) -> u64 {
        self.requested.max(0) as u64
    }

    /// Entries held outside page tables: (pending, untabled).
    pub fn overflow_len(&self) -> (usize, usize) {
        (self.pending.len(), self.untabled.len())
    }

    #[inline(always)]
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn map(&mut self, side: Side) -> &mut FastMap<u64, LiveBlock> {
        match side {
            Side::Pending => &mut self.pending,
            Side::Untabled => &mut self.untabled,
        }
    }

    /// An allocation counted on (count, size); returns the new pair.
    #[inline(always)]
    pub(crate) fn alloc_pair(&mut self, c: i32, s: u64, size: u64) -> (i32, u64) {
        match c {
            0 => {
                self.requested = self.requested.wrapping_add(size as i64);
                self.live += 1;
                (1, size)
            }
            c if c < 0 => (c + 1, s),
            c => {
                self.requested = self
                    .requested
                    .wrapping_add((size as i64).wrapping_sub(s as i64));
                (c.saturating_add(1), size)
            }
        }
    }

    /// A free counted on (count, size); returns the new pair.
    #[inline(always)]
    pub(crate) fn free_pair(&mut self, c: i32, s: u64) -> (i32, u64) {
        if c == 1 {
            self.requested = self.requested.wrapping_sub(s as i64);
            self.live -= 1;
            (0, 0)
        } else {
            (c.saturating_sub(1), s)
        }
    }

    /// Forgets a page table's entry `(count, size)` (its page left the model).
    pub(crate) fn forget(&mut self, count: i32, size: u64) {
        if count >= 1 {
            self.requested = self.requested.wrapping_sub(size as i64);
            self.live -= 1;
        }
    }

    /// Forgets the overflow entries at addresses in `lo..hi` (their page left the model).
    pub(crate) fn forget_range(&mut self, lo: u64, hi: u64) {
        let (mut requested, mut live) = (0i64, 0i64);
        for map in [&mut self.pending, &mut self.untabled] {
            map.retain(|&k, b| {
                let inside = (lo..hi).contains(&k);
                if inside && b.count >= 1 {
                    requested = requested.wrapping_add(b.size as i64);
                    live += 1;
                }
                !inside
            });
        }
        self.requested = self.requested.wrapping_sub(requested);
        self.live -= live;
    }

    /// Records an allocation of `size` bytes at `key` in a segment of `generation`.
    pub(crate) fn alloc(&mut self, side: Side, key: u64, size: u64, generation: u32) {
        let e = *self.map(side).get(&key).unwrap_or(&LiveBlock::default());
        let (c, s) = self.alloc_pair(e.count, e.size, size);
        let older_generation = if e.count == 1 {
            e.generation
        } else {
            e.older_generation
        };
        let generation = if e.count < 0 {
            e.generation
        } else {
            generation
        };
        self.put(
            side,
            key,
            LiveBlock {
                count: c,
                generation,
                size: s,
                older_generation,
            },
        );
    }

    /// Records a free of `key`; returns the generation of the segment the freed block was
    /// allocated in, if its allocation was seen.
    pub(crate) fn free(&mut self, side: Side, key: u64) -> Option<u32> {
        let e = *self.map(side).get(&key).unwrap_or(&LiveBlock::default());
        let (c, s) = self.free_pair(e.count, e.size);
        let freed = match e.count {
            1 => Some(e.generation),
            c if c >= 2 => Some(e.older_generation),
            _ => None,
        };
        let older_generation = if c >= 2 { e.older_generation } else { 0 };
        self.put(
            side,
            key,
            LiveBlock {
                count: c,
                size: s,
                older_generation,
                ..e
            },
        );
        freed
    }

    fn put(&mut self, side: Side, key: u64, e: LiveBlock) {
        if e.count == 0 {
            self.map(side).remove(&key);
        } else {
            self.map(side).insert(key, e);
        }
    }

    /// If `side` holds an allocation at `key`, frees it there: returns its segment generation.
    pub(crate) fn free_older(&mut self, side: Side, key: u64) -> Option<u32> {
        match self.map(side).get(&key) {
            Some(e) if e.count >= 1 => self.free(side, key),
            _ => None,
        }
    }

    /// If the pending map holds an early free at `key`, lets this allocation cancel it.
    pub(crate) fn cancel_early_free(&mut self, key: u64, size: u64) -> bool {
        match self.pending.get(&key) {
            Some(e) if e.count < 0 => {
                self.alloc(Side::Pending, key, size, 0);
                true
            }
            _ => false,
        }
    }

    /// Sets the requested size of the newest allocation at `key` in an overflow map.
    pub(crate) fn resize(&mut self, key: u64, size: u64) -> bool {
        for side in [Side::Untabled, Side::Pending] {
            if let Some(e) = self.map(side).get_mut(&key)
                && e.count >= 1
            {
                let old = e.size;
                e.size = size;
                self.requested = self
                    .requested
                    .wrapping_add((size as i64).wrapping_sub(old as i64));
                return true;
            }
        }
        false
    }

    /// Moves a table entry (already counted in the totals) to the pending map.
    pub(crate) fn spill(&mut self, key: u64, count: i32, size: u64, generation: u32) {
        let e = LiveBlock {
            count,
            generation,
            size,
            older_generation: generation,
        };
        match self.pending.get(&key).copied() {
            None => {
                self.pending.insert(key, e);
            }
            Some(old) => {
                // Both counted: take them out of the totals and put the merged entry back in.
                for x in [old, e] {
                    if x.count >= 1 {
                        self.requested = self.requested.wrapping_sub(x.size as i64);
                        self.live -= 1;
                    }
                }
                let (newest, oldest) = if old.count >= 1 { (e, old) } else { (old, e) };
                let merged = LiveBlock {
                    count: old.count.saturating_add(count),
                    generation: newest.generation,
                    size: if newest.count >= 1 {
                        newest.size
                    } else {
                        oldest.size
                    },
                    older_generation: oldest.generation,
                };
                if merged.count >= 1 {
                    self.requested = self.requested.wrapping_add(merged.size as i64);
                    self.live += 1;
                }
                self.put(Side::Pending, key, merged);
            }
        }
    }

    /// The overflow entry at `key`.
    pub(crate) fn overflow_get(&self, key: u64) -> Option<&LiveBlock> {
        self.untabled.get(&key).or_else(|| self.pending.get(&key))
    }

    pub(crate) fn overflow_iter(&self) -> impl Iterator<Item = (u64, &LiveBlock)> + '_ {
        self.untabled
            .iter()
            .chain(self.pending.iter())
            .map(|(&a, b)| (a, b))
    }
}

impl Model {
    /// Every block address with a count other than zero: in page tables, then the overflow.
    fn all_blocks(&self) -> impl Iterator<Item = Block> + '_ {
        let tables = self.segs.iter().flat_map(|seg| {
            seg.pages.iter().flat_map(|p| {
                p.live.entries().map(move |(i, count, size)| Block {
                    addr: p.block_addr(i as u64),
                    size,
                    count,
                })
            })
        });
        let overflow = self.live.overflow_iter().map(|(addr, b)| Block {
            addr,
            size: b.size,
            count: b.count,
        });
        tables.chain(overflow)
    }

    /// The live blocks (at the end of a trace: the leaks), in no particular order.
    pub fn live_blocks(&self) -> impl Iterator<Item = Block> + '_ {
        self.all_blocks().filter(|b| b.count >= 1)
    }

    /// Addresses freed more often than allocated so far (their allocation has not arrived yet,
    /// or was lost).
    pub fn unmatched_frees(&self) -> impl Iterator<Item = Block> + '_ {
        self.all_blocks().filter(|b| b.count < 0)
    }

    /// The block holding `addr`, if its count is not zero (a page-table entry, else an overflow
    /// entry).
    pub fn live_block(&self, addr: u64) -> Option<Block> {
        if let Some(r) = self.page_at(addr)
            && let Some(i) = r.page.block_index(addr)
        {
            let (count, size) = r.page.live.get(i);
            if count != 0 {
                return Some(Block {
                    addr: r.page.block_addr(i as u64),
                    size,
                    count,
                });
            }
        }
        let key = self
            .page_at(addr)
            .map_or(addr, |r| r.page.block_start(addr));
        [key, addr].into_iter().find_map(|k| {
            self.live.overflow_get(k).map(|b| Block {
                addr: k,
                size: b.size,
                count: b.count,
            })
        })
    }

    /// Totals over the live blocks.
    pub fn live(&self) -> &LiveBlocks {
        &self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collect_moves_whole_lists_in_one_pass() {
        let (thread, local, free) = (4, 3, 2);
        let start = [0, free, local, thread, local, thread, 7];
        let table = |lists: &[u8]| {
            let mut t = LiveTable::default();
            for (i, &l) in lists.iter().enumerate() {
                t.set_list(i, l);
            }
            t
        };
        let lists = |t: &LiveTable| (0..start.len()).map(|i| t.list_of(i)).collect::<Vec<_>>();
        // Both lists move: thread_free joins local_free, which joins free.
        let mut t = table(&start);
        t.move_lists((thread, free), (local, free));
        assert_eq!(lists(&t), [0, free, free, free, free, free, 7]);
        // Only thread_free moves.
        let mut t = table(&start);
        t.move_lists((thread, local), (0, 0));
        assert_eq!(lists(&t), [0, free, local, local, local, local, 7]);
        // Only local_free moves: thread_free stays.
        let mut t = table(&start);
        t.move_lists((local, free), (0, 0));
        assert_eq!(lists(&t), [0, free, free, thread, free, thread, 7]);
    }

    #[test]
    fn any_order_of_alloc_free_realloc_settles_the_same() {
        // true order: alloc a (gen 1), free (late), alloc b at the same address (gen 2)
        let orders: [&[u8]; 3] = [b"AFB", b"ABF", b"FAB"];
        for order in orders {
            let mut l = LiveBlocks::default();
            let mut freed_gen = None;
            for &op in order {
                match op {
                    b'A' => l.alloc(Side::Untabled, 0x1000, 10, 1),
                    b'B' => l.alloc(Side::Untabled, 0x1000, 20, 2),
                    _ => freed_gen = l.free(Side::Untabled, 0x1000),
                }
            }
            assert_eq!(l.len(), 1, "{}", order.escape_ascii());
            assert_eq!(l.requested_bytes(), 20);
            assert_eq!(l.overflow_get(0x1000).map(|b| b.generation), Some(2));
            if order == b"ABF" {
                assert_eq!(freed_gen, Some(1), "the late free takes the older block");
            }
        }
    }

    #[test]
    fn table_slots_count_like_the_overflow() {
        for order in [b"AFB", b"ABF", b"FAB"] {
            let mut l = LiveBlocks::default();
            let mut t = LiveTable::default();
            t.ensure(4);
            for &op in order {
                let ok = match op {
                    b'A' => t.alloc(2, 4, &mut l, 10),
                    b'B' => t.alloc(2, 4, &mut l, 20),
                    _ => t.free(2, 4, &mut l),
                };
                assert!(ok);
            }
            assert_eq!(t.get(2), (1, 20));
            assert_eq!((l.len(), l.requested_bytes(), t.nonzero), (1, 20, 1));
            assert!(!t.alloc(9, 4, &mut l, 1), "out of range");
        }
    }

    #[test]
    fn packing_keeps_counts_and_sizes() {
        for c in [-512, -3, -1, 0, 1, 2, 511] {
            for s in [0, 1, 4096, (1 << 21) + 5, u64::from(SIZE_MASK)] {
                assert_eq!(unpack(pack(c, s)), (c, s));
            }
        }
        assert_eq!(
            unpack(pack(9999, 1 << 40)),
            (COUNT_MAX, u64::from(SIZE_MASK))
        );
    }

    #[test]
    fn spilled_entries_merge_with_overflow_entries() {
        let mut l = LiveBlocks::default();
        // an early free recorded in the overflow, and a live table entry spilled onto it
        l.free(Side::Pending, 0x40);
        let mut t = LiveTable::default();
        t.ensure(1);
        assert!(t.alloc(0, 1, &mut l, 30));
        assert_eq!((l.len(), l.requested_bytes()), (1, 30));
        for (_, c, s) in t.take_unsettled() {
            l.spill(0x40, c, s, 7);
        }
        assert!(l.overflow_get(0x40).is_none(), "they cancel");
        assert_eq!((l.len(), l.requested_bytes()), (0, 0));
    }
}
