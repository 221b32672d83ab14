//! The process picker (`heaplens view FOLDER` on a `--follow-fork` recording), driven with
//! egui_kittest: it lists every process with pid, parent, events and command; clicking one
//! replays that process's trace, and "All processes" goes back to the list.

use std::path::PathBuf;

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use heaplens_viewer::source::Replay;
use heaplens_viewer::ui::picker::{Picker, ProcessRow};
use heaplens_viewer::ui::{Source, WINDOW_SIZE};

fn trace(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../assets/traces/{name}.hltrace"))
}

/// Two processes: a parent and its child, each with a real recording.
fn rows() -> Vec<ProcessRow> {
    [(4100, None, "leak"), (4107, Some(4100), "server")]
        .into_iter()
        .map(|(pid, parent_pid, name)| {
            let path = trace(name);
            let events = Replay::open(&path).unwrap().total_events();
            ProcessRow {
                pid,
                parent_pid,
                command: format!("./{name} --flag"),
                events,
                path,
            }
        })
        .collect()
}

fn harness() -> Harness<'static, Picker> {
    let mut h = Harness::builder()
        .with_size(WINDOW_SIZE)
        .build_eframe(|_cc| Picker::new("rec/", rows()));
    h.run();
    h
}

#[test]
fn the_list_shows_every_process_and_picking_one_replays_its_trace() {
    let mut h = harness();
    assert!(h.state().title().contains("2 processes"));
    for row in rows() {
        assert!(h.query_by_label(&format!("pid {}", row.pid)).is_some());
        assert!(h.query_by_label(&row.command).is_some());
        assert!(h.query_by_label(&row.events.to_string()).is_some());
    }
    assert!(h.query_by_label("4100").is_some(), "the child's parent");
    assert!(h.state().opened().is_none());

    h.get_by_label("pid 4107").click();
    h.run();
    let (pid, app) = h.state().opened().expect("a process opened");
    assert_eq!(pid, 4107);
    let Source::Replay(r) = app.source() else {
        panic!("a recording replays")
    };
    assert_eq!(
        r.total_events(),
        Replay::open(trace("server")).unwrap().total_events(),
        "the picked process's own trace"
    );
    assert!(
        h.query_by_label("Segment map").is_some(),
        "the usual viewer"
    );

    h.get_by_label("All processes").click();
    h.run();
    assert!(h.state().opened().is_none());
    assert!(h.query_by_label("pid 4100").is_some(), "back at the list");
}
