//! Leak: a loop with normal churn that forgets exactly [`LEAKED`] blocks of [`LEAK_SIZE`] bytes.

use std::hint::black_box;

use crate::Params;
use crate::util::{Rng, check, make};

pub(crate) const STORY: &str = "The program runs ten rounds of ordinary work (blocks of many \
sizes allocated, used and freed) and in each round forgets 100 blocks of 200 B: half are \
leaked with Box::leak, half with mem::forget, and nothing points to them afterwards. Watch the \
requested-bytes-live plot: the churn comes and goes, but the line climbs by 20 KB a round and \
never comes down. \
At exit the blocks still live are the leak, exactly 1000 blocks of 200 B in the 224-byte size \
class, plus the few the Rust runtime keeps: the viewer's live blocks and the \
\"live at exit\" line of heaplens stats show them.";

/// Blocks leaked in all.
pub(crate) const LEAKED: usize = 1000;
/// Size of a leaked block.
pub(crate) const LEAK_SIZE: usize = 200;
const ROUNDS: usize = 10;
/// Churn sizes: none in the leak's size class (193..=224 B).
const CHURN_SIZES: [usize; 9] = [24, 48, 100, 128, 160, 300, 512, 1000, 3000];

pub(crate) fn run(p: &Params) {
    let (churn, window) = if p.short {
        (2_000, 256)
    } else {
        (40_000, 4_096)
    };
    let mut rng = Rng::new(0x1EAC);
    p.mark(&format!("phase: churn, leaking {LEAKED} x {LEAK_SIZE} B"));
    let mut leaked = 0;
    for round in 1..=ROUNDS {
        // Churn: a working set of `window` blocks, replaced at random.
        let mut live: Vec<(u64, Box<[u8]>)> = Vec::with_capacity(window);
        for i in 0..churn {
            let tag = ((round as u64) << 32) | i as u64;
            let b = make(CHURN_SIZES[rng.below(CHURN_SIZES.len())], tag);
            if live.len() < window {
                live.push((tag, b));
            } else {
                let k = rng.below(window);
                let (t, old) = std::mem::replace(&mut live[k], (tag, b));
                check(&old, t);
            }
            // The leak: interleaved with the churn.
            if i % (churn / (LEAKED / ROUNDS)) == 0 && leaked < round * LEAKED / ROUNDS {
                let tag = 0x1EA4_0000 + leaked as u64;
                if leaked % 2 == 0 {
                    black_box(Box::leak(make(LEAK_SIZE, tag)));
                } else {
                    let v = make(LEAK_SIZE, tag).into_vec();
                    std::mem::forget(black_box(v));
                }
                leaked += 1;
            }
        }
        for (t, b) in live {
            check(&b, t);
        }
        assert_eq!(leaked, round * LEAKED / ROUNDS);
        p.mark(&format!("round {round}: {leaked} blocks leaked so far"));
        p.pause(2.0);
    }
    assert_eq!(leaked, LEAKED);
    p.mark(&format!("phase: exit with {LEAKED} x {LEAK_SIZE} B leaked"));
    p.pause(1.0);
}
