//! Attaching to a running program: a program started with `libheaplens.so` preloaded and
//! `HEAPLENS_ATTACH=1` runs with the hook off (dormant) and listens on a socket of its own;
//! `heaplens attach PID` connects, and the program streams to it exactly as a launched program
//! does (metadata, an initial census of everything live, then events) until heaplens detaches.
//!
//! ```text
//! socket   $XDG_RUNTIME_DIR/heaplens/PID.sock, else /tmp/heaplens-UID/PID.sock
//!          (the directory 0700 and ours, or nothing listens; the socket removed at exit)
//! request  magic "HLATTACH" | stack mode u8 (0 off, 1 sampled, 2 all) | interval u64 (bytes, LE)
//! reply    the stream of `crate::wire`
//! detach   heaplens shuts its end for writing (or goes away): the program stops the hook,
//!          sends what is buffered, a last census and the end frame, and closes the socket
//! ```
//!
//! Dormant, the program pays nothing beyond the hook compiled in and off: one thread blocked in
//! `accept`. That thread is untraced (nothing it allocates is recorded) and accepts a peer only
//! of the program's own user (`SO_PEERCRED`), one at a time.

use std::ffi::{CString, OsStr};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    AtomicI32, AtomicPtr,
    Ordering::{AcqRel, Acquire, Release},
};
use std::time::Duration;

use crate::sample::StackMode;
use crate::wire::my_uid;

/// The variable that makes a preloaded program listen for `heaplens attach` (`1`).
pub const ATTACH_ENV: &str = "HEAPLENS_ATTACH";
/// The request's magic.
pub const REQUEST_MAGIC: &[u8; 8] = b"HLATTACH";
/// Bytes in a request.
pub const REQUEST_SIZE: usize = 17;
/// How long the program waits for a request once a peer has connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What `heaplens attach` asks for: how to capture stacks.
pub fn encode_request(mode: StackMode, interval: u64) -> [u8; REQUEST_SIZE] {
    let mut r = [0u8; REQUEST_SIZE];
    r[..8].copy_from_slice(REQUEST_MAGIC);
    r[8] = match mode {
        StackMode::Off => 0,
        StackMode::Sampled => 1,
        StackMode::All => 2,
    };
    r[9..].copy_from_slice(&interval.to_le_bytes());
    r
}

/// The stack mode and interval of a request; `None` when it is not one.
pub fn decode_request(r: &[u8; REQUEST_SIZE]) -> Option<(StackMode, usize)> {
    if &r[..8] != REQUEST_MAGIC {
        return None;
    }
    let mode = match r[8] {
        0 => StackMode::Off,
        1 => StackMode::Sampled,
        2 => StackMode::All,
        _ => return None,
    };
    let mut n = [0u8; 8];
    n.copy_from_slice(&r[9..]);
    let interval = usize::try_from(u64::from_le_bytes(n)).ok()?;
    Some((mode, interval))
}

/// The directory of the attach sockets of user `uid`: `heaplens` in the runtime directory
/// (`XDG_RUNTIME_DIR`, when it names a directory), else `/tmp/heaplens-UID`.
pub fn socket_dir(runtime_dir: Option<&OsStr>, uid: u32) -> PathBuf {
    match runtime_dir
        .map(Path::new)
        .filter(|d| d.is_absolute() && d.is_dir())
    {
        Some(d) => d.join("heaplens"),
        None => PathBuf::from(format!("/tmp/heaplens-{uid}")),
    }
}

/// The socket of process `pid` in `dir`.
pub fn socket_path(dir: &Path, pid: i32) -> PathBuf {
    dir.join(format!("{pid}.sock"))
}

/// Makes `dir` (mode 0700) or checks the one there: it must be a directory (not a link), ours,
/// and closed to everyone else. Another's, or one with looser modes, is refused, not repaired.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot make {}: {e}", dir.display()),
            ));
        }
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.uid() != my_uid() {
        return Err(io::Error::other(format!(
            "{} belongs to another user (uid {})",
            dir.display(),
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is open to other users (mode {mode:o}, want 700)",
            dir.display()
        )));
    }
    Ok(())
}

/// The socket this process listens on, and the process that made it (a forked child inherits
/// the exit handler and this, and listens on a socket of its own: [`after_fork_child`]). Set
/// once a process; a leaked box, so that the exit handler reads it without a lock.
static SOCKET: AtomicPtr<(CString, i32)> = AtomicPtr::new(core::ptr::null_mut());
/// The listening socket's descriptor (-1: none), for a forked child to close.
static LISTEN_FD: AtomicI32 = AtomicI32::new(-1);

/// Listens for `heaplens attach` when `HEAPLENS_ATTACH=1` and no launcher streams already
/// (`HEAPLENS_SOCKET`). Called once, at load; returns whether it listens. A directory that is
/// not private, or any other failure, is said on stderr and leaves the program untraced.
pub fn listen_from_env() -> bool {
    if std::env::var_os(crate::wire::SOCKET_ENV).is_some()
        || std::env::var_os(ATTACH_ENV).is_none_or(|v| v != "1")
    {
        return false;
    }
    match listen() {
        Ok(()) => true,
        Err(e) => {
            let line = format!("heaplens: not listening for attach: {e}\n");
            // SAFETY: writes the bytes of `line` to stderr.
            let _ = unsafe { libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len()) };
            false
        }
    }
}

fn listen() -> io::Result<()> {
    let dir = socket_dir(std::env::var_os("XDG_RUNTIME_DIR").as_deref(), my_uid());
    private_dir(&dir)?;
    let pid = i32::try_from(std::process::id()).unwrap_or(-1);
    let path = socket_path(&dir, pid);
    // Made under a name of its own and renamed into place once it listens, with its mode set:
    // `heaplens attach` takes a socket that refuses a connection for one left by a program
    // that died, and the socket is refused between `bind` and `listen` (it removed a socket
    // being made, and the program then failed to set its mode: ENOENT).
    let making = dir.join(format!(".{pid}.sock.new"));
    // One left by an earlier program of this pid (this process before an `exec`, or one that
    // died): the directory is ours alone, so whatever is there is ours to replace.
    let _ = std::fs::remove_file(&making);
    let listener = UnixListener::bind(&making).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", making.display()),
        )
    })?;
    std::fs::set_permissions(&making, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&making, &path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&making);
        })?;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let first = SOCKET
        .swap(Box::into_raw(Box::new((c_path, pid))), AcqRel)
        .is_null();
    if first {
        // A forked child inherits the registration; a session open at exit ends with the status.
        crate::wire::exit_status::at_exit(at_exit);
    }
    let fd = listener.into_raw_fd();
    LISTEN_FD.store(fd, Release);
    let mut thread: libc::pthread_t = 0;
    // SAFETY: `listener_main` takes ownership of the listening socket `fd`; default attributes.
    let rc = unsafe {
        libc::pthread_create(
            &raw mut thread,
            core::ptr::null(),
            listener_main,
            fd as usize as *mut libc::c_void,
        )
    };
    if rc != 0 {
        // SAFETY: `fd` is ours; the thread that would have owned it was not made.
        drop(unsafe { UnixListener::from_raw_fd(fd) });
        let _ = std::fs::remove_file(&path);
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: the thread runs detached; nobody joins it.
    unsafe { libc::pthread_detach(thread) };
    Ok(())
}

/// At exit: an attached heaplens gets the last events and the end frame; the socket goes.
extern "C" fn at_exit() {
    crate::collector::shutdown();
    // SAFETY: a non-null SOCKET is a leaked box, never freed.
    if let Some((path, pid)) = unsafe { SOCKET.load(Acquire).as_ref() }
        && i64::from(*pid) == i64::from(std::process::id())
    {
        // SAFETY: `path` is a NUL-terminated string.
        unsafe { libc::unlink(path.as_ptr()) };
    }
}

/// In the child of a `fork()` of a listening program: the listener thread did not come along,
/// so the child closes the parent's listening socket and listens on one of its own (its pid's),
/// to be attached to as any program is. The parent's attach session, if one runs, stays the
/// parent's (`wire::after_fork_child` closes its stream in the child).
pub(crate) fn after_fork_child() {
    let fd = LISTEN_FD.swap(-1, AcqRel);
    if fd < 0 {
        return;
    }
    // SAFETY: the parent's listening socket, which no thread of the child uses.
    unsafe { libc::close(fd) };
    let _ = std::panic::catch_unwind(|| {
        if let Err(e) = listen() {
            let line = format!("heaplens: the forked child does not listen for attach: {e}\n");
            // SAFETY: writes the bytes of `line` to stderr.
            let _ = unsafe { libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len()) };
        }
    });
}

extern "C" fn listener_main(arg: *mut libc::c_void) -> *mut libc::c_void {
    // Untraced before its first allocation: nothing this thread does is recorded.
    crate::hook::set_thread_traced(false);
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"heaplens-attach".as_ptr()) };
    #[allow(clippy::cast_possible_truncation)] // the fd `listen` passed, widened
    let fd = arg as usize as i32;
    // SAFETY: `listen` handed the listening socket over to this thread.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    let _ = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| serve(&listener)));
    core::ptr::null_mut()
}

/// Takes one peer at a time, for as long as the program runs.
fn serve(listener: &UnixListener) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => session(listener, stream),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Out of descriptors, say: try again later rather than spin.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One attach: checks the peer, reads its request, streams until it detaches or goes away.
fn session(listener: &UnixListener, mut stream: UnixStream) {
    let Ok((uid, _)) = crate::wire::peer_cred(stream.as_raw_fd()) else {
        return;
    };
    if uid != my_uid() {
        return; // refused: the connection closes without a word
    }
    let mut request = [0u8; REQUEST_SIZE];
    if stream.set_read_timeout(Some(REQUEST_TIMEOUT)).is_err()
        || stream.read_exact(&mut request).is_err()
    {
        return;
    }
    let Some((mode, interval)) = decode_request(&request) else {
        return;
    };
    if !crate::collector::restartable() {
        return; // the last recording has not finished (its peer stopped reading)
    }
    crate::sample::set_stack_mode(mode, interval);
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    if stream.set_read_timeout(None).is_err()
        || !crate::wire::start_stream(writer, &crate::wire::metadata_json(), true, false)
    {
        return;
    }
    wait_for_detach(listener, &mut stream);
    // A last census by the heaps, then off, the buffered events, the end frame; then the socket
    // closes.
    crate::collector::shutdown_while_running();
    let _ = crate::collector::restartable();
}

/// Blocks until the peer shuts its end for writing or goes away. Another peer that connects
/// meanwhile is closed at once (it sees the stream end before its header: already attached).
fn wait_for_detach(listener: &UnixListener, stream: &mut UnixStream) {
    let mut byte = [0u8; 1];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is an array of two valid pollfd entries.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            drop(listener.accept());
        }
        if fds[0].revents != 0 {
            match stream.read(&mut byte) {
                Ok(0) => return,
                Ok(_) => {} // nothing is expected; the peer detaches by shutting its end
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_junk_is_refused() {
        for (mode, n) in [
            (StackMode::Off, 0),
            (StackMode::Sampled, 512 << 10),
            (StackMode::All, 1),
        ] {
            let r = encode_request(mode, n as u64);
            assert_eq!(decode_request(&r), Some((mode, n)));
        }
        let mut r = encode_request(StackMode::All, 7);
        r[8] = 9;
        assert_eq!(decode_request(&r), None);
        r[0] = b'X';
        assert_eq!(decode_request(&r), None);
    }

    #[test]
    fn the_socket_directory_is_private_and_a_loose_one_is_refused() {
        let base = std::env::temp_dir().join(format!("heaplens-attach-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        private_dir(&base).unwrap();
        let mode = std::fs::metadata(&base).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        private_dir(&base).expect("our own private directory is taken again");
        for loose in [0o755, 0o711, 0o770] {
            std::fs::set_permissions(&base, std::fs::Permissions::from_mode(loose)).unwrap();
            let e = private_dir(&base).unwrap_err().to_string();
            assert!(e.contains("open to other users"), "{e}");
            // Refused, not repaired.
            let now = std::fs::metadata(&base).unwrap().permissions().mode() & 0o777;
            assert_eq!(now, loose);
        }
        std::fs::remove_dir(&base).unwrap();
        std::os::unix::fs::symlink(std::env::temp_dir(), &base).unwrap();
        let e = private_dir(&base).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        std::fs::remove_file(&base).unwrap();
    }

    #[test]
    fn the_socket_lives_in_the_runtime_directory_or_tmp() {
        let tmp = std::env::temp_dir();
        assert_eq!(socket_dir(Some(tmp.as_os_str()), 5), tmp.join("heaplens"));
        assert_eq!(socket_dir(None, 5), PathBuf::from("/tmp/heaplens-5"));
        assert_eq!(
            socket_dir(Some(OsStr::new("/no/such/dir")), 5),
            PathBuf::from("/tmp/heaplens-5")
        );
        assert_eq!(
            socket_path(Path::new("/d"), 42),
            PathBuf::from("/d/42.sock")
        );
    }
}
