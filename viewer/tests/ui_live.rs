//! The viewer on a live source, driven with egui_kittest: the status line says how far the view
//! is behind the program, from the stream's `ClockSync` and the machine's clock.

use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use heaplens_alloc::batch::Batch;
use heaplens_alloc::event::{Event, EventKind};
use heaplens_viewer::source::{Feed, Live};
use heaplens_viewer::ui::{App, Source, WINDOW_SIZE};

fn ev(kind: EventKind, addr: u64, time: u64) -> Event {
    Event {
        kind: kind as u8,
        addr,
        time,
        ..Event::default()
    }
}

/// A live viewer whose program's clock (by its `ClockSync`) stood `ago_ns` before now at its
/// latest event, once every event is applied.
fn viewer_behind_by(ago_ns: u64) -> Harness<'static, App> {
    let (tx, rx) = crossbeam_channel::bounded(4);
    let live = Live::start(rx, "a program");
    let now = heaplens_alloc::os::clock_ns();
    // Trace time 1 ms was CLOCK_MONOTONIC `now - ago_ns`; the latest event is at 1 ms.
    let events = vec![
        ev(EventKind::ClockSync, now - ago_ns, 1_000_000),
        ev(
            EventKind::Mark,
            u64::from_le_bytes(*b"phase\0\0\0"),
            1_000_000,
        ),
    ];
    let n = events.len() as u64;
    tx.send(Feed::from(Batch { heap: 0, events })).unwrap();
    // Wait for the ingest thread to apply them (it fails the test if it never does).
    let start = std::time::Instant::now();
    while live.view().applied < n {
        assert!(
            start.elapsed().as_secs() < 60,
            "the ingest thread never applied the batch"
        );
        std::thread::yield_now();
    }
    // The sender stays alive: the program is still connected.
    std::mem::forget(tx);
    let mut h = Harness::builder()
        .with_size(WINDOW_SIZE)
        .build_eframe(|_cc| App::new(Source::Live(live), "a program"));
    h.run_steps(2);
    h
}

/// The milliseconds in the status line's "N ms behind".
fn shown_lag_ms(h: &Harness<'_, App>) -> Option<u64> {
    let node = h.query_all_by_label_contains("ms behind").next()?;
    let n = node.accesskit_node();
    let label = n.label().or_else(|| n.value())?;
    label.split(" ms behind").next()?.trim().parse().ok()
}

#[test]
fn the_status_line_shows_how_far_the_view_is_behind_the_program() {
    let h = viewer_behind_by(5_000_000_000);
    assert!(
        h.query_all_by_label_contains("connected: a program")
            .next()
            .is_some(),
        "the status line says what is watched"
    );
    let ms = shown_lag_ms(&h).expect("the status line shows the lag");
    // At least the 5 s the program's clock was behind when the model took its events; more
    // only by how long the ingest thread took to apply them.
    assert!(ms >= 5_000, "{ms} ms behind");
    assert!(ms < 65_000, "{ms} ms behind");
}

#[test]
fn a_stream_without_a_clock_sync_shows_no_lag() {
    let (tx, rx) = crossbeam_channel::bounded(4);
    let live = Live::start(rx, "a program");
    tx.send(Feed::from(Batch {
        heap: 0,
        events: vec![ev(EventKind::Mark, u64::from_le_bytes(*b"phase\0\0\0"), 1)],
    }))
    .unwrap();
    let start = std::time::Instant::now();
    while live.view().applied < 1 {
        assert!(start.elapsed().as_secs() < 60, "never applied");
        std::thread::yield_now();
    }
    let mut h = Harness::builder()
        .with_size(WINDOW_SIZE)
        .build_eframe(|_cc| App::new(Source::Live(live), "a program"));
    h.run_steps(2);
    assert!(h.query_all_by_label_contains("connected").next().is_some());
    assert!(shown_lag_ms(&h).is_none(), "no clock to compare with");
    drop(tx);
}
