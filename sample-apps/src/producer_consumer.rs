//! Producer-consumer: messages allocated by one thread and freed by another.

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use crate::Params;
use crate::util::{Rng, check, join_all, make, spawn};

pub(crate) const STORY: &str = "Producer threads allocate messages of 16 B to 4 KiB and send \
them over channels to consumer threads, which check and free them, so every free is a \
cross-thread free. The owner's local_free list stays empty; instead each freed block is pushed \
onto the thread_free list of the producer's page (atomically, since two threads touch it). \
Between rounds the producers sit idle, so in the free-list panel the thread_free share of their \
pages stays high and the pages cannot be reused or retired, although nothing in them is live. \
When the next round starts, each producer collects its thread_free lists (thread_free to \
local_free to free) and reuses the same pages: watch thread_free drop to zero page by page.";

enum Msg {
    Data(u64, Box<[u8]>),
    EndOfRound,
}

struct Shape {
    producers: usize,
    consumers: usize,
    rounds: usize,
    messages: usize,
}

pub(crate) fn run(p: &Params) {
    let shape = if p.short {
        Shape {
            producers: 2,
            consumers: 2,
            rounds: 3,
            messages: 4_000,
        }
    } else {
        Shape {
            producers: 2,
            consumers: 2,
            rounds: 8,
            messages: 40_000,
        }
    };
    let freed = AtomicUsize::new(0);
    // Main, producers and consumers meet at the start and at the end of every round.
    let barrier = Barrier::new(shape.producers + shape.consumers + 1);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shape.consumers)
        .map(|_| sync_channel::<Msg>(256))
        .unzip();
    thread::scope(|s| {
        let mut threads = Vec::new();
        for (c, rx) in receivers.into_iter().enumerate() {
            let (barrier, freed, shape) = (&barrier, &freed, &shape);
            threads.push(spawn(s, format!("consumer-{}", c + 1), move || {
                consumer(&rx, shape, barrier, freed);
            }));
        }
        for id in 0..shape.producers {
            let out = senders.clone();
            let (barrier, shape) = (&barrier, &shape);
            threads.push(spawn(s, format!("producer-{}", id + 1), move || {
                producer(id, &out, shape, barrier, p);
            }));
        }
        drop(senders);
        for round in 1..=shape.rounds {
            p.mark(&format!("round {round}: produce and send"));
            barrier.wait();
            barrier.wait();
            let n = freed.load(Relaxed);
            assert_eq!(n, round * shape.producers * shape.messages, "messages lost");
            p.mark(&format!("round {round}: {n} freed cross-thread"));
            p.pause(2.0);
        }
        join_all(threads);
    });
    p.mark("phase: done");
}

fn producer(id: usize, out: &[SyncSender<Msg>], shape: &Shape, barrier: &Barrier, p: &Params) {
    let mut rng = Rng::new(0xC0FF_EE00 + id as u64);
    let every = shape.messages / 20;
    for round in 0..shape.rounds {
        barrier.wait();
        for j in 0..shape.messages {
            let tag = ((id as u64) << 48) | ((round as u64) << 32) | j as u64;
            let size = rng.log_size(16, 4096);
            out[(j + id) % out.len()]
                .send(Msg::Data(tag, make(size, tag)))
                .expect("consumer alive");
            if j % every == every - 1 {
                p.pause(1.0 / 20.0);
            }
        }
        for tx in out {
            tx.send(Msg::EndOfRound).expect("consumer alive");
        }
        barrier.wait();
    }
}

fn consumer(rx: &Receiver<Msg>, shape: &Shape, barrier: &Barrier, freed: &AtomicUsize) {
    for _ in 0..shape.rounds {
        barrier.wait();
        let mut ends = 0;
        while ends < shape.producers {
            match rx.recv().expect("producers alive") {
                Msg::Data(tag, b) => {
                    check(&b, tag);
                    drop(b);
                    freed.fetch_add(1, Relaxed);
                }
                Msg::EndOfRound => ends += 1,
            }
        }
        barrier.wait();
    }
}
