//! The model's state after all events of a quiet interval does not depend on how events of
//! different threads within one tick were interleaved.

mod common;

use common::{assert_agrees, canon, model_of, simulate};
use heaplens_viewer::model::synth::{SynthConfig, shuffle_within_ticks};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn final_state_does_not_depend_on_cross_thread_order_within_a_tick(
        seed in any::<u64>(),
        shuffle_seed in any::<u64>(),
        threads in 2usize..7,
        cross in 0u32..80,
        late in 0u32..90,
        churn in 0u32..30_000,
        ops_per_tick in 5u64..200,
        ops in 300usize..4000,
        few_sizes in any::<bool>(),
    ) {
        let cfg = SynthConfig {
            seed,
            threads,
            live_per_thread: 50,
            cross_thread_percent: cross,
            late_free_percent: late,
            churn_per_million: churn,
            ops_per_tick,
            medium_percent: 8,
            large_per_mille: 10,
            sizes: if few_sizes { vec![40, 2000, 7000] } else { Vec::new() },
            ..SynthConfig::default()
        };
        let (s, events, census) = simulate(cfg, ops);
        let shuffled = shuffle_within_ticks(&events, shuffle_seed);
        prop_assert_eq!(shuffled.len(), events.len());
        let a = model_of(&events);
        let b = model_of(&shuffled);
        assert_agrees(&a, &s, &census);
        assert_agrees(&b, &s, &census);
        let (ca, cb) = (canon(&a), canon(&b));
        prop_assert!(ca == cb, "{}", common::first_difference(&ca, &cb));
    }
}

#[test]
fn the_shuffle_keeps_each_threads_order_and_mixes_threads() {
    let (_, events, _) = simulate(SynthConfig::default(), 5_000);
    let shuffled = shuffle_within_ticks(&events, 99);
    for heap in 0..8u32 {
        let a: Vec<_> = events.iter().filter(|(h, _)| *h == heap).collect();
        let b: Vec<_> = shuffled.iter().filter(|(h, _)| *h == heap).collect();
        assert_eq!(a, b, "heap {heap}'s own order");
    }
    assert!(shuffled.windows(2).all(|w| w[0].1.time <= w[1].1.time));
    let moved = events.iter().zip(&shuffled).filter(|(x, y)| x != y).count();
    assert!(moved > events.len() / 4, "only {moved} events moved");
}
