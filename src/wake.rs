//! Waiting for a connection on a listener, or for a wake-up from another thread.
//!
//! The acceptor of a launch took connections by polling: a non-blocking `accept`, then 2 ms of
//! sleep. Told to stop once the command's processes had exited, it noticed only when the
//! sleep ended, and every `heaplens record` waited for it at its end (about 2 ms of the 3 ms
//! between a trivial program's exit and the command's). [`Wake::wait`] sleeps in `poll` on the
//! listener and on one end of a socket pair, and [`Wake::wake`] writes a byte to the other.

#![allow(unsafe_code)] // one `poll` system call, on descriptors this module holds or borrows

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

/// A wake-up another thread can send to a waiter.
pub struct Wake {
    tx: UnixStream,
    rx: UnixStream,
}

impl Wake {
    /// A wake-up, not sent yet.
    pub fn new() -> io::Result<Self> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Self { tx, rx })
    }

    /// Wakes the waiter (now, or at its next wait if it is not waiting).
    pub fn wake(&self) {
        // A full socket buffer means a wake-up is pending already.
        let _ = (&self.tx).write(&[1]);
    }

    /// Waits until `listener` has a connection waiting, [`Wake::wake`] was called (since the
    /// last wait), or `timeout` has passed, whichever comes first; a signal ends it early too.
    /// The caller then looks at what it waits for, as after any wake-up.
    pub fn wait(&self, listener: &UnixListener, timeout: Duration) {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is an array of two initialised pollfd entries, both descriptors open
        // (held by `listener` and `self`) for the call's duration; poll writes only `revents`.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        // Take the wake-ups sent, so the next wait sleeps again.
        let mut buf = [0u8; 64];
        while matches!((&self.rx).read(&mut buf), Ok(n) if n > 0) {}
    }
}

#[cfg(test)]
mod tests {
    // Paths in full, no `use`: the live_frames benchmark compiles this module without its
    // tests.
    #[test]
    fn a_wait_ends_at_a_wake_up_a_connection_or_the_timeout() {
        let dir = std::env::temp_dir().join(format!("heaplens-wake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let wake = std::sync::Arc::new(super::Wake::new().unwrap());
        // How long one wait with `timeout` lasted.
        let wait = |timeout| {
            let t = std::time::Instant::now();
            wake.wait(&listener, timeout);
            t.elapsed()
        };
        let short = std::time::Duration::from_millis(50);
        // A wait that must end early is given a minute; it must end within half of it (the
        // rest is the machine's delay, however loaded).
        let long = std::time::Duration::from_secs(60);
        let early = std::time::Duration::from_secs(30);

        // Nothing happens: the timeout ends it.
        let d = wait(short);
        assert!(d >= std::time::Duration::from_millis(40), "{d:?}");

        // A wake-up from another thread ends it long before its timeout.
        let w = std::sync::Arc::clone(&wake);
        let waker = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            w.wake();
        });
        let d = wait(long);
        assert!(d < early, "{d:?}");
        waker.join().unwrap();

        // A wake-up sent before the wait ends it too, and is taken: the wait after sleeps.
        wake.wake();
        let d = wait(long);
        assert!(d < early, "{d:?}");
        let d = wait(short);
        assert!(d >= std::time::Duration::from_millis(40), "{d:?}");

        // A connection waiting.
        let _peer = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let d = wait(long);
        assert!(d < early, "{d:?}");
        assert!(listener.accept().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
