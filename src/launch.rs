//! Launching a program with heaplens preloaded and receiving the event streams of its processes.
//!
//! The socket sits in a fresh private directory (mode 0700) under `$XDG_RUNTIME_DIR` or `/tmp`;
//! its path reaches the target through `HEAPLENS_SOCKET`, `libheaplens.so` through `LD_PRELOAD`.
//! Every process of the command may connect (the program, the program it execs into, and its
//! children, which inherit the environment): a peer that runs as another user is refused by its
//! credentials, and one whose metadata lacks this launch's token (`HEAPLENS_TOKEN`, random for
//! each launch) is refused too. Each admitted connection gets a reader thread that takes its
//! frames off the socket as fast as they come and queues them, tagged with the connection and
//! pid, in one [`backlog`](crate::backlog) bounded by bytes, so no process waits for whoever
//! consumes them until that budget is spent. Batches wait there packed as the program's
//! collector packed them ([`heaplens_alloc::pack`]; a version 1 peer's batches are packed here
//! once the backlog is long), and [`Frames`] gives them back unpacked (or packed, to a consumer
//! that hands them on). The queue ends once no process of the command is left to connect and
//! every stream has ended (each with how it ended).

use std::ffi::OsString;
use std::io::{self, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use heaplens_alloc::batch::{Batch, Message};
use heaplens_alloc::event::{EVENT_SIZE, Event};
use heaplens_alloc::ring::FdReader;
use heaplens_alloc::wire::{self, Incoming, WireError};

use crate::backlog::{self, backlog};
use crate::packed::{Damage, PackedBatch};
use crate::quiet::say;
use crate::slab::SlabWriter;

/// Event vectors kept for [`Frames`] to unpack batches into: as many as are in flight between
/// it and the trace writer's helpers, and a few more for the consumer's own.
const RECYCLED_BATCHES: usize = heaplens_viewer::trace::SHARED_BATCHES_IN_FLIGHT + 64;

/// The buffer of a stream's reader: small, because a batch's events (64 KiB) are read from the
/// socket straight into the batch past it ([`wire::read_frame_direct`]); only frame headers and
/// what arrives with them go through it.
pub const STREAM_BUFFER: usize = 4096;

/// Bytes of frames the reader may hold for a consumer that falls behind, by default, before the
/// program has to wait: 1 GiB, about 100 M events packed (10 bytes each on allocation-heavy
/// programs; 32 in memory).
pub const BACKLOG_BYTES: usize = 1 << 30;

/// How the traced program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// From a wait status.
    pub fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(sig)) => Self::Signal(sig),
            (None, None) => Self::Code(-1),
        }
    }

    /// The exit code heaplens itself should end with (128 + signal, as shells do).
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Code(c) => c,
            Self::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(c) => write!(f, "exited with code {c}"),
            Self::Signal(s) => write!(f, "killed by signal {s} ({})", signal_name(*s)),
        }
    }
}

/// A short name for common signals.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// What the reader threads deliver about one connection.
#[derive(Debug)]
pub enum StreamItem {
    /// A message from the process's collector. The first is always its metadata, with
    /// `"recorded": false` when the process only said who it is (a child of the program without
    /// `--follow-fork`); nothing else follows then.
    Message(Message),
    /// The stream ended: cleanly after an `End` frame, or not (the error says how). A stream of
    /// a process that runs on and connects again was cut by an `exec`.
    Closed(Option<WireError>),
}

/// An item of one connection.
#[derive(Debug)]
pub struct Frame {
    /// The connection, numbered from 1 in the order they were accepted: a process that execs
    /// connects again, and its later connection is the program it became.
    pub conn: u64,
    /// The process at the other end (from its peer credentials, not from what it says).
    pub pid: i32,
    /// What arrived.
    pub item: StreamItem,
}

impl Frame {
    /// The memory it holds, as the backlog counts it.
    fn bytes(&self) -> usize {
        const ITEM: usize = std::mem::size_of::<Frame>();
        match &self.item {
            StreamItem::Message(Message::Batch(Batch { events, .. })) => {
                ITEM + events.capacity() * EVENT_SIZE
            }
            StreamItem::Message(Message::Meta(json)) => ITEM + json.capacity(),
            _ => ITEM,
        }
    }
}

/// What the backlog holds: a frame, or a batch packed (by the program's collector, or by the
/// reader for a version 1 peer: [`heaplens_alloc::pack`]). [`Frames::recv`] gives back the batch
/// unpacked; [`Frames::recv_queued`] as it is, for a consumer that unpacks it itself.
#[derive(Debug)]
pub enum Queued {
    /// A frame as it came.
    Frame(Frame),
    /// A frame of a batch, packed (damage is found as it is unpacked: see [`crate::packed`]).
    Packed {
        /// As in [`Frame`].
        conn: u64,
        /// As in [`Frame`].
        pid: i32,
        /// The batch.
        batch: PackedBatch,
    },
}

impl Queued {
    /// The memory it holds, as the backlog counts it.
    fn bytes(&self) -> usize {
        match self {
            Self::Frame(f) => f.bytes(),
            Self::Packed { batch, .. } => std::mem::size_of::<Self>() + batch.held(),
        }
    }
}

/// The consumer's end of a launch's backlog: the frames of every admitted connection, in the
/// order each connection sent them.
pub struct Frames {
    rx: backlog::Receiver<Queued>,
    /// Event vectors the consumer gave back (through the matching [`Sender`]), to unpack batches
    /// into.
    recycled: Receiver<Vec<Event>>,
    /// What arrived damaged in the packed batches, once they are unpacked.
    damage: Arc<Damage>,
}

/// The readers' end of a launch's backlog.
pub struct FrameSender {
    tx: backlog::Sender<Queued>,
    /// The consumer's event vectors given back, for batches queued as they came.
    recycled: Receiver<Vec<Event>>,
    /// Where the packed batches queued say they were damaged.
    damage: Arc<Damage>,
    /// [`PACK_ABOVE`] (tests change it).
    pack_above: usize,
}

/// Batches are packed once the backlog holds this much: the consumer has fallen behind
/// and the backlog grows into fresh memory. Below it, the consumer keeps up (`heaplens run`'s
/// viewer, a recorder with a core to itself) and a batch goes as it came, in a vector the
/// consumer gave back, with no packing on either side.
const PACK_ABOVE: usize = 8 << 20;

/// A backlog of at most `budget` bytes: the readers' end, the consumer's, and where the
/// consumer may give a batch's event vector back once done with it.
pub fn queue(budget: usize) -> (FrameSender, Frames, Sender<Vec<Event>>) {
    let (tx, rx) = backlog(budget);
    let (recycle, recycled) = bounded(RECYCLED_BATCHES);
    let damage = Arc::new(Damage::default());
    let sender = FrameSender {
        tx,
        recycled: recycled.clone(),
        damage: Arc::clone(&damage),
        pack_above: PACK_ABOVE,
    };
    let frames = Frames {
        rx,
        recycled,
        damage,
    };
    (sender, frames, recycle)
}

impl Frames {
    /// The next frame, waiting for one; `None` once the queue has ended.
    pub fn recv(&self) -> Option<Frame> {
        self.recv_queued().map(|queued| self.unpacked(queued))
    }

    /// The next frame, its batch still packed if it came so (the consumer unpacks it, or hands
    /// it on packed). `None` once the queue has ended.
    pub fn recv_queued(&self) -> Option<Queued> {
        self.rx.recv()
    }

    /// The frame `queued` holds, a packed batch unpacked (into a vector the consumer gave back).
    pub fn unpacked(&self, queued: Queued) -> Frame {
        let (conn, pid, batch) = match queued {
            Queued::Frame(f) => return f,
            Queued::Packed { conn, pid, batch } => (conn, pid, batch),
        };
        let mut events = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(heaplens_alloc::hook::BUFFER_EVENTS));
        batch.unpack_into(&mut events);
        Frame {
            conn,
            pid,
            item: StreamItem::Message(Message::Batch(Batch {
                heap: batch.heap,
                events,
            })),
        }
    }

    /// What arrived damaged so far (packed batches are looked at as they are unpacked: see
    /// [`crate::packed`]).
    pub fn damage(&self) -> &Damage {
        &self.damage
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.rx.queued()
    }

    /// How full the backlog has been so far.
    pub fn usage(&self) -> backlog::Usage {
        self.rx.usage()
    }
}

impl Iterator for &Frames {
    type Item = Frame;
    fn next(&mut self) -> Option<Frame> {
        self.recv()
    }
}

/// A private directory removed when dropped.
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    /// Creates a fresh directory only this user can enter.
    pub fn create() -> io::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self::create_at(base.join(format!("heaplens-{}-{nanos:x}", std::process::id())))
    }

    /// Creates `dir`, which must not exist (a directory someone made before, whatever its
    /// mode, or a link, is refused: it may not be private), with mode 0700, and checks that it
    /// is ours and private.
    fn create_at(dir: PathBuf) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot make the private directory {}: {e}", dir.display()),
                )
            })?;
        let meta = std::fs::symlink_metadata(&dir)?;
        if !meta.is_dir() || meta.permissions().mode() & 0o077 != 0 || meta.uid() != wire::my_uid()
        {
            return Err(io::Error::other(format!(
                "{} is not private",
                dir.display()
            )));
        }
        Ok(Self(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A launched program and the event streams of its processes.
pub struct Launched {
    /// The program's process id.
    pub pid: u32,
    /// Items from every admitted connection, in the order each connection sent them; the queue
    /// ends once the program has exited (with `--follow-fork`: every process it started) and
    /// every stream has closed.
    pub frames: Frames,
    /// Where a consumer may give a batch's event vector back once done with it: `frames`
    /// unpacks a later batch into it instead of allocating (64 KiB a batch).
    pub recycle: Sender<Vec<Event>>,
    /// How the program ended and when it did; finished once no process of the command is left
    /// to connect (with `--follow-fork`, heaplens is their subreaper and waits for them all).
    pub exit: std::thread::JoinHandle<io::Result<(ExitStatus, Instant)>>,
    _dir: PrivateDir,
}

/// Where `libheaplens.so` is: `HEAPLENS_PRELOAD`, or beside this executable.
pub fn preload_library() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("HEAPLENS_PRELOAD") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let lib = exe
        .parent()
        .map(|d| d.join("libheaplens.so"))
        .unwrap_or_default();
    if lib.is_file() {
        Ok(lib)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} not found: build it with `cargo build --release --workspace`, or set HEAPLENS_PRELOAD",
                lib.display()
            ),
        ))
    }
}

/// A fresh random token for one launch (32 hex digits from the kernel's random source).
fn launch_token() -> io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Starts `command` with heaplens preloaded and the variables `env` set (stack capture, say),
/// and waits (up to `timeout`) for it to connect. With `follow`, every process the command
/// starts streams too (`--follow-fork`); without it they only say who they are. Frames queue in
/// a backlog of at most `backlog_bytes`.
pub fn launch(
    command: &[OsString],
    timeout: Duration,
    env: &[(&str, String)],
    backlog_bytes: usize,
    follow: bool,
) -> io::Result<Launched> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command given"))?;
    let lib = preload_library()?;
    let dir = PrivateDir::create()?;
    let socket = dir.path().join("stream.sock");
    let listener = UnixListener::bind(&socket)?;
    listener.set_nonblocking(true)?;
    let token = launch_token()?;
    let mut preload = OsString::from(lib.as_os_str());
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(existing);
    }
    if follow {
        crate::reap::become_subreaper()?;
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LD_PRELOAD", preload)
        .env(wire::SOCKET_ENV, &socket)
        .env(wire::PARENT_ENV, std::process::id().to_string())
        .env(wire::TOKEN_ENV, &token)
        .envs(env.iter().map(|(k, v)| (k, v)));
    if follow {
        cmd.env(wire::FOLLOW_ENV, "1");
    } else {
        cmd.env_remove(wire::FOLLOW_ENV);
    }
    let mut child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot start {}: {e}", program.to_string_lossy()),
        )
    })?;
    let pid = i32::try_from(child.id()).unwrap_or(-1);
    let (tx, rx, recycle) = queue(backlog_bytes);
    let gate = Arc::new(Gate {
        token,
        program: pid,
        program_connected: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        passes: AtomicU64::new(0),
        wake: crate::wake::Wake::new()?,
    });
    let acceptor = {
        let gate = Arc::clone(&gate);
        let tx = Arc::new(tx);
        std::thread::Builder::new()
            .name("heaplens-accept".into())
            .spawn(move || accept_all(&listener, &gate, &tx))?
    };
    let start = Instant::now();
    while !gate.program_connected.load(Ordering::Acquire) {
        let failure = if let Some(status) = child.try_wait()? {
            // A program that exits at once may have connected all the same: its connection
            // waits to be admitted. Two passes of the acceptor from now settle it.
            let seen = gate.passes.load(Ordering::Acquire);
            while gate.passes.load(Ordering::Acquire) < seen + 2
                && !acceptor.is_finished()
                && start.elapsed() < timeout
            {
                gate.wake.wake();
                std::thread::sleep(Duration::from_millis(1));
            }
            if gate.program_connected.load(Ordering::Acquire) {
                break; // `wait` below returns the status `try_wait` took
            }
            Some(io::Error::other(format!(
                "the program {} before heaplens could connect (is it dynamically linked?)",
                Exit::from_status(status)
            )))
        } else if start.elapsed() > timeout || acceptor.is_finished() {
            Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "the program did not connect to heaplens (is it dynamically linked?)",
            ))
        } else {
            None
        };
        if let Some(e) = failure {
            gate.stop();
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let exit = std::thread::Builder::new()
        .name("heaplens-wait".into())
        .spawn(move || {
            let status = child.wait();
            let at = Instant::now();
            if follow {
                crate::reap::reap_descendants();
            }
            gate.stop();
            Ok((status?, at))
        })?;
    Ok(Launched {
        pid: child_pid(pid),
        frames: rx,
        recycle,
        exit,
        _dir: dir,
    })
}

fn child_pid(pid: i32) -> u32 {
    u32::try_from(pid).unwrap_or(0)
}

/// The launcher's rules for connections, shared by its threads.
struct Gate {
    /// This launch's token: a connection must present it.
    token: String,
    /// The launched program's pid.
    program: i32,
    /// The program's own stream was admitted.
    program_connected: AtomicBool,
    /// No process of the command is left: take the connections waiting, then stop.
    stop: AtomicBool,
    /// Passes of the acceptor that found no connection waiting.
    passes: AtomicU64,
    /// Wakes the acceptor, which otherwise sleeps until a connection comes.
    wake: crate::wake::Wake,
}

impl Gate {
    /// Tells the acceptor to take the connections waiting and stop, at once.
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.wake();
    }
}

/// Takes connections until told to stop (then takes those already waiting): each is admitted
/// here, in the order they came (its metadata checked and queued), then read on a thread of its
/// own. Admitting in turn is what lets [`launch`] tell, once the program has exited, whether it
/// connected: every connection it made is admitted by the next pass that finds none waiting.
fn accept_all(listener: &UnixListener, gate: &Arc<Gate>, tx: &Arc<FrameSender>) {
    let mut conn = 0;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let pid = match peer_of_this_user(&stream) {
                    Ok(pid) => pid,
                    Err(e) => {
                        say!("{e}");
                        continue;
                    }
                };
                let mut r = BufReader::with_capacity(STREAM_BUFFER, FdReader::new(stream));
                let (meta, recorded) = match admit(&mut r, &gate.token) {
                    Ok(m) => m,
                    Err(why) => {
                        say!("refused a connection from pid {pid}: {why}");
                        continue;
                    }
                };
                conn += 1;
                if !send(tx, conn, pid, StreamItem::Message(Message::Meta(meta))) {
                    return; // nobody reads any more
                }
                if pid == gate.program && recorded {
                    gate.program_connected.store(true, Ordering::Release);
                }
                if !recorded {
                    continue; // it only said who it is
                }
                let tx = Arc::clone(tx);
                let spawned = std::thread::Builder::new()
                    .name(format!("heaplens-read-{pid}"))
                    .spawn(move || {
                        let why = read_stream(&mut r, conn, pid, &tx);
                        send(&tx, conn, pid, StreamItem::Closed(why));
                    });
                if spawned.is_err() {
                    say!("could not start a reader for pid {pid}; it runs untraced");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                gate.passes.fetch_add(1, Ordering::AcqRel);
                if gate.stop.load(Ordering::Acquire) {
                    return;
                }
                // Until a connection comes or the launch wakes it (to stop, or for a pass);
                // the timeout only bounds a wake-up that went astray.
                gate.wake.wait(listener, Duration::from_millis(100));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                say!("taking connections failed: {e}");
                return;
            }
        }
    }
}

/// Queues an item of connection `conn`; false once nobody reads the queue.
pub(crate) fn send(tx: &FrameSender, conn: u64, pid: i32, item: StreamItem) -> bool {
    queue_item(tx, Queued::Frame(Frame { conn, pid, item }))
}

/// Queues `item`; false once nobody reads the queue.
fn queue_item(tx: &FrameSender, item: Queued) -> bool {
    let bytes = item.bytes();
    tx.tx.send(item, bytes).is_ok()
}

/// The pid of the peer, if it runs as this user (peer credentials); an error saying why not.
fn peer_of_this_user(stream: &UnixStream) -> io::Result<i32> {
    let (uid, pid) = wire::peer_cred(stream.as_raw_fd())?;
    if uid == wire::my_uid() {
        Ok(pid)
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refused a connection from another user (uid {uid})"),
        ))
    }
}

/// Whether process `pid` is still running (not gone, not a zombie).
pub fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// How long a new connection may take to present its header and metadata (connections are
/// admitted one at a time; a process sends both right after it connects).
const ADMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a connection's header and metadata and checks the launch's token. Returns the
/// metadata without the token, and whether a stream of events follows.
fn admit(r: &mut StreamReader, token: &str) -> Result<(String, bool), String> {
    let socket = r.get_ref().get_ref();
    socket
        .set_nonblocking(false)
        .and_then(|()| socket.set_read_timeout(Some(ADMIT_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    wire::read_header(r).map_err(|e| e.to_string())?;
    let Ok(Some(Message::Meta(json))) = wire::read_frame(r) else {
        return Err("its stream does not start with metadata".into());
    };
    let mut meta: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&json).map_err(|e| format!("bad metadata: {e}"))?;
    if meta.remove("token").as_ref().and_then(|t| t.as_str()) != Some(token) {
        return Err("it does not carry this launch's token".into());
    }
    let recorded = meta.get("recorded").and_then(serde_json::Value::as_bool) != Some(false);
    r.get_ref()
        .get_ref()
        .set_read_timeout(None)
        .map_err(|e| e.to_string())?;
    Ok((serde_json::Value::Object(meta).to_string(), recorded))
}

/// A traced process's socket as heaplens reads it.
pub(crate) type StreamReader = wire::SocketReader;

/// Forwards one stream's frames after its metadata; returns how it ended (`None`: cleanly, with
/// `End`). After a ring frame the frames come from the ring (see [`heaplens_alloc::ring`]).
pub(crate) fn read_stream(
    r: &mut StreamReader,
    conn: u64,
    pid: i32,
    tx: &FrameSender,
) -> Option<WireError> {
    let mut forward = Forward::new(conn, pid, tx);
    loop {
        let read = wire::read_frame_direct(r, forward.spare.take());
        if let Ok(Some(Incoming::Ring(size))) = read {
            return match wire::switch_to_ring(r, size) {
                Ok(mut ring) => loop {
                    let read = wire::read_frame_incoming(&mut ring, forward.spare.take());
                    if let Some(end) = forward.step(read, |dst| ring.read_exact(dst)) {
                        break end;
                    }
                },
                Err(e) => Some(e),
            };
        }
        if let Some(end) = forward.step(read, |dst| wire::read_packed_direct(r, dst)) {
            return end;
        }
    }
}

/// Where one stream's frames go: the backlog, as they came or packed.
struct Forward<'a> {
    conn: u64,
    pid: i32,
    tx: &'a FrameSender,
    ended: bool,
    // A packed batch goes into the backlog as it came. An unpacked batch (a version 1 peer's):
    // while the backlog is long, it is read into one vector and packed from it
    // (see [`heaplens_alloc::pack`]); otherwise it goes as it came and the next is read into a
    // vector the consumer gave back (or a new one).
    spare: Option<Vec<Event>>,
    scratch: Vec<u8>,
    slabs: SlabWriter,
}

impl<'a> Forward<'a> {
    fn new(conn: u64, pid: i32, tx: &'a FrameSender) -> Self {
        Self {
            conn,
            pid,
            tx,
            ended: false,
            spare: None,
            scratch: Vec::new(),
            slabs: SlabWriter::default(),
        }
    }

    /// Queues what `read` gave (a packed batch's bytes read with `read_packed`); `Some(how it
    /// ended)` once the stream is over.
    fn step(
        &mut self,
        read: Result<Option<Incoming>, WireError>,
        read_packed: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> Option<Option<WireError>> {
        let (conn, pid) = (self.conn, self.pid);
        let item = match read {
            Ok(Some(Incoming::Packed(head))) => match self.slabs.fill(head.bytes, read_packed) {
                Ok(bytes) => Queued::Packed {
                    conn,
                    pid,
                    batch: PackedBatch::came(
                        head.heap,
                        head.count,
                        head.form,
                        bytes,
                        &self.tx.damage,
                    ),
                },
                Err(e) => return Some(Some(WireError::Io(e))),
            },
            Ok(Some(Incoming::Message(Message::Batch(Batch { heap, mut events })))) => {
                if self.tx.tx.queued() < self.tx.pack_above {
                    self.spare = self.tx.recycled.try_recv().ok();
                    Queued::Frame(Frame {
                        conn,
                        pid,
                        item: StreamItem::Message(Message::Batch(Batch { heap, events })),
                    })
                } else {
                    let batch =
                        PackedBatch::pack(heap, &events, &mut self.scratch, &self.tx.damage);
                    events.clear();
                    self.spare = Some(events);
                    Queued::Packed { conn, pid, batch }
                }
            }
            Ok(Some(Incoming::Message(message))) => {
                self.ended = matches!(message, Message::End);
                Queued::Frame(Frame {
                    conn,
                    pid,
                    item: StreamItem::Message(message),
                })
            }
            Ok(Some(Incoming::Ring(_))) => {
                return Some(Some(WireError::Corrupt(
                    "a second ring frame in one stream".into(),
                )));
            }
            Ok(None) if self.ended => return Some(None),
            Ok(None) => {
                return Some(Some(WireError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream stopped before its end",
                ))));
            }
            Err(e) => return Some(Some(e)),
        };
        if queue_item(self.tx, item) {
            None
        } else {
            Some(None)
        }
    }
}

/// For tests: `batches` packed batches of the same 300 events, the one numbered `damaged`
/// damaged at its event 100 (a 15-byte value in its control word), then the end mark, sent on
/// a socket and read by [`read_stream`] as connection 1 of pid 7 into a fresh queue, then
/// closed. Returns the queue's ends (the readers' still open) and the events of a whole batch.
#[cfg(test)]
pub(crate) fn stream_with_a_damaged_batch(
    batches: usize,
    damaged: usize,
) -> (FrameSender, Frames, Sender<Vec<Event>>, Vec<Event>) {
    let events: Vec<Event> = (0..300u64)
        .map(|i| Event {
            kind: 1,
            addr: 0x1000 + 16 * i,
            arg: 32,
            time: i,
            ..Event::default()
        })
        .collect();
    let mut good = Vec::new();
    wire::write_packed_batch(&mut good, 1, &events, &mut Vec::new()).unwrap();
    // The frame's head, then the packed events, control words first: event 100's is the 101st.
    let head = good.len()
        - heaplens_alloc::pack::pack(&events, &mut Vec::new())
            .bytes()
            .len();
    let mut bad = good.clone();
    bad[head + 2 * 100] = 0x0f;
    let (w, r) = UnixStream::pair().unwrap();
    let writer = std::thread::spawn(move || {
        let mut w = std::io::BufWriter::new(w);
        for i in 0..batches {
            let frame = if i == damaged { &bad } else { &good };
            io::Write::write_all(&mut w, frame).unwrap();
        }
        wire::write_end(&mut w).unwrap();
    });
    let (tx, frames, recycle) = queue(BACKLOG_BYTES);
    let mut r = BufReader::with_capacity(STREAM_BUFFER, FdReader::new(r));
    let why = read_stream(&mut r, 1, 7, &tx);
    writer.join().unwrap();
    send(&tx, 1, 7, StreamItem::Closed(why));
    (tx, frames, recycle, events)
}

#[cfg(test)]
#[allow(unsafe_code)] // the tests fork peers and drop their privileges with setuid
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    /// A listener in a fresh private directory, as `launch` makes it.
    fn listener() -> (PrivateDir, PathBuf, UnixListener) {
        let dir = PrivateDir::create().unwrap();
        let socket = dir.path().join("stream.sock");
        let l = UnixListener::bind(&socket).unwrap();
        l.set_nonblocking(true).unwrap();
        (dir, socket, l)
    }

    /// Forks a child that, as user `uid` if given, connects to `socket`, writes `says` and
    /// exits: status 0 if it connected, 1 if the connection was refused, 2 if it could not change
    /// user. Returns its pid once it has exited (its connection, if made, waits in the
    /// listener's backlog with what it wrote).
    fn peer(socket: &Path, uid: Option<u32>, says: &[u8]) -> (i32, i32) {
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = socket.as_os_str().as_bytes();
        assert!(path.len() < addr.sun_path.len());
        for (d, s) in addr.sun_path.iter_mut().zip(path) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: the child makes only async-signal-safe system calls (no allocation, no locks)
        // and leaves with _exit, so forking a multithreaded test process is sound.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: see above; `addr` and `len` describe a valid sockaddr_un.
            unsafe {
                if let Some(u) = uid
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(u) != 0
                        || libc::setuid(u) != 0)
                {
                    libc::_exit(2);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let rc = libc::connect(fd, (&raw const addr).cast(), len);
                if rc == 0 {
                    libc::write(fd, says.as_ptr().cast(), says.len());
                }
                libc::_exit(i32::from(rc != 0));
            }
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-parameter.
        let waited = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status));
        (pid, libc::WEXITSTATUS(status))
    }

    /// What a process of the launch sends first: the header and its metadata with `token`.
    fn hello(token: Option<&str>, recorded: bool) -> Vec<u8> {
        let mut json = String::from("{\"pid\":1,\"command\":[\"prog\"]");
        if let Some(t) = token {
            json.push_str(&format!(",\"token\":\"{t}\""));
        }
        json.push_str(&format!(",\"recorded\":{recorded}}}"));
        let mut out = Vec::new();
        wire::write_header(&mut out).unwrap();
        wire::write_meta(&mut out, &json).unwrap();
        out
    }

    /// The connection waiting in `l`, checked as the launcher checks it: the peer's pid, and
    /// the metadata and whether a stream follows, or why it is refused.
    fn take(l: &UnixListener, token: &str) -> (i32, Result<(String, bool), String>) {
        let (stream, _) = l.accept().expect("a connection waits");
        let pid = peer_of_this_user(&stream).expect("a peer of this user");
        let mut r = BufReader::new(FdReader::new(stream));
        (pid, admit(&mut r, token))
    }

    /// Batches streamed through `read_stream` come out of `Frames` as they went in: packed by
    /// the peer (as the collector sends them), or unpacked (a version 1 peer) and packed by the
    /// backlog (`pack_above` 0: always) or not (never); and the end follows.
    #[test]
    fn batches_come_out_of_the_backlog_as_they_went_in_packed_or_not() {
        for (peer_packs, pack_above) in [(true, usize::MAX), (false, 0), (false, usize::MAX)] {
            let (w, r) = UnixStream::pair().unwrap();
            let sent: Vec<(u32, Vec<Event>)> = (0..20u32)
                .map(|b| {
                    let events = (0..500u64)
                        .map(|i| Event {
                            kind: (i % 7) as u8,
                            flags: (i % 3) as u8,
                            aux: (i % 40) as u16,
                            arg32: b * 1000 + i as u32,
                            addr: 0x7f00_0000_0000 + (i * 7919 % 4096) * 16,
                            arg: i * 24,
                            time: u64::from(b) * 1_000_000 + i / 50,
                        })
                        .collect();
                    (b % 3, events)
                })
                .collect();
            let writer = {
                let sent = sent.clone();
                std::thread::spawn(move || {
                    let mut w = std::io::BufWriter::new(w);
                    let mut scratch = Vec::new();
                    for (heap, events) in &sent {
                        if peer_packs {
                            wire::write_packed_batch(&mut w, *heap, events, &mut scratch).unwrap();
                        } else {
                            wire::write_batch(&mut w, *heap, events, &mut scratch).unwrap();
                        }
                    }
                    wire::write_end(&mut w).unwrap();
                })
            };
            let (mut tx, frames, recycle) = queue(BACKLOG_BYTES);
            tx.pack_above = pack_above;
            let mut r = BufReader::with_capacity(STREAM_BUFFER, FdReader::new(r));
            assert!(read_stream(&mut r, 3, 42, &tx).is_none(), "a clean end");
            writer.join().unwrap();
            drop(tx);
            let mut got = Vec::new();
            let mut ended = false;
            for f in &frames {
                assert_eq!((f.conn, f.pid), (3, 42));
                match f.item {
                    StreamItem::Message(Message::Batch(Batch { heap, events })) => {
                        got.push((heap, events.clone()));
                        let _ = recycle.try_send(events);
                    }
                    StreamItem::Message(Message::End) => ended = true,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(ended);
            assert_eq!(
                got, sent,
                "peer packs {peer_packs}, pack_above {pack_above}"
            );
        }
    }

    /// Writes `frames` (whole frames' bytes) into a new ring announced on `socket`, publishing
    /// after every third, then closes the socket.
    fn stream_through_a_ring(socket: UnixStream, frames: &[Vec<u8>]) {
        use heaplens_alloc::ring::{RING_BYTES, Ring, RingWriter};
        let (ring, fd) = Ring::create(RING_BYTES).unwrap();
        wire::send_ring(socket.as_raw_fd(), &ring, &fd).unwrap();
        let mut w = RingWriter::new(ring, socket.as_raw_fd());
        for (i, frame) in frames.iter().enumerate() {
            w.write(frame).unwrap();
            if i % 3 == 2 {
                w.publish().unwrap();
            }
        }
        w.publish().unwrap();
        drop(socket);
    }

    /// A stream that switches to its ring after its metadata: every batch arrives packed as it
    /// was written, across the ring's end many times, and the end follows; a stream whose
    /// process vanished before its end mark ends with that said.
    #[test]
    fn a_stream_through_a_ring_arrives_whole_and_a_vanished_writer_is_told() {
        for whole in [true, false] {
            let (w, r) = UnixStream::pair().unwrap();
            let batches: Vec<Vec<Event>> = (0..2000u64)
                .map(|b| {
                    (0..2000u64)
                        .map(|i| Event {
                            kind: (i % 7) as u8,
                            addr: 0x7f00_0000_0000 + (i * 7919 % 4096) * 16,
                            arg: (b * 2000 + i).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 24,
                            time: b * 10_000 + i,
                            ..Event::default()
                        })
                        .collect()
                })
                .collect();
            let mut frames = Vec::new();
            let mut scratch = Vec::new();
            for events in &batches {
                let mut f = Vec::new();
                wire::write_packed_batch(&mut f, 5, events, &mut scratch).unwrap();
                frames.push(f);
            }
            if whole {
                let mut end = Vec::new();
                wire::write_end(&mut end).unwrap();
                frames.push(end);
            }
            let bytes: usize = frames.iter().map(Vec::len).sum();
            assert!(
                bytes > 2 * heaplens_alloc::ring::RING_BYTES,
                "the ring goes round"
            );
            let writer = std::thread::spawn(move || stream_through_a_ring(w, &frames));
            let (tx, frames, _recycle) = queue(BACKLOG_BYTES);
            let mut r = BufReader::with_capacity(STREAM_BUFFER, FdReader::new(r));
            let why = read_stream(&mut r, 1, 9, &tx);
            writer.join().unwrap();
            if whole {
                assert!(why.is_none(), "a clean end: {why:?}");
            } else {
                let why = why.expect("an error").to_string();
                assert!(why.contains("stopped before its end"), "{why}");
            }
            drop(tx);
            let mut got = Vec::new();
            let mut ended = false;
            while let Some(q) = frames.recv_queued() {
                match q {
                    Queued::Packed { batch, .. } => {
                        let mut events = Vec::new();
                        batch.unpack_into(&mut events);
                        got.push(events);
                    }
                    Queued::Frame(f) => {
                        assert!(matches!(f.item, StreamItem::Message(Message::End)));
                        ended = true;
                    }
                }
            }
            assert_eq!(ended, whole);
            assert_eq!(got.len(), batches.len());
            assert!(got == batches, "the batches arrive as written");
        }
    }

    /// A packed batch that does not unpack (its frame whole, its contents damaged) keeps its
    /// length: its events from the damage on arrive as lost ones, the queue's damage says why,
    /// and the stream goes on.
    #[test]
    fn a_damaged_packed_batch_keeps_its_length_its_events_from_the_damage_on_lost() {
        let (tx, frames, _recycle, events) = stream_with_a_damaged_batch(3, 1);
        send(&tx, 2, 8, StreamItem::Message(Message::End));
        drop(tx);
        let got: Vec<(u64, String)> = (&frames)
            .enumerate()
            .map(|(i, f)| {
                let what = match f.item {
                    StreamItem::Message(Message::Batch(b)) if i == 1 => {
                        assert_eq!(b.events[..100], events[..100], "the events before stand");
                        for e in &b.events[100..] {
                            use heaplens_alloc::event::{EventKind, drop_reason};
                            assert_eq!(e.kind, EventKind::Dropped as u8);
                            let d = heaplens_alloc::schema::Dropped::from_event(e);
                            assert_eq!((d.lost, d.reasons), (1, drop_reason::DAMAGED));
                            assert_eq!(e.time, events[99].time);
                        }
                        format!("batch of {}", b.events.len())
                    }
                    StreamItem::Message(Message::Batch(b)) => {
                        assert_eq!(b.events, events);
                        format!("batch of {}", b.events.len())
                    }
                    StreamItem::Message(m) => format!("{m:?}"),
                    StreamItem::Closed(why) => format!("closed {why:?}"),
                };
                (f.conn, what)
            })
            .collect();
        let batch = (1, "batch of 300".to_owned());
        assert_eq!(
            got,
            [
                batch.clone(),
                batch.clone(),
                batch,
                (1, "End".to_owned()),
                (1, "closed None".to_owned()),
                (2, "End".to_owned())
            ]
        );
        let (batches, lost, why) = frames.damage().seen().expect("the damage is told");
        assert_eq!((batches, lost), (1, 200));
        assert!(
            why.starts_with("corrupt heaplens stream: a packed batch of 300 events"),
            "{why}"
        );
    }

    #[test]
    fn a_process_with_the_launch_token_is_admitted_and_the_token_stays_out_of_the_trace() {
        let (_dir, socket, l) = listener();
        let (pid, code) = peer(&socket, None, &hello(Some("s3cret"), true));
        assert_eq!(code, 0, "the peer connects");
        let (seen, admitted) = take(&l, "s3cret");
        assert_eq!(seen, pid, "the pid comes from the peer's credentials");
        let (meta, recorded) = admitted.expect("admitted");
        assert!(recorded);
        assert!(
            !meta.contains("s3cret") && !meta.contains("token"),
            "{meta}"
        );
        assert!(meta.contains("\"command\":[\"prog\"]"), "{meta}");
        // A child without --follow-fork only says who it is.
        peer(&socket, None, &hello(Some("s3cret"), false));
        let (_, admitted) = take(&l, "s3cret");
        assert_eq!(admitted.map(|(_, recorded)| recorded), Ok(false));
    }

    #[test]
    fn a_process_of_ours_without_the_token_is_refused() {
        let (_dir, socket, l) = listener();
        for says in [
            hello(Some("guessed"), true),
            hello(None, true),
            b"HLSTREAM".to_vec(),
            Vec::new(),
        ] {
            let (_, code) = peer(&socket, None, &says);
            assert_eq!(code, 0, "the peer connects");
            let (_, admitted) = take(&l, "s3cret");
            let why = admitted.expect_err("refused");
            assert!(!why.is_empty());
        }
        peer(&socket, None, &hello(Some("guessed"), true));
        let (_, admitted) = take(&l, "s3cret");
        assert_eq!(
            admitted,
            Err("it does not carry this launch's token".to_owned())
        );
    }

    #[test]
    fn a_peer_of_another_user_is_refused() {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            eprintln!("skipped: running a peer as another user needs root (setuid)");
            return;
        }
        let nobody = 65534;
        let (dir, socket, l) = listener();
        // The private directory keeps the other user out altogether.
        let (_, code) = peer(&socket, Some(nobody), &hello(Some("t"), true));
        assert_eq!(
            code, 1,
            "another user reached the socket through its 0700 directory"
        );
        // Opened up on purpose, so the connection is made and the peer check is what refuses it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (_, code) = peer(&socket, Some(nobody), &hello(Some("t"), true));
        assert_eq!(
            code, 0,
            "the other user's peer connects once the directory is open"
        );
        let (stream, _) = l.accept().expect("a connection waits");
        let e = peer_of_this_user(&stream).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("another user"), "{e}");
    }

    #[test]
    fn the_socket_directory_is_fresh_and_0700_and_a_pre_existing_one_is_refused() {
        let dir = PrivateDir::create().unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(meta.uid(), wire::my_uid());
        drop(dir);

        let base = std::env::temp_dir().join(format!("heaplens-guard-{}", std::process::id()));
        for mode in [0o755, 0o777, 0o700] {
            std::fs::create_dir_all(&base).unwrap();
            std::fs::set_permissions(&base, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = PrivateDir::create_at(base.clone())
                .err()
                .unwrap_or_else(|| panic!("a directory of mode {mode:o} made before was taken"));
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
            // Refused, not taken over: its mode is as it was.
            let now = std::fs::metadata(&base).unwrap().permissions().mode() & 0o777;
            assert_eq!(now, mode);
            std::fs::remove_dir(&base).unwrap();
        }
        // A link planted where the directory goes is refused too.
        let target = std::env::temp_dir();
        std::os::unix::fs::symlink(&target, &base).unwrap();
        assert!(PrivateDir::create_at(base.clone()).is_err());
        std::fs::remove_file(&base).unwrap();
    }
}
