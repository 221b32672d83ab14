//! Events from an untrusted trace: whatever they say, the model neither panics nor allocates
//! memory in proportion to a number an event carries.

use heaplens_alloc::event::Event;
use heaplens_viewer::model::Model;
use heaplens_viewer::model::synth::{Rng, Synth, SynthConfig};
use proptest::prelude::*;

fn nasty(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 => 0,
        1 => u64::MAX - rng.below(4),
        2 => 1 << rng.below(64),
        3 => 0x7f00_0000_0000 + rng.below(64 << 20),
        4 => rng.below(4096),
        _ => rng.next_u64(),
    }
}

fn garbage(seed: u64, n: usize) -> Vec<(u32, Event)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let kind = match rng.below(3) {
                0 => rng.below(256) as u8,
                _ => [
                    1, 2, 3, 4, 10, 11, 12, 13, 14, 16, 17, 20, 21, 22, 23, 30, 31, 32, 40, 41, 50,
                    60, 61, 62, 63, 64,
                ][rng.below(26) as usize],
            };
            let ev = Event {
                kind,
                flags: rng.next_u64() as u8,
                aux: nasty(&mut rng) as u16,
                arg32: nasty(&mut rng) as u32,
                addr: nasty(&mut rng),
                arg: nasty(&mut rng),
                time: nasty(&mut rng),
            };
            (rng.below(5) as u32, ev)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn garbage_events_do_not_panic(seed in any::<u64>()) {
        let mut m = Model::new();
        m.set_invariant_checks(false); // garbage owes nothing to the invariants
        for (h, e) in garbage(seed, 3000) {
            m.apply(h, &e);
        }
        m.finish();
        let _ = m.current();
        let _ = m.bins(None);
        let _ = m.live_blocks().count();
        let _ = m.totals();
        if let Some(c) = m.last_census().cloned() {
            let _ = m.compare(&c);
            m.resync(&c);
        }
    }

    #[test]
    fn garbage_mixed_into_a_real_stream_does_not_panic(seed in any::<u64>()) {
        let mut s = Synth::new(SynthConfig { seed, ..SynthConfig::default() });
        s.run(3000);
        let mut events = s.take_events();
        let mut rng = Rng::new(seed ^ 1);
        for e in garbage(seed, 300) {
            let at = rng.below(events.len() as u64) as usize;
            events.insert(at, e);
        }
        // and damage some real events
        for _ in 0..100 {
            let i = rng.below(events.len() as u64) as usize;
            let e = &mut events[i].1;
            match rng.below(4) {
                0 => e.addr ^= 1 << rng.below(48),
                1 => e.arg = nasty(&mut rng),
                2 => e.arg32 = nasty(&mut rng) as u32,
                _ => e.flags = rng.next_u64() as u8,
            }
        }
        let mut m = Model::new();
        m.set_invariant_checks(false); // garbage owes nothing to the invariants
        for (h, e) in &events {
            m.apply(*h, e);
        }
        s.quiesce();
        let c = s.census();
        let _ = m.compare(&c);
        m.resync(&c);
        prop_assert!(m.compare(&c).is_empty());
    }
}
