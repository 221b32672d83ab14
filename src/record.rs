//! `heaplens record [--follow-fork] -o FILE -- CMD [ARGS...]`: run CMD with heaplens preloaded,
//! write every event it streams to a trace file (with `--follow-fork`, every process's to its own
//! trace in the folder FILE: see [`crate::processes`]), show progress, and exit with CMD's status.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use heaplens_alloc::event::Event;
use heaplens_alloc::stats::Bytes;
use heaplens_alloc::wire::WireError;
use heaplens_viewer::trace::{
    EndInfo, EndReason, ExitStatus, Metadata, SharedBatch, SharedEvents, TraceWriter,
};

use crate::launch::{self, Exit};
use crate::packed::PackedBatch;
use crate::processes::Processes;
use crate::quiet::say;

/// How long the program may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes one program's stream to a trace file: events only. Keyframes for seeking are made by
/// the first replay of the trace and stored by `heaplens view`
/// ([`heaplens_viewer::source::keyframes`]): applying every event to a model here cost as much
/// as encoding it, and an allocation-heavy program's recording waited for it. `heaplens
/// record`, `heaplens run --record` and `heaplens attach --record` all use it.
pub struct Recorder {
    output: PathBuf,
    writer: Option<TraceWriter>,
    /// Where a batch's event vector goes once the trace writer's helper has encoded it: back to
    /// the backlog's reader, to unpack a later batch into.
    recycle: crossbeam_channel::Sender<Vec<Event>>,
    /// The program has exited: the writer's compression helper takes the usual priority back.
    exited: Arc<AtomicBool>,
    /// Packed events handed on so far, and the backlog's bytes they took: how many events a
    /// byte of the backlog holds ([`Recorder::backlog_left`]).
    packed: (u64, u64),
}

/// A batch's events, read by the trace writer's helper that encodes them; the vector goes back
/// to be used again once it is done.
struct Shared {
    events: Vec<Event>,
    back: crossbeam_channel::Sender<Vec<Event>>,
}

impl SharedEvents for Shared {
    fn len(&self) -> usize {
        self.events.len()
    }

    fn events<'a>(&'a self, _room: &'a mut Vec<Event>) -> &'a [Event] {
        &self.events
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.back.try_send(std::mem::take(&mut self.events));
    }
}

impl Recorder {
    /// A recorder that will write `output` once the program's metadata arrives, and give each
    /// batch's event vector to `recycle` once done with it.
    pub fn new(output: &Path, recycle: crossbeam_channel::Sender<Vec<Event>>) -> Self {
        Self {
            output: output.to_owned(),
            writer: None,
            recycle,
            exited: Arc::new(AtomicBool::new(false)),
            packed: (0, 0),
        }
    }

    /// The program's metadata: creates the file.
    pub fn meta(&mut self, json: &str) -> Result<(), Box<dyn std::error::Error>> {
        let mut meta =
            Metadata::from_json(json).map_err(|e| format!("the program sent bad metadata: {e}"))?;
        meta.hostname = heaplens_viewer::trace::metadata::hostname();
        let cannot = |e: std::io::Error| format!("cannot write {}: {e}", self.output.display());
        // The helpers start at this thread's (lowered) priority, and take the usual one back
        // once the program has exited, as this thread does.
        let exited = &self.exited;
        let writer = TraceWriter::create(&self.output, &meta)
            .and_then(|w| {
                w.compress_on_helper(|| {
                    let exited = Arc::clone(exited);
                    let mut restored = false;
                    move || {
                        if !restored && exited.load(Ordering::Relaxed) {
                            crate::priority::restore_this_thread();
                            restored = true;
                        }
                    }
                })
            })
            .map_err(cannot)?;
        self.writer = Some(writer);
        Ok(())
    }

    /// Hands heap `heap`'s batch to the trace writer's helpers.
    pub fn batch(
        &mut self,
        heap: u32,
        events: Vec<Event>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let back = self.recycle.clone();
        let batch = Arc::new(Shared { events, back }) as SharedBatch;
        self.writer()?.write_shared(heap, &batch)?;
        Ok(())
    }

    /// Hands a packed batch to the trace writer's helpers, which unpack it as they encode it:
    /// no thread unpacks it for another to read.
    pub fn packed(&mut self, batch: PackedBatch) -> Result<(), Box<dyn std::error::Error>> {
        let heap = batch.heap;
        self.packed.0 += batch.len() as u64;
        self.packed.1 += batch.held() as u64;
        self.writer()?
            .write_shared(heap, &(Arc::new(batch) as SharedBatch))?;
        Ok(())
    }

    /// The program has exited, and `queued` bytes of its packed stream wait in the backlog: tells
    /// the trace writer about how many events are still to come
    /// ([`TraceWriter::last_events_coming`]), at the bytes an event the stream took so far.
    pub fn backlog_left(&mut self, queued: usize) -> Result<(), Box<dyn std::error::Error>> {
        let (events, bytes) = self.packed;
        let Some(writer) = self.writer.as_mut().filter(|_| bytes > 0) else {
            return Ok(());
        };
        let remaining = u128::from(events) * queued as u128 / u128::from(bytes);
        writer.last_events_coming(u64::try_from(remaining).unwrap_or(u64::MAX))?;
        Ok(())
    }

    /// The trace writer, once the program's metadata has made it.
    fn writer(&mut self) -> Result<&mut TraceWriter, &'static str> {
        self.writer
            .as_mut()
            .ok_or("the program's stream had events before its metadata")
    }

    /// The program has exited: the recorder's threads go back to the usual priority if they can.
    pub fn program_exited(&self) {
        crate::priority::restore_this_thread();
        self.exited.store(true, Ordering::Relaxed);
    }

    /// Events and bytes written so far.
    pub fn written(&self) -> (u64, u64) {
        self.writer
            .as_ref()
            .map_or((0, 0), |w| (w.events_written(), w.bytes_written()))
    }

    /// Ends the file with how the program ended; returns the events written.
    pub fn finish(
        self,
        status: ExitStatus,
        clean: bool,
    ) -> Result<u64, Box<dyn std::error::Error>> {
        let reason = if clean {
            EndReason::Clean
        } else {
            EndReason::PeerVanished
        };
        self.finish_with(EndInfo { reason, status })
    }

    /// Writes the End chunk `end`; returns the events written.
    pub fn finish_with(self, end: EndInfo) -> Result<u64, Box<dyn std::error::Error>> {
        let Some(w) = self.writer else {
            return Err("the program ended without sending any events".into());
        };
        let events = w.events_written();
        w.finish(end)?;
        Ok(events)
    }
}

/// The trace's form of how the program ended.
pub fn exit_status(exit: Exit) -> ExitStatus {
    match exit {
        Exit::Code(c) => ExitStatus::Code(c),
        Exit::Signal(s) => ExitStatus::Signal(s),
    }
}

/// Records; returns the exit code heaplens should end with (the program's).
///
/// The reader threads (see [`launch`]) queue the streams in a backlog of at most
/// `backlog_bytes`; this thread encodes from it at a lower priority than the program, so the
/// program runs at close to its own speed and the traces are finished after it exits. With
/// `follow`, `output` is a folder and every process of the command is recorded into it.
pub fn run(
    output: &Path,
    command: &[OsString],
    stacks: &crate::sites::StackArgs,
    backlog_bytes: usize,
    follow: bool,
) -> Result<i32, Box<dyn std::error::Error>> {
    let start = Instant::now();
    crate::processes::prepare_output(output, follow)?;
    let launched = launch::launch(
        command,
        CONNECT_TIMEOUT,
        &stacks.env(),
        backlog_bytes,
        follow,
    )?;
    let pid = launched.pid;
    let mut processes = Processes::new(output, follow, pid, launched.recycle.clone());
    crate::priority::lower_this_thread();
    let mut progress = Progress::new(pid);
    let mut exited = false;
    while let Some(queued) = launched.frames.recv_queued() {
        if !exited && launched.exit.is_finished() {
            exited = true;
            processes.program_exited();
        }
        if processes.take_queued(queued) {
            if exited {
                processes.backlog_left(launched.frames.queued());
            }
            let (events, bytes) = processes.written_so_far();
            progress.update(
                events,
                bytes,
                launched.frames.queued(),
                launched.exit.is_finished(),
            );
        }
    }
    let (status, exited) = launched
        .exit
        .join()
        .map_err(|_| "waiting for the program failed")??;
    let exit = Exit::from_status(status);
    progress.clear();
    let early = early_end(processes.program_stream_error());
    let finished = processes.finish(exit_status(exit))?;
    let program = exited.duration_since(start).as_secs_f64();
    let secs = start.elapsed().as_secs_f64();
    let main = finished
        .written
        .iter()
        .find(|w| w.pid == i32::try_from(pid).unwrap_or(-1));
    if follow {
        let events: u64 = finished.written.iter().map(|w| w.events).sum();
        say!(
            "{} processes, {events} events in {secs:.2} s (the program ran {program:.2} s) -> {}/",
            finished.written.len(),
            output.display()
        );
        for w in &finished.written {
            say!(
                "  pid {} ({}): {} events -> {}",
                w.pid,
                w.command,
                w.events,
                w.path.display()
            );
        }
    } else {
        let events = main.map_or(0, |w| w.events);
        let bytes = std::fs::metadata(output).map_or(0, |m| m.len());
        say!(
            "{events} events in {secs:.2} s (the program ran {program:.2} s) -> {} ({}, {:.2} bytes/event)",
            output.display(),
            Bytes(usize::try_from(bytes).unwrap_or(usize::MAX)),
            bytes as f64 / events.max(1) as f64
        );
    }
    let usage = launched.frames.usage();
    if usage.waits > 0 {
        say!(
            "the program waited for heaplens {} times: its backlog was full ({}); \
             raise it with --backlog-mib",
            usage.waits,
            Bytes(usage.budget)
        );
    }
    let Some(main) = main else {
        return Err(format!("the program {exit} without sending any events").into());
    };
    match exit {
        Exit::Signal(_) => {
            say!("the program was {exit}; the trace holds everything up to then");
        }
        Exit::Code(_) if !main.clean => {
            say!(
                "the program {exit}, but {}; the trace holds the {} events that arrived \
                 (any the program made after its last flush are missing)",
                early,
                main.events
            );
        }
        Exit::Code(_) => {}
    }
    if let Some(note) = finished.unrecorded_note() {
        say!("{note}");
    }
    if let Some(note) = launched.frames.damage().note() {
        say!("{note}");
    }
    Ok(exit.shell_code())
}

/// Why a program's event stream ended before its end mark, in words.
fn early_end(error: Option<&WireError>) -> String {
    match error {
        Some(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "its event stream stopped without the end mark the hook sends at exit (the program \
             may have left through _exit, as shells do, or closed heaplens's socket)"
                .to_owned()
        }
        Some(e) => format!("its event stream broke: {e}"),
        None => "its event stream closed without the end mark the hook sends at exit".to_owned(),
    }
}

/// A one-line progress report on stderr: events, rate, bytes written.
struct Progress {
    pid: u32,
    start: Instant,
    last: Instant,
    last_events: u64,
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new(pid: u32) -> Self {
        let now = Instant::now();
        Self {
            pid,
            start: now,
            last: now,
            last_events: 0,
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn update(&mut self, events: u64, bytes: u64, queued: usize, exited: bool) {
        let period = if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(2)
        };
        let dt = self.last.elapsed();
        if dt < period {
            return;
        }
        let rate = events.saturating_sub(self.last_events) as f64 / dt.as_secs_f64();
        let what = if exited {
            format!("pid {} exited; finishing the trace", self.pid)
        } else {
            format!("recording pid {}", self.pid)
        };
        let line = format!(
            "heaplens: {what} ({:.0} s): {events} events ({:.1} M/s), {} written, {} queued",
            self.start.elapsed().as_secs_f64(),
            rate / 1e6,
            Bytes(usize::try_from(bytes).unwrap_or(usize::MAX)),
            Bytes(queued)
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.shown = true;
        self.last = Instant::now();
        self.last_events = events;
    }

    fn clear(&mut self) {
        if self.tty && self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
        self.shown = false;
    }
}
