//! The command's edges kept quiet: messages to the user that never fail the command, a stdout
//! closed by its reader (`heaplens stats t.hltrace | head -1`) that ends the output without a
//! word, and the window libraries kept from printing what says nothing to the user.

use std::io::{self, Write};

/// Prints `heaplens: MESSAGE` on stderr. A closed or full stderr loses the message but never
/// stops the command (a recording goes on when its log's reader has gone).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::quiet::say_args(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// What [`say!`] does.
pub fn say_args(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "heaplens: {message}");
}

/// Whether `e` is a write to a pipe whose reader has gone: the reader had what it wanted, and
/// the command ends quietly with success.
pub fn is_closed_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Keeps Mesa's Vulkan device-selection layer (an implicit layer the Vulkan loader adds to every
/// instance) from probing for a Wayland compositor where there is none: libwayland-client then
/// prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." once per adapter
/// enumeration, under X11 and Xvfb alike. The layer only orders GPUs, and the viewer picks its
/// adapter itself, so it is switched off (`NODEVICE_SELECT=1`, the loader's documented switch)
/// unless a Wayland session is running or the user chose otherwise.
///
/// Call it first in `main`, before any thread starts.
#[allow(unsafe_code)] // the environment is written once, before any thread exists
pub fn quiet_window_libraries() {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("WAYLAND_DISPLAY") || std::env::var_os("NODEVICE_SELECT").is_some() {
        return;
    }
    // SAFETY: called as main's first statement: no other thread exists yet (the allocator's
    // collector starts only when the hook is switched on, later), so nothing reads the
    // environment while it changes.
    unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
}
