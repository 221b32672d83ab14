//! `dlopen` and `dlclose`, forwarded to the C library's, so that the modules they load or unload
//! are known to the stack unwinder at once (frames in a library just loaded resolve) and
//! reported in the trace. The real functions are looked up once, when the library starts.

// The test build exports nothing (see `lib.rs`), so the wrappers are unused there.
#![cfg_attr(test, allow(dead_code))]
use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicUsize, Ordering};

use heaplens_alloc as hl;

static REAL_DLOPEN: AtomicUsize = AtomicUsize::new(0);
static REAL_DLCLOSE: AtomicUsize = AtomicUsize::new(0);

type DlOpen = unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void;
type DlClose = unsafe extern "C" fn(*mut c_void) -> c_int;

/// Looks the real functions up (the library's constructor, outside `malloc`).
pub(crate) fn init() {
    resolve(&REAL_DLOPEN, c"dlopen");
    resolve(&REAL_DLCLOSE, c"dlclose");
}

fn resolve(slot: &AtomicUsize, name: &core::ffi::CStr) -> usize {
    let cached = slot.load(Ordering::Acquire);
    if cached != 0 {
        return cached;
    }
    // SAFETY: RTLD_NEXT with a NUL-terminated name: the next definition after this library.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    slot.store(f, Ordering::Release);
    f
}

/// `dlopen`: the C library's, then the module list is refreshed.
///
/// # Safety
/// As C's `dlopen`.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn dlopen(file: *const c_char, mode: c_int) -> *mut c_void {
    let f = resolve(&REAL_DLOPEN, c"dlopen");
    if f == 0 {
        return core::ptr::null_mut();
    }
    // SAFETY: `f` is the C library's `dlopen`, which has this signature.
    let handle = unsafe { core::mem::transmute::<usize, DlOpen>(f)(file, mode) };
    if !handle.is_null() {
        hl::module::loaded();
    }
    handle
}

/// `dlclose`: the C library's, then the module list is refreshed.
///
/// # Safety
/// As C's `dlclose`.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn dlclose(handle: *mut c_void) -> c_int {
    let f = resolve(&REAL_DLCLOSE, c"dlclose");
    if f == 0 {
        return -1;
    }
    // SAFETY: `f` is the C library's `dlclose`, which has this signature.
    let rc = unsafe { core::mem::transmute::<usize, DlClose>(f)(handle) };
    if rc == 0 {
        hl::module::loaded();
    }
    rc
}
