//! `heaplens attach PID` on a real program (sample-apps/c/attach_target.c, started with
//! libheaplens.so preloaded and `HEAPLENS_ATTACH=1`) over its real socket: what it allocated
//! before the attach arrives through the census, what it allocates after as events; SIGINT and
//! SIGTERM detach with a complete trace; attaching again works; the program exiting while
//! attached ends the trace cleanly; and every pid that cannot be attached to gets its sentence.
//! Every wait is for a line, a file or an exit, with a deadline.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, unbounded};

use common::{Display, heaplens, root, tempdir};

/// How long any one step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Builds libheaplens.so (once) and attach_target.c into `dir`.
fn build(dir: &Path) -> PathBuf {
    common::build_preload();
    common::sample_c(dir, "attach_target")
}

/// Lines of a child's pipe, as they come.
fn lines(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = unbounded();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `want`; returns it, or fails with everything seen.
fn wait_line(rx: &Receiver<String>, want: &str, what: &str) -> String {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(DEADLINE) {
            Ok(line) if line.contains(want) => return line,
            Ok(line) => seen.push(line),
            Err(RecvTimeoutError::Timeout) => {
                panic!("{what}: no line with {want:?} in {DEADLINE:?}; saw {seen:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("{what}: ended without a line with {want:?}; saw {seen:?}")
            }
        }
    }
}

/// Waits for `child` to exit; fails after the deadline.
fn wait_exit(mut child: Child, what: &str) -> std::process::ExitStatus {
    let pid = child.id();
    let (tx, rx) = unbounded();
    std::thread::spawn(move || tx.send(child.wait()));
    match rx.recv_timeout(DEADLINE) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} (pid {pid}) did not exit in {DEADLINE:?}")
        }
    }
}

/// Sends `signal` (`INT`, `TERM`) to `pid`.
fn kill(signal: &str, pid: u32) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// The program, running dormant with its socket under `runtime`.
struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: Receiver<String>,
    socket: PathBuf,
}

impl Target {
    fn start(exe: &Path, runtime: &Path) -> Self {
        Self::spawn(Command::new(exe), runtime)
    }

    /// Starts `program` (the library prints its heap's summary at exit to the returned lines).
    fn start_showing_stats(exe: &Path, runtime: &Path) -> (Self, Receiver<String>) {
        let mut program = Command::new(exe);
        program
            .env("HEAPLENS_SHOW_STATS", "1")
            .stderr(Stdio::piped());
        let mut target = Self::spawn(program, runtime);
        let stderr = lines(target.child.stderr.take().unwrap());
        (target, stderr)
    }

    fn spawn(mut program: Command, runtime: &Path) -> Self {
        let mut child = program
            .env("LD_PRELOAD", root().join("target/release/libheaplens.so"))
            .env("HEAPLENS_ATTACH", "1")
            .env("XDG_RUNTIME_DIR", runtime)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = lines(child.stdout.take().unwrap());
        wait_line(&stdout, "ready", "the program");
        let socket = runtime.join(format!("heaplens/{}.sock", child.id()));
        // The library listens before main runs.
        assert!(socket.exists(), "no socket at {}", socket.display());
        Self {
            child,
            stdin,
            stdout,
            socket,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Allocates 50 more blocks of 5000 bytes; returns how many it holds.
    fn more(&mut self) -> String {
        writeln!(self.stdin, "more").unwrap();
        self.stdin.flush().unwrap();
        wait_line(&self.stdout, "more", "the program")
    }
}

/// `heaplens attach PID --record TRACE`, once it has the initial census.
struct Attached {
    child: Child,
    stderr: Receiver<String>,
}

fn attach(pid: u32, trace: &Path, runtime: &Path) -> Attached {
    let mut child = heaplens()
        .args(["attach", &pid.to_string(), "--record"])
        .arg(trace)
        .env("XDG_RUNTIME_DIR", runtime)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = lines(child.stderr.take().unwrap());
    wait_line(&stderr, "attached to pid", "heaplens attach");
    Attached { child, stderr }
}

impl Attached {
    /// Waits for heaplens to finish the trace; returns what it said at the end.
    fn finish(self) -> String {
        let status = wait_exit(self.child, "heaplens attach");
        let said: Vec<String> = self.stderr.iter().collect();
        assert!(status.success(), "heaplens attach: {status}: {said:?}");
        said.join("\n")
    }
}

fn stats(trace: &Path) -> serde_json::Value {
    common::json(&["stats", "--json"], trace)
}

/// Live blocks of `block_size` in the trace's size classes at its end.
fn live_blocks(s: &serde_json::Value, block_size: u64) -> u64 {
    s["top_size_classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["block_size"] == block_size)
        .map_or(0, |c| c["live_blocks"].as_u64().unwrap())
}

/// A trace is complete and every census in it agrees with the model.
fn assert_exact(s: &serde_json::Value, what: &str) {
    assert_eq!(s["complete"], true, "{what}: {s}");
    assert_eq!(s["census_mismatches"], 0, "{what}: {s}");
    let censuses = s["censuses"].as_u64().unwrap();
    assert!(censuses >= 2, "{what}: the initial and last census: {s}");
    assert_eq!(s["censuses_agreeing"], censuses, "{what}: {s}");
}

/// 3000-byte and 5000-byte requests land in these size classes.
const EARLY: u64 = 3072;
const LATER: u64 = 5120;

#[test]
fn attach_record_detach_and_attach_again() {
    let dir = tempdir("attach");
    let exe = build(&dir);
    let mut target = Target::start(&exe, &dir);
    let pid = target.pid();

    // First attach: the 300 blocks from before arrive through the census, 50 more as events.
    let first = dir.join("first.hltrace");
    let a = attach(pid, &first, &dir);
    // One heaplens at a time: a second is refused with a sentence.
    let out = heaplens()
        .args(["attach", &pid.to_string(), "--record"])
        .arg(dir.join("second.hltrace"))
        .env("XDG_RUNTIME_DIR", &dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("another heaplens is attached"), "{err}");
    assert_eq!(target.more(), "more 50");
    kill("INT", a.child.id());
    let said = a.finish();
    assert!(said.contains("detached from pid"), "{said}");
    let s = stats(&first);
    assert_exact(&s, "first attach");
    assert_eq!(live_blocks(&s, EARLY), 300, "{s}");
    assert_eq!(live_blocks(&s, LATER), 50, "{s}");
    assert_eq!(s["allocs"], 50, "only what happened while attached: {s}");
    assert_eq!(s["live_blocks_at_exit"], 50, "{s}");
    assert_eq!(s["exit"], serde_json::Value::Null, "the program runs on");
    assert_eq!(s["attached"], true, "{s}");
    assert_eq!(s["detached"], true, "the trace says heaplens detached: {s}");
    let text = common::heaplens()
        .arg("stats")
        .arg(&first)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("exit        none: heaplens detached at") && text.contains("live at detach"),
        "{text}"
    );

    // Detached, the program runs on untraced.
    assert_eq!(target.more(), "more 100");

    // Again, detached by SIGTERM: a fresh census holds the first 100 of 5000 bytes.
    let second = dir.join("second.hltrace");
    let a = attach(pid, &second, &dir);
    assert_eq!(target.more(), "more 150");
    kill("TERM", a.child.id());
    let said = a.finish();
    assert!(said.contains("detached from pid"), "{said}");
    let s = stats(&second);
    assert_exact(&s, "second attach");
    assert_eq!(live_blocks(&s, EARLY), 300, "{s}");
    assert_eq!(live_blocks(&s, LATER), 150, "{s}");
    assert_eq!(s["allocs"], 50, "{s}");

    // The program exits while attached: the trace ends cleanly at its exit, and says so.
    let third = dir.join("third.hltrace");
    let a = attach(pid, &third, &dir);
    writeln!(target.stdin, "exit").unwrap();
    target.stdin.flush().unwrap();
    wait_line(&target.stdout, "bye", "the program");
    let said = a.finish();
    assert!(said.contains("exited while attached"), "{said}");
    let s = stats(&third);
    assert_exact(&s, "attached at exit");
    assert_eq!(s["detached"], false, "it ended at the program's exit: {s}");
    assert_eq!(
        s["exit"]["code"], 0,
        "main returned 0, as it said at exit: {s}"
    );
    assert_eq!(
        s["frees"].as_u64().unwrap(),
        450,
        "the program freed its 450 blocks, known to the model through the census: {s}"
    );
    assert_eq!(live_blocks(&s, EARLY), 0, "{s}");
    let socket = target.socket.clone();
    let status = wait_exit(target.child, "the program");
    assert!(status.success(), "the program: {status}");
    assert!(!socket.exists(), "the socket is removed at exit");
}

/// What the program's heap holds at its exit after `sessions` attach sessions, from its heap
/// summary: (segments, bytes in use). The program frees everything it allocated before it exits.
fn in_use_at_exit_after(sessions: usize, exe: &Path, dir: &Path) -> (u64, f64) {
    let (mut target, stderr) = Target::start_showing_stats(exe, dir);
    for i in 0..sessions {
        let a = attach(
            target.pid(),
            &dir.join(format!("s{sessions}-{i}.hltrace")),
            dir,
        );
        kill("INT", a.child.id());
        let said = a.finish();
        assert!(said.contains("detached from pid"), "{said}");
    }
    writeln!(target.stdin, "exit").unwrap();
    target.stdin.flush().unwrap();
    // "heaplens: 2 threads, 3 segments, 17 pages in use", then
    // "  reserved 24.0 MiB  committed 23.8 MiB  in use 27.7 KiB".
    let counts = wait_line(&stderr, "segments,", "the program's heap summary");
    let bytes = wait_line(&stderr, "committed", "the program's heap summary");
    assert!(wait_exit(target.child, "the program").success());
    let words: Vec<&str> = counts.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| w.starts_with("segments"))
        .unwrap();
    let segments = words[at - 1].parse().unwrap();
    let (number, unit) = bytes
        .rsplit_once("in use ")
        .unwrap()
        .1
        .split_once(' ')
        .unwrap();
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        other => panic!("unit {other} in {bytes:?}"),
    };
    (segments, number.parse::<f64>().unwrap() * scale)
}

#[test]
fn attach_sessions_leave_nothing_behind_in_the_program() {
    // Each session used to leave its collector's channel and state (about 2 KiB) and a segment
    // of its own (an untraced thread did not take over what the one before it left).
    // Before: 8 more sessions, 8 more segments and 16 KiB more in use. When the last session's
    // collector ends against the program's exit varies by a segment and a little memory.
    let dir = tempdir("attach-leak");
    let exe = build(&dir);
    let (seg_2, bytes_2) = in_use_at_exit_after(2, &exe, &dir);
    let (seg_10, bytes_10) = in_use_at_exit_after(10, &exe, &dir);
    assert!(
        seg_10 <= seg_2 + 1,
        "segments at exit: {seg_10} after 10 sessions, {seg_2} after 2"
    );
    assert!(
        bytes_10 <= bytes_2 + 2048.0,
        "bytes in use at exit: {bytes_10} after 10 sessions, {bytes_2} after 2"
    );
}

/// `heaplens attach PID` with `XDG_RUNTIME_DIR=runtime`: its exit code and what it said.
fn attach_error(pid: u32, runtime: &Path) -> (Option<i32>, String) {
    let out: Output = heaplens()
        .args(["attach", &pid.to_string(), "--record"])
        .arg(runtime.join("never.hltrace"))
        .env("XDG_RUNTIME_DIR", runtime)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

#[test]
fn pids_that_cannot_be_attached_get_one_clear_sentence() {
    let dir = tempdir("attach-errors");
    // A program without heaplens.
    let plain = Command::new("sleep").arg("600").spawn().unwrap();
    let (code, err) = attach_error(plain.id(), &dir);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("is not heaplens-enabled")
            && err.contains("LD_PRELOAD=libheaplens.so HEAPLENS_ATTACH=1"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    kill("KILL", plain.id());
    wait_exit(plain, "sleep");

    // A program that was asked to listen but has no heaplens loaded.
    let asked = Command::new("sleep")
        .arg("600")
        .env("HEAPLENS_ATTACH", "1")
        .spawn()
        .unwrap();
    let (code, err) = attach_error(asked.id(), &dir);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("listens on no socket"), "{err}");
    kill("KILL", asked.id());
    wait_exit(asked, "sleep");

    // A pid that is gone.
    let gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    wait_exit(gone, "true");
    let (code, err) = attach_error(pid, &dir);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err,
        format!("heaplens: no process with pid {pid} is running")
    );

    // A pid that is gone but left its socket (it was killed): stale, and removed.
    let sockets = dir.join("heaplens");
    heaplens_alloc::attach::private_dir(&sockets).unwrap();
    let stale = sockets.join(format!("{pid}.sock"));
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let (code, err) = attach_error(pid, &dir);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is gone") && err.contains("stale"), "{err}");
    assert!(!stale.exists(), "the stale socket is removed");

    // A program that runs, with a socket nothing listens on (as between a program's `bind` and
    // `listen`): not stale, and left alone.
    let quiet = Command::new("sleep")
        .arg("600")
        .env("XDG_RUNTIME_DIR", &dir)
        .spawn()
        .unwrap();
    let socket = sockets.join(format!("{}.sock", quiet.id()));
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let (code, err) = attach_error(quiet.id(), &dir);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("runs, but nothing listens"), "{err}");
    assert!(socket.exists(), "a running program's socket is not removed");
    kill("KILL", quiet.id());
    wait_exit(quiet, "sleep");
}

#[test]
#[allow(unsafe_code)] // a forked peer drops its privileges with setuid
fn another_user_is_refused() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: running heaplens as another user needs root (setuid)");
        return;
    }
    let nobody = 65534;
    let dir = tempdir("attach-uid");
    let exe = build(&dir);
    let mut target = Target::start(&exe, &dir);
    let pid = target.pid();

    // heaplens run by another user says so, in one sentence.
    let out = {
        use std::os::unix::process::CommandExt;
        heaplens()
            .args(["attach", &pid.to_string(), "--record", "/dev/null"])
            .env("XDG_RUNTIME_DIR", &dir)
            .uid(nobody)
            .gid(nobody)
            .output()
            .unwrap()
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("belongs to another user"), "{err}");

    // Past heaplens's own check, the program refuses the peer: the 0700 directory keeps the
    // other user out, and opened up on purpose, the peer check closes the connection unserved.
    assert_eq!(foreign_peer(&target.socket, nobody), 1, "0700 directory");
    {
        use std::os::unix::fs::PermissionsExt;
        let open = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        open(target.socket.parent().unwrap(), 0o711).unwrap();
        open(&target.socket, 0o777).unwrap();
    }
    assert_eq!(
        foreign_peer(&target.socket, nobody),
        0,
        "the other user's peer is closed without a byte of the stream"
    );

    // The program ran on untouched, and its own user attaches still.
    let trace = dir.join("own.hltrace");
    let a = attach(pid, &trace, &dir);
    assert_eq!(target.more(), "more 50");
    kill("INT", a.child.id());
    a.finish();
    assert_exact(&stats(&trace), "after a refused peer");
    writeln!(target.stdin, "exit").unwrap();
    drop(target.stdin);
    assert!(wait_exit(target.child, "the program").success());
}

/// Forks a peer that, as user `uid`, connects to `socket`, sends an attach request and reads:
/// exits 0 if the program closed the connection without sending anything, 1 if it could not
/// connect, 2 if it could not change user, 3 if the program started streaming to it.
#[allow(unsafe_code)] // fork, setuid and raw socket calls in the child
fn foreign_peer(socket: &Path, uid: u32) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    let request = heaplens_alloc::attach::encode_request(heaplens_alloc::StackMode::Off, 0);
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
        // SAFETY: see above; `addr`, `len` and `request` were made before the fork.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(2);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                libc::_exit(1);
            }
            libc::write(fd, request.as_ptr().cast(), request.len());
            let mut byte = 0u8;
            let n = libc::read(fd, (&raw mut byte).cast(), 1);
            libc::_exit(if n > 0 { 3 } else { 0 });
        }
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out-parameter.
    let waited = unsafe { libc::waitpid(pid, &raw mut status, 0) };
    assert_eq!(waited, pid);
    assert!(libc::WIFEXITED(status));
    libc::WEXITSTATUS(status)
}

#[test]
fn the_viewer_attaches_and_ctrl_c_detaches() {
    let Some(display) = Display::start() else {
        eprintln!("skipped: Xvfb is not installed (Debian package xvfb; .ci/run installs it)");
        return;
    };
    let dir = tempdir("attach-viewer");
    let exe = build(&dir);
    let mut target = Target::start(&exe, &dir);
    let pid = target.pid();
    let mut child = heaplens()
        .args(["attach", &pid.to_string()])
        .env("XDG_RUNTIME_DIR", &dir)
        .env("DISPLAY", &display.name)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = lines(child.stderr.take().unwrap());
    wait_line(&stderr, "attached to pid", "heaplens attach (viewer)");
    assert_eq!(target.more(), "more 50");
    let a = Attached { child, stderr };
    kill("INT", a.child.id());
    let said = a.finish();
    assert!(said.contains("detached from pid"), "{said}");
    // The program runs on, untraced, and can be attached to again.
    assert_eq!(target.more(), "more 100");
    let trace = dir.join("after-viewer.hltrace");
    let a = attach(pid, &trace, &dir);
    kill("INT", a.child.id());
    a.finish();
    let s = stats(&trace);
    assert_exact(&s, "after the viewer");
    assert_eq!(live_blocks(&s, LATER), 100, "{s}");
    writeln!(target.stdin, "exit").unwrap();
    drop(target.stdin);
    assert!(wait_exit(target.child, "the program").success());
}

#[test]
fn a_program_killed_while_attached_leaves_a_readable_trace() {
    let dir = tempdir("attach-killed");
    let exe = build(&dir);
    let mut target = Target::start(&exe, &dir);
    let trace = dir.join("killed.hltrace");
    let a = attach(target.pid(), &trace, &dir);
    assert_eq!(target.more(), "more 50");
    kill("KILL", target.pid());
    wait_exit(target.child, "the program");
    let said = a.finish();
    assert!(said.contains("went away while attached"), "{said}");
    let s = stats(&trace);
    assert_eq!(
        (&s["attached"], &s["detached"]),
        (&true.into(), &false.into()),
        "{s}"
    );
    assert_eq!(s["census_mismatches"], 0, "the initial census: {s}");
    assert_eq!(live_blocks(&s, EARLY), 300, "{s}");
    assert!(s["events"].as_u64().unwrap() > 0, "{s}");
}

/// Attached to four threads that allocate, free and hand blocks to each other without pause,
/// and detached while they go on: the census at attach (each heap's own, at its next
/// allocation), those mid-run and the last, at detach, all agree with the model. Two rounds.
#[test]
fn every_census_agrees_when_attached_to_busy_threads_and_detached_while_they_run() {
    let dir = tempdir("attach-busy");
    common::build_preload();
    let exe = common::sample_c(&dir, "alloc_workload");
    for round in 0..2 {
        let mut program = Command::new(&exe)
            .arg("1000000000") // steps per thread: it runs on long after we detach
            .env("LD_PRELOAD", root().join("target/release/libheaplens.so"))
            .env("HEAPLENS_ATTACH", "1")
            .env("HEAPLENS_CENSUS_MS", "100")
            .env("XDG_RUNTIME_DIR", &dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let socket = dir.join(format!("heaplens/{}.sock", program.id()));
        let start = std::time::Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < DEADLINE,
                "no socket at {}",
                socket.display()
            );
            std::thread::yield_now();
        }
        let trace = dir.join(format!("busy-{round}.hltrace"));
        let a = attach(program.id(), &trace, &dir);
        // Recording for a while: long enough for censuses mid-run (every 100 ms).
        std::thread::sleep(Duration::from_millis(400));
        kill("INT", a.child.id());
        let said = a.finish();
        assert!(said.contains("detached from pid"), "{said}");
        assert_eq!(
            program.try_wait().unwrap(),
            None,
            "the program runs on untraced"
        );
        program.kill().unwrap();
        program.wait().unwrap();
        let s = stats(&trace);
        assert_exact(&s, &format!("round {round}"));
        assert!(
            s["censuses"].as_u64().unwrap() >= 3,
            "at attach, mid-run and at detach: {s}"
        );
        assert!(s["cross_thread_frees"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["detached"], true, "{s}");
    }
}

/// A program that forks without exec: the child listens on a socket of its own (its pid's) and
/// is attached to as any program is; what it inherited arrives through its census.
#[test]
fn a_forked_child_can_be_attached_to() {
    let dir = tempdir("attach-fork");
    let exe = build(&dir);
    let mut parent = Command::new(&exe)
        .arg("fork")
        .env("LD_PRELOAD", root().join("target/release/libheaplens.so"))
        .env("HEAPLENS_ATTACH", "1")
        .env("XDG_RUNTIME_DIR", &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = parent.stdin.take().unwrap();
    let stdout = lines(parent.stdout.take().unwrap());
    let ready = wait_line(&stdout, "ready child", "the program");
    let child: u32 = ready.rsplit(' ').next().unwrap().parse().unwrap();
    assert_ne!(child, parent.id());
    for pid in [parent.id(), child] {
        let socket = dir.join(format!("heaplens/{pid}.sock"));
        assert!(socket.exists(), "pid {pid} listens at {}", socket.display());
    }
    let trace = dir.join("child.hltrace");
    let a = attach(child, &trace, &dir);
    writeln!(stdin, "more").unwrap();
    stdin.flush().unwrap();
    assert_eq!(wait_line(&stdout, "more", "the child"), "more 50");
    kill("INT", a.child.id());
    let said = a.finish();
    assert!(
        said.contains(&format!("detached from pid {child}")),
        "{said}"
    );
    let s = stats(&trace);
    assert_exact(&s, "the forked child");
    assert_eq!(s["pid"], child, "{s}");
    assert_eq!(
        live_blocks(&s, EARLY),
        300,
        "inherited, through the census: {s}"
    );
    assert_eq!(live_blocks(&s, LATER), 50, "{s}");
    writeln!(stdin, "exit").unwrap();
    stdin.flush().unwrap();
    wait_line(&stdout, "bye", "the child");
    let status = wait_exit(parent, "the program");
    assert!(status.success(), "{status}");
    let child_socket = dir.join(format!("heaplens/{child}.sock"));
    assert!(
        !child_socket.exists(),
        "the child removes its socket at exit"
    );
}
