//! The registry of live segments: a bitmap answering "is this address a heaplens segment?"
//! (checked mode) and a list an observer walks under a lock (statistics, census).

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::SEGMENT_SHIFT;
use crate::segment::Segment;
use crate::sync::SpinLock;

/// Segments below 2^47 (the user address space of 4-level paging) are mapped.
const MAP_BITS: usize = 1 << (47 - SEGMENT_SHIFT);
static MAP: [AtomicU64; MAP_BITS / 64] = [const { AtomicU64::new(0) }; MAP_BITS / 64];

/// Head of the list of live segments (linked through `all_next`/`all_prev`).
static LIST: SpinLock<usize> = SpinLock::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn bit(s: *const Segment) -> Option<(usize, u64)> {
    let idx = s as usize >> SEGMENT_SHIFT;
    (idx < MAP_BITS).then(|| (idx / 64, 1u64 << (idx % 64)))
}

/// Publishes a fully initialised segment.
///
/// # Safety
/// `s` is an initialised segment not yet registered.
pub(crate) unsafe fn register(s: *mut Segment) {
    let mut head = LIST.lock();
    // SAFETY: we hold the list lock; `s` is ours.
    unsafe {
        (*s).all_prev = core::ptr::null_mut();
        (*s).all_next = *head as *mut Segment;
        if *head != 0 {
            (*(*head as *mut Segment)).all_prev = s;
        }
    }
    *head = s as usize;
    if let Some((w, b)) = bit(s) {
        MAP[w].fetch_or(b, Relaxed);
    }
    COUNT.fetch_add(1, Relaxed);
}

/// Withdraws a segment before it is freed or cached.
///
/// # Safety
/// `s` is registered.
pub(crate) unsafe fn unregister(s: *mut Segment) {
    let mut head = LIST.lock();
    // SAFETY: we hold the list lock; `s` and its neighbours are registered.
    unsafe {
        let (prev, next) = ((*s).all_prev, (*s).all_next);
        if prev.is_null() {
            *head = next as usize;
        } else {
            (*prev).all_next = next;
        }
        if !next.is_null() {
            (*next).all_prev = prev;
        }
    }
    if let Some((w, b)) = bit(s) {
        MAP[w].fetch_and(!b, Relaxed);
    }
    COUNT.fetch_sub(1, Relaxed);
}

/// Whether `s` is a live heaplens segment.
pub fn contains(s: *const Segment) -> bool {
    bit(s).is_some_and(|(w, b)| MAP[w].load(Relaxed) & b != 0)
}

/// Number of live segments.
pub fn count() -> usize {
    COUNT.load(Relaxed)
}

/// Calls `f` on every live segment, holding the registry lock so none is freed meanwhile.
/// `f` must not allocate from heaplens (a new segment would wait for this lock).
pub fn for_each(mut f: impl FnMut(&Segment)) {
    let head = LIST.lock();
    let mut s = *head as *const Segment;
    while !s.is_null() {
        // SAFETY: registered segments stay mapped while we hold the lock; their headers were
        // initialised before registration (the lock orders it), and the fields another thread
        // changes are atomics.
        unsafe {
            f(&*s);
            s = (*s).all_next;
        }
    }
}

pub(crate) fn fork_lock(acquire: bool) {
    if acquire {
        LIST.acquire();
    } else {
        LIST.force_unlock();
    }
}
