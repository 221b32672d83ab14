//! The processes of one launch and where their streams go: `heaplens record` and `heaplens run
//! --record` hand every [`Frame`] here.
//!
//! Without `--follow-fork` the program's stream goes to the output file, and its children, which
//! only say who they are, are listed for the note at the end ("2 child processes were not
//! recorded (cc1, as)"). With it the output is a folder and every process gets its own trace,
//! `OUT/PID.hltrace`, with its parent's pid (`parent_pid`) and command line in the metadata.
//!
//! A process that execs connects again: a later connection of a pid is the program it became,
//! whose trace replaces the one before (the same process, the same file). A stream that closes
//! with its end mark is finished at once; one that closes without it is finished once the
//! process is gone (it may yet exec), at the latest when the command is over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use heaplens_alloc::batch::{Batch, Message};
use heaplens_alloc::event::Event;
use heaplens_alloc::wire::WireError;
use heaplens_viewer::trace::ExitStatus;

use crate::launch::{Frame, Queued, StreamItem};
use crate::quiet::say;
use crate::record::Recorder;

/// A recorded process whose trace is being written.
struct Open {
    conn: u64,
    recorder: Recorder,
    command: String,
    /// Its stream ended with the end mark.
    ended: bool,
    /// The status it exited with, as it said before its end mark.
    exit: Option<i32>,
    /// Its stream closed (with the error, if any, that ended it).
    closed: Option<Option<WireError>>,
}

/// A process whose trace is written.
#[derive(Clone, Debug)]
pub struct Written {
    /// Its pid.
    pub pid: i32,
    /// Its program (the command's first word, without its directory).
    pub command: String,
    /// Events in its trace.
    pub events: u64,
    /// The trace.
    pub path: PathBuf,
    /// Whether its stream ended with the end mark.
    pub clean: bool,
}

/// Where a launch's processes are recorded, and what is known of them.
pub struct Processes {
    output: PathBuf,
    follow: bool,
    program: i32,
    recycle: crossbeam_channel::Sender<Vec<Event>>,
    open: BTreeMap<i32, Open>,
    /// Children that were not recorded: pid -> (connection, program).
    unrecorded: BTreeMap<i32, (u64, String)>,
    written: Vec<Written>,
    /// The first error writing a trace.
    failed: Option<String>,
}

impl Processes {
    /// Records `program`'s stream into `output` (a file), or with `follow` every process's into
    /// the folder `output` ([`prepare_output`] first).
    pub fn new(
        output: &Path,
        follow: bool,
        program: u32,
        recycle: crossbeam_channel::Sender<Vec<Event>>,
    ) -> Self {
        Self {
            output: output.to_owned(),
            follow,
            program: i32::try_from(program).unwrap_or(-1),
            recycle,
            open: BTreeMap::new(),
            unrecorded: BTreeMap::new(),
            written: Vec::new(),
            failed: None,
        }
    }

    /// The trace file of process `pid`.
    fn path_of(&self, pid: i32) -> PathBuf {
        if self.follow {
            self.output.join(format!("{pid}.hltrace"))
        } else {
            self.output.clone()
        }
    }

    /// Takes one frame. An error writing a trace stops that trace (the others go on) and is
    /// returned by [`Processes::finish`].
    pub fn take(&mut self, frame: Frame) {
        let Frame { conn, pid, item } = frame;
        match item {
            StreamItem::Message(Message::Meta(json)) => self.meta(conn, pid, &json),
            StreamItem::Message(Message::Batch(Batch { heap, events })) => {
                if let Some(p) = self.current(conn, pid)
                    && let Err(e) = p.recorder.batch(heap, events)
                {
                    self.fail(pid, &e.to_string());
                }
            }
            StreamItem::Message(Message::End) => {
                if let Some(p) = self.current(conn, pid) {
                    p.ended = true;
                }
            }
            StreamItem::Message(Message::Exit(code)) => {
                if let Some(p) = self.current(conn, pid) {
                    p.exit = Some(code);
                }
            }
            StreamItem::Closed(why) => {
                let Some(p) = self.current(conn, pid) else {
                    return;
                };
                let clean = p.ended && why.is_none();
                p.closed = Some(why);
                // The program itself is finished last, with its exit status; another process
                // once it is gone (without its end mark it may have exec'd and connect again).
                if pid != self.program && clean {
                    self.finish_one(pid, ExitStatus::Unknown);
                }
                self.sweep();
            }
        }
    }

    /// Takes one item of the backlog as [`Frames::recv_queued`] gives it: a packed batch goes to
    /// its trace packed (the writer's helpers unpack it as they encode it); returns whether it
    /// was a batch.
    pub fn take_queued(&mut self, queued: Queued) -> bool {
        match queued {
            Queued::Frame(frame) => {
                let batch = matches!(frame.item, StreamItem::Message(Message::Batch(_)));
                self.take(frame);
                batch
            }
            Queued::Packed { conn, pid, batch } => {
                if let Some(p) = self.current(conn, pid)
                    && let Err(e) = p.recorder.packed(batch)
                {
                    self.fail(pid, &e.to_string());
                }
                true
            }
        }
    }

    /// Finishes the traces whose stream closed without its end mark and whose process is gone
    /// (so no exec can follow), rather than keep them open until the command is over.
    fn sweep(&mut self) {
        let gone: Vec<i32> = self
            .open
            .iter()
            .filter(|(pid, p)| {
                **pid != self.program && p.closed.is_some() && !crate::launch::running(**pid)
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            self.finish_one(pid, ExitStatus::Unknown);
        }
    }

    /// The open trace of `pid` if `conn` is its current connection.
    fn current(&mut self, conn: u64, pid: i32) -> Option<&mut Open> {
        self.open.get_mut(&pid).filter(|p| p.conn == conn)
    }

    fn meta(&mut self, conn: u64, pid: i32, json: &str) {
        let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let command = program_name(&value);
        let recorded = value["recorded"].as_bool() != Some(false);
        if !recorded || (!self.follow && pid != self.program) {
            match self.unrecorded.get(&pid) {
                Some((c, _)) if *c > conn => {}
                _ => {
                    self.unrecorded.insert(pid, (conn, command));
                }
            }
            return;
        }
        self.sweep();
        if let Some(before) = self.open.get(&pid) {
            if before.conn > conn {
                return; // a stale connection of a program that has exec'd since
            }
            if !self.follow {
                say!("pid {pid} exec'd another program; recording that one");
            }
            // The same process, become another program: its trace starts over.
            self.open.remove(&pid);
        }
        self.unrecorded.remove(&pid);
        let path = self.path_of(pid);
        let mut recorder = Recorder::new(&path, self.recycle.clone());
        if let Err(e) = recorder.meta(json) {
            self.fail(pid, &e.to_string());
            return;
        }
        self.open.insert(
            pid,
            Open {
                conn,
                recorder,
                command,
                ended: false,
                exit: None,
                closed: None,
            },
        );
    }

    fn fail(&mut self, pid: i32, why: &str) {
        self.open.remove(&pid);
        if self.failed.is_none() {
            self.failed = Some(format!("recording pid {pid} stopped: {why}"));
        }
    }

    fn finish_one(&mut self, pid: i32, status: ExitStatus) {
        let Some(p) = self.open.remove(&pid) else {
            return;
        };
        let clean = p.ended && matches!(p.closed, Some(None));
        let path = self.path_of(pid);
        // The launcher's wait knows its child's status (a signal too); the others' is what they
        // said as they exited.
        let status = match (status, p.exit) {
            (ExitStatus::Unknown, Some(code)) if clean => ExitStatus::Code(code),
            _ => status,
        };
        match p.recorder.finish(status, clean) {
            Ok(events) => self.written.push(Written {
                pid,
                command: p.command,
                events,
                path,
                clean,
            }),
            Err(e) => self.fail(pid, &e.to_string()),
        }
    }

    /// Events and bytes written so far to the open traces.
    pub fn written_so_far(&self) -> (u64, u64) {
        self.open.values().fold((0, 0), |(e, b), p| {
            let (pe, pb) = p.recorder.written();
            (e + pe, b + pb)
        })
    }

    /// The program has exited and `queued` bytes of stream wait in the backlog: with one process
    /// recorded, all of them are its own, and its recorder learns how many events are left
    /// ([`Recorder::backlog_left`]). With more, whose bytes they are is not known: nothing.
    pub fn backlog_left(&mut self, queued: usize) {
        if self.open.len() != 1 {
            return;
        }
        let Some((&pid, p)) = self.open.iter_mut().next() else {
            return;
        };
        if let Err(e) = p.recorder.backlog_left(queued) {
            self.fail(pid, &e.to_string());
        }
    }

    /// The program has exited: the recorders' threads go back to the usual priority.
    pub fn program_exited(&self) {
        for p in self.open.values() {
            p.recorder.program_exited();
        }
    }

    /// How the program's stream ended: `None` if it is not known yet or ended cleanly.
    pub fn program_stream_error(&self) -> Option<&WireError> {
        self.open
            .get(&self.program)
            .and_then(|p| p.closed.as_ref())
            .and_then(Option::as_ref)
    }

    /// Finishes every trace (the program's with `status`; the others' with the status they said
    /// they exit with, if they did) and returns what was written, or the first error.
    pub fn finish(mut self, status: ExitStatus) -> Result<Finished, String> {
        let pids: Vec<i32> = self.open.keys().copied().collect();
        for pid in pids {
            let s = if pid == self.program {
                status
            } else {
                ExitStatus::Unknown
            };
            self.finish_one(pid, s);
        }
        if let Some(e) = self.failed {
            return Err(e);
        }
        // A process that exec'd after its first program's trace was finished has the later
        // program's trace in its file.
        let written: BTreeMap<i32, Written> =
            self.written.into_iter().map(|w| (w.pid, w)).collect();
        Ok(Finished {
            written: written.into_values().collect(),
            unrecorded: self.unrecorded.into_values().map(|(_, c)| c).collect(),
        })
    }
}

/// What a launch's recording produced.
pub struct Finished {
    /// The traces, by pid.
    pub written: Vec<Written>,
    /// The programs of the child processes that were not recorded.
    pub unrecorded: Vec<String>,
}

impl Finished {
    /// The one line said at the end when children were not recorded, or `None`.
    pub fn unrecorded_note(&self) -> Option<String> {
        let n = self.unrecorded.len();
        if n == 0 {
            return None;
        }
        let mut names: Vec<&str> = Vec::new();
        for c in &self.unrecorded {
            if !names.contains(&c.as_str()) {
                names.push(c);
            }
        }
        let (what, list) = if names.len() > 8 {
            (n, format!("{}, ...", names[..8].join(", ")))
        } else {
            (n, names.join(", "))
        };
        let noun = if what == 1 {
            "child process was"
        } else {
            "child processes were"
        };
        Some(format!(
            "{what} {noun} not recorded ({list}); add --follow-fork to record them"
        ))
    }
}

/// The program of a metadata block: the command line's first word, without its directory.
fn program_name(meta: &serde_json::Value) -> String {
    let first = meta["command"][0].as_str().unwrap_or("?");
    Path::new(first)
        .file_name()
        .map_or_else(|| first.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// With `follow`: makes the output folder, or checks that an existing one holds no trace (a
/// trace of an earlier run would mix with this one's). Nothing to do for a file.
pub fn prepare_output(dir: &Path, follow: bool) -> Result<(), String> {
    if !follow {
        return Ok(());
    }
    if dir.exists() && !dir.is_dir() {
        return Err(format!(
            "{} is a file; with --follow-fork the output is a folder (one trace per process)",
            dir.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let stale = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .any(|e| e.path().extension().is_some_and(|x| x == "hltrace"));
    if stale {
        return Err(format!(
            "{} already holds traces; remove them or choose another folder",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(unrecorded: &[&str]) -> Finished {
        Finished {
            written: Vec::new(),
            unrecorded: unrecorded.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn the_note_names_the_children_once_each() {
        assert_eq!(finished(&[]).unrecorded_note(), None);
        assert_eq!(
            finished(&["cc1", "as"]).unrecorded_note().unwrap(),
            "2 child processes were not recorded (cc1, as); add --follow-fork to record them"
        );
        assert_eq!(
            finished(&["prog", "prog", "prog"])
                .unrecorded_note()
                .unwrap(),
            "3 child processes were not recorded (prog); add --follow-fork to record them"
        );
        assert!(
            finished(&["sh"])
                .unrecorded_note()
                .unwrap()
                .starts_with("1 child process was not recorded (sh)")
        );
    }

    /// The recorder's loop over packed batches as they came: the writer's helpers unpack them,
    /// and a damaged one is written at its length, its events from the damage on as lost ones.
    #[test]
    fn a_damaged_packed_batch_is_recorded_with_its_lost_events() {
        let (tx, frames, recycle, events) = crate::launch::stream_with_a_damaged_batch(4, 2);
        drop(tx);

        let dir = std::env::temp_dir().join(format!("heaplens-packed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("t.hltrace");
        let mut processes = Processes::new(&out, false, 7, recycle);
        processes.take(Frame {
            conn: 1,
            pid: 7,
            item: StreamItem::Message(Message::Meta("{}".into())),
        });
        let mut batches = 0;
        while let Some(q) = frames.recv_queued() {
            batches += usize::from(processes.take_queued(q));
        }
        assert_eq!(batches, 4);
        assert!(
            processes.program_stream_error().is_none(),
            "the stream went on"
        );
        let finished = processes.finish(ExitStatus::Code(0)).unwrap();
        assert_eq!(finished.written[0].events, 1200);
        assert!(finished.written[0].clean);
        let mut reader = heaplens_viewer::trace::TraceReader::open(&out).unwrap();
        let read: Vec<Event> = reader.events().map(|e| e.unwrap().1).collect();
        assert_eq!(read.len(), 1200);
        let lost: Vec<usize> = (0..read.len())
            .filter(|&i| read[i].kind == heaplens_alloc::event::EventKind::Dropped as u8)
            .collect();
        assert_eq!(
            lost,
            (700..900).collect::<Vec<_>>(),
            "batch 2 from its event 100"
        );
        for (i, e) in read
            .iter()
            .enumerate()
            .filter(|(i, _)| !(700..900).contains(i))
        {
            assert_eq!(*e, events[i % 300], "event {i}");
        }
        assert_eq!(frames.damage().seen().map(|d| (d.0, d.1)), Some((1, 200)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn program_names_drop_the_directory() {
        let meta =
            serde_json::json!({"command": ["/usr/lib/gcc/x86_64-linux-gnu/14/cc1", "-quiet"]});
        assert_eq!(program_name(&meta), "cc1");
        assert_eq!(program_name(&serde_json::json!({})), "?");
    }
}
