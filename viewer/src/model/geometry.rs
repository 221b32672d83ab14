//! The allocator's geometry a trace was recorded with: segment size, page sizes, the segment
//! header's size and the block size of every bin. The hook records it in the trace's metadata
//! ([`Metadata::with_allocator_constants`], the live stream's `Meta` frame); the model reads pages
//! and blocks with it, so a trace is replayed only if its geometry is the one this build models
//! ([`Geometry::of`]). A trace that does not say (recorded before the metadata carried it) was
//! recorded with today's.

use std::fmt;

use crate::trace::Metadata;

/// The geometry a trace's events are to be read with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per segment.
    pub segment_size: u64,
    /// Bytes per small page.
    pub small_page_size: u64,
    /// Bytes per medium page.
    pub medium_page_size: u64,
    /// Bytes of the segment header and page metadata.
    pub segment_info_size: u64,
    /// Block size of bins `1..` (element 0 is bin 1).
    pub bin_block_sizes: Vec<u64>,
}

impl Geometry {
    /// The geometry this build's allocator has, which is the one its model reads.
    pub fn this_build() -> Self {
        use heaplens_alloc::bin::{BIN_LARGE_MAX, block_size};
        Self {
            segment_size: heaplens_alloc::SEGMENT_SIZE as u64,
            small_page_size: heaplens_alloc::SMALL_PAGE_SIZE as u64,
            medium_page_size: heaplens_alloc::MEDIUM_PAGE_SIZE as u64,
            segment_info_size: heaplens_alloc::segment::INFO_SIZE as u64,
            bin_block_sizes: (1..=BIN_LARGE_MAX).map(|b| block_size(b) as u64).collect(),
        }
    }

    /// The geometry `meta` records, if this build models it. A field the metadata leaves out
    /// (0, or no bins) is taken as this build's: traces written before the metadata carried
    /// the geometry were recorded with today's.
    pub fn of(meta: &Metadata) -> Result<Self, Unsupported> {
        let ours = Self::this_build();
        let given = |v: u64, ours: u64| if v == 0 { ours } else { v };
        let theirs = Self {
            segment_size: given(meta.segment_size, ours.segment_size),
            small_page_size: given(meta.small_page_size, ours.small_page_size),
            medium_page_size: given(meta.medium_page_size, ours.medium_page_size),
            segment_info_size: given(meta.segment_info_size, ours.segment_info_size),
            bin_block_sizes: if meta.bin_block_sizes.is_empty() {
                ours.bin_block_sizes.clone()
            } else {
                meta.bin_block_sizes.clone()
            },
        };
        let sizes = [
            (
                "segments",
                theirs.segment_size,
                ours.segment_size,
                Unit::Bytes,
            ),
            (
                "small pages",
                theirs.small_page_size,
                ours.small_page_size,
                Unit::Bytes,
            ),
            (
                "medium pages",
                theirs.medium_page_size,
                ours.medium_page_size,
                Unit::Bytes,
            ),
            (
                "segment headers",
                theirs.segment_info_size,
                ours.segment_info_size,
                Unit::Bytes,
            ),
            (
                "bins",
                theirs.bin_block_sizes.len() as u64,
                ours.bin_block_sizes.len() as u64,
                Unit::Count,
            ),
        ];
        for (what, found, supported, unit) in sizes {
            if found != supported {
                return Err(Unsupported {
                    what,
                    found,
                    supported,
                    unit,
                });
            }
        }
        let differs = theirs
            .bin_block_sizes
            .iter()
            .zip(&ours.bin_block_sizes)
            .position(|(a, b)| a != b);
        if let Some(i) = differs {
            return Err(Unsupported {
                what: "bin",
                found: theirs.bin_block_sizes[i],
                supported: ours.bin_block_sizes[i],
                unit: Unit::Bin(i as u64 + 1),
            });
        }
        Ok(theirs)
    }
}

/// How an [`Unsupported`] figure reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Bytes,
    Count,
    /// The block size of this bin.
    Bin(u64),
}

/// A trace recorded with a geometry this build does not model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    what: &'static str,
    found: u64,
    supported: u64,
    unit: Unit,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, found, supported) = (self.what, self.found, self.supported);
        match self.unit {
            Unit::Bytes => write!(
                f,
                "this trace was recorded with {} {what}; this heaplens supports {}",
                size(found),
                size(supported)
            ),
            Unit::Count => write!(
                f,
                "this trace was recorded with {found} {what}; this heaplens supports {supported}"
            ),
            Unit::Bin(bin) => write!(
                f,
                "this trace was recorded with {found}-byte blocks in {what} {bin}; this heaplens \
                 supports {supported}-byte blocks there"
            ),
        }
    }
}

impl std::error::Error for Unsupported {}

/// "4 MiB", "64 KiB", "1104 bytes".
fn size(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_without_geometry_has_todays() {
        assert_eq!(
            Geometry::of(&Metadata::default()),
            Ok(Geometry::this_build())
        );
        assert_eq!(
            Geometry::of(&Metadata::with_allocator_constants()),
            Ok(Geometry::this_build())
        );
    }

    #[test]
    fn another_geometry_is_refused_in_one_sentence() {
        let mut m = Metadata::with_allocator_constants();
        m.segment_size = 64 << 20;
        let ours = size(heaplens_alloc::SEGMENT_SIZE as u64);
        assert_eq!(
            Geometry::of(&m).unwrap_err().to_string(),
            format!("this trace was recorded with 64 MiB segments; this heaplens supports {ours}")
        );
        let mut m = Metadata::with_allocator_constants();
        m.small_page_size = 32 << 10;
        assert!(
            Geometry::of(&m)
                .unwrap_err()
                .to_string()
                .starts_with("this trace was recorded with 32 KiB small pages;")
        );
        let mut m = Metadata::with_allocator_constants();
        m.bin_block_sizes[5] += 8;
        let found = m.bin_block_sizes[5];
        assert_eq!(
            Geometry::of(&m).unwrap_err().to_string(),
            format!(
                "this trace was recorded with {found}-byte blocks in bin 6; this heaplens \
                 supports {}-byte blocks there",
                found - 8
            )
        );
        let mut m = Metadata::with_allocator_constants();
        m.bin_block_sizes.pop();
        assert!(Geometry::of(&m).is_err());
    }
}
