//! Tour steps name allocation sites (issue 11, teaching): on fresh recordings of the scenarios
//! with `--stacks all`, the fragmentation step about survivors pinning the pages names the
//! function that allocated them and its caller, and the thread-churn step about abandoned pages
//! the code behind what the exited threads left, as the symboliser resolves them from the
//! scenarios' binaries.

mod common;

use common::{root, tempdir};
use heaplens_viewer::source::Replay;
use heaplens_viewer::teach::{Example, site_note, tour};
use heaplens_viewer::ui::learn;

/// Records `scenario`'s short form with every stack, and opens the recording.
fn recorded(scenario: &str, dir: &std::path::Path) -> Replay {
    common::build_scenarios();
    let trace = dir.join(format!("{scenario}.hltrace"));
    let exe = root().join("target/release").join(scenario);
    common::record(
        &trace,
        &["--stacks", "all"],
        &[exe.as_os_str(), "--short".as_ref()],
    );
    Replay::open(&trace).unwrap()
}

/// The site note of `scenario`'s tour step with `example`, at the step's marker.
fn note_at_step(r: &mut Replay, scenario: &str, example: Example) -> Option<String> {
    let t = tour(scenario).unwrap();
    let step = t.steps.iter().find(|s| s.example == example).unwrap();
    let m = learn::step_marker(r.markers(), step.marker)
        .unwrap()
        .clone();
    r.seek_marker(&m).unwrap();
    site_note(step.example, &r.view().model)
}

#[test]
fn the_fragmentation_tour_names_the_function_whose_survivors_pin_the_pages() {
    let dir = tempdir("tour-sites");
    let mut r = recorded("fragmentation", &dir);
    let note =
        note_at_step(&mut r, "fragmentation", Example::PinnedPage).expect("the step names a site");
    // fragmentation.rs's fill loop calls util.rs's `make` for every object; the survivors are
    // every tenth of them.
    assert!(
        note.starts_with("The survivors pinning these pages were allocated by make (util.rs:"),
        "{note}"
    );
    assert!(
        note.contains("called from run (fragmentation.rs:"),
        "{note}"
    );
    // 4000 survivors (40 000 objects, every tenth kept), all from the fill loop.
    assert!(note.contains(": 4000 blocks"), "{note}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_recording_without_stacks_names_no_site() {
    // The built-in server recording was made without stacks.
    let path = heaplens_viewer::teach::trace_file("server").unwrap();
    let mut r = Replay::open(&path).unwrap();
    assert!(!r.view().model.sites().is_on());
    let t = tour("server").unwrap();
    for step in t.steps {
        let m = learn::step_marker(r.markers(), step.marker)
            .unwrap()
            .clone();
        r.seek_marker(&m).unwrap();
        for example in [Example::PinnedPage, Example::AbandonedPage] {
            assert_eq!(site_note(example, &r.view().model), None);
        }
    }
}

#[test]
fn the_thread_churn_tour_names_the_code_behind_what_exited_threads_left() {
    let dir = tempdir("tour-sites-churn");
    let mut r = recorded("thread-churn", &dir);
    let note = note_at_step(&mut r, "thread-churn", Example::AbandonedPage)
        .expect("the step names a site");
    // Each short-lived thread's closure in thread_churn.rs hands its survivors to the shared
    // list through util.rs's `make`.
    assert!(
        note.starts_with(
            "What the exited threads left on their pages was allocated by make (util.rs:"
        ),
        "{note}"
    );
    assert!(note.contains("(thread_churn.rs:"), "{note}");
    let _ = std::fs::remove_dir_all(&dir);
}
