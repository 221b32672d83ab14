//! Each insight fires on the scenario built to trigger it and stays quiet on the others. The
//! model is checked at every marker of each scenario's recorded trace and at its end.
//! `server` and `c-program` are built to trigger none: a busy, healthy program.

use std::collections::BTreeSet;
use std::path::PathBuf;

use heaplens_viewer::insights::{Kind, insights};
use heaplens_viewer::source::Replay;

fn fired(scenario: &str) -> BTreeSet<&'static str> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/traces")
        .join(format!("{scenario}.hltrace"));
    let mut r = Replay::open(&path).unwrap();
    let mut kinds = BTreeSet::new();
    for i in insights(&r.view().model, r.exit().is_some()) {
        kinds.insert(i.kind.title());
    }
    let markers = r.markers().to_vec();
    for m in markers {
        // At the marker's own place in the event order, as a tour step shows it (events later
        // in the same clock tick are not applied yet).
        r.seek_marker(&m).unwrap();
        let t = m.time;
        for i in insights(&r.view().model, false) {
            if std::env::var_os("HEAPLENS_SHOW_INSIGHTS").is_some() {
                println!("{scenario} @ {t}: {}", i.text);
            }
            kinds.insert(i.kind.title());
        }
    }
    kinds
}

#[test]
fn each_insight_fires_on_its_scenario_and_only_there() {
    use Kind::*;
    // (scenario, what must fire and nothing else)
    let expect: [(&str, &[Kind]); 7] = [
        ("fragmentation", &[MostlyEmptyPages]),
        ("producer-consumer", &[CrossThreadFrees]),
        ("thread-churn", &[AbandonedMemory]),
        ("server", &[]),
        ("leak", &[LeaksAtExit]),
        ("large", &[PurgePending]),
        ("c-program", &[]),
    ];
    let mut report = Vec::new();
    for (scenario, must) in expect {
        let got = fired(scenario);
        for k in Kind::ALL {
            let fired = got.contains(k.title());
            if must.contains(&k) && !fired {
                report.push(format!("{scenario}: {:?} did not fire", k.title()));
            }
            if fired && !must.contains(&k) {
                report.push(format!("{scenario}: {:?} fired", k.title()));
            }
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// In the thread-churn recording, wherever the memory of the threads that just exited shows at
/// a "threads exited" marker's own event (as a tour step shows it), it shows also when the view
/// seeks to the marker's time (as the slider does), which lands after every event of the
/// marker's clock tick: the scenario holds that state past the tick before main frees into the
/// abandoned segments and reclaims them. (Before, main reclaimed one in the same tick.)
#[test]
fn thread_churn_shows_abandoned_memory_at_an_exit_markers_time_too() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/traces/thread-churn.hltrace");
    let mut r = Replay::open(&path).unwrap();
    let exits: Vec<_> = r
        .markers()
        .iter()
        .filter(|m| m.label.contains("threads exited"))
        .cloned()
        .collect();
    let mut shown_at_event = 0;
    for m in exits {
        let shows = |r: &Replay| {
            insights(&r.view().model, false)
                .iter()
                .any(|i| i.kind == Kind::AbandonedMemory)
        };
        r.seek_marker(&m).unwrap();
        if !shows(&r) {
            continue;
        }
        shown_at_event += 1;
        r.seek_time(m.time).unwrap();
        assert!(shows(&r), "gone by the end of the tick of {:?}", m.label);
    }
    assert!(shown_at_event >= 1, "never shown at an exit marker");
}
