//! Helpers shared by the integration tests: a deterministic PRNG and blocks filled with a pattern
//! derived from a tag, checked in full before they are freed.
#![allow(dead_code)] // each test binary uses a different subset

/// SplitMix64: small, fast and reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// A request size: mostly small, some medium and large, rarely huge (> 2 MiB).
    pub fn mixed_size(&mut self) -> usize {
        match self.below(1000) {
            0..700 => self.range(1, 256),
            700..900 => self.range(257, 4096),
            900..990 => self.range(4097, 128 * 1024),
            990..998 => self.range(128 * 1024 + 1, 2 * 1024 * 1024),
            _ => self.range(2 * 1024 * 1024 + 1, 3 * 1024 * 1024),
        }
    }
}

/// A block from heaplens's raw API holding a pattern derived from `tag`: the tag in its first
/// 8 bytes (when it has them) and the tag's low byte everywhere else.
#[derive(Clone, Copy, Debug)]
pub struct Tagged {
    pub ptr: usize,
    pub size: usize,
    pub tag: u64,
}

impl Tagged {
    /// `malloc(size)`, filled with the pattern.
    pub fn new(size: usize, tag: u64) -> Tagged {
        // SAFETY: any size is a valid request.
        let p = unsafe { heaplens_alloc::malloc(size) };
        Tagged::fill(p, size, tag)
    }

    /// `malloc_aligned(size, align)`, filled with the pattern.
    pub fn new_aligned(size: usize, align: usize, tag: u64) -> Tagged {
        // SAFETY: any size is a valid request; callers pass powers of two.
        let p = unsafe { heaplens_alloc::malloc_aligned(size, align) };
        assert_eq!(
            p as usize % align,
            0,
            "malloc_aligned({size}, {align}) returned {p:p}"
        );
        Tagged::fill(p, size, tag)
    }

    fn fill(p: *mut u8, size: usize, tag: u64) -> Tagged {
        assert!(!p.is_null(), "allocation of {size} bytes failed");
        // SAFETY: `p` is a fresh block of at least `size` bytes.
        unsafe {
            p.write_bytes(tag as u8, size);
            if size >= 8 {
                p.cast::<u64>().write_unaligned(tag);
            }
        }
        Tagged {
            ptr: p as usize,
            size,
            tag,
        }
    }

    /// Panics unless the block still holds its pattern.
    pub fn check(&self) {
        // SAFETY: the block is live (callers only check blocks they own) and `size` bytes long.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.size) };
        let body = if self.size >= 8 {
            let head = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            assert_eq!(
                head, self.tag,
                "block {:#x} ({} bytes): head overwritten",
                self.ptr, self.size
            );
            &bytes[8..]
        } else {
            bytes
        };
        if let Some(off) = body.iter().position(|&b| b != self.tag as u8) {
            panic!(
                "block {:#x} ({} bytes, tag {:#x}) overwritten at offset {}: {:#x}",
                self.ptr,
                self.size,
                self.tag,
                off + self.size - body.len(),
                body[off]
            );
        }
    }

    /// Checks the pattern and frees the block (from whichever thread holds it).
    pub fn free(self) {
        self.check();
        // SAFETY: the block is live and owned by the caller, who gives it up.
        unsafe { heaplens_alloc::free(self.ptr as *mut u8) };
    }
}

/// Allocates and frees `n` blocks of 4 KiB, one at a time: each call takes the generic path
/// (blocks over 1 KiB always do), which is where deferred purging runs, and reuses one page.
/// For the tests that wait for a purge: the slow path of the thread that waits runs it.
pub fn generic_path_activity(n: usize) {
    for _ in 0..n {
        // SAFETY: any size is a valid request.
        let p = unsafe { heaplens_alloc::malloc(4096) };
        assert!(!p.is_null());
        // SAFETY: `p` has 4096 writable bytes; it is freed once.
        unsafe {
            p.write_bytes(7, 4096);
            heaplens_alloc::free(p);
        }
    }
}

/// Runs the slow path ([`generic_path_activity`]) until `done` holds or a deadline far past the
/// purge delay (30 s more); returns whether it held. For the tests that wait for a purge.
pub fn slow_path_until(mut done: impl FnMut() -> bool) -> bool {
    let delay = heaplens_alloc::options::purge_delay_ms();
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_millis(delay)
        + std::time::Duration::from_secs(30);
    while !done() && std::time::Instant::now() < deadline {
        generic_path_activity(1);
        std::thread::yield_now();
    }
    done()
}

/// OS pages of 4 KiB in `p..p + len` (whole pages of ours, mapped) that are resident.
pub fn resident_pages(p: usize, len: usize) -> usize {
    let mut vec = vec![0u8; len / 4096];
    // SAFETY: the caller's range is mapped memory of ours; `vec` has a byte per page.
    let rc = unsafe { libc::mincore(p as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore failed");
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

/// The addresses of the `Alloc` events a collector hands over, each with how many times it was
/// allocated, and the sink that counts them (for `collector::start` or `start_while_running`).
pub fn alloc_counter() -> (
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, u32>>>,
    heaplens_alloc::collector::Sink,
) {
    let counts = std::sync::Arc::<std::sync::Mutex<std::collections::HashMap<u64, u32>>>::default();
    let sink = counts.clone();
    let sink: heaplens_alloc::collector::Sink = Box::new(move |batch| {
        if let heaplens_alloc::collector::Handed::Batch(b) = batch {
            let mut seen = sink.lock().unwrap();
            let allocs = b
                .events
                .iter()
                .filter(|e| e.kind == heaplens_alloc::event::EventKind::Alloc as u8);
            for e in allocs {
                *seen.entry(e.addr).or_insert(0) += 1;
            }
        }
        true
    });
    (counts, sink)
}

/// A lossless recording without censuses mid-run, with `channel_buffers` full buffers queued.
pub fn lossless(channel_buffers: usize) -> heaplens_alloc::collector::Config {
    heaplens_alloc::collector::Config {
        lossless: true,
        census_every_ms: 0,
        channel_buffers,
    }
}
