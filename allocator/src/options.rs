//! Options from the environment, read once at process initialisation with `getenv` (which does
//! not allocate). `std::env::var` would allocate inside `malloc` and recurse.

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64, Ordering::Relaxed};

static SHOW_STATS: AtomicBool = AtomicBool::new(false);
static PURGE_DELAY_MS: AtomicU64 = AtomicU64::new(10);
static CENSUS_MS: AtomicU64 = AtomicU64::new(1000);

/// `HEAPLENS_SHOW_STATS=1`: print a summary of the heap at exit.
pub fn show_stats() -> bool {
    SHOW_STATS.load(Relaxed)
}

/// `HEAPLENS_CHECK=1`: checked mode (see [`crate::check`]).
#[inline]
pub fn check() -> bool {
    WATCH.load(Relaxed) & WATCH_CHECK != 0
}

/// Why `free` leaves its fast path for [`crate::free`]'s watched twin: bits of [`WATCH`].
pub(crate) const WATCH_CHECK: u8 = 1;
pub(crate) const WATCH_HOOK: u8 = 2;
/// Checked mode and the hook in one byte, so that `free` with the hook compiled in but off
/// tests the same single flag as with the hook compiled out.
static WATCH: AtomicU8 = AtomicU8::new(0);

/// Why `free` must take its watched path: [`WATCH_CHECK`], [`WATCH_HOOK`], both, or 0 (it
/// need not).
#[inline(always)]
pub(crate) fn watch() -> u8 {
    #[allow(clippy::cast_possible_truncation)] // a byte, zero-extended
    let watch = crate::static_flag::load_static_flag!(WATCH) as u8;
    watch
}

/// Whether `free` must take its watched path ([`watch`] is not 0), in one compare and jump.
#[inline(always)]
pub(crate) fn watching() -> bool {
    crate::static_flag::static_flag_is_set!(WATCH)
}

/// Sets or clears one reason to watch `free`.
pub(crate) fn set_watch(bit: u8, on: bool) {
    if on {
        WATCH.fetch_or(bit, Relaxed);
    } else {
        WATCH.fetch_and(!bit, Relaxed);
    }
}

/// `HEAPLENS_PURGE_DELAY_MS` (default 10): how long empty memory waits before it goes back to the
/// OS (a free page, once its segment has freed no page for that long), at the shortest: a thread
/// whose purged memory is taken again soon waits longer ([`crate::purge_delay`]). The delay stops
/// a program that frees and re-allocates a working set from paying for page faults every time.
pub fn purge_delay_ms() -> u64 {
    PURGE_DELAY_MS.load(Relaxed)
}

/// `HEAPLENS_CENSUS_MS` (default 1000): how often a recording takes a census (0: only at the
/// start and the end). More censuses prove the recording exact at more points, and cost a
/// little recording time each.
pub fn census_ms() -> u64 {
    CENSUS_MS.load(Relaxed)
}

/// Where the summary goes: a private copy of stderr taken at start-up, because many programs
/// (GNU coreutils among them) close stderr in their own exit handler, which runs before ours.
static STATS_FD: AtomicI32 = AtomicI32::new(2);

/// The file descriptor for the exit summary.
pub fn stats_fd() -> i32 {
    STATS_FD.load(Relaxed)
}

pub(crate) fn init() {
    SHOW_STATS.store(flag(c"HEAPLENS_SHOW_STATS"), Relaxed);
    if show_stats() {
        // SAFETY: F_DUPFD_CLOEXEC on fd 2 has no memory-safety preconditions.
        let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
        if fd >= 0 {
            STATS_FD.store(fd, Relaxed);
        }
    }
    set_watch(WATCH_CHECK, flag(c"HEAPLENS_CHECK"));
    if let Some(ms) = number(c"HEAPLENS_PURGE_DELAY_MS") {
        PURGE_DELAY_MS.store(ms, Relaxed);
    }
    if let Some(ms) = number(c"HEAPLENS_CENSUS_MS") {
        CENSUS_MS.store(ms, Relaxed);
    }
    stacks_init();
}

/// `HEAPLENS_STACKS=off|sampled|all` (default sampled; an unknown value keeps the default),
/// `HEAPLENS_SAMPLE_BYTES=N` (mean sampling interval, default 512 KiB) and
/// `HEAPLENS_SAMPLE_SEED=N` (a fixed seed for the sampling, for tests).
fn stacks_init() {
    use crate::sample;
    let mode = value(c"HEAPLENS_STACKS").and_then(sample::StackMode::parse);
    let interval = number(c"HEAPLENS_SAMPLE_BYTES").and_then(|n| usize::try_from(n).ok());
    if mode.is_some() || interval.is_some_and(|n| n > 0) {
        sample::set_stack_mode(
            mode.unwrap_or_else(sample::stack_mode),
            interval.unwrap_or(0),
        );
    }
    if let Some(seed) = number(c"HEAPLENS_SAMPLE_SEED") {
        sample::set_sample_seed(seed);
    }
}

fn value(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv takes a NUL-terminated name and returns null or a NUL-terminated string
    // that stays valid while the environment is not modified (we copy out what we need at once).
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: p is a valid C string (see above).
    Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes())
}

fn flag(name: &core::ffi::CStr) -> bool {
    matches!(value(name), Some(v) if !v.is_empty() && v != b"0" && !v.eq_ignore_ascii_case(b"false"))
}

fn number(name: &core::ffi::CStr) -> Option<u64> {
    let v = value(name)?;
    if v.is_empty() || v.len() > 18 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_and_flags_parse_from_the_environment() {
        // SAFETY: the test sets variables no other test reads.
        unsafe {
            libc::setenv(c"HEAPLENS_TEST_NUM".as_ptr(), c"250".as_ptr(), 1);
            libc::setenv(c"HEAPLENS_TEST_BAD".as_ptr(), c"25x".as_ptr(), 1);
            libc::setenv(c"HEAPLENS_TEST_OFF".as_ptr(), c"0".as_ptr(), 1);
            libc::setenv(c"HEAPLENS_TEST_ON".as_ptr(), c"yes".as_ptr(), 1);
        }
        assert_eq!(super::number(c"HEAPLENS_TEST_NUM"), Some(250));
        assert_eq!(super::number(c"HEAPLENS_TEST_BAD"), None);
        assert_eq!(super::number(c"HEAPLENS_TEST_UNSET"), None);
        assert!(!super::flag(c"HEAPLENS_TEST_OFF"));
        assert!(super::flag(c"HEAPLENS_TEST_ON"));
        assert!(!super::flag(c"HEAPLENS_TEST_UNSET"));
    }
}
