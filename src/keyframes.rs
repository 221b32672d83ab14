//! The model behind a recording's keyframes, kept on a thread of its own: applying every event
//! to the model costs about as much as encoding it, and the two run side by side instead of one
//! after the other on the thread the program's stream waits for.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use heaplens_alloc::event::Event;
use heaplens_viewer::model::Model;

/// A keyframe every this many events: where replay can start from.
pub const KEYFRAME_EVERY: u64 = 500_000;

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
    made: Receiver<Result<Keyframe, String>>,
    thread: Option<JoinHandle<()>>,
}

impl Keyframes {
    /// Starts the model thread; it gives each batch's vector to `recycle` once applied.
    pub fn start(recycle: Option<crossbeam_channel::Sender<Vec<Event>>>) -> std::io::Result<Self> {
        let (batches, todo) = sync_channel::<(u32, Vec<Event>)>(QUEUED_BATCHES);
        let (done, made) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("heaplens-keyframes".into())
            .spawn(move || {
                crate::priority::lower_this_thread();
                let mut model = Model::new();
                let (mut applied, mut next) = (0u64, KEYFRAME_EVERY);
                for (heap, events) in todo {
                    model.apply_batch(heap, &events);
                    applied += events.len() as u64;
                    if let Some(r) = &recycle {
                        let _ = r.try_send(events);
                    }
                    if applied >= next {
                        let kf = model.to_keyframe().map(|snapshot| Keyframe {
                            event_index: applied,
                            time: model.time(),
                            snapshot,
                        });
                        if done.send(kf).is_err() {
                            return;
                        }
                        next = applied + KEYFRAME_EVERY;
                    }
                }
            })?;
        Ok(Self {
            batches: Some(batches),
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
