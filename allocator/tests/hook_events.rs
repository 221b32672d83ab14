//! The hook end to end, in one process: the collector receives exactly the events the allocator
//! performed (counted per kind and per thread), in a per-thread order that respects causality,
//! and a census taken at a quiet moment agrees with the pages the events built.
//!
//! The test binary's global allocator is the system's, so only the explicit heaplens calls below
//! produce events, and every count can be asserted exactly. One test function: the collector is
//! process-wide.
#![allow(unsafe_code)] // tests call the raw allocator API

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use heaplens_alloc::collector::{self, Config};
use heaplens_alloc::event::{Event, EventKind, flags};

type Recorded = Arc<Mutex<Vec<(u32, Event)>>>;

fn count(events: &[(u32, Event)], kind: EventKind, pred: impl Fn(&(u32, Event)) -> bool) -> usize {
    events
        .iter()
        .filter(|e| e.1.kind == kind as u8 && pred(e))
        .count()
}

#[test]
fn the_hook_delivers_every_event_and_a_matching_census() {
    let recorded: Recorded = Arc::default();
    let ended = Arc::new(Mutex::new(false));
    // Batches handed over since the collector last said it was idle (a socket sink gathers
    // batches until then).
    let unsaid = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (r, end, since_idle) = (recorded.clone(), ended.clone(), unsaid.clone());
    collector::start(
        Config {
            lossless: true,
            census_every_ms: 0,
            channel_buffers: 4,
        },
        Box::new(move |batch| {
            use std::sync::atomic::Ordering::SeqCst;
            match batch {
                collector::Handed::Batch(b) => {
                    since_idle.fetch_add(1, SeqCst);
                    r.lock()
                        .unwrap()
                        .extend(b.events.iter().map(|e| (b.heap, *e)));
                }
                collector::Handed::Idle { .. } => since_idle.store(0, SeqCst),
                collector::Handed::End => *end.lock().unwrap() = true,
            }
            true
        }),
    )
    .expect("collector starts");
    assert!(
        collector::start(Config::default(), Box::new(|_| true)).is_err(),
        "only one collector"
    );

    // Main thread: 5000 blocks of 48 B (more than one event buffer), half freed locally.
    // SAFETY: plain allocations, each freed once, never used after.
    let mine: Vec<usize> = (0..5000)
        .map(|_| unsafe { heaplens_alloc::malloc(48) } as usize)
        .collect();
    for &p in mine.iter().step_by(2) {
        // SAFETY: see above.
        unsafe { heaplens_alloc::free(p as *mut u8) };
    }
    // A worker allocates 3000 blocks and exits; the main thread frees them: cross-thread frees
    // into an abandoned segment.
    let theirs: Vec<usize> = std::thread::Builder::new()
        .name("hook-worker".into())
        .spawn(|| {
            (0..3000)
                // SAFETY: see above.
                .map(|_| unsafe { heaplens_alloc::malloc(100) } as usize)
                .collect()
        })
        .unwrap()
        .join()
        .unwrap();
    for &p in &theirs {
        // SAFETY: see above.
        unsafe { heaplens_alloc::free(p as *mut u8) };
    }
    heaplens_alloc::hook::mark("after the worker's blocks were freed");
    assert!(collector::census_now(), "census delivered");
    // With the program quiet, the collector says it is idle after its last batch (or a socket
    // sink would hold that batch back until the program allocates again).
    let quiet = std::time::Instant::now();
    while unsaid.load(std::sync::atomic::Ordering::SeqCst) > 0
        && quiet.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        unsaid.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no Idle after the last batch"
    );

    let events = recorded.lock().unwrap().clone();
    let mine_set: HashSet<u64> = mine.iter().map(|&p| p as u64).collect();
    let theirs_set: HashSet<u64> = theirs.iter().map(|&p| p as u64).collect();
    let main_heap = events
        .iter()
        .find(|(_, e)| e.kind == EventKind::Alloc as u8 && mine_set.contains(&e.addr))
        .unwrap()
        .0;
    let worker_heap = events
        .iter()
        .find(|(_, e)| e.kind == EventKind::Alloc as u8 && theirs_set.contains(&e.addr))
        .unwrap()
        .0;
    assert_ne!(main_heap, worker_heap);
    assert_ne!(main_heap, 0);

    // Every allocation and free, exactly once, from the right thread.
    assert_eq!(
        count(&events, EventKind::Alloc, |(h, e)| *h == main_heap
            && mine_set.contains(&e.addr)),
        5000
    );
    assert_eq!(
        count(&events, EventKind::Alloc, |(h, e)| *h == worker_heap
            && theirs_set.contains(&e.addr)),
        3000
    );
    assert!(
        events
            .iter()
            .filter(|(_, e)| e.kind == EventKind::Alloc as u8)
            .all(|(_, e)| e.arg == 48 || e.arg == 100)
    );
    assert_eq!(
        count(&events, EventKind::Free, |(h, e)| *h == main_heap
            && mine_set.contains(&e.addr)),
        2500
    );
    let frees_of_theirs: Vec<&(u32, Event)> = events
        .iter()
        .filter(|(_, e)| e.kind == EventKind::Free as u8 && theirs_set.contains(&e.addr))
        .collect();
    assert_eq!(frees_of_theirs.len(), 3000);
    assert!(frees_of_theirs.iter().all(|(h, _)| *h == main_heap));
    // The first free into the abandoned segment is cross-thread; it reclaims the segment, so the
    // rest are local frees of the new owner.
    assert_eq!(
        frees_of_theirs[0].1.flags & flags::CROSS_THREAD,
        flags::CROSS_THREAD
    );
    assert_eq!(count(&events, EventKind::SegmentAbandon, |_| true), 1);
    assert_eq!(
        count(&events, EventKind::SegmentReclaim, |(h, _)| *h == main_heap),
        1
    );

    // Threads: start, exit and name of the worker.
    assert_eq!(
        count(&events, EventKind::ThreadStart, |(h, e)| *h == worker_heap
            && e.arg32 == worker_heap),
        1
    );
    assert_eq!(
        count(&events, EventKind::ThreadExit, |(h, e)| *h == worker_heap
            && e.arg32 == worker_heap),
        1
    );
    let name = events
        .iter()
        .find(|(_, e)| e.kind == EventKind::ThreadName as u8 && e.arg32 == worker_heap);
    assert_eq!(
        name.map(|(_, e)| e.text()[..11].to_vec()),
        Some(b"hook-worker".to_vec())
    );
    let mark: Vec<u8> = events
        .iter()
        .filter(|(_, e)| e.kind == EventKind::Mark as u8)
        .flat_map(|(_, e)| e.text())
        .filter(|&b| b != 0)
        .collect();
    assert_eq!(mark, b"after the worker's blocks were freed");

    // Per-thread order: a thread's events arrive in the order it emitted them (times never go
    // backwards within one heap's stream).
    let mut last: HashMap<u32, u64> = HashMap::new();
    for (h, e) in &events {
        let t = last.entry(*h).or_insert(0);
        assert!(e.time >= *t, "heap {h} went back in time");
        *t = e.time;
    }

    // The census: every page the events built, with the owner's counters. Rebuild used-counts
    // per page start from the events and compare.
    // The collector takes one census when it starts (the state recording began from); ours is
    // the last one.
    assert_eq!(
        events
            .iter()
            .filter(|(_, e)| e.kind == EventKind::CensusBegin as u8)
            .count(),
        2
    );
    let begin = events
        .iter()
        .rposition(|(_, e)| e.kind == EventKind::CensusBegin as u8)
        .expect("census");
    let census: Vec<&Event> = events[begin..].iter().map(|(_, e)| e).collect();
    let pages: Vec<(&Event, &Event)> = census
        .windows(2)
        .filter(|w| w[0].kind == EventKind::CensusPage as u8)
        .map(|w| (w[0], w[1]))
        .collect();
    assert_eq!(census[0].arg as usize, pages.len());
    let mut live_per_page: HashMap<u64, i64> = HashMap::new();
    let page_of = |addr: u64| {
        pages
            .iter()
            .find(|(p, _)| addr >= p.addr && addr < p.addr + p.arg * u64::from(p.arg32))
    };
    for &p in mine.iter().skip(1).step_by(2) {
        let (pg, _) = page_of(p as u64).expect("live block lies on a census page");
        *live_per_page.entry(pg.addr).or_default() += 1;
    }
    for (pg, pg2) in &pages {
        let used = pg2.arg & 0xffff_ffff;
        let local_free = pg2.arg >> 32;
        assert!(
            used + local_free <= u64::from(pg.arg32),
            "free-list invariant"
        );
        if pg.arg == 48 {
            assert_eq!(pg2.addr, u64::from(main_heap), "owner");
            let held = used - u64::from(pg2.arg32);
            assert_eq!(
                held as i64,
                live_per_page.get(&pg.addr).copied().unwrap_or(0),
                "page {:#x}",
                pg.addr
            );
        }
    }
    // The worker's pages were freed after the reclaim, but for at most one kept for reuse.
    let worker_pages: Vec<_> = pages.iter().filter(|(pg, _)| pg.arg == 112).collect();
    assert!(worker_pages.len() <= 1);
    assert!(
        worker_pages
            .iter()
            .all(|(_, pg2)| pg2.arg & 0xffff_ffff == 0 && pg2.addr == u64::from(main_heap))
    );

    // Threads racing for event buffers (the channel holds 4, so buffers go round the list of
    // empty ones all the time): every thread's events arrive, exactly once. Each thread uses its
    // own block size, so its allocations can be told apart.
    const PER_THREAD: usize = 20_000;
    let before = recorded.lock().unwrap().len();
    let start = Arc::new(std::sync::Barrier::new(4));
    let racers: Vec<_> = (0..4usize)
        .map(|t| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..PER_THREAD {
                    // SAFETY: a plain allocation, freed at once.
                    unsafe { heaplens_alloc::free(heaplens_alloc::malloc(200 + 8 * t)) };
                }
            })
        })
        .collect();
    for r in racers {
        r.join().unwrap();
    }
    assert!(collector::census_now(), "census delivered");
    let raced = recorded.lock().unwrap()[before..].to_vec();
    for t in 0..4u64 {
        let size = 200 + 8 * t;
        let allocs: Vec<&(u32, Event)> = raced
            .iter()
            .filter(|(_, e)| e.kind == EventKind::Alloc as u8 && e.arg == size)
            .collect();
        assert_eq!(allocs.len(), PER_THREAD, "allocations of thread {t}");
        let heap = allocs[0].0;
        assert!(
            allocs.iter().all(|(h, _)| *h == heap),
            "thread {t}: one heap"
        );
        assert_eq!(
            count(&raced, EventKind::Free, |(h, _)| *h == heap),
            PER_THREAD,
            "frees of thread {t}"
        );
    }

    collector::shutdown();
    assert!(*ended.lock().unwrap(), "the sink was ended");
    assert!(!heaplens_alloc::hook::enabled());
    // Still a working allocator after recording stopped.
    // SAFETY: plain allocation.
    unsafe { heaplens_alloc::free(heaplens_alloc::malloc(10)) };
}
