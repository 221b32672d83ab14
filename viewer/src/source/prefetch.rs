//! Chunks decoded ahead on threads of their own, while a replay's first pass applies the ones
//! before: decoding is about two thirds of a first opening's CPU time and the model the rest, so
//! on two cores the two overlap, and two threads decode (chunks decode independently: each
//! takes every other chunk, with a reader of its own). With one thread decoding, the model
//! waited for it: `heaplens index` of a recording of larson (39 M events) spent 51 % of its
//! samples decoding on that thread and 25 % applying.

use std::path::Path;

use crossbeam_channel::{Receiver, Sender, bounded};
use heaplens_alloc::event::Event;

use crate::trace::{TraceError, TraceReader};

/// A chunk's events, as the reader gives them.
type Chunk = Vec<(u32, Event)>;

/// Threads decoding, at most (fewer on a machine with fewer cores).
const DECODERS: usize = 2;

/// Threads that read the chunks of a trace in order, from a given one on: thread `k` of `n`
/// reads chunks `first + k`, `first + k + n`, ... Each hands a decoded chunk over only when it
/// is taken (a channel without room), so at most one chunk a thread waits decoded (each up to
/// 40 MB).
pub struct Prefetch {
    /// Per thread, its chunks in order.
    chunks: Vec<Receiver<(usize, Result<Chunk, TraceError>)>>,
    first: usize,
    spare: Sender<Chunk>,
}

impl Prefetch {
    /// Starts reading the trace at `path` (with readers of its own) from chunk `first` on;
    /// `None` if it cannot (the replay then reads each chunk itself).
    pub fn start(path: &Path, first: usize) -> Option<Self> {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let n = DECODERS.min(cores).max(1);
        let (spare, spares) = bounded::<Chunk>(n + 2);
        let mut chunks = Vec::with_capacity(n);
        for k in 0..n {
            let mut reader = TraceReader::open(path).ok()?;
            let (tx, rx) = bounded(0);
            let spares = spares.clone();
            std::thread::Builder::new()
                .name("heaplens-prefetch".into())
                .spawn(move || {
                    for i in (first + k..reader.chunks().len()).step_by(n) {
                        let mut events = spares.try_recv().unwrap_or_default();
                        let read = reader.read_chunk_into(i, &mut events).map(|()| events);
                        let failed = read.is_err();
                        // The replay stopped listening (it moved elsewhere, or is done).
                        if tx.send((i, read)).is_err() || failed {
                            return;
                        }
                    }
                })
                .ok()?;
            chunks.push(rx);
        }
        Some(Self {
            chunks,
            first,
            spare,
        })
    }

    /// Chunk `i`, if it is the next its thread reads (or one after chunks not wanted, which are
    /// passed over); `None` once that thread has gone past `i` or stopped, or `i` is before the
    /// first chunk. An error is the reader's for that chunk.
    pub fn take(&self, i: usize) -> Option<Result<Chunk, TraceError>> {
        let from = &self.chunks[i.checked_sub(self.first)? % self.chunks.len()];
        loop {
            let (at, read) = from.recv().ok()?;
            match at.cmp(&i) {
                std::cmp::Ordering::Less => {
                    if let Ok(events) = read {
                        self.give_back(events);
                    }
                }
                std::cmp::Ordering::Equal => return Some(read),
                std::cmp::Ordering::Greater => return None,
            }
        }
    }

    /// A chunk's vector the replay is done with, to read a later chunk into.
    pub fn give_back(&self, events: Chunk) {
        let _ = self.spare.try_send(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{EndInfo, Metadata, TraceWriter, WriterOptions};

    #[test]
    fn chunks_come_in_order_those_skipped_are_passed_over_and_none_comes_back() {
        let path = std::env::temp_dir().join(format!("heaplens-prefetch-{}", std::process::id()));
        let options = WriterOptions {
            chunk_events: 100,
            ..WriterOptions::default()
        };
        let mut w = TraceWriter::create_with(&path, &Metadata::default(), options).unwrap();
        let events: Vec<Event> = (1..=1000u64)
            .map(|t| Event {
                kind: heaplens_alloc::event::EventKind::ClockSync as u8,
                addr: t,
                time: t,
                ..Event::default()
            })
            .collect();
        w.write_batch(1, &events).unwrap();
        w.finish(EndInfo::clean(0)).unwrap();
        let mut reader = TraceReader::open(&path).unwrap();
        assert_eq!(reader.chunks().len(), 10);

        let p = Prefetch::start(&path, 1).unwrap();
        let third = p.take(3).unwrap().unwrap();
        assert!(
            third == reader.read_chunk(3).unwrap(),
            "chunk 3, chunks 1 and 2 passed over"
        );
        p.give_back(third);
        assert!(p.take(4).unwrap().unwrap() == reader.read_chunk(4).unwrap());
        // The rest in order, from both threads in turn, each as a reader of its own gives it.
        for i in 5..9 {
            assert!(
                p.take(i).unwrap().unwrap() == reader.read_chunk(i).unwrap(),
                "chunk {i}"
            );
        }
        assert!(p.take(0).is_none(), "before the first");
        assert!(p.take(2).is_none(), "gone past it");
        let _ = std::fs::remove_file(&path);
    }
}
