//! The viewer, driven as a user would with egui_kittest: it opens on a recorded trace (a real
//! program's: `sample-apps` producer-consumer in its short form), and clicking a page, a heap
//! and the timeline shows the model's numbers. Images are rendered through wgpu (lavapipe on a
//! machine without a GPU) and compared with the snapshots in `tests/snapshots`.

use std::path::PathBuf;

use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use heaplens_viewer::model::BlockState;
use heaplens_viewer::source::Replay;
use heaplens_viewer::ui::{App, Source, WINDOW_SIZE, style};

fn trace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/traces/producer-consumer.hltrace")
}

fn harness() -> Harness<'static, App> {
    let replay = Replay::open(trace()).expect("the recorded trace opens");
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
    assert!(has_label_containing(&h, "Memory (MiB)"));
    assert!(has_label_containing(&h, "Fragmentation (%)"));
    h.snapshot("overview");
    h.get_by_label("Free lists").click();
    h.run();
    assert!(has_label_containing(&h, "By size class, now"));
    h.snapshot("free-lists");
}
