//! Process and thread initialisation, thread exit, and `fork()`.
//!
//! - Process: options and OS facts read once, a pthread key whose destructor runs at thread
//!   exit, `fork()` handlers, and (with `HEAPLENS_SHOW_STATS=1`) a summary at exit.
//! - Thread: the first `malloc` of a thread finds the empty heap and comes here; the thread's
//!   heap is taken from an OS-backed pool (never from the heap itself).
//! - Thread exit: the pthread key's destructor abandons the heap ([`crate::heap::abandon`]).
//! - `fork()`: every global lock is taken before the fork and released in both processes, so
//!   a child of a multithreaded program can allocate.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering::*};

use crate::heap::{self, EMPTY_HEAP_PTR, Heap};
use crate::schema;
use crate::sync::SpinLock;
use crate::{hook, options, os, segment, segment_map};

static STATE: AtomicU8 = AtomicU8::new(0);
const UNINIT: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;

static KEY: AtomicU32 = AtomicU32::new(0);
static KEY_OK: AtomicBool = AtomicBool::new(false);

/// Initialises the process state once; cheap after the first call. Called by the first
/// allocation of every thread and by the preload library's constructor.
pub fn process_init() {
    if STATE.load(Acquire) == DONE {
        return;
    }
    if STATE
        .compare_exchange(UNINIT, RUNNING, Acquire, Acquire)
        .is_err()
    {
        while STATE.load(Acquire) != DONE {
            // SAFETY: no preconditions.
            unsafe { libc::sched_yield() };
        }
        return;
    }
    os::init();
    options::init();
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-parameter; the destructor is an extern "C" fn that never unwinds.
    if unsafe { libc::pthread_key_create(&raw mut key, Some(thread_done)) } == 0 {
        KEY.store(key, Relaxed);
        KEY_OK.store(true, Release);
    }
    STATE.store(DONE, Release);
    // These may allocate (glibc grows their tables with malloc): the state is DONE, so a nested
    // allocation initialises this thread's heap normally.
    // SAFETY: the handlers are extern "C" fns that never unwind.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
        if options::show_stats() {
            libc::atexit(show_stats_at_exit);
        }
    }
}

extern "C" fn show_stats_at_exit() {
    crate::stats::print_stats(options::stats_fd());
}

static NEXT_HEAP_ID: AtomicU32 = AtomicU32::new(1);

std::thread_local! {
    /// Set once the thread's heap went away at thread exit (later frees come from the C
    /// library's own cleanup).
    static EXITED: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Whether the calling thread is past its exit (its heap was abandoned).
fn thread_exited() -> bool {
    EXITED.with(core::cell::Cell::get)
}

/// After an allocator call that made the calling thread's heap (`heap`, its new heap) and
/// reported what it did (a late free that must still be recorded, or a late allocation): if the
/// thread is past its exit, ends that heap at once, so it never lingers as a live thread. A heap
/// made by a late allocation would otherwise end in the next round of key destructors, and an
/// allocation in the C library's last round (a destructor of another key, which re-arms its own
/// key three times) left a heap that never ended: its segments held by a thread that was gone,
/// its count among the live threads for ever.
///
/// # Safety
/// `heap` is the calling thread's current heap.
#[cold]
pub(crate) unsafe fn end_if_late(heap: *mut Heap) {
    if !thread_exited() || heap.is_null() || heap != heap::default_heap() {
        return;
    }
    if KEY_OK.load(Acquire) {
        // Ended here, the heap needs no later round of key destructors.
        // SAFETY: the key was created; setspecific on a low key does not allocate in glibc.
        unsafe { libc::pthread_setspecific(KEY.load(Relaxed), ptr::null()) };
    }
    thread_done(heap.cast());
}
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Number of threads with a live heap.
pub fn thread_count() -> usize {
    THREADS.load(Relaxed)
}

/// Creates the calling thread's heap (first allocation of the thread). Null when out of memory.
pub(crate) fn thread_init() -> *mut Heap {
    process_init();
    let current = heap::default_heap();
    if current != EMPTY_HEAP_PTR {
        return current; // a nested allocation during process_init made it already
    }
    let heap = pool_alloc();
    if heap.is_null() {
        return heap;
    }
    // SAFETY: `heap` is a fresh, exclusively owned slot of the pool big enough for a Heap; it
    // joins the heap list under the lock.
    unsafe {
        heap.write(Heap::new());
        (*heap).thread_id = heap::thread_id() | usize::from(options::check());
        (*heap).id = NEXT_HEAP_ID.fetch_add(1, Relaxed);
        (*heap).tld.purge_delay.set_owner((*heap).id);
        (*heap).os_tid = libc::gettid();
        (*heap).traced.store(hook::thread_is_traced(), Relaxed);
        let mut heaps = HEAPS.lock();
        (*heap).prev_heap = ptr::null_mut();
        (*heap).next_heap = heaps.list as *mut Heap;
        if heaps.list != 0 {
            (*(heaps.list as *mut Heap)).prev_heap = heap;
        }
        heaps.list = heap as usize;
    }
    THREADS.fetch_add(1, Relaxed);
    heap::set_default_heap(heap);
    if KEY_OK.load(Acquire) {
        // SAFETY: the key was created; setspecific on a low key does not allocate in glibc.
        unsafe { libc::pthread_setspecific(KEY.load(Relaxed), heap.cast()) };
    }
    if hook::enabled() {
        // SAFETY: `heap` is this thread's.
        unsafe {
            hook::emit(heap, hook::thread_start(heap));
            hook::emit_thread_name(heap);
        }
    }
    heap
}

#[cfg_attr(not(feature = "hook"), allow(dead_code))] // the collector's
/// Calls `f` on every live heap, holding the heap list lock (so none goes away meanwhile).
/// `f` must not allocate from heaplens on a thread without a heap.
pub(crate) fn for_each_heap(mut f: impl FnMut(&Heap)) {
    let heaps = HEAPS.lock();
    let mut h = heaps.list as *const Heap;
    while !h.is_null() {
        // SAFETY: listed heaps stay alive while the lock is held; `f` touches only their
        // atomics (reads, or `direct_off`'s stores) and constant fields.
        unsafe {
            f(&*h);
            h = (*h).next_heap;
        }
    }
}

/// The pthread key destructor: the thread is exiting.
extern "C" fn thread_done(value: *mut libc::c_void) {
    let heap = value.cast::<Heap>();
    if heap.is_null() || heap != heap::default_heap() {
        return;
    }
    // Not while the first census of an attach is read (see `hook::hold_exits`).
    let _ending = hook::pass_exit_hold();
    // SAFETY: `heap` is the exiting thread's own heap; after abandoning it the thread falls back
    // to the empty heap (a later allocation makes a new heap and re-arms the key).
    unsafe {
        // Send what the thread recorded while its heap is still whole: a thread's first send can
        // allocate (the channel's per-thread state), and that must not come from a heap being
        // taken apart.
        hook::flush_thread(heap);
        heap::abandon(heap);
        // Nothing may allocate from the abandoned heap: it would take its own segments back
        // from the abandoned list and leave pages pointing at a heap that is about to be freed.
        heap::set_default_heap(EMPTY_HEAP_PTR);
        if hook::enabled() {
            hook::emit_thread_name(heap); // threads are often named after their first allocation
            hook::emit(
                heap,
                schema::ThreadExit {
                    heap: (*heap).id,
                    flags: 0,
                },
            );
        }
        hook::flush_thread(heap);
        {
            let mut heaps = HEAPS.lock();
            let (prev, next) = ((*heap).prev_heap, (*heap).next_heap);
            if prev.is_null() {
                heaps.list = next as usize;
            } else {
                (*prev).next_heap = next;
            }
            if !next.is_null() {
                (*next).prev_heap = prev;
            }
        }
        crate::stacks::thread_done(heap);
        pool_free(heap);
    }
    // If the last flush allocated, the thread has a new heap, which ends in a later round of
    // key destructors; only then is the thread past its exit.
    if heap::default_heap() == EMPTY_HEAP_PTR {
        EXITED.with(|e| e.set(true));
    }
    THREADS.fetch_sub(1, Relaxed);
}

/// Heap structs come from OS memory in chunks and are recycled through a free list; live heaps
/// are linked in `list` (through `next_heap`/`prev_heap`).
struct HeapPool {
    free: usize,
    next: usize,
    end: usize,
    list: usize,
}
static HEAPS: SpinLock<HeapPool> = SpinLock::new(HeapPool {
    free: 0,
    next: 0,
    end: 0,
    list: 0,
});
const POOL_CHUNK: usize = 256 * 1024;

fn pool_alloc() -> *mut Heap {
    let size = core::mem::size_of::<Heap>().next_multiple_of(64);
    let mut pool = HEAPS.lock();
    if pool.free != 0 {
        let h = pool.free as *mut usize;
        // SAFETY: a freed heap slot stores the next free slot in its first word.
        pool.free = unsafe { *h };
        return h.cast();
    }
    if pool.next + size > pool.end {
        let chunk = os::map_internal(POOL_CHUNK);
        if chunk.is_null() {
            return ptr::null_mut();
        }
        pool.next = chunk as usize;
        pool.end = chunk as usize + POOL_CHUNK;
    }
    let h = pool.next;
    pool.next += size;
    h as *mut Heap
}

unsafe fn pool_free(heap: *mut Heap) {
    let mut pool = HEAPS.lock();
    // SAFETY: the heap is dead; its first word becomes the free-list link.
    unsafe { *heap.cast::<usize>() = pool.free };
    pool.free = heap as usize;
}

extern "C" fn fork_prepare() {
    // The module registry first: its holder (the collector) may allocate, taking the locks
    // below, and never takes it while holding them.
    crate::module::fork_lock(true);
    HEAPS.acquire();
    segment_map::fork_lock(true);
    segment::fork_lock(true);
}

extern "C" fn fork_parent() {
    segment::fork_lock(false);
    segment_map::fork_lock(false);
    HEAPS.force_unlock();
    crate::module::fork_lock(false);
}

extern "C" fn fork_child() {
    fork_parent();
    crate::pagemap::after_fork_child();
    // The collector thread does not exist in the child: stop recording there, or a lossless
    // hook would wait forever for room in the channel (and its exit would wait for it).
    hook::set_enabled(false, false);
    #[cfg(feature = "hook")]
    {
        crate::collector::after_fork_child();
        crate::wire::after_fork_child();
        crate::attach::after_fork_child();
    }
}
