//! Threads: frees from other threads, blocks that outlive the thread that made them, threads
//! created and destroyed in rounds, and what `stats()` says about threads and abandoned pages.
//! Every block holds a pattern that is checked in full before it is freed.
//!
//! The tests run one at a time (the `SERIAL` lock) because `stats()` is global: a test that reads
//! it must not see another test's threads come and go.
#![allow(unsafe_code)] // tests call the raw allocator API

mod common;

use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Barrier, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use common::{Rng, Tagged};
use heaplens_alloc::stats;

#[global_allocator]
static A: heaplens_alloc::HeapLens = heaplens_alloc::HeapLens;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Producers allocate, consumers on other threads check and free every block (in a shuffled
/// order, with up to 1000 blocks held), so every free of a raw block is cross-thread; the
/// batches' `Vec`s (global allocator) are freed cross-thread too.
#[test]
fn frees_from_other_threads() {
    let _serial = serial();
    const PAIRS: u64 = 3;
    const BATCHES: usize = 400;
    const BATCH: usize = 100;
    let mut consumers = Vec::new();
    let mut producers = Vec::new();
    for pair in 0..PAIRS {
        let (tx, rx) = sync_channel::<Vec<Tagged>>(8);
        producers.push(thread::spawn(move || {
            let mut rng = Rng::new(pair);
            let mut tag = pair << 48;
            for _ in 0..BATCHES {
                let batch: Vec<Tagged> = (0..BATCH)
                    .map(|_| {
                        tag += 1;
                        Tagged::new(rng.mixed_size(), tag)
                    })
                    .collect();
                tx.send(batch).expect("consumer alive");
            }
        }));
        consumers.push(thread::spawn(move || {
            let mut rng = Rng::new(pair + 100);
            let mut held: Vec<Tagged> = Vec::new();
            let mut freed = 0usize;
            for batch in rx {
                for b in batch {
                    held.push(b);
                    if held.len() > 1000 {
                        held.swap_remove(rng.below(held.len())).free();
                        freed += 1;
                    }
                }
            }
            freed += held.len();
            held.into_iter().for_each(Tagged::free);
            freed
        }));
    }
    for p in producers {
        p.join().expect("producer panicked");
    }
    let freed: usize = consumers
        .into_iter()
        .map(|c| c.join().expect("consumer panicked"))
        .sum();
    assert_eq!(freed, PAIRS as usize * BATCHES * BATCH);
}

/// Rounds of short-lived threads: each thread frees about half of the blocks a thread of the
/// previous round left (that thread has exited, so its pages are abandoned), keeps the rest, and
/// makes new blocks for the next round. Some blocks survive several owners' exits.
#[test]
fn blocks_outlive_their_threads_in_rounds() {
    let _serial = serial();
    const ROUNDS: u64 = 12;
    const THREADS: u64 = 4;
    const NEW_PER_THREAD: u64 = 3000;
    let mut carried: Vec<Vec<Tagged>> = vec![Vec::new(); THREADS as usize];
    for round in 0..ROUNDS {
        let handles: Vec<_> = carried
            .into_iter()
            .zip(0..)
            .map(|(inherited, t)| {
                thread::spawn(move || {
                    let mut rng = Rng::new(round * THREADS + t);
                    let mut kept = Vec::with_capacity(inherited.len() + NEW_PER_THREAD as usize);
                    for b in inherited {
                        if rng.percent(50) {
                            b.free();
                        } else {
                            b.check();
                            kept.push(b);
                        }
                    }
                    for i in 0..NEW_PER_THREAD {
                        let size = rng.mixed_size();
                        let tag = (round << 40) | (t << 32) | i;
                        kept.push(if rng.percent(5) {
                            Tagged::new_aligned(size, 1 << rng.range(5, 16), tag)
                        } else {
                            Tagged::new(size, tag)
                        });
                    }
                    kept
                })
            })
            .collect();
        let mut next: Vec<Vec<Tagged>> = handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect();
        next.rotate_left(1); // each thread's blocks go to a different thread next round
        carried = next;
    }
    for b in carried.into_iter().flatten() {
        b.free();
    }
}

/// `stats().threads` counts the threads with a heap: it rises while threads live and falls when
/// they exit. Slack of 2 covers the test harness starting or ending a thread meanwhile.
#[test]
fn thread_count_follows_live_threads() {
    let _serial = serial();
    const K: usize = 8;
    let base = stats().threads;
    let started = Arc::new(Barrier::new(K + 1));
    let release = Arc::new(Barrier::new(K + 1));
    let handles: Vec<_> = (0..K)
        .map(|i| {
            let (started, release) = (Arc::clone(&started), Arc::clone(&release));
            thread::spawn(move || {
                let b = Tagged::new(64 + i, i as u64); // makes this thread's heap
                started.wait();
                release.wait();
                b.free();
            })
        })
        .collect();
    started.wait();
    let during = stats().threads;
    release.wait();
    for h in handles {
        h.join().expect("thread panicked");
    }
    let after = stats().threads;
    assert!(
        during + 2 >= base + K,
        "threads: {base} before, {during} with {K} more threads alive"
    );
    assert!(
        after + K <= during + 2,
        "threads: {during} with {K} threads alive, {after} after they exited"
    );
}

/// Block sizes of the abandoned-pages test: small and medium classes.
const CLASS_SIZES: [usize; 8] = [16, 48, 112, 400, 1000, 3000, 9000, 30_000];

/// Allocates `bytes` in blocks of the sizes above, then frees them: allocation activity that
/// needs new pages (and so segments), which is where heaplens reclaims abandoned segments.
fn churn(bytes: usize, tag: u64) {
    let per_class = bytes / CLASS_SIZES.iter().sum::<usize>();
    let blocks: Vec<Tagged> = (0..per_class)
        .flat_map(|i| CLASS_SIZES.map(|s| Tagged::new(s, tag + i as u64)))
        .collect();
    blocks.into_iter().for_each(Tagged::free);
}

/// A thread fills pages of several size classes and exits holding ~22 MiB of blocks: its pages
/// are abandoned (visible in `stats()`) and still count as used. This thread then frees the
/// blocks (cross-thread frees into abandoned pages): the used bytes drop at once. Allocation
/// activity then reclaims the abandoned segments; the test waits for that with a bounded number
/// of rounds of activity (not a time limit).
#[test]
fn abandoned_pages_are_counted_then_reclaimed() {
    let _serial = serial();
    const PER_CLASS: usize = 500;
    let before = stats();
    let blocks: Vec<Tagged> = thread::spawn(|| {
        (0..PER_CLASS)
            .flat_map(|i| CLASS_SIZES.map(|s| Tagged::new(s, (s * 1_000_000 + i) as u64)))
            .collect()
    })
    .join()
    .expect("thread panicked");
    let held: usize = blocks.iter().map(|b| b.size).sum();
    let abandoned = stats();
    // ~140 pages hold the blocks: 1 + 1 + 1 + 4 + 8 + 24 + 72 small pages and ~30 medium ones.
    assert!(
        abandoned.abandoned_pages >= before.abandoned_pages + 100,
        "the exited thread's pages are not counted as abandoned: {} before, {} after",
        before.abandoned_pages,
        abandoned.abandoned_pages
    );
    assert!(
        abandoned.abandoned_segments > before.abandoned_segments,
        "no abandoned segment: {} before, {} after",
        before.abandoned_segments,
        abandoned.abandoned_segments
    );
    assert!(
        abandoned.used_bytes >= before.used_bytes + held,
        "blocks in abandoned pages must count as used: {} before, {} after, {held} held",
        before.used_bytes,
        abandoned.used_bytes
    );
    blocks.into_iter().for_each(Tagged::free);
    let freed = stats();
    assert!(
        freed.used_bytes + held <= abandoned.used_bytes,
        "freeing {held} bytes from abandoned pages: used went from {} to {}",
        abandoned.used_bytes,
        freed.used_bytes
    );
    let mut rounds = 0;
    loop {
        let s = stats();
        if s.abandoned_pages <= before.abandoned_pages
            && s.abandoned_segments <= before.abandoned_segments
        {
            break;
        }
        rounds += 1;
        assert!(
            rounds <= 40,
            "abandoned pages never reclaimed after {rounds} rounds of allocation: {} pages in {} segments \
             still abandoned ({} / {} before)",
            s.abandoned_pages,
            s.abandoned_segments,
            before.abandoned_pages,
            before.abandoned_segments
        );
        churn(24 << 20, rounds << 32);
        thread::sleep(Duration::from_millis(5));
    }
}

/// Per-bin statistics follow the blocks of this thread: 2000 blocks of 48 bytes show up in the
/// 48-byte bin and leave it when freed (slack of 100 blocks for the test harness's threads).
#[test]
fn bin_stats_count_live_blocks() {
    let _serial = serial();
    const N: usize = 2000;
    let used_48 = || -> (usize, usize) {
        let s = stats();
        let b = s
            .bins
            .iter()
            .find(|b| b.block_size == 48)
            .expect("a 48-byte bin");
        (b.blocks_used, b.blocks_capacity)
    };
    let (used0, _) = used_48();
    let blocks: Vec<Tagged> = (0..N).map(|i| Tagged::new(48, i as u64)).collect();
    let (used1, cap1) = used_48();
    assert!(
        used1 + 100 >= used0 + N,
        "48-byte bin: {used0} used before, {used1} after allocating {N}"
    );
    assert!(cap1 >= used1, "48-byte bin: capacity {cap1} < used {used1}");
    blocks.into_iter().for_each(Tagged::free);
    let (used2, _) = used_48();
    assert!(
        used2 + N <= used1 + 100,
        "48-byte bin: {used1} used, {used2} after freeing {N}"
    );
}

/// A thread that exits holding a block on one page and an empty (retired) page of a larger size
/// class in the same segment must leave that segment abandoned, so that another thread can
/// reclaim it. Found by the larson benchmark (SIGSEGV): thread exit abandoned the page with the
/// live block first (segment: 1 abandoned of 2 used, not yet abandoned), then freed the empty
/// page (segment: 1 of 1), and the segment was never marked abandoned. It kept the dead
/// thread's id, which glibc gives to the next thread (same reused stack and TCB); that thread's
/// free of the block took the local fast path into a page with no heap.
#[test]
fn exit_with_an_empty_page_still_abandons_the_segment() {
    let _serial = serial();
    let owner = |b: &Tagged| {
        // SAFETY: `b` is live, so its segment is mapped.
        unsafe { (*heaplens_alloc::segment::segment_of(b.ptr as *const u8)).thread_id() }
    };
    let (block, dead) = thread::spawn(move || {
        let live = Tagged::new(48, 1);
        Tagged::new(1000, 2).free(); // the 1000-byte page is empty now, retired in its queue
        let me = owner(&live);
        (live, me)
    })
    .join()
    .expect("thread panicked");
    // Abandoned (owner 0), or already reclaimed by a live thread (the test harness's threads
    // allocate meanwhile): either way no longer the dead thread's.
    let now = owner(&block);
    assert_ne!(
        now & !1,
        dead & !1,
        "the exited thread's segment still belongs to it (abandoned segments now: {})",
        stats().abandoned_segments
    );
    // a new thread (likely with the exited thread's id) frees the block
    thread::spawn(move || block.free())
        .join()
        .expect("free from a new thread");
}
