//! The in-process transport: a subscriber's channel receives every event while it keeps up, and
//! `Dropped` counts (never silence) when it does not.
#![allow(unsafe_code)] // the test calls the raw allocator API

use heaplens_alloc::batch::{Batch, Message};
use heaplens_alloc::collector::{self, Config};
use heaplens_alloc::event::EventKind;

#[test]
fn a_slow_subscriber_is_told_how_many_events_it_lost() {
    // A channel of 2 batches that nobody reads until the end: most batches cannot fit.
    let rx = collector::subscribe(
        Config {
            lossless: true,
            census_every_ms: 0,
            channel_buffers: 4,
        },
        2,
    )
    .expect("collector starts");
    let mut total_allocs = 0u64;
    for round in 0..20 {
        // SAFETY: plain allocations, freed at once.
        let blocks: Vec<usize> = (0..5000)
            .map(|i| unsafe { heaplens_alloc::malloc(16 + (i + round) % 300) } as usize)
            .collect();
        total_allocs += blocks.len() as u64;
        for p in blocks {
            // SAFETY: each block freed once.
            unsafe { heaplens_alloc::free(p as *mut u8) };
        }
        assert!(collector::census_now());
    }
    // Read what is there while the collector still runs: room frees up, the drop count gets in.
    let mut received = Vec::new();
    let mut allocs_seen = 0u64;
    let mut dropped = 0u64;
    let mut ended = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut shut = false;
    while !ended && std::time::Instant::now() < deadline {
        match rx.recv_timeout(std::time::Duration::from_millis(50)) {
            Ok(Message::Batch(Batch { heap, events })) => {
                for e in &events {
                    if e.kind == EventKind::Alloc as u8 {
                        allocs_seen += 1;
                    }
                    if e.kind == EventKind::Dropped as u8 && heap == 0 {
                        dropped += e.arg;
                    }
                }
                received.push(events.len());
            }
            Ok(Message::End) => ended = true,
            Ok(Message::Meta(_) | Message::Exit(_)) => {}
            Err(_) if !shut => {
                shut = true;
                std::thread::spawn(collector::shutdown);
            }
            Err(_) => {}
        }
    }
    assert!(ended, "the end of the stream arrived");
    assert!(dropped > 0, "a slow subscriber is told it lost events");
    assert!(
        allocs_seen < total_allocs,
        "some events were really dropped"
    );
    // Every event is either delivered or counted as dropped: nothing vanishes silently.
    let delivered: u64 = received.iter().map(|&n| n as u64).sum();
    assert!(
        delivered + dropped >= total_allocs * 2,
        "allocs and frees are all accounted for"
    );
}
