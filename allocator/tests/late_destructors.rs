//! Allocations after a thread's heap went at its exit: a destructor of another pthread key
//! allocates in a later round of key destructors, the last one included. The heap such an
//! allocation makes must end at once: nothing runs the allocator's destructor after the C
//! library's last round.
#![allow(unsafe_code)] // pthread keys through libc

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

#[global_allocator]
static A: heaplens_alloc::HeapLens = heaplens_alloc::HeapLens;

/// Rounds of key destructors the C library runs at most (glibc: `PTHREAD_DESTRUCTOR_ITERATIONS`).
const ROUNDS: usize = 4;

static KEY: AtomicUsize = AtomicUsize::new(0);
/// The round in which the destructor allocates (1-based), and the rounds it has run.
static ALLOCATE_IN: AtomicUsize = AtomicUsize::new(0);
static RAN: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn destructor(_value: *mut libc::c_void) {
    let round = RAN.fetch_add(1, SeqCst) + 1;
    if round == ALLOCATE_IN.load(SeqCst) {
        // One block kept (as a C library's cleanup may keep one), one freed.
        let kept = Box::leak(Box::new([round as u8; 200]));
        std::hint::black_box(kept);
        drop(std::hint::black_box(vec![0u8; 5000]));
        ALLOCATED.fetch_add(1, SeqCst);
    }
    if round < ROUNDS {
        // Re-armed: the next round calls it again.
        // SAFETY: the key was created; a non-null value.
        unsafe {
            libc::pthread_setspecific(
                KEY.load(SeqCst) as libc::pthread_key_t,
                std::ptr::dangling::<libc::c_void>(),
            )
        };
    }
}

#[test]
fn a_heap_made_in_any_round_of_key_destructors_ends_with_the_thread() {
    let mut key: libc::pthread_key_t = 0;
    assert_eq!(
        // SAFETY: a valid out-parameter and an extern "C" destructor that does not unwind.
        unsafe { libc::pthread_key_create(&raw mut key, Some(destructor)) },
        0
    );
    KEY.store(key as usize, SeqCst);
    // Make this thread's heap first, so the count below is of other threads.
    drop(std::hint::black_box(vec![1u8; 64]));
    let before = heaplens_alloc::stats::stats().threads;
    for round in 1..=ROUNDS {
        RAN.store(0, SeqCst);
        ALLOCATE_IN.store(round, SeqCst);
        std::thread::spawn(|| {
            drop(std::hint::black_box(vec![2u8; 100]));
            // SAFETY: the key was created; a non-null value arms its destructor.
            unsafe {
                libc::pthread_setspecific(
                    KEY.load(SeqCst) as libc::pthread_key_t,
                    std::ptr::dangling::<libc::c_void>(),
                )
            };
        })
        .join()
        .unwrap();
        assert_eq!(
            RAN.load(SeqCst),
            ROUNDS,
            "the destructor ran in every round"
        );
        assert_eq!(
            ALLOCATED.load(SeqCst),
            round,
            "it allocated in round {round}"
        );
        // The thread is gone once joined; its heaps with it.
        assert_eq!(
            heaplens_alloc::stats::stats().threads,
            before,
            "a heap made in round {round} of the key destructors outlived its thread"
        );
    }
}
