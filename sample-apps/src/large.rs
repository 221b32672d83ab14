//! Large and huge blocks in waves: whole segments allocated, freed, cached and given back.

use std::time::Duration;

use crate::Params;
use crate::util::{Rng, check, make};

pub(crate) const STORY: &str = "Waves of large blocks (256 KiB to 1.5 MiB, on large pages: each \
block a page of its own, a span of 64 KiB slots in a large segment, so blocks of every size share \
the segment and a freed span serves the next block of any size) and huge blocks (8 to 40 MiB, \
each in a segment of its own sized to fit it) are allocated, written through, and freed again. \
Watch the segment map: a large segment fills with spans with every wave, huge segments appear, \
and both empty when the wave is freed. Freed segments wait a moment in a small cache in case the \
next wave wants them, then their memory goes back to the OS: the committed-bytes plot rises and \
falls in steps with every wave, while the small-block pages stay where they were.";

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

pub(crate) fn run(p: &Params) {
    let (waves, large, huge, huge_max, idle) = if p.short {
        (2, 4, 2, 12 * MIB, Duration::from_millis(20))
    } else {
        (6, 6, 2, 40 * MIB, Duration::from_millis(150))
    };
    let mut rng = Rng::new(0x1A26E);
    for wave in 1..=waves {
        p.mark(&format!("wave {wave}: {large} large blocks"));
        let tag = |w: usize, k: usize| ((w as u64) << 32) | k as u64;
        let larges: Vec<Box<[u8]>> = (0..large)
            .map(|k| {
                let b = make(rng.range(256 * KIB, 3 * MIB / 2), tag(wave, k));
                p.pause(0.2);
                b
            })
            .collect();
        p.pause(1.0);

        p.mark(&format!("wave {wave}: {huge} huge blocks"));
        let huges: Vec<Box<[u8]>> = (0..huge)
            .map(|k| {
                let b = make(rng.range(8 * MIB, huge_max), tag(wave, 100 + k));
                p.pause(0.5);
                b
            })
            .collect();
        p.pause(1.0);

        p.mark(&format!("wave {wave}: free the large blocks"));
        for (k, b) in larges.into_iter().enumerate() {
            check(&b, tag(wave, k));
        }
        p.settle(idle);

        p.mark(&format!("wave {wave}: free the huge blocks"));
        for (k, b) in huges.into_iter().enumerate() {
            check(&b, tag(wave, 100 + k));
        }
        p.settle(idle);
    }
    // Cached segments are unmapped ~10 purge delays after they arrive.
    p.settle(Duration::from_millis(120));
    p.mark("phase: done, segments back to the OS");
    p.pause(1.0);
}
