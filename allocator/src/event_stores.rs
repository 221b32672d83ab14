//! How a thread writes its events: straight to memory (non-temporal stores), past its own cache,
//! and how the collector then knows they are visible.
//!
//! A recording thread writes 32 bytes per event into buffers that the collector (another
//! thread, usually on another core) has just read. With ordinary stores every cache line of a
//! recycled buffer must first be taken back from the collector's core (a read for ownership),
//! and the thread stalls on those misses once its store buffer fills. On this 2-core machine
//! `heaplens record` of a binary-trees program was bimodal: the program ran 0.6-0.8 s, or, in
//! 7 of 26 runs, 1.0-2.7 s, its own code (call, push) waiting on stores. Non-temporal stores
//! need no ownership and do not wait: in 26 runs alternating with the ordinary stores, the
//! program ran 0.59-0.79 s every time.
//!
//! Non-temporal stores are weakly ordered, so their visibility is made explicit where another
//! thread reads the events:
//! - a full buffer is sent after [`before_send`] (a store fence);
//! - the collector reads a buffer still being written (a drain) only up to cursors it loaded
//!   *before* [`make_visible`]: a process-wide memory barrier (`membarrier`, private expedited)
//!   that runs a full fence on every core running one of the process's threads, which drains
//!   their write-combining buffers. An event below a cursor the collector saw was written before
//!   that cursor was stored, so before the fence, and is visible after it.
//!
//! Without `membarrier` (or off x86-64) events are written with ordinary stores, as before.

// Without the `hook` feature no collector reads events, so only the unpacking half is used.
#![cfg_attr(not(feature = "hook"), allow(dead_code))]

use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Events are written with non-temporal stores (set once `membarrier` is known to work; never
/// cleared while events may be in flight).
static STREAMING: AtomicBool = AtomicBool::new(false);

const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier(cmd: libc::c_int) -> bool {
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) == 0 }
}

/// Chooses how events are written, before a recording's first event: non-temporal stores on
/// x86-64 when the process can use the expedited `membarrier` (Linux 4.14 and later).
pub(crate) fn choose() {
    if cfg!(target_arch = "x86_64")
        && !STREAMING.load(Relaxed)
        && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)
    {
        STREAMING.store(true, Relaxed);
    }
}

/// Whether events go straight to memory.
#[cfg(test)]
fn streaming() -> bool {
    STREAMING.load(Relaxed)
}

/// Writes an event's four words at `w`.
///
/// # Safety
/// `w` is an 8-byte aligned slot of four words in a buffer the calling thread owns.
#[inline(always)]
pub(crate) unsafe fn write(w: *mut u64, words: [u64; 4]) {
    if cfg!(target_arch = "x86_64") && STREAMING.load(Relaxed) {
        // SAFETY: forwarded.
        unsafe { write_streamed(w, words) };
        return;
    }
    // SAFETY: forwarded.
    unsafe {
        w.write(words[0]);
        w.add(1).write(words[1]);
        w.add(2).write(words[2]);
        w.add(3).write(words[3]);
    }
}

/// Writes an event's four words at `w` past the cache (on x86-64): visible to other threads
/// after the writer's next [`fence`]. For a consumer of events that hands them to another
/// thread, as `heaplens record`'s unpacking of the program's batches does.
///
/// # Safety
/// As [`write`].
#[inline(always)]
pub(crate) unsafe fn write_streamed(w: *mut u64, words: [u64; 4]) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::_mm_stream_si64;
        // SAFETY: forwarded; movnti needs only 8-byte alignment.
        unsafe {
            _mm_stream_si64(w.cast(), words[0] as i64);
            _mm_stream_si64(w.add(1).cast(), words[1] as i64);
            _mm_stream_si64(w.add(2).cast(), words[2] as i64);
            _mm_stream_si64(w.add(3).cast(), words[3] as i64);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        w.write(words[0]);
        w.add(1).write(words[1]);
        w.add(2).write(words[2]);
        w.add(3).write(words[3]);
    }
}

/// Orders the calling thread's streamed writes before its later stores (a store fence).
#[inline]
pub(crate) fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a store fence has no operands and no effect but ordering.
    unsafe {
        core::arch::x86_64::_mm_sfence();
    }
}

/// Makes the calling thread's events visible before it hands their buffer over.
#[inline]
pub(crate) fn before_send() {
    if STREAMING.load(Relaxed) {
        fence();
    }
}

/// The collector, between loading the threads' cursors and reading their events: every event
/// below those cursors is visible once this returns.
pub(crate) fn make_visible() {
    if !STREAMING.load(Relaxed) {
        return;
    }
    // A forked child's registration may not carry over: registered again. Should even that
    // fail, the global command (slower, the same guarantee) is the fallback.
    let expedited = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)
        || (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)
            && membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED));
    if !expedited {
        const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
        membarrier(MEMBARRIER_CMD_GLOBAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_words_read_back_and_this_machine_streams() {
        choose();
        // The machines heaplens is built and measured on have `membarrier`: without it the
        // program's event stores would silently fall back to ordinary ones.
        if cfg!(target_arch = "x86_64") {
            assert!(
                streaming(),
                "membarrier (private expedited) is not available"
            );
        }
        let mut slot = [0u64; 4];
        // SAFETY: a local, aligned four-word slot.
        unsafe { write(slot.as_mut_ptr(), [1, 2, 3, u64::MAX]) };
        before_send();
        assert_eq!(slot, [1, 2, 3, u64::MAX]);
        make_visible();
    }
}
