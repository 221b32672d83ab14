//! `libheaplens.so`: heaplens as the C `malloc` family, for `LD_PRELOAD` or direct linking,
//! plus the prefixed `hl_*` API declared in `allocator/include/heaplens.h`.
//!
//! The allocator core (`heaplens_alloc`) never touches `errno` and knows nothing of C's
//! argument rules; this layer adds both, one small function per entry point:
//! - impossible sizes (overflowing `count * size`, anything the core refuses) give NULL and `ENOMEM`;
//! - bad alignments give `EINVAL` (`posix_memalign` returns it and leaves `*memptr` alone);
//! - a failed `realloc` leaves the old block as it was.
//!
//! Nothing here may panic: a panic unwinding out of an `extern "C"` function aborts the process.
//! No indexing, no `unwrap`; arithmetic on caller sizes is checked.
#![allow(unsafe_code)] // a C ABI takes and returns raw pointers; every block says why it holds.

use core::ffi::{c_char, c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

use heaplens_alloc as hl;

mod dl;

/// Sets the calling thread's `errno`.
fn set_errno(code: c_int) {
    // SAFETY: `__errno_location` returns a valid pointer to the calling thread's errno.
    unsafe { *libc::__errno_location() = code };
}

/// Returns `p` to C, setting `errno` to `ENOMEM` when the core could not serve the request.
fn or_enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// NULL with `errno` = `ENOMEM`: the request cannot be represented or served.
fn enomem() -> *mut c_void {
    set_errno(libc::ENOMEM);
    ptr::null_mut()
}

/// NULL with `errno` = `EINVAL`: the alignment is not a power of two.
fn einval() -> *mut c_void {
    set_errno(libc::EINVAL);
    ptr::null_mut()
}

/// `count * size`, or `None` when it overflows (`calloc`, `reallocarray`).
fn array_size(count: usize, size: usize) -> Option<usize> {
    count.checked_mul(size)
}

/// `posix_memalign` accepts a power of two that is a multiple of `sizeof(void *)`.
fn is_posix_alignment(align: usize) -> bool {
    align.is_power_of_two() && align.is_multiple_of(size_of::<*mut c_void>())
}

/// The OS page size, read once. `sysconf(_SC_PAGESIZE)` returns a value the dynamic loader
/// recorded at startup: it neither allocates nor locks, so it is safe inside `malloc`.
fn page_size() -> usize {
    static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
    let cached = PAGE_SIZE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: `sysconf` has no preconditions; `_SC_PAGESIZE` is a valid name.
    let raw = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let size = usize::try_from(raw)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096);
    PAGE_SIZE.store(size, Ordering::Relaxed);
    size
}

/// Runs `heaplens_alloc::process_init` when the loader runs this library's constructors, before
/// `main`: options are read and process state set up once, early, on one thread, rather than
/// lazily inside whichever allocation comes first.
extern "C" fn init() {
    hl::process_init();
    dl::init();
    // The C entry points keep a frame on the traced path: calibrated when recording starts, so
    // stacks start at the caller of `malloc` (see `heaplens_alloc::stacks`).
    let big = hl::stacks::CALIBRATION_SIZE;
    // SAFETY: `malloc(big)`, `calloc(1, big)`, `realloc(p, n)` and the aligned entry points
    // with `big` reach the stack entry and fail, allocating nothing.
    unsafe {
        use hl::stacks::{CALIBRATION_BLOCK, CALIBRATION_SLOT, register_entry};
        register_entry(malloc as *const () as usize, [big, 0, 0]);
        register_entry(calloc as *const () as usize, [1, big, 0]);
        // `realloc(NULL, n)` and `realloc(p, n)` reach `malloc` through two call sites.
        let realloc_entry = realloc as *const () as usize;
        let n = hl::stacks::CALIBRATION_REALLOC_SIZE;
        register_entry(realloc_entry, [0, n, 0]);
        register_entry(realloc_entry, [CALIBRATION_BLOCK, n, 0]);
        // The aligned entry points: one call site each, whatever the alignment.
        let memptr = CALIBRATION_SLOT;
        register_entry(posix_memalign as *const () as usize, [memptr, 64, big]);
        register_entry(aligned_alloc as *const () as usize, [64, big, 0]);
        register_entry(memalign as *const () as usize, [64, big, 0]);
        register_entry(valloc as *const () as usize, [big, 0, 0]);
        register_entry(pvalloc as *const () as usize, [big, 0, 0]);
    }
    // Launched by `heaplens record`/`run`: stream events to the socket it names. A failure to
    // connect leaves the program running untraced; nothing may unwind out of a constructor.
    let streaming = std::panic::catch_unwind(hl::wire::stream_from_env).unwrap_or(false);
    // Otherwise, with `HEAPLENS_ATTACH=1`: dormant, listening for `heaplens attach PID`.
    if !streaming {
        let _ = std::panic::catch_unwind(hl::attach::listen_from_env);
    }
}

// SAFETY: the loader calls each function pointer in `.init_array` once, on the loading thread,
// before `main`. glibc passes (argc, argv, envp); `init` takes no arguments, which the C calling
// convention allows (extra arguments are ignored). `init` itself has no preconditions.
#[used]
#[unsafe(link_section = ".init_array")]
static INIT_ARRAY_ENTRY: extern "C" fn() = init;

// --- the standard C / POSIX / glibc entry points --------------------------------------------

/// C `malloc`: a block of at least `size` bytes, 16-byte aligned; `malloc(0)` is a unique
/// pointer. NULL with `ENOMEM` on failure.
///
/// # Safety
/// None beyond C's: release the result only with this library's `free`/`realloc`.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // SAFETY: the core's fast path may be called with any size from any thread.
    let p = unsafe { hl::alloc::malloc_fast(size) };
    if !p.is_null() {
        return p.cast();
    }
    // SAFETY: as above.
    unsafe { malloc_slow(size) }
}

/// [`malloc`] when its fast path has no block: the rest of the core's `malloc` (the recording
/// path while the hook is on, else the generic path), and `errno`. Out of
/// line and `extern "C"` (it cannot unwind), so `malloc`'s fast path is a leaf: no stack frame.
///
/// # Safety
/// As for [`malloc`].
#[inline(never)]
unsafe extern "C" fn malloc_slow(size: usize) -> *mut c_void {
    // SAFETY: the rest of the core's `malloc` after its fast path missed, any size, any thread.
    or_enomem(unsafe { hl::alloc::malloc_missed(size) })
}

/// C `free`: releases `p`; NULL is a no-op.
///
/// # Safety
/// `p` is NULL or a live block from this allocator that is not used afterwards.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: the caller guarantees `p` is NULL or a live heaplens block.
    unsafe { hl::free(p.cast()) }
}

/// Old Unix `cfree`: the same as `free`.
///
/// # Safety
/// As for [`free`].
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: the caller guarantees `p` is NULL or a live heaplens block.
    unsafe { hl::free(p.cast()) }
}

/// C `calloc`: `count * size` zeroed bytes. NULL with `ENOMEM` when the product overflows
/// or on failure.
///
/// # Safety
/// As for [`malloc`].
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    if array_size(count, size).is_none() {
        return enomem();
    }
    // SAFETY: the core's `calloc` may be called with any sizes from any thread.
    or_enomem(unsafe { hl::calloc(count, size) })
}

/// C `realloc`: NULL `p` acts as `malloc`; size 0 frees `p` and returns a fresh minimal
/// block. On failure returns NULL with `ENOMEM` and leaves `p` as it was.
///
/// # Safety
/// `p` is NULL or a live block from this allocator; on success it must not be used again.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the caller guarantees `p` is NULL or a live heaplens block.
    or_enomem(unsafe { hl::realloc(p.cast(), size) })
}

/// BSD/glibc `reallocarray`: `realloc(p, count * size)`, but NULL with `ENOMEM` (and `p`
/// untouched) when the product overflows.
///
/// # Safety
/// As for [`realloc`].
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, count: usize, size: usize) -> *mut c_void {
    let Some(total) = array_size(count, size) else {
        return enomem();
    };
    // SAFETY: the caller guarantees `p` is NULL or a live heaplens block.
    or_enomem(unsafe { hl::realloc(p.cast(), total) })
}

/// POSIX `posix_memalign`: stores an `align`-aligned block of `size` bytes in `*memptr` and
/// returns 0. Returns `EINVAL` when `align` is not a power of two multiple of `sizeof(void *)`,
/// `ENOMEM` on failure; in both cases `*memptr` is left alone and `errno` is not touched.
///
/// # Safety
/// `memptr` is valid for a pointer-sized write.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn posix_memalign(
    memptr: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    if !is_posix_alignment(align) {
        return libc::EINVAL;
    }
    // SAFETY: `align` is a power of two, which is all the core asks.
    let p = unsafe { hl::malloc_aligned(size, align) };
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller guarantees `memptr` is valid for writes.
    unsafe { memptr.write(p.cast()) };
    0
}

/// C11 `aligned_alloc`: an `align`-aligned block of `size` bytes (any size). NULL with
/// `EINVAL` when `align` is not a power of two, with `ENOMEM` on failure.
///
/// # Safety
/// As for [`malloc`].
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return einval();
    }
    // SAFETY: `align` is a power of two, which is all the core asks.
    or_enomem(unsafe { hl::malloc_aligned(size, align) })
}

/// Obsolete `memalign`: as [`aligned_alloc`] (a non-power-of-two `align` is `EINVAL`, where
/// glibc would round it up).
///
/// # Safety
/// As for [`malloc`].
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return einval();
    }
    // SAFETY: `align` is a power of two, which is all the core asks.
    or_enomem(unsafe { hl::malloc_aligned(size, align) })
}

/// Obsolete `valloc`: a page-aligned block of `size` bytes.
///
/// # Safety
/// As for [`malloc`].
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    // SAFETY: the page size is a power of two.
    or_enomem(unsafe { hl::malloc_aligned(size, page_size()) })
}

/// Obsolete `pvalloc`: a page-aligned block of `size` rounded up to a whole number of pages.
/// NULL with `ENOMEM` when the rounding overflows.
///
/// # Safety
/// As for [`malloc`].
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    let Some(rounded) = size.checked_next_multiple_of(page) else {
        return enomem();
    };
    // SAFETY: the page size is a power of two.
    or_enomem(unsafe { hl::malloc_aligned(rounded, page) })
}

/// glibc `malloc_usable_size`: the bytes usable at `p` (at least what was asked); 0 for NULL.
///
/// # Safety
/// `p` is NULL or a live block from this allocator.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: the caller guarantees `p` is NULL or a live heaplens block.
    unsafe { hl::usable_size(p.cast_const().cast()) }
}

// --- the prefixed API of heaplens.h ------------------------------------------------------------

/// `hl_malloc`: as [`malloc`], always heaplens even where `malloc` is not replaced.
///
/// # Safety
/// Release the result only with `hl_free`/`hl_realloc` (or this library's `free`).
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn hl_malloc(size: usize) -> *mut c_void {
    // SAFETY: the core's `malloc` may be called with any size from any thread.
    or_enomem(unsafe { hl::malloc(size) })
}

/// `hl_calloc`: as [`calloc`].
///
/// # Safety
/// As for [`hl_malloc`].
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn hl_calloc(count: usize, size: usize) -> *mut c_void {
    if array_size(count, size).is_none() {
        return enomem();
    }
    // SAFETY: the core's `calloc` may be called with any sizes from any thread.
    or_enomem(unsafe { hl::calloc(count, size) })
}

/// `hl_realloc`: as [`realloc`].
///
/// # Safety
/// As for [`realloc`].
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn hl_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the caller guarantees `p` is NULL or a live heaplens block.
    or_enomem(unsafe { hl::realloc(p.cast(), size) })
}

/// `hl_free`: as [`free`].
///
/// # Safety
/// As for [`free`].
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn hl_free(p: *mut c_void) {
    // SAFETY: the caller guarantees `p` is NULL or a live heaplens block.
    unsafe { hl::free(p.cast()) }
}

/// `hl_malloc_aligned`: `size` bytes aligned to `align`, any power of two. NULL with `EINVAL`
/// when `align` is not a power of two, with `ENOMEM` on failure.
///
/// # Safety
/// As for [`hl_malloc`].
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn hl_malloc_aligned(size: usize, align: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return einval();
    }
    // SAFETY: `align` is a power of two, which is all the core asks.
    or_enomem(unsafe { hl::malloc_aligned(size, align) })
}

/// `hl_usable_size`: as [`malloc_usable_size`].
///
/// # Safety
/// As for [`malloc_usable_size`].
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn hl_usable_size(p: *const c_void) -> usize {
    // SAFETY: the caller guarantees `p` is NULL or a live heaplens block.
    unsafe { hl::usable_size(p.cast()) }
}

/// `hl_stats_print`: writes the allocator's statistics summary to stderr, without allocating.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn hl_stats_print() {
    hl::print_stats(libc::STDERR_FILENO);
}

/// `hl_mark`: a user marker on the viewer's timeline (nothing when no recording runs). Labels
/// longer than 16 bytes take several events; bytes that are not UTF-8 are replaced.
///
/// # Safety
/// `label` is NULL (ignored) or a NUL-terminated string.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn hl_mark(label: *const c_char) {
    if label.is_null() || !heaplens_alloc::hook::enabled() {
        return;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let bytes = unsafe { core::ffi::CStr::from_ptr(label) }.to_bytes();
    let mut text = [0u8; 64];
    let n = bytes.len().min(text.len());
    text[..n].copy_from_slice(&bytes[..n]);
    // Invalid UTF-8 is cut at the first bad byte rather than allocating a lossy copy.
    let valid = match core::str::from_utf8(&text[..n]) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&text[..e.valid_up_to()]).unwrap_or(""),
    };
    heaplens_alloc::hook::mark(valid);
}

#[cfg(test)]
mod tests {
    //! The C layer's own rules, called as Rust functions (in this test binary they do not
    //! replace the process's `malloc`). The C programs under `tests/` check them end to end.
    use super::*;

    fn errno() -> c_int {
        // SAFETY: `__errno_location` returns a valid pointer to the calling thread's errno.
        unsafe { *libc::__errno_location() }
    }

    #[test]
    fn overflowing_products_are_enomem() {
        set_errno(0);
        // SAFETY: no block is passed in; the result is NULL.
        let p = unsafe { calloc(usize::MAX / 2 + 1, 2) };
        assert!(p.is_null());
        assert_eq!(errno(), libc::ENOMEM);

        // SAFETY: `old` comes from this allocator and is freed once, below.
        let old = unsafe { malloc(8) };
        assert!(!old.is_null());
        set_errno(0);
        // SAFETY: `old` is live; the call fails before touching it.
        let p = unsafe { reallocarray(old, 1 << 33, 1 << 33) };
        assert!(p.is_null());
        assert_eq!(errno(), libc::ENOMEM);
        // SAFETY: `old` is still live after the failed reallocarray.
        unsafe { free(old) };
    }

    #[test]
    fn bad_alignments_are_einval() {
        let mut out = 0x1234 as *mut c_void;
        for align in [0, 1, 2, 4, 3, 24, 48, usize::MAX] {
            // SAFETY: `out` is a valid pointer-sized slot.
            let ret = unsafe { posix_memalign(&raw mut out, align, 8) };
            assert_eq!(ret, libc::EINVAL, "align {align}");
            assert_eq!(out, 0x1234 as *mut c_void);
        }
        for align in [0, 3, 24, usize::MAX] {
            set_errno(0);
            // SAFETY: no block is passed in; the results are NULL.
            unsafe {
                assert!(aligned_alloc(align, 8).is_null());
                assert_eq!(errno(), libc::EINVAL);
                set_errno(0);
                assert!(memalign(align, 8).is_null());
                assert_eq!(errno(), libc::EINVAL);
                set_errno(0);
                assert!(hl_malloc_aligned(8, align).is_null());
                assert_eq!(errno(), libc::EINVAL);
            }
        }
    }

    #[test]
    fn pvalloc_rounds_to_pages_and_refuses_overflow() {
        let page = page_size();
        assert!(page.is_power_of_two() && page >= 4096);
        // SAFETY: the block is freed once below.
        unsafe {
            let p = pvalloc(1);
            assert!(!p.is_null());
            assert_eq!(p as usize % page, 0);
            assert!(malloc_usable_size(p) >= page);
            free(p);
        }
        set_errno(0);
        // SAFETY: the result is NULL.
        assert!(unsafe { pvalloc(usize::MAX - 10) }.is_null());
        assert_eq!(errno(), libc::ENOMEM);
    }

    #[test]
    fn posix_alignment_rule() {
        assert!(is_posix_alignment(8) && is_posix_alignment(1 << 40));
        assert!(!is_posix_alignment(4) && !is_posix_alignment(0) && !is_posix_alignment(12));
        assert_eq!(array_size(usize::MAX, 2), None);
        assert_eq!(array_size(3, 5), Some(15));
    }
}
