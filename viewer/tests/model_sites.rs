//! Allocation sites rebuilt from a simulated allocator's stacks agree with the simulation, and
//! travel through keyframes.

mod common;

use std::collections::BTreeMap;

use common::{assert_agrees, model_of, simulate};
use heaplens_alloc::event::{EventKind, stack_mode};
use heaplens_viewer::model::Model;
use heaplens_viewer::model::synth::SynthConfig;

fn with_stacks(stacks: u16, seed: u64) -> SynthConfig {
    SynthConfig {
        seed,
        threads: 4,
        churn_per_million: 5_000,
        stacks,
        sample_bytes: 16 << 10,
        ..SynthConfig::default()
    }
}

/// Live bytes per site from the model, keyed by the site's pcs (leaf first).
fn model_site_bytes(m: &Model) -> BTreeMap<Vec<u64>, u64> {
    let mut out = BTreeMap::new();
    for (leaf, s) in m.sites().sites() {
        if s.live_bytes > 0.0 {
            let pcs: Vec<u64> = m.sites().stack(leaf).iter().map(|f| f.pc).collect();
            *out.entry(pcs).or_insert(0) += s.live_bytes as u64;
        }
    }
    out
}

#[test]
fn every_site_has_its_exact_live_bytes_with_stacks_all() {
    for seed in [1, 5] {
        let (s, events, census) = simulate(with_stacks(stack_mode::ALL, seed), 40_000);
        let m = model_of(&events);
        // Stacks change nothing else the model knows.
        assert_agrees(&m, &s, &census);
        assert_eq!(m.sites().mode(), stack_mode::ALL);
        let truth = s.site_live_bytes();
        assert!(truth.len() > 10, "{} sites", truth.len());
        assert_eq!(model_site_bytes(&m), truth);
        // Every allocation counted once, and total bytes are the requests'.
        let allocs: Vec<u64> = events
            .iter()
            .filter(|(_, e)| e.kind == EventKind::Alloc as u8)
            .map(|(_, e)| e.arg)
            .collect();
        let sum = |f: fn(&heaplens_viewer::model::SiteStats) -> f64| {
            m.sites().sites().map(|(_, s)| f(s)).sum::<f64>()
        };
        assert_eq!(sum(|s| s.allocs), allocs.len() as f64);
        assert_eq!(sum(|s| s.total_bytes), allocs.iter().sum::<u64>() as f64);
        for (_, st) in m.sites().sites() {
            assert!(st.peak_live_bytes >= st.live_bytes);
            assert!(st.temporary <= st.allocs);
        }
        assert!(sum(|s| s.temporary) > 0.0);
    }
}

#[test]
fn sites_survive_a_keyframe_and_replay_on() {
    let (_, events, _) = simulate(with_stacks(stack_mode::ALL, 3), 30_000);
    let half = events.len() / 2;
    let mut m = model_of(&events[..half]);
    let bytes = m.to_keyframe().unwrap();
    let mut restored = Model::from_keyframe(&bytes).unwrap();
    for (heap, e) in &events[half..] {
        m.apply(*heap, e);
        restored.apply(*heap, e);
    }
    assert_eq!(model_site_bytes(&restored), model_site_bytes(&m));
    assert_eq!(restored.sites().frame_count(), m.sites().frame_count());
    let mut a: Vec<_> = m.sites().sites().map(|(k, v)| (k, *v)).collect();
    let mut b: Vec<_> = restored.sites().sites().map(|(k, v)| (k, *v)).collect();
    a.sort_by_key(|x| x.0);
    b.sort_by_key(|x| x.0);
    assert_eq!(a, b);
}

#[test]
fn sampled_stacks_estimate_the_live_bytes() {
    let (s, events, _) = simulate(with_stacks(stack_mode::SAMPLED, 9), 200_000);
    let m = model_of(&events);
    assert_eq!(m.sites().interval(), 16 << 10);
    let truth: u64 = s.live_blocks().values().sum();
    let estimate: f64 = m.sites().sites().map(|(_, s)| s.live_bytes).sum();
    let sampled = events
        .iter()
        .filter(|(_, e)| e.kind == EventKind::Alloc as u8 && e.arg32 != 0)
        .count();
    let all = events
        .iter()
        .filter(|(_, e)| e.kind == EventKind::Alloc as u8)
        .count();
    assert!(sampled * 4 < all, "{sampled} of {all} sampled");
    let err = (estimate - truth as f64).abs() / truth as f64;
    assert!(err < 0.25, "estimate {estimate:.0}, truth {truth}");
}

/// The events of a recorded scenario, without the stacks and modules it may have been recorded
/// with (the tests give their own).
fn recorded(scenario: &str) -> Vec<(u32, heaplens_alloc::event::Event)> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../assets/traces/{scenario}.hltrace"));
    let mut r = heaplens_viewer::trace::TraceReader::open(&path).unwrap();
    let stacks = [
        EventKind::StackFrame,
        EventKind::StackMode,
        EventKind::Module,
        EventKind::ModuleRange,
        EventKind::ModuleText,
        EventKind::ModuleGone,
    ]
    .map(|k| k as u8);
    r.events()
        .map(Result::unwrap)
        .filter(|(_, e)| !stacks.contains(&e.kind))
        .map(|(heap, mut e)| {
            if e.kind == EventKind::Alloc as u8 {
                e.arg32 = 0;
            }
            (heap, e)
        })
        .collect()
}

/// `events` with stacks added: the allocations whose blocks are live after the first `at`
/// events come from site 2 (pc `0x2002`), every other from site 1 (pc `0x1001`).
fn with_survivor_stacks(
    events: &[(u32, heaplens_alloc::event::Event)],
    at: usize,
) -> Vec<(u32, heaplens_alloc::event::Event)> {
    use heaplens_alloc::event::Event;
    let then = model_of(&events[..at]);
    let live: std::collections::HashSet<u64> = then.live_blocks().map(|b| b.addr).collect();
    let mut last_alloc = std::collections::HashMap::new();
    for (i, (_, e)) in events[..at].iter().enumerate() {
        if e.kind == EventKind::Alloc as u8 {
            last_alloc.insert(e.addr, i);
        }
    }
    let survivors: std::collections::HashSet<usize> = live
        .iter()
        .filter_map(|a| last_alloc.get(a).copied())
        .collect();
    let ev = |kind: EventKind, arg32, addr| Event {
        kind: kind as u8,
        arg32,
        addr,
        aux: if kind == EventKind::StackMode {
            stack_mode::ALL
        } else {
            0
        },
        ..Event::default()
    };
    let mut out = vec![(0, ev(EventKind::StackMode, 0, 0))];
    let mut interned = std::collections::HashSet::new();
    for (i, &(heap, mut e)) in events[..at].iter().enumerate() {
        if e.kind == EventKind::Alloc as u8 {
            let site = if survivors.contains(&i) { 2 } else { 1 };
            // Node ids per heap: 10 * heap + site.
            let id = 10 * heap + site;
            if interned.insert(id) {
                out.push((
                    heap,
                    ev(EventKind::StackFrame, id, 0x1001 * u64::from(site)),
                ));
            }
            e.arg32 = id;
        }
        out.push((heap, e));
    }
    out
}

#[test]
fn insights_name_the_sites_of_survivors_and_of_leaks() {
    use heaplens_viewer::insights::{Kind, insights};
    // The first marker of the fragmentation scenario where its pages are mostly empty.
    let events = recorded("fragmentation");
    let mut m = Model::new();
    let mut at = None;
    for (i, (heap, e)) in events.iter().enumerate() {
        m.apply(*heap, e);
        if e.kind == EventKind::Mark as u8
            && insights(&m, false)
                .iter()
                .any(|x| x.kind == Kind::MostlyEmptyPages)
        {
            at = Some(i + 1);
            break;
        }
    }
    let at = at.expect("the fragmentation scenario pins pages");
    let m = model_of(&with_survivor_stacks(&events, at));
    let found = insights(&m, false);
    let pinned: Vec<_> = found
        .iter()
        .filter(|i| i.kind == Kind::MostlyEmptyPages)
        .collect();
    assert!(!pinned.is_empty(), "{found:?}");
    for i in &pinned {
        assert!(i.text.contains("were allocated at 0x2002"), "{}", i.text);
    }
    let events = recorded("leak");
    let m = model_of(&with_survivor_stacks(&events, events.len()));
    let leaks: Vec<_> = insights(&m, true)
        .into_iter()
        .filter(|i| i.kind == Kind::LeaksAtExit)
        .collect();
    assert_eq!(leaks.len(), 1);
    assert!(
        leaks[0].text.contains("The site leaking most is 0x2002"),
        "{}",
        leaks[0].text
    );
}

/// Keyframes written before sites existed (version 0, in the recorded scenarios' traces) still
/// restore: the model from one, replayed to the end, equals the model replayed from the start.
#[test]
fn version_0_keyframes_of_recorded_traces_still_restore() {
    let mut checked = 0;
    for scenario in ["server", "fragmentation", "thread-churn", "large"] {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../assets/traces/{scenario}.hltrace"));
        let mut r = heaplens_viewer::trace::TraceReader::open(&path).unwrap();
        let Some(k) = r.keyframes().first().copied() else {
            continue;
        };
        let bytes = r.read_keyframe(0).unwrap();
        assert!(!bytes.starts_with(&heaplens_viewer::model::KEYFRAME_MAGIC));
        let mut restored = Model::from_keyframe(&bytes).unwrap();
        let events: Vec<_> = r.events().map(Result::unwrap).collect();
        let full = model_of(&events);
        for (heap, e) in &events[k.event_index as usize..] {
            restored.apply(*heap, e);
        }
        assert_eq!(restored.current(), full.current(), "{scenario}");
        assert!(!restored.sites().is_on());
        checked += 1;
    }
    assert!(checked > 0, "no recorded trace has a keyframe");
}

#[test]
fn sites_tolerate_the_collectors_order() {
    let (s, events, _) = simulate(with_stacks(stack_mode::ALL, 21), 40_000);
    for seed in [1, 2, 3] {
        let shuffled = heaplens_viewer::model::synth::shuffle_within_ticks(&events, seed);
        let m = model_of(&shuffled);
        assert_eq!(model_site_bytes(&m), s.site_live_bytes(), "seed {seed}");
    }
}
