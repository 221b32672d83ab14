//! heaplens as the Rust global allocator: collections in heavy use, `alloc_zeroed` at every size,
//! `realloc` in place while the block fits, and over-aligned layouts up to 4 MiB.
#![allow(unsafe_code)] // tests call the raw allocator API

use std::alloc::{GlobalAlloc, Layout, alloc, alloc_zeroed, dealloc, realloc};
use std::collections::{BTreeMap, HashMap};
use std::thread;

#[global_allocator]
static A: heaplens_alloc::HeapLens = heaplens_alloc::HeapLens;

/// Sizes from one byte to huge blocks (> 2 MiB go to a segment of their own).
const SIZES: [usize; 14] = [
    1,
    16,
    100,
    1024,
    5000,
    16 * 1024,
    64 * 1024,
    200_000,
    1 << 20,
    (2 << 20) - 16,
    3 << 20,
    8 << 20,
    (16 << 20) + 5,
    40 << 20,
];

fn pattern(seed: usize, i: usize) -> u8 {
    (seed.wrapping_mul(131) ^ i.wrapping_mul(7) ^ (i >> 8)) as u8
}

/// Fills `len` bytes at `p` with the pattern of `seed`.
///
/// # Safety
/// `p` points to `len` writable bytes.
unsafe fn fill(p: *mut u8, len: usize, seed: usize) {
    // SAFETY: the caller guarantees `len` writable bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(p, len) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = pattern(seed, i);
    }
}

/// Panics unless the `len` bytes at `p` hold the pattern of `seed`.
///
/// # Safety
/// `p` points to `len` readable bytes.
unsafe fn check(p: *const u8, len: usize, seed: usize, what: &str) {
    // SAFETY: the caller guarantees `len` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(p, len) };
    if let Some(i) = bytes
        .iter()
        .enumerate()
        .position(|(i, &b)| b != pattern(seed, i))
    {
        panic!("{what}: byte {i} of {len} at {p:p} changed");
    }
}

fn collections_workload(seed: u64) -> u64 {
    // Vec growth by push (realloc doubling), then shrinking
    let mut v: Vec<u64> = Vec::new();
    for i in 0..2_000_000u64 {
        v.push(i ^ seed);
    }
    assert_eq!(
        v.iter().map(|x| x ^ seed).sum::<u64>(),
        2_000_000 * 1_999_999 / 2
    );
    v.truncate(1000);
    v.shrink_to_fit();
    assert_eq!(v[999], 999 ^ seed);

    // Strings: many small ones, built by appending
    let mut strings: Vec<String> = (0..50_000).map(|i| format!("key-{seed}-{i}")).collect();
    for (i, s) in strings.iter_mut().enumerate() {
        for _ in 0..i % 7 {
            s.push_str("-more");
        }
    }
    for (i, s) in strings.iter().enumerate() {
        assert!(
            s.starts_with(&format!("key-{seed}-{i}")),
            "string {i} changed: {s}"
        );
        assert_eq!(s.len(), format!("key-{seed}-{i}").len() + 5 * (i % 7));
    }

    // HashMap<String, Vec<u32>>: insert, look up, remove half, grow again
    let mut map: HashMap<String, Vec<u32>> = HashMap::new();
    for (i, s) in strings.iter().enumerate() {
        map.insert(s.clone(), (0..(i % 50) as u32).collect());
    }
    for (i, s) in strings.iter().enumerate() {
        let v = &map[s];
        assert_eq!(v.len(), i % 50);
        assert!(v.iter().copied().eq(0..(i % 50) as u32));
    }
    for s in strings.iter().step_by(2) {
        assert!(map.remove(s).is_some());
    }
    assert_eq!(map.len(), strings.len() / 2);
    for (i, s) in strings.iter().enumerate().skip(1).step_by(2) {
        map.get_mut(s).expect("present").extend(0..(i % 13) as u32);
    }

    // Boxes of assorted sizes, held in a BTreeMap
    let mut boxes: BTreeMap<usize, Box<[u8]>> = BTreeMap::new();
    for i in 0..20_000usize {
        let len = (i * 37) % 5000 + 1;
        boxes.insert(i, vec![(i % 251) as u8; len].into_boxed_slice());
        if i % 3 == 0 {
            boxes.remove(&(i / 2));
        }
    }
    let mut sum = 0u64;
    for (i, b) in &boxes {
        assert!(b.iter().all(|&x| x == (i % 251) as u8), "box {i} changed");
        sum += b.len() as u64;
    }
    sum + map.len() as u64
}

#[test]
fn collections_in_heavy_use() {
    let expected = collections_workload(0);
    // the same work on three threads at once gives the same results
    let handles: Vec<_> = (1..=3)
        .map(|t| thread::spawn(move || collections_workload(t)))
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("worker panicked"), expected);
    }
}

/// `alloc_zeroed` returns zeros at every size and alignment, also when it reuses memory that was
/// just filled with non-zero bytes and freed (the likely case for the second allocation).
#[test]
fn alloc_zeroed_gives_zeros() {
    for size in SIZES {
        for align in [8, 64, 4096] {
            let layout = Layout::from_size_align(size, align).expect("valid layout");
            for round in 0..3 {
                // SAFETY: non-zero sizes; each block is freed with its layout.
                unsafe {
                    let dirty = alloc(layout);
                    assert!(!dirty.is_null());
                    dirty.write_bytes(0xa5, size);
                    dealloc(dirty, layout);
                    let p = alloc_zeroed(layout);
                    assert!(!p.is_null(), "alloc_zeroed({size}, {align}) failed");
                    assert_eq!(p as usize % align, 0);
                    let bytes = std::slice::from_raw_parts(p, size);
                    if let Some(i) = bytes.iter().position(|&b| b != 0) {
                        panic!(
                            "alloc_zeroed({size}, align {align}), round {round}: byte {i} is {:#x}",
                            bytes[i]
                        );
                    }
                    dealloc(p, layout);
                }
            }
        }
        // vec![0; n] takes the alloc_zeroed path too
        let v = vec![0u8; size];
        assert!(v.iter().all(|&b| b == 0), "vec![0u8; {size}] is not zero");
        let w = vec![0u64; size / 8 + 1];
        assert!(
            w.iter().all(|&b| b == 0),
            "vec![0u64; ..] of {size} bytes is not zero"
        );
    }
}

/// `realloc` stays in place while the block fits: shrinking slightly (to 7/8 of the usable size)
/// and growing back up to `usable_size` keep the pointer; growing past it moves and keeps the
/// contents.
#[test]
fn realloc_in_place_while_the_block_fits() {
    for (seed, size) in SIZES.into_iter().enumerate() {
        let layout = Layout::from_size_align(size, 8).expect("valid layout");
        // SAFETY: every pointer is live with the layout it is passed with.
        unsafe {
            let p = alloc(layout);
            assert!(!p.is_null());
            fill(p, size, seed);
            let usable = heaplens_alloc::usable_size(p);
            assert!(usable >= size, "usable_size {usable} < {size}");

            let smaller = usable - usable / 8;
            let q = realloc(p, layout, smaller);
            assert_eq!(
                q, p,
                "shrinking a {size}-byte block (usable {usable}) to {smaller} moved it"
            );
            check(q, size.min(smaller), seed, "shrink in place");

            let q2 = realloc(
                q,
                Layout::from_size_align(smaller, 8).expect("valid"),
                usable,
            );
            assert_eq!(
                q2, p,
                "growing a {size}-byte block back to its usable size {usable} moved it"
            );
            check(q2, size.min(smaller), seed, "grow in place");
            fill(q2, usable, seed);

            let bigger = usable * 2 + 1;
            let r = realloc(
                q2,
                Layout::from_size_align(usable, 8).expect("valid"),
                bigger,
            );
            assert!(!r.is_null());
            assert!(heaplens_alloc::usable_size(r) >= bigger);
            check(r, usable, seed, "grow past usable_size");
            dealloc(r, Layout::from_size_align(bigger, 8).expect("valid"));
        }
    }
}

/// Over-aligned layouts (32 B .. 4 MiB) get aligned blocks of the right size that do not
/// overlap; realloc and alloc_zeroed keep the alignment.
#[test]
fn over_aligned_layouts_are_honoured() {
    let mut live: Vec<(usize, usize, Layout, usize)> = Vec::new(); // (ptr, usable, layout, seed)
    for shift in 5..=22 {
        let align = 1usize << shift;
        for size in [1, 8, 100, align / 2, align - 1, align, align + 1, 3 * align] {
            let layout = Layout::from_size_align(size, align).expect("valid layout");
            let seed = live.len();
            // SAFETY: non-zero size; the block is kept in `live` and freed below.
            let p = unsafe { alloc(layout) };
            assert!(!p.is_null(), "alloc({size}, align {align}) failed");
            assert_eq!(
                p as usize % align,
                0,
                "alloc({size}, align {align}) = {p:p}"
            );
            // SAFETY: `p` is live.
            let usable = unsafe { heaplens_alloc::usable_size(p) };
            assert!(
                usable >= size,
                "usable_size {usable} < {size} (align {align})"
            );
            // SAFETY: `p` has `usable` writable bytes.
            unsafe { fill(p, usable, seed) };
            live.push((p as usize, usable, layout, seed));
        }
    }
    // no two blocks overlap (each was filled in full, so an overlap also shows as a changed byte)
    let mut ranges: Vec<(usize, usize)> = live.iter().map(|&(p, u, _, _)| (p, p + u)).collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "blocks {:#x?} and {:#x?} overlap",
            w[0],
            w[1]
        );
    }
    for &(p, usable, _, seed) in &live {
        // SAFETY: the block is live with `usable` bytes.
        unsafe { check(p as *const u8, usable, seed, "over-aligned block") };
    }
    // realloc keeps alignment and contents; free everything
    for (p, usable, layout, seed) in live {
        let new_size = layout.size() * 2 + 3;
        // SAFETY: `p` is live with `layout`; the result is freed with the new size.
        unsafe {
            let q = realloc(p as *mut u8, layout, new_size);
            assert!(!q.is_null());
            assert_eq!(
                q as usize % layout.align(),
                0,
                "realloc lost alignment {}",
                layout.align()
            );
            check(q, usable.min(layout.size()), seed, "over-aligned realloc");
            dealloc(
                q,
                Layout::from_size_align(new_size, layout.align()).expect("valid"),
            );
        }
    }
    // zeroed and over-aligned
    for shift in [5, 12, 16, 20, 22] {
        for size in [24, 5000, 300_000, 5 << 20] {
            let layout = Layout::from_size_align(size, 1 << shift).expect("valid layout");
            // SAFETY: non-zero size; freed with its layout.
            unsafe {
                let dirty = alloc(layout);
                dirty.write_bytes(0xff, size);
                dealloc(dirty, layout);
                let p = A.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % layout.align(), 0);
                assert!(
                    std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0),
                    "{layout:?} not zeroed"
                );
                dealloc(p, layout);
            }
        }
    }
}
