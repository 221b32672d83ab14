//! Comparing the model with a census, and resynchronising from one.

mod common;

use common::{model_of, model_of_lossy, simulate};
use heaplens_alloc::event::{Event, EventKind};
use heaplens_viewer::model::synth::SynthConfig;
use heaplens_viewer::model::{Census, CensusPage, Field, Mismatch, Model};

fn run() -> (Model, Census) {
    let (_, events, census) = simulate(
        SynthConfig {
            seed: 5,
            churn_per_million: 8_000,
            ..SynthConfig::default()
        },
        20_000,
    );
    (model_of(&events), census)
}

#[test]
fn a_matching_census_has_no_mismatches() {
    let (m, census) = run();
    assert!(census.pages.len() > 5);
    assert_eq!(m.compare(&census), Vec::<Mismatch>::new());
}

#[test]
fn each_perturbed_page_field_is_reported() {
    let (m, census) = run();
    type Perturb = fn(&mut CensusPage);
    let perturbations: [(Field, Perturb); 9] = [
        (Field::BlockSize, |p| p.block_size += 16),
        (Field::Bin, |p| p.bin += 1),
        (Field::Kind, |p| p.kind ^= 1),
        (Field::Capacity, |p| p.capacity += 1),
        (Field::Used, |p| p.used += 1),
        (Field::LocalFree, |p| p.local_free += 2),
        (Field::ThreadFree, |p| p.thread_free += 3),
        (Field::Owner, |p| p.owner += 100),
        (Field::InFull, |p| p.in_full = !p.in_full),
    ];
    for (i, (field, change)) in perturbations.into_iter().enumerate() {
        let mut c = census.clone();
        let k = i % c.pages.len();
        change(&mut c.pages[k]);
        let start = c.pages[k].start;
        let got = m.compare(&c);
        assert_eq!(got.len(), 1, "{field}: {got:?}");
        match &got[0] {
            Mismatch::PageField {
                start: s,
                field: f,
                model,
                census,
            } => {
                assert_eq!((*s, *f), (start, field));
                assert_ne!(model, census);
            }
            other => panic!("{field}: {other:?}"),
        }
        let text = got[0].to_string();
        assert!(
            text.contains(field.name()) && text.contains(&format!("{start:#x}")),
            "{text}"
        );
    }
}

#[test]
fn missing_and_extra_pages_and_segments_are_reported() {
    let (m, census) = run();
    let mut c = census.clone();
    let gone = c.pages.remove(0);
    assert_eq!(
        m.compare(&c),
        vec![Mismatch::PageMissingInCensus {
            start: gone.start,
            owner: gone.owner
        }]
    );
    // a page the model does not have in use: a free page of a live segment
    let seg = m
        .segments()
        .iter()
        .find(|s| s.pages.iter().any(|p| !p.in_use))
        .expect("a segment with a free page");
    let free = seg.pages.iter().find(|p| !p.in_use).expect("free page");
    let mut c = census.clone();
    c.pages.push(CensusPage {
        start: free.start,
        ..census.pages[0]
    });
    assert_eq!(
        m.compare(&c),
        vec![Mismatch::PageMissingInModel { start: free.start }]
    );
    // a segment the census does not list
    let mut c = census.clone();
    let base = seg.base;
    c.segments.retain(|s| s.base != base);
    c.pages
        .retain(|p| heaplens_viewer::model::segment_base(p.start) != base);
    let got = m.compare(&c);
    assert!(
        got.contains(&Mismatch::SegmentMissingInCensus { base }),
        "{got:?}"
    );
    // a segment size that differs
    let mut c = census.clone();
    c.segments[0].bytes += 4096;
    let got = m.compare(&c);
    assert!(
        matches!(
            got.as_slice(),
            [Mismatch::SegmentField {
                field: Field::Bytes,
                ..
            }]
        ),
        "{got:?}"
    );
}

#[test]
fn resync_resets_a_diverged_model_to_the_census() {
    let (_, events, census) = simulate(SynthConfig::default(), 20_000);
    // lose every tenth free and some page events, as a live viewer that fell behind would
    let lossy: Vec<_> = events
        .iter()
        .enumerate()
        .filter(|(i, (_, e))| !(i % 10 == 0 && e.kind != EventKind::SegmentAlloc as u8))
        .map(|(_, x)| *x)
        .collect();
    let mut m = model_of_lossy(&lossy);
    assert!(!m.compare(&census).is_empty());
    m.resync(&census);
    assert_eq!(m.compare(&census), Vec::<Mismatch>::new());
    let held: u64 = census
        .pages
        .iter()
        .map(|p| u64::from(p.used - p.thread_free) * p.block_size)
        .sum();
    assert_eq!(m.current().block_bytes, held);
}

#[test]
fn a_census_after_lost_events_resyncs_the_model_by_itself() {
    let (_, events, census) = simulate(SynthConfig::default(), 10_000);
    let mut lossy: Vec<_> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 7 != 3)
        .map(|(_, x)| *x)
        .collect();
    let dropped = Event {
        kind: EventKind::Dropped as u8,
        arg: (events.len() - lossy.len()) as u64,
        ..Event::default()
    };
    lossy.push((1, dropped));
    lossy.extend(census.to_events().into_iter().map(|e| (0, e)));
    let m = model_of_lossy(&lossy);
    let check = m.last_census_check().expect("census checked");
    assert!(check.mismatches > 0);
    assert!(check.resynced);
    assert_eq!(m.compare(&census), Vec::<Mismatch>::new());

    // without lost events a disagreement is reported, not papered over
    let mut m = Model::new();
    m.set_auto_resync(true);
    for (h, e) in events.iter().take(events.len() / 2) {
        m.apply(*h, e);
    }
    for e in census.to_events() {
        m.apply(0, &e);
    }
    let check = m.last_census_check().expect("census checked");
    assert!(check.mismatches > 0 && !check.resynced);
}
