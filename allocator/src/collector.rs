//! The collector: the thread on the consumer side of the hook's channel.
//!
//! It receives full event buffers, drains partly filled ones every 2 ms (so idle threads' events
//! arrive), advances the hook's coarse clock every millisecond, merges the threads' streams by
//! time (holding events back for 2 ms so a late buffer can still slot in), names threads, takes
//! a census on request or periodically, and hands the result to a [`Sink`] as batches
//! ([`BatchRef`]s: the events in place). At shutdown it drains everything, so events still
//! buffered at exit are delivered.
//!
//! The collector runs on a thread of its own started with `pthread_create` and flagged untraced
//! before its first allocation: what it allocates is never recorded. It never frees a block that
//! a traced thread allocated (the sink and the state handed to it are leaked on purpose), so the
//! traced heap's accounting stays exact.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};

use crate::batch::{Batch, BatchRef, Message};
use crate::event::{Event, flags};
use crate::hook::{self, BufferPtr};
use crate::schema;

/// How the collector runs.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Record mode: threads wait for room rather than drop events. Live mode (false) drops and
    /// reports the count.
    pub lossless: bool,
    /// Take a census this often (0: only when asked, and at shutdown).
    pub census_every_ms: u64,
    /// Full buffers (64 KiB each) that may wait in the channel.
    pub channel_buffers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lossless: true,
            census_every_ms: 1000,
            channel_buffers: 64,
        }
    }
}

/// What the collector hands its sink.
pub enum Handed<'a> {
    /// A batch, in the order of the stream.
    Batch(BatchRef<'a>),
    /// The collector has handed over everything it holds for now and is about to wait: a sink
    /// that gathers batches to send them together sends what it has, at once unless `busy`.
    /// `busy`: buffers are coming in and the collector only pauses before taking the next ones
    /// (a sink may hold what it gathered a little longer, and send it with them).
    Idle {
        /// Buffers are coming in.
        busy: bool,
    },
    /// The end of the stream.
    End,
}

/// Where batches go: returns false to stop (the peer went away).
pub type Sink = Box<dyn FnMut(Handed<'_>) -> bool + Send>;

static RUNNING: AtomicBool = AtomicBool::new(false);
static SHUTDOWN: AtomicBool = AtomicBool::new(false);
static FINISHED: AtomicBool = AtomicBool::new(false);
/// The collector took its first census.
static STARTED: AtomicBool = AtomicBool::new(false);
static CENSUS_REQUESTS: AtomicU64 = AtomicU64::new(0);
static CENSUS_DONE: AtomicU64 = AtomicU64::new(0);
/// The number of the last census taken: numbers go on across recordings of one process (an
/// attached program is recorded again and again), so a heap never mistakes a new census for one
/// it already reported.
static LAST_CENSUS: AtomicU32 = AtomicU32::new(0);

/// Errors starting the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// The hook was compiled out.
    NotCompiled,
    /// A collector already runs in this process.
    AlreadyRunning,
    /// The collector thread could not be created.
    Thread,
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NotCompiled => "the heaplens hook is not compiled in",
            Self::AlreadyRunning => "the heaplens collector is already running",
            Self::Thread => "could not start the heaplens collector thread",
        })
    }
}

impl std::error::Error for StartError {}

struct State {
    config: Config,
    sink: Sink,
    full_rx: Receiver<BufferPtr>,
    /// Made by an untraced thread (an attach session's), so the collector frees it as it ends:
    /// freeing a traced thread's blocks would change what the program's heap holds.
    free_at_end: bool,
    /// Started by [`start_while_running`].
    late: bool,
}

/// [`start`] in a program that has run for a while with the hook off (`heaplens attach`): after
/// the first census, which it reads while the threads run, every heap reports its own state at
/// its next allocation, exactly, for the model to take over (`hook::request_initial_parts`).
pub fn start_while_running(config: Config, sink: Sink) -> Result<(), StartError> {
    start_recording(config, sink, true)
}

/// Starts recording: creates the channels, starts the collector thread, switches the hook on.
pub fn start(config: Config, sink: Sink) -> Result<(), StartError> {
    start_recording(config, sink, false)
}

/// [`start`], or with `late` [`start_while_running`].
fn start_recording(config: Config, sink: Sink, late: bool) -> Result<(), StartError> {
    if !hook::COMPILED {
        return Err(StartError::NotCompiled);
    }
    if RUNNING.swap(true, AcqRel) {
        return Err(StartError::AlreadyRunning);
    }
    let full_rx = hook::open_channel(config.channel_buffers.max(2));
    let state = Box::into_raw(Box::new(State {
        config,
        sink,
        full_rx,
        free_at_end: hook::thread_untraced(),
        late,
    }));
    // A new recording's clock starts at zero (an earlier one in this process left it running).
    hook::reset_clock();
    // On before the collector's first census, so nothing happens unseen in between.
    hook::set_enabled(true, config.lossless);
    let mut thread: libc::pthread_t = 0;
    // SAFETY: `collector_main` takes ownership of `state`; the attributes are defaults.
    let rc = unsafe {
        libc::pthread_create(
            &raw mut thread,
            core::ptr::null(),
            collector_main,
            state.cast(),
        )
    };
    if rc != 0 {
        hook::set_enabled(false, false);
        RUNNING.store(false, Release);
        return Err(StartError::Thread);
    }
    // SAFETY: the thread runs detached; nobody joins it.
    unsafe { libc::pthread_detach(thread) };
    // Return once the first census is taken, so it describes the state recording starts from.
    wait_until(|| STARTED.load(Acquire) || FINISHED.load(Acquire));
    Ok(())
}

/// After [`shutdown`]: lets [`start`] run again (`heaplens attach` records a process again and
/// again). False while a collector still runs.
pub(crate) fn restartable() -> bool {
    if !FINISHED.load(Acquire) {
        return !RUNNING.load(Acquire);
    }
    STARTED.store(false, Release);
    SHUTDOWN.store(false, Release);
    FINISHED.store(false, Release);
    RUNNING.store(false, Release);
    true
}

/// In the child of a `fork()`: the collector thread did not come along, so the parent's
/// recording is over there; the state goes back to "not running", so that `shutdown` at the
/// child's exit does not wait for it and the child can start a recording of its own
/// (`wire::after_fork_child`, with `--follow-fork`).
pub(crate) fn after_fork_child() {
    hook::set_enabled(false, false);
    hook::after_fork_child();
    for flag in [&SHUTDOWN, &FINISHED, &STARTED] {
        flag.store(false, Release);
    }
    CENSUS_REQUESTS.store(0, Release);
    CENSUS_DONE.store(0, Release);
    RUNNING.store(false, Release);
}

/// Starts recording into a channel (the in-process transport: a viewer in the same process
/// subscribes): [`Message::Batch`]es, then [`Message::End`]. The channel holds `capacity`
/// batches. When the subscriber falls behind, batches
/// are dropped, and the count arrives as a `Dropped` event (heap 0) with the next batch that
/// fits, never silently. Dropping the receiver stops recording.
pub fn subscribe(config: Config, capacity: usize) -> Result<Receiver<Message>, StartError> {
    subscribe_with(config, capacity, false)
}

/// As [`subscribe`], but nothing is dropped: when the channel is full the collector waits for
/// the subscriber, and (with `config.lossless`) the traced threads wait for the collector. For a
/// viewer in the same process whose model must agree with every census (the demo): the
/// subscriber must keep reading, or the traced threads stop. Dropping the receiver stops
/// recording, as with [`subscribe`].
pub fn subscribe_lossless(
    config: Config,
    capacity: usize,
) -> Result<Receiver<Message>, StartError> {
    subscribe_with(config, capacity, true)
}

fn subscribe_with(
    config: Config,
    capacity: usize,
    wait: bool,
) -> Result<Receiver<Message>, StartError> {
    let (tx, rx) = bounded(capacity.max(1));
    let mut dropped = 0u64;
    let sink: Sink = Box::new(move |handed| {
        let b = match handed {
            Handed::Batch(b) => b,
            Handed::Idle { .. } => return true,
            Handed::End => return tx.send(Message::End).is_ok(),
        };
        if wait {
            return tx.send(Message::Batch(b.to_batch())).is_ok();
        }
        if dropped > 0 {
            let note = schema::Dropped {
                lost: dropped,
                reasons: crate::event::drop_reason::SUBSCRIBER,
                flags: 0,
            }
            .into_event()
            .at(hook::now());
            match tx.try_send(Message::Batch(Batch {
                heap: 0,
                events: vec![note],
            })) {
                Ok(()) => dropped = 0,
                Err(crossbeam_channel::TrySendError::Full(_)) => {
                    dropped += b.events.len() as u64;
                    crate::stacks::invalidate_tables();
                    return true;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return false,
            }
        }
        match tx.try_send(Message::Batch(b.to_batch())) {
            Ok(()) => true,
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                dropped += b.events.len() as u64;
                crate::stacks::invalidate_tables();
                true
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
        }
    });
    start(config, sink)?;
    Ok(rx)
}

/// Whether a collector runs.
pub fn is_running() -> bool {
    RUNNING.load(Acquire) && !FINISHED.load(Acquire)
}

/// Takes a census now: every event recorded before the call is delivered before it. Waits for it
/// (at most 5 s). Call it when the threads you care about are quiet, and the census agrees with
/// the model rebuilt from the events exactly.
pub fn census_now() -> bool {
    if !is_running() {
        return false;
    }
    // Our own buffered events go first.
    // SAFETY: the default heap is this thread's.
    unsafe { hook::flush_thread(crate::heap::default_heap()) };
    let target = CENSUS_REQUESTS.fetch_add(1, AcqRel) + 1;
    wait_until(|| CENSUS_DONE.load(Acquire) >= target || FINISHED.load(Acquire))
}

/// Stops recording: switches the hook off, delivers every buffered event and a last census, and
/// ends the sink. Waits at most 5 s.
pub fn shutdown() {
    if !is_running() {
        return;
    }
    // This thread's last events go into the channel before the collector hears of the shutdown:
    // it takes what the channel holds once, then the final census. Sent the other way round, the
    // buffer could arrive after that, and the program's last frees and allocations (at exit,
    // after its threads are joined) were missing while the census showed their effect: 5 of 260
    // recordings of alloc_workload.c ended with the model and the census disagreeing.
    // SAFETY: the default heap is this thread's.
    unsafe { hook::flush_thread(crate::heap::default_heap()) };
    SHUTDOWN.store(true, Release);
    wait_until(|| FINISHED.load(Acquire));
}

/// Set by [`shutdown_while_running`] for the shutdown it asks for.
static RUNS_ON: AtomicBool = AtomicBool::new(false);

/// How long the last census of a program that runs on waits for its heaps' parts: a thread
/// that allocates reports within microseconds; one that does not is not waited for.
const LAST_PARTS_WAIT: Duration = Duration::from_millis(20);
/// How long [`Collector::last_parts`] waits in all for threads that are not idle.
const LAST_PARTS_MAX: Duration = Duration::from_millis(500);

/// [`shutdown`] while the program runs on (`heaplens attach` detaches): the last census is
/// taken by the heaps in their own event order, while the hook is still on, as the censuses
/// mid-run are, rather than read by the collector while the threads change their pages (a
/// reading that caught them between a change and its event: 282 to 1236 differences on
/// alloc_workload.c detached after 2 s). A heap that makes no allocation meanwhile is read by
/// the collector if its thread is asleep (see `Collector::last_parts`).
pub fn shutdown_while_running() {
    RUNS_ON.store(true, Release);
    shutdown();
    RUNS_ON.store(false, Release);
}

/// Waits (at most 5 s) for `done`, looking every 100 us: a process pays this wait when
/// recording starts and at its exit, which with `--follow-fork` is at every `fork()` (polling
/// every millisecond cost each child about a millisecond more at both ends).
fn wait_until(done: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    done()
}

std::thread_local! {
    static ON_COLLECTOR: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Whether the calling thread is the collector.
pub(crate) fn on_collector_thread() -> bool {
    ON_COLLECTOR.with(core::cell::Cell::get)
}

extern "C" fn collector_main(arg: *mut libc::c_void) -> *mut libc::c_void {
    hook::TRACE_CHOICE.with(|u| u.set(2));
    ON_COLLECTOR.with(|c| c.set(true));
    // Make this thread's (untraced) heap now: its first allocation must not happen while a lock
    // that thread initialisation takes is held (the heap list lock, during a drain).
    drop(std::hint::black_box(Vec::<u8>::with_capacity(16)));
    // SAFETY: `start` passed a leaked Box<State> and nothing else uses it.
    let state = unsafe { &mut *arg.cast::<State>() };
    let _ = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
        Collector::new(state).run();
    }));
    hook::set_enabled(false, false);
    // A thread that exits from now on unmaps its buffer rather than sending it to nobody.
    hook::close_channel(&state.full_rx);
    if state.free_at_end {
        // SAFETY: `start` made `arg` with Box::into_raw, and the collector is done with it.
        drop(unsafe { Box::from_raw(arg.cast::<State>()) });
    }
    FINISHED.store(true, Release);
    core::ptr::null_mut()
}

pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The CPU time the calling thread has used: what a piece of the collector's work costs, whatever
/// the scheduler did meanwhile.
fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}

/// Events of one heap waiting to be merged.
struct Pending {
    heap: u32,
    chunks: VecDeque<Chunk>,
}

/// A run of events waiting to be merged: part of a full buffer (not copied, and handed back for
/// reuse once its events are passed on), or copied events (a drained, partly filled buffer).
struct Chunk {
    buf: Option<BufferPtr>,
    owned: Vec<Event>,
    pos: usize,
    end: usize,
    /// Where its events were written: (buffer seq, index in the buffer). A heap's chunks are
    /// kept in this order, which is the order its thread emitted them.
    order: (u32, u32),
}

impl Chunk {
    fn events(&self) -> &[Event] {
        match self.buf {
            // SAFETY: a buffer in a chunk is the collector's until it is recycled, and
            // `pos..end` lies within the events its owner published before sending it.
            Some(b) => unsafe { &(&(*b.0).events)[self.pos..self.end] },
            None => &self.owned[self.pos..self.end],
        }
    }
}

impl Pending {
    fn front_time(&self) -> Option<u64> {
        self.chunks
            .front()
            .and_then(|c| c.events().first())
            .map(|e| e.time)
    }

    fn push_owned(&mut self, events: Vec<Event>, order: (u32, u32)) {
        if !events.is_empty() {
            let end = events.len();
            self.push(Chunk {
                buf: None,
                owned: events,
                pos: 0,
                end,
                order,
            });
        }
    }

    /// Queues `chunk` in emission order. Chunks nearly always arrive in order; a drained
    /// current buffer can overtake the full buffer its thread sent just before it.
    fn push(&mut self, chunk: Chunk) {
        let at = self
            .chunks
            .iter()
            .rposition(|c| c.order <= chunk.order)
            .map_or(0, |i| i + 1);
        self.chunks.insert(at, chunk);
    }
}

struct Collector<'a> {
    state: &'a mut State,
    pending: Vec<Pending>,
    index: HashMap<u32, usize>,
    names: HashMap<u32, (i32, String)>,
    t0: u64,
    last_drain: u64,
    /// The time from one drain to the next: [`DRAIN_EVERY`], or more if draining takes long.
    drain_every: u64,
    last_names: u64,
    last_census: u64,
    census_number: u32,
    /// The number of this recording's first census (the initial one).
    first_census: u32,
    census_served: u64,
    /// Every event with an earlier time has been collected (from buffers or the channel).
    safe_until: u64,
    sink_alive: bool,
    scratch: Vec<Event>,
    scratch_seq: u32,
    /// Buffers whose events are passed on, waiting until no heap names them (see `recycle`).
    retired: Vec<BufferPtr>,
    /// While the last census of a program that runs on gathers: its number and the heaps whose
    /// part of it was sent.
    parts_seen: Option<(u32, Vec<u32>)>,
    /// The heaps' current buffers, gathered by `release_retired` (kept for its capacity).
    current: Vec<*mut hook::EventBuffer>,
    /// The modules reported so far.
    modules: crate::module::Reporter,
}

const MS: u64 = 1_000_000;
/// How often the threads' partly filled buffers are drained, at most. Events are passed on only
/// up to the last drain (less [`IN_FLIGHT`]), so this also bounds how long full buffers wait in
/// the merge, and how many a busy thread refills from outside its core's cache: with 10 ms the
/// trees benchmark had 40 MiB of 64 KiB buffers waiting. From 2 ms to 0.5 ms: `alloc_ratios
/// --scale 1`, trees with the hook on against off, 2.03x -> 1.92-1.96x (two runs each), and
/// peak RSS 41 -> 29 MiB.
const DRAIN_EVERY: u64 = MS / 2;
/// A drain visits every thread's heap: with thousands of threads it takes long enough to matter,
/// and the drains then come this many times their own CPU time apart, up to [`DRAIN_EVERY_MAX`].
const DRAIN_SPACING: u64 = 16;
const DRAIN_EVERY_MAX: u64 = 4 * MS;
/// How long the first census of an attach waits at most for ending threads to be done (see
/// `Collector::hold_exits`): an ending thread takes microseconds, unless it waits for room in
/// the channel, which the wait makes.
const SETTLE_EXITS_MAX: Duration = Duration::from_millis(100);

/// How long the collector waits at most for a buffer when none is coming in (it advances the
/// clock, drains and takes censuses between waits).
const IDLE_WAIT_NS: i64 = 1_000_000;

/// How long the collector sleeps between polls while full buffers keep arriving: a busy thread
/// fills about 20 buffers in that time, well within the channel's capacity.
const BUSY_POLL: Duration = Duration::from_micros(200);

/// How far events may be passed on after a collection that began at clock `t` (every event
/// stamped up to it is in hand, but for those being written, [`IN_FLIGHT`]), with a census part
/// stamped `part` still on its way (see `hook::drain`): not to the part, whose
/// pages were read before its events are published.
fn watermark(t: u64, part: Option<u64>) -> u64 {
    let safe = t.saturating_sub(IN_FLIGHT);
    part.map_or(safe, |p| safe.min(p.saturating_sub(1)))
}
/// Margin for events being written while a drain reads their buffer. At 1 ms the buffers waited
/// half as long again (trees with the hook on 1.10-1.19x the time). A quarter of a millisecond
/// first made a census of a busy program attached to disagree with the model in 2 of 9 runs on a
/// loaded machine; both were bugs of their own, now fixed (the detach census read a heap whose
/// thread waited to send as idle: `hook::idle_heap_parts`; an allocation made while a heap's
/// buffer changed landed inside its census part: `hook::heap_census`). Since, 0 census
/// failures in 36 runs under a CPU hog.
const IN_FLIGHT: u64 = MS / 4;

impl<'a> Collector<'a> {
    fn new(state: &'a mut State) -> Self {
        let t0 = monotonic_ns();
        hook::set_clock_origin(t0);
        Self {
            state,
            pending: Vec::new(),
            index: HashMap::new(),
            names: HashMap::new(),
            t0,
            last_drain: 0,
            drain_every: DRAIN_EVERY,
            last_names: 0,
            last_census: 0,
            census_number: LAST_CENSUS.load(Acquire),
            first_census: LAST_CENSUS.load(Acquire) + 1,
            census_served: 0,
            safe_until: 0,
            sink_alive: true,
            scratch: Vec::new(),
            scratch_seq: 0,
            retired: Vec::new(),
            parts_seen: None,
            current: Vec::new(),
            modules: crate::module::Reporter::default(),
        }
    }

    fn now(&self) -> u64 {
        monotonic_ns() - self.t0
    }

    fn run(&mut self) {
        self.start_stacks();
        let late = self.state.late;
        if late {
            self.hold_exits();
        }
        // A first census: the state before recording started (the keyframe a viewer starts from).
        self.collect_all(self.now());
        self.flush(u64::MAX);
        self.census(self.now());
        // The first census goes out now: a program that dies at once leaves it in the trace.
        self.idle(false);
        if late {
            hook::request_initial_parts();
            hook::hold_exits(false);
        }
        STARTED.store(true, Release);
        let mut busy = false;
        loop {
            let first = if busy
                && self.state.full_rx.len() * 4 < self.state.full_rx.capacity().unwrap_or(0)
            {
                // Buffers are coming in: poll rather than wait in `recv`, so that a thread
                // sending one never has to wake the collector (a futex system call for every
                // 2046 events, and the collector's wake-up, on the sending thread's time).
                // Not when the channel is a quarter full already: on a loaded machine the
                // 200 us sleep lasted 5 ms, the channel filled meanwhile and the program
                // waited (2 of its 3.4 s on a binary-trees run at load 11).
                std::thread::sleep(BUSY_POLL);
                None
            } else if busy {
                // Plenty waiting: take it at once.
                None
            } else {
                // Not the channel's own wait (`channel_wait` says why).
                let rx = &self.state.full_rx;
                crate::channel_wait::wait_for_buffers(|| rx.try_recv().ok(), IDLE_WAIT_NS)
            };
            busy = self.take_sent(first);
            let now = self.now();
            hook::set_clock(now);
            if SHUTDOWN.load(Acquire) {
                let runs_on = RUNS_ON.load(Acquire);
                if runs_on {
                    self.last_parts();
                }
                hook::set_enabled(false, false);
                self.finish(!runs_on);
                return;
            }
            let drain_due = now - self.last_drain >= self.drain_every;
            self.check_modules(drain_due);
            if drain_due {
                let cpu = thread_cpu_ns();
                self.collect_all(now);
                let took = thread_cpu_ns().saturating_sub(cpu);
                self.drain_every = (took * DRAIN_SPACING).clamp(DRAIN_EVERY, DRAIN_EVERY_MAX);
            }
            let requested = CENSUS_REQUESTS.load(Acquire);
            let every = self.state.config.census_every_ms * MS;
            if requested > self.census_served {
                // Asked for (`census_now`) at a quiet point: the collector reads every page.
                self.collect_all(now);
                self.flush(u64::MAX);
                self.census(now);
                self.census_served = requested;
                CENSUS_DONE.store(requested, Release);
            } else if every > 0 && now - self.last_census >= every {
                self.heap_census(now);
            }
            // Events are passed on in time order up to the point where every thread's events
            // are known to be in hand: a buffer that arrives later holds only later events.
            self.flush(self.safe_until);
            self.release_retired();
            self.idle(busy);
        }
    }

    /// Before the first census of a recording that starts while the program runs: holds the
    /// threads that begin to end, and waits (a while at most) for those already ending to be
    /// done, and for full buffers on their way (see `hook::hold_exits`).
    fn hold_exits(&mut self) {
        hook::hold_exits(true);
        let until = Instant::now() + SETTLE_EXITS_MAX;
        while hook::threads_in_flight() && Instant::now() < until {
            // Their sends may wait for room in the channel (lossless mode).
            self.take_sent(None);
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// Tells the sink the collector holds nothing more for now (see [`Handed::Idle`]).
    fn idle(&mut self, busy: bool) {
        if self.sink_alive && !(self.state.sink)(Handed::Idle { busy }) {
            // The peer went away: as in `emit`.
            self.sink_alive = false;
            hook::set_enabled(false, false);
        }
    }

    /// Reports the stack mode and the loaded modules, then lets threads report stacks: the
    /// mode and modules come first in the trace (the clock moves on a tick between).
    fn start_stacks(&mut self) {
        // The trace's clock against the machine's: event time `t` is CLOCK_MONOTONIC `t0 + t`,
        // so a viewer on the same machine can tell how far behind the program it is.
        self.scratch.push(
            schema::ClockSync {
                monotonic_ns: self.t0 + hook::now(),
                flags: 0,
            }
            .into_event()
            .at(hook::now()),
        );
        let mode = crate::sample::stack_mode();
        let interval = match mode {
            crate::sample::StackMode::Sampled => crate::sample::sample_interval() as u64,
            _ => 0,
        };
        self.scratch.push(
            schema::StackMode {
                interval,
                mode: mode.code(),
                flags: 0,
            }
            .into_event()
            .at(hook::now()),
        );
        self.modules.update(
            hook::now(),
            &mut self.scratch,
            mode != crate::sample::StackMode::Off,
        );
        self.flush_scratch();
        crate::stacks::calibrate();
        hook::bump_clock();
        crate::stacks::arm(mode != crate::sample::StackMode::Off);
    }

    /// Reports modules loaded or unloaded since the last look (`dlopen`/`dlclose`, or, with
    /// `counters`, the loader's counters moved).
    fn check_modules(&mut self, counters: bool) {
        let asked = crate::module::requested();
        if crate::module::take_changed() | (counters && crate::module::loader_changed()) {
            let rows = crate::sample::stack_mode() != crate::sample::StackMode::Off;
            self.modules.update(hook::now(), &mut self.scratch, rows);
            self.flush_scratch();
        }
        crate::module::served(asked);
    }

    /// The last census of a program that runs on (see [`shutdown_while_running`]): asks the
    /// heaps for their parts, and takes their buffers for [`LAST_PARTS_WAIT`] meanwhile (in
    /// lossless mode a thread waits for room in the channel).
    ///
    /// A heap that reported nothing meanwhile may be idle (its thread waits outside the
    /// allocator, and nothing but cross-thread frees, which a part does not compare, changes its
    /// pages): the collector reads its part from the segments, as the census at start does, and
    /// sends it in the heap's own stream, if its thread was asleep throughout the reading
    /// ([`hook::idle_heap_parts`]). A thread that was not (runnable but not run for
    /// [`LAST_PARTS_WAIT`] on a loaded machine, perhaps in the middle of a `malloc`) is waited
    /// for again, up to [`LAST_PARTS_MAX`] in all; then it has no part.
    fn last_parts(&mut self) {
        self.heap_census(self.now());
        let number = self.census_number;
        let start = std::time::Instant::now();
        let mut reported = Vec::new();
        loop {
            let round = std::time::Instant::now();
            while round.elapsed() < LAST_PARTS_WAIT {
                self.take_sent(None);
                std::thread::sleep(BUSY_POLL);
            }
            reported.extend(self.deliver_all(number));
            let mut parts = Vec::new();
            let busy = hook::idle_heap_parts(number, &reported, &mut parts);
            // What a thread that ended just before the reading sent last goes first (and a
            // heap whose own part came with it keeps that one).
            let own = self.deliver_all(number);
            reported.extend(&own);
            for (heap, events) in parts {
                if own.contains(&heap) {
                    continue;
                }
                self.emit(BatchRef {
                    heap,
                    events: &events,
                });
                reported.push(heap);
            }
            // A thread that ran meanwhile reports its own part at its next allocation; one that
            // does not within the bound sends none (its pages are not compared).
            if busy.is_empty() || start.elapsed() >= LAST_PARTS_MAX {
                break;
            }
        }
    }

    /// Takes every event sent or written so far and passes it on; returns the heaps whose own
    /// part of census `number` was among them.
    fn deliver_all(&mut self, number: u32) -> Vec<u32> {
        self.parts_seen = Some((number, Vec::new()));
        let now = self.now();
        self.collect_all(now);
        self.flush(u64::MAX);
        self.parts_seen.take().map(|(_, r)| r).unwrap_or_default()
    }

    /// Delivers what is left, then (`whole`) a census the collector reads, and ends the sink.
    fn finish(&mut self, whole: bool) {
        crate::stacks::arm(false);
        // Whatever is still in the channel or in the threads' buffers.
        self.take_sent(None);
        let now = self.now();
        self.collect_all(now);
        self.flush(u64::MAX);
        if whole {
            self.census(now);
        }
        CENSUS_DONE.store(CENSUS_REQUESTS.load(Acquire), Release);
        self.release_retired();
        if self.sink_alive {
            (self.state.sink)(Handed::End);
        }
    }

    fn queue(&mut self, heap: u32) -> &mut Pending {
        let i = *self.index.entry(heap).or_insert_with(|| {
            self.pending.push(Pending {
                heap,
                chunks: VecDeque::new(),
            });
            self.pending.len() - 1
        });
        &mut self.pending[i]
    }

    /// Takes `first` (a full buffer already received) and every full buffer waiting in the
    /// channel, and wakes the threads waiting for room if it took any: whether it did. Every
    /// place the collector takes buffers goes through here, so no waiting thread sleeps on
    /// after room was made (at detach, such a thread was taken for idle: `last_parts`).
    fn take_sent(&mut self, first: Option<BufferPtr>) -> bool {
        let mut next = first.or_else(|| self.state.full_rx.try_recv().ok());
        let took = next.is_some();
        while let Some(buf) = next {
            self.take_full(buf);
            next = self.state.full_rx.try_recv().ok();
        }
        if took {
            crate::channel_wait::made_room();
        }
        took
    }

    fn take_full(&mut self, buf: BufferPtr) {
        // SAFETY: the buffer was sent to us whole; we own it until we hand it back.
        let (heap, (pos, end)) = unsafe { ((*buf.0).heap_id, (*buf.0).take_range()) };
        if pos == end {
            self.recycle(buf);
        } else {
            // SAFETY: as above.
            let seq = unsafe { (*buf.0).seq };
            self.queue(heap).push(Chunk {
                buf: Some(buf),
                owned: Vec::new(),
                pos,
                end,
                order: (seq, pos as u32),
            });
        }
    }

    /// A buffer whose events have been passed on. It goes back for reuse only once no heap names
    /// it as its current buffer ([`Collector::release_retired`]): a thread sends its full buffer
    /// before it replaces it, and until then a drain still reads it through the heap.
    fn recycle(&mut self, buf: BufferPtr) {
        self.retired.push(buf);
    }

    /// Hands back the retired buffers that no heap names as its current buffer. Released while a
    /// thread that had just sent one still named it, a buffer was unmapped (or given to another
    /// thread) under the next drain, which read it through the stale pointer: a crash in about
    /// one recording of a 4-thread program in 40.
    fn release_retired(&mut self) {
        hook::take_orphans(|b| self.retired.push(b));
        if self.retired.is_empty() {
            return;
        }
        let mut current = std::mem::take(&mut self.current);
        current.clear();
        hook::current_buffers(|b| current.push(b));
        self.retired.retain(|b| {
            let in_use = current.contains(&b.0);
            if !in_use {
                hook::release_buffer(*b);
            }
            in_use
        });
        self.current = current;
    }

    /// Takes every event emitted so far: the threads' current buffers, then the full buffers
    /// sent before those (a thread sends its full buffer before it publishes the next one).
    fn collect_all(&mut self, now: u64) {
        let t = hook::now();
        let part = self.drain(now);
        self.take_sent(None);
        self.safe_until = self.safe_until.max(watermark(t, part));
    }

    /// Takes the threads' current buffers; returns the oldest census part under way (see
    /// `hook::drain`).
    fn drain(&mut self, now: u64) -> Option<u64> {
        self.last_drain = now;
        let mut fresh: Vec<(u32, i32, bool)> = Vec::new();
        let mut drained: Vec<(u32, (u32, u32), Vec<Event>)> = Vec::new();
        let oldest_part = hook::drain(|heap, tid, traced, order, events| {
            if !events.is_empty() {
                drained.push((heap, order, events.to_vec()));
            }
            fresh.push((heap, tid, traced));
        });
        for (heap, order, events) in drained {
            self.queue(heap).push_owned(events, order);
        }
        // Threads name themselves at start and exit; the collector announces the threads that were
        // there before recording began, and picks up renames of live threads now and then.
        let first = self.last_names == 0;
        let rename = first || now - self.last_names >= 250 * MS;
        if !rename {
            self.flush_scratch();
            return oldest_part;
        }
        self.last_names = now.max(1);
        for (heap, tid, traced) in fresh {
            let known = self.names.get(&heap).map(|(t, _)| *t);
            let name =
                std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
            let name = name.trim_end().to_owned();
            // An untraced thread (this collector, a thread the program does not trace) is not
            // one of the program's threads in the trace: it gets a name, for the frees into
            // traced pages it may report, but no start.
            if known.is_none() && first && traced {
                let t = hook::now();
                let start = schema::ThreadStart {
                    os_tid: tid as u64,
                    heap,
                    flags: 0,
                };
                self.scratch.push(start.into_event().at(t));
            }
            if self.names.get(&heap).is_none_or(|(_, n)| *n != name) {
                push_name(&mut self.scratch, heap, name.as_bytes());
                self.names.insert(heap, (tid, name));
            }
        }
        self.flush_scratch();
        oldest_part
    }

    fn flush_scratch(&mut self) {
        if !self.scratch.is_empty() {
            let events = std::mem::take(&mut self.scratch);
            // Heap 0 holds only the collector's own notes, queued in the order they are made.
            self.scratch_seq += 1;
            let order = (self.scratch_seq, 0);
            self.queue(0).push_owned(events, order);
        }
    }

    fn census(&mut self, now: u64) {
        self.last_census = now;
        self.census_number += 1;
        LAST_CENSUS.store(self.census_number, Release);
        let mut events = Vec::new();
        let initial = self.census_number == self.first_census;
        hook::census(self.census_number, initial, &mut events);
        self.emit(BatchRef {
            heap: 0,
            events: &events,
        });
    }

    /// A census while the program runs: each traced heap reports its own pages in its own
    /// stream at its next allocator call (`hook::census_point`), where the model can check them
    /// exactly; the collector sends only the begin and end, which say a census was asked for.
    fn heap_census(&mut self, now: u64) {
        self.last_census = now;
        self.census_number += 1;
        LAST_CENSUS.store(self.census_number, Release);
        let n = self.census_number;
        let t = hook::now();
        let begin = schema::CensusBegin {
            pages: 0,
            number: n,
            flags: flags::BY_HEAP,
        };
        let end = schema::CensusEnd {
            number: n,
            flags: flags::BY_HEAP,
        };
        let events = [begin.into_event().at(t), end.into_event().at(t)];
        hook::request_heap_census(n);
        self.emit(BatchRef {
            heap: 0,
            events: &events,
        });
    }

    fn emit(&mut self, batch: BatchRef<'_>) {
        if let Some((number, seen)) = &mut self.parts_seen {
            const END: u8 = crate::event::EventKind::CensusEnd as u8;
            let part_end = |e: &Event| {
                let end = schema::CensusEnd::from_event(e);
                e.kind == END && end.flags & flags::HEAP_PART != 0 && end.number == *number
            };
            if batch.events.iter().any(part_end) {
                seen.push(batch.heap);
            }
        }
        if self.sink_alive && !batch.events.is_empty() && !(self.state.sink)(Handed::Batch(batch)) {
            // The peer went away: stop recording, keep recycling buffers so nobody waits.
            self.sink_alive = false;
            hook::set_enabled(false, false);
        }
    }

    /// Hands over every pending event with `time <= watermark`, merged across heaps by time.
    fn flush(&mut self, watermark: u64) {
        loop {
            let mut best: Option<(u64, usize)> = None;
            for (i, q) in self.pending.iter().enumerate() {
                if let Some(t) = q.front_time()
                    && t <= watermark
                    && best.is_none_or(|(b, _)| t < b)
                {
                    best = Some((t, i));
                }
            }
            let Some((_, i)) = best else { break };
            let bound = self
                .pending
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .filter_map(|(_, q)| q.front_time())
                .fold(watermark, u64::min);
            let heap = self.pending[i].heap;
            let Some(mut chunk) = self.pending[i].chunks.pop_front() else {
                break;
            };
            // A whole chunk goes at once when its last event is in bound (a thread's events
            // come in time order): its events are first read by the sink, which packs them,
            // rather than once here to compare times and again there.
            let events = chunk.events();
            let n = if events.last().is_some_and(|e| e.time <= bound) {
                events.len()
            } else {
                events.iter().take_while(|e| e.time <= bound).count()
            };
            self.emit(BatchRef {
                heap,
                events: &chunk.events()[..n],
            });
            chunk.pos += n;
            if chunk.pos < chunk.end {
                self.pending[i].chunks.push_front(chunk);
            } else if let Some(buf) = chunk.buf {
                self.recycle(buf);
            }
        }
    }
}

/// Appends `text` as `ThreadName` events of `heap` (16 bytes each, `MORE` on all but the last).
fn push_name(out: &mut Vec<Event>, heap: u32, text: &[u8]) {
    let t = hook::now();
    let chunks: Vec<&[u8]> = if text.is_empty() {
        vec![&[][..]]
    } else {
        text.chunks(16).collect()
    };
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let (text_lo, text_hi) = Event::pack_text(chunk);
        let more = if i + 1 < n { flags::MORE } else { 0 };
        let part = schema::ThreadName {
            text_lo,
            text_hi,
            heap,
            flags: more,
        };
        out.push(part.into_event().at(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events are passed on up to the collection's clock less the margin for events being
    /// written, and never up to a census part still on its way (stamped before it is
    /// published), however old.
    #[test]
    fn the_watermark_stops_short_of_a_census_part_under_way() {
        assert_eq!(watermark(10 * MS, None), 10 * MS - IN_FLIGHT);
        assert_eq!(watermark(10 * MS, Some(5 * MS)), 5 * MS - 1);
        assert_eq!(watermark(10 * MS, Some(10 * MS)), 10 * MS - IN_FLIGHT);
        // A part whose time is not read yet (`hook::part_clock`) holds everything back.
        assert_eq!(watermark(10 * MS, Some(1)), 0);
    }
}
