//! heaplens's C marker `void hl_mark(const char *label)`, found at run time: present when
//! `libheaplens.so` is preloaded, absent (markers are no-ops) under any other allocator.

use std::ffi::{CString, c_char, c_void};
use std::sync::OnceLock;

type MarkFn = unsafe extern "C" fn(*const c_char);

static HL_MARK: OnceLock<Option<MarkFn>> = OnceLock::new();

fn lookup() -> Option<MarkFn> {
    // SAFETY: `dlsym` with the pseudo-handle RTLD_DEFAULT and a NUL-terminated name only searches
    // the loaded objects; it returns null when none defines the symbol.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"hl_mark".as_ptr()) };
    if sym.is_null() {
        return None;
    }
    // SAFETY: the symbol `hl_mark` is heaplens's `void hl_mark(const char *label)` (heaplens.h),
    // a C function of exactly this signature; a data pointer and a function pointer have the
    // same size and representation on the platforms libc's dlsym exists for.
    Some(unsafe { std::mem::transmute::<*mut c_void, MarkFn>(sym) })
}

/// True when heaplens's `hl_mark` is in the process (`libheaplens.so` preloaded).
pub fn preloaded() -> bool {
    HL_MARK.get_or_init(lookup).is_some()
}

/// Sends the user marker `label` to heaplens's `hl_mark` when it is preloaded (it records the
/// marker only while a recording runs); nothing otherwise. A label with a NUL byte is cut there.
pub fn hl_mark(label: &str) {
    let Some(f) = *HL_MARK.get_or_init(lookup) else {
        return;
    };
    let label = label.split('\0').next().unwrap_or_default();
    let Ok(c) = CString::new(label) else {
        return;
    };
    // SAFETY: `f` is `hl_mark` (see `lookup`), which accepts any NUL-terminated string; `c`
    // lives until the call returns.
    unsafe { f(c.as_ptr()) };
}
