//! Thread churn: short-lived threads whose blocks outlive them.

use std::sync::Mutex;
use std::thread;

use crate::Params;
use crate::util::{Rng, check, join_all, make, spawn};

pub(crate) const STORY: &str = "Rounds of short-lived threads each allocate a few thousand \
blocks, free half of them, and hand a quarter to a shared list that outlives them, then exit. \
An exiting thread's heap is gone but its segments still hold those survivors, so they are \
abandoned: in the heaps panel the thread disappears and the segment map shows its segments \
without an owner. Then the main thread frees half of the survivors, and the next round's \
threads free more and allocate: the first free into an abandoned segment, or a thread needing a \
new segment, reclaims it, and its pages join a live heap (watch the owner colour change). \
At the end every survivor is freed and the reclaimed segments empty out and are purged.";

type Survivors = Mutex<Vec<(u64, Box<[u8]>)>>;

pub(crate) fn run(p: &Params) {
    let (rounds, threads, blocks) = if p.short {
        (3, 3, 3_000)
    } else {
        (6, 4, 20_000)
    };
    let survivors: Survivors = Mutex::new(Vec::new());
    // Main's list of the survivors it frees, made before any thread runs: growing it later
    // would take a new page, and main would reclaim an abandoned segment for it right after
    // the threads exit, before the view could show those segments without an owner.
    let mut oldest: Vec<(u64, Box<[u8]>)> = Vec::with_capacity(rounds * threads * blocks / 4);
    for round in 1..=rounds {
        p.mark(&format!("round {round}: {threads} threads start"));
        // Each new thread inherits a share of the survivors of earlier rounds to free.
        let mut inherited: Vec<Vec<_>> = {
            let mut v = survivors.lock().expect("survivors");
            let share = v.len() / (2 * threads);
            (0..threads)
                .map(|_| {
                    let from = v.len() - share;
                    v.drain(from..).collect()
                })
                .collect()
        };
        thread::scope(|s| {
            let churn = (1..=threads)
                .map(|t| {
                    let (survivors, inherited) = (&survivors, inherited.pop().expect("a share"));
                    spawn(s, format!("churn-{round}-{t}"), move || {
                        worker(round, t, blocks, inherited, survivors, p);
                    })
                })
                .collect();
            join_all(churn);
        });
        let live = survivors.lock().expect("survivors").len();
        p.mark(&format!(
            "round {round}: threads exited, {live} blocks left"
        ));
        p.hold();
        p.pause(2.0);

        // The oldest half: their segments belong to exited threads.
        {
            let mut v = survivors.lock().expect("survivors");
            let half = v.len() / 2;
            oldest.extend(v.drain(..half));
        }
        let freed = oldest.len();
        for (tag, b) in oldest.drain(..) {
            check(&b, tag);
        }
        p.mark(&format!("round {round}: main freed {freed} survivors"));
        p.pause(1.0);
    }
    let rest = std::mem::take(&mut *survivors.lock().expect("survivors"));
    p.mark(&format!("phase: free the last {} survivors", rest.len()));
    for (tag, b) in rest {
        check(&b, tag);
    }
    p.settle(std::time::Duration::from_millis(150));
    p.mark("phase: done");
    p.pause(1.0);
}

fn worker(
    round: usize,
    t: usize,
    blocks: usize,
    inherited: Vec<(u64, Box<[u8]>)>,
    survivors: &Survivors,
    p: &Params,
) {
    let mut rng = Rng::new(((round as u64) << 16) | t as u64);
    // Survivors of earlier rounds, allocated by other threads: cross-thread frees into abandoned
    // or reclaimed segments.
    for (tag, b) in inherited {
        check(&b, tag);
    }

    let tag = |i: usize| ((round as u64) << 40) | ((t as u64) << 32) | i as u64;
    let mut mine: Vec<Option<Box<[u8]>>> = (0..blocks)
        .map(|i| Some(make(rng.log_size(32, 2048), tag(i))))
        .collect();
    p.pause(0.5);
    // Free half, scattered (local frees).
    let mut order: Vec<usize> = (0..blocks).filter(|i| i % 2 == 1).collect();
    rng.shuffle(&mut order);
    for i in order {
        let b = mine[i].take().expect("once");
        check(&b, tag(i));
    }
    // Every 4th block outlives the thread.
    {
        let mut v = survivors.lock().expect("survivors");
        for (i, b) in mine.iter_mut().enumerate().step_by(4) {
            v.push((tag(i), b.take().expect("kept")));
        }
    }
    p.pause(0.5);
    // The rest is freed just before the thread exits.
    for (i, b) in mine.into_iter().enumerate() {
        if let Some(b) = b {
            check(&b, tag(i));
        }
    }
}
