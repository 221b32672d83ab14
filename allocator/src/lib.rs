//! heaplens-alloc: a mimalloc-design memory allocator you can watch.
//!
//! The words are mimalloc's, so a reader of mimalloc feels at home:
//!
//! - a **segment** ([`segment`]) is a 4 MiB OS-aligned region; `ptr & !SEGMENT_MASK` finds it.
//!   Its first bytes hold the segment header and the metadata of its pages.
//! - a **page** ([`page`]) is a run of memory inside a segment holding blocks of one size.
//!   Small pages are 64 KiB (64 per segment), medium 512 KiB (8 per segment), a large page is
//!   a *span* of 64 KiB slots of a large segment holding one block (a freed span's slots serve
//!   any size), and a huge page is a segment of its own sized to one block.
//! - a **block** is what `malloc` returns; its size comes from its size class, its **bin** ([`bin`]).
//! - a **heap** ([`heap`]) belongs to one thread: direct slots map a small size to a page with
//!   free blocks, a page queue per bin, and a queue of full pages.
//! - every page has three free lists: `free` (malloc pops), `local_free` (the owner's frees, no
//!   atomics) and `thread_free` (other threads' frees, an atomic push).
//!
//! The fast paths are in [`alloc`] (pop `page.free`) and [`free`] (push `page.local_free`);
//! everything else is the generic path. Thread start and exit live in [`init`], the OS layer in
//! [`os`], statistics in [`stats`] and the checked mode in [`check`].
//!
//! Use it as a Rust global allocator with [`HeapLens`], as a C `malloc` through `libheaplens.so`
//! (crate `heaplens-preload`), or call the functions below directly.
#![allow(unsafe_code)] // an allocator is unsafe code; every block says why it holds.

pub mod alloc;
#[cfg(feature = "hook")]
pub mod attach;
pub mod batch;
pub mod bin;
pub mod cfi;
#[cfg(feature = "hook")]
mod channel_wait;
pub mod check;
#[cfg(feature = "hook")]
pub mod collector;
pub mod event;
mod event_stores;
pub mod free;
pub mod global;
pub mod heap;
pub mod hook;
pub mod init;
pub mod module;
pub mod options;
pub mod os;
pub mod pack;
#[cfg(target_arch = "x86_64")]
mod pack_avx512;
pub mod page;
pub mod page_queue;
pub mod pagemap;
pub mod purge_delay;
pub mod ring;
pub mod sample;
pub mod schema;
pub mod segment;
pub mod segment_map;
pub mod stack_table;
pub mod stacks;
mod static_flag;
pub mod stats;
mod sync;
mod tls;
pub mod unwind;
pub mod wire;

pub use alloc::{
    calloc, malloc, malloc_aligned, realloc, realloc_aligned, usable_size, zalloc, zalloc_aligned,
};
pub use free::free;
pub use global::HeapLens;
pub use init::process_init;
pub use sample::{StackMode, set_stack_mode};
pub use stats::{BinStats, Stats, print_stats, stats};

/// log2 of the segment size.
pub const SEGMENT_SHIFT: usize = 22;
/// A segment is 4 MiB and aligned to its size, so `ptr & !SEGMENT_MASK` is its segment.
pub const SEGMENT_SIZE: usize = 1 << SEGMENT_SHIFT;
/// Mask of the offset within a segment.
pub const SEGMENT_MASK: usize = SEGMENT_SIZE - 1;

/// log2 of the small page size.
pub const SMALL_PAGE_SHIFT: usize = 16;
/// Small pages are 64 KiB.
pub const SMALL_PAGE_SIZE: usize = 1 << SMALL_PAGE_SHIFT;
/// log2 of the medium page size.
pub const MEDIUM_PAGE_SHIFT: usize = 19;
/// Medium pages are 512 KiB.
pub const MEDIUM_PAGE_SIZE: usize = 1 << MEDIUM_PAGE_SHIFT;
/// Pages in a segment of small pages.
pub const SMALL_PAGES_PER_SEGMENT: usize = SEGMENT_SIZE / SMALL_PAGE_SIZE;
/// Pages in a segment of medium pages.
pub const MEDIUM_PAGES_PER_SEGMENT: usize = SEGMENT_SIZE / MEDIUM_PAGE_SIZE;

/// Largest block on a small page (a small page holds at least 4).
pub const SMALL_OBJ_SIZE_MAX: usize = SMALL_PAGE_SIZE / 4;
/// Largest block on a medium page (a medium page holds at least 4).
pub const MEDIUM_OBJ_SIZE_MAX: usize = MEDIUM_PAGE_SIZE / 4;
/// Largest block on a large page; anything bigger gets a huge page (a segment of its own).
pub const LARGE_OBJ_SIZE_MAX: usize = SEGMENT_SIZE / 2;

/// Sizes up to this have a direct slot in the heap: the fast path needs no bin computation.
pub const SMALL_SIZE_MAX: usize = 1024;
/// Every block is aligned to this (`max_align_t` on x86-64 and aarch64).
pub const MAX_ALIGN: usize = 16;
/// Requests above this fail (return null) instead of overflowing address arithmetic.
pub const MAX_ALLOC_SIZE: usize = isize::MAX as usize / 2;
