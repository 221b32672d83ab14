//! The encoder's map from a block address to what it knows about the block in the chunk (and,
//! keyed by a stack id shifted past the bits the hash ignores, from a heap's stack id to its
//! number in the chunk: `encode::StackNumbers`; and from a page and size class to its freed
//! stack: `encode::PageStacks`).
//!
//! Every `Alloc` and `Free` of a chunk looks an address up here, and the addresses are spread
//! over the whole heap, so nearly every lookup is a cache miss: the map is built for that. An open
//! addressing table of 16-byte slots (the address and a packed value), probed linearly from a
//! multiplicative hash's top bits, a quarter full while it is small and half beyond ([`limit`]):
//! a lookup touches one cache line, where
//! `std::collections::HashMap` touched its control bytes and then a 24-byte entry. The encoder
//! also prefetches the slot of an event a few ahead ([`AddrMap::prefetch`]). Together: encoding
//! alone 22 -> 26 M events/s on the real-allocator stream of `--bench trace_size`, and
//! `heaplens record` of the 4-thread C workload 6% faster (alternating runs).
//!
//! A chunk's table is cleared for the next; one that held a sixteenth of what its room is for
//! or less starts again small ([`AddrMap::clear`]). Binary trees' first chunk holds 131 000
//! blocks, the ones after it 156 each (the same blocks, freed and taken again): they were
//! encoded in a table of 2^19 slots, 8 MiB cleared at every chunk and a TLB miss a lookup,
//! instead of 1024 slots (`reencode` of 16 chunks, 6 alternating runs: 29.1 against 26.4 ns
//! an event, the same bytes).
//!
//! Address 0 marks an empty slot; the map keeps the value of address 0 (which no allocator
//! returns, but an event may carry) beside the table.

/// A map from `u64` addresses to `u64` values, cleared per chunk.
pub struct AddrMap {
    slots: Vec<[u64; 2]>,
    /// `slots.len() - 1` (the length is a power of two).
    mask: usize,
    /// 64 less the bits of `mask`: the hash is the product's top bits.
    shift: u32,
    /// Occupied slots.
    len: usize,
    /// The occupied slots past which it grows ([`limit`]).
    limit: usize,
    /// The value of address 0.
    zero: Option<u64>,
}

const MIN_SLOTS: usize = 1024;

/// The largest table [`AddrMap::stays_in_cache`] counts as staying in the cache: 128 KiB.
const CACHED_SLOTS: usize = 1 << 13;

/// The largest table kept at most a quarter full: 2 MiB, which stays in a core's cache.
const SPARSE_SLOTS: usize = 1 << 17;

/// How many slots of a table of `slots` may be occupied before it grows: a quarter up to
/// [`SPARSE_SLOTS`], half beyond. A quarter full, a lookup of the blocks of a chunk of a
/// program that frees at random took 1.25-1.3 probes, where half full it took more, and the
/// mispredicted exit of the probe loop was the encoder's largest wait (`reencode` 7-9 % faster
/// on larson's and churn_mt's chunks). A larger table is one whose chunks hold more blocks
/// than a core's cache does (binary trees: 10 % slower a quarter full), where each lookup
/// misses anyway and twice the memory is twice the misses and the clearing.
const fn limit(slots: usize) -> usize {
    if slots <= SPARSE_SLOTS {
        slots / 4
    } else {
        slots / 2
    }
}

/// A table of `slots` empty slots, written rather than allocated zeroed. Memory the allocator
/// knows is zero (fresh from the OS) is not touched by it, so the first lookups, which read,
/// mapped the kernel's shared zero page, and the first insert on each page then faulted again to
/// copy it, flushing the TLB of every core the recorder runs on (an IPI each): 5.7 % of `heaplens
/// record ./trees 0.4`'s samples were those flushes under [`AddrMap::grow`]. Written, each page
/// takes one fault. (`black_box` keeps the compiler from folding the allocation and the zeros
/// into an allocation zeroed.)
fn written_zeros(slots: usize) -> Vec<[u64; 2]> {
    let mut table = Vec::with_capacity(slots);
    std::hint::black_box(&mut table);
    table.resize(slots, [0; 2]);
    table
}

impl Default for AddrMap {
    fn default() -> Self {
        Self::new()
    }
}

impl AddrMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::with_slots(MIN_SLOTS)
    }

    /// An empty map of `slots` slots to start with (rounded up to a power of two, at least 4):
    /// small for the maps each heap of a chunk keeps, which a trace of many threads has many of.
    pub fn with_slots(slots: usize) -> Self {
        let slots = slots.next_power_of_two().max(4);
        Self {
            slots: written_zeros(slots),
            mask: slots - 1,
            shift: 64 - slots.trailing_zeros(),
            len: 0,
            limit: limit(slots),
            zero: None,
        }
    }

    /// Entries in the map.
    pub fn len(&self) -> usize {
        self.len + usize::from(self.zero.is_some())
    }

    /// Whether the map is empty.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn home(&self, addr: u64) -> usize {
        // Fibonacci hashing, the product's top bits; blocks are 16-byte aligned, so the low
        // bits carry nothing. (Bits 32 and up, masked, took 1.3-1.7 probes a lookup on the
        // blocks of a chunk, at a third full; the top bits 1.2-1.3.)
        ((addr >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    /// The slot holding `addr`, or the empty slot where it would go.
    #[inline]
    fn find(&self, addr: u64) -> usize {
        let mut i = self.home(addr);
        loop {
            debug_assert!(i < self.slots.len());
            // SAFETY: `i` is below `self.slots.len()`, a power of two `new` and `grow` set with
            // `mask` and `shift`: the home slot is a product shifted right by `shift`, leaving
            // the length's bits, and each next slot is masked by `mask`, the length less one.
            #[allow(unsafe_code)]
            let key = unsafe { self.slots.get_unchecked(i)[0] };
            if key == addr || key == 0 {
                return i;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Whether the table is small enough (128 KiB at most) to stay in a core's cache, where
    /// [`AddrMap::prefetch`] would only cost its instructions: the hash and the hint, about 8
    /// an event.
    #[inline]
    pub fn stays_in_cache(&self) -> bool {
        self.slots.len() <= CACHED_SLOTS
    }

    /// Starts loading the slot where a lookup of `addr` begins, so that a lookup a few events
    /// later finds it in the cache.
    #[inline]
    pub fn prefetch(&self, addr: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // No bounds check: `home` is below the length, and a prefetch never faults anyway.
            let slot = self.slots.as_ptr().wrapping_add(self.home(addr));
            // SAFETY: SSE is part of x86-64; a prefetch only hints the cache (and `slot` points
            // into the table anyway).
            #[allow(unsafe_code)]
            // the lookups are the encoder's hot spot
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(slot.cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = addr;
    }

    /// Starts loading `item` into the cache (the events of a batch a few cache lines ahead of
    /// the one being encoded: the batch has waited in the backlog and left the cache, and the
    /// hardware prefetcher stops at each 4 KiB page).
    #[inline]
    pub fn prefetch_item<T>(item: &T) {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: SSE is part of x86-64; a prefetch only hints the cache, and `item` is a
            // valid reference anyway.
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>((&raw const *item).cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = item;
    }

    /// Sets the value of `addr`; returns the value it replaces.
    #[inline(always)]
    pub fn insert(&mut self, addr: u64, value: u64) -> Option<u64> {
        if addr == 0 {
            return self.zero.replace(value);
        }
        let i = self.find(addr);
        let slot = &mut self.slots[i];
        if slot[0] == addr {
            return Some(std::mem::replace(&mut slot[1], value));
        }
        self.add(i, addr, value);
        None
    }

    /// The value of `addr` if it has one; else sets it to `value`.
    #[inline]
    pub fn insert_new(&mut self, addr: u64, value: u64) -> Option<u64> {
        if addr == 0 {
            let had = self.zero;
            self.zero = had.or(Some(value));
            return had;
        }
        let i = self.find(addr);
        let slot = self.slots[i];
        if slot[0] == addr {
            return Some(slot[1]);
        }
        self.add(i, addr, value);
        None
    }

    /// Puts `addr` with `value` in the empty slot `i` that [`AddrMap::find`] gave for it.
    #[inline(always)]
    fn add(&mut self, i: usize, addr: u64, value: u64) {
        self.slots[i] = [addr, value];
        self.len += 1;
        if self.len > self.limit {
            self.grow();
        }
    }

    /// The value of `addr`, to read or change.
    #[inline]
    pub fn get_mut(&mut self, addr: u64) -> Option<&mut u64> {
        if addr == 0 {
            return self.zero.as_mut();
        }
        let i = self.find(addr);
        let slot = &mut self.slots[i];
        (slot[0] == addr).then_some(&mut slot[1])
    }

    /// Empties the map, keeping its room unless it had far more than it held: then it starts
    /// again at the room those entries would need.
    pub fn clear(&mut self) {
        let fits = (self.len * 4).next_power_of_two().max(MIN_SLOTS);
        if fits * 16 <= self.slots.len() {
            *self = Self::with_slots(fits);
            return;
        }
        if self.len > 0 {
            self.slots.fill([0; 2]);
        }
        self.len = 0;
        self.zero = None;
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        // A map of twice the slots (`with_slots` derives the mask, shift and limit), with the
        // same entries.
        let bigger = Self {
            len: self.len,
            zero: self.zero,
            ..Self::with_slots(self.slots.len() * 2)
        };
        let old = std::mem::replace(self, bigger).slots;
        for [addr, value] in old {
            if addr != 0 {
                let i = self.find(addr);
                self.slots[i] = [addr, value];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_hash_map() {
        for map in [AddrMap::new(), AddrMap::with_slots(3)] {
            behaves_like_a_hash_map_from(map);
        }
    }

    #[test]
    fn a_large_table_fills_to_half_and_keeps_every_entry() {
        let mut map = AddrMap::new();
        let n = 200_000u64;
        for i in 1..=n {
            assert_eq!(map.insert(i * 48, i), None);
        }
        // Past SPARSE_SLOTS the table grew at half full: 2^19 slots for 200 000 entries
        // (a quarter full would have taken 2^20).
        assert_eq!(map.slots.len(), 1 << 19);
        assert!(map.len() == n as usize && map.len() <= map.limit);
        for i in 1..=n {
            assert_eq!(map.get_mut(i * 48).copied(), Some(i));
        }
        assert_eq!(map.get_mut(16), None);
        // Below it, a quarter.
        assert_eq!(limit(1024), 256);
        assert_eq!(limit(SPARSE_SLOTS * 2), SPARSE_SLOTS);
    }

    #[test]
    fn a_chunk_of_few_blocks_after_one_of_many_starts_from_a_small_table() {
        let mut map = AddrMap::new();
        // A chunk of 100 000 blocks: 2^18 slots (4 MiB).
        for i in 1..=100_000u64 {
            map.insert(i * 32, i);
        }
        assert_eq!(map.slots.len(), 1 << 18);
        // Cleared after it, the table keeps its room (it was used).
        map.clear();
        assert_eq!(map.slots.len(), 1 << 18);
        // The next chunks hold 150 blocks each (binary trees' after its first): after the
        // first of them, the table starts again at the smallest.
        for round in 0..2 {
            for i in 1..=150u64 {
                assert_eq!(map.insert(i * 32, i), None, "round {round}");
            }
            for i in 1..=150u64 {
                assert_eq!(map.get_mut(i * 32).copied(), Some(i), "round {round}");
            }
            assert_eq!(map.get_mut(151 * 32), None);
            map.clear();
        }
        assert_eq!(map.slots.len(), MIN_SLOTS);
        assert_eq!(
            (map.mask, map.len(), map.limit),
            (MIN_SLOTS - 1, 0, MIN_SLOTS / 4)
        );
        // A table about as full as before keeps its room.
        for i in 1..=200u64 {
            map.insert(i * 32, i);
        }
        map.clear();
        assert_eq!(map.slots.len(), MIN_SLOTS);
    }

    fn behaves_like_a_hash_map_from(mut map: AddrMap) {
        let mut model = HashMap::new();
        let mut x = 0x1234_5678_9abc_def1_u64;
        for round in 0..3 {
            for i in 0..20_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Clustered addresses (as blocks are), some repeated, and address 0.
                let addr = match x % 7 {
                    0 => 0,
                    1 | 2 => (x % 512) * 16,
                    _ => 0x7f00_0000_0000 + (x % (1 << 20)) * 16,
                };
                if x.is_multiple_of(3) {
                    assert_eq!(map.insert(addr, i), model.insert(addr, i), "round {round}");
                } else if x % 3 == 1 && x.is_multiple_of(5) {
                    // Kept if there, else added.
                    let kept = model.get(&addr).copied();
                    model.entry(addr).or_insert(i);
                    assert_eq!(map.insert_new(addr, i), kept, "round {round}");
                } else {
                    assert_eq!(map.get_mut(addr).copied(), model.get(&addr).copied());
                    if let Some(v) = map.get_mut(addr) {
                        *v += 1;
                        *model.get_mut(&addr).unwrap() += 1;
                    }
                }
                assert_eq!(map.len(), model.len());
            }
            map.clear();
            model.clear();
            assert!(map.is_empty());
            assert_eq!(map.get_mut(16), None);
        }
    }
}
