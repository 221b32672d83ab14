//! The model, rebuilt from the real allocator's events, equals the allocator's own census at every
//! census point of a real multithreaded workload: local and cross-thread frees, blocks handed
//! between threads, full pages, threads that exit holding blocks (abandoned segments) and new
//! threads that take them over, small to huge sizes.
//!
//! The test binary's global allocator is the system's: only the explicit heaplens calls below
//! produce events. Censuses are taken while every worker waits at a barrier (the census is then
//! exact: every event before it has been delivered before it).
#![allow(unsafe_code)] // the test calls the raw allocator API

use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};

use heaplens_alloc::collector::{self, Config};
use heaplens_alloc::event::{Event, EventKind};
use heaplens_viewer::model::Model;

/// A tiny deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0 => 3 << 20,                                   // huge
        1..=3 => 200_000 + rng.below(100_000) as usize, // large
        4..=10 => 20_000 + rng.below(60_000) as usize,  // medium
        _ => 1 + rng.below(1500) as usize,              // small
    }
}

/// Blocks as addresses, so they can cross threads.
type Blocks = Vec<usize>;

#[test]
fn the_model_rebuilt_from_events_equals_every_census() {
    let recorded: Arc<Mutex<Vec<(u32, Event)>>> = Arc::default();
    let sink_store = recorded.clone();
    collector::start(
        Config {
            lossless: true,
            census_every_ms: 0,
            channel_buffers: 8,
        },
        Box::new(move |batch| {
            if let collector::Handed::Batch(b) = batch {
                sink_store
                    .lock()
                    .unwrap()
                    .extend(b.events.iter().map(|e| (b.heap, *e)));
            }
            true
        }),
    )
    .expect("collector starts");

    const WORKERS: usize = 4;
    const ROUNDS: usize = 6;
    let mut censuses_taken = 0;
    // Blocks that outlive the round (and the thread) that allocated them.
    let mut carried: Blocks = Vec::new();
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(WORKERS + 1));
        let (to_main, from_workers) = mpsc::channel::<Blocks>();
        // Each worker hands half its survivors to the next worker: cross-thread frees.
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..WORKERS).map(|_| mpsc::channel::<Blocks>()).unzip();
        let mut rxs: Vec<Option<mpsc::Receiver<Blocks>>> = rxs.into_iter().map(Some).collect();
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let barrier = barrier.clone();
                let to_main = to_main.clone();
                let to_next = txs[(w + 1) % WORKERS].clone();
                let from_prev = rxs[w].take().unwrap();
                std::thread::Builder::new()
                    .name(format!("round{round}-w{w}"))
                    .spawn(move || {
                        let mut rng = Rng(0x9E37_79B9 + (round * 31 + w) as u64);
                        let mut mine: Blocks = Vec::new();
                        for i in 0..3000 {
                            // SAFETY: plain allocation; every block is freed at most once below.
                            let p = unsafe { heaplens_alloc::malloc(size(&mut rng)) } as usize;
                            assert_ne!(p, 0);
                            mine.push(p);
                            if i % 3 == 0 {
                                let k = rng.below(mine.len() as u64) as usize;
                                // SAFETY: a live block of ours, removed from the list.
                                unsafe { heaplens_alloc::free(mine.swap_remove(k) as *mut u8) };
                            }
                        }
                        let give: Blocks = mine.split_off(mine.len() / 2);
                        to_next.send(give).unwrap();
                        let got = from_prev.recv().unwrap();
                        barrier.wait(); // quiet: the main thread takes a census
                        barrier.wait();
                        for p in got {
                            // SAFETY: blocks another worker allocated and handed over once.
                            unsafe { heaplens_alloc::free(p as *mut u8) };
                        }
                        // Keep a third alive past this thread's exit (abandoned, freed later).
                        let keep = mine.split_off(mine.len() * 2 / 3);
                        for p in mine {
                            // SAFETY: our own live blocks.
                            unsafe { heaplens_alloc::free(p as *mut u8) };
                        }
                        to_main.send(keep).unwrap();
                        barrier.wait(); // quiet again
                        barrier.wait();
                    })
                    .unwrap()
            })
            .collect();
        barrier.wait();
        assert!(collector::census_now(), "census delivered");
        censuses_taken += 1;
        barrier.wait();
        barrier.wait();
        assert!(collector::census_now());
        censuses_taken += 1;
        barrier.wait();
        for h in handles {
            h.join().unwrap();
        }
        drop(to_main);
        // The previous round's survivors die now, on the main thread: frees into segments whose
        // threads exited (abandoned, then reclaimed by this free).
        for p in carried.drain(..) {
            // SAFETY: blocks allocated by exited threads, freed once.
            unsafe { heaplens_alloc::free(p as *mut u8) };
        }
        carried.extend(from_workers.iter().flatten());
        assert!(collector::census_now());
        censuses_taken += 1;
    }
    for p in carried {
        // SAFETY: as above.
        unsafe { heaplens_alloc::free(p as *mut u8) };
    }
    collector::shutdown(); // one more census, after everything
    censuses_taken += 2; // the one when recording started, the one at shutdown

    let events = recorded.lock().unwrap().clone();
    let mut model = Model::new();
    let mut checked = 0;
    let mut kinds = std::collections::HashSet::new();
    for (heap, ev) in &events {
        kinds.insert(ev.kind);
        model.apply(*heap, ev);
        if ev.kind == EventKind::CensusEnd as u8 {
            let check = model.last_census_check().expect("a census was checked");
            assert_eq!(check.number, ev.arg32);
            assert_eq!(
                check.mismatches, 0,
                "census {}: the model differs from the allocator: {:#?}",
                check.number, check.first
            );
            assert!(!check.resynced);
            checked += 1;
        }
    }
    assert_eq!(
        checked, censuses_taken,
        "every census was delivered and checked"
    );
    // The workload exercised what it claims to.
    for kind in [
        EventKind::PageFull,
        EventKind::PageCollect,
        EventKind::SegmentAbandon,
        EventKind::SegmentReclaim,
        EventKind::ThreadExit,
    ] {
        assert!(kinds.contains(&(kind as u8)), "no {kind:?} event");
    }
    let totals = model.totals();
    assert!(
        totals.cross_thread_frees > 1000,
        "cross-thread frees: {}",
        totals.cross_thread_frees
    );
    assert_eq!(
        totals.allocs, totals.frees,
        "everything allocated was freed"
    );
    assert_eq!(totals.dropped, 0);
    let last = model.last_census().expect("final census");
    assert!(
        last.pages.iter().all(|p| p.used == p.thread_free),
        "no block is held at the end"
    );
}
