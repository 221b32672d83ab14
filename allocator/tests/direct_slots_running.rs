//! Recording switched on and off while threads allocate without pause: the direct slots are
//! emptied under threads that are refilling them as their pages change. Every allocation a
//! thread makes wholly inside the recording (it saw the recording on before and after the call)
//! must be reported, and after recording each thread's fast path serves it again.
//!
//! The test binary's global allocator is the system's: only the explicit heaplens calls below
//! make heaplens events. One test function: the collector is process-wide.
#![allow(unsafe_code)] // the test calls the raw allocator API

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::time::Duration;

use heaplens_alloc::alloc::malloc_fast;
use heaplens_alloc::collector;

mod common;

/// 0 before recording, 1 while it runs (set after it started), 2 once it is about to stop.
static PHASE: AtomicU32 = AtomicU32::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
const WORKERS: usize = 3;
/// Each worker's allocations inside the recording so far (to know when to stop it), a cache
/// line apart.
static INSIDE: [Padded; WORKERS] = [const { Padded(AtomicU64::new(0)) }; WORKERS];
#[repr(align(64))]
struct Padded(AtomicU64);

/// What a worker saw: its allocations made wholly while recording, counted by address, how many
/// allocations it made in all, and whether its fast path served it after recording.
struct Seen {
    inside: HashMap<u64, u32>,
    total: u64,
    open_after: bool,
}

fn worker(w: usize) -> Seen {
    let seed = w * 1000;
    let mut live: VecDeque<usize> = VecDeque::new();
    let mut inside = HashMap::new();
    let mut total = 0u64;
    let mut i = seed;
    while !STOP.load(Acquire) {
        // Sizes up to the direct slots' 1 KiB and a window of 3000 live blocks: pages fill and
        // empty all the time, so the thread keeps pointing its slots at new pages while
        // recording switches them off.
        let size = 16 + (i * 7919) % 1000;
        i += 1;
        let before = PHASE.load(Acquire);
        // SAFETY: a plain allocation, freed below.
        let p = unsafe { heaplens_alloc::malloc(size) };
        let after = PHASE.load(Acquire);
        assert!(!p.is_null());
        total += 1;
        if before == 1 && after == 1 {
            *inside.entry(p as u64).or_insert(0) += 1;
            INSIDE[w].0.fetch_add(1, Relaxed);
        }
        live.push_back(p as usize);
        if live.len() > 3000 {
            let q = live.pop_front().unwrap();
            // SAFETY: a live block of this test, freed once.
            unsafe { heaplens_alloc::free(q as *mut u8) };
        }
    }
    // After recording: an allocation through the generic path refills the slots. The fast path
    // may still miss right after it when that allocation took a page's last free block, so it
    // gets three tries.
    let open_after = (0..3).any(|_| {
        // SAFETY: plain allocations; blocks freed once.
        unsafe {
            let refill = heaplens_alloc::malloc(64);
            let p = malloc_fast(64);
            heaplens_alloc::free(refill);
            if !p.is_null() {
                heaplens_alloc::free(p);
            }
            !p.is_null()
        }
    });
    for q in live {
        // SAFETY: as above.
        unsafe { heaplens_alloc::free(q as *mut u8) };
    }
    Seen {
        inside,
        total,
        open_after,
    }
}

#[test]
fn every_allocation_inside_a_recording_started_and_stopped_while_threads_run_is_reported() {
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| std::thread::spawn(move || worker(w)))
        .collect();
    std::thread::sleep(Duration::from_millis(30));

    let (reported, sink) = common::alloc_counter();
    collector::start_while_running(common::lossless(64), sink).expect("collector starts");
    PHASE.store(1, Release);
    // At least 60 ms, and until every worker has allocated a few thousand times inside (a loaded
    // machine may keep one off the CPU for a while), 20 s at most.
    let began = std::time::Instant::now();
    while began.elapsed() < Duration::from_millis(60)
        || (INSIDE.iter().any(|n| n.0.load(Relaxed) < 5000)
            && began.elapsed() < Duration::from_secs(20))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    PHASE.store(2, Release);
    collector::shutdown_while_running();
    std::thread::sleep(Duration::from_millis(20));
    STOP.store(true, Release);
    let seen: Vec<Seen> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    let reported = reported.lock().unwrap();
    for (w, s) in seen.iter().enumerate() {
        let inside: u32 = s.inside.values().sum();
        assert!(
            inside > 1000,
            "worker {w} allocated while recording ({inside} of {})",
            s.total
        );
        let missing: u32 = s
            .inside
            .iter()
            .map(|(addr, n)| n.saturating_sub(reported.get(addr).copied().unwrap_or(0)))
            .sum();
        assert_eq!(
            missing, 0,
            "worker {w}: {missing} of its {inside} allocations inside the recording unreported"
        );
        assert!(
            s.open_after,
            "worker {w}'s fast path serves it after recording"
        );
    }
}
