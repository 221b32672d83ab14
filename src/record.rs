//! `heaplens record -o FILE -- CMD [ARGS...]`: run CMD with heaplens preloaded, write every event
//! it streams to a trace file, show progress, and exit with CMD's status.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use heaplens_alloc::batch::{Batch, Message};
use heaplens_alloc::event::Event;
use heaplens_alloc::stats::Bytes;
use heaplens_alloc::wire::WireError;
use heaplens_viewer::trace::{EndInfo, EndReason, ExitStatus, Metadata, TraceWriter};

use crate::keyframes::{Keyframe, Keyframes};
use crate::launch::{self, Exit, StreamItem};
use crate::quiet::say;

/// How long the program may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes one program's stream to a trace file, with a keyframe every
/// [`crate::keyframes::KEYFRAME_EVERY`] events or more (keyframes of a large model are spaced so
/// they stay a small share of the file). `heaplens record` and `heaplens run --record`
/// both use it.
pub struct Recorder {
    output: PathBuf,
    writer: Option<TraceWriter>,
    keyframes: Option<Keyframes>,
    recycle: Option<crossbeam_channel::Sender<Vec<Event>>>,
}

impl Recorder {
    /// A recorder that will write `output` once the program's metadata arrives.
    pub fn new(output: &Path) -> Self {
        Self {
            output: output.to_owned(),
            writer: None,
            keyframes: None,
            recycle: None,
        }
    }

    /// Gives each batch's event vector to `recycle` once the recorder is done with it.
    pub fn recycling(mut self, recycle: crossbeam_channel::Sender<Vec<Event>>) -> Self {
        self.recycle = Some(recycle);
        self
    }

    /// The program's metadata: creates the file and starts the keyframe model.
    pub fn meta(&mut self, json: &str) -> Result<(), Box<dyn std::error::Error>> {
        let mut meta =
            Metadata::from_json(json).map_err(|e| format!("the program sent bad metadata: {e}"))?;
        meta.hostname = heaplens_viewer::trace::metadata::hostname();
        self.writer = Some(
            TraceWriter::create(&self.output, &meta)
                .map_err(|e| format!("cannot write {}: {e}", self.output.display()))?,
        );
        self.keyframes = Some(Keyframes::start(self.recycle.clone())?);
        Ok(())
    }

    /// Writes a batch (see [`Recorder::batch_owned`]).
    pub fn batch(&mut self, heap: u32, events: &[Event]) -> Result<(), Box<dyn std::error::Error>> {
        self.batch_owned(heap, events.to_vec())
    }

    /// Writes a batch and hands it to the keyframe model.
    pub fn batch_owned(
        &mut self,
        heap: u32,
        events: Vec<Event>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (Some(w), Some(k)) = (self.writer.as_mut(), self.keyframes.as_ref()) else {
            return Err("the program's stream had events before its metadata".into());
        };
        w.write_batch(heap, &events)?;
        k.push(heap, events);
        for kf in k.ready() {
            write_keyframe(w, &kf?)?;
            k.written(w.last_keyframe_bytes(), w.event_bytes_per_event());
        }
        Ok(())
    }

    /// The program has exited: the recorder's threads go back to the usual priority if they can.
    pub fn program_exited(&self) {
        crate::priority::restore_this_thread();
        if let Some(k) = &self.keyframes {
            k.program_exited();
        }
    }

    /// The program replaced itself: start the file over for the new one.
    pub fn exec(&mut self) {
        self.writer = None;
        self.keyframes = None;
    }

    /// Events and bytes written so far.
    pub fn written(&self) -> (u64, u64) {
        self.writer
            .as_ref()
            .map_or((0, 0), |w| (w.events_written(), w.bytes_written()))
    }

    /// Ends the file with how the program ended; returns the events written.
    pub fn finish(self, exit: Exit, clean: bool) -> Result<u64, Box<dyn std::error::Error>> {
        let status = match exit {
            Exit::Code(c) => ExitStatus::Code(c),
            Exit::Signal(s) => ExitStatus::Signal(s),
        };
        if self.writer.is_none() {
            return Err(format!("the program {exit} without sending any events").into());
        }
        self.finish_status(status, clean)
    }

    /// Ends the file with `status` (`Unknown` for a program heaplens detached from, which runs
    /// on); returns the events written.
    pub fn finish_status(
        self,
        status: ExitStatus,
        clean: bool,
    ) -> Result<u64, Box<dyn std::error::Error>> {
        let reason = if clean {
            EndReason::Clean
        } else {
            EndReason::PeerVanished
        };
        let Some(mut w) = self.writer else {
            return Err("the program sent no events".into());
        };
        if let Some(k) = self.keyframes {
            for kf in k.finish()? {
                write_keyframe(&mut w, &kf?)?;
            }
        }
        let events = w.events_written();
        w.finish(EndInfo { reason, status })?;
        Ok(events)
    }
}

fn write_keyframe(w: &mut TraceWriter, kf: &Keyframe) -> Result<(), Box<dyn std::error::Error>> {
    w.write_keyframe(kf.event_index, kf.time, &kf.snapshot)?;
    Ok(())
}

/// Records; returns the exit code heaplens should end with (the program's).
///
/// The reader thread (see [`launch`]) queues the program's stream in a backlog of at most
/// `backlog_bytes`; this thread encodes from it at a lower priority than the program, so the
/// program runs at close to its own speed and the trace is finished after it exits.
pub fn run(
    output: &Path,
    command: &[OsString],
    stacks: &crate::sites::StackArgs,
    backlog_bytes: usize,
) -> Result<i32, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let launched = launch::launch(command, CONNECT_TIMEOUT, &stacks.env(), backlog_bytes)?;
    let pid = launched.child.id();
    let mut child = launched.child;
    // The program's own run time: from its start to its exit, whatever the encoder is doing.
    let waiter = std::thread::Builder::new()
        .name("heaplens-wait".into())
        .spawn(move || (child.wait(), Instant::now()))?;
    crate::priority::lower_this_thread();
    let mut progress = Progress::new(pid);
    let mut recorder = Recorder::new(output).recycling(launched.recycle.clone());
    let mut stream_error = None;
    let mut ended_cleanly = false;
    let mut exited = false;
    for item in &launched.frames {
        if !exited && waiter.is_finished() {
            exited = true;
            recorder.program_exited();
        }
        match item {
            StreamItem::Message(Message::Meta(json)) => recorder.meta(&json)?,
            StreamItem::Message(Message::Batch(Batch { heap, events })) => {
                recorder.batch_owned(heap, events)?;
                let (events, bytes) = recorder.written();
                progress.update(
                    events,
                    bytes,
                    launched.frames.queued(),
                    waiter.is_finished(),
                );
            }
            StreamItem::Message(Message::End) => ended_cleanly = true,
            StreamItem::Exec => {
                // The program replaced itself (a wrapper script, a shell): record the new one.
                progress.clear();
                say!("pid {pid} exec'd another program; recording that one");
                recorder.exec();
                progress.last_events = 0;
            }
            StreamItem::Closed(why) => {
                stream_error = why;
                break;
            }
        }
    }
    let (status, exited) = waiter
        .join()
        .map_err(|_| "waiting for the program failed")?;
    let exit = Exit::from_status(status?);
    progress.clear();
    let clean = ended_cleanly && stream_error.is_none();
    let events = recorder.finish(exit, clean)?;
    let bytes = std::fs::metadata(output).map_or(0, |m| m.len());
    let program = exited.duration_since(start).as_secs_f64();
    let secs = start.elapsed().as_secs_f64();
    say!(
        "{events} events in {secs:.2} s (the program ran {program:.2} s) -> {} ({}, {:.2} bytes/event)",
        output.display(),
        Bytes(usize::try_from(bytes).unwrap_or(usize::MAX)),
        bytes as f64 / events.max(1) as f64
    );
    let usage = launched.frames.usage();
    if usage.waits > 0 {
        say!(
            "the program waited for heaplens {} times: its backlog was full ({}); \
             raise it with --backlog-mib",
            usage.waits,
            Bytes(usage.budget)
        );
    }
    match exit {
        Exit::Signal(_) => {
            say!("the program was {exit}; the trace holds everything up to then");
        }
        Exit::Code(_) if !clean => {
            say!(
                "the program {exit}, but {}; the trace holds the {events} events that arrived \
                 (any the program made after its last flush are missing)",
                early_end(stream_error.as_ref())
            );
        }
        Exit::Code(_) => {}
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
