//! The OS layer: aligned reservations with `mmap`, release with `munmap`, purge with `madvise`,
//! and a monotonic clock. Nothing here allocates.
//!
//! On Linux anonymous memory is committed lazily (a page becomes resident when first touched), so
//! heaplens's "committed" counts memory that may be resident: mapped and not purged since.

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::pagemap::{PageState, Pagemap};

/// Bytes reserved from the OS (mapped).
pub(crate) static RESERVED: AtomicUsize = AtomicUsize::new(0);
/// Bytes mapped and not purged.
pub(crate) static COMMITTED: AtomicUsize = AtomicUsize::new(0);

/// The OS page size (4 KiB on the targets heaplens supports; read once at init).
pub static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

pub(crate) fn init() {
    // SAFETY: sysconf has no preconditions and does not allocate.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if ps > 0 {
        PAGE_SIZE.store(ps as usize, Relaxed);
    }
}

/// The OS page size.
#[inline]
pub fn page_size() -> usize {
    PAGE_SIZE.load(Relaxed)
}

/// Rounds `x` up to a multiple of `align` (a power of two); `None` on overflow.
#[inline]
pub const fn align_up(x: usize, align: usize) -> Option<usize> {
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Maps `size` bytes aligned to `align` (both multiples of the OS page size, `align` a power of
/// two). Returns null when the OS refuses.
pub(crate) fn alloc_aligned(size: usize, align: usize) -> *mut u8 {
    let Some(total) = size.checked_add(align) else {
        return ptr::null_mut();
    };
    let p = map(total);
    if p.is_null() {
        return p;
    }
    let start = p as usize;
    let aligned = (start + align - 1) & !(align - 1);
    let head = aligned - start;
    let tail = total - head - size;
    // SAFETY: both ranges lie inside the mapping made above and outside the part we keep.
    unsafe {
        if head > 0 {
            libc::munmap(p.cast(), head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
    }
    RESERVED.fetch_add(size, Relaxed);
    COMMITTED.fetch_add(size, Relaxed);
    aligned as *mut u8
}

fn map(size: usize) -> *mut u8 {
    map_with(size, 0)
}

fn map_with(size: usize, extra_flags: libc::c_int) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | extra_flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

/// Maps memory for the allocator's own use (heap structs, event buffers): not counted as heap
/// memory, so statistics and the model agree on what the program's heap holds.
pub(crate) fn map_internal(size: usize) -> *mut u8 {
    map(size)
}

/// Like [`map_internal`], with every page faulted in by the one `mmap` call: for memory that is
/// about to be written through at once (event buffers), where a fault per page costs more.
pub(crate) fn map_internal_populated(size: usize) -> *mut u8 {
    map_with(size, libc::MAP_POPULATE)
}

/// Unmaps memory from [`map_internal`].
///
/// # Safety
/// `p..p+size` is a whole mapping from [`map_internal`] that nothing uses any more.
pub(crate) unsafe fn unmap_internal(p: *mut u8, size: usize) {
    // SAFETY: the caller hands back a whole mapping of ours that is no longer used.
    unsafe { libc::munmap(p.cast(), size) };
}

/// Unmaps a region made by [`alloc_aligned`]; `purged` is how much of it was already purged.
///
/// # Safety
/// `p..p+size` must be a whole region from [`alloc_aligned`] that nothing uses any more.
pub(crate) unsafe fn free(p: *mut u8, size: usize, purged: usize) {
    // SAFETY: the caller hands back a whole mapping of ours that is no longer used.
    unsafe { libc::munmap(p.cast(), size) };
    RESERVED.fetch_sub(size, Relaxed);
    COMMITTED.fetch_sub(size - purged, Relaxed);
}

/// Gives the physical memory of `p..p+size` back to the OS; the range reads as zero afterwards.
///
/// # Safety
/// The range must be inside a mapping of ours and hold nothing anyone still needs.
pub(crate) unsafe fn purge(p: *mut u8, size: usize) {
    // SAFETY: the caller guarantees the range is ours and dead; MADV_DONTNEED on private
    // anonymous memory makes it read back as zeros.
    unsafe { libc::madvise(p.cast(), size, libc::MADV_DONTNEED) };
    COMMITTED.fetch_sub(size, Relaxed);
}

/// Gives the physical memory of `p..p+size` back to the OS like [`purge`], but keeps it counted as
/// committed: for memory about to be handed out again in a block that may touch it (the tail of
/// a reused segment beyond its new block), where counting it out and back in would only move the
/// figure for a moment. Committed stays an upper bound of what is resident.
///
/// Returns whether the OS took it (if not, the range keeps its contents).
///
/// # Safety
/// As [`purge`].
pub(crate) unsafe fn discard(p: *mut u8, size: usize) -> bool {
    // SAFETY: as in `purge`.
    unsafe { libc::madvise(p.cast(), size, libc::MADV_DONTNEED) == 0 }
}

/// Blocks at least this big are zeroed by [`zero`] page by page, as the kernel holds each page.
pub(crate) const ZERO_BY_RESIDENCY_MIN: usize = 64 << 10;

/// Zeroes `len` bytes at `p` (a block being handed out zeroed, `calloc`'s). A block of at least
/// [`ZERO_BY_RESIDENCY_MIN`] bytes is not written where its whole OS pages are not in memory:
/// an empty page (never touched since the mapping, or given back) reads as zero already and is
/// left alone, and a page that may be swapped out is dropped, to read as zero too. Writing them
/// would fault each one in only to clear it. A program that takes big zeroed blocks and writes
/// a few bytes of each (the suite's `stress`: a block freed and taken again keeps a page's free
/// list flagged not zero, though its memory was never touched) paid 190 k page faults for
/// memory it never used. The pagemap ([`pagemap`]) tells empty pages from swapped-out ones;
/// where it cannot be read, every page not resident is dropped.
///
/// Asking costs a system call, which a program whose zeroed blocks are all resident pays for
/// nothing (`calloc` of 64 KiB and a write of every byte, in a loop: 1.19x the time): after
/// each big block found wholly resident, the next ones are written without asking, twice as
/// many each time up to [`ZERO_SKIP_MAX`], until one is found not to be.
///
/// # Safety
/// `p..p + len` is writable memory of one block of ours that nothing else uses.
#[inline]
pub(crate) unsafe fn zero(p: *mut u8, len: usize) {
    if len < ZERO_BY_RESIDENCY_MIN {
        // SAFETY: the caller's contract.
        unsafe { ptr::write_bytes(p, 0, len) };
    } else {
        // SAFETY: forwarded.
        unsafe { zero_big(p, len) };
    }
}

/// Big zeroed blocks still to be written without asking which pages are resident.
static ZERO_SKIP: AtomicUsize = AtomicUsize::new(0);
/// How many are skipped after the next block found wholly resident (a power of two, 0 at first).
static ZERO_BACKOFF: AtomicUsize = AtomicUsize::new(0);
/// The most big zeroed blocks written in a row without asking.
const ZERO_SKIP_MAX: usize = 64;

/// [`zero`] of a big block. The two counters are shared by the threads and updated without
/// ordering: they only choose between two ways of zeroing, each correct.
///
/// # Safety
/// As [`zero`].
#[cold]
unsafe fn zero_big(p: *mut u8, len: usize) {
    let skip = ZERO_SKIP.load(Relaxed);
    if skip > 0 {
        ZERO_SKIP.store(skip - 1, Relaxed);
        // SAFETY: the caller's contract.
        unsafe { ptr::write_bytes(p, 0, len) };
        return;
    }
    // SAFETY: forwarded.
    if unsafe { zero_resident(p, len) } {
        let next = (ZERO_BACKOFF.load(Relaxed) * 2).clamp(1, ZERO_SKIP_MAX);
        ZERO_BACKOFF.store(next, Relaxed);
        ZERO_SKIP.store(next, Relaxed);
    } else {
        ZERO_BACKOFF.store(0, Relaxed);
    }
}

/// Zeroes a big block as [`zero`] says. For up to [`RESIDENCY_PAGES`] of its whole pages at a
/// time, the pagemap ([`pagemap`]) tells which are in memory, empty, or swapped out (or
/// `mincore` which are resident, where the pagemap cannot be read: every other page may then be
/// swapped out). Runs in memory are written, empty runs left alone, and the others given back
/// with one `madvise` a run. Returns whether every page was in memory.
///
/// # Safety
/// As [`zero`].
unsafe fn zero_resident(p: *mut u8, len: usize) -> bool {
    let ps = page_size();
    let (start, end) = (p as usize, p as usize + len);
    let (lo, hi) = (start.next_multiple_of(ps), end & !(ps - 1));
    let mut all_resident = true;
    // SAFETY: every range written or given back below lies in `p..p + len`, the caller's block;
    // the whole pages `lo..hi` hold none of any other block.
    unsafe {
        if lo >= hi {
            ptr::write_bytes(p, 0, len);
            return true;
        }
        ptr::write_bytes(p, 0, lo - start);
        ptr::write_bytes(hi as *mut u8, 0, end - hi);
        let mut states = [PageState::Unknown; RESIDENCY_PAGES];
        let pagemap = Pagemap::get();
        let mut at = lo;
        while at < hi {
            let pages = ((hi - at) / ps).min(RESIDENCY_PAGES);
            if !page_states(pagemap, at, &mut states[..pages]) {
                ptr::write_bytes(at as *mut u8, 0, pages * ps);
                at += pages * ps;
                continue;
            }
            let mut i = 0;
            while i < pages {
                let state = states[i];
                let run = states[i..pages]
                    .iter()
                    .position(|&s| s != state)
                    .unwrap_or(pages - i);
                let (q, n) = ((at + i * ps) as *mut u8, run * ps);
                match state {
                    PageState::Present => ptr::write_bytes(q, 0, n),
                    PageState::Empty => all_resident = false,
                    PageState::Unknown => {
                        all_resident = false;
                        if !discard(q, n) {
                            ptr::write_bytes(q, 0, n);
                        }
                    }
                }
                i += run;
            }
            at += pages * ps;
        }
    }
    all_resident
}

/// The states of `states.len()` pages from page-aligned `at`, from `pagemap` if there is one
/// and it can be read, else from `mincore`. False if neither could be read.
fn page_states(pagemap: Option<Pagemap>, at: usize, states: &mut [PageState]) -> bool {
    let mut entries = [0u64; RESIDENCY_PAGES];
    let entries = &mut entries[..states.len()];
    if pagemap.is_some_and(|m| m.read(at, entries)) {
        for (s, &e) in states.iter_mut().zip(entries.iter()) {
            *s = PageState::of_entry(e);
        }
        true
    } else {
        mincore_states(at, states)
    }
}

/// The states of `states.len()` pages from page-aligned `at` as `mincore` tells them: resident
/// pages are present, the others unknown (empty or swapped out). False if it failed.
fn mincore_states(at: usize, states: &mut [PageState]) -> bool {
    let mut resident = [0u8; RESIDENCY_PAGES];
    let resident = &mut resident[..states.len()];
    let len = states.len() * page_size();
    // SAFETY: `resident` has a byte for each page; `mincore` only reads the page tables, and
    // fails (ENOMEM) for a range not mapped.
    if unsafe { libc::mincore(at as *mut libc::c_void, len, resident.as_mut_ptr()) } != 0 {
        return false;
    }
    for (s, &r) in states.iter_mut().zip(resident.iter()) {
        *s = if r & 1 != 0 {
            PageState::Present
        } else {
            PageState::Unknown
        };
    }
    true
}

/// Pages whose states [`zero_resident`] asks for in one call (1 KiB of pagemap entries on the
/// stack).
const RESIDENCY_PAGES: usize = 128;

/// Counts memory that was purged as committed again (it is about to be touched).
pub(crate) fn recommit(size: usize) {
    COMMITTED.fetch_add(size, Relaxed);
}

/// Monotonic time in milliseconds (vDSO; no system call, no allocation).
pub fn clock_ms() -> u64 {
    clock_ns() / 1_000_000
}

/// `CLOCK_MONOTONIC` in nanoseconds (vDSO; no system call, no allocation): the clock a trace's
/// `ClockSync` event refers to.
pub fn clock_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}

/// What the kernel says of thread `tid` of this process that tells whether it ran: its state
/// letter and its voluntary and involuntary context switches (`/proc/self/task/TID/status`).
/// None if the thread is gone or the file cannot be read. Collector thread only (it
/// allocates).
pub(crate) fn thread_activity(tid: i32) -> Option<(u8, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let state = *field("State:")?.as_bytes().first()?;
    let voluntary = field("voluntary_ctxt_switches:")?.parse().ok()?;
    let involuntary = field("nonvoluntary_ctxt_switches:")?.parse().ok()?;
    Some((state, voluntary, involuntary))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which of the `n` pages at `p` are resident.
    fn resident(p: *mut u8, n: usize) -> Vec<bool> {
        let mut v = vec![0u8; n];
        // SAFETY: `p..p + n pages` is a mapping of the caller's.
        let r = unsafe { libc::mincore(p.cast(), n * page_size(), v.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        v.iter().map(|&b| b & 1 != 0).collect()
    }

    /// A big zeroed range reads as zero wherever it was written, its partial pages at either
    /// end included, and its pages that were not resident stay so; a range wholly resident is
    /// said to be.
    #[test]
    fn zeroing_a_big_range_clears_what_was_written_and_leaves_the_rest_untouched() {
        init();
        let ps = page_size();
        let pages = 2 * RESIDENCY_PAGES + 40; // more than one pagemap read
        let map = map_internal(pages * ps);
        assert!(!map.is_null());
        // Written: the first three pages, every fifth page, a run in the middle, the last two.
        let written =
            |i: usize| i < 3 || i.is_multiple_of(5) || (300..340).contains(&i) || i >= pages - 2;
        for i in (0..pages).filter(|&i| written(i)) {
            // SAFETY: page `i` lies in the mapping.
            unsafe { map.add(i * ps).write_bytes(0xa5, ps) };
        }
        // A block starting and ending inside a page, as blocks do.
        let (from, to) = (ps / 2 + 48, pages * ps - ps / 3);
        assert!(to - from >= ZERO_BY_RESIDENCY_MIN);
        // Through `zero_resident`: `zero` may write it whole after another test's blocks were
        // found resident (the counters are the process's).
        // SAFETY: `from..to` lies in the mapping, which nothing else uses.
        let all_resident = unsafe { zero_resident(map.add(from), to - from) };
        assert!(!all_resident, "most pages were never written");
        // Before any read below (reading a page maps the zero page, which counts as resident).
        let now = resident(map, pages);
        let faulted: Vec<usize> = (1..pages - 1).filter(|&i| !written(i) && now[i]).collect();
        assert!(
            faulted.is_empty(),
            "pages never written were faulted in: {faulted:?}"
        );
        // SAFETY: the mapping's bytes are readable.
        let bytes = unsafe { std::slice::from_raw_parts(map, pages * ps) };
        if let Some(i) = bytes[from..to].iter().position(|&b| b != 0) {
            panic!(
                "byte {} of the range (page {}) is {:#x}",
                i,
                (from + i) / ps,
                bytes[from + i]
            );
        }
        assert!(
            bytes[..from].iter().all(|&b| b == 0xa5),
            "bytes before the range changed"
        );
        assert!(
            bytes[to..].iter().all(|&b| b == 0xa5),
            "bytes after the range changed"
        );
        // Now every page is resident (read, or written): the next zeroing writes it all.
        // SAFETY: as above; `bytes` is not used after.
        assert!(unsafe { zero_resident(map.add(from), to - from) });
        // SAFETY: the mapping's bytes are readable.
        let again = unsafe { std::slice::from_raw_parts(map.add(from), to - from) };
        assert!(again.iter().all(|&b| b == 0));
        // SAFETY: the whole mapping from `map_internal`, used no more.
        unsafe { unmap_internal(map, pages * ps) };
    }

    /// Where the pagemap cannot be read, `mincore` tells resident pages from the others, which
    /// may be swapped out and are not taken for empty.
    #[test]
    fn without_the_pagemap_pages_not_resident_are_unknown_not_empty() {
        init();
        let ps = page_size();
        let map = map_internal(6 * ps);
        assert!(!map.is_null());
        // SAFETY: pages 1 and 4 of the mapping.
        unsafe {
            map.add(ps).write(1);
            map.add(4 * ps).write(1);
        }
        let mut states = [PageState::Empty; 6];
        assert!(mincore_states(map as usize, &mut states));
        use PageState::{Present as P, Unknown as U};
        assert_eq!(states, [U, P, U, U, P, U]);
        // SAFETY: the whole mapping, used no more.
        unsafe { unmap_internal(map, 6 * ps) };
    }

    /// A small range is written whole, and a big one elsewhere than in a mapping of ours (a
    /// vector's memory) is cleared all the same.
    #[test]
    fn zeroing_clears_small_ranges_and_big_ones_outside_our_mappings() {
        init();
        let mut small = [0xa5u8; 1000];
        // SAFETY: the array's bytes.
        unsafe { zero(small.as_mut_ptr().add(3), 990) };
        assert!(small[3..993].iter().all(|&b| b == 0) && small[..3] == [0xa5; 3]);
        let mut big = vec![0x5au8; ZERO_BY_RESIDENCY_MIN + 4096];
        // SAFETY: the vector's bytes.
        unsafe { zero(big.as_mut_ptr().add(1), ZERO_BY_RESIDENCY_MIN + 10) };
        assert!(big[1..ZERO_BY_RESIDENCY_MIN + 11].iter().all(|&b| b == 0));
        assert!(big[0] == 0x5a && big[ZERO_BY_RESIDENCY_MIN + 11] == 0x5a);
    }

    #[test]
    fn a_sleeping_thread_reads_as_sleeping_and_a_wakeup_shows() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            // SAFETY: no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            rx.recv().unwrap();
            rx.recv().unwrap();
        });
        let tid = tid_rx.recv().unwrap();
        let asleep = loop {
            let a = thread_activity(tid).expect("a live thread's status");
            if a.0 == b'S' {
                break a;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(thread_activity(tid), Some(asleep), "nothing woke it");
        tx.send(()).unwrap();
        // Woken, it runs once a core is free (the tests share two), then sleeps again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let after = loop {
            let a = thread_activity(tid).expect("still there");
            if a.1 > asleep.1 || std::time::Instant::now() > deadline {
                break a;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert!(
            after.1 > asleep.1,
            "woken and asleep again: {asleep:?} then {after:?}"
        );
        tx.send(()).unwrap();
        t.join().unwrap();
        // `join` returns once the kernel has cleared the thread's id, a little before it
        // releases the thread (and its `/proc` entry) on the way out.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while thread_activity(tid).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(thread_activity(tid), None, "gone");
    }

    #[test]
    fn aligned_mappings_are_aligned_writable_and_purge_to_zero() {
        for align in [4096, 1 << 16, crate::SEGMENT_SIZE, 4 * crate::SEGMENT_SIZE] {
            let size = 3 * 65536;
            let p = alloc_aligned(size, align);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "align {align}");
            // SAFETY: p..p+size is our fresh mapping.
            unsafe {
                p.write_bytes(0xAB, size);
                purge(p.add(65536), 65536);
                assert_eq!(*p, 0xAB);
                assert_eq!(*p.add(65536), 0, "purged memory reads as zero");
                assert_eq!(*p.add(2 * 65536), 0xAB);
                recommit(65536);
                free(p, size, 0);
            }
        }
    }

    #[test]
    fn align_up_rounds_and_reports_overflow() {
        assert_eq!(align_up(1, 16), Some(16));
        assert_eq!(align_up(32, 16), Some(32));
        assert_eq!(align_up(usize::MAX - 3, 16), None);
    }
}
