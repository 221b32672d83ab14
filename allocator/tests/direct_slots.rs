//! `malloc`'s fast path does not test the hook: recording empties every heap's direct slots, so
//! the fast path misses and the allocation goes to the path that reports it. Here threads whose
//! slots were warm before recording began (each had a page with free blocks of the size in its
//! slot) find the fast path closed while recording, have every allocation reported, and find it
//! open again after recording ends.
//!
//! The test binary's global allocator is the system's: only the explicit heaplens calls below
//! make heaplens events. One test function: the collector is process-wide.
#![allow(unsafe_code)] // the test calls the raw allocator API

use std::sync::mpsc;

use heaplens_alloc::alloc::malloc_fast;
use heaplens_alloc::collector;

mod common;

const SIZE: usize = 48;
const BLOCKS: usize = 3000;

/// Warms the calling thread's slot for `SIZE`: a page with free blocks in it.
fn warm() -> Vec<usize> {
    // SAFETY: plain allocations, freed by the caller.
    let kept: Vec<usize> = (0..64)
        .map(|_| unsafe { heaplens_alloc::malloc(SIZE) } as usize)
        .collect();
    assert!(
        fast_path_serves(),
        "the fast path serves a warm slot before recording"
    );
    kept
}

/// Whether `malloc_fast` serves `SIZE` after a `malloc` of it (which goes through the generic
/// path, and refills the slots, if the fast path is closed). Three tries: a `malloc` that took
/// its page's last free block leaves the fast path a miss once.
fn fast_path_serves() -> bool {
    (0..3).any(|_| {
        // SAFETY: plain allocations; blocks freed once.
        unsafe {
            let refill = heaplens_alloc::malloc(SIZE);
            let p = malloc_fast(SIZE);
            heaplens_alloc::free(refill);
            if !p.is_null() {
                heaplens_alloc::free(p);
            }
            !p.is_null()
        }
    })
}

/// `BLOCKS` allocations of `SIZE` bytes, kept (the caller frees them).
fn allocate() -> Vec<usize> {
    (0..BLOCKS)
        // SAFETY: plain allocations.
        .map(|_| unsafe { heaplens_alloc::malloc(SIZE) } as usize)
        .collect()
}

fn free_all(blocks: &[usize]) {
    for &p in blocks {
        // SAFETY: each block freed once, never used after.
        unsafe { heaplens_alloc::free(p as *mut u8) };
    }
}

#[test]
fn recording_closes_warm_fast_paths_and_ending_it_opens_them_again() {
    // A worker with warm slots, waiting for its turns.
    let (go_tx, go_rx) = mpsc::channel::<u8>();
    let (done_tx, done_rx) = mpsc::channel::<(bool, Vec<usize>)>();
    let worker = std::thread::spawn(move || {
        let warmed = warm();
        done_tx.send((true, Vec::new())).unwrap();
        // Turn 1, while recording.
        go_rx.recv().unwrap();
        // SAFETY: the fast path alone; a block it returns is freed at once.
        let p = unsafe { malloc_fast(SIZE) };
        let closed = p.is_null();
        if !closed {
            // SAFETY: a live block, freed once.
            unsafe { heaplens_alloc::free(p) };
        }
        done_tx.send((closed, allocate())).unwrap();
        // Turn 2, after recording.
        go_rx.recv().unwrap();
        let open = fast_path_serves();
        free_all(&warmed);
        done_tx.send((open, Vec::new())).unwrap();
    });
    let mine_warm = warm();
    done_rx.recv().unwrap();

    let (allocated, sink) = common::alloc_counter();
    collector::start(common::lossless(4), sink).expect("collector starts");

    // SAFETY: the fast path alone; a block it returns is freed at once.
    let p = unsafe { malloc_fast(SIZE) };
    let mine_closed = p.is_null();
    if !mine_closed {
        // SAFETY: a live block, freed once.
        unsafe { heaplens_alloc::free(p) };
    }
    let mine = allocate();
    go_tx.send(1).unwrap();
    let (theirs_closed, theirs) = done_rx.recv().unwrap();
    collector::shutdown();

    assert!(
        mine_closed,
        "recording closes the starting thread's fast path"
    );
    assert!(theirs_closed, "recording closes another thread's fast path");
    let seen = allocated.lock().unwrap().clone();
    for (who, blocks) in [("this thread", &mine), ("the worker", &theirs)] {
        let reported = blocks
            .iter()
            .filter(|&&p| seen.contains_key(&(p as u64)))
            .count();
        assert_eq!(
            reported, BLOCKS,
            "{who}'s allocations while recording, reported"
        );
    }

    // After recording: an allocation through the generic path refills the slots.
    assert!(
        fast_path_serves(),
        "the fast path serves this thread again after recording"
    );
    go_tx.send(2).unwrap();
    let (theirs_open, _) = done_rx.recv().unwrap();
    assert!(
        theirs_open,
        "the fast path serves the worker again after recording"
    );
    worker.join().unwrap();
    free_all(&mine);
    free_all(&theirs);
    free_all(&mine_warm);
}
