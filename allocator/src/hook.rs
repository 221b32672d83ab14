//! The event hook (producer side): the allocator reports what it does as [`Event`]s.
//!
//! - Compiled in with the `hook` feature; then [`enabled`] is one relaxed load that the fast paths
//!   test (a predictable branch). Without the feature it is the constant `false` and every hook
//!   call compiles away.
//! - Each traced thread's heap owns a fixed [`EventBuffer`] (64 KiB, from the OS, never from the
//!   traced heap). Emitting is a store of 32 bytes and a cursor bump; no lock, no allocation.
//! - A full buffer travels whole through a bounded crossbeam channel to the collector
//!   ([`crate::collector`]), which hands it back empty through a second channel for reuse.
//!   Lossless mode waits for room (back-pressure); live mode drops and later says how many
//!   ([`EventKind::Dropped`]). Only `try_send`/`try_recv` are used: they never allocate.
//! - The collector also *drains* buffers that are not full: the owner publishes each event with a
//!   release store of its heap's event cursor, the collector copies up to it, so idle threads'
//!   events still arrive.
//! - A thread flagged untraced (the collector itself) gets no buffer and emits nothing.

// Without the `hook` feature the collector is not built, so its half of this module is unused.
#![cfg_attr(not(feature = "hook"), allow(dead_code, unused_imports))]

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering::*};

use crate::event::{EVENT_SIZE, Event, EventKind, drop_reason, flags};
use crate::heap::{self, Heap};
use crate::schema;
use crate::segment::Segment;
use crate::sync::SpinLock;
use crate::{os, segment_map};

/// Whether the hook is compiled in.
pub const COMPILED: bool = cfg!(feature = "hook");

static ENABLED: AtomicBool = AtomicBool::new(false);
static LOSSLESS: AtomicBool = AtomicBool::new(true);
static CLOCK_NS: AtomicU64 = AtomicU64::new(0);

/// Whether events are being recorded right now: on x86-64 a compare of the flag byte in memory
/// and a jump. `malloc`'s fast path does not test it (the direct slots are empty while it is
/// on); its miss path and the rarer paths do.
#[inline(always)]
pub fn enabled() -> bool {
    COMPILED && crate::static_flag::static_flag_is_set!(ENABLED)
}

/// Whether what `heap`'s thread does to shared allocator state would be recorded: always when
/// no collector runs (nothing is recorded, nothing is missed); while one runs, only for a traced
/// thread. An untraced thread (the collector) must not take over what traced threads left
/// (abandoned segments, their free pages): the events would be lost and the model would go
/// wrong. That holds until the collector has finished, not only while the hook is on: the
/// collector switches the hook off, then drains and takes the final census, allocating as it
/// does; a segment it reclaimed meanwhile would be missing from that census (it leaves out what
/// untraced threads own) although the model holds its pages.
///
/// # Safety
/// `heap` is the calling thread's heap.
#[inline]
pub(crate) unsafe fn records(heap: *mut Heap) -> bool {
    // SAFETY: forwarded.
    !collecting() || unsafe { (*heap).traced.load(Relaxed) }
}

/// Whether a collector runs (it may be finishing, with the hook already off).
fn collecting() -> bool {
    #[cfg(feature = "hook")]
    return crate::collector::is_running();
    #[cfg(not(feature = "hook"))]
    return false;
}

/// The coarse event clock: nanoseconds since the hook started.
#[inline(always)]
pub fn now() -> u64 {
    CLOCK_NS.load(Relaxed)
}

/// Advances the clock to `ns` (never backwards: see [`bump_clock`]).
pub(crate) fn set_clock(ns: u64) {
    CLOCK_NS.fetch_max(ns, Relaxed);
}

/// Sets the clock back to zero for a new recording (the collector, before the hook goes on).
pub(crate) fn reset_clock() {
    CLOCK_NS.store(0, Relaxed);
}

/// `CLOCK_MONOTONIC` at the clock's zero (0: the collector has not started).
static CLOCK_ORIGIN: AtomicU64 = AtomicU64::new(0);

pub(crate) fn set_clock_origin(monotonic_ns: u64) {
    CLOCK_ORIGIN.store(monotonic_ns, Relaxed);
}

/// Brings the clock up to date from the calling thread. The collector advances it every
/// millisecond when it gets to run; a thread that starts a new buffer (every 2046 events) also
/// does, so that busy threads keep the clock moving while the collector waits for a core, and
/// the events of different threads share a tick only when they are that close in time.
#[cfg(feature = "hook")]
fn catch_up_clock() {
    let origin = CLOCK_ORIGIN.load(Relaxed);
    if origin != 0 {
        set_clock(crate::collector::monotonic_ns().saturating_sub(origin));
    }
}

/// Moves the clock one tick on, so every event another thread emits after it takes over what
/// this thread just gave up (an abandoned or freed segment, handed on under a lock or through the
/// kernel) sorts after this thread's last event about it. Events of one tick arrive in any order
/// across threads; this keeps ownership changes in order.
#[inline]
pub(crate) fn bump_clock() {
    CLOCK_NS.fetch_add(1, Relaxed);
}

/// Switches recording on or off. On: the fast path's direct slots go off first (every heap's,
/// [`heap::direct_off`]), so a thread that sees the hook on finds them all empty and reports
/// every allocation from then on. Off: they come back after the hook is off.
pub(crate) fn set_enabled(on: bool, lossless: bool) {
    LOSSLESS.store(lossless, Relaxed);
    #[cfg(feature = "hook")]
    if on {
        heap::direct_off(true);
    }
    // Release: a thread that reads the hook on also reads the emptied slots.
    ENABLED.store(on && COMPILED, Release);
    crate::options::set_watch(crate::options::WATCH_HOOK, on && COMPILED);
    #[cfg(feature = "hook")]
    if !on {
        heap::direct_off(false);
    }
}

/// Events per buffer: the buffer fills 64 KiB.
pub const BUFFER_EVENTS: usize = 2046;

/// A thread's event buffer. While it is a heap's current buffer, the owner appends at the heap's
/// cursor, which publishes each event; `len` is set when the buffer leaves the heap (sent full,
/// or flushed). The collector reads `events[drained..]` up to the one or the other.
#[repr(C)]
pub struct EventBuffer {
    pub(crate) len: AtomicU32,
    /// Events the collector has already taken (the collector's field alone).
    pub(crate) drained: u32,
    pub(crate) heap_id: u32,
    /// The buffer's number among its heap's buffers: the collector orders a heap's events by
    /// it, since a drained current buffer can reach it before the full one sent just before.
    pub(crate) seq: u32,
    /// The next buffer in the list of empty buffers ([`EMPTY`]).
    next: *mut EventBuffer,
    /// The header has a cache line of its own and the events start on the next, so that no
    /// 32-byte event straddles two lines (a split store costs twice).
    _line: [u32; 10],
    pub(crate) events: [Event; BUFFER_EVENTS],
}
const BUFFER_BYTES: usize = core::mem::size_of::<EventBuffer>().next_multiple_of(4096);
const _: () = assert!(core::mem::offset_of!(EventBuffer, events) == 64);
const _: () = assert!(core::mem::size_of::<EventBuffer>() == BUFFER_BYTES);

impl EventBuffer {
    /// The heap (thread) that wrote this buffer.
    pub fn heap_id(&self) -> u32 {
        self.heap_id
    }

    /// The range of events not yet taken by the collector; marks them taken.
    ///
    /// # Safety
    /// Only the collector thread calls this, for a buffer that is live (a heap's current buffer,
    /// under the heap list lock, or a buffer it received whole).
    pub(crate) unsafe fn take_range(&mut self) -> (usize, usize) {
        // SAFETY: forwarded.
        unsafe { self.take_upto(self.len.load(Acquire) as usize) }
    }

    /// The range of events not yet taken, up to `published`; marks them taken.
    ///
    /// # Safety
    /// As [`EventBuffer::take_range`]; the first `published` events are written and visible.
    pub(crate) unsafe fn take_upto(&mut self, published: usize) -> (usize, usize) {
        let n = published.min(BUFFER_EVENTS);
        let from = (self.drained as usize).min(n);
        if n > from {
            self.drained = n as u32;
        }
        (from, n)
    }
}

/// A buffer pointer that can cross threads.
#[derive(Clone, Copy, Debug)]
pub struct BufferPtr(pub(crate) *mut EventBuffer);
// SAFETY: a buffer is owned by exactly one side at a time: the owner thread until it sends the
// buffer, the collector until it sends it back.
unsafe impl Send for BufferPtr {}

/// The channel from the threads to the collector (full buffers).
#[cfg(feature = "hook")]
pub(crate) struct Channels {
    pub(crate) full_tx: crossbeam_channel::Sender<BufferPtr>,
    full_rx: crossbeam_channel::Receiver<BufferPtr>,
    capacity: usize,
}

/// The channel recordings use, made by the first and kept for the process's life (see
/// [`open_channel`]); null after a fork (the child makes its own).
#[cfg(feature = "hook")]
static KEPT: AtomicPtr<Channels> = AtomicPtr::new(ptr::null_mut());

/// Threads between loading [`CHANNELS`] and the end of their send (see [`send`]): when a
/// recording ends, [`close_channel`] waits for none to be left before it takes what they sent.
#[cfg(feature = "hook")]
static SENDING: AtomicU32 = AtomicU32::new(0);

/// Threads ending (from [`pass_exit_hold`] to the end of their exit): see [`hold_exits`].
static EXITING: AtomicU32 = AtomicU32::new(0);

/// Set while the collector reads the first census of a recording that starts while the program
/// runs: see [`hold_exits`].
static EXITS_HELD: AtomicBool = AtomicBool::new(false);

/// How long an ending thread waits at most for the collector to finish that census.
const EXIT_HOLD_MAX: std::time::Duration = std::time::Duration::from_millis(500);

/// Holds threads that begin to end ([`pass_exit_hold`]) before they change anything (`on`);
/// lets them go (`!on`).
///
/// The collector reads the first census of `heaplens attach` while the program runs, and the
/// heaps then report their own state for the model to take over; an ending thread's heap
/// reports it as it ends. But an ending thread abandons its pages first, and a page read
/// half-way through that belongs to no heap any more: no part puts it right, and the thread's
/// events about it reach the model after the census that already shows them (attached with a
/// census every 2 ms, ending threads of the stress workload left pages counted below zero in
/// 2-4 recordings of 15). So no thread is half-way through its end while the census is read:
/// those that began wait, and the collector waits for those already under way
/// ([`threads_in_flight`]). `SeqCst` on both sides: either the collector sees the thread in
/// [`EXITING`], or the thread sees the hold.
pub(crate) fn hold_exits(on: bool) {
    EXITS_HELD.store(on, SeqCst);
}

/// Called as a thread begins to end: waits while exits are held (see [`hold_exits`]), then
/// counts the thread as ending until the returned guard goes.
pub(crate) fn pass_exit_hold() -> impl Drop {
    struct Ending;
    impl Drop for Ending {
        fn drop(&mut self) {
            EXITING.fetch_sub(1, Release);
        }
    }
    let mut until = None;
    loop {
        EXITING.fetch_add(1, SeqCst);
        if !EXITS_HELD.load(SeqCst) {
            break;
        }
        let until = *until.get_or_insert_with(|| std::time::Instant::now() + EXIT_HOLD_MAX);
        if std::time::Instant::now() >= until {
            // The collector is stuck: better an uncertain census than a hung exit.
            break;
        }
        EXITING.fetch_sub(1, SeqCst);
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
    Ending
}

/// Opens the channel to the collector of a recording that starts, with room for `capacity` full
/// buffers, and returns its receiving end. The channel is made once and never freed (a thread may
/// have loaded it as a recording ends); the recordings after the first reuse it when they ask
/// for the same room (`heaplens attach` starts one per session: a new channel each time grew the
/// program by about 2 KiB a session).
#[cfg(feature = "hook")]
pub(crate) fn open_channel(capacity: usize) -> crossbeam_channel::Receiver<BufferPtr> {
    let kept = KEPT.load(Acquire);
    // SAFETY: a non-null KEPT is a leaked box, never freed.
    let ch = match unsafe { kept.as_ref() } {
        Some(ch) if ch.capacity == capacity => ch,
        _ => {
            let (full_tx, full_rx) = crossbeam_channel::bounded(capacity);
            let ch = Box::leak(Box::new(Channels {
                full_tx,
                full_rx,
                capacity,
            }));
            KEPT.store(ch, Release);
            ch
        }
    };
    CHANNELS.store(ptr::from_ref(ch).cast_mut(), SeqCst);
    ch.full_rx.clone()
}

/// Closes the channel as a recording ends (its collector, once it has taken everything): no
/// thread sends from now on, and buffers sent after the collector's last look (by a thread that
/// had loaded the channel just before) go to the orphans, which the next recording's collector
/// releases. The channel is left empty for the next recording.
#[cfg(feature = "hook")]
pub(crate) fn close_channel(rx: &crossbeam_channel::Receiver<BufferPtr>) {
    CHANNELS.store(ptr::null_mut(), SeqCst);
    while SENDING.load(SeqCst) != 0 {
        // A sender finishes within its try_send (the hook is off, so it does not wait for room).
        std::thread::yield_now();
    }
    while let Ok(buf) = rx.try_recv() {
        ORPHANS.lock().push(buf.0);
    }
}

/// Empty buffers kept for reuse (64 KiB each; the buffers in flight at any time are far fewer
/// unless the collector falls far behind).
const EMPTY_BUFFERS_KEPT: usize = 1024;

/// The empty buffers, last returned first: a thread refills from the buffer the collector
/// released most recently, which is likely still in a cache, instead of the one that waited
/// longest (a queue made every event's store miss). A list linked through the buffers' `next`,
/// with its length. The collector waits for the lock (held for a handful of instructions); a
/// thread only tries it and maps a fresh buffer if it is taken, so a thread never waits, and a
/// `fork()` that catches it taken costs the child nothing but fresh buffers.
static EMPTY: SpinLock<EmptyBuffers> = SpinLock::new(EmptyBuffers {
    top: ptr::null_mut(),
    len: 0,
});

struct EmptyBuffers {
    top: *mut EventBuffer,
    len: usize,
}

// SAFETY: the buffers on the list are owned by the list (the lock serialises every access) and
// hold no thread-bound state.
unsafe impl Send for EmptyBuffers {}

/// The most recently released buffer, or null if there is none or the list is busy.
fn pop_empty() -> *mut EventBuffer {
    let Some(mut list) = EMPTY.try_lock() else {
        return ptr::null_mut();
    };
    let buf = list.top;
    if !buf.is_null() {
        // SAFETY: buffers on the list are mapped and owned by the list, which we hold.
        list.top = unsafe { (*buf).next };
        list.len -= 1;
    }
    buf
}

/// Keeps `buf` for reuse; false if the list is full.
fn push_empty(buf: *mut EventBuffer) -> bool {
    let mut list = EMPTY.lock();
    if list.len >= EMPTY_BUFFERS_KEPT {
        return false;
    }
    list.push(buf);
    true
}

impl EmptyBuffers {
    /// Puts `buf` on top.
    fn push(&mut self, buf: *mut EventBuffer) {
        // SAFETY: the caller owns `buf`, which nobody else references; the list is ours.
        unsafe { (*buf).next = self.top };
        self.top = buf;
        self.len += 1;
    }
}

/// Buffers a thread could not send at exit (see [`flush_thread`]), for the collector to take.
static ORPHANS: SpinLock<EmptyBuffers> = SpinLock::new(EmptyBuffers {
    top: ptr::null_mut(),
    len: 0,
});

/// Hands the buffers threads could not send to `f` (the collector, which releases them once
/// no drain can be reading them).
pub(crate) fn take_orphans(mut f: impl FnMut(BufferPtr)) {
    let mut list = ORPHANS.lock();
    while !list.top.is_null() {
        let buf = list.top;
        // SAFETY: buffers on the list are mapped and owned by the list, which we hold.
        list.top = unsafe { (*buf).next };
        list.len -= 1;
        f(BufferPtr(buf));
    }
}

#[cfg(feature = "hook")]
pub(crate) static CHANNELS: AtomicPtr<Channels> = AtomicPtr::new(ptr::null_mut());

thread_local! {
    /// This thread's choice: 0 follows [`trace_new_threads`], 1 traced, 2 untraced (the
    /// collector sets 2 before its first allocation).
    pub(crate) static TRACE_CHOICE: Cell<u8> = const { Cell::new(0) };
    /// Set while the hook itself runs on this thread: nested events are counted as dropped.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

static TRACE_NEW_THREADS: AtomicBool = AtomicBool::new(true);

/// Whether threads that made no choice ([`set_thread_traced`]) are traced; on by default. A
/// program that embeds the viewer turns it off, so the UI's threads stay out of the picture,
/// and turns tracing on in the threads it wants to watch.
pub fn trace_new_threads(on: bool) {
    TRACE_NEW_THREADS.store(on, Relaxed);
}

/// Whether the calling thread chose not to be traced ([`set_thread_traced`]`(false)`).
pub(crate) fn thread_untraced() -> bool {
    TRACE_CHOICE.with(Cell::get) == 2
}

/// Whether the calling thread's allocations are recorded. Call it first thing in a thread: the
/// blocks a thread allocated while untraced are unknown to the viewer (frees of them show as
/// frees of unknown blocks until the next census). Switching off sends the thread's buffered
/// events first.
pub fn set_thread_traced(on: bool) {
    TRACE_CHOICE.with(|c| c.set(if on { 1 } else { 2 }));
    let heap = heap::default_heap();
    if heap == heap::EMPTY_HEAP_PTR {
        return; // the heap made at the first allocation follows the choice
    }
    // SAFETY: the calling thread's own heap.
    unsafe {
        let was = (*heap).traced.load(Relaxed);
        if !on && was && enabled() {
            let want = (*heap).census_want.load(Acquire);
            if want != (*heap).census_done && !IN_HOOK.with(Cell::get) {
                // A census part it owes goes first, while its pages are still followed.
                owed_part(heap, want);
            }
            // Its pages leave the picture: the heap's state is now nothing the trace follows.
            emit_heap_state(heap, false);
            // The viewer shows the heap as gone from here on.
            emit(
                heap,
                schema::ThreadExit {
                    heap: (*heap).id,
                    flags: 0,
                },
            );
        }
        if !on {
            flush_thread(heap);
        }
        (*heap).traced.store(on, Relaxed);
        if on != was {
            mark_own_segments(heap, on, |_| {});
        }
        if on && !was && enabled() {
            emit(heap, thread_start(heap));
            emit_thread_name(heap);
            // What the heap made while untraced: the model takes it over from here.
            emit_heap_state(heap, true);
        }
    }
}

/// Segments [`mark_own_segments`] hands on at most; a heap with more reports the pages of the
/// others without their segments (the model infers those).
const OWN_SEGMENTS_MAX: usize = 256;

/// Marks the segments `heap`'s thread owns as known to the trace (`on`) or not, and calls `f`
/// on each of them (at most [`OWN_SEGMENTS_MAX`]) after the registry's lock is released.
///
/// # Safety
/// `heap` is the calling thread's heap.
unsafe fn mark_own_segments(heap: *mut Heap, on: bool, mut f: impl FnMut(&Segment)) {
    let mut own = [ptr::null::<Segment>(); OWN_SEGMENTS_MAX];
    let mut n = 0;
    // SAFETY: the calling thread's heap.
    let tid = unsafe { (*heap).thread_id };
    segment_map::for_each(|s: &Segment| {
        if s.thread_id.load(Relaxed) == tid {
            s.traced.store(on, Relaxed);
            if n < OWN_SEGMENTS_MAX {
                own[n] = s;
                n += 1;
            }
        }
    });
    for &s in &own[..n] {
        // SAFETY: the thread's own segments stay mapped while it does not free them.
        f(unsafe { &*s });
    }
}

/// Reports `heap`'s whole state as a census part the model takes over (`HEAP_PART|INITIAL`):
/// its segments and in-use pages when `on` (tracing starts on a thread that already allocated),
/// nothing when tracing stops (its pages leave the picture).
///
/// # Safety
/// `heap` is the calling thread's heap, traced, with no allocator call of it half done.
unsafe fn emit_heap_state(heap: *mut Heap, on: bool) {
    // SAFETY: forwarded.
    unsafe { emit_heap_state_before(heap, on, None, now()) }
}

/// [`emit_heap_state`] at time `t`, as the state was before `alloc`, an `Alloc` event the
/// calling thread's allocation just made and sends next: its block is counted as not yet
/// used, so that the event, applied after the part, brings it in once.
///
/// # Safety
/// As [`emit_heap_state`]; `alloc`'s block is one of `heap`'s.
unsafe fn emit_heap_state_before(heap: *mut Heap, on: bool, alloc: Option<&Event>, t: u64) {
    if IN_HOOK.with(Cell::get) {
        return;
    }
    let block = alloc.map_or(0, |ev| schema::Alloc::from_event(ev).ptr);
    // SAFETY: the calling thread owns `heap`, its buffer and its pages.
    unsafe {
        let mut pages = 0u64;
        if on {
            for_each_heap_page(heap, |_| pages += 1);
        }
        write_part(heap, 0, flags::INITIAL, pages, t, |sink| {
            if !on {
                return;
            }
            mark_own_segments(heap, true, |s| sink(census_segment_event(s, t)));
            let id = (*heap).id;
            for_each_heap_page(heap, |page| {
                let start = page.start() as u64;
                let span = (page.block_size() as u64).saturating_mul(u64::from(page.capacity()));
                let holds = block.wrapping_sub(start) < span;
                census_page_events_less(page, id, t, u32::from(holds))
                    .into_iter()
                    .for_each(&mut *sink);
            });
        });
    }
}

/// Reports the pages of segment `s`, which `heap` just took over from a thread the trace did not
/// follow (abandoned by an untraced thread), as a census part the model takes over
/// (`HEAP_PART|ADOPT`): the segment and its in-use pages.
///
/// # Safety
/// `heap` is the calling thread's heap and owns `s`; no page of `s` is half changed.
pub(crate) unsafe fn adopt_segment(heap: *mut Heap, s: &Segment) {
    // SAFETY: the calling thread owns `heap` and `s`.
    unsafe {
        if !(*heap).traced.load(Relaxed) || !enabled() || IN_HOOK.with(Cell::get) {
            return;
        }
        let t = part_clock(heap);
        let in_use = || {
            (0..s.page_count())
                .map(|i| s.page(i))
                .filter(|p| p.is_in_use())
        };
        let id = (*heap).id;
        write_part(heap, 0, flags::ADOPT, in_use().count() as u64, t, |sink| {
            sink(census_segment_event(s, t));
            for page in in_use() {
                census_page_events(page, id, t)
                    .into_iter()
                    .for_each(&mut *sink);
            }
        });
    }
}

/// Segment `s` as a `CensusSegment` event.
fn census_segment_event(s: &Segment, t: u64) -> Event {
    schema::CensusSegment {
        base: segment_addr(s),
        bytes: s.size() as u64,
        pages: s.page_count() as u32,
        flags: s.kind() as u8,
    }
    .into_event()
    .at(t)
}

/// Whether a new heap on this thread should be traced.
pub(crate) fn thread_is_traced() -> bool {
    match TRACE_CHOICE.with(Cell::get) {
        1 => true,
        2 => false,
        _ => TRACE_NEW_THREADS.load(Relaxed),
    }
}

// ---------------------------------------------------------------------------------------------
// Emitting

/// Appends an event to `heap`'s buffer, stamped with the clock's time. Build `ev` with the
/// kind's view ([`crate::schema`]), e.g. `schema::PageFull { start, flags: 0 }.into()`.
///
/// # Safety
/// `heap` is the calling thread's heap (possibly the empty heap, which records nothing).
#[inline(always)]
pub(crate) unsafe fn emit(heap: *mut Heap, ev: impl Into<Event>) {
    let ev: Event = ev.into();
    // SAFETY: forwarded.
    unsafe {
        if !append_event(heap, &ev) {
            emit_slow(heap, ev.at(now()));
        }
    }
}

/// [`append`] of an event's slots (its time is the clock's).
///
/// # Safety
/// As [`append`].
#[inline(always)]
unsafe fn append_event(heap: *mut Heap, ev: &Event) -> bool {
    // SAFETY: forwarded.
    unsafe {
        append(
            heap,
            Event::head_word(ev.kind, ev.flags, ev.aux, ev.arg32),
            ev.addr as usize,
            ev.arg,
        )
    }
}

/// Writes an event (its first word `head`, see [`Event::head_word`]) into `heap`'s current buffer
/// if it has room; false otherwise (no buffer, or full), when [`emit_slow`] must take over.
///
/// The heap's cursor says where the event goes and, moved on, publishes it: one compare against
/// the end (both null without a buffer) instead of a null test, a count load, a compare and an
/// index computation (4 instructions fewer per event than counting in the buffer).
///
/// # Safety
/// `heap` is the calling thread's heap.
#[inline(always)]
unsafe fn append(heap: *mut Heap, head: u64, addr: usize, arg: u64) -> bool {
    // SAFETY: only the owner thread appends to its heap's buffer; the cursor lies in it, below
    // its end, and publishes the event.
    unsafe {
        let at = (*heap).event_cursor.load(Relaxed);
        if at >= (*heap).event_end.load(Relaxed) {
            return false;
        }
        // Stored as four words straight from registers: an `Event` built on the stack and
        // copied in 16-byte halves made every event wait for store forwarding to fail (two
        // 8-byte stores read back by one 16-byte load).
        let w = at.cast::<u64>();
        w.write(head);
        w.add(1).write(addr as u64);
        w.add(2).write(arg);
        w.add(3).write(now());
        (*heap).event_cursor.store(at.add(1), Release);
        true
    }
}

/// The first event slot of `buf`.
///
/// # Safety
/// `buf` is a mapped buffer.
unsafe fn first_slot(buf: *mut EventBuffer) -> *mut Event {
    // SAFETY: forwarded.
    unsafe { (&raw mut (*buf).events).cast::<Event>() }
}

/// How many events `heap`'s thread has written to its current buffer `buf` (the owner's view).
///
/// # Safety
/// The calling thread owns `heap`, whose current buffer is `buf` (not null).
unsafe fn written(heap: *mut Heap, buf: *mut EventBuffer) -> usize {
    // SAFETY: the cursor lies within `buf`'s events (see `attach`).
    unsafe {
        (*heap)
            .event_cursor
            .load(Relaxed)
            .offset_from(first_slot(buf)) as usize
    }
}

/// Makes `buf` (or null: none) `heap`'s current buffer, its cursor at the start.
///
/// # Safety
/// The calling thread owns `heap`, which has no current buffer; `buf` is empty and ours.
unsafe fn attach(heap: *mut Heap, buf: *mut EventBuffer) {
    // SAFETY: forwarded.
    unsafe {
        if buf.is_null() {
            return;
        }
        open(heap, buf);
        (*heap).event_cursor.store(first_slot(buf), Release);
        (*heap).events.store(buf, Release);
    }
}

/// Lets `heap`'s events go into `buf` up to its end, unless a census is wanted: then the next
/// event leaves the fast path for `census_point`.
///
/// # Safety
/// The calling thread owns `heap`; `buf` is its current buffer, or about to be.
unsafe fn open(heap: *mut Heap, buf: *mut EventBuffer) {
    // SAFETY: forwarded.
    unsafe {
        (*heap)
            .event_end
            .store(first_slot(buf).add(BUFFER_EVENTS), Relaxed);
        if (*heap).census_want.load(Relaxed) != (*heap).census_done {
            (*heap).event_end.store(ptr::null_mut(), Relaxed);
        }
    }
}

/// Sets the count of events in `heap`'s current buffer `buf`, before it is sent: the collector
/// reads the count of a buffer it receives (the cursor only while a heap names the buffer).
///
/// Nothing more goes into a sealed buffer. Sending it can run into the allocator (the first
/// time a thread the C library started wakes the collector, the channel asks the standard
/// library for the thread's handle, which is made then): that event is kept aside (`IN_HOOK`)
/// for the next buffer. Before, when `reserve` sent a buffer that still had room, it went in
/// after the sealed count and was never read, and the last census counted a block the trace
/// never allocated (5 recordings in 6 of binary trees with `--stacks all`).
///
/// # Safety
/// As [`written`].
unsafe fn seal(heap: *mut Heap, buf: *mut EventBuffer) {
    // SAFETY: forwarded.
    unsafe {
        (*buf).len.store(written(heap, buf) as u32, Release);
        (*heap).event_end.store(ptr::null_mut(), Relaxed);
    }
}

/// Leaves `heap` without a current buffer ([`seal`] the buffer first to send it): from here on
/// only a drain that found the buffer earlier reads the heap's cursor for it.
///
/// # Safety
/// The calling thread owns `heap`.
unsafe fn detach(heap: *mut Heap) {
    // SAFETY: forwarded.
    unsafe {
        (*heap).events.store(ptr::null_mut(), Release);
        (*heap).event_end.store(ptr::null_mut(), Relaxed);
        (*heap).event_cursor.store(ptr::null_mut(), Release);
    }
}

/// Reports the allocation of `p` and returns it: the traced fast path of `malloc`. The rare
/// full-buffer case is a tail call, so the common case needs no stack frame.
///
/// # Safety
/// As [`emit`].
#[inline(always)]
pub(crate) unsafe fn alloc_event(heap: *mut Heap, p: *mut u8, size: usize, flags: u8) -> *mut u8 {
    let ev = schema::Alloc {
        ptr: p as u64,
        size: size as u64,
        stack: 0,
        bin: 0,
        flags,
    }
    .into_event();
    // SAFETY: forwarded.
    unsafe {
        if append_event(heap, &ev) {
            p
        } else {
            alloc_event_slow(heap, p, size, flags)
        }
    }
}

/// Reports a local free of `p` if the buffer has room; false when [`emit`] must do it.
///
/// # Safety
/// As [`emit`].
#[inline(always)]
pub(crate) unsafe fn try_free_event(heap: *mut Heap, p: *mut u8) -> bool {
    let ev = schema::Free {
        ptr: p as u64,
        flags: 0,
    }
    .into_event();
    // SAFETY: forwarded.
    unsafe { append_event(heap, &ev) }
}

#[inline(never)]
unsafe fn alloc_event_slow(heap: *mut Heap, p: *mut u8, size: usize, flags: u8) -> *mut u8 {
    let time = now();
    let ev = schema::Alloc {
        ptr: p as u64,
        size: size as u64,
        stack: 0,
        bin: 0,
        flags,
    }
    .into_event()
    .at(time);
    // SAFETY: forwarded.
    unsafe { emit_slow(heap, ev) };
    p
}

/// Appends an event of an untraced thread (the collector, a viewer's thread) about a page the
/// trace knows: its free of a traced thread's block. The heap gets a buffer for these events
/// alone; they travel as any heap's do. Its end stays null between them, so that the fast
/// paths (which append while the cursor is below the end) record nothing else of the thread.
///
/// # Safety
/// `heap` is the calling thread's heap, untraced.
unsafe fn emit_foreign(heap: *mut Heap, ev: Event) {
    // SAFETY: the calling thread owns `heap` and its buffer.
    unsafe {
        if !enabled() || IN_HOOK.with(Cell::get) {
            return;
        }
        let buf = (*heap).events.load(Relaxed);
        if !buf.is_null() {
            (*heap)
                .event_end
                .store(first_slot(buf).add(BUFFER_EVENTS), Relaxed);
        }
        emit_buffered(heap, ev.at(now()));
        (*heap).event_end.store(ptr::null_mut(), Relaxed);
    }
}

/// Emits on the calling thread's heap (for slow paths that do not carry the heap).
#[inline]
pub(crate) fn emit_current(ev: impl Into<Event>) {
    // SAFETY: the default heap is the calling thread's.
    unsafe { emit(heap::default_heap(), ev) };
}

/// Events a thread may emit while its hook already runs (see [`Heap::spill`]).
pub(crate) const SPILL_EVENTS: usize = 4;

#[cold]
#[inline(never)]
unsafe fn emit_slow(heap: *mut Heap, ev: Event) {
    // SAFETY: the calling thread owns `heap` and its buffer.
    unsafe {
        if !(*heap).traced.load(Relaxed) || !enabled() {
            return;
        }
        if IN_HOOK.with(Cell::get) {
            // A heap made in there has no buffer yet: it takes one (taking one does not involve
            // the channel), so its events need no spill slots. That is an exiting thread whose
            // last send, after its heap was abandoned, allocated (the channel's first wake-up
            // of the collector from it): the new heap reported its start and the abandoned
            // segments it took back, and the stress workload lost 100-300 events a recording.
            if (*heap).events.load(Relaxed).is_null() {
                attach(heap, take_empty_buffer(heap));
                if append_event(heap, &ev) {
                    return;
                }
            }
            // Fetching a buffer ran into the allocator again: keep the event for the outer call.
            let n = usize::from((*heap).spill_len);
            if n < SPILL_EVENTS {
                (*heap).spill[n] = ev;
                (*heap).spill_len += 1;
            } else if !spill_more(heap, ev) {
                lose(heap, drop_reason::NESTED);
            }
            return;
        }
        let want = (*heap).census_want.load(Acquire);
        if want != (*heap).census_done {
            census_point(heap, ev, want);
            return;
        }
        emit_buffered(heap, ev);
    }
}

/// Appends an event of a census part (or a takeover part) to `heap`'s buffer up to the buffer's
/// own end, whatever `event_end` says: a census asked for while the part is written nulls
/// `event_end`, and the change of buffers that followed (with room left) could allocate, in
/// there, a block whose events then sat inside the part (stress, a census every millisecond:
/// one page one block apart, in 1 recording of 8). The request is answered at the heap's next
/// event, as any.
///
/// # Safety
/// As [`emit_buffered`].
unsafe fn emit_part(heap: *mut Heap, ev: Event) {
    // SAFETY: the calling thread owns `heap` and its buffer; the cursor lies in it.
    unsafe {
        let buf = (*heap).events.load(Relaxed);
        if !buf.is_null() {
            let at = (*heap).event_cursor.load(Relaxed);
            if at < first_slot(buf).add(BUFFER_EVENTS) {
                at.write(ev);
                (*heap).event_cursor.store(at.add(1), Release);
                return;
            }
        }
        emit_buffered(heap, ev);
    }
}

/// Appends `ev` to `heap`'s buffer, or, when it is full or missing, sends it and takes another.
///
/// # Safety
/// The calling thread owns `heap`, which is traced (or untraced, for [`emit_foreign`]), with
/// the hook on and not already running on this thread.
unsafe fn emit_buffered(heap: *mut Heap, ev: Event) {
    // SAFETY: the calling thread owns `heap` and its buffer.
    unsafe {
        if append_event(heap, &ev) {
            return;
        }
        IN_HOOK.with(|h| h.set(true));
        next_buffer(heap);
        put(heap, Some(ev));
        IN_HOOK.with(|h| h.set(false));
    }
}

/// Sends `heap`'s current buffer (if any) and attaches an empty one, if the collector takes it.
///
/// # Safety
/// `heap` is the calling thread's heap; the hook runs (`IN_HOOK`).
unsafe fn next_buffer(heap: *mut Heap) {
    // SAFETY: the calling thread owns `heap` and its buffer.
    unsafe {
        let full = (*heap).events.load(Relaxed);
        let sent = full.is_null() || {
            seal(heap, full);
            let sent = send(full);
            if !sent {
                // It stays the heap's buffer (the collector is full, in live mode).
                open(heap, full);
            }
            sent
        };
        if sent {
            detach(heap);
            attach(heap, take_empty_buffer(heap));
        }
    }
}

/// Keeps `ev`, emitted while the hook runs on `heap`'s thread with its spill slots full, in the
/// heap's overflow buffer (taken now if need be); false if there is no room or no buffer. More
/// than four come when the allocation in there captures its stack (`--stacks all`), or frees
/// blocks that empty pages (seen with a census every millisecond).
///
/// # Safety
/// `heap` is the calling thread's heap; the hook runs on it (`IN_HOOK`).
unsafe fn spill_more(heap: *mut Heap, ev: Event) -> bool {
    // SAFETY: the overflow buffer is the heap's own, which only its thread touches.
    unsafe {
        let mut more = (*heap).spill_more;
        if more.is_null() {
            // Not `take_empty_buffer`: it numbers the buffers the collector receives.
            more = any_empty_buffer();
            if more.is_null() {
                return false;
            }
            (*more).len.store(0, Relaxed);
            (*heap).spill_more = more;
        }
        let n = (*more).len.load(Relaxed) as usize;
        if n >= BUFFER_EVENTS - SPILL_EVENTS - 2 {
            return false;
        }
        first_slot(more).add(n).write(ev);
        (*more).len.store(n as u32 + 1, Relaxed);
        true
    }
}

/// The events waiting in `heap`'s overflow buffer, and the buffer (null: none).
///
/// # Safety
/// `heap` is the calling thread's heap.
unsafe fn spilled_more(heap: *mut Heap) -> (usize, *mut EventBuffer) {
    // SAFETY: as in `spill_more`.
    unsafe {
        let more = (*heap).spill_more;
        if more.is_null() {
            (0, more)
        } else {
            ((*more).len.load(Relaxed) as usize, more)
        }
    }
}

/// Gives `heap`'s overflow buffer back, counting what it still held lost (`why`).
///
/// # Safety
/// `heap` is the calling thread's heap.
unsafe fn drop_spill_more(heap: *mut Heap, why: u16) {
    // SAFETY: as in `spill_more`; the collector never saw the buffer, so it may be reused now.
    unsafe {
        let (n, more) = spilled_more(heap);
        if more.is_null() {
            return;
        }
        for _ in 0..n {
            lose(heap, why);
        }
        (*heap).spill_more = ptr::null_mut();
        release_buffer(BufferPtr(more));
    }
}

/// Writes the pending drop note, `ev` and the spilled events into `heap`'s current buffer, or
/// counts them lost if they do not fit.
///
/// # Safety
/// As [`next_buffer`].
unsafe fn put(heap: *mut Heap, ev: Option<Event>) {
    // SAFETY: the calling thread owns `heap` and its buffer; the writes stay below its end.
    unsafe {
        let buf = (*heap).events.load(Relaxed);
        // Spilled events wait while a census part is written (`Heap::spill_deferred`).
        let (slots, (more, more_buf)) = if (*heap).spill_deferred {
            (0, (0, ptr::null_mut()))
        } else {
            (usize::from((*heap).spill_len), spilled_more(heap))
        };
        let spilled = slots + more;
        // Room for the drop note, the event and the spilled events.
        if buf.is_null() || written(heap, buf) + 2 + spilled > BUFFER_EVENTS {
            let why = if buf.is_null() {
                drop_reason::NO_BUFFER
            } else {
                drop_reason::CONSUMER
            };
            if ev.is_some() {
                lose(heap, why);
            }
        } else {
            let mut n = written(heap, buf);
            let events = first_slot(buf);
            if (*heap).dropped > 0 {
                let d = schema::Dropped {
                    lost: (*heap).dropped,
                    reasons: (*heap).drop_reasons,
                    flags: 0,
                }
                .into_event()
                .at(ev.map_or_else(now, |e| e.time));
                events.add(n).write(d);
                n += 1;
                (*heap).dropped = 0;
                (*heap).drop_reasons = 0;
            }
            if let Some(ev) = ev {
                events.add(n).write(ev);
                n += 1;
            }
            for i in 0..slots {
                events.add(n).write((*heap).spill[i]);
                n += 1;
            }
            (*heap).spill_len -= slots as u8;
            if !more_buf.is_null() {
                ptr::copy_nonoverlapping(first_slot(more_buf), events.add(n), more);
                n += more;
                (*heap).spill_more = ptr::null_mut();
                release_buffer(BufferPtr(more_buf));
            }
            (*heap).event_cursor.store(events.add(n), Release);
        }
    }
}

/// Makes room for `n` events in `heap`'s current buffer, sending it on if it has less, so that
/// the next `n` [`emit`]s append without a break (a stack's frames and its allocation arrive
/// whole or not at all). False if that cannot be done now (no buffer, the collector is behind in
/// live mode, or the hook already runs on this thread).
///
/// # Safety
/// `heap` is the calling thread's heap.
pub(crate) unsafe fn reserve(heap: *mut Heap, n: usize) -> bool {
    // SAFETY: the calling thread owns `heap` and its buffer.
    unsafe {
        let room = |heap: *mut Heap| {
            // From the buffer's own end: `event_end` may be null while a census is wanted.
            let at = (*heap).event_cursor.load(Relaxed);
            let buf = (*heap).events.load(Relaxed);
            if at.is_null() || buf.is_null() {
                0
            } else {
                (first_slot(buf).add(BUFFER_EVENTS) as usize - at as usize) / EVENT_SIZE
            }
        };
        if room(heap) >= n {
            return true;
        }
        if n + 2 + SPILL_EVENTS > BUFFER_EVENTS
            || !(*heap).traced.load(Relaxed)
            || !enabled()
            || IN_HOOK.with(Cell::get)
        {
            return false;
        }
        IN_HOOK.with(|h| h.set(true));
        next_buffer(heap);
        put(heap, None);
        IN_HOOK.with(|h| h.set(false));
        room(heap) >= n
    }
}

/// A census was asked for ([`request_heap_census`]) and `ev` is the heap's next event: the heap
/// reports its part of the census in its own stream, so that it describes the heap's pages at
/// one point of the heap's own event order, which the model reaches exactly (a census the
/// collector read while the threads ran would catch them between a change and its event).
///
/// The part is taken right after an `Alloc`, the last thing `malloc` does (every change it
/// made has been reported by then). Not after other events: a local `free` reports its block
/// before it pushes it, so the page would be read half-way. After any other event the heap asks
/// again at its next one; a thread that never allocates again reports at its exit
/// ([`flush_thread`]).
///
/// Of a page's counters, `thread_free` alone changes under the owner's feet (other threads push
/// onto it); a cross-thread free moves a block from the program to `thread_free`, which leaves
/// `used` as it is, so `used`, `free`, `local_free` and the full flag are exact here, and the
/// `thread_free` read is only a reading (the model does not compare it in a heap's part).
///
/// # Safety
/// As [`emit_buffered`].
unsafe fn census_point(heap: *mut Heap, ev: Event, want: u32) {
    // SAFETY: the calling thread owns `heap`, its buffer and its pages.
    unsafe {
        let buf = (*heap).events.load(Relaxed);
        if !buf.is_null() {
            (*heap)
                .event_end
                .store(first_slot(buf).add(BUFFER_EVENTS), Relaxed);
        }
        if ev.kind != EventKind::Alloc as u8 {
            emit_buffered(heap, ev);
            // Ask again at the next event.
            (*heap).event_end.store(ptr::null_mut(), Relaxed);
            return;
        }
        if want & WANT_INITIAL != 0 {
            // Its whole state, for the model to take over, then the allocation, once.
            initial_part(heap, Some(&ev), ev.time);
            emit_buffered(heap, ev);
            return;
        }
        emit_buffered(heap, ev);
        heap_census(heap, want);
    }
}

/// In `Heap::census_want`: the heap's whole state is wanted as a part the model takes over
/// (`HEAP_PART|INITIAL`), taken at the heap's next allocation as a census part is. Census
/// numbers never reach this bit.
const WANT_INITIAL: u32 = 1 << 31;

/// Asks every traced heap for its whole state, reported at its next allocation
/// ([`census_point`]) for the model to take over: recording began while the program ran
/// (`heaplens attach`), and the census the collector took then read pages while their threads
/// changed them; each heap's own report is exact at a point of its own event order. A heap that
/// makes no allocation keeps what that census read (no thread changed its pages but by
/// cross-thread frees, which a heap's part does not compare).
pub(crate) fn request_initial_parts() {
    crate::init::for_each_heap(|h| {
        if h.traced.load(Relaxed) {
            h.census_want.fetch_or(WANT_INITIAL, Release);
            h.event_end.store(ptr::null_mut(), Relaxed);
        }
    });
}

/// Sends the part `heap` owes outside an allocation (`want`, read from `census_want`): its whole
/// state when asked for it (`WANT_INITIAL`), else its part of census `want`.
///
/// # Safety
/// As [`heap_census`].
unsafe fn owed_part(heap: *mut Heap, want: u32) {
    // SAFETY: forwarded.
    unsafe {
        if want & WANT_INITIAL != 0 {
            initial_part(heap, None, now());
        } else {
            heap_census(heap, want);
        }
    }
}

/// Answers [`WANT_INITIAL`]: takes the request off `census_want` and sends `heap`'s whole state
/// at time `t`, as it was before `alloc` (see [`emit_heap_state_before`]).
///
/// # Safety
/// As [`heap_census`].
unsafe fn initial_part(heap: *mut Heap, alloc: Option<&Event>, t: u64) {
    // SAFETY: forwarded.
    unsafe {
        let number = (*heap).census_want.fetch_and(!WANT_INITIAL, AcqRel) & !WANT_INITIAL;
        (*heap).census_done = number;
        emit_heap_state_before(heap, true, alloc, t);
    }
}

/// Writes `heap`'s part of census `number` into its stream.
///
/// # Safety
/// As [`emit_buffered`]; no allocator call of the thread is half done.
unsafe fn heap_census(heap: *mut Heap, number: u32) {
    // SAFETY: the calling thread owns `heap`, its buffer and its pages.
    unsafe {
        (*heap).census_done = number;
        let count = || {
            let mut pages = 0u64;
            for_each_heap_page(heap, |_| pages += 1);
            pages
        };
        // The whole part in one buffer where it fits: changing buffers can run into the
        // allocator (see `seal`), and with room made first such an allocation comes before the
        // part, not after it (see `write_part`).
        let room = usize::try_from(count()).map_or(usize::MAX, |p| p.saturating_mul(2));
        let _ = reserve(heap, room.saturating_add(2 + SPILL_EVENTS));
        let t = part_clock(heap);
        // Counted again: making room may have allocated, and carved a page.
        let pages = count();
        let id = (*heap).id;
        write_part(heap, number, 0, pages, t, |sink| {
            for_each_heap_page(heap, |page| {
                census_page_events(page, id, t)
                    .into_iter()
                    .for_each(&mut *sink);
            });
        });
    }
}

/// The time of a census part `heap` is about to read: the clock, read after the collector is
/// told a part is under way (`Heap::part_time`), so that no drain that missed the part passes
/// a later event on before it.
///
/// # Safety
/// `heap` is the calling thread's heap.
unsafe fn part_clock(heap: *mut Heap) -> u64 {
    // SAFETY: the heap is live; `part_time` is an atomic.
    unsafe { (*heap).part_time.store(1, SeqCst) };
    now()
}

/// Writes heap `heap`'s part of census `number` (`HEAP_PART | kind`; a part the model takes
/// over has number 0 and `kind` `INITIAL` or `ADOPT`) at time `t`: its begin, counting `pages`,
/// the events `body` hands its sink, and its end. The part is read
/// whole first, into buffers of the heap's own, and written after, so that no page is read
/// between the changes of buffers its writing may need; what those changes allocate waits until
/// after the part (see `Heap::spill_deferred`). Written as its pages were read, such an
/// allocation landed between pages read before it and pages read after: the stress workload
/// with a census every millisecond and every stack captured had one page one block apart in 1
/// recording of 6, and attached to with a census every 2 ms, in 1 of 3 (the part that hands the
/// heap over to the model).
///
/// # Safety
/// As [`heap_census`].
unsafe fn write_part(
    heap: *mut Heap,
    number: u32,
    kind: u8,
    pages: u64,
    t: u64,
    body: impl FnOnce(&mut dyn FnMut(Event)),
) {
    let part = flags::HEAP_PART | kind;
    let begin = schema::CensusBegin {
        pages,
        number,
        flags: part,
    }
    .into_event()
    .at(t);
    let end = schema::CensusEnd {
        number,
        flags: part,
    }
    .into_event()
    .at(t);
    // SAFETY: forwarded.
    unsafe {
        // Its pages are read (each one's census epoch flipped) before its events are published:
        // a thread preempted in between published a part stamped 7.8 ms at 20 ms, after other
        // threads' cross-thread frees pushed under the new epochs had been passed on, which
        // the model then took for frees an earlier reading had counted (attached to the stress
        // workload, a page's thread_free ended 108 short in 1 recording of 30). Until the part
        // is published, the collector passes nothing later on (see `drain`).
        (*heap).part_time.store(t.max(1), SeqCst);
        // Events kept aside before the part go before it: they happened before its pages are
        // read (written after it, a free the part had counted was applied again: 1 attached
        // recording in 15).
        put_spilled(heap);
        let mut snapshot = PartSnapshot::new();
        let mut direct = false;
        (*heap).spill_deferred = true;
        body(&mut |e| {
            if !direct {
                if snapshot.push(e) {
                    return;
                }
                // No room to read it whole: what was read goes now, the rest as it is read.
                emit_part(heap, begin);
                snapshot.write(heap);
                direct = true;
            }
            emit_part(heap, e);
        });
        if !direct {
            emit_part(heap, begin);
            snapshot.write(heap);
        }
        emit_part(heap, end);
        (*heap).part_time.store(0, Release);
        (*heap).spill_deferred = false;
        snapshot.release();
        put_spilled(heap);
    }
}

/// Writes the events spilled while the hook ran, after whatever came since (see
/// [`Heap::spill_deferred`]): into the current buffer, or a new one if they do not fit.
///
/// # Safety
/// `heap` is the calling thread's heap, with the hook not running on it.
unsafe fn put_spilled(heap: *mut Heap) {
    // SAFETY: the calling thread owns `heap` and its buffer.
    unsafe {
        if (*heap).spill_len == 0 && (*heap).spill_more.is_null() {
            return;
        }
        let (more, _) = spilled_more(heap);
        let buf = (*heap).events.load(Relaxed);
        let fits = !buf.is_null()
            && written(heap, buf) + 2 + usize::from((*heap).spill_len) + more <= BUFFER_EVENTS;
        IN_HOOK.with(|h| h.set(true));
        if !fits {
            next_buffer(heap);
        }
        put(heap, None);
        IN_HOOK.with(|h| h.set(false));
    }
}

/// A census part's events read whole before they are written, in buffers taken for them (from
/// the empty list or the OS: nothing is allocated, so nothing is reported while the part is
/// read). Never sent; the collector does not see them.
struct PartSnapshot {
    buffers: [*mut EventBuffer; PART_SNAPSHOT_BUFFERS],
    used: usize,
    events: usize,
}

/// Buffers a census part may be read into: 512 of 2046 events, a heap of 523 k pages (32 GiB
/// of small pages). A larger part is written as it is read, past what fits.
const PART_SNAPSHOT_BUFFERS: usize = 512;

impl PartSnapshot {
    const fn new() -> Self {
        Self {
            buffers: [ptr::null_mut(); PART_SNAPSHOT_BUFFERS],
            used: 0,
            events: 0,
        }
    }

    /// Keeps `e`; false if there is no room for it (no buffer left, or no memory).
    fn push(&mut self, e: Event) -> bool {
        if self.events == self.used * BUFFER_EVENTS {
            if self.used == PART_SNAPSHOT_BUFFERS {
                return false;
            }
            let b = any_empty_buffer();
            if b.is_null() {
                return false;
            }
            self.buffers[self.used] = b;
            self.used += 1;
        }
        // SAFETY: the buffer is ours and has room for this event (checked above).
        unsafe {
            first_slot(self.buffers[self.events / BUFFER_EVENTS])
                .add(self.events % BUFFER_EVENTS)
                .write(e);
        }
        self.events += 1;
        true
    }

    /// Writes the events kept into `heap`'s stream.
    ///
    /// # Safety
    /// As [`heap_census`].
    unsafe fn write(&self, heap: *mut Heap) {
        for i in 0..self.events {
            // SAFETY: events below `self.events` were written by `push`.
            unsafe {
                let e = first_slot(self.buffers[i / BUFFER_EVENTS])
                    .add(i % BUFFER_EVENTS)
                    .read();
                emit_part(heap, e);
            }
        }
    }

    /// Gives the buffers back.
    fn release(&self) {
        for &b in &self.buffers[..self.used] {
            release_buffer(BufferPtr(b));
        }
    }
}

/// Calls `f` on every page of `heap` (its bins' queues, the huge pages and the full queue).
///
/// # Safety
/// The calling thread owns `heap`.
unsafe fn for_each_heap_page(heap: *mut Heap, mut f: impl FnMut(&crate::page::Page)) {
    // SAFETY: the owner's queues hold its in-use pages, linked while it does not change them.
    unsafe {
        for q in &(*heap).queues {
            let mut p = q.first();
            while !p.is_null() {
                f(&*p);
                p = (*p).next;
            }
        }
    }
}

/// A page as the two census events (`CensusPage`, `CensusPage2`), owned by heap `owner`.
fn census_page_events(page: &crate::page::Page, owner: u32, t: u64) -> [Event; 2] {
    census_page_events_less(page, owner, t, 0)
}

/// [`census_page_events`] with `less` of its used blocks counted as free (see
/// [`emit_heap_state_before`]).
///
/// Reads `thread_free` as a census does ([`crate::page::census_reading`]: the count, and the
/// census epoch flipped), with the clock past `t` (the census's first page moves it on): a
/// cross-thread free stamped `t` or earlier pushed under the old epoch (and the census counts
/// it), one pushed under the new epoch is stamped after `t`, so it reaches the model after the
/// census part.
fn census_page_events_less(page: &crate::page::Page, owner: u32, t: u64, less: u32) -> [Event; 2] {
    // SAFETY: an in-use page lies in a live segment.
    let kind = unsafe { (*crate::segment::segment_of_page(page)).kind() } as u8;
    if now() <= t {
        // Once per census: the clock never goes back (a shared line every event reads).
        bump_clock();
    }
    let (thread_free, epoch) = crate::page::census_reading(page);
    let epoch = if epoch { flags::EPOCH } else { 0 };
    [
        schema::CensusPage {
            start: page.start() as u64,
            block_size: page.block_size() as u64,
            capacity: page.capacity(),
            bin: page.bin() as u16,
            flags: kind,
        }
        .into_event()
        .at(t),
        schema::CensusPage2 {
            owner: u64::from(owner),
            counts: schema::CensusPage2::counts_of(page.used() - less, page.local_free_len()),
            thread_free,
            flags: u8::from(page.is_in_full()) | epoch,
        }
        .into_event()
        .at(t),
    ]
}

/// Asks every traced heap for its part of census `number`: each reports it in its own stream
/// at its next allocator call ([`census_point`]); a heap that makes none reports nothing.
pub(crate) fn request_heap_census(number: u32) {
    crate::init::for_each_heap(|h| {
        if h.traced.load(Relaxed) {
            // A heap still to report its whole state (`WANT_INITIAL`) reports that instead.
            let _ = h
                .census_want
                .fetch_update(Release, Relaxed, |w| Some(number | (w & WANT_INITIAL)));
            h.event_end.store(ptr::null_mut(), Relaxed);
        }
    });
}

/// Counts an event as lost, and why; the count is recorded with the next event that fits.
///
/// # Safety
/// `heap` is the calling thread's heap.
unsafe fn lose(heap: *mut Heap, why: u16) {
    // SAFETY: owner-only fields.
    unsafe {
        (*heap).dropped += 1;
        (*heap).drop_reasons |= why;
        crate::stacks::lost_events(heap);
    }
}

/// Sends a buffer to the collector; waits for room in lossless mode. False if not sent (live
/// mode with the channel full, or the hook stopped).
#[cfg(feature = "hook")]
fn send(buf: *mut EventBuffer) -> bool {
    // SeqCst, as `close_channel`'s store and load: either it sees this thread sending, or this
    // thread sees the channel closed.
    SENDING.fetch_add(1, SeqCst);
    let sent = send_on(CHANNELS.load(SeqCst), buf);
    SENDING.fetch_sub(1, Release);
    sent
}

#[cfg(feature = "hook")]
fn send_on(ch: *mut Channels, buf: *mut EventBuffer) -> bool {
    if ch.is_null() {
        return false;
    }
    // SAFETY: channels are leaked when made and never freed.
    let ch = unsafe { &*ch };
    // `Some(sent)` once it is decided; `None` while the channel is full and the thread should
    // wait for the collector.
    let attempt = || match ch.full_tx.try_send(BufferPtr(buf)) {
        Ok(()) => {
            crate::channel_wait::sent();
            Some(true)
        }
        Err(crossbeam_channel::TrySendError::Full(_))
            if LOSSLESS.load(Relaxed)
                && ENABLED.load(Relaxed)
                && !crate::collector::on_collector_thread() =>
        {
            None
        }
        Err(_) => Some(false),
    };
    // The collector is behind: spin briefly, then sleep until it has made room (see
    // `channel_wait`).
    for _ in 0..16 {
        if let Some(sent) = attempt() {
            return sent;
        }
        core::hint::spin_loop();
    }
    crate::channel_wait::wait_for_room(attempt)
}

#[cfg(not(feature = "hook"))]
fn send(_buf: *mut EventBuffer) -> bool {
    false
}

/// An empty buffer for `heap`: a recycled one, or fresh OS memory.
///
/// # Safety
/// `heap` is the calling thread's heap.
unsafe fn take_empty_buffer(heap: *mut Heap) -> *mut EventBuffer {
    let buf = any_empty_buffer();
    #[cfg(feature = "hook")]
    catch_up_clock();
    if !buf.is_null() {
        // SAFETY: the buffer is ours alone until we publish it in the heap; the heap is ours.
        unsafe {
            (*buf).len.store(0, Relaxed);
            (*buf).drained = 0;
            (*buf).heap_id = (*heap).id;
            (*buf).seq = (*heap).buffers_taken;
            (*heap).buffers_taken = (*heap).buffers_taken.wrapping_add(1);
        }
    }
    buf
}

/// An empty buffer, recycled or fresh from the OS (null when out of memory), not numbered: for
/// [`take_empty_buffer`], and for the buffers a heap keeps to itself (`spill_more`,
/// [`PartSnapshot`]).
fn any_empty_buffer() -> *mut EventBuffer {
    let buf = pop_empty();
    if buf.is_null() {
        os::map_internal_populated(BUFFER_BYTES).cast::<EventBuffer>()
    } else {
        buf
    }
}

/// Returns a buffer the collector is done with: kept for reuse, or unmapped.
pub(crate) fn release_buffer(buf: BufferPtr) {
    if !push_empty(buf.0) {
        // SAFETY: the collector owns the buffer and nobody else references it.
        unsafe { os::unmap_internal(buf.0.cast(), BUFFER_BYTES) };
    }
}

/// Sends the calling thread's partly filled buffer (thread exit, process exit).
///
/// # Safety
/// `heap` is the calling thread's heap.
pub(crate) unsafe fn flush_thread(heap: *mut Heap) {
    // SAFETY: the owner hands its buffer over; afterwards the heap has none.
    unsafe {
        let want = (*heap).census_want.load(Acquire);
        if want != (*heap).census_done
            && (*heap).traced.load(Relaxed)
            && enabled()
            && !IN_HOOK.with(Cell::get)
        {
            // It made no allocation since a census was asked for: its part now, at its end.
            owed_part(heap, want);
        }
        let mut buf = (*heap).events.load(Relaxed);
        if buf.is_null() {
            return;
        }
        // The send may allocate: the channel's first wake-up of the collector from a thread that
        // never used it gives the thread its handle (`std::thread::current`), inside the
        // channel's lock. Reported from in there, that allocation's event waited on the same
        // lock for ever (a program recorded with a census every 2 ms hung at exit, in
        // `shutdown`): it is spilled instead, as any nested event, and goes in a buffer of its
        // own, sent after (by then the thread has its handle, so that send allocates nothing).
        // (Left in a buffer the thread never sent, it made the last census count a block the
        // trace never allocated.)
        IN_HOOK.with(|h| h.set(true));
        for _ in 0..2 {
            seal(heap, buf);
            // Still the heap's buffer while it is sent, as `next_buffer` sends one: a drain
            // meanwhile takes its events. Left out of every heap before its send, an ending
            // thread's last events could reach the collector milliseconds after it had passed
            // their time on, behind the events of the thread that took its segments over
            // (attached with a census every 2 ms, one heap part in 1 recording of 24 showed
            // pages whose frees the model had not yet been given).
            let sent = send(buf);
            detach(heap);
            if !sent {
                // The collector is full (live mode) or stopping: the events are lost. A drain
                // may be reading the buffer (it reads a heap's current buffer under the heap
                // list lock, which an exiting thread does not take to send it), so while the
                // collector runs only the collector may unmap or reuse it.
                if collecting() {
                    ORPHANS.lock().push(buf);
                } else {
                    os::unmap_internal(buf.cast(), BUFFER_BYTES);
                }
                break;
            }
            if (*heap).spill_len == 0 && (*heap).spill_more.is_null() {
                break;
            }
            attach(heap, take_empty_buffer(heap));
            // Writes the spilled events, or counts them lost if there is no buffer.
            put(heap, None);
            buf = (*heap).events.load(Relaxed);
            if buf.is_null() {
                for _ in 0..(*heap).spill_len {
                    lose(heap, drop_reason::NO_BUFFER);
                }
                (*heap).spill_len = 0;
                drop_spill_more(heap, drop_reason::NO_BUFFER);
                break;
            }
        }
        // Anything spilled by the last send past its slots goes with the heap's next buffer if
        // there is one; the overflow buffer itself is not kept past the thread's end.
        drop_spill_more(heap, drop_reason::NESTED);
        IN_HOOK.with(|h| h.set(false));
    }
}

// ---------------------------------------------------------------------------------------------
// What the allocator calls (each one a single branch when the hook is off)

/// A block was freed; `flags` says how (local, cross-thread, delayed). The caller reports only
/// frees into pages the trace knows (`Segment::traced`); an untraced thread's such free is
/// reported too ([`emit_foreign`]): the model would otherwise miss a block going.
///
/// # Safety
/// Called on the freeing thread.
#[inline]
pub(crate) unsafe fn on_free(p: *mut u8, flags: u8) {
    let mut heap = heap::default_heap();
    let made = heap == heap::EMPTY_HEAP_PTR;
    if made {
        // A thread that frees before it ever allocated, or after its exit (the C library's
        // cleanup): give it a heap so the free is seen; after exit, only for this free.
        heap = crate::init::thread_init();
        if heap.is_null() {
            return;
        }
    }
    let ev: Event = schema::Free {
        ptr: p as u64,
        flags,
    }
    .into();
    // SAFETY: the calling thread's heap.
    unsafe {
        if (*heap).traced.load(Relaxed) {
            emit(heap, ev);
        } else {
            emit_foreign(heap, ev);
        }
        if made {
            crate::init::end_if_late(heap);
        }
    }
}

/// Records the calling thread's name (`prctl(PR_GET_NAME)`: a system call, no allocation).
///
/// # Safety
/// `heap` is the calling thread's heap.
pub(crate) unsafe fn emit_thread_name(heap: *mut Heap) {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let len = name.iter().position(|&b| b == 0).unwrap_or(16);
    let (text_lo, text_hi) = Event::pack_text(&name[..len]);
    // SAFETY: forwarded.
    unsafe {
        emit(
            heap,
            schema::ThreadName {
                text_lo,
                text_hi,
                heap: (*heap).id,
                flags: 0,
            },
        );
    };
}

/// The `ThreadStart` of `heap`.
///
/// # Safety
/// `heap` is a live heap.
pub(crate) unsafe fn thread_start(heap: *mut Heap) -> schema::ThreadStart {
    // SAFETY: forwarded.
    unsafe {
        schema::ThreadStart {
            os_tid: (*heap).os_tid as u64,
            heap: (*heap).id,
            flags: 0,
        }
    }
}

/// A user marker, e.g. `heaplens_alloc::hook::mark("phase 2")`: appears on the viewer's timeline.
/// Labels longer than 16 bytes take several events.
pub fn mark(label: &str) {
    if !enabled() {
        return;
    }
    let bytes = label.as_bytes();
    let mut chunks = bytes.chunks(16).peekable();
    if chunks.peek().is_none() {
        emit_current(schema::Mark::default());
    }
    while let Some(chunk) = chunks.next() {
        let (text_lo, text_hi) = Event::pack_text(chunk);
        let more = if chunks.peek().is_some() {
            flags::MORE
        } else {
            0
        };
        emit_current(schema::Mark {
            text_lo,
            text_hi,
            flags: more,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The collector's side: drain and census

/// In the child of a `fork()`, before recording restarts there: the events the threads had
/// buffered belong to the parent's recording (its collector takes them), so every heap lets go
/// of its buffer (left mapped, unused), and the buffer lists, which a thread that did not come
/// along may have held locked, start empty.
#[cfg(feature = "hook")]
pub(crate) fn after_fork_child() {
    // The parent's channel, as it was at the fork (perhaps with a lock held by a thread that did
    // not come along), and its senders: the child's recording makes its own.
    #[cfg(feature = "hook")]
    {
        KEPT.store(ptr::null_mut(), Release);
        SENDING.store(0, Release);
    }
    crate::init::for_each_heap(|heap: &Heap| {
        heap.events.store(ptr::null_mut(), Release);
        heap.event_end.store(ptr::null_mut(), Relaxed);
        heap.event_cursor.store(ptr::null_mut(), Release);
    });
    for list in [&EMPTY, &ORPHANS] {
        list.force_unlock();
        let mut l = list.lock();
        l.top = ptr::null_mut();
        l.len = 0;
    }
}

/// Calls `f` with every live heap's current buffer (null for none). Collector thread only.
pub(crate) fn current_buffers(mut f: impl FnMut(*mut EventBuffer)) {
    crate::init::for_each_heap(|heap: &Heap| f(heap.events.load(Acquire)));
}

/// Copies the not yet taken events of every live heap's current buffer to `f(heap_id, os_tid,
/// traced, (buffer seq, index of the first event), events)` (an untraced heap has events too:
/// its frees into traced pages). Collector thread only.
///
/// Returns the time of the oldest census part a heap is reading and writing (see
/// `Heap::part_time`), if any: its events may not be published yet, and none later may be
/// passed on before them. Read before the heap's buffer, so a part it does not see was either
/// published before the buffer is read, or is stamped after the clock was read for this drain
/// (see `hook::part_clock`).
pub(crate) fn drain(mut f: impl FnMut(u32, i32, bool, (u32, u32), &[Event])) -> Option<u64> {
    let mut oldest_part: Option<u64> = None;
    crate::init::for_each_heap(|heap: &Heap| {
        let part = heap.part_time.load(SeqCst);
        if part != 0 {
            oldest_part = Some(oldest_part.map_or(part, |o| o.min(part)));
        }
        let traced = heap.traced.load(Relaxed);
        let mut f = |order, events: &[Event]| f(heap.id, heap.os_tid, traced, order, events);
        let buf = heap.events.load(Acquire);
        if buf.is_null() {
            f((0, 0), &[]);
            return;
        }
        // The owner publishes events by moving the heap's cursor on. Read after the buffer, it
        // may already point into the owner's next buffer (or be null): then this buffer was
        // sent, and its events come through the channel.
        // SAFETY: the buffer is mapped (see below).
        let first = unsafe { first_slot(buf) };
        let at = heap.event_cursor.load(Acquire);
        let Some(published) = (at as usize)
            .checked_sub(first as usize)
            .map(|bytes| bytes / EVENT_SIZE)
            .filter(|&n| n <= BUFFER_EVENTS)
        else {
            f((0, 0), &[]);
            return;
        };
        // SAFETY: the heap list lock keeps the heap alive, and its current buffer too: the
        // collector hands a buffer back only once no heap names it (`release_retired`), even
        // when its thread has already sent it; `published` events are written and visible.
        unsafe {
            let (from, n) = (*buf).take_upto(published);
            f(((*buf).seq, from as u32), &(&(*buf).events)[from..n]);
        }
    });
    oldest_part
}

/// Whether the in-use pages of `s` belong to an untraced heap (a segment's pages all belong to
/// its owner's heap, or to none when abandoned).
fn owned_by_untraced(s: &Segment) -> bool {
    (0..s.page_count())
        .map(|i| s.page(i))
        .find(|p| p.is_in_use())
        .map(crate::page::Page::heap)
        // SAFETY: a page's heap pointer is live while the page is in use by it.
        .is_some_and(|h| !h.is_null() && unsafe { !(*h).traced.load(Relaxed) })
}

/// A census: every in-use page of a traced (or abandoned) heap, as `CensusBegin`, a
/// `CensusPage`/`CensusPage2` pair per page and `CensusEnd`, appended to `out`. Reads only atomics
/// and constant page geometry, holding the segment registry lock.
pub fn census(number: u32, initial: bool, out: &mut impl Extend<Event>) {
    census_of(number, initial, |_| true, out);
}

/// [`census`] of the pages whose owner (heap id, 0: abandoned) `keep` accepts: the other pages
/// are neither read nor listed.
fn census_of(number: u32, initial: bool, keep: impl Fn(u32) -> bool, out: &mut impl Extend<Event>) {
    let t = now();
    // Nothing may allocate while the registry lock is held (a new segment would wait for it, on
    // this very thread): room for every page is reserved first, with slack for segments that
    // appear meanwhile; a census that still runs out of room says so (`flags::PARTIAL`).
    let room = (segment_map::count() + 64) * (1 + 2 * crate::SMALL_PAGES_PER_SEGMENT);
    let mut pages: Vec<Event> = Vec::with_capacity(room);
    let mut partial = false;
    segment_map::for_each(|s: &Segment| {
        if pages.len() + 1 + 2 * s.page_count() > pages.capacity() {
            partial = true;
            return;
        }
        if owned_by_untraced(s) || !s.traced.load(Relaxed) {
            // An untraced thread's (the collector's), or abandoned by one: nothing about it is
            // recorded (a traced thread that takes it over reports it, `adopt_segment`).
            return;
        }
        pages.push(census_segment_event(s, t));
        for i in 0..s.page_count() {
            let page = s.page(i);
            if !page.is_in_use() {
                continue;
            }
            let heap = page.heap();
            let owner = if heap.is_null() {
                0
            } else {
                // SAFETY: a page's heap pointer is live while the page is in use by it (a heap
                // abandons its pages, clearing the pointer, before it goes away).
                unsafe {
                    if !(*heap).traced.load(Relaxed) {
                        continue;
                    }
                    (*heap).id
                }
            };
            if keep(owner) {
                pages.extend(census_page_events(page, owner, t));
            }
        }
    });
    let n = pages
        .iter()
        .filter(|e| e.kind == EventKind::CensusPage as u8)
        .count();
    let begin = schema::CensusBegin {
        pages: n as u64,
        number,
        flags: if partial { flags::PARTIAL } else { 0 } | if initial { flags::INITIAL } else { 0 },
    }
    .into_event()
    .at(t);
    out.extend(core::iter::once(begin));
    out.extend(pages);
    out.extend(core::iter::once(
        schema::CensusEnd { number, flags: 0 }.into_event().at(t),
    ));
}

/// Whether a thread the kernel describes so (see [`os::thread_activity`]) is asleep: in state
/// `S`, or gone (no thread of the process has that id: the heap of a thread that did not come
/// along through a `fork`, which nothing changes any more).
fn asleep(activity: &Option<(u8, u64, u64)>) -> bool {
    activity.is_none_or(|(state, _, _)| state == b'S')
}

/// Whether some thread is sending a buffer ([`send`], perhaps asleep there waiting for room) or
/// ending ([`pass_exit_hold`] to the end of its exit): events it has written may be on their
/// way to the collector. While one is, the first census of an attach is not read (see
/// [`hold_exits`]), and no heap counts as idle (see [`idle_heap_parts`]: read for a threadex
/// thread that ended as a detach began, an empty part reached the trace before its last 39
/// buffers, and 61 pages it had abandoned disagreed, in 1 attached recording of 24).
pub(crate) fn threads_in_flight() -> bool {
    threads_sending() || EXITING.load(SeqCst) != 0
}

/// Whether a heap's thread was idle throughout a reading of its pages: asleep at the start,
/// the same state and switch counts at the end (`before`, `after`: see [`os::thread_activity`]),
/// and no thread was sending a buffer or ending meanwhile (`in_flight`).
fn idle_throughout<T: PartialEq>(asleep: bool, before: &T, after: &T, in_flight: bool) -> bool {
    asleep && before == after && !in_flight
}

/// Whether some thread is in [`send`] (perhaps asleep there, waiting for room).
fn threads_sending() -> bool {
    #[cfg(feature = "hook")]
    {
        SENDING.load(SeqCst) != 0
    }
    #[cfg(not(feature = "hook"))]
    {
        false
    }
}

/// The census parts (`HEAP_PART`, census `number`) of the traced heaps not in `reported` whose
/// threads are idle, read by the collector from the segments as [`census`] reads them: one
/// `(heap id, events)` a heap, an empty part for a heap with no page in use. Returns the heaps
/// left out because their thread may have run while their pages were read.
///
/// Idle means asleep in the kernel (state `S`) before and after the reading, with no context
/// switch between: a thread that woke meanwhile, even if it slept again, switched at least
/// once, and one preempted in the middle of an allocator call is runnable, not asleep. So no
/// part is read half-way through a change. The allocator sleeps in one place, though: waiting
/// for room in the collector's channel (lossless mode), with a full buffer of events the
/// collector has not taken, which its pages are already past. While any thread is sending, no
/// heap counts as idle (seen on a loaded machine: two heaps' parts read 10-14 ms past events
/// that came after them, 443 differences in the last census of an attach); nor while one is
/// ending ([`threads_in_flight`]).
pub(crate) fn idle_heap_parts(
    number: u32,
    reported: &[u32],
    out: &mut Vec<(u32, Vec<Event>)>,
) -> Vec<u32> {
    // The ids first, with room reserved: nothing allocates while the heap list's lock is held.
    let mut heaps: Vec<(u32, i32)> = Vec::with_capacity(4096);
    crate::init::for_each_heap(|h| {
        if h.traced.load(Relaxed) && !reported.contains(&h.id) && heaps.len() < heaps.capacity() {
            heaps.push((h.id, h.os_tid));
        }
    });
    let activity = |heaps: &[(u32, i32)]| -> Vec<Option<(u8, u64, u64)>> {
        heaps
            .iter()
            .map(|&(_, tid)| crate::os::thread_activity(tid))
            .collect()
    };
    let in_flight_before = threads_in_flight();
    let before = activity(&heaps);
    let sleeping: Vec<u32> = heaps
        .iter()
        .zip(&before)
        .filter(|(_, a)| asleep(a))
        .map(|(&(id, _), _)| id)
        .collect();
    let mut all = Vec::new();
    census_of(number, false, |owner| sleeping.contains(&owner), &mut all);
    let after = activity(&heaps);
    let in_flight = in_flight_before || threads_in_flight();
    let mut busy = Vec::new();
    let mut ids = Vec::new();
    for ((&(id, _), b), a) in heaps.iter().zip(&before).zip(&after) {
        if idle_throughout(sleeping.contains(&id), b, a, in_flight) {
            ids.push(id);
        } else {
            busy.push(id);
        }
    }
    let t = all.first().map_or_else(now, |e| e.time);
    for id in ids {
        let mut pages = Vec::new();
        for pair in all
            .windows(2)
            .filter(|w| w[0].kind == EventKind::CensusPage as u8)
        {
            if pair[1].kind == EventKind::CensusPage2 as u8
                && schema::CensusPage2::from_event(&pair[1]).owner == u64::from(id)
            {
                pages.extend_from_slice(pair);
            }
        }
        let mut events = Vec::with_capacity(pages.len() + 2);
        events.push(
            schema::CensusBegin {
                pages: (pages.len() / 2) as u64,
                number,
                flags: flags::HEAP_PART,
            }
            .into_event()
            .at(t),
        );
        events.extend(pages);
        events.push(
            schema::CensusEnd {
                number,
                flags: flags::HEAP_PART,
            }
            .into_event()
            .at(t),
        );
        out.push((id, events));
    }
    busy
}

/// Segment events carry the segment base.
#[inline]
pub(crate) fn segment_addr(s: *const Segment) -> u64 {
    s as u64
}

#[cfg(all(test, feature = "hook"))]
mod tests {
    use super::*;

    #[test]
    fn no_heap_is_idle_while_a_thread_waits_to_send() {
        // Asleep throughout, with the same switch counts: idle, unless some thread is in
        // `send`, perhaps asleep there waiting for room with events the collector lacks.
        let activity = Some((b'S', 7u64, 3u64));
        assert!(idle_throughout(true, &activity, &activity, false));
        assert!(!idle_throughout(false, &activity, &activity, false));
        assert!(!idle_throughout(
            true,
            &activity,
            &Some((b'S', 8, 3)),
            false
        ));
        SENDING.fetch_add(1, SeqCst);
        let sending = threads_sending();
        SENDING.fetch_sub(1, SeqCst);
        assert!(sending);
        assert!(!idle_throughout(true, &activity, &activity, sending));
    }

    /// No heap is idle while a thread ends: its last buffers may still be on their way.
    #[test]
    fn no_heap_is_idle_while_a_thread_ends() {
        let ending = pass_exit_hold();
        assert!(threads_in_flight());
        drop(ending);
    }

    /// A heap's census part under way (read, not yet published) is what the collector's
    /// watermark waits for, as a drain reports it; a finished one is not.
    #[test]
    fn a_drain_reports_the_oldest_census_part_under_way() {
        // This thread's own heap (no other heap has a part under way: no unit test of this
        // crate starts a recording). With no recording it has no buffer: nothing is drained.
        // SAFETY: a block of heaplens, freed once.
        unsafe { crate::free::free(crate::alloc::malloc(16)) };
        let heap = heap::default_heap();
        // SAFETY: the calling thread's live heap; `part_time` is an atomic.
        let part_time = unsafe { &(*heap).part_time };
        part_time.store(42, SeqCst);
        assert_eq!(drain(|_, _, _, _, _| {}), Some(42));
        part_time.store(0, SeqCst);
        assert_eq!(drain(|_, _, _, _, _| {}), None);
    }

    /// A thread that ends while exits are held (the first census of an attach is read) keeps
    /// its heap whole until they are let go: its end waits for the release.
    #[test]
    fn a_thread_ending_while_exits_are_held_waits_for_their_release() {
        use std::sync::atomic::AtomicBool;
        use std::time::Duration;
        static RELEASED: AtomicBool = AtomicBool::new(false);
        // Other tests' threads end freely meanwhile: wait for them, as the collector does.
        hold_exits(true);
        while EXITING.load(SeqCst) != 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let ending = std::thread::spawn(|| {
            // A heap of heaplens's own, which the thread's end takes apart.
            // SAFETY: a block of heaplens, freed once.
            unsafe { crate::free::free(crate::alloc::malloc(64)) };
        });
        let releaser = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            RELEASED.store(true, SeqCst);
            hold_exits(false);
        });
        // `join` returns once the thread is past its end (its key destructors included).
        ending.join().unwrap();
        let released = RELEASED.load(SeqCst);
        releaser.join().unwrap();
        assert!(released, "the thread ended while exits were held");
        assert_eq!(
            EXITING.load(SeqCst),
            0,
            "no thread counts as ending afterwards"
        );
    }
}
