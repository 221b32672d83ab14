//! Freed memory goes back to the OS: a 512 MiB working set of small, medium, large and huge
//! blocks (every page touched) is freed, and after the purge delay and a little allocation
//! activity (the delayed purge runs on the allocator's slow paths) the process's resident memory
//! and heaplens's committed bytes are back near where they started.
//!
//! Its own test binary (so its own process): the resident-set numbers are the whole process's.
#![allow(unsafe_code)] // tests call the raw allocator API

use std::thread::sleep;
use std::time::Duration;

use heaplens_alloc::stats;

#[global_allocator]
static A: heaplens_alloc::HeapLens = heaplens_alloc::HeapLens;

const MIB: usize = 1 << 20;
const WORKING_SET: usize = 512 * MIB;

/// Resident memory of this process, from `/proc/self/statm` (second field, in pages).
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm resident field");
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page_size).expect("page size")
}

/// SplitMix64, for reproducible sizes.
struct Rng(u64);

impl Rng {
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        lo + (z as usize) % (hi - lo + 1)
    }
}

/// Allocates blocks of `lo..=hi` bytes until they add up to `total`, writing every byte.
fn allocate(blocks: &mut Vec<(usize, usize)>, rng: &mut Rng, lo: usize, hi: usize, total: usize) {
    let mut sum = 0;
    while sum < total {
        let size = rng.range(lo, hi);
        // SAFETY: any size is a valid request.
        let p = unsafe { heaplens_alloc::malloc(size) };
        assert!(!p.is_null(), "malloc({size}) failed");
        // SAFETY: `p` has `size` writable bytes.
        unsafe { p.write_bytes((size % 251) as u8 + 1, size) };
        blocks.push((p as usize, size));
        sum += size;
    }
}

/// A little allocation activity: a few blocks of sizes that take the allocator's generic path
/// (more than 1 KiB), which is where the delayed purge runs.
fn activity(rng: &mut Rng) {
    let blocks: Vec<usize> = (0..64)
        .map(|_| {
            let size = rng.range(2048, 64 * 1024);
            // SAFETY: any size is a valid request.
            let p = unsafe { heaplens_alloc::malloc(size) };
            assert!(!p.is_null());
            // SAFETY: `p` has `size` writable bytes.
            unsafe { p.write_bytes(1, size) };
            p as usize
        })
        .collect();
    for p in blocks {
        // SAFETY: each `p` is a live block allocated above.
        unsafe { heaplens_alloc::free(p as *mut u8) };
    }
}

#[test]
fn freed_memory_goes_back_to_the_os() {
    let mut rng = Rng(42);
    let base_rss = rss_bytes();
    let base = stats();

    let mut blocks: Vec<(usize, usize)> = Vec::with_capacity(700_000);
    allocate(&mut blocks, &mut rng, 16, 1024, WORKING_SET / 4); // small pages
    allocate(&mut blocks, &mut rng, 2048, 100 * 1024, WORKING_SET / 4); // small and medium pages
    allocate(&mut blocks, &mut rng, 200 * 1024, 2 * MIB, WORKING_SET / 4); // large pages
    allocate(&mut blocks, &mut rng, 3 * MIB, 12 * MIB, WORKING_SET / 4); // huge pages
    let peak_rss = rss_bytes();
    let peak = stats();
    let grown = peak_rss.saturating_sub(base_rss);
    assert!(
        grown >= WORKING_SET,
        "the working set is not resident: RSS grew by {} MiB",
        grown / MIB
    );
    assert!(peak.committed_bytes >= base.committed_bytes + WORKING_SET);

    for (i, &(p, size)) in blocks.iter().enumerate() {
        // SAFETY: each block is live; it is checked (first and last byte) and freed once.
        unsafe {
            let p = p as *mut u8;
            let v = (size % 251) as u8 + 1;
            assert!(
                p.read() == v && p.add(size - 1).read() == v,
                "block {i} ({size} bytes) changed"
            );
            heaplens_alloc::free(p);
        }
    }
    drop(blocks);

    // The purge delay is 10 ms and cached empty segments are unmapped after 10 delays (100 ms);
    // sleeping 150 ms between rounds of activity lets both expire, and the activity runs the
    // slow path that purges.
    for _ in 0..3 {
        sleep(Duration::from_millis(150));
        activity(&mut rng);
    }
    let after_rss = rss_bytes();
    let after = stats();
    let kept = after_rss.saturating_sub(base_rss);
    let kept_committed = after.committed_bytes.saturating_sub(base.committed_bytes);
    eprintln!(
        "RSS: {} MiB at start, {} MiB at peak, {} MiB after free; committed: {} / {} / {} MiB",
        base_rss / MIB,
        peak_rss / MIB,
        after_rss / MIB,
        base.committed_bytes / MIB,
        peak.committed_bytes / MIB,
        after.committed_bytes / MIB
    );
    // Thresholds: at most 5% of the working set (26 MiB) may stay resident or committed.
    // Measured on the 2-core, 24 GiB dev machine: RSS 2 MiB at start, 540 MiB at peak, 6 MiB
    // after freeing (0.8% of what it grew by); committed 8 / 666 / 11 MiB (0.5%). What may
    // legitimately stay: segment headers and page metadata, pages of the activity's blocks, a
    // not-yet-expired segment cache. 5% leaves 6x margin over the measurement and still fails
    // if the segment cache (8 segments, 32 MiB) never expires or a whole class of pages (25% of
    // the working set each) is never purged.
    assert!(
        kept * 100 < grown * 5,
        "resident memory did not come down: grew by {} MiB, {} MiB still resident after freeing",
        grown / MIB,
        kept / MIB
    );
    assert!(
        kept_committed * 100 < (peak.committed_bytes - base.committed_bytes) * 5,
        "committed memory did not come down: {} MiB at peak, {} MiB after freeing (from {} MiB)",
        peak.committed_bytes / MIB,
        after.committed_bytes / MIB,
        base.committed_bytes / MIB
    );
}
