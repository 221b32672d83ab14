//! Size classes ("bins"), as in mimalloc: exact per 16 B up to 64 B, then four bins per power of
//! two. A request of `size` bytes gets a block of `block_size(bin_of(size))` bytes.
//!
//! Waste: between 2^k and 2^(k+1) the four bins sit at 1.25, 1.5, 1.75 and 2 times 2^k, so a
//! block is at most 20% larger than its request (the worst case is just above a bin edge, e.g.
//! 257 B in a 320 B block) and on average under 8% for sizes spread across a doubling. Four bins
//! per doubling (not eight) keeps the number of partly filled pages, the page-level waste, small.

use crate::{LARGE_OBJ_SIZE_MAX, MEDIUM_OBJ_SIZE_MAX, SMALL_OBJ_SIZE_MAX};

/// The largest regular bin: blocks up to [`LARGE_OBJ_SIZE_MAX`].
pub const BIN_LARGE_MAX: usize = bin_of(LARGE_OBJ_SIZE_MAX);
/// Huge blocks, each on a page (and segment) of its own.
pub const BIN_HUGE: usize = BIN_LARGE_MAX + 1;
/// The heap's queue of full pages (not a size class).
pub const BIN_FULL: usize = BIN_HUGE + 1;
/// Number of page queues in a heap; bin 0 is unused.
pub const BIN_COUNT: usize = BIN_FULL + 1;

/// The size class of a request of `size` bytes (`size <= LARGE_OBJ_SIZE_MAX`).
#[inline]
pub const fn bin_of(size: usize) -> usize {
    let granules = size.div_ceil(16);
    if granules <= 1 {
        1
    } else if granules <= 4 {
        granules
    } else {
        let w = granules - 1;
        let b = (usize::BITS - 1 - w.leading_zeros()) as usize; // floor(log2(w)) >= 2
        ((b << 2) + ((w >> (b - 2)) & 3)) - 3
    }
}

/// The block size of a regular bin (`1..=BIN_LARGE_MAX`): the largest request that maps to it.
pub const fn block_size(bin: usize) -> usize {
    let granules = if bin <= 4 {
        bin
    } else {
        let b = (bin + 3) >> 2;
        let r = (bin + 3) & 3;
        (4 + r + 1) << (b - 2)
    };
    granules * 16
}

/// The kind of page blocks of a bin live on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum PageKind {
    /// 64 KiB pages, 64 to a segment.
    Small = 0,
    /// 512 KiB pages, 8 to a segment.
    Medium = 1,
    /// One page filling a segment.
    Large = 2,
    /// One block in a segment of its own size.
    Huge = 3,
}

impl PageKind {
    /// The kind for a block of `block_size` bytes.
    #[inline]
    pub const fn for_block_size(block_size: usize) -> Self {
        if block_size <= SMALL_OBJ_SIZE_MAX {
            Self::Small
        } else if block_size <= MEDIUM_OBJ_SIZE_MAX {
            Self::Medium
        } else if block_size <= LARGE_OBJ_SIZE_MAX {
            Self::Large
        } else {
            Self::Huge
        }
    }

    /// A lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Medium => "medium",
            Self::Large => "large",
            Self::Huge => "huge",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bins_up_to_64_bytes() {
        assert_eq!(bin_of(0), 1);
        assert_eq!(bin_of(1), 1);
        assert_eq!(bin_of(16), 1);
        assert_eq!(bin_of(17), 2);
        assert_eq!(bin_of(48), 3);
        assert_eq!(bin_of(64), 4);
        assert_eq!(bin_of(65), 5);
        for bin in 1..=4 {
            assert_eq!(block_size(bin), bin * 16);
        }
    }

    #[test]
    fn four_bins_per_power_of_two() {
        let sizes: [usize; 12] = [80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512];
        for (i, s) in sizes.iter().enumerate() {
            assert_eq!(block_size(5 + i), *s, "bin {}", 5 + i);
            assert_eq!(bin_of(*s), 5 + i);
            assert_eq!(bin_of(*s + 1), 6 + i);
        }
    }

    #[test]
    fn every_size_fits_its_block_and_waste_is_bounded() {
        let mut size = 0;
        while size <= LARGE_OBJ_SIZE_MAX {
            let bin = bin_of(size);
            let bs = block_size(bin);
            assert!(bs >= size, "size {size} bin {bin} block {bs}");
            assert!(
                bin == 1 || block_size(bin - 1) < size,
                "size {size} not in the smallest bin"
            );
            assert!(bs.is_multiple_of(16));
            // at most 20% of the block is waste (the bound of 4 bins per doubling)
            assert!((bs - size) * 5 <= bs || bs <= 64, "size {size} block {bs}");
            size += if size < 4096 { 1 } else { 61 };
        }
        assert_eq!(block_size(BIN_LARGE_MAX), LARGE_OBJ_SIZE_MAX);
    }

    #[test]
    fn bins_are_monotonic_and_kinds_follow_sizes() {
        for bin in 2..=BIN_LARGE_MAX {
            assert!(block_size(bin) > block_size(bin - 1));
        }
        assert_eq!(
            PageKind::for_block_size(block_size(bin_of(SMALL_OBJ_SIZE_MAX))),
            PageKind::Small
        );
        assert_eq!(
            PageKind::for_block_size(SMALL_OBJ_SIZE_MAX + 1),
            PageKind::Medium
        );
        assert_eq!(
            PageKind::for_block_size(LARGE_OBJ_SIZE_MAX + 1),
            PageKind::Huge
        );
    }
}
