//! What the examples share: a recorded trace's Events chunks as the trace writer was given them.

use heaplens_alloc::event::Event;
use heaplens_viewer::trace::TraceReader;

/// One chunk's events as batches: runs of one heap's events, up to 4096 each (the collector
/// hands on at most 2046 a buffer).
pub type Batches = Vec<(u32, Vec<Event>)>;

/// The first `max` chunks of the trace at `path` that hold `min_events` events or more, each as
/// [`Batches`]. A trace or chunk that cannot be read ends the program with a message that
/// names `tool`.
pub fn chunks_as_batches(tool: &str, path: &str, max: usize, min_events: usize) -> Vec<Batches> {
    let fail = |what: String| -> ! {
        eprintln!("{tool}: {path}: {what}");
        std::process::exit(1);
    };
    let mut reader = TraceReader::open(path).unwrap_or_else(|e| fail(e.to_string()));
    let mut chunks = Vec::new();
    for i in 0..reader.chunks().len() {
        if chunks.len() == max {
            break;
        }
        let events = reader
            .read_chunk(i)
            .unwrap_or_else(|e| fail(format!("chunk {i}: {e}")));
        if events.len() < min_events {
            continue;
        }
        let mut batches: Batches = Vec::new();
        for (heap, e) in events {
            match batches.last_mut() {
                Some((h, batch)) if *h == heap && batch.len() < 4096 => batch.push(e),
                _ => batches.push((heap, vec![e])),
            }
        }
        chunks.push(batches);
    }
    chunks
}
