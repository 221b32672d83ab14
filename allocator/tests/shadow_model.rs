//! Random sequences of `malloc` / `zalloc` / `calloc` / `free` / `realloc` / `malloc_aligned`
//! (and their aligned and zeroing variants) checked against a shadow model of the live blocks.
//!
//! After every operation: the new block does not overlap any live block (comparing the whole
//! `usable_size` range, which the test writes to), its alignment is honoured, `usable_size` is at
//! least the request, zeroing allocations read as zero, and realloc kept the old contents. Every
//! block is filled with a pattern derived from its id and checked in full before it is freed or
//! reallocated, so a block handed out twice, or written by the allocator's own metadata, shows up.
#![allow(unsafe_code)] // tests call the raw allocator API

use std::collections::BTreeMap;

use heaplens_alloc::{
    LARGE_OBJ_SIZE_MAX, MAX_ALLOC_SIZE, MEDIUM_OBJ_SIZE_MAX, SEGMENT_SIZE, SMALL_OBJ_SIZE_MAX,
};
use proptest::prelude::*;

/// Every allocation is aligned to at least this.
const MIN_ALIGN: usize = 16;

#[derive(Debug, Clone)]
enum Op {
    Malloc(usize),
    Zalloc(usize),
    Calloc(usize, usize),
    /// Size and log2 of the alignment.
    MallocAligned(usize, u32),
    ZallocAligned(usize, u32),
    /// Selects a live block (index modulo the number of live blocks).
    Free(usize),
    Realloc(usize, usize),
    /// Realloc keeping the alignment the block was allocated with.
    ReallocAligned(usize, usize),
}

/// Sizes near the class boundaries, where off-by-one errors live.
fn boundary_sizes() -> Vec<usize> {
    let mut v = vec![0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1023, 1024, 1025];
    for b in [SMALL_OBJ_SIZE_MAX, MEDIUM_OBJ_SIZE_MAX, LARGE_OBJ_SIZE_MAX] {
        v.extend([b - 1, b, b + 1]);
    }
    v.extend([SEGMENT_SIZE / 2 + 4096, 3 * 1024 * 1024]);
    v
}

/// 0..~3 MiB, weighted to small sizes.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => 0usize..=128,
        8 => 129usize..=1024,
        4 => 1025usize..=16 * 1024,
        2 => 16 * 1024 + 1usize..=512 * 1024,
        1 => 512 * 1024 + 1usize..=3 * 1024 * 1024,
        2 => proptest::sample::select(boundary_sizes()),
    ]
}

/// log2 of an alignment in 1..=1 MiB, weighted to the common ones.
fn align_log() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..=4, 3 => 5u32..=12, 1 => 13u32..=20]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => size().prop_map(Op::Malloc),
        2 => size().prop_map(Op::Zalloc),
        1 => (0usize..=64, 0usize..=4096).prop_map(|(n, s)| Op::Calloc(n, s)),
        2 => (size(), align_log()).prop_map(|(s, a)| Op::MallocAligned(s, a)),
        1 => (size(), align_log()).prop_map(|(s, a)| Op::ZallocAligned(s, a)),
        5 => any::<usize>().prop_map(Op::Free),
        3 => (any::<usize>(), size()).prop_map(|(i, s)| Op::Realloc(i, s)),
        1 => (any::<usize>(), size()).prop_map(|(i, s)| Op::ReallocAligned(i, s)),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Live {
    ptr: usize,
    /// Bytes asked for.
    req: usize,
    /// `usable_size` when it was made: the bytes the test owns (and fills).
    usable: usize,
    align: usize,
    id: u64,
}

/// The shadow model: the live blocks, and their address ranges for the overlap check.
#[derive(Default)]
struct Model {
    live: Vec<Live>,
    /// start -> (end, id) of every live block's usable range.
    ranges: BTreeMap<usize, (usize, u64)>,
    next_id: u64,
}

fn word(id: u64, index: usize) -> u64 {
    (id.wrapping_add(1)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (index as u64).wrapping_mul(0xff51_afd7_ed55_8ccd)
}

fn byte_at(id: u64, offset: usize) -> u8 {
    word(id, offset / 8).to_le_bytes()[offset % 8]
}

/// Writes the block's pattern over `len` bytes.
///
/// # Safety
/// `ptr` points to `len` writable bytes.
unsafe fn fill(ptr: usize, len: usize, id: u64) {
    // SAFETY: the caller guarantees `len` writable bytes at `ptr`.
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) };
    let mut chunks = bytes.chunks_exact_mut(8);
    for (i, c) in (&mut chunks).enumerate() {
        c.copy_from_slice(&word(id, i).to_le_bytes());
    }
    let start = len - chunks.into_remainder().len();
    for (off, b) in bytes.iter_mut().enumerate().skip(start) {
        *b = byte_at(id, off);
    }
}

/// Finds the first byte in `0..len` that differs from the block's pattern.
///
/// # Safety
/// `ptr` points to `len` readable bytes.
unsafe fn first_mismatch(ptr: usize, len: usize, id: u64) -> Option<usize> {
    // SAFETY: the caller guarantees `len` readable bytes at `ptr`.
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    let mut chunks = bytes.chunks_exact(8);
    for (i, c) in (&mut chunks).enumerate() {
        if c != word(id, i).to_le_bytes() {
            return (0..8)
                .map(|k| i * 8 + k)
                .find(|&off| bytes[off] != byte_at(id, off));
        }
    }
    let start = len - chunks.remainder().len();
    (start..len).find(|&off| bytes[off] != byte_at(id, off))
}

impl Model {
    /// Checks and records a block just returned by the allocator for a request of `req` bytes.
    fn add(
        &mut self,
        ptr: *mut u8,
        req: usize,
        align: usize,
        zeroed: bool,
        id: Option<u64>,
    ) -> Result<(), String> {
        if ptr.is_null() {
            return Err(format!(
                "allocation of {req} bytes (align {align}) returned null"
            ));
        }
        let p = ptr as usize;
        let want_align = align.max(MIN_ALIGN);
        if !p.is_multiple_of(want_align) {
            return Err(format!(
                "{p:#x} ({req} bytes) is not aligned to {want_align}"
            ));
        }
        // SAFETY: `ptr` is a live block from heaplens.
        let usable = unsafe { heaplens_alloc::usable_size(ptr) };
        if usable < req {
            return Err(format!("usable_size({p:#x}) = {usable} < requested {req}"));
        }
        let end = p + usable.max(1);
        if let Some((&start, &(other_end, other))) = self.ranges.range(..end).next_back()
            && other_end > p
        {
            return Err(format!(
                "block {p:#x}..{end:#x} ({req} bytes) overlaps live block #{other} at {start:#x}..{other_end:#x}"
            ));
        }
        if zeroed {
            // SAFETY: the block has `usable >= req` readable bytes.
            let bytes = unsafe { std::slice::from_raw_parts(ptr, req) };
            if let Some(off) = bytes.iter().position(|&b| b != 0) {
                return Err(format!(
                    "zeroed block {p:#x} ({req} bytes) has {:#x} at offset {off}",
                    bytes[off]
                ));
            }
        }
        let id = id.unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id
        });
        // SAFETY: the block has `usable` writable bytes; nothing else owns them (checked above).
        unsafe { fill(p, usable, id) };
        self.ranges.insert(p, (end, id));
        self.live.push(Live {
            ptr: p,
            req,
            usable,
            align,
            id,
        });
        Ok(())
    }

    /// Checks the pattern of the live block at `index` and forgets it.
    fn take(&mut self, index: usize) -> Result<Live, String> {
        let b = self.live.swap_remove(index);
        // SAFETY: the block is live and `b.usable` bytes long.
        if let Some(off) = unsafe { first_mismatch(b.ptr, b.usable, b.id) } {
            return Err(format!(
                "block #{} at {:#x} ({} bytes, usable {}) was overwritten at offset {off}",
                b.id, b.ptr, b.req, b.usable
            ));
        }
        self.ranges.remove(&b.ptr);
        Ok(b)
    }

    fn pick(&self, selector: usize) -> Option<usize> {
        (!self.live.is_empty()).then(|| selector % self.live.len())
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Malloc(size) => {
                // SAFETY: any size is a valid request.
                let p = unsafe { heaplens_alloc::malloc(size) };
                self.add(p, size, 1, false, None)
            }
            Op::Zalloc(size) => {
                // SAFETY: any size is a valid request.
                let p = unsafe { heaplens_alloc::zalloc(size) };
                self.add(p, size, 1, true, None)
            }
            Op::Calloc(n, size) => {
                // SAFETY: any count and size are a valid request.
                let p = unsafe { heaplens_alloc::calloc(n, size) };
                self.add(p, n * size, 1, true, None)
            }
            Op::MallocAligned(size, log) => {
                let align = 1 << log;
                // SAFETY: any size is a valid request; `align` is a power of two.
                let p = unsafe { heaplens_alloc::malloc_aligned(size, align) };
                self.add(p, size, align, false, None)
            }
            Op::ZallocAligned(size, log) => {
                let align = 1 << log;
                // SAFETY: any size is a valid request; `align` is a power of two.
                let p = unsafe { heaplens_alloc::zalloc_aligned(size, align) };
                self.add(p, size, align, true, None)
            }
            Op::Free(sel) => {
                let Some(i) = self.pick(sel) else {
                    return Ok(());
                };
                let b = self.take(i)?;
                // SAFETY: `b` was a live block; the model has forgotten it.
                unsafe { heaplens_alloc::free(b.ptr as *mut u8) };
                Ok(())
            }
            Op::Realloc(sel, size) | Op::ReallocAligned(sel, size) => {
                let Some(i) = self.pick(sel) else {
                    return Ok(());
                };
                let b = self.take(i)?;
                let keep_align = matches!(op, Op::ReallocAligned(..));
                let q = if keep_align {
                    // SAFETY: `b` is a live block allocated with alignment `b.align`; the model has
                    // forgotten it and takes the result instead.
                    unsafe { heaplens_alloc::realloc_aligned(b.ptr as *mut u8, size, b.align) }
                } else {
                    // SAFETY: `b` is a live block; the model has forgotten it and takes the result.
                    unsafe { heaplens_alloc::realloc(b.ptr as *mut u8, size) }
                };
                if q.is_null() {
                    return Err(format!(
                        "realloc of #{} ({} -> {size} bytes) returned null",
                        b.id, b.req
                    ));
                }
                let kept = b.req.min(size);
                // SAFETY: `q` is live with at least `size >= kept` bytes.
                if let Some(off) = unsafe { first_mismatch(q as usize, kept, b.id) } {
                    return Err(format!(
                        "realloc of #{} from {:#x} ({} bytes) to {q:p} ({size} bytes) lost byte {off}",
                        b.id, b.ptr, b.req
                    ));
                }
                self.add(
                    q,
                    size,
                    if keep_align { b.align } else { 1 },
                    false,
                    Some(b.id),
                )
            }
        }
    }

    /// Checks and frees every live block.
    fn clear(&mut self) -> Result<(), String> {
        while !self.live.is_empty() {
            let b = self.take(self.live.len() - 1)?;
            // SAFETY: `b` was live and is now forgotten by the model.
            unsafe { heaplens_alloc::free(b.ptr as *mut u8) };
        }
        Ok(())
    }
}

fn run(ops: &[Op]) -> Result<(), String> {
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        model
            .apply(op)
            .map_err(|e| format!("step {step} ({op:?}): {e}"))?;
    }
    model.clear()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn matches_shadow_model(ops in proptest::collection::vec(op(), 1..500)) {
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// A fixed sequence that runs every operation, so a regression shows up even without proptest's
/// randomness.
#[test]
fn fixed_sequence() {
    let mut ops = Vec::new();
    for (i, s) in boundary_sizes().into_iter().enumerate() {
        ops.push(Op::Malloc(s));
        ops.push(Op::ZallocAligned(s, (i % 21) as u32));
        ops.push(Op::Realloc(i, s / 2 + 3));
        ops.push(Op::ReallocAligned(i * 7, s + 100));
        ops.push(Op::Calloc(i, s % 4096));
        if i % 3 == 0 {
            ops.push(Op::Free(i * 5));
        }
    }
    run(&ops).unwrap();
}

#[test]
fn c_contract_edge_cases() {
    // SAFETY: every pointer passed to free/realloc/usable_size is live or null.
    unsafe {
        // malloc(0) gives unique non-null pointers
        let zeros: Vec<*mut u8> = (0..100).map(|_| heaplens_alloc::malloc(0)).collect();
        assert!(
            zeros.iter().all(|p| !p.is_null()),
            "malloc(0) returned null"
        );
        let mut sorted: Vec<usize> = zeros.iter().map(|&p| p as usize).collect();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            zeros.len(),
            "malloc(0) returned the same pointer twice"
        );
        for p in zeros {
            heaplens_alloc::free(p);
        }
        // null
        heaplens_alloc::free(std::ptr::null_mut());
        assert_eq!(heaplens_alloc::usable_size(std::ptr::null()), 0);
        let p = heaplens_alloc::realloc(std::ptr::null_mut(), 100);
        assert!(
            !p.is_null() && heaplens_alloc::usable_size(p) >= 100,
            "realloc(null, n) must allocate"
        );
        // impossible sizes
        assert!(
            heaplens_alloc::calloc(usize::MAX / 2, 3).is_null(),
            "calloc overflow must give null"
        );
        assert!(
            heaplens_alloc::calloc(1 << 40, 1 << 40).is_null(),
            "calloc overflow must give null"
        );
        assert!(heaplens_alloc::malloc(usize::MAX).is_null());
        assert!(heaplens_alloc::malloc(MAX_ALLOC_SIZE + 1).is_null());
        assert!(heaplens_alloc::zalloc(MAX_ALLOC_SIZE + 1).is_null());
        assert!(heaplens_alloc::malloc_aligned(MAX_ALLOC_SIZE + 1, 64).is_null());
        assert!(heaplens_alloc::malloc_aligned(usize::MAX - 10, 1 << 20).is_null());
        assert!(
            heaplens_alloc::malloc_aligned(64, 48).is_null(),
            "a non-power-of-two alignment must fail"
        );
        assert!(
            heaplens_alloc::malloc_aligned(64, 0).is_null(),
            "alignment 0 must fail"
        );
        // a failed realloc leaves the block intact
        fill(p as usize, 100, 7);
        assert!(heaplens_alloc::realloc(p, MAX_ALLOC_SIZE + 1).is_null());
        assert!(heaplens_alloc::realloc(p, usize::MAX).is_null());
        assert_eq!(
            first_mismatch(p as usize, 100, 7),
            None,
            "failed realloc changed the block"
        );
        heaplens_alloc::free(p);
        // calloc(0, n) and calloc(n, 0) give unique non-null pointers
        let a = heaplens_alloc::calloc(0, 8);
        let b = heaplens_alloc::calloc(8, 0);
        assert!(!a.is_null() && !b.is_null() && a != b);
        heaplens_alloc::free(a);
        heaplens_alloc::free(b);
    }
}

/// A zeroed allocation from a page that was emptied, purged (after the purge delay) and taken
/// again reads as zero, also in the head of a segment's first page. Found by
/// `matches_shadow_model`: `calloc(20, 3012)` returned a block with stale bytes from offset 8.
#[test]
fn zalloc_from_a_purged_page_is_zero() {
    std::thread::spawn(|| {
        const SIZE: usize = 60_000; // medium: 8 blocks per 512 KiB page
        const OTHER: usize = 100_000; // another medium size class
        // SAFETY: every pointer freed is live; every block is written within its usable size.
        unsafe {
            // fill the first medium page of the segment and spill into the second
            let mut blocks: Vec<*mut u8> = (0..9).map(|_| heaplens_alloc::malloc(SIZE)).collect();
            for &p in &blocks {
                assert!(!p.is_null());
                p.write_bytes(0xab, heaplens_alloc::usable_size(p));
            }
            let keep = blocks.pop().expect("nine blocks"); // keeps the segment in use
            for p in blocks {
                heaplens_alloc::free(p);
            }
            // wait out the purge delay and run slow paths (sizes > 1 KiB), where the purge runs
            for _ in 0..5 {
                std::thread::sleep(std::time::Duration::from_millis(30));
                for _ in 0..64 {
                    heaplens_alloc::free(heaplens_alloc::malloc(2048));
                }
            }
            for size in [OTHER, SIZE] {
                let z = heaplens_alloc::zalloc(size);
                assert!(!z.is_null());
                let bytes = std::slice::from_raw_parts(z, size);
                if let Some(i) = bytes.iter().position(|&b| b != 0) {
                    let last = bytes.iter().rposition(|&b| b != 0).unwrap_or(i);
                    panic!(
                        "zalloc({size}) = {z:p} (offset {:#x} in its segment) is not zero: {:#x} at \
                         offset {i}, last non-zero byte at offset {last}",
                        z as usize % heaplens_alloc::SEGMENT_SIZE,
                        bytes[i]
                    );
                }
                heaplens_alloc::free(z);
            }
            heaplens_alloc::free(keep);
        }
    })
    .join()
    .expect("zalloc from a purged page");
}

/// A zeroed allocation from a page that held blocks of another size, all written and freed (the
/// page emptied, went back to its segment and was taken again for the new size without a purge),
/// reads as zero: `calloc`'s memory must be cleared although the page is not fresh.
#[test]
fn zalloc_after_other_sizes_is_zero() {
    std::thread::spawn(|| {
        const OLD: usize = 48; // small: about 1360 blocks per 64 KiB page
        const NEW: [usize; 3] = [112, 16, 1000];
        const COUNT: usize = 8000; // about six pages of OLD blocks
        // SAFETY: every pointer freed is live; every block is written within its usable size.
        unsafe {
            // keeps the segment in use, so the emptied pages stay in it, unpurged
            let keep = heaplens_alloc::malloc(4000);
            let old: Vec<*mut u8> = (0..COUNT).map(|_| heaplens_alloc::malloc(OLD)).collect();
            for &p in &old {
                assert!(!p.is_null());
                p.write_bytes(0xcd, heaplens_alloc::usable_size(p));
            }
            let (lo, hi) = old.iter().fold((usize::MAX, 0), |(lo, hi), &p| {
                (lo.min(p as usize), hi.max(p as usize + OLD))
            });
            for &p in &old {
                heaplens_alloc::free(p);
            }
            let mut reused = 0usize;
            let mut new = Vec::new();
            for size in NEW {
                for _ in 0..COUNT * OLD / size {
                    let z = heaplens_alloc::zalloc(size);
                    assert!(!z.is_null());
                    let bytes = std::slice::from_raw_parts(z, size);
                    if let Some(i) = bytes.iter().position(|&b| b != 0) {
                        panic!("zalloc({size}) = {z:p} is not zero: {:#x} at offset {i}", bytes[i]);
                    }
                    if (lo..hi).contains(&(z as usize)) {
                        reused += 1;
                    }
                    new.push(z);
                }
            }
            assert!(
                reused > 0,
                "no zeroed block came from the pages of the {OLD}-byte blocks: the test tested nothing"
            );
            for z in new {
                heaplens_alloc::free(z);
            }
            heaplens_alloc::free(keep);
        }
    })
    .join()
    .expect("zalloc after other sizes");
}
