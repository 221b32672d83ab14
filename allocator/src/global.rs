//! heaplens as a Rust global allocator:
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: heaplens_alloc::HeapLens = heaplens_alloc::HeapLens;
//! ```

use core::alloc::{GlobalAlloc, Layout};

use crate::MAX_ALIGN;

/// The heaplens allocator as a [`GlobalAlloc`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapLens;

// SAFETY: every method forwards to the allocator, which returns blocks of at least the Layout's
// size and alignment, or null.
unsafe impl GlobalAlloc for HeapLens {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe {
            if layout.align() <= MAX_ALIGN {
                crate::malloc(layout.size())
            } else {
                crate::malloc_aligned(layout.size(), layout.align())
            }
        }
    }

    /// Fresh OS memory is already zero: blocks from a never-used page skip the memset.
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe {
            if layout.align() <= MAX_ALIGN {
                crate::zalloc(layout.size())
            } else {
                crate::zalloc_aligned(layout.size(), layout.align())
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc contract).
        unsafe { crate::free(ptr) }
    }

    /// Stays in place while the new size fits the block (and wastes under half of it); otherwise
    /// copies only the Layout's size, not the whole old block.
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is live with `layout` (GlobalAlloc contract).
        unsafe { crate::alloc::resize(ptr, layout.size(), new_size, layout.align()) }
    }
}
