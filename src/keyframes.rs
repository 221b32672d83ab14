//! The model behind a recording's keyframes, kept on a thread of its own: applying every event
//! to the model costs about as much as encoding it, and the two run side by side instead of one
//! after the other on the thread the program's stream waits for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use heaplens_alloc::event::Event;
use heaplens_viewer::model::Model;

/// A keyframe every this many events at least: where replay can start from.
pub const KEYFRAME_EVERY: u64 = 500_000;

/// Keyframes take at most about this share of a trace's bytes: a large model (many live blocks,
/// many stack nodes) gets keyframes further apart. Every 500 k events, the 15 MB snapshots of a
/// binary-trees program recorded with `--stacks all` made 97 % of its trace (58.6 MiB against
/// 2.0 MB of events, and heaptrack's 2.8 MB file).
const KEYFRAME_SHARE: f64 = 0.125;

/// Batches that may wait for the model before the recorder waits too.
const QUEUED_BATCHES: usize = 256;

/// A snapshot of the model after the first `event_index` events, at trace time `time`.
pub struct Keyframe {
    pub event_index: u64,
    pub time: u64,
    pub snapshot: Vec<u8>,
}

/// The model thread: give it every batch in order; collect the keyframes it makes.
pub struct Keyframes {
    batches: Option<SyncSender<(u32, Vec<Event>)>>,
    /// Events from one keyframe to the next, as the recorder last set it.
    spacing: Arc<AtomicU64>,
    /// The program has exited: the model thread may take its usual priority back.
    exited: Arc<AtomicBool>,
    made: Receiver<Result<Keyframe, String>>,
    thread: Option<JoinHandle<()>>,
}

impl Keyframes {
    /// Starts the model thread; it gives each batch's vector to `recycle` once applied.
    pub fn start(recycle: Option<crossbeam_channel::Sender<Vec<Event>>>) -> std::io::Result<Self> {
        let (batches, todo) = sync_channel::<(u32, Vec<Event>)>(QUEUED_BATCHES);
        let (done, made) = std::sync::mpsc::channel();
        let spacing = Arc::new(AtomicU64::new(KEYFRAME_EVERY));
        let every = Arc::clone(&spacing);
        let exited = Arc::new(AtomicBool::new(false));
        let program_gone = Arc::clone(&exited);
        let thread = std::thread::Builder::new()
            .name("heaplens-keyframes".into())
            .spawn(move || {
                crate::priority::lower_this_thread();
                let mut model = Model::new();
                let (mut applied, mut last) = (0u64, 0u64);
                let mut restored = false;
                for (heap, events) in todo {
                    if !restored && program_gone.load(Ordering::Relaxed) {
                        crate::priority::restore_this_thread();
                        restored = true;
                    }
                    model.apply_batch(heap, &events);
                    applied += events.len() as u64;
                    if let Some(r) = &recycle {
                        let _ = r.try_send(events);
                    }
                    // The spacing is read afresh: the recorder sets it once it has written the
                    // last keyframe, which may be after this thread has gone on.
                    if applied >= last + every.load(Ordering::Relaxed).max(KEYFRAME_EVERY) {
                        let kf = model.to_keyframe().map(|snapshot| Keyframe {
                            event_index: applied,
                            time: model.time(),
                            snapshot,
                        });
                        if done.send(kf).is_err() {
                            return;
                        }
                        last = applied;
                    }
                }
            })?;
        Ok(Self {
            batches: Some(batches),
            spacing,
            exited,
            made,
            thread: Some(thread),
        })
    }

    /// Hands a batch to the model (waits if the model is far behind).
    pub fn push(&self, heap: u32, events: Vec<Event>) {
        if let Some(tx) = &self.batches {
            // A send fails only if the model thread is gone (it panicked): the recording goes
            // on without more keyframes, and `finish` reports it.
            let _ = tx.send((heap, events));
        }
    }

    /// Spaces the keyframes after one of `keyframe_bytes` in a trace whose events take
    /// `bytes_per_event`, so that keyframes stay near [`KEYFRAME_SHARE`] of the trace.
    pub fn written(&self, keyframe_bytes: u64, bytes_per_event: f64) {
        let events = keyframe_bytes as f64 / KEYFRAME_SHARE / bytes_per_event.max(0.01);
        self.spacing
            .store((events as u64).max(KEYFRAME_EVERY), Ordering::Relaxed);
    }

    /// The program has exited: the model thread goes back to the usual priority if it can.
    pub fn program_exited(&self) {
        self.exited.store(true, Ordering::Relaxed);
    }

    /// The keyframes made so far.
    pub fn ready(&self) -> Vec<Result<Keyframe, String>> {
        let mut out = Vec::new();
        loop {
            match self.made.try_recv() {
                Ok(k) => out.push(k),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }

    /// Waits until the model has taken every batch; returns the keyframes not yet collected.
    pub fn finish(mut self) -> Result<Vec<Result<Keyframe, String>>, String> {
        self.batches = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            return Err("the keyframe model failed; the trace has no keyframes past it".into());
        }
        Ok(self.ready())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heaplens_alloc::event::EventKind;

    /// Keyframes made from `n` events, the recorder having reported a keyframe of
    /// `keyframe_bytes` (if any) before the first.
    fn keyframes(n: u64, keyframe_bytes: Option<u64>) -> Vec<u64> {
        let k = Keyframes::start(None).unwrap();
        if let Some(b) = keyframe_bytes {
            k.written(b, 1.0);
        }
        let mut t = 0;
        let mut made = Vec::new();
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
            k.push(1, events);
            made.extend(k.ready().into_iter().map(|kf| kf.unwrap().event_index));
        }
        made.extend(
            k.finish()
                .unwrap()
                .into_iter()
                .map(|kf| kf.unwrap().event_index),
        );
        made
    }

    #[test]
    fn keyframes_come_every_500k_events_and_further_apart_when_they_are_large() {
        assert_eq!(keyframes(1_600_000, None), [500_000, 1_000_000, 1_500_000]);
        // A keyframe of 1 MB in a trace of 1 byte per event: the next waits for 8 M events.
        assert_eq!(keyframes(1_600_000, Some(1 << 20)), Vec::<u64>::new());
        // A small one changes nothing.
        assert_eq!(keyframes(1_100_000, Some(1000)), [500_000, 1_000_000]);
    }
}
