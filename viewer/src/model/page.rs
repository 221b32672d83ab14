//! A page of the model: one run of blocks of one size inside a segment, with the lengths of its
//! three free lists.
//!
//! Counters keep mimalloc's meanings (see `heaplens_alloc::page`): `used` counts blocks handed out
//! and not back on `free` or `local_free`, so it includes the blocks waiting on `thread_free` and
//! on the owner heap's delayed list. The allocator's invariant
//! `used + |free| + |local_free| == capacity` defines `free_len`.
//!
//! Which counters survive a page's re-initialisation follows from who changes them:
//! - `used`, `local_free`, `capacity`, `in_full` change only through the owning heap's events,
//!   which arrive in that heap's order: `PageInit` and `PageFree` reset them.
//! - `thread_free` and `delayed` are changed by *other* threads too, whose events of the same tick
//!   may arrive before or after the owner's (a cross-thread free is even reported only after its
//!   block was pushed, so the owner may collect it first). They are signed running sums that only
//!   a census resets: then every order of the same events ends in the same values.

use heaplens_alloc::bin::PageKind;
use heaplens_alloc::{LARGE_OBJ_SIZE_MAX, MAX_ALIGN};
use serde::{Deserialize, Serialize};

use super::live::LiveTable;

/// `block_index` multiplies by `2^DIV_SHIFT / block_size` instead of dividing: exact for offsets
/// below `2^OFFSET_BITS` and block sizes up to `2^(DIV_SHIFT - OFFSET_BITS)` (2 MiB, the largest
/// non-huge block), as the rounding error stays under `1 / block_size`.
const DIV_SHIFT: u32 = 43;
const OFFSET_BITS: u32 = 22;
const _: () = assert!(LARGE_OBJ_SIZE_MAX as u64 <= 1 << (DIV_SHIFT - OFFSET_BITS));

/// The page kind for its byte (`PageKind as u8`); unknown bytes read as `Small`.
pub fn page_kind(b: u8) -> PageKind {
    match b {
        1 => PageKind::Medium,
        2 => PageKind::Large,
        3 => PageKind::Huge,
        _ => PageKind::Small,
    }
}

/// The last event that touched a page (for the page inspector).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastEvent {
    /// `EventKind` byte.
    pub kind: u8,
    /// Heap (thread) whose buffer the event came from.
    pub heap: u32,
    /// Event time (ns since trace start).
    pub time: u64,
}

/// What a block of a page is doing, as the page inspector shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlockState {
    /// Held by the program.
    InUse = 1,
    /// On `free`: the next allocations pop it.
    Free = 2,
    /// On `local_free`: freed by the owner thread, waiting for the next collect.
    LocalFree = 3,
    /// On `thread_free`: freed by another thread, waiting for the owner to collect it.
    ThreadFree = 4,
    /// On the owner heap's delayed list (freed by another thread into a full page).
    Delayed = 5,
    /// Beyond the page's capacity: not carved into blocks yet.
    Uncarved = 6,
}

impl BlockState {
    /// Every state, in legend order.
    pub const ALL: [Self; 6] = [
        Self::InUse,
        Self::Free,
        Self::LocalFree,
        Self::ThreadFree,
        Self::Delayed,
        Self::Uncarved,
    ];

    fn from_u8(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == b)
    }

    /// The name used in the viewer (the allocator's own list names).
    pub fn name(self) -> &'static str {
        match self {
            Self::InUse => "in use",
            Self::Free => "free",
            Self::LocalFree => "local_free",
            Self::ThreadFree => "thread_free",
            Self::Delayed => "delayed",
            Self::Uncarved => "not carved",
        }
    }
}

/// One page's state (aligned to a cache line: a page's fields never straddle more lines than
/// they fill, which the alloc and free paths feel).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[repr(align(64))]
pub struct Page {
    /// Address of the first block (`PageInit`'s address; before that, where the first block
    /// would start).
    pub start: u64,
    /// Index in the segment.
    pub index: u16,
    /// Handed to a heap by its segment (between `PageInit` and `PageFree`).
    pub in_use: bool,
    /// `PageKind as u8` (the segment's kind).
    pub kind: u8,
    /// Size class.
    pub bin: u16,
    /// Block size in bytes (kept after `PageFree`, so late frees are still weighed right).
    pub block_size: u64,
    /// Blocks the page can hold.
    pub reserved: u32,
    /// Blocks carved so far.
    pub capacity: u32,
    /// Blocks not on `free` or `local_free` (includes `thread_free` and delayed blocks).
    pub used: i64,
    /// Length of `local_free`.
    pub local_free: i64,
    /// Length of `thread_free`: a signed running sum (see the module docs).
    pub thread_free: i64,
    /// Blocks of this page on the owner heap's delayed list: a signed running sum.
    pub delayed: i64,
    /// In its heap's full queue.
    pub in_full: bool,
    /// Some block was handed out at an aligned interior address: frees are mapped to block starts.
    pub has_aligned: bool,
    /// Owning heap id; 0 when abandoned or not in use.
    pub owner: u32,
    /// The page was freed with blocks carved (its memory touched) and no purge has covered it
    /// since: memory waiting to go back to the OS.
    pub awaiting_purge: bool,
    /// Events were lost since the page was last set from a census: its counts may be wrong
    /// until its heap's next census part (or the next whole census) sets them again. Not in
    /// keyframes (a keyframe is a state with nothing lost).
    #[serde(skip)]
    pub unsure: bool,
    /// The page was set from a census, which does not say how many of its blocks wait on the
    /// owner heap's delayed list (`delayed` was set to 0): until its next `PageInit`, the
    /// owner's frees from that list that would take `delayed` below 0 are of those blocks.
    #[serde(skip)]
    pub(crate) delayed_unknown: bool,
    /// The last event that touched the page.
    pub last: LastEvent,
    /// Live blocks of the current block size, by block number.
    pub live: LiveTable,
    /// `2^43 / block_size + 1`, for `block_index`; 0: no live table (huge page, or not set up).
    pub(crate) div_magic: u64,
}

impl Page {
    /// A page of nothing yet, at `start`.
    pub(crate) fn empty(index: u16, start: u64, kind: u8) -> Self {
        Self {
            start,
            index,
            kind,
            ..Self::default()
        }
    }

    /// Each block's state, for the first `reserved` blocks (a huge page: its one block).
    ///
    /// In-use and not-carved blocks are exact. A freed block is on the list its free put it on,
    /// moved along by collects; where that is not known (freed before the keyframe a replay
    /// started from) or disagrees with the page's list lengths, blocks are assigned so that
    /// the strip's counts equal the lengths: `free` first, then `local_free`, `thread_free`.
    pub fn block_states(&self) -> Vec<BlockState> {
        let reserved = (self.reserved as usize).max(1);
        let capacity = (self.capacity as usize).min(reserved);
        let mut out = vec![BlockState::Uncarved; reserved];
        if self.div_magic == 0 {
            // No table (huge page): its one block is in use while anything is used.
            if self.used > 0 {
                out[0] = BlockState::InUse;
            }
            return out;
        }
        let mut want = [
            (BlockState::Free, self.free_len().max(0)),
            (BlockState::LocalFree, self.local_free.max(0)),
            (BlockState::ThreadFree, self.thread_free.max(0)),
            (BlockState::Delayed, self.delayed.max(0)),
        ];
        let mut unknown = Vec::new();
        for (i, state) in out.iter_mut().enumerate().take(capacity) {
            if self.live.get(i).0 > 0 {
                *state = BlockState::InUse;
                continue;
            }
            let tagged = BlockState::from_u8(self.live.list_of(i));
            match want.iter_mut().find(|(s, _)| Some(*s) == tagged) {
                Some((s, n)) if *n > 0 => {
                    *n -= 1;
                    *state = *s;
                }
                _ => unknown.push(i),
            }
        }
        let mut left = want.iter_mut().flat_map(|(s, n)| {
            let k = usize::try_from(*n).unwrap_or(0);
            std::iter::repeat_n(*s, k)
        });
        for i in unknown {
            out[i] = left.next().unwrap_or(BlockState::Free);
        }
        out
    }

    /// The page kind.
    pub fn page_kind(&self) -> PageKind {
        page_kind(self.kind)
    }

    /// Length of `free`: `capacity - used - local_free` (mimalloc's invariant).
    pub fn free_len(&self) -> i64 {
        i64::from(self.capacity)
            .wrapping_sub(self.used)
            .wrapping_sub(self.local_free)
    }

    /// Blocks the program holds: `used` less the blocks freed by other threads and not yet
    /// collected (`thread_free`, delayed).
    #[inline(always)]
    pub fn held(&self) -> i64 {
        self.used
            .wrapping_sub(self.thread_free)
            .wrapping_sub(self.delayed)
    }

    /// Bytes of blocks the program holds.
    #[inline(always)]
    pub fn held_bytes(&self) -> i64 {
        self.held().wrapping_mul(self.block_size as i64)
    }

    /// Bytes the page can hold (`reserved * block_size`) while in use, else 0.
    pub fn capacity_bytes(&self) -> i64 {
        if self.in_use {
            i64::from(self.reserved).wrapping_mul(self.block_size as i64)
        } else {
            0
        }
    }

    /// The address of block number `i` of the page's current layout.
    #[inline(always)]
    pub fn block_addr(&self, i: u64) -> u64 {
        self.start.wrapping_add(i.wrapping_mul(self.block_size))
    }

    /// The start of the block holding `addr` (interior pointers of aligned allocations).
    #[inline]
    pub fn block_start(&self, addr: u64) -> u64 {
        if self.block_size == 0 || addr < self.start {
            return addr;
        }
        let off = addr - self.start;
        addr - off % self.block_size
    }

    /// Sets the block size the live table is laid out for.
    pub(crate) fn set_layout(&mut self, block_size: u64, kind: u8) {
        self.div_magic = if kind != PageKind::Huge as u8
            && block_size >= MAX_ALIGN as u64
            && block_size <= LARGE_OBJ_SIZE_MAX as u64
        {
            (1u64 << DIV_SHIFT) / block_size + 1
        } else {
            0
        };
    }

    /// The number of the block holding `addr`, for pages with a live table.
    #[inline(always)]
    pub fn block_index(&self, addr: u64) -> Option<usize> {
        let off = addr.wrapping_sub(self.start);
        if self.div_magic == 0 || off >= 1 << OFFSET_BITS {
            return None;
        }
        Some(((off * self.div_magic) >> DIV_SHIFT) as usize)
    }

    /// The live-table slot of the block at `addr`: its block number, if `addr` is a block start
    /// of the page's current layout (or any address inside a block, on a page with aligned
    /// blocks). A free that arrives before its page was set up anew for another block size is not
    /// a block start of the old layout, and goes to the overflow instead.
    #[inline(always)]
    pub(crate) fn table_index(&self, addr: u64) -> Option<usize> {
        let i = self.block_index(addr)?;
        if self.has_aligned || self.block_addr(i as u64) == addr {
            Some(i)
        } else {
            None
        }
    }

    /// Blocks the live table may grow to: `reserved`, and never more than a 4 MiB offset holds
    /// (an event's `reserved` is not trusted to size memory).
    pub(crate) fn table_limit(&self) -> usize {
        (self.reserved as usize).min(1 << (OFFSET_BITS - MAX_ALIGN.trailing_zeros()))
    }

    /// Whether nothing remains that later events could still settle (a freed segment's page).
    pub(crate) fn settled(&self) -> bool {
        self.thread_free == 0 && self.delayed == 0
    }

    /// Resets the owner-side state (what `PageFree` leaves).
    pub(crate) fn clear_owner_state(&mut self) {
        self.in_use = false;
        self.owner = 0;
        self.capacity = 0;
        self.used = 0;
        self.local_free = 0;
        self.in_full = false;
        self.has_aligned = false;
    }

    /// Clears what a census sets: [`Page::clear_owner_state`] and the cross-thread lists.
    pub(crate) fn clear_for_census(&mut self) {
        self.clear_owner_state();
        self.thread_free = 0;
        self.delayed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heaplens_alloc::bin::{BIN_LARGE_MAX, block_size};

    #[test]
    fn block_index_divides_exactly_for_every_bin() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for bin in 1..=BIN_LARGE_MAX {
            let bs = block_size(bin) as u64;
            let mut p = Page::empty(0, 0x7f00_0000_1000, 0);
            p.block_size = bs;
            p.set_layout(bs, PageKind::Large as u8);
            let max = (1u64 << OFFSET_BITS) - 1;
            let check = |off: u64| {
                assert_eq!(
                    p.block_index(p.start + off),
                    Some((off / bs) as usize),
                    "bs {bs} off {off}"
                );
            };
            for k in 0..=(max / bs) {
                for d in [0, 1, bs - 1] {
                    if k * bs + d <= max {
                        check(k * bs + d);
                    }
                }
                if k > 4096 {
                    break;
                }
            }
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                check(x % (max + 1));
            }
            check(max);
        }
    }
}
