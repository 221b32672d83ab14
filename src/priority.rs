//! Thread priority: the recorder's own work (unpacking, encoding, compressing) yields the
//! CPU to the program it records, and catches up from the backlog when the CPU is free (at the
//! latest, after the program has exited, when it goes back to the usual priority if the system
//! lets it: raising a priority again needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows it).

/// The nice value the recorder's background threads run at (the program runs at its own, 0
/// usually): under contention they get about a tenth of a CPU against a thread at 0.
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`BACKGROUND_NICE`] (Linux keeps a nice value per
/// thread). Best effort: a failure leaves the priority as it was.
#[allow(unsafe_code)] // two system calls without pointers; the workspace denies unsafe elsewhere
pub fn lower_this_thread() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority takes plain integers; `tid` names this thread, which exists.
    let _ = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::id_t::try_from(tid).unwrap_or(0),
            BACKGROUND_NICE,
        )
    };
}

/// Puts the calling thread back to nice 0 once the program has exited, if allowed (see the
/// module docs); otherwise it stays where it is.
#[allow(unsafe_code)] // as above
pub fn restore_this_thread() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority takes plain integers; `tid` names this thread, which exists.
    let _ = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::id_t::try_from(tid).unwrap_or(0),
            0,
        )
    };
}

/// The calling thread's nice value.
#[cfg(test)]
#[allow(unsafe_code)] // as above
pub fn this_thread_nice() -> i32 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: getpriority takes plain integers (-1 is a valid result, not only an error here).
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::id_t::try_from(tid).unwrap_or(0)) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_lowered_thread_runs_at_the_background_nice_and_others_do_not() {
        let before = super::this_thread_nice();
        let lowered = std::thread::spawn(|| {
            super::lower_this_thread();
            super::this_thread_nice()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, super::BACKGROUND_NICE.max(before));
        assert_eq!(super::this_thread_nice(), before, "only that thread");
    }
}
