//! Server: a larson-like simulation. Workers replace blocks in shared slots, so a block is freed
//! by whichever thread next picks its slot, after a random lifetime. Each worker serves a number
//! of requests and retires, and a new one takes its place at once, as in larson: the pool never
//! stops serving. At shutdown the last workers free every slot before they exit.

use std::sync::atomic::{
    AtomicBool, AtomicUsize,
    Ordering::{AcqRel, Relaxed, Release},
};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Barrier, Mutex};
use std::thread::{Scope, ScopedJoinHandle};

use crate::Params;
use crate::util::{Rng, check, join_all, make, spawn};

pub(crate) const STORY: &str = "A larson-like server: worker threads serve requests, each of \
which frees the block in a random shared slot and puts a new one of a random size (16 B to \
8 KiB) there, plus a few short-lived buffers of its own. A block lives until some thread picks \
its slot again, so lifetimes are random and a block is often freed by another thread than the \
one that allocated it. Workers retire one at a time and a new one takes over at once, so each \
retired worker's segments are abandoned and then reclaimed while the others keep serving. At \
shutdown the last workers free every slot. Watch the overview plots settle into a steady \
state, the heaps panel turn over, and the free-list panel show local_free and thread_free both \
busy on the same pages.";

type Slot = Mutex<Option<(u64, Box<[u8]>)>>;

struct Shape {
    /// Workers serving at once.
    workers: usize,
    /// Workers that take turns in each worker's place.
    generations: usize,
    /// Requests a worker serves before it retires.
    requests: usize,
    slots: usize,
}

impl Shape {
    /// Requests served by the worker of place `lane` (from 0) in `generation` (from 1). The
    /// first generation's terms are staggered, so workers reach retirement one after another
    /// (and `Pool::handover` makes them retire one at a time).
    fn requests(&self, lane: usize, generation: usize) -> usize {
        if generation == 1 {
            self.requests * (lane + 1) / self.workers
        } else {
            self.requests
        }
    }

    /// Worker ids count from 1, place by place within a generation.
    fn id(&self, lane: usize, generation: usize) -> usize {
        (generation - 1) * self.workers + lane + 1
    }
}

/// What every worker shares.
struct Pool<'a> {
    shape: Shape,
    slots: Vec<Slot>,
    served: AtomicUsize,
    /// A worker has retired and its successor has not yet served [`settled`] requests: the next
    /// retirement waits, so that exited workers' memory never outweighs the working threads'.
    handover: AtomicBool,
    /// The first generation starts serving together, so that no worker fills the slots before
    /// the others have started (on two cores, threads start one after another).
    open: Barrier,
    /// The last generation and the pool meet here when the workers have stopped serving, and
    /// again once the pool has said so; then the workers free the slots, and meet at `drained`
    /// once every slot is free.
    shutdown: Barrier,
    drained: Barrier,
    p: &'a Params<'a>,
}

pub(crate) fn run(p: &Params) {
    let shape = if p.short {
        // Four places, so one worker's retirement leaves most memory with working threads.
        Shape {
            workers: 4,
            generations: 3,
            requests: 10_000,
            slots: 1_024,
        }
    } else {
        Shape {
            workers: 4,
            generations: 8,
            requests: 100_000,
            slots: 4_096,
        }
    };
    let pool = Pool {
        slots: (0..shape.slots).map(|_| Mutex::new(None)).collect(),
        served: AtomicUsize::new(0),
        handover: AtomicBool::new(false),
        open: Barrier::new(shape.workers),
        shutdown: Barrier::new(shape.workers + 1),
        drained: Barrier::new(shape.workers),
        p,
        shape,
    };
    let shape = &pool.shape;
    p.mark(&format!("phase: open with workers 1-{}", shape.workers));
    std::thread::scope(|s| {
        let (retired, retirements) = channel();
        let mut serving: Vec<_> = (0..shape.workers)
            .map(|lane| Some(start(s, &pool, lane, 1, &retired)))
            .collect();
        // Each retirement: wait until the worker's thread is gone (its heap abandoned), then
        // put its successor in its place.
        for _ in 0..shape.workers * (shape.generations - 1) {
            let (lane, generation) = retirements.recv().expect("a worker retires");
            let gone = serving[lane].take().expect("a worker in this place");
            join_all(vec![gone]);
            let next = generation + 1;
            p.mark(&format!(
                "worker-{} exited: worker-{} takes its place",
                shape.id(lane, generation),
                shape.id(lane, next)
            ));
            serving[lane] = Some(start(s, &pool, lane, next, &retired));
        }
        // Marked from this thread: a marker may allocate (a test's recorder does), and whatever
        // a worker allocates and keeps would be left on its segment after it exits.
        pool.shutdown.wait();
        p.mark("phase: shutdown: the last workers free every slot");
        pool.shutdown.wait();
        join_all(serving.into_iter().flatten().collect());
    });
    let expected: usize = (0..shape.workers)
        .flat_map(|lane| (1..=shape.generations).map(move |g| (lane, g)))
        .map(|(lane, g)| shape.requests(lane, g))
        .sum();
    assert_eq!(pool.served.load(Relaxed), expected);
    assert!(pool.slots.iter().all(|s| s.lock().expect("slot").is_none()));
    p.settle(std::time::Duration::from_millis(150));
    p.mark(&format!("phase: done: {expected} requests served"));
    p.pause(1.0);
}

fn start<'scope>(
    s: &'scope Scope<'scope, '_>,
    pool: &'scope Pool<'_>,
    lane: usize,
    generation: usize,
    retired: &Sender<(usize, usize)>,
) -> ScopedJoinHandle<'scope, ()> {
    let name = format!("worker-{}", pool.shape.id(lane, generation));
    // The last generation says nothing when it is done (the pool joins it), so it holds no end
    // of the channel and everything the channel allocated is freed by the pool's own thread.
    let retired = (generation < pool.shape.generations).then(|| retired.clone());
    spawn(s, name, move || {
        serve(pool, lane, generation);
        match retired {
            Some(retired) => {
                // One retirement at a time: wait (still holding this worker's blocks, so none of
                // its memory is abandoned yet) until the last successor has settled in.
                while pool
                    .handover
                    .compare_exchange(false, true, AcqRel, Relaxed)
                    .is_err()
                {
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
                retired.send((lane, generation)).expect("the pool listens");
            }
            None => drain(pool, lane),
        }
    })
}

/// Requests a successor serves before the next worker may retire: by then its frees have
/// reclaimed much of what its predecessor left.
fn settled(shape: &Shape) -> usize {
    shape.requests / 20
}

fn serve(pool: &Pool<'_>, lane: usize, generation: usize) {
    let (shape, slots) = (&pool.shape, &pool.slots);
    if generation == 1 {
        pool.open.wait();
    }
    let id = shape.id(lane, generation);
    let mut rng = Rng::new(0x5E7E_0000 + id as u64);
    let requests = shape.requests(lane, generation);
    let every = shape.requests / 20;
    for r in 0..requests {
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
            pool.p.pause(1.0 / 20.0);
        }
        if generation > 1 && r + 1 == settled(shape) {
            pool.handover.store(false, Release);
        }
    }
    pool.served.fetch_add(requests, Relaxed);
}

/// The last generation: once all have stopped serving, each frees its share of the slots, and
/// none exits before every slot is free, so every heap ends empty and nothing is abandoned.
fn drain(pool: &Pool<'_>, lane: usize) {
    pool.shutdown.wait();
    pool.shutdown.wait();
    for slot in pool.slots.iter().skip(lane).step_by(pool.shape.workers) {
        if let Some((t, b)) = slot.lock().expect("slot").take() {
            check(&b, t);
        }
    }
    pool.drained.wait();
}
