//! Waiting on the collector's channel, both ways, on futexes of the hook's own: a thread that
//! finds the channel full sleeps until the collector has made room, and the collector, with
//! nothing to take, sleeps until a thread has sent a buffer. Neither waits inside the channel.
//!
//! Room. A thread that yields stays runnable and takes its share of the CPU back at once; one
//! that sleeps a fixed 50 us sleeps 120 us or more, and then finds the channel full again if the
//! collector has not run. On a 2-core machine a program of 4 threads under `heaplens record`
//! (larson) had its threads yield 484 times and sleep 204 times in 0.4 s while the collector,
//! given a fair fifth of the CPU, packed what they had sent. Sleeping on a futex leaves the CPU
//! to the collector until it has made room, and wakes the threads as soon as it has.
//!
//! Arrivals. The collector used to wait in the channel's `recv_timeout`, which registers it with
//! the channel: a thread's `try_send` then wakes it, and to do so asks the standard library for
//! the sending thread's id, which allocates that thread's handle the first time, in the
//! program's heap. A thread the C library started (every thread of a C program) so left a block
//! of heaplens's own in the trace, and whether it did depended on whether the collector happened
//! to be waiting: a `heaplens diff` of two identical runs once named a 48-byte site in
//! crossbeam's `current_thread_id`, and a quiet program's leaks counted one or two blocks no
//! stack of its own made.

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

/// One side's wait: the other side bumps the epoch and wakes the waiters.
struct Doorbell {
    epoch: AtomicU32,
    waiters: AtomicU32,
}

impl Doorbell {
    const fn new() -> Self {
        Self {
            epoch: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        }
    }

    /// Runs `attempt`; if it has nothing (`None`), sleeps until rung or `timeout_ns` has passed,
    /// and returns `None`.
    fn attempt_or_wait<T>(
        &self,
        attempt: impl FnOnce() -> Option<T>,
        timeout_ns: i64,
    ) -> Option<T> {
        let seen = self.epoch.load(SeqCst);
        self.waiters.fetch_add(1, SeqCst);
        // Looked at after announcing the wait: either this sees what the other side did, or the
        // other side sees this thread waiting and rings.
        let done = attempt();
        if done.is_none() {
            let timeout = libc::timespec {
                tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: FUTEX_WAIT on a static word with a valid timeout; it returns at once if
            // the word no longer holds `seen`. It touches no memory of ours otherwise.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.epoch.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    seen,
                    &raw const timeout,
                );
            }
        }
        self.waiters.fetch_sub(1, SeqCst);
        done
    }

    /// Wakes the waiters; one load when none waits.
    fn ring(&self) {
        if self.waiters.load(SeqCst) == 0 {
            return;
        }
        self.epoch.fetch_add(1, SeqCst);
        // SAFETY: FUTEX_WAKE on a static word; no memory is touched.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.epoch.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            );
        }
    }
}

/// Rung by the collector each time it has taken buffers out of the channel.
static ROOM: Doorbell = Doorbell::new();
/// Rung by a thread that has sent a buffer.
static ARRIVALS: Doorbell = Doorbell::new();

/// How long a thread waiting for room sleeps at most before it looks again (a wake-up lost to a
/// race costs no more than this).
const ROOM_WAIT_NS: i64 = 1_000_000;

/// Runs `try_send` until it succeeds or gives up (`Some(result)`), sleeping between attempts
/// until the collector makes room.
pub(crate) fn wait_for_room<T>(mut try_send: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(done) = ROOM.attempt_or_wait(&mut try_send, ROOM_WAIT_NS) {
            return done;
        }
    }
}

/// The collector has taken buffers out of the channel: wakes the threads waiting for room.
pub(crate) fn made_room() {
    ROOM.ring();
}

/// The collector's wait for a buffer: `try_take`'s, or `None` after sleeping until a thread has
/// sent one or `timeout_ns` has passed.
pub(crate) fn wait_for_buffers<T>(
    try_take: impl FnOnce() -> Option<T>,
    timeout_ns: i64,
) -> Option<T> {
    ARRIVALS.attempt_or_wait(try_take, timeout_ns)
}

/// A thread has sent a buffer: wakes the collector if it waits for one.
pub(crate) fn sent() {
    ARRIVALS.ring();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_waiting_thread_goes_on_once_room_is_made_and_not_before() {
        static ROOM_MADE: AtomicBool = AtomicBool::new(false);
        let waiter = std::thread::spawn(|| wait_for_room(|| ROOM_MADE.load(SeqCst).then_some(())));
        // It goes to sleep waiting (counted among the waiters) and stays there: no room yet.
        let start = std::time::Instant::now();
        while ROOM.waiters.load(SeqCst) == 0 {
            assert!(start.elapsed().as_secs() < 10, "the thread never waited");
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(!waiter.is_finished(), "no room yet");
        ROOM_MADE.store(true, SeqCst);
        made_room();
        // It goes on once there is room (woken by `made_room`, or at its next look, a
        // millisecond at most).
        waiter.join().unwrap();
    }

    #[test]
    fn the_collector_waits_until_a_buffer_is_sent_or_its_time_is_up() {
        // Nothing sent: it sleeps out its time and has nothing.
        let start = std::time::Instant::now();
        assert_eq!(wait_for_buffers(|| None::<u32>, 20_000_000), None);
        assert!(start.elapsed() >= std::time::Duration::from_millis(19));
        // Something already there: taken at once.
        assert_eq!(wait_for_buffers(|| Some(7), 10_000_000_000), Some(7));
        // A sender rings while it sleeps (for up to 20 s): it wakes long before its time.
        let waiter = std::thread::spawn(|| {
            let start = std::time::Instant::now();
            wait_for_buffers(|| None::<u32>, 20_000_000_000);
            start.elapsed()
        });
        let start = std::time::Instant::now();
        while ARRIVALS.waiters.load(SeqCst) == 0 {
            assert!(start.elapsed().as_secs() < 10, "the collector never waited");
            std::thread::yield_now();
        }
        sent();
        let slept = waiter.join().unwrap();
        assert!(slept.as_secs() < 10, "not woken: slept {slept:?}");
    }
}
