//! `heaplens attach PID [--record FILE]`: watch (or record) a program that is already running.
//!
//! The program must have been started with `libheaplens.so` preloaded and `HEAPLENS_ATTACH=1`:
//! it then listens on `PID.sock` in a private directory (see `heaplens_alloc::attach`). heaplens
//! finds the socket the way the program made it (from the program's own `XDG_RUNTIME_DIR`),
//! connects, asks for the stack mode, and receives the same stream a launched program sends: the
//! metadata, a census of everything live (the blocks allocated before the attach, without
//! sites), then events. Closing the viewer, SIGINT or SIGTERM detaches: heaplens shuts its end of
//! the socket for writing, the program switches its hook off and sends what it still holds, a
//! last census and the end mark, and runs on untraced. A second signal gives up waiting for
//! that: the trace is finished with what arrived.

use std::ffi::OsString;
use std::io::{self, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, bounded};
use heaplens_alloc::attach::{self, ATTACH_ENV};
use heaplens_alloc::batch::{Batch, Message};
use heaplens_alloc::event::{Event, EventKind};
use heaplens_alloc::wire::{self, WireError, my_uid};
use heaplens_viewer::source::{Feed, Live, Status};
use heaplens_viewer::trace::{EndInfo, EndReason, ExitStatus};
use heaplens_viewer::ui::{self, App, Source};

use crate::launch::{self, StreamItem};
use crate::quiet::say;
use crate::record::Recorder;
use crate::sites::{StackArgs, StackMode};
use crate::tap::Tap;

/// Batches the viewer may fall behind by before it misses some.
const VIEWER_BACKLOG: usize = 1024;
/// How long the viewer waits, once closed, for the program to finish its stream.
const DETACH_WAIT: Duration = Duration::from_secs(10);

/// The socket to the program, for the signal handler (-1: none yet).
static SOCKET_FD: AtomicI32 = AtomicI32::new(-1);
/// The signal that asked to detach (0: none).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);
/// heaplens asked the program to stop streaming (a signal, or the viewer closed).
static DETACHING: AtomicBool = AtomicBool::new(false);

/// A running program of ours that listens for heaplens.
struct Target {
    pid: i32,
    /// Its name (`/proc/PID/comm`).
    name: String,
    socket: PathBuf,
}

/// Attaches; returns the exit code heaplens should end with (0 once detached or once the
/// program has gone, the trace finished).
pub fn run(
    pid: i32,
    record: Option<&Path>,
    stacks: &StackArgs,
) -> Result<i32, Box<dyn std::error::Error>> {
    let target = locate(pid)?;
    if record.is_none() && !ui::display_available() {
        return Err(format!(
            "no display to open the viewer on (DISPLAY is not set); record pid {pid} with \
             `heaplens attach {pid} --record trace.hltrace` and read it with `heaplens stats \
             trace.hltrace`"
        )
        .into());
    }
    let mut stream = connect(&target)?;
    let mode = match stacks.stacks {
        StackMode::Off => heaplens_alloc::StackMode::Off,
        StackMode::Sampled => heaplens_alloc::StackMode::Sampled,
        StackMode::All => heaplens_alloc::StackMode::All,
    };
    if let Err(e) = stream.write_all(&attach::encode_request(mode, stacks.sample_bytes)) {
        // Closed at once: the program serves another heaplens.
        return Err(refused(&target, Some(&WireError::Io(e))).into());
    }
    SOCKET_FD.store(stream.as_raw_fd(), Ordering::SeqCst);
    handle_signals();
    let (tx, frames, recycle) = launch::queue(launch::BACKLOG_BYTES);
    let reader = stream.try_clone()?;
    std::thread::Builder::new()
        .name("heaplens-reader".into())
        .spawn(move || {
            let mut r = BufReader::with_capacity(
                launch::STREAM_BUFFER,
                heaplens_alloc::ring::FdReader::new(reader),
            );
            let why = match wire::read_header(&mut r) {
                Ok(_) => launch::read_stream(&mut r, 1, pid, &tx),
                Err(e) => Some(e),
            };
            launch::send(&tx, 1, pid, StreamItem::Closed(why));
        })?;
    match record {
        Some(output) => record_stream(&target, &frames, Recorder::new(output, recycle), output),
        None => watch(&target, frames),
    }
}

/// Finds process `pid`'s socket, or says in one sentence why there is none to attach to.
fn locate(pid: i32) -> Result<Target, String> {
    if pid <= 0 {
        return Err(format!("{pid} is not a process id"));
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let meta = match std::fs::metadata(&proc_dir) {
        Ok(m) if launch::running(pid) => m,
        _ => return Err(gone(pid)),
    };
    if meta.uid() != my_uid() {
        return Err(format!(
            "pid {pid} belongs to another user (uid {}): heaplens attaches only to your own \
             processes",
            meta.uid()
        ));
    }
    let name = std::fs::read_to_string(proc_dir.join("comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default();
    let environ = environ_of(&proc_dir);
    let var = |key: &str| -> Option<OsString> {
        environ.split(|&b| b == 0).find_map(|kv| {
            let v = kv.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
            Some(std::ffi::OsStr::from_bytes(v).to_owned())
        })
    };
    let dir = attach::socket_dir(var("XDG_RUNTIME_DIR").as_deref(), my_uid());
    let socket = attach::socket_path(&dir, pid);
    let is_socket = std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        if var(ATTACH_ENV).is_some_and(|v| v == "1") {
            return Err(format!(
                "pid {pid} ({name}) has {ATTACH_ENV}=1 but listens on no socket at {} (is \
                 libheaplens.so preloaded? the program says why on its stderr)",
                socket.display()
            ));
        }
        return Err(format!(
            "pid {pid} ({name}) is not heaplens-enabled: start it with \
             `LD_PRELOAD=libheaplens.so {ATTACH_ENV}=1 {name}` to attach to it later"
        ));
    }
    Ok(Target { pid, name, socket })
}

/// Why a pid that does not run cannot be attached to (a socket it left behind is removed: it
/// lies in this user's private directory).
fn gone(pid: i32) -> String {
    let dirs = [
        attach::socket_dir(std::env::var_os("XDG_RUNTIME_DIR").as_deref(), my_uid()),
        attach::socket_dir(None, my_uid()),
    ];
    for dir in dirs {
        let socket = attach::socket_path(&dir, pid);
        if std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&socket);
            return format!(
                "pid {pid} is gone: its heaplens socket {} was stale (the program died without \
                 removing it; removed now)",
                socket.display()
            );
        }
    }
    format!("no process with pid {pid} is running")
}

/// Connects to the program's socket. A socket that refuses the connection is stale if its
/// program is gone (then it is removed); while the program runs, it is tried again for a while
/// (a program that just started may be between making its socket and listening on it).
fn connect(target: &Target) -> Result<UnixStream, String> {
    let pid = target.pid;
    let mut tries = 0;
    loop {
        let e = match UnixStream::connect(&target.socket) {
            Ok(stream) => return Ok(stream),
            Err(e) => e,
        };
        return Err(match e.kind() {
            io::ErrorKind::ConnectionRefused if Path::new(&format!("/proc/{pid}")).exists() => {
                tries += 1;
                if tries < 50 {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                format!(
                    "pid {pid} ({}) runs, but nothing listens on its heaplens socket {} (its \
                     listener thread is gone?)",
                    target.name,
                    target.socket.display()
                )
            }
            io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(&target.socket);
                format!(
                    "the heaplens socket of pid {pid} ({}) at {} is stale: nothing listens on \
                     it (the program that made it is gone; removed now)",
                    target.name,
                    target.socket.display()
                )
            }
            io::ErrorKind::PermissionDenied => format!(
                "cannot reach pid {pid}'s heaplens socket {}: {e}",
                target.socket.display()
            ),
            _ => format!("cannot connect to pid {pid}: {e}"),
        });
    }
}

/// SIGINT and SIGTERM detach; a second one stops waiting for the program's last events.
#[allow(unsafe_code)] // installing a signal handler; the workspace denies unsafe elsewhere
fn handle_signals() {
    extern "C" fn on_signal(sig: libc::c_int) {
        let fd = SOCKET_FD.load(Ordering::SeqCst);
        let first = SIGNALLED.swap(sig, Ordering::SeqCst) == 0;
        DETACHING.store(true, Ordering::SeqCst);
        let how = if first {
            libc::SHUT_WR
        } else {
            libc::SHUT_RDWR
        };
        if fd >= 0 {
            // SAFETY: shutdown is async-signal-safe; `fd` is the socket, open until exit.
            unsafe { libc::shutdown(fd, how) };
        }
    }
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` only makes async-signal-safe calls and touches atomics.
        unsafe { libc::signal(sig, handler) };
    }
}

/// Asks the program to stop streaming: it sends what it holds, a last census and its end mark.
#[allow(unsafe_code)] // one system call on our own socket
fn detach() {
    DETACHING.store(true, Ordering::SeqCst);
    let fd = SOCKET_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `fd` is our socket, open until exit; shutdown has no memory effects.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    }
}

/// How the program's stream ended, in one sentence for the user.
fn ending(target: &Target, clean: bool, error: Option<&WireError>) -> String {
    let pid = target.pid;
    match (DETACHING.load(Ordering::SeqCst), clean) {
        (true, true) => format!("detached from pid {pid}; it runs on untraced"),
        (false, true) => format!("pid {pid} exited while attached; its stream ended at its exit"),
        (_, false) => {
            let why = match error {
                Some(WireError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    "its stream stopped without its end mark".to_owned()
                }
                Some(e) => e.to_string(),
                None => "its stream closed without its end mark".to_owned(),
            };
            if SIGNALLED.load(Ordering::SeqCst) != 0 && launch::running(pid) {
                format!("stopped waiting for pid {pid} ({why})")
            } else {
                format!("pid {pid} went away while attached ({why}: killed, or crashed)")
            }
        }
    }
}

/// What to say when the stream ended before it began.
fn refused(target: &Target, error: Option<&WireError>) -> String {
    let pid = target.pid;
    match error {
        Some(WireError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
            ) =>
        {
            format!(
                "pid {pid} ({}) refused the attach: another heaplens is attached to it already \
             (one at a time)",
                target.name
            )
        }
        Some(e) => format!("attaching to pid {pid} failed: {e}"),
        None => format!("pid {pid} closed the connection without streaming"),
    }
}

/// Whether `events` hold the end of a census the collector took whole (the first is the
/// initial one: from then on the model knows everything live).
fn ends_census(heap: u32, events: &[Event]) -> bool {
    heap == 0 && events.iter().any(|e| e.kind == EventKind::CensusEnd as u8)
}

/// The program's metadata with `"attached": true`: the trace began while the program ran, so
/// its start is not the program's, and heaplens, not being its parent, cannot know its exit.
fn attached_meta(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("attached".into(), serde_json::Value::Bool(true));
            serde_json::Value::Object(m).to_string()
        }
        _ => json.to_owned(), // the recorder says what is wrong with it
    }
}

/// The environment of the process at `proc_dir`. A process caught in `execve` shows an empty
/// one (the kernel releases a vfork parent, `posix_spawn`'s caller, before it lays out the new
/// program's environment), so an empty one is read again for up to 200 ms: a process whose
/// environment is really empty costs that wait once.
fn environ_of(proc_dir: &Path) -> Vec<u8> {
    let mut environ = Vec::new();
    for _ in 0..40 {
        environ = std::fs::read(proc_dir.join("environ")).unwrap_or_default();
        if !environ.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    environ
}

/// `--record`: writes the stream to a trace until heaplens detaches or the program ends.
fn record_stream(
    target: &Target,
    frames: &launch::Frames,
    mut recorder: Recorder,
    output: &Path,
) -> Result<i32, Box<dyn std::error::Error>> {
    let pid = target.pid;
    crate::priority::lower_this_thread();
    let (mut got_meta, mut attached, mut clean) = (false, false, false);
    let (mut error, mut status) = (None, ExitStatus::Unknown);
    let say_attached = || {
        say!(
            "attached to pid {pid} ({}); recording to {}; Ctrl-C detaches",
            target.name,
            output.display()
        );
    };
    while let Some(frame) = frames.recv() {
        match frame.item {
            StreamItem::Message(Message::Meta(json)) => {
                recorder.meta(&attached_meta(&json))?;
                got_meta = true;
            }
            StreamItem::Message(Message::Batch(Batch { heap, events })) => {
                let census = !attached && ends_census(heap, &events);
                recorder.batch(heap, events)?;
                if census {
                    attached = true;
                    say_attached();
                }
            }
            StreamItem::Message(Message::End) => clean = true,
            StreamItem::Message(Message::Exit(code)) => status = ExitStatus::Code(code),
            StreamItem::Closed(why) => {
                error = why;
                break;
            }
        }
    }
    if !got_meta {
        return Err(refused(target, error.as_ref()).into());
    }
    crate::priority::restore_this_thread();
    let clean = clean && error.is_none();
    let events = if clean && DETACHING.load(Ordering::SeqCst) {
        recorder.finish_with(EndInfo {
            reason: EndReason::Detached,
            status: ExitStatus::Unknown,
        })?
    } else {
        recorder.finish(status, clean)?
    };
    say!("{}", ending(target, clean, error.as_ref()));
    say!("{events} events -> {}", output.display());
    if let Some(note) = frames.damage().note() {
        say!("{note}");
    }
    Ok(0)
}

/// Without `--record`: the live viewer, until its window closes.
fn watch(target: &Target, frames: launch::Frames) -> Result<i32, Box<dyn std::error::Error>> {
    let pid = target.pid;
    let what = format!("pid {pid} ({})", target.name);
    let (tx, rx) = bounded(VIEWER_BACKLOG);
    let live = Live::start(rx, &what);
    let (done_tx, done) = bounded::<String>(1);
    let t = Target {
        pid,
        name: target.name.clone(),
        socket: target.socket.clone(),
    };
    std::thread::Builder::new()
        .name("heaplens-pump".into())
        .spawn(move || {
            let mut tap = Tap::new(&tx);
            let (mut got_meta, mut attached, mut clean) = (false, false, false);
            let mut error = None;
            for frame in &frames {
                match frame.item {
                    StreamItem::Message(Message::Meta(_)) => got_meta = true,
                    StreamItem::Message(Message::Batch(Batch { heap, events })) => {
                        if !attached && ends_census(heap, &events) {
                            attached = true;
                            say!(
                                "attached to pid {pid} ({}); close the viewer or Ctrl-C to detach",
                                t.name
                            );
                        }
                        tap.send(heap, events);
                    }
                    StreamItem::Message(Message::End) => clean = true,
                    StreamItem::Message(Message::Exit(_)) => {}
                    StreamItem::Closed(why) => {
                        error = why;
                        break;
                    }
                }
            }
            let said = if got_meta {
                ending(&t, clean && error.is_none(), error.as_ref())
            } else {
                refused(&t, error.as_ref())
            };
            let _ = tx.send(Feed::Status(Status::Ended(said.clone())));
            if SIGNALLED.load(Ordering::SeqCst) != 0 {
                // Ctrl-C in the terminal: detached; nothing is left to keep.
                say!("{said}");
                leave_now();
            }
            let _ = done_tx.send(said);
        })?;
    ui::run(App::new(Source::Live(live), what))?;
    detach();
    wait_detached(&done, pid);
    Ok(0)
}

/// Ends heaplens at once, from the stream's thread while the viewer's window is open: `exit`
/// would run the window system's exit handlers under the thread drawing the window (a SIGSEGV in
/// 2 of 8 runs); nothing of the viewer needs keeping.
#[allow(unsafe_code)] // one system call
fn leave_now() -> ! {
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process without running exit handlers; nothing else is required.
    unsafe { libc::_exit(0) }
}

/// Waits (a while) for the program to end its stream once the viewer has closed.
fn wait_detached(done: &Receiver<String>, pid: i32) {
    match done.recv_timeout(DETACH_WAIT) {
        Ok(said) => say!("viewer closed; {said}"),
        Err(_) => say!(
            "viewer closed; pid {pid} has not finished its stream after {} s (heaplens leaves \
             it; the program switches its hook off when the socket closes)",
            DETACH_WAIT.as_secs()
        ),
    }
}
