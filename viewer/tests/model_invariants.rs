//! The model's invariants (`heaplens_viewer::model::invariants`) hold at every sample of every
//! trace in `assets/traces/` (those that hold in any event order), and all of them at the
//! settled points: each census that agrees with the model, and the end. (Fresh recordings of
//! each scenario: `src/tests/model_invariants.rs`.)

use heaplens_alloc::event::EventKind;
use heaplens_viewer::model::{Model, Point, Violation};
use heaplens_viewer::trace::TraceReader;

/// Replays `path`, checking the invariants wherever the model takes a sample, at each census
/// that agrees and at the end. Returns the violations with the time, and the number of points
/// checked.
fn check_trace(path: &std::path::Path) -> (Vec<(u64, Violation)>, usize) {
    let mut r = TraceReader::open(path).unwrap();
    let mut m = Model::new();
    let mut bad = Vec::new();
    let mut checked = 0;
    let mut censuses = 0;
    for item in r.events() {
        let (heap, e) = item.unwrap();
        if m.sample_due(e.time) {
            checked += 1;
            bad.extend(
                m.check_invariants(Point::AnySample)
                    .into_iter()
                    .map(|v| (m.time(), v)),
            );
        }
        m.apply(heap, &e);
        if e.kind == EventKind::CensusEnd as u8 && m.totals().censuses != censuses {
            censuses = m.totals().censuses;
            if m.last_census_check().is_some_and(|c| c.mismatches == 0) {
                checked += 1;
                bad.extend(
                    m.check_invariants(Point::Settled)
                        .into_iter()
                        .map(|v| (m.time(), v)),
                );
            }
        }
    }
    m.finish();
    checked += 1;
    bad.extend(
        m.check_invariants(Point::Settled)
            .into_iter()
            .map(|v| (m.time(), v)),
    );
    (bad, checked)
}

#[test]
fn invariants_hold_at_every_sample_of_every_asset_trace() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/traces");
    let mut report = Vec::new();
    let mut traces = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // The golden file is a format test (synthetic events, an edge batch of extreme
        // values), not an allocator's run.
        if !name.ends_with(".hltrace") || name.starts_with("golden-") {
            continue;
        }
        traces += 1;
        let (bad, checked) = check_trace(&path);
        assert!(checked >= 2, "{name}: {checked} samples");
        eprintln!("{name}: {checked} samples, {} violations", bad.len());
        for (t, v) in bad.iter().take(5) {
            report.push(format!("{name} at {t} ns: {v}"));
        }
    }
    assert!(traces >= 6);
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn the_order_independent_invariants_hold_after_every_event_of_every_asset_trace() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/traces");
    let mut report = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("golden-") {
            continue;
        }
        let mut r = TraceReader::open(&path).unwrap();
        let mut m = Model::new();
        for (i, item) in r.events().enumerate() {
            let (heap, e) = item.unwrap();
            m.apply(heap, &e);
            if let Some(v) = m.check_invariants(Point::AnySample).first() {
                report.push(format!("{name} after event {i} (kind {}): {v}", e.kind));
                break;
            }
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}
