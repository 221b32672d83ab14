//! The viewer, driven as a user would with egui_kittest: it opens on a recorded trace (a real
//! program's: `sample-apps` producer-consumer in its short form), and clicking a page, a heap
//! and the timeline shows the model's numbers. Images are rendered through wgpu (lavapipe on a
//! machine without a GPU) and compared with the snapshots in `tests/snapshots`.

use std::path::PathBuf;

use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use heaplens_alloc::event::{Event, EventKind};
use heaplens_viewer::describe::{self, Namer};
use heaplens_viewer::model::BlockState;
use heaplens_viewer::source::Replay;
use heaplens_viewer::trace::synth::{self, SynthConfig};
use heaplens_viewer::trace::{EndInfo, Metadata, TraceWriter};
use heaplens_viewer::ui::{App, Source, Tab, WINDOW_SIZE, style};

fn trace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/traces/producer-consumer.hltrace")
}

fn harness() -> Harness<'static, App> {
    harness_on(&trace())
}

fn harness_on(path: &std::path::Path) -> Harness<'static, App> {
    let replay = Replay::open(path).expect("the recorded trace opens");
    let mut h = Harness::builder()
        .with_size(WINDOW_SIZE)
        .wgpu()
        .build_eframe(|_cc| App::new(Source::Replay(Box::new(replay)), "producer-consumer"));
    h.run();
    h
}

fn replay<'a>(h: &'a Harness<'_, App>) -> &'a Replay {
    match h.state().source() {
        Source::Replay(r) => r,
        Source::Live(_) => unreachable!("opened on a trace"),
    }
}

fn has_label_containing(h: &Harness<'_, App>, text: &str) -> bool {
    h.query_all_by_label_contains(text).next().is_some()
}

#[test]
fn the_window_says_what_it_shows() {
    let h = harness();
    assert!(h.state().title().contains("heaplens"));
    let r = replay(&h);
    assert_eq!(
        r.position(),
        r.total_events(),
        "opens at the end of the recording"
    );
    assert!(
        has_label_containing(&h, "replay paused at"),
        "the status line"
    );
    assert!(has_label_containing(&h, "process exited (code 0)"));
}

#[test]
fn clicking_a_page_opens_the_inspector_with_the_models_numbers() {
    let mut h = harness();
    h.get_by_label("Segment map").click();
    h.run();
    // The first page in use, as the map numbers it (segments count from 1 by address).
    let (label, page) = {
        let model = &replay(&h).view().model;
        model
            .segments_by_address()
            .iter()
            .enumerate()
            .find_map(|(i, seg)| {
                let p = seg.pages.iter().find(|p| p.in_use)?;
                Some((format!("page {} in segment {}", p.index, i + 1), p.clone()))
            })
            .expect("a page in use at the end")
    };
    h.get_by_label(&label).click();
    h.run();
    assert!(h.state().state.selected_page == Some(page.start));
    let states = page.block_states();
    for s in BlockState::ALL {
        let n = states.iter().filter(|x| **x == s).count();
        assert!(
            h.query_by_label(&format!("{} {n}", s.name())).is_some(),
            "the inspector shows {n} blocks {}",
            s.name()
        );
    }
    let in_use = states.iter().filter(|s| **s == BlockState::InUse).count();
    assert_eq!(
        in_use as i64,
        page.held(),
        "in-use cells are the page's held blocks"
    );
    assert!(h.query_by_label(&style::bytes(page.block_size)).is_some());
    assert!(
        h.query_by_label(&format!(
            "{} of {} blocks carved",
            page.capacity, page.reserved
        ))
        .is_some()
    );
    h.snapshot("inspector");
}

#[test]
fn the_heaps_tab_has_a_panel_per_thread_with_its_totals() {
    let mut h = harness();
    h.get_by_label("Heaps").click();
    h.run();
    let model = &replay(&h).view().model;
    let mut checked = 0;
    for heap in model.heaps().iter() {
        let totals = model.page_totals(Some(heap.id));
        let titles: Vec<String> = h
            .query_all_by_label_contains(&heap.label())
            .filter_map(|n| n.accesskit_node().label())
            .collect();
        assert!(
            titles
                .iter()
                .any(|t| t.contains(&format!("{} pages", totals.pages))),
            "{}: {titles:?}",
            heap.label()
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "main, producers and consumers: {checked} heaps"
    );
    assert!(has_label_containing(&h, "Abandoned pages"));
}

#[test]
fn the_timeline_steps_seeks_and_plays() {
    let mut h = harness();
    let total = replay(&h).total_events();
    h.get_by_label("< Event").click();
    h.run();
    assert_eq!(replay(&h).position(), total - 1);
    h.get_by_label("Event >").click();
    h.run();
    assert_eq!(replay(&h).position(), total);
    let markers: Vec<u64> = replay(&h).markers().iter().map(|m| m.time).collect();
    assert!(markers.len() >= 2, "the scenario marks its phases");
    h.get_by_label("|< Marker").click();
    h.run();
    let t = replay(&h).time();
    assert_eq!(t, *markers.last().unwrap(), "jumped to the last marker");
    assert!(replay(&h).position() < total);
    h.get_by_label("|< Marker").click();
    h.run();
    assert!(replay(&h).time() < t);
    let before = replay(&h).position();
    h.get_by_label("Play").click();
    h.run_steps(2);
    assert!(replay(&h).position() > before, "play moves the replay on");
}

#[test]
fn the_overview_renders() {
    let mut h = harness();
    assert!(has_label_containing(&h, "Memory (KiB)") || has_label_containing(&h, "Memory (MiB)"));
    assert!(has_label_containing(&h, "Fragmentation (%)"));
    h.snapshot("overview");
    h.get_by_label("Free lists").click();
    h.run();
    assert!(has_label_containing(&h, "By size class, now"));
    h.snapshot("free-lists");
}

/// The two markers of [`close_markers_trace`], a millisecond apart.
const MARKERS: [&str; 2] = ["warm-up done", "steady state"];

/// A synthetic run of four threads (a few M allocations/s) with only two markers, a
/// millisecond apart in its middle, written to a trace file.
fn close_markers_trace() -> PathBuf {
    let mut batches = synth::generate(&SynthConfig {
        threads: 4,
        events: 400_000,
        seed: 7,
        ..SynthConfig::default()
    });
    for (_, evs) in &mut batches {
        evs.retain(|e| e.event_kind() != Some(EventKind::Mark));
    }
    let mid = batches[batches.len() / 2].1[0].time;
    for (k, label) in MARKERS.iter().enumerate() {
        let time = mid + k as u64 * 1_000_000;
        let (addr, arg) = Event::pack_text(label.as_bytes());
        let mark = Event {
            kind: EventKind::Mark as u8,
            addr,
            arg,
            time,
            ..Event::default()
        };
        let at = batches.partition_point(|(_, evs)| evs.first().is_none_or(|e| e.time <= time));
        batches.insert(at, (1, vec![mark]));
    }
    let path = std::env::temp_dir().join(format!(
        "heaplens-ui-{}-markers.hltrace",
        std::process::id()
    ));
    let mut w = TraceWriter::create(&path, &Metadata::with_allocator_constants()).unwrap();
    for (heap, evs) in &batches {
        w.write_batch(*heap, evs).unwrap();
    }
    w.finish(EndInfo::clean(0)).unwrap();
    path
}

/// The rectangles of the labels reading exactly `text`.
fn label_rects(h: &Harness<'_, App>, text: &str) -> Vec<eframe::egui::Rect> {
    h.query_all_by_label(text).map(|n| n.rect()).collect()
}

#[test]
fn two_markers_a_millisecond_apart_get_two_readable_labels() {
    let path = close_markers_trace();
    let mut h = harness_on(&path);
    let times: Vec<u64> = replay(&h).markers().iter().map(|m| m.time).collect();
    assert_eq!(times.len(), 2);
    assert_eq!(times[1] - times[0], 1_000_000, "a millisecond apart");
    // Each label is shown whole (not elided: the query is by the full text) and apart from
    // the other, in the overview's labelled plots and under the timeline.
    let first = label_rects(&h, MARKERS[0]);
    let second = label_rects(&h, MARKERS[1]);
    assert_eq!(
        first.len(),
        3,
        "memory, fragmentation and timeline: {first:?}"
    );
    assert_eq!(
        second.len(),
        3,
        "memory, fragmentation and timeline: {second:?}"
    );
    for a in &first {
        for b in &second {
            let both = a.intersect(*b);
            assert!(
                both.width() <= 0.0 || both.height() <= 0.0,
                "labels overlap: {a:?} {b:?}"
            );
        }
    }
    h.snapshot("close-markers");
    let _ = std::fs::remove_file(path);
}

/// Clicking a marker's label under the timeline goes to the marker's own event (the state the
/// program marked), not to the end of its clock tick, and pauses there.
#[test]
fn clicking_a_marker_label_goes_to_its_event() {
    let path = close_markers_trace();
    let mut h = harness_on(&path);
    let marker = replay(&h).markers()[0].clone();
    assert_ne!(replay(&h).position(), marker.event, "opens at the end");
    // The timeline's label is the lowest of the three (the plots' are above it).
    let label = h
        .query_all_by_label(MARKERS[0])
        .max_by(|a, b| a.rect().top().total_cmp(&b.rect().top()))
        .expect("the timeline's label");
    label.click();
    h.run();
    let r = replay(&h);
    assert_eq!(r.position(), marker.event, "at the marker's event");
    assert!(!r.is_playing());
    let _ = std::fs::remove_file(path);
}

#[test]
fn the_rate_axis_reads_in_millions_per_second() {
    let path = close_markers_trace();
    let h = harness_on(&path);
    let samples = replay(&h).full_metrics().samples().to_vec();
    let peak = samples
        .windows(2)
        .map(|w| w[1].alloc_rate_since(&w[0]))
        .fold(0.0, f64::max);
    assert!(
        peak >= 1e6,
        "the synthetic run allocates millions a second: {peak}"
    );
    assert!(
        has_label_containing(&h, "Allocations and frees per second (M/s)"),
        "the rate plot's unit"
    );
    assert!(heaplens_viewer::units::rate(peak).ends_with(" M/s"));
    let _ = std::fs::remove_file(path);
}

#[test]
fn filtering_events_by_thread_shows_only_its_events_and_a_click_selects_the_page() {
    let mut h = harness();
    // In the middle of the run, while the producers hold pages.
    {
        let Source::Replay(r) = h.state_mut().source_mut() else {
            unreachable!("opened on a trace")
        };
        let m = r.markers()[r.markers().len() / 2].clone();
        r.seek_marker(&m).unwrap();
    }
    h.run();
    h.get_by_label("Events").click();
    h.run();
    // The history around the position (the end), read from the trace.
    let all: Vec<(u64, u32)> = {
        let view = replay(&h).view();
        h.state()
            .state
            .events
            .shown(view)
            .map(|e| (e.0, e.1))
            .collect()
    };
    assert!(
        all.len() > 1000,
        "the history around the position: {}",
        all.len()
    );
    // Before and after the position.
    let position = replay(&h).position();
    assert!(
        all.first().is_some_and(|e| e.0 < position) && all.last().is_some_and(|e| e.0 >= position)
    );
    let model = &replay(&h).view().model;
    // A thread whose name is its own (pool threads share theirs), holding pages, with events
    // in view.
    let named = |id: u32| describe::thread(model, id);
    let heap = model
        .heaps()
        .iter()
        .filter(|x| model.heaps().iter().filter(|y| y.name == x.name).count() == 1)
        .filter(|x| !model.bins(Some(x.id)).is_empty())
        .find(|x| all.iter().any(|e| e.1 == x.id))
        .expect("a thread with a name of its own, pages, and events")
        .id;
    let name = named(heap);
    let others: Vec<String> = model
        .heaps()
        .iter()
        .filter(|x| x.id != heap)
        .map(|x| format!("{} ", describe::thread(model, x.id)))
        .collect();
    h.get_by_label("thread").click();
    h.run();
    h.get_by_label(&format!("{name} (heap {heap})")).click();
    h.run();
    let shown: Vec<(u64, u32, Event)> = {
        let view = replay(&h).view();
        h.state().state.events.shown(view).copied().collect()
    };
    assert!(!shown.is_empty());
    assert!(shown.len() < all.len());
    assert!(shown.iter().all(|e| e.1 == heap), "only {name}'s events");
    // What is drawn says so too: rows name that thread, never another.
    let top = h
        .get_by_label_contains("around the replay position")
        .rect()
        .bottom();
    let rows: Vec<String> = h
        .query_all_by_label_contains("thread ")
        .filter(|n| n.rect().top() >= top)
        .filter_map(|n| n.accesskit_node().label())
        .filter(|l| l.contains(" allocated ") || l.contains(" freed "))
        .collect();
    assert!(!rows.is_empty());
    for r in &rows {
        assert!(r.starts_with(&format!("{name} ")), "{r}");
        assert!(!others.iter().any(|o| r.starts_with(o.as_str())), "{r}");
    }
    // Clicking an allocation shown selects the page it came from.
    let model = &replay(&h).view().model;
    let names = Namer::new(model);
    let (label, page) = rows
        .iter()
        .find_map(|r| {
            shown.iter().find_map(|(_, hp, e)| {
                let p = model.page_at(e.addr)?;
                (describe::describe(model, &names, *hp, e) == *r).then(|| (r.clone(), p.page.start))
            })
        })
        .expect("a row whose page is still there");
    // A row in view: below the line that says what the log holds (the list scrolls under it).
    let top = h
        .get_by_label_contains("around the replay position")
        .rect()
        .bottom();
    h.query_all_by_label(&label)
        .find(|n| n.rect().top() >= top)
        .expect("the row in view")
        .click();
    h.run();
    assert_eq!(h.state().state.selected_page, Some(page));
    assert_eq!(h.state().state.tab, Tab::Events);
    h.snapshot("events-filtered");
}

#[test]
fn an_address_search_tells_the_life_story_of_its_block() {
    let mut h = harness();
    let (addr, heap) = {
        let model = &replay(&h).view().model;
        // A block allocated and freed: the first freed in the trace.
        let mut reader = heaplens_viewer::trace::TraceReader::open(trace()).unwrap();
        let mut allocated = std::collections::HashMap::new();
        let mut found = None;
        for item in reader.events() {
            let (heap, e) = item.unwrap();
            match e.event_kind() {
                Some(EventKind::Alloc) => {
                    allocated.entry(e.addr).or_insert(heap);
                }
                Some(EventKind::Free) if allocated.contains_key(&e.addr) => {
                    found = Some((e.addr, allocated[&e.addr]));
                    break;
                }
                _ => {}
            }
        }
        let _ = model;
        found.expect("a block freed")
    };
    h.get_by_label("Events").click();
    h.run();
    let events = &mut h.state_mut().state.events;
    events.address_text = format!("{addr:#x}");
    events.filter.address = Some(addr);
    // The list springs back from where the history was scrolled: a few frames.
    h.run_steps(10);
    let story: Vec<(u32, Event)> = {
        let view = replay(&h).view();
        h.state()
            .state
            .events
            .shown(view)
            .map(|e| (e.1, e.2))
            .collect()
    };
    let first = story.first().expect("a story");
    assert_eq!(
        first.1.event_kind(),
        Some(EventKind::Alloc),
        "it starts with its allocation"
    );
    assert_eq!((first.0, first.1.addr), (heap, addr));
    assert!(
        story
            .iter()
            .any(|(_, e)| e.event_kind() == Some(EventKind::Free) && e.addr == addr),
        "and it was freed"
    );
    assert!(has_label_containing(
        &h,
        &format!("the life story of the block at {addr:#x}")
    ));
}
