//! Waiting for every process of a command (`--follow-fork`): heaplens becomes a *subreaper*
//! (`PR_SET_CHILD_SUBREAPER`), so a process of the command whose parent exits first (a job left
//! in the background, a daemon's double fork) is handed to heaplens rather than to init, and
//! heaplens knows the command is over when it has no child left.

use std::io;

/// Makes this process the subreaper of everything it starts from now on.
#[allow(unsafe_code)] // one system call without pointers; the workspace denies unsafe elsewhere
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain integer argument.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cannot follow the command's processes (PR_SET_CHILD_SUBREAPER): {}",
            io::Error::last_os_error()
        )))
    }
}

/// Waits for every child this process still has (the orphaned processes of the command, handed
/// to it as their subreaper) until none is left. Call it once the launched program has been
/// waited for, from the one thread that waits for children.
#[allow(unsafe_code)] // as above; `status` is a valid out-parameter
pub fn reap_descendants() {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-parameter; -1 waits for any child.
        let pid = unsafe { libc::waitpid(-1, &raw mut status, 0) };
        if pid < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return; // ECHILD: no child left
        }
    }
}
