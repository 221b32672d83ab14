//! Writing a trace: header, then chunks as the events come, then End, index and trailer.
//!
//! Every chunk is written whole and flushed before the call returns, so a recorder that dies
//! leaves a file that reads up to its last chunk. Call [`TraceWriter::flush`] now and then (say
//! once a second) to bound what a crash of the recorder itself can lose.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use heaplens_alloc::event::Event;

use super::encode::ChunkEncoder;
use super::end::EndInfo;
use super::format::{
    ChunkHeader, ChunkType, Compression, MAX_CHUNK_EVENTS, MAX_KEYFRAME_LEN, MAX_METADATA_LEN,
    file_header_fixed, trailer_bytes,
};
use super::index::TraceIndex;
use super::metadata::Metadata;

/// How a [`TraceWriter`] cuts and compresses chunks.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Events per Events chunk (1 to [`MAX_CHUNK_EVENTS`]).
    pub chunk_events: u32,
    /// zstd level for chunk payloads; `None` stores them uncompressed.
    pub zstd_level: Option<i32>,
}

impl Default for WriterOptions {
    /// Chunks of 2^20 events (the largest allowed): more frees find their block by reference
    /// within the chunk, and the encoder clears its block map half as often as at 2^19.
    fn default() -> Self {
        Self {
            chunk_events: MAX_CHUNK_EVENTS,
            zstd_level: Some(1),
        }
    }
}

/// Keyframes are compressed at this zstd level at least (when chunks are compressed at all):
/// they are few and large, and a serialised model shrinks well past level 1 (by a fifth at
/// level 3 on the keyframes of a binary-trees recording) for a few milliseconds each.
pub const KEYFRAME_ZSTD_LEVEL: i32 = 3;

/// Events chunks that may wait for each helper thread before the writer waits for the oldest.
const HELPER_IN_FLIGHT: usize = 2;

/// Helper threads: each chunk goes to the one with the fewest events queued (each encodes and
/// compresses its own), so that on two cores the recorder's encoding keeps both busy once the
/// program has exited. Given in turn, one helper waited a third of the time after larson's exit
/// (perf -a, 10 ms bins) while the writer waited to hand the other its next chunk's parts: the
/// cores' idle time after the exit 160-193 samples at 2 kHz, 131-133 least-queued.
const HELPER_THREADS: usize = 2;

/// Events, in parts of shared batches, that may wait for a helper to encode them: two chunks'
/// worth. The writer hands all of a chunk's parts to one helper, then the next chunk's to the
/// other; with room for less, it waited for the first helper through part of each chunk while
/// the second had nothing to do. Counted in events, not parts: room for a chunk's worth of the
/// hook's full buffers (513 parts of 2046 events) held 80 % of a chunk of larson's batches as
/// the collector cuts them (1600 events on average) and 57 % of churn_mt's (1145), and after
/// the program's exit the second helper was idle a fifth to a third of the time (perf, 20 ms
/// bins). Room for parts in a count (64 before 513): the command 0.92x on larson, 0.93x on
/// churn_mt, 0.97x on alloc_workload, 1.01x on trees (single-threaded: a core is free for the
/// helpers all along). The parts only share batches the recorder holds anyway (packed, in its
/// backlog; unpacked, in vectors it recycles).
const PARTS_IN_FLIGHT: usize = 2 * super::format::MAX_CHUNK_EVENTS as usize;

/// [`PARTS_IN_FLIGHT`] events in batches of the hook's full buffers: the vectors a recorder keeps
/// per helper to unpack into (with smaller batches more are in flight; those past it are freed
/// when they come back instead of kept).
const PART_BATCHES_IN_FLIGHT: usize = PARTS_IN_FLIGHT.div_ceil(heaplens_alloc::hook::BUFFER_EVENTS);

/// Shared batches the writer may hold at once, waiting for its helpers: what a recorder keeps
/// event vectors for, to unpack the next batches into meanwhile.
pub const SHARED_BATCHES_IN_FLIGHT: usize =
    HELPER_THREADS * (PART_BATCHES_IN_FLIGHT + HELPER_IN_FLIGHT);

/// A batch of events the writer shares with its owner: the helper encodes it, so the writer's
/// thread only hands it on. The events as they are (the owner has the vector back once the
/// helper is done), or packed: the helper unpacks them into room of its own, which stays in its
/// cache, rather than read a vector another core has just written.
pub type SharedBatch = Arc<dyn SharedEvents>;

/// What a [`SharedBatch`] holds.
pub trait SharedEvents: Send + Sync {
    /// How many events.
    fn len(&self) -> usize;

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events, unpacked into `room` if need be. Exactly [`SharedEvents::len`] of them, the
    /// writer having counted them into its chunks (a packed batch that turns out damaged keeps
    /// its length: its events from the damage on come back as lost ones).
    fn events<'a>(&'a self, room: &'a mut Vec<Event>) -> &'a [Event];
}

impl SharedEvents for Vec<Event> {
    fn len(&self) -> usize {
        self.len()
    }

    fn events<'a>(&'a self, _room: &'a mut Vec<Event>) -> &'a [Event] {
        self
    }
}

/// An Events chunk on its way through the helper. Its payload is `raw`, encoded by the writer,
/// or (`times` and `raw` set by the helper) the [`Work::Part`]s sent since the chunk before.
struct Job {
    first_event: u64,
    event_count: u32,
    times: (u64, u64),
    raw: Vec<u8>,
    /// Room for the compressed payload, kept from chunk to chunk as `raw` is.
    stored: Vec<u8>,
    /// The helper encoded the chunk from parts.
    from_parts: bool,
    level: i32,
}

/// What the helper is given, in order.
enum Work {
    /// Part of a shared batch, to encode into the helper's chunk now: its heap, the batch, and
    /// which of its events.
    Part(u32, SharedBatch, Range<usize>),
    /// A chunk to write: compress it (after ending the helper's chunk of parts, if `from_parts`).
    Chunk(Job),
}

/// A chunk the helper compressed (into `job.stored` if `true`; `false`: compression would not
/// make it smaller).
struct Done {
    job: Job,
    compressed: io::Result<bool>,
}

/// The threads that encode and compress Events chunks while the writer goes on: each chunk
/// goes to one ([`Helper::least_queued`]), and the writer writes them back in the order they
/// went.
struct Helper {
    threads: Vec<HelperThread>,
    /// The thread of each chunk in flight, oldest first.
    order: std::collections::VecDeque<usize>,
    /// The thread the next chunk (and its parts) goes to.
    next: usize,
}

impl Helper {
    /// The thread the next chunk goes to: the one with the fewest events queued, the one after
    /// the last chunk's on a tie.
    fn least_queued(&self) -> usize {
        let queued = |t: &HelperThread| {
            t.jobs
                .as_ref()
                .map_or(usize::MAX, crate::backlog::Sender::queued)
        };
        let n = self.threads.len();
        (1..=n)
            .map(|i| (self.next + i) % n)
            .min_by_key(|&t| queued(&self.threads[t]))
            .unwrap_or(0)
    }
}

/// One helper thread.
struct HelperThread {
    jobs: Option<crate::backlog::Sender<Work>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
}

impl HelperThread {
    /// Starts a helper thread, numbered `n` (in its name); it calls `before_each` before each
    /// chunk.
    fn start(n: usize, mut before_each: impl FnMut() + Send + 'static) -> io::Result<Self> {
        // Counted in events, a chunk as one (see `crate::backlog`): the writer, ahead, is woken
        // when half are done.
        let (jobs, todo) = crate::backlog::backlog::<Work>(HELPER_IN_FLIGHT + PARTS_IN_FLIGHT);
        let (finished, done) = sync_channel::<Done>(HELPER_IN_FLIGHT * HELPER_THREADS + 1);
        let thread = std::thread::Builder::new()
            .name(format!("heaplens-zstd-{n}"))
            .spawn(move || {
                let mut compressors = Compressors::default();
                let mut encoder = ChunkEncoder::new();
                let mut room = Vec::new();
                for work in &todo {
                    let mut job = match work {
                        Work::Part(heap, batch, range) => {
                            let events = batch.events(&mut room);
                            debug_assert!(range.end <= events.len());
                            encoder.push_batch(heap, events.get(range).unwrap_or_default());
                            continue;
                        }
                        Work::Chunk(job) => job,
                    };
                    before_each();
                    if job.from_parts {
                        job.times = encoder.time_range();
                        encoder.finish_into(&mut job.raw);
                    }
                    let compressed = compressors.compress(job.level, &job.raw, &mut job.stored);
                    if finished.send(Done { job, compressed }).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }
}

/// A zstd compressor per level in use.
#[derive(Default)]
struct Compressors(Vec<(i32, zstd::bulk::Compressor<'static>)>);

impl Compressors {
    /// Compresses `raw` at `level` into `out` (its bytes replaced); `false` if that is not
    /// smaller. `out` is room kept from chunk to chunk: a fresh buffer for each chunk was
    /// memory the recorder's allocator had returned to the OS, faulted in again page by page
    /// (a third of `heaplens record`'s page faults on larson).
    fn compress(&mut self, level: i32, raw: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
        let i = match self.0.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                self.0.push((level, zstd::bulk::Compressor::new(level)?));
                self.0.len() - 1
            }
        };
        super::sink::room_for(out, zstd::zstd_safe::compress_bound(raw.len()));
        let n = self.0[i].1.compress_to_buffer(raw, out)?;
        Ok(n < raw.len())
    }
}

/// Writes a heaplens trace (see the module docs of [`crate::trace`]).
pub struct TraceWriter<W: Write = BufWriter<File>> {
    out: Option<W>,
    pos: u64,
    options: WriterOptions,
    encoder: ChunkEncoder,
    /// Events accepted, including those not yet in a chunk.
    events: u64,
    /// Events already in chunks.
    written_events: u64,
    end_time: u64,
    index: TraceIndex,
    compressors: Compressors,
    /// Room to compress the chunks written here into.
    stored: Vec<u8>,
    /// Payload buffers to encode into, and room to compress them into (the helper hands them
    /// back).
    payloads: Vec<(Vec<u8>, Vec<u8>)>,
    /// Events of the next chunk given to the helper as parts of shared batches
    /// ([`TraceWriter::write_shared`]), never at once with events in `encoder`, and their
    /// distinct heaps.
    parts_events: u32,
    parts_heaps: std::collections::HashSet<u32>,
    /// The open chunk of parts was cut short for the end of the stream
    /// ([`TraceWriter::last_events_coming`]).
    tail_cut: bool,
    helper: Option<Helper>,
    failed: bool,
    /// Bytes of Events chunks so far.
    event_bytes: u64,
    /// Events in the Events chunks in the file so far.
    stored_events: u64,
    /// Bytes of the last Keyframe chunk.
    last_keyframe: u64,
}

impl TraceWriter<BufWriter<File>> {
    /// Creates `path` (replacing a file there, [`create_replacing`]) and writes the file header.
    pub fn create(path: impl AsRef<Path>, metadata: &Metadata) -> io::Result<Self> {
        Self::create_with(path, metadata, WriterOptions::default())
    }

    /// [`TraceWriter::create`] with options.
    pub fn create_with(
        path: impl AsRef<Path>,
        metadata: &Metadata,
        options: WriterOptions,
    ) -> io::Result<Self> {
        let file = create_replacing(path.as_ref())?;
        Self::new(BufWriter::with_capacity(1 << 18, file), metadata, options)
    }
}

/// Creates `path` for writing as a new file: a regular file already there is removed first,
/// not truncated. ext4 (`auto_da_alloc`, on by default) writes a truncated file's data out when
/// it is closed, as an application replacing a file's contents expects: recording over the last
/// run's trace, `close` waited 17.7-18.6 ms for a 53 MiB trace (strace, `heaplens record -o
/// r.hlt ./larson 1`), against 0.03 ms for a new file: about 2 % of the command, with one core
/// idle. A symbolic link is followed, as `File::create` does (the file it names is
/// truncated); a file that cannot be removed (a directory one may not write) is truncated.
pub fn create_replacing(path: &Path) -> io::Result<File> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file()) {
        // A failure leaves the file to `File::create`, which truncates it or says why not.
        let _ = std::fs::remove_file(path);
    }
    File::create(path)
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl<W: Write> TraceWriter<W> {
    /// Writes the file header to `out`; chunks follow as events come.
    pub fn new(mut out: W, metadata: &Metadata, options: WriterOptions) -> io::Result<Self> {
        if options.chunk_events == 0 || options.chunk_events > MAX_CHUNK_EVENTS {
            return Err(invalid("chunk_events must be 1..=MAX_CHUNK_EVENTS"));
        }
        let json = metadata.to_json();
        let meta_len = u32::try_from(json.len())
            .ok()
            .filter(|&n| n <= MAX_METADATA_LEN)
            .ok_or_else(|| invalid("metadata too large"))?;
        let fixed = file_header_fixed(meta_len);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&fixed);
        crc.update(json.as_bytes());
        out.write_all(&fixed)?;
        out.write_all(json.as_bytes())?;
        out.write_all(&crc.finalize().to_le_bytes())?;
        out.flush()?;
        let mut compressors = Compressors::default();
        if let Some(level) = options.zstd_level {
            // A bad level shows here, not at the first chunk.
            compressors.compress(level, &[], &mut Vec::new())?;
        }
        Ok(Self {
            out: Some(out),
            pos: (fixed.len() + json.len() + 4) as u64,
            options,
            encoder: ChunkEncoder::new(),
            events: 0,
            written_events: 0,
            end_time: 0,
            index: TraceIndex::default(),
            compressors,
            stored: Vec::new(),
            payloads: Vec::new(),
            parts_events: 0,
            parts_heaps: std::collections::HashSet::new(),
            tail_cut: false,
            helper: None,
            failed: false,
            event_bytes: 0,
            stored_events: 0,
            last_keyframe: 0,
        })
    }

    /// Compresses Events chunks on helper threads, so that encoding the next chunk and
    /// compressing the last ones run side by side (the file is the same); batches given with
    /// [`TraceWriter::write_shared`] are encoded there too. Each helper thread calls the
    /// closure `before_each()` makes for it before each chunk (the recorder sets its thread's
    /// priority there).
    pub fn compress_on_helper<F: FnMut() + Send + 'static>(
        mut self,
        before_each: impl Fn() -> F,
    ) -> io::Result<Self> {
        if self.helper.is_some() {
            return Ok(self);
        }
        let threads = (0..HELPER_THREADS)
            .map(|n| HelperThread::start(n, before_each()))
            .collect::<io::Result<Vec<_>>>()?;
        self.helper = Some(Helper {
            threads,
            order: std::collections::VecDeque::new(),
            next: 0,
        });
        Ok(self)
    }

    /// Events accepted so far (the index the next event will get).
    pub fn events_written(&self) -> u64 {
        self.events
    }

    /// Bytes in the file so far (not counting events not yet in a chunk).
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    /// Bytes the last keyframe took in the file (header included; 0 before the first).
    pub fn last_keyframe_bytes(&self) -> u64 {
        self.last_keyframe
    }

    /// Bytes per event of the Events chunks written so far (0 before the first).
    pub fn event_bytes_per_event(&self) -> f64 {
        self.event_bytes as f64 / self.stored_events.max(1) as f64
    }

    /// Adds a batch of one heap's events (heap 0: process-level events). A batch may be of any
    /// length; it is split across chunks as needed.
    pub fn write_batch(&mut self, heap: u32, events: &[Event]) -> io::Result<()> {
        self.check()?;
        if self.parts_events > 0 {
            self.write_events_chunk()?;
        }
        if !self.encoder.has_room_for(heap) {
            self.write_events_chunk()?;
        }
        let mut rest = events;
        while !rest.is_empty() {
            let room = (self.options.chunk_events - self.encoder.len()) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.encoder.push_batch(heap, now);
            self.events += now.len() as u64;
            if self.encoder.len() >= self.options.chunk_events {
                self.write_events_chunk()?;
            }
            rest = later;
        }
        Ok(())
    }

    /// [`TraceWriter::write_batch`] of a batch this thread need not read: with a compression
    /// helper ([`TraceWriter::compress_on_helper`]) the helper encodes it as well as
    /// compressing it (this thread hands it on, and waits only if the helper is
    /// [`PARTS_IN_FLIGHT`] batches behind). The file is the same.
    pub fn write_shared(&mut self, heap: u32, events: &SharedBatch) -> io::Result<()> {
        if self.helper.is_none() || self.options.zstd_level.is_none() {
            let mut room = Vec::new();
            return self.write_batch(heap, events.events(&mut room));
        }
        self.check()?;
        if !self.encoder.is_empty() {
            self.write_events_chunk()?;
        }
        // The encoder's rule (`ChunkEncoder::has_room_for`), on the chunk's parts.
        if self.parts_heaps.len() >= super::encode::MAX_CHUNK_HEAPS
            && !self.parts_heaps.contains(&heap)
        {
            self.write_events_chunk()?;
        }
        let len = events.len();
        let mut at = 0;
        while at < len {
            let room = (self.options.chunk_events - self.parts_events) as usize;
            let n = room.min(len - at);
            self.send(Work::Part(heap, Arc::clone(events), at..at + n), n)?;
            self.parts_heaps.insert(heap);
            self.parts_events += n as u32;
            self.events += n as u64;
            at += n;
            if self.parts_events >= self.options.chunk_events {
                self.write_events_chunk()?;
            }
        }
        Ok(())
    }

    /// About `remaining` more events are coming, and then the stream ends (the program has
    /// exited and its backlog holds that many). Once the helper that the open chunk of parts
    /// goes to has as many events queued as the other helper has with all of those, the chunk
    /// is cut (once): the rest then goes to the other helper as the last chunk, and the two
    /// finish near together. Left whole, the last chunk went to one helper, which worked alone
    /// for its length (20-30 ms of larson's 0.8 s recording, perf in 20 ms bins) while the
    /// other waited. The file holds the same events, in one chunk more. Returns whether it cut.
    pub fn last_events_coming(&mut self, remaining: u64) -> io::Result<bool> {
        let Some(h) = self.helper.as_ref() else {
            return Ok(false);
        };
        if self.tail_cut || self.parts_events == 0 {
            return Ok(false);
        }
        let queued = |t: usize| {
            h.threads[t]
                .jobs
                .as_ref()
                .map_or(0, crate::backlog::Sender::queued) as u64
        };
        let (this, other) = (h.next, (h.next + 1) % h.threads.len());
        if queued(this) < queued(other).saturating_add(remaining) {
            return Ok(false);
        }
        self.tail_cut = true;
        self.write_events_chunk()?;
        Ok(true)
    }

    /// Writes a keyframe: an opaque snapshot (e.g. a serialized model) of the state after the
    /// first `event_index` events, at `time`. Events given so far but not yet in a chunk go
    /// first, so a keyframe never precedes its events in the file.
    pub fn write_keyframe(
        &mut self,
        event_index: u64,
        time: u64,
        payload: &[u8],
    ) -> io::Result<()> {
        self.check()?;
        if event_index > self.events {
            return Err(invalid("keyframe refers to events not written yet"));
        }
        if payload.len() > MAX_KEYFRAME_LEN as usize {
            return Err(invalid("keyframe larger than MAX_KEYFRAME_LEN"));
        }
        if event_index > self.written_events {
            self.write_events_chunk()?;
        }
        self.drain()?;
        let level = self.options.zstd_level.map(|l| l.max(KEYFRAME_ZSTD_LEVEL));
        self.write_chunk(
            ChunkType::Keyframe,
            event_index,
            0,
            (time, time),
            payload,
            level,
        )?;
        self.flush_out()
    }

    /// Puts the events given so far into a chunk and flushes the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.write_events_chunk()?;
        self.drain()?;
        self.flush_out()
    }

    /// Writes the remaining events, the End chunk, the index and the trailer; returns the
    /// underlying writer.
    pub fn finish(mut self, end: EndInfo) -> io::Result<W> {
        self.check()?;
        self.write_events_chunk()?;
        self.drain()?;
        self.stop_helper();
        let (events, t) = (self.events, self.end_time);
        self.write_chunk(ChunkType::End, events, 0, (t, t), &end.to_bytes(), None)?;
        let index_offset = self.pos;
        let payload = self.index.to_payload();
        let level = self.options.zstd_level;
        self.write_chunk(ChunkType::Index, events, 0, (t, t), &payload, level)?;
        let trailer = trailer_bytes(index_offset);
        let r = self.out_mut().write_all(&trailer);
        self.track(r)?;
        self.pos += trailer.len() as u64;
        self.flush_out()?;
        self.out
            .take()
            .ok_or_else(|| invalid("writer already finished"))
    }

    fn check(&self) -> io::Result<()> {
        if self.failed || self.out.is_none() {
            return Err(io::Error::other("an earlier write to the trace failed"));
        }
        Ok(())
    }

    fn track<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn out_mut(&mut self) -> &mut W {
        self.out.as_mut().expect("checked by check()")
    }

    fn flush_out(&mut self) -> io::Result<()> {
        let r = self.out_mut().flush();
        self.track(r)
    }

    fn write_events_chunk(&mut self) -> io::Result<()> {
        if self.parts_events > 0 {
            return self.end_parts();
        }
        if self.encoder.is_empty() {
            return Ok(());
        }
        let count = self.encoder.len();
        let range = self.encoder.time_range();
        let (mut payload, stored) = self.payloads.pop().unwrap_or_default();
        self.encoder.finish_into(&mut payload);
        let first = self.written_events;
        self.written_events += u64::from(count);
        self.end_time = self.end_time.max(range.1);
        let job = Job {
            first_event: first,
            event_count: count,
            times: range,
            raw: payload,
            stored,
            from_parts: false,
            level: self.options.zstd_level.unwrap_or(0),
        };
        if self.options.zstd_level.is_some() && self.helper.is_some() {
            return self.send_job(job);
        }
        let r = self.write_chunk(
            ChunkType::Events,
            first,
            count,
            range,
            &job.raw,
            self.options.zstd_level,
        );
        self.payloads.push((job.raw, job.stored));
        r?;
        self.flush_out()
    }

    /// Ends the helper's chunk of parts: the helper encodes and compresses it.
    fn end_parts(&mut self) -> io::Result<()> {
        let count = self.parts_events;
        let first = self.written_events;
        self.written_events += u64::from(count);
        self.parts_events = 0;
        self.parts_heaps.clear();
        let (raw, stored) = self.payloads.pop().unwrap_or_default();
        let job = Job {
            first_event: first,
            event_count: count,
            times: (0, 0),
            raw,
            stored,
            from_parts: true,
            level: self.options.zstd_level.unwrap_or(0),
        };
        self.send_job(job)
    }

    /// Gives the next helper thread a chunk, after writing the oldest one in flight if there
    /// are enough; the chunk after it goes to the next thread.
    fn send_job(&mut self, job: Job) -> io::Result<()> {
        if self
            .helper
            .as_ref()
            .is_some_and(|h| h.order.len() >= HELPER_IN_FLIGHT * h.threads.len())
        {
            self.take_one()?;
        }
        self.send(Work::Chunk(job), 1)?;
        if let Some(h) = self.helper.as_mut() {
            h.order.push_back(h.next);
            h.next = h.least_queued();
        }
        Ok(())
    }

    /// Gives the next helper thread `work` of `events` events (a chunk: 1), waiting while it is
    /// behind.
    fn send(&mut self, work: Work, events: usize) -> io::Result<()> {
        let sent = self
            .helper
            .as_ref()
            .and_then(|h| h.threads[h.next].jobs.as_ref())
            .is_some_and(|jobs| jobs.send(work, events).is_ok());
        if !sent {
            self.failed = true;
            return Err(io::Error::other("the compression helper stopped"));
        }
        Ok(())
    }

    /// Writes the oldest chunk in flight, waiting for its helper thread.
    fn take_one(&mut self) -> io::Result<()> {
        let Some(h) = self.helper.as_mut() else {
            return Ok(());
        };
        let Some(t) = h.order.pop_front() else {
            return Ok(());
        };
        let Ok(Done { job, compressed }) = h.threads[t].done.recv() else {
            self.failed = true;
            return Err(io::Error::other("the compression helper stopped"));
        };
        self.end_time = self.end_time.max(job.times.1);
        let compressed = self.track(compressed)?;
        let r = self.put_chunk(
            ChunkType::Events,
            job.first_event,
            job.event_count,
            job.times,
            &job.raw,
            compressed.then_some(&job.stored[..]),
        );
        self.payloads.push((job.raw, job.stored));
        r?;
        self.flush_out()
    }

    /// Writes every chunk in flight.
    fn drain(&mut self) -> io::Result<()> {
        while self.helper.as_ref().is_some_and(|h| !h.order.is_empty()) {
            self.take_one()?;
        }
        Ok(())
    }

    /// Ends the helper threads (after [`Self::drain`]).
    fn stop_helper(&mut self) {
        if let Some(mut h) = self.helper.take() {
            for t in &mut h.threads {
                t.jobs = None;
            }
            for t in &mut h.threads {
                if let Some(t) = t.thread.take() {
                    let _ = t.join();
                }
            }
        }
    }

    fn write_chunk(
        &mut self,
        kind: ChunkType,
        first_event: u64,
        event_count: u32,
        times: (u64, u64),
        raw: &[u8],
        level: Option<i32>,
    ) -> io::Result<()> {
        let mut stored = std::mem::take(&mut self.stored);
        let compressed = match level {
            Some(level) if !raw.is_empty() => {
                let r = self.compressors.compress(level, raw, &mut stored);
                self.track(r)?
            }
            _ => false,
        };
        let r = self.put_chunk(
            kind,
            first_event,
            event_count,
            times,
            raw,
            compressed.then_some(&stored[..]),
        );
        self.stored = stored;
        r
    }

    /// Writes a chunk whose payload is `raw`, stored as `compressed` (zstd) if given.
    fn put_chunk(
        &mut self,
        kind: ChunkType,
        first_event: u64,
        event_count: u32,
        (start_time, end_time): (u64, u64),
        raw: &[u8],
        compressed: Option<&[u8]>,
    ) -> io::Result<()> {
        let raw_len = u32::try_from(raw.len()).map_err(|_| invalid("chunk payload too large"))?;
        let (compression, stored) = match compressed {
            Some(z) => (Compression::Zstd, z),
            None => (Compression::None, raw),
        };
        let header = ChunkHeader::sealed(
            kind,
            compression,
            (first_event, event_count),
            (start_time, end_time),
            raw_len,
            stored,
        );
        let out = self.out_mut();
        let r = out
            .write_all(&header.to_bytes())
            .and_then(|()| out.write_all(stored));
        self.track(r)?;
        if kind != ChunkType::Index {
            // Our own chunks always fit the index.
            let _ = self.index.push(self.pos, header);
        }
        match kind {
            ChunkType::Events => {
                self.event_bytes += header.total_len();
                self.stored_events += u64::from(event_count);
            }
            ChunkType::Keyframe => self.last_keyframe = header.total_len(),
            _ => {}
        }
        self.pos += header.total_len();
        Ok(())
    }
}

impl<W: Write> Drop for TraceWriter<W> {
    /// A writer dropped without [`TraceWriter::finish`] (a panic in the recorder) still writes
    /// its pending events, so the file reads as truncated after them.
    fn drop(&mut self) {
        if self.check().is_ok() {
            let _ = self.flush();
        }
        self.stop_helper();
    }
}
