//! What the kernel holds for each page of a range of ours: a page in memory, a page swapped
//! out, or nothing at all (never touched since the mapping or the last purge). Read from
//! `/proc/self/pagemap` through one descriptor the process keeps open.
//!
//! `calloc` of a big block asks this ([`crate::os::zero`]). A page in memory is written with
//! zeros; an empty page reads as zero already and is left alone; a swapped-out page holds old
//! data and is given back. `mincore` alone cannot tell an empty page from a swapped-out one, so
//! every page it calls not resident had to be given back with `madvise`. On a process whose
//! threads `madvise` at once, each such call ends in a TLB flush on every CPU the process runs
//! on, even for a range that held no page (the suite's `stress`: 15 k of its 19 k `madvise`
//! calls were these).
//!
//! An empty entry is final for memory nobody touches: a page appears only when the memory is
//! read or written, and the block being zeroed is the caller's alone. A page in memory or in
//! swap can change state at any time (reclaim, swap-in), which is why such a page is written or
//! given back, never assumed.
//!
//! An empty page reads as zero unless the memory is registered with `userfaultfd` in missing
//! mode: then its first touch gets whatever the registering monitor supplies. A program does
//! not do that to its `malloc` heap, but a lazy restore does to all of a process's memory
//! (CRIU's lazy-pages supplies each page's content from the dump as it is touched). A restored
//! process's descriptor is not the file it was opened as (procfs makes its inodes anew; not
//! tried with CRIU, which this machine lacks), and that turns the pagemap off (below): the
//! first big `calloc` after a restore checks it.
//!
//! The descriptor:
//! - is opened on first use with `O_CLOEXEC`, and moved to a number at or above [`FD_FLOOR`],
//!   away from the low numbers programs expect `open` to return;
//! - is checked with `fstat` against the device and inode it was opened as once for each big
//!   block zeroed ([`Pagemap::get`]), before that block's reads.
//!   If it is not that file any more (a program closed descriptors it did not open and got the
//!   number back as another file, or the process was restored from a checkpoint), the pagemap
//!   is not used again in this process: `calloc` gives back every page not resident, as before.
//!   The old number is left alone (it is not ours now). A replacement between the check and
//!   the reads is not caught: that takes one thread closing a descriptor it does not own while
//!   another is in a big `calloc`;
//! - is closed in a fork's child ([`after_fork_child`]): it reads the parent's pages there;
//! - if it cannot be opened (no `/proc`, no permission, no descriptor left), [`Pagemap::get`] says
//!   so and callers fall back to `mincore`, for good: a process is not worth an `open` per `calloc`;
//! - is handled with raw system calls, not libc's `open`, `pread` or `close`: those are symbols
//!   another preloaded library may wrap, and a wrapper that allocates would come back into
//!   `calloc` here, holding [`OPENING`].
//!
//! A child made by a raw `clone` without `CLONE_VM` (no fork handlers run) would read its
//! parent's pages through the copy it inherits; `fork`, `vfork` and `posix_spawn` are safe.

use core::sync::atomic::{
    AtomicI32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

use crate::sync::SpinLock;

/// An entry's bit: the page is in memory.
const PRESENT: u64 = 1 << 63;
/// An entry's bit: the page is in swap, or the entry is another non-present kind (a migration
/// entry, a marker); either way it may hold data.
const SWAPPED: u64 = 1 << 62;

/// The descriptor number the pagemap is moved to (or above).
const FD_FLOOR: libc::c_int = 128;

/// Not opened yet (or closed in a fork's child).
const NOT_OPEN: i32 = -1;
/// Cannot be opened, or was replaced behind our back: callers fall back to `mincore`.
const UNAVAILABLE: i32 = -2;

static FD: AtomicI32 = AtomicI32::new(NOT_OPEN);
/// `st_dev` and `st_ino` of the file [`FD`] was opened as; written before `FD` is published.
static DEV: AtomicU64 = AtomicU64::new(0);
static INO: AtomicU64 = AtomicU64::new(0);
/// Serialises opening, so two threads do not both open one.
static OPENING: SpinLock<()> = SpinLock::new(());

/// What a page holds, as far as zeroing it is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PageState {
    /// In memory: may hold data.
    Present,
    /// No page at all: reads as zero, and stays so until someone touches the memory.
    Empty,
    /// Not in memory, but may hold data (swapped out), or not known to be empty (what
    /// `mincore` says of every page not resident).
    Unknown,
}

impl PageState {
    /// The state a pagemap entry gives.
    pub(crate) fn of_entry(entry: u64) -> Self {
        if entry & PRESENT != 0 {
            Self::Present
        } else if entry & SWAPPED != 0 {
            Self::Unknown
        } else {
            Self::Empty
        }
    }
}

/// The process's pagemap, checked to be ours ([`Pagemap::get`]): for the reads of one zeroing.
#[derive(Clone, Copy)]
pub(crate) struct Pagemap(libc::c_int);

impl Pagemap {
    /// The pagemap, opened if it was not yet and checked to be the file it was opened as; None
    /// if it cannot be read (see the module's notes).
    pub(crate) fn get() -> Option<Self> {
        descriptor().map(Self)
    }

    /// Reads the entries of `entries.len()` pages from page-aligned address `addr` into
    /// `entries`. False if the read failed; `entries` is then meaningless.
    pub(crate) fn read(self, addr: usize, entries: &mut [u64]) -> bool {
        let ps = crate::os::page_size();
        let len = core::mem::size_of_val(entries);
        let offset = (addr / ps * 8) as libc::off_t;
        // SAFETY: `entries` is `len` writable bytes; `pread64` writes at most `len` of them.
        let n =
            unsafe { libc::syscall(libc::SYS_pread64, self.0, entries.as_mut_ptr(), len, offset) };
        n == len as libc::c_long
    }
}

/// The open pagemap's descriptor, opened if it was not yet; None if it cannot be, or if it is
/// not the file it was opened as any more (see the module's notes).
fn descriptor() -> Option<libc::c_int> {
    let fd = FD.load(Acquire);
    if fd >= 0 {
        if is_ours(fd) {
            return Some(fd);
        }
        FD.store(UNAVAILABLE, Release);
        return None;
    }
    if fd == UNAVAILABLE {
        return None;
    }
    let _opening = OPENING.lock();
    let now = FD.load(Acquire);
    if now != NOT_OPEN {
        return (now >= 0).then_some(now); // another thread settled it meanwhile
    }
    let opened = open();
    FD.store(opened.unwrap_or(UNAVAILABLE), Release);
    opened
}

/// Whether descriptor `fd` is still the file [`FD`] was opened as.
fn is_ours(fd: libc::c_int) -> bool {
    identity(fd) == Some((DEV.load(Relaxed), INO.load(Relaxed)))
}

/// The device and inode of the file descriptor `fd` is open on; None if it is not open.
fn identity(fd: libc::c_int) -> Option<(u64, u64)> {
    // SAFETY: `stat` is plain data; an all-zero value is valid, and `fstat` fills it or fails.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `st` is a valid out-parameter; a stale or closed `fd` only makes `fstat` fail.
    let ok = unsafe { libc::syscall(libc::SYS_fstat, fd, &raw mut st) } == 0;
    ok.then_some((st.st_dev, st.st_ino))
}

/// Opens `/proc/self/pagemap` at a number at or above [`FD_FLOOR`] (or where `open` put it if
/// it cannot be moved) and records its identity. Caller holds [`OPENING`].
fn open() -> Option<libc::c_int> {
    // SAFETY: a NUL-terminated path and flags.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/proc/self/pagemap".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    } as libc::c_int;
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is the descriptor just opened.
    let high = unsafe {
        libc::syscall(
            libc::SYS_fcntl,
            fd,
            libc::F_DUPFD_CLOEXEC,
            libc::c_long::from(FD_FLOOR),
        )
    } as libc::c_int;
    let fd = if high >= 0 {
        close(fd);
        high
    } else {
        fd
    };
    let Some((dev, ino)) = identity(fd) else {
        close(fd);
        return None;
    };
    DEV.store(dev, Relaxed);
    INO.store(ino, Relaxed);
    Some(fd)
}

/// Closes descriptor `fd`, one of ours that nothing uses any more.
fn close(fd: libc::c_int) {
    // SAFETY: the caller's descriptor; closing one only ends its use.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// In a fork's child: the descriptor reads the parent's pages; close it, to open anew on next
/// use. Runs while the child has one thread.
pub(crate) fn after_fork_child() {
    let fd = FD.load(Relaxed);
    if fd >= 0 {
        let ours = is_ours(fd);
        if ours {
            close(fd); // the child's copy of our descriptor
        }
        FD.store(if ours { NOT_OPEN } else { UNAVAILABLE }, Relaxed);
    }
    OPENING.force_unlock();
}

/// The descriptor in use, for tests that replace it behind the allocator's back.
#[doc(hidden)]
pub fn current_descriptor() -> Option<libc::c_int> {
    let fd = FD.load(Acquire);
    (fd >= 0).then_some(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_as_present_empty_or_unknown() {
        assert_eq!(PageState::of_entry(PRESENT | 0x1234), PageState::Present);
        assert_eq!(PageState::of_entry(PRESENT | SWAPPED), PageState::Present);
        assert_eq!(PageState::of_entry(SWAPPED | 0x55), PageState::Unknown);
        assert_eq!(PageState::of_entry(0), PageState::Empty);
        // The soft-dirty and exclusive bits alone say nothing of content.
        assert_eq!(PageState::of_entry(1 << 55 | 1 << 56), PageState::Empty);
    }

    /// A fresh mapping's pages are empty; written ones present; purged ones empty again.
    #[test]
    fn the_pagemap_tells_written_pages_from_untouched_and_purged_ones() {
        crate::os::init();
        let ps = crate::os::page_size();
        let pages = 8;
        let map = crate::os::map_internal(pages * ps);
        assert!(!map.is_null());
        for i in [1, 2, 5] {
            // SAFETY: page `i` of the mapping.
            unsafe { map.add(i * ps).write(7) };
        }
        let mut e = [0u64; 8];
        let pagemap = Pagemap::get().expect("the pagemap cannot be opened");
        assert!(
            pagemap.read(map as usize, &mut e),
            "the pagemap cannot be read"
        );
        let states: Vec<PageState> = e.iter().map(|&x| PageState::of_entry(x)).collect();
        use PageState::{Empty as E, Present as P};
        assert_eq!(states, [E, P, P, E, E, P, E, E]);
        // SAFETY: page 2 of our mapping, holding nothing needed.
        assert!(unsafe { crate::os::discard(map.add(2 * ps), ps) });
        assert!(pagemap.read(map as usize, &mut e));
        assert_eq!(PageState::of_entry(e[2]), E);
        // SAFETY: the whole mapping, used no more.
        unsafe { crate::os::unmap_internal(map, pages * ps) };
    }
}
