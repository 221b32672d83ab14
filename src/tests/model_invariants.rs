//! The model's invariants (`heaplens_viewer::model::invariants`) hold at every sample of a fresh
//! recording of each scenario (`heaplens record -- target/release/NAME --short`, the program
//! under libheaplens.so): those that hold in any event order at every sample, all of them at
//! each census that agrees with the model and at the end.

mod common;

use common::{root, tempdir};
use heaplens_alloc::event::EventKind;
use heaplens_viewer::model::{Model, Point};
use heaplens_viewer::trace::TraceReader;

const SCENARIOS: [&str; 6] = [
    "fragmentation",
    "producer-consumer",
    "thread-churn",
    "server",
    "leak",
    "large",
];

#[test]
fn invariants_hold_at_every_sample_of_fresh_recordings_of_each_scenario() {
    common::build_scenarios();
    let dir = tempdir("invariants");
    let mut report = Vec::new();
    for name in SCENARIOS {
        let trace = dir.join(format!("{name}.hltrace"));
        let exe = root().join("target/release").join(name);
        common::record(&trace, &[], &[exe.as_os_str(), "--short".as_ref()]);
        let mut r = TraceReader::open(&trace).unwrap();
        assert!(r.is_complete(), "{name}");
        let mut m = Model::new();
        let (mut samples, mut censuses, mut settled) = (0, 0, 0);
        for item in r.events() {
            let (heap, e) = item.unwrap();
            if m.sample_due(e.time) {
                samples += 1;
                for v in m.check_invariants(Point::AnySample).into_iter().take(3) {
                    report.push(format!("{name} at {} ns: {v}", m.time()));
                }
            }
            m.apply(heap, &e);
            if e.kind == EventKind::CensusEnd as u8 && m.totals().censuses != censuses {
                censuses = m.totals().censuses;
                if m.last_census_check().is_some_and(|c| c.mismatches == 0) {
                    settled += 1;
                    for v in m.check_invariants(Point::Settled).into_iter().take(3) {
                        report.push(format!("{name} at census {censuses}: {v}"));
                    }
                }
            }
        }
        m.finish();
        for v in m.check_invariants(Point::Settled).into_iter().take(3) {
            report.push(format!("{name} at the end: {v}"));
        }
        eprintln!("{name}: {samples} samples, {settled} agreeing censuses checked");
        assert!(samples >= 1, "{name}");
        assert!(m.totals().censuses >= 1, "{name}: no census");
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(report.is_empty(), "{}", report.join("\n"));
}
