//! Launching a program with heaplens preloaded and receiving its event stream.
//!
//! The socket sits in a fresh private directory (mode 0700) under `$XDG_RUNTIME_DIR` or `/tmp`;
//! its path reaches the target through `HEAPLENS_SOCKET`, `libheaplens.so` through `LD_PRELOAD`.
//! A peer that runs as another user is refused. A reader thread takes the frames off the socket
//! as fast as they come and queues them in a [`backlog`](crate::backlog) bounded by bytes, so
//! the program never waits for whoever consumes them until that budget is spent; the queue ends
//! with how the stream ended.

use std::ffi::OsString;
use std::io::{self, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use heaplens_alloc::batch::{Batch, Message};
use heaplens_alloc::event::{EVENT_SIZE, Event};
use heaplens_alloc::wire::{self, WireError};

use crate::backlog::{self, backlog};
use crate::quiet::say;

/// Event vectors kept for the reader to refill: as many as are in flight between it and the
/// recorder's keyframe model.
const RECYCLED_BATCHES: usize = 512;

/// Bytes of frames the reader may hold for a consumer that falls behind, by default, before the
/// program has to wait: 1 GiB, about 33 M events.
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

/// What the reader thread delivers.
#[derive(Debug)]
pub enum StreamItem {
    /// A message from the program's collector.
    Message(Message),
    /// The program replaced itself (`exec`): what follows is the new program's stream.
    Exec,
    /// The stream ended: cleanly after an `End` frame, or not (the error says how).
    Closed(Option<WireError>),
}

impl StreamItem {
    /// The memory it holds, as the backlog counts it.
    fn bytes(&self) -> usize {
        const ITEM: usize = std::mem::size_of::<StreamItem>();
        match self {
            Self::Message(Message::Batch(Batch { events, .. })) => {
                ITEM + events.capacity() * EVENT_SIZE
            }
            Self::Message(Message::Meta(json)) => ITEM + json.capacity(),
            _ => ITEM,
        }
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

/// A launched program and its event stream.
pub struct Launched {
    /// The program.
    pub child: Child,
    /// Frames from it (or the stream's end).
    pub frames: backlog::Receiver<StreamItem>,
    /// Where a consumer may give a batch's event vector back once done with it: the reader
    /// fills it with a later batch instead of allocating (64 KiB a batch).
    pub recycle: Sender<Vec<Event>>,
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

/// Starts `command` with heaplens preloaded and the variables `env` set (stack capture, say),
/// and waits (up to `timeout`) for it to connect. Its frames queue in a backlog of at most
/// `backlog_bytes`.
pub fn launch(
    command: &[OsString],
    timeout: Duration,
    env: &[(&str, String)],
    backlog_bytes: usize,
) -> io::Result<Launched> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command given"))?;
    let lib = preload_library()?;
    let dir = PrivateDir::create()?;
    let socket = dir.path().join("stream.sock");
    let listener = UnixListener::bind(&socket)?;
    listener.set_nonblocking(true)?;
    let mut preload = OsString::from(lib.as_os_str());
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(existing);
    }
    let mut child = Command::new(program)
        .args(args)
        .env("LD_PRELOAD", preload)
        .env(wire::SOCKET_ENV, &socket)
        .env(wire::PARENT_ENV, std::process::id().to_string())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", program.to_string_lossy()),
            )
        })?;
    let pid = i32::try_from(child.id()).unwrap_or(-1);
    let stream = accept(
        &listener,
        pid,
        || Ok(child.try_wait()?.map(Exit::from_status)),
        timeout,
    )?;
    let (tx, rx) = backlog(backlog_bytes);
    let (recycle, recycled) = bounded(RECYCLED_BATCHES);
    std::thread::Builder::new()
        .name("heaplens-reader".into())
        .spawn(move || read_streams(&listener, stream, pid, &tx, &recycled))?;
    Ok(Launched {
        child,
        frames: rx,
        recycle,
        _dir: dir,
    })
}

/// Waits for the program `pid` to connect. Connections from other users are refused, and so are
/// other processes of ours (the program's children inherit its environment; they run untraced).
fn accept(
    listener: &UnixListener,
    pid: i32,
    mut exited: impl FnMut() -> io::Result<Option<Exit>>,
    timeout: Duration,
) -> io::Result<UnixStream> {
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let (uid, peer) = wire::peer_cred(stream.as_raw_fd())?;
                if uid != wire::my_uid() {
                    say!("refused a connection from another user (uid {uid})");
                    continue;
                }
                if peer != pid {
                    continue; // a child of the program: dropping the connection stops its stream
                }
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if let Some(exit) = exited()? {
            return Err(io::Error::other(format!(
                "the program {exit} before heaplens could connect (is it dynamically linked?)"
            )));
        }
        if start.elapsed() > timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the program did not connect to heaplens (is it dynamically linked?)",
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether process `pid` is still running (not gone, not a zombie).
pub(crate) fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Reads the program's streams: the first, and after an `exec` (a stream that stops without its
/// end while the process runs on) the new program's.
fn read_streams(
    listener: &UnixListener,
    first: UnixStream,
    pid: i32,
    tx: &backlog::Sender<StreamItem>,
    recycled: &Receiver<Vec<Event>>,
) {
    let mut stream = first;
    loop {
        match read_stream(stream, tx, recycled) {
            Some(unclean) if running(pid) => {
                let again = accept(
                    listener,
                    pid,
                    || Ok((!running(pid)).then_some(Exit::Code(-1))),
                    Duration::from_secs(5),
                );
                let Ok(next) = again else {
                    let _ = send(tx, StreamItem::Closed(Some(unclean)));
                    return;
                };
                if send(tx, StreamItem::Exec).is_err() {
                    return;
                }
                stream = next;
            }
            Some(unclean) => {
                let _ = send(tx, StreamItem::Closed(Some(unclean)));
                return;
            }
            None => {
                let _ = send(tx, StreamItem::Closed(None));
                return;
            }
        }
    }
}

/// Queues `item`, counting its bytes.
pub(crate) fn send(tx: &backlog::Sender<StreamItem>, item: StreamItem) -> Result<(), StreamItem> {
    let bytes = item.bytes();
    tx.send(item, bytes)
}

/// Forwards one stream's frames; returns how it ended (`None`: cleanly, with `End`).
pub(crate) fn read_stream(
    stream: UnixStream,
    tx: &backlog::Sender<StreamItem>,
    recycled: &Receiver<Vec<Event>>,
) -> Option<WireError> {
    let mut r = BufReader::with_capacity(1 << 20, stream);
    if let Err(e) = wire::read_header(&mut r) {
        return Some(e);
    }
    let mut ended = false;
    loop {
        match wire::read_frame_reusing(&mut r, recycled.try_recv().ok()) {
            Ok(Some(message)) => {
                ended = matches!(message, Message::End);
                if send(tx, StreamItem::Message(message)).is_err() {
                    return None;
                }
            }
            Ok(None) if ended => return None,
            Ok(None) => {
                return Some(WireError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream stopped before its end",
                )));
            }
            Err(e) => return Some(e),
        }
    }
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

    /// Forks a child that, as user `uid` if given, connects to `socket` and exits: status 0 if
    /// it connected, 1 if the connection was refused, 2 if it could not change user. Returns
    /// its pid once it has exited (its connection, if made, waits in the listener's backlog).
    fn peer(socket: &Path, uid: Option<u32>) -> (i32, i32) {
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

    /// `accept` for `pid`, the peer having exited: the connection waiting, or why none.
    fn accept_for(l: &UnixListener, pid: i32) -> io::Result<UnixStream> {
        accept(l, pid, || Ok(Some(Exit::Code(0))), Duration::from_secs(60))
    }

    #[test]
    fn the_program_itself_is_accepted() {
        let (_dir, socket, l) = listener();
        let (pid, code) = peer(&socket, None);
        assert_eq!(code, 0, "the peer connects");
        accept_for(&l, pid).expect("the program's connection is taken");
    }

    #[test]
    fn another_process_of_ours_such_as_the_programs_child_is_refused() {
        let (_dir, socket, l) = listener();
        let (child, code) = peer(&socket, None);
        assert_eq!(code, 0, "the peer connects");
        // The program is another process (here: this one, which never connects).
        let program = i32::try_from(std::process::id()).unwrap();
        assert_ne!(child, program);
        let e = accept_for(&l, program).unwrap_err();
        assert!(
            e.to_string().contains("before heaplens could connect"),
            "{e}"
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
        let (_, code) = peer(&socket, Some(nobody));
        assert_eq!(
            code, 1,
            "another user reached the socket through its 0700 directory"
        );
        // Opened up on purpose, so the connection is made and the peer check is what refuses it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (pid, code) = peer(&socket, Some(nobody));
        assert_eq!(
            code, 0,
            "the other user's peer connects once the directory is open"
        );
        let e = accept_for(&l, pid).unwrap_err();
        assert!(
            e.to_string().contains("before heaplens could connect"),
            "{e}"
        );
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
