//! Server: a larson-like simulation. Workers replace blocks in shared slots, so a block is freed
//! by whichever thread next picks its slot, after a random lifetime; generations of workers come
//! and go.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::thread;

use crate::Params;
use crate::util::{Rng, check, join_all, make, spawn};

pub(crate) const STORY: &str = "A larson-like server: worker threads serve requests, each of \
which frees the block in a random shared slot and puts a new one of a random size (16 B to \
8 KiB) there, plus a few short-lived buffers of its own. A block lives until some thread picks \
its slot again, so lifetimes are random and a block is often freed by another thread than the \
one that allocated it. Workers retire in generations and new ones take over their slots, so \
abandoned segments are reclaimed all the time. Watch the overview plots settle into a steady \
state, the heaps panel turn over, and the free-list panel show local_free and thread_free both \
busy on the same pages.";

type Slot = Mutex<Option<(u64, Box<[u8]>)>>;

struct Shape {
    generations: usize,
    workers: usize,
    requests: usize,
    slots: usize,
}

pub(crate) fn run(p: &Params) {
    let shape = if p.short {
        Shape {
            generations: 3,
            workers: 2,
            requests: 20_000,
            slots: 1_024,
        }
    } else {
        Shape {
            generations: 8,
            workers: 4,
            requests: 100_000,
            slots: 4_096,
        }
    };
    let slots: Vec<Slot> = (0..shape.slots).map(|_| Mutex::new(None)).collect();
    let served = AtomicUsize::new(0);
    let mut next_id = 1;
    for generation in 1..=shape.generations {
        p.mark(&format!(
            "generation {generation}: workers {next_id}-{}",
            next_id + shape.workers - 1
        ));
        thread::scope(|s| {
            let workers = (next_id..next_id + shape.workers)
                .map(|id| {
                    let (slots, served, shape) = (&slots, &served, &shape);
                    spawn(s, format!("worker-{id}"), move || {
                        worker(id, slots, shape, served, p);
                    })
                })
                .collect();
            join_all(workers);
        });
        next_id += shape.workers;
        let n = served.load(Relaxed);
        assert_eq!(n, generation * shape.workers * shape.requests);
        p.mark(&format!("generation {generation} exited: {n} requests"));
        p.pause(1.0);
    }
    p.mark("phase: drain the slots");
    let mut live = 0;
    for slot in slots {
        if let Some((tag, b)) = slot.into_inner().expect("slot") {
            check(&b, tag);
            live += 1;
        }
    }
    assert!(live > 0);
    p.settle(std::time::Duration::from_millis(150));
    p.mark("phase: done");
    p.pause(1.0);
}

fn worker(id: usize, slots: &[Slot], shape: &Shape, served: &AtomicUsize, p: &Params) {
    let mut rng = Rng::new(0x5E7E_0000 + id as u64);
    let every = shape.requests / 20;
    for r in 0..shape.requests {
        let tag = ((id as u64) << 32) | r as u64;
        // Request-local scratch buffers: allocated and freed by this thread.
        let scratch: Vec<Box<[u8]>> = (0..rng.below(3))
            .map(|k| make(rng.log_size(16, 2048), tag ^ k as u64))
            .collect();
        let fresh = make(rng.log_size(16, 8192), tag);
        let k = rng.below(slots.len());
        let old = slots[k].lock().expect("slot").replace((tag, fresh));
        // Freed outside the lock, like a server would.
        if let Some((t, b)) = old {
            check(&b, t);
        }
        for (k, b) in scratch.iter().enumerate() {
            check(b, tag ^ k as u64);
        }
        if r % every == every - 1 {
            p.pause(1.0 / 20.0);
        }
    }
    served.fetch_add(shape.requests, Relaxed);
}
