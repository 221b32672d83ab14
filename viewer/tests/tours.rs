//! The teaching material against the real recordings: every tour step pauses at a marker that
//! exists in its scenario's trace, in order, and what it highlights exists at that moment; every
//! glossary example can be shown in some recording. And the tour driven through the UI.

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use heaplens_viewer::source::Replay;
use heaplens_viewer::teach::{Example, GLOSSARY, TOURS, resolve, trace_file};
use heaplens_viewer::ui::{App, Source, WINDOW_SIZE, learn};

fn replay(scenario: &str) -> Replay {
    Replay::open(trace_file(scenario).expect("a built-in trace")).expect("it opens")
}

fn wants_page(e: Example) -> bool {
    !matches!(e, Example::Nothing | Example::Heap(_))
}

#[test]
fn every_step_pauses_at_a_marker_of_its_trace_and_shows_something_real() {
    for tour in &TOURS {
        let mut r = replay(tour.scenario);
        let mut last = 0;
        for step in tour.steps {
            let at = learn::step_time(r.markers(), step.marker).unwrap_or_else(|| {
                panic!("{}: no marker contains {:?}", tour.scenario, step.marker)
            });
            assert!(at >= last, "{}: steps in trace order", tour.scenario);
            last = at;
            let m = learn::step_marker(r.markers(), step.marker)
                .unwrap()
                .clone();
            r.seek_marker(&m).unwrap();
            assert_eq!(r.position(), m.event, "right after the marker's event");
            let sel = resolve(step.example, &r.view().model);
            if wants_page(step.example) {
                assert!(
                    sel.page.is_some(),
                    "{} / {:?}: no {:?} at that moment",
                    tour.scenario,
                    step.title,
                    step.example
                );
            }
            if let Example::Heap(prefix) = step.example {
                assert!(
                    sel.heap.is_some(),
                    "{}: no heap named {prefix}*",
                    tour.scenario
                );
            }
            let sentences = step.text.matches(". ").count() + 1;
            assert!(
                (2..=4).contains(&sentences),
                "{:?}: {sentences} sentences",
                step.title
            );
        }
    }
}

#[test]
fn every_glossary_example_exists_in_some_recording() {
    let mut states = Vec::new();
    for tour in &TOURS {
        let mut r = replay(tour.scenario);
        let times: Vec<u64> = r.markers().iter().map(|m| m.time).collect();
        for t in times {
            r.seek_time(t).unwrap();
            states.push(r.view().model.clone());
        }
    }
    for term in &GLOSSARY {
        if !wants_page(term.example) {
            continue;
        }
        assert!(
            states
                .iter()
                .any(|m| resolve(term.example, m).page.is_some()),
            "glossary {:?}: {:?} is in no recording",
            term.name,
            term.example
        );
    }
    let mut names: Vec<&str> = GLOSSARY.iter().map(|t| t.name).collect();
    names.dedup();
    assert_eq!(names.len(), GLOSSARY.len());
}

#[test]
fn the_tour_steps_and_plays_to_the_next_step_in_the_viewer() {
    let r = replay("fragmentation");
    let mut h = Harness::builder()
        .with_size(WINDOW_SIZE)
        .build_eframe(|_| App::new(Source::Replay(Box::new(r)), "tour").with_tour("fragmentation"));
    h.run();
    h.get_by_label("Start the tour").click();
    h.run();
    let tour = &TOURS[0];
    let time = |h: &Harness<'_, App>| match h.state().source() {
        Source::Replay(r) => (
            r.time(),
            learn::step_time(r.markers(), tour.steps[1].marker),
        ),
        Source::Live(_) => unreachable!(),
    };
    assert!(
        h.query_by_label(&format!("Step 1 of 5: {}", tour.steps[0].title))
            .is_some()
    );
    h.get_by_label("Next step").click();
    h.run();
    let (now, at) = time(&h);
    assert_eq!(Some(now), at, "paused at step 2's marker");
    assert!(
        h.query_by_label(&format!("Step 2 of 5: {}", tour.steps[1].title))
            .is_some()
    );
    let page = h
        .state()
        .state
        .selected_page
        .expect("step 2 highlights a pinned page");
    assert!(
        h.query_by_label("Page inspector").is_some(),
        "{page:#x} is open"
    );
    h.get_by_label("Play to it").click();
    for _ in 0..200 {
        h.step();

        if h.state().tour.and_then(|t| t.step) == Some(2) {
            break;
        }
    }
    assert_eq!(
        h.state().tour.and_then(|t| t.step),
        Some(2),
        "play stopped at step 3"
    );
    match h.state().source() {
        Source::Replay(r) => {
            assert!(!r.is_playing());
            assert_eq!(
                Some(r.time()),
                learn::step_time(r.markers(), tour.steps[2].marker)
            );
        }
        Source::Live(_) => unreachable!(),
    }
}
