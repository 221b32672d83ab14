//! Zeroing allocations (`calloc`) from segments the cache hands out again read as zero, wherever
//! the earlier blocks wrote: memory a segment's blocks wrote must be cleared, and only memory no
//! block can have written may be taken for zero.
//!
//! Its own test binary, one test running its steps in order: the segment cache is the process's,
//! and another test's thread could take the segment a step waits for.
#![allow(unsafe_code)] // tests call the raw allocator API

use heaplens_alloc::SEGMENT_SIZE;

/// The first byte of `len` bytes at `p` that is not zero: (offset, value).
///
/// # Safety
/// `p` has `len` readable bytes.
unsafe fn first_non_zero(p: *const u8, len: usize) -> Option<(usize, u8)> {
    // SAFETY: the caller's contract.
    let bytes = unsafe { std::slice::from_raw_parts(p, len) };
    bytes.iter().position(|&b| b != 0).map(|i| (i, bytes[i]))
}

/// `n` zeroed blocks of `size` bytes, each checked to read as zero.
fn zeroed(n: usize, size: usize) -> Vec<*mut u8> {
    (0..n)
        .map(|_| {
            // SAFETY: any size is a valid request.
            let z = unsafe { heaplens_alloc::zalloc(size) };
            assert!(!z.is_null(), "zalloc({size}) failed");
            // SAFETY: `z` has `size` bytes.
            if let Some((i, b)) = unsafe { first_non_zero(z, size) } {
                panic!(
                    "zalloc({size}) = {z:p} (offset {:#x} in its segment) is not zero: {b:#x} at \
                     offset {i}",
                    z as usize % SEGMENT_SIZE
                );
            }
            z
        })
        .collect()
}

fn free_all(blocks: Vec<*mut u8>) {
    for p in blocks {
        // SAFETY: every block is live, freed once.
        unsafe { heaplens_alloc::free(p) };
    }
}

/// Runs the slow path (sizes over 1 KiB) enough times for the heap's housekeeping to hand
/// retired pages back to their segments, and emptied segments to the cache.
fn housekeeping() {
    for _ in 0..128 {
        // SAFETY: a fresh block, freed once.
        unsafe { heaplens_alloc::free(heaplens_alloc::malloc(2048)) };
    }
}

/// Large blocks written whole, then zeroed large blocks of another size class from the same
/// segment, both inside the memory written before and past it. Returns whether the zeroed
/// blocks fell on both sides (else the segment went elsewhere, and the step tested nothing).
fn large_blocks_then_zeroed_large_blocks() -> bool {
    const OLD: usize = 300 << 10; // large: one page filling a segment
    const NEW: usize = 160 << 10; // another large size class
    // SAFETY: every pointer freed is live; every block is written within its usable size.
    unsafe {
        let old: Vec<*mut u8> = (0..3).map(|_| heaplens_alloc::malloc(OLD)).collect();
        let segment = old[0] as usize & !(SEGMENT_SIZE - 1);
        let mut written = 0;
        for &p in &old {
            assert!(!p.is_null());
            let usable = heaplens_alloc::usable_size(p);
            p.write_bytes(0xee, usable);
            written = written.max(p as usize + usable);
        }
        free_all(old);
        housekeeping();
        let new = zeroed(12, NEW);
        let inside = new
            .iter()
            .any(|&z| (segment..written).contains(&(z as usize)));
        let past = new
            .iter()
            .any(|&z| (written..segment + SEGMENT_SIZE).contains(&(z as usize)));
        free_all(new);
        inside && past
    }
}

/// A huge block written up to its usable size (its page's whole area, past the size asked for),
/// then zeroed medium blocks from its segment, past the size asked for. Returns whether they fell
/// there.
fn huge_block_then_zeroed_medium_blocks() -> bool {
    const HUGE: usize = 3 << 20; // a segment of 4 MiB of its own
    const MEDIUM: usize = 60_000; // 8 blocks per 512 KiB page
    // SAFETY: every pointer freed is live; every block is written within its usable size.
    unsafe {
        let huge = heaplens_alloc::malloc(HUGE);
        assert!(!huge.is_null());
        let usable = heaplens_alloc::usable_size(huge);
        huge.write_bytes(0xee, usable);
        let (asked_end, usable_end) = (huge as usize + HUGE, huge as usize + usable);
        free_all(vec![huge]); // a huge page goes back at once, its segment to the cache
        let blocks = zeroed(64, MEDIUM);
        let past_asked = blocks
            .iter()
            .any(|&z| (asked_end..usable_end).contains(&(z as usize)));
        free_all(blocks);
        past_asked
    }
}

#[test]
fn zeroed_blocks_from_reused_segments_read_as_zero() {
    std::thread::spawn(|| {
        // Each step again until its blocks fell where it means them to (the harness's own
        // threads allocate elsewhere, but a fresh segment may still come first).
        for (name, step) in [
            (
                "large blocks, then zeroed large blocks",
                large_blocks_then_zeroed_large_blocks as fn() -> bool,
            ),
            (
                "a huge block, then zeroed medium blocks",
                huge_block_then_zeroed_medium_blocks,
            ),
        ] {
            assert!(
                (0..5).any(|_| step()),
                "{name}: the zeroed blocks never came from the reused segment: the step tested nothing"
            );
        }
    })
    .join()
    .expect("zeroed reuse");
}
