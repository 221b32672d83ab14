//! The model behind a recording's keyframes, kept on a thread of its own: applying every event
//! to the model costs about as much as encoding it, and the two run side by side instead of one
//! after the other on the thread the program's stream waits for.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use heaplens_alloc::event::Event;
use heaplens_viewer::model::Model;

use crate::packed::PackedBatch;

/// A keyframe every this many events at least: where replay can start from.
pub const KEYFRAME_EVERY: u64 = 500_000;

/// Keyframes take at most about this share of a trace's bytes: a large model (many live blocks,
/// many stack nodes) gets keyframes further apart. Every 500 k events, the 15 MB snapshots of a
/// binary-trees program recorded with `--stacks all` made 97 % of its trace (58.6 MiB against
/// 2.0 MB of events, and heaptrack's 2.8 MB file).
const KEYFRAME_SHARE: f64 = 0.125;

/// Batches that may wait for the model before the recorder waits too.
const QUEUED_BATCHES: usize = 256;

/// Keyframes this far apart or more let the recorder hold the model's batches back (packed), up
/// to [`DEFER_BYTES`]: the model's work counts only if another keyframe comes, and a recording
/// that ends first never needs it. (Binary trees with `--stacks all`: one keyframe at 500 k
/// events, the next due after about 200 M; the model applied all 24 M events for nothing, and
/// the recorder waited for it through the queue.) Only while the next keyframe is further away
/// than the recording has gone so far, though (see [`Keyframes::deferring`]).
const DEFER_FROM_SPACING: u64 = 4 * KEYFRAME_EVERY;

/// Memory the batches held back may take (about 32 M events packed).
const DEFER_BYTES: usize = 256 << 20;

/// A snapshot of the model after the first `event_index` events, at trace time `time`.
pub struct Keyframe {
    pub event_index: u64,
    pub time: u64,
    pub snapshot: Vec<u8>,
}

/// A batch's events, read by the trace writer's helper (which encodes them) and the model: the
/// vector goes back to [`Keyframes::spare`] once both are done with it.
pub struct Shared {
    events: Vec<Event>,
    back: crossbeam_channel::Sender<Vec<Event>>,
}

impl AsRef<[Event]> for Shared {
    fn as_ref(&self) -> &[Event] {
        &self.events
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.back.try_send(std::mem::take(&mut self.events));
    }
}

/// What the model thread is given, in the stream's order.
enum Work {
    /// A batch shared with the trace writer.
    Shared(u32, Arc<Shared>),
    /// A batch held back packed: the model thread unpacks it.
    Packed(PackedBatch),
    /// A keyframe of the model as it is after the batches before.
    Snapshot,
}

/// Vectors kept for [`Keyframes::spare`]: as many as the model may be behind by, and as many
/// again for the trace writer's helper.
const SPARES: usize = 2 * QUEUED_BATCHES;

/// The model thread: give it every batch in order, and after each batch let it write the
/// keyframes that are ready ([`Keyframes::after_batch`]).
///
/// Where keyframes go is decided here, on the recorder's side, from the events given so far and
/// the size of the keyframe before, so a recording of the same events gets the same keyframes.
/// (When the model thread decided, on its own, while the recorder reported each keyframe's size
/// whenever it got to writing it, a binary-trees recording with `--stacks all` got one or two
/// 3.4 MB keyframes depending on which came first: 6.3 or 9.6 MiB.)
pub struct Keyframes {
    work: Option<crate::backlog::Sender<Work>>,
    /// The program has exited: the model thread may take its usual priority back.
    exited: Arc<AtomicBool>,
    made: Receiver<Result<Keyframe, String>>,
    thread: Option<JoinHandle<()>>,
    /// Events given to the model so far.
    given: u64,
    /// Where the last keyframe asked for is (0: none yet).
    last: u64,
    /// Events from one keyframe to the next, set from the size of the last one written.
    spacing: u64,
    /// A keyframe was asked for and not yet written.
    outstanding: bool,
    /// Batches held back from the model (see [`DEFER_FROM_SPACING`]), in order, and their bytes.
    deferred: VecDeque<PackedBatch>,
    deferred_bytes: usize,
    /// Room to pack in.
    scratch: Vec<u8>,
    recycle: Option<crossbeam_channel::Sender<Vec<Event>>>,
    /// Vectors the model thread gave back, for [`Keyframes::spare`].
    spares: crossbeam_channel::Receiver<Vec<Event>>,
    spare_back: crossbeam_channel::Sender<Vec<Event>>,
}

impl Keyframes {
    /// Starts the model thread; batches that came unpacked give their vectors back to `recycle`
    /// (see [`Keyframes::share_given`]).
    pub fn start(recycle: Option<crossbeam_channel::Sender<Vec<Event>>>) -> std::io::Result<Self> {
        // Counted in batches: each `Work` is one.
        let (work, todo) = crate::backlog::backlog::<Work>(QUEUED_BATCHES);
        let (done, made) = std::sync::mpsc::channel();
        let exited = Arc::new(AtomicBool::new(false));
        let program_gone = Arc::clone(&exited);
        let (spare_back, spares) = crossbeam_channel::bounded(SPARES);
        let thread = std::thread::Builder::new()
            .name("heaplens-keyframes".into())
            .spawn(move || {
                crate::priority::lower_this_thread();
                let mut model = Model::new();
                let mut applied = 0u64;
                let mut unpacked = Vec::new();
                let mut restored = false;
                for w in &todo {
                    if !restored && program_gone.load(Ordering::Relaxed) {
                        crate::priority::restore_this_thread();
                        restored = true;
                    }
                    match w {
                        Work::Shared(heap, shared) => {
                            model.apply_batch(heap, &shared.events);
                            applied += shared.events.len() as u64;
                        }
                        Work::Packed(batch) => {
                            // The recorder unpacked the same bytes before: they are whole.
                            if batch.unpack_into(&mut unpacked).is_ok() {
                                model.apply_batch(batch.heap, &unpacked);
                                applied += unpacked.len() as u64;
                            }
                        }
                        Work::Snapshot => {
                            let kf = model.to_keyframe().map(|snapshot| Keyframe {
                                event_index: applied,
                                time: model.time(),
                                snapshot,
                            });
                            if done.send(kf).is_err() {
                                return;
                            }
                        }
                    }
                }
            })?;
        Ok(Self {
            work: Some(work),
            exited,
            made,
            thread: Some(thread),
            given: 0,
            last: 0,
            spacing: KEYFRAME_EVERY,
            outstanding: false,
            deferred: VecDeque::new(),
            deferred_bytes: 0,
            scratch: Vec::new(),
            recycle,
            spares,
            spare_back,
        })
    }

    /// A vector to unpack a batch into, for [`Keyframes::share`]: one given back, or a new one.
    pub fn spare(&self) -> Vec<Event> {
        self.spares
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(heaplens_alloc::hook::BUFFER_EVENTS))
    }

    /// `events` (from [`Keyframes::spare`]), to be shared by the trace writer and
    /// [`Keyframes::push_packed`]; the vector comes back to the spares once both are done.
    pub fn share(&self, events: Vec<Event>) -> Arc<Shared> {
        Arc::new(Shared {
            events,
            back: self.spare_back.clone(),
        })
    }

    /// `events` of a batch that came unpacked, to be shared by the trace writer and
    /// [`Keyframes::push_shared`]; the vector goes back to whoever gave it (the recycle channel
    /// this model was started with, or the spares) once both are done.
    pub fn share_given(&self, events: Vec<Event>) -> Arc<Shared> {
        match &self.recycle {
            Some(back) => Arc::new(Shared {
                events,
                back: back.clone(),
            }),
            None => self.share(events),
        }
    }

    /// Hands a batch shared with the trace writer to the model (waits if the model is far
    /// behind), or, while keyframes are far apart (see [`DEFER_FROM_SPACING`]), holds a packed
    /// copy back.
    pub fn push_shared(&mut self, heap: u32, events: Arc<Shared>) {
        if self.deferring() {
            let batch = PackedBatch::pack(heap, &events.events, &mut self.scratch);
            drop(events);
            self.defer(batch);
        } else {
            self.give(heap, events);
        }
    }

    /// [`Keyframes::push_shared`] of a batch that came packed, with its events unpacked in `events`:
    /// the model takes the events, or, while batches are held back, the batch stays as it came
    /// (not packed again).
    pub fn push_packed(&mut self, batch: PackedBatch, events: Arc<Shared>) {
        if self.deferring() {
            drop(events);
            self.defer(batch);
        } else {
            self.give(batch.heap, events);
        }
    }

    /// Gives the model a batch's events now.
    fn give(&mut self, heap: u32, events: Arc<Shared>) {
        self.given += events.events.len() as u64;
        self.send(Work::Shared(heap, events));
    }

    /// Whether batches are held back now: once some are, until the next keyframe; otherwise
    /// while keyframes are far apart and the next is further away than the recording has gone
    /// so far. Holding back pays only if the recording ends before the next keyframe: then the
    /// model never applies those batches; if it does not, the model unpacks them again and
    /// applies them all at once when the keyframe comes due, while the recorder waits. A
    /// recording that has run for `n` events is taken to be as likely as not to run for `n`
    /// more. (Binary trees with the default stacks, a keyframe every 8 M events or so of 59 M:
    /// holding back throughout made the command 1.32x slower than holding back after the first
    /// keyframe only; with `--stacks all`, keyframes 600 M events apart, never holding back
    /// made it 1.38x slower.)
    fn deferring(&self) -> bool {
        !self.deferred.is_empty()
            || (self.spacing >= DEFER_FROM_SPACING && self.spacing > self.given)
    }

    fn defer(&mut self, batch: PackedBatch) {
        self.given += batch.len() as u64;
        self.deferred_bytes += batch.held();
        self.deferred.push_back(batch);
        while self.deferred_bytes > DEFER_BYTES {
            self.release_one();
        }
    }

    /// Gives the oldest batch held back to the model.
    fn release_one(&mut self) {
        if let Some(batch) = self.deferred.pop_front() {
            self.deferred_bytes -= batch.held();
            self.send(Work::Packed(batch));
        }
    }

    fn send(&self, w: Work) {
        if let Some(tx) = &self.work {
            // A send fails only if the model thread is gone (it panicked): the recording goes
            // on without more keyframes, and `finish` reports it.
            let _ = tx.send(w, 1);
        }
    }

    /// After a batch: writes the keyframes that are ready with `write`, which returns the
    /// keyframe's bytes in the trace and the trace's bytes per event so far; and asks for the
    /// next keyframe once it is due. Deciding that needs the size of the keyframe before, so
    /// the recorder then waits for it (the model is at most [`QUEUED_BATCHES`] behind).
    pub fn after_batch<E>(
        &mut self,
        mut write: impl FnMut(&Keyframe) -> Result<(u64, f64), E>,
    ) -> Result<(), E>
    where
        E: From<String>,
    {
        while let Ok(kf) = self.made.try_recv() {
            self.wrote(&kf?, &mut write)?;
        }
        if self.given < self.last + KEYFRAME_EVERY {
            return Ok(());
        }
        if self.outstanding {
            match self.made.recv() {
                Ok(kf) => self.wrote(&kf?, &mut write)?,
                // The model thread is gone: `finish` says so.
                Err(_) => return Ok(()),
            }
        }
        if self.given >= self.last + self.spacing {
            while !self.deferred.is_empty() {
                self.release_one();
            }
            self.send(Work::Snapshot);
            self.last = self.given;
            self.outstanding = true;
        }
        Ok(())
    }

    fn wrote<E>(
        &mut self,
        kf: &Keyframe,
        write: &mut impl FnMut(&Keyframe) -> Result<(u64, f64), E>,
    ) -> Result<(), E> {
        self.outstanding = false;
        let (keyframe_bytes, bytes_per_event) = write(kf)?;
        // Keyframes stay near `KEYFRAME_SHARE` of the trace.
        let events = keyframe_bytes as f64 / KEYFRAME_SHARE / bytes_per_event.max(0.01);
        self.spacing = (events as u64).max(KEYFRAME_EVERY);
        Ok(())
    }

    /// The program has exited: the model thread goes back to the usual priority if it can.
    pub fn program_exited(&self) {
        self.exited.store(true, Ordering::Relaxed);
    }

    /// Waits until the model has taken every batch it was given; returns the keyframes not yet
    /// written. The batches held back are dropped: no keyframe was due after them.
    pub fn finish(mut self) -> Result<Vec<Result<Keyframe, String>>, String> {
        self.deferred.clear();
        self.work = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            return Err("the keyframe model failed; the trace has no keyframes past it".into());
        }
        Ok(self.made.try_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heaplens_alloc::event::EventKind;

    /// Keyframes made from `n` events given in batches of 10 000, each written at
    /// `keyframe_bytes` in a trace of 1 byte per event.
    fn keyframes(n: u64, keyframe_bytes: u64) -> Vec<u64> {
        keyframes_and_holding(n, keyframe_bytes).0
    }

    /// [`keyframes`], and the events given so far after each batch that left batches held back.
    fn keyframes_and_holding(n: u64, keyframe_bytes: u64) -> (Vec<u64>, Vec<u64>) {
        let mut k = Keyframes::start(None).unwrap();
        let mut t = 0;
        let mut made = Vec::new();
        let mut holding = Vec::new();
        for _ in 0..n / 10_000 {
            let events = (0..10_000)
                .map(|_| {
                    t += 1;
                    Event {
                        kind: EventKind::ClockSync as u8,
                        addr: t,
                        time: t,
                        ..Event::default()
                    }
                })
                .collect();
            let shared = k.share_given(events);
            k.push_shared(1, shared);
            k.after_batch(|kf| {
                made.push(kf.event_index);
                Ok::<_, String>((keyframe_bytes, 1.0))
            })
            .unwrap();
            if !k.deferred.is_empty() {
                holding.push(k.given);
            }
        }
        made.extend(
            k.finish()
                .unwrap()
                .into_iter()
                .map(|kf| kf.unwrap().event_index),
        );
        (made, holding)
    }

    /// Keyframes 8.4 M events apart: after the first, the next is further away than the
    /// recording has gone, and batches are held back until it comes; after it, the recording has
    /// gone further than the next is away, and they go to the model as they come.
    #[test]
    fn batches_are_held_back_only_while_the_next_keyframe_is_further_than_the_recording_so_far() {
        let (made, holding) = keyframes_and_holding(20_000_000, 1 << 20);
        assert_eq!(made, [500_000, 8_890_000, 17_280_000]);
        assert!(
            holding.iter().any(|&g| g > 500_000 && g < 8_890_000),
            "held back after the first keyframe"
        );
        assert!(
            holding.iter().all(|&g| g < 8_890_000),
            "not after the second: {:?}",
            holding.last()
        );
    }

    #[test]
    fn keyframes_come_every_500k_events_and_further_apart_when_they_are_large() {
        assert_eq!(keyframes(1_600_000, 1000), [500_000, 1_000_000, 1_500_000]);
        // A keyframe of 1 MB in a trace of 1 byte per event: the next waits for 8 M events.
        assert_eq!(keyframes(1_600_000, 1 << 20), [500_000]);
        assert_eq!(
            keyframes(9_100_000, 1 << 20),
            [500_000, 500_000 + 8_390_000]
        );
    }

    /// The same events give the same keyframes, whatever the model thread's pace: the spacing
    /// after a keyframe is set from its size before the next is asked for.
    #[test]
    fn the_same_events_get_the_same_keyframes() {
        let first = keyframes(3_000_000, 200_000);
        for _ in 0..5 {
            assert_eq!(keyframes(3_000_000, 200_000), first);
        }
        assert_eq!(first, [500_000, 2_100_000]);
    }
}
