//! The purge delay adapts: memory freed, purged after `HEAPLENS_PURGE_DELAY_MS`, and taken again
//! soon after, round after round (python3's dicts and lists), lengthens the delay, and then stays
//! resident between rounds; memory purged and not taken again brings the delay back to the
//! option's. Freed and not taken again from the start, the delay never grows; taken again soon
//! after another thread purged it, it does not grow either.
//!
//! Its own test binary (so its own process): the delay and its counters are process-wide, and the
//! one test runs its phases in order.
#![allow(unsafe_code)] // tests call the raw allocator API

use std::time::{Duration, Instant};

use heaplens_alloc::purge_delay::{self, MAX_TIMES};

mod common;

use common::{generic_path_activity as activity, slow_path_until};

#[global_allocator]
static A: heaplens_alloc::HeapLens = heaplens_alloc::HeapLens;

const MIB: u64 = 1 << 20;
/// Small blocks, so that the memory is whole small pages, purged page by page.
const BLOCK: usize = 1024;
/// Bytes a round takes and frees: two of the windows the delay is weighed on.
const ROUND: u64 = 8 * MIB;

fn purged() -> u64 {
    purge_delay::purge_stats().purged_bytes
}

/// Takes a round's blocks, every byte written.
fn take() -> Vec<usize> {
    (0..ROUND as usize / BLOCK)
        .map(|_| {
            // SAFETY: any size is a valid request.
            let p = unsafe { heaplens_alloc::malloc(BLOCK) };
            assert!(!p.is_null());
            // SAFETY: `p` has BLOCK writable bytes.
            unsafe { p.write_bytes(0x5a, BLOCK) };
            p as usize
        })
        .collect()
}

fn free(blocks: Vec<usize>) {
    for p in blocks {
        // SAFETY: each block is live and freed once.
        unsafe { heaplens_alloc::free(p as *mut u8) };
    }
}

/// Frees `blocks` and runs the slow path until most of their memory has gone back to the OS.
fn free_and_purge(blocks: Vec<usize>) {
    let before = purged();
    free(blocks);
    assert!(
        slow_path_until(|| purged() >= before + ROUND * 3 / 4),
        "the freed round was not purged: {} of {} bytes",
        purged() - before,
        ROUND
    );
}

/// Longer than the longest delay: memory purged this long ago and taken now was not wanted soon.
fn past_the_longest_delay() {
    let longest = heaplens_alloc::options::purge_delay_ms() * MAX_TIMES;
    std::thread::sleep(Duration::from_millis(2 * longest + 20));
}

#[test]
fn memory_taken_again_soon_after_its_purge_lengthens_the_delay_and_then_stays() {
    activity(64);
    let base = heaplens_alloc::options::purge_delay_ms();
    assert!(base > 0, "the test needs a purge delay");
    assert_eq!(purge_delay::thread_delay_ms(), base);

    // Freed, purged, and not taken again within the longest delay: the delay stays.
    for _ in 0..3 {
        free_and_purge(take());
        past_the_longest_delay();
    }
    assert_eq!(
        purge_delay::thread_delay_ms(),
        base,
        "memory not taken again soon lengthened the delay"
    );
    let retaken_before = purge_delay::purge_stats().retaken_bytes;

    // Freed, purged, and taken again at once, round after round: the delay grows.
    let mut rounds = 0;
    while purge_delay::thread_delay_ms() == base {
        rounds += 1;
        assert!(rounds <= 12, "the delay did not grow in 12 rounds");
        free_and_purge(take());
    }
    let grown = purge_delay::thread_delay_ms();
    assert!(
        grown > base && grown <= base * MAX_TIMES,
        "delay {grown} ms"
    );
    assert!(
        purge_delay::purge_stats().retaken_bytes >= retaken_before + ROUND,
        "the rounds' memory taken again was not counted"
    );

    // Grown, it keeps a round's memory past the option's delay: freed and idle that long, none of
    // it goes back. (Purges run late, never early: nothing is due before `grown` has passed.)
    let blocks = take();
    let before = purged();
    let freed_at = Instant::now();
    free(blocks);
    while freed_at.elapsed() < Duration::from_millis(base + base / 2) {
        activity(1);
        std::thread::yield_now();
    }
    let idle = freed_at.elapsed();
    if idle < Duration::from_millis(grown) {
        assert!(
            purged() - before < MIB,
            "{} bytes purged {idle:?} after the free, with a delay of {grown} ms",
            purged() - before
        );
    }
    assert!(slow_path_until(|| purged() >= before + ROUND * 3 / 4));

    // Purged and not taken again soon: back to the option's delay.
    let mut rounds = 0;
    while purge_delay::thread_delay_ms() > base {
        rounds += 1;
        assert!(
            rounds <= 12,
            "the delay stayed {} ms for 12 rounds of memory not taken again",
            purge_delay::thread_delay_ms()
        );
        past_the_longest_delay();
        free_and_purge(take());
    }

    // Memory another thread purged, taken soon after: no measure of this thread's delay (nor of
    // the other's, which has exited). Threads that come and go exchanging memory (`stress`,
    // `threadex`) grew their delays on it, and their peak RSS.
    let retaken_before = purge_delay::purge_stats().retaken_bytes;
    let mut kept = Vec::new();
    for _ in 0..4 {
        std::thread::spawn(|| free_and_purge(take()))
            .join()
            .expect("the thread that frees");
        kept.push(take());
    }
    assert!(
        purge_delay::purge_stats().retaken_bytes >= retaken_before + ROUND,
        "the exited threads' memory was not taken again soon: the test proves nothing"
    );
    assert_eq!(
        purge_delay::thread_delay_ms(),
        base,
        "memory other threads purged lengthened this thread's delay"
    );
    kept.into_iter().for_each(free);
}
