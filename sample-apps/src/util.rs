//! What every scenario uses: a deterministic random generator, and blocks that are written when
//! allocated and checked before they are freed.

use std::hint::black_box;
use std::thread::{self, Scope, ScopedJoinHandle};

/// xorshift64*: deterministic, so every run of a scenario makes the same requests.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        // Mixed so that small neighbouring seeds give unrelated streams; never zero.
        Self((seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// A size in `lo..=hi` whose logarithm is uniform: as many blocks of 16-32 B as of 4-8 KiB,
    /// the shape of real programs' requests.
    pub(crate) fn log_size(&mut self, lo: usize, hi: usize) -> usize {
        let (lo_bits, hi_bits) = (lo.ilog2(), hi.ilog2());
        let bits = lo_bits + self.below((hi_bits - lo_bits + 1) as usize) as u32;
        let base = 1usize << bits;
        self.range(base, (2 * base - 1).min(hi)).max(lo)
    }

    /// Shuffles `v` (Fisher-Yates).
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Starts `f` on a thread called `name` in the scope `s`.
pub(crate) fn spawn<'scope, F>(
    s: &'scope Scope<'scope, '_>,
    name: String,
    f: F,
) -> ScopedJoinHandle<'scope, ()>
where
    F: FnOnce() + Send + 'scope,
{
    thread::Builder::new()
        .name(name)
        .spawn_scoped(s, move || {
            // Watched when heaplens is this process's allocator and only chosen threads are
            // traced (`heaplens demo`); nothing otherwise.
            heaplens_alloc::hook::set_thread_traced(true);
            f();
        })
        .expect("spawn a thread")
}

/// Joins every thread of `handles`, passing a panic on. Unlike the end of a scope, which returns
/// once the threads' closures are done, this waits until the threads are gone, their exit
/// cleanup included: the allocator has abandoned their heaps when it returns.
pub(crate) fn join_all(handles: Vec<ScopedJoinHandle<'_, ()>>) {
    for h in handles {
        if let Err(panic) = h.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// The byte a block with `tag` is filled with.
fn fill_byte(tag: u64) -> u8 {
    (tag ^ (tag >> 8) ^ (tag >> 16) ^ 0x5A) as u8
}

/// A block of exactly `size` bytes (one `malloc(size)`), written through: `tag` in its first
/// 8 bytes (as far as they go), a byte derived from `tag` in the rest.
pub(crate) fn make(size: usize, tag: u64) -> Box<[u8]> {
    let mut v = Vec::with_capacity(size);
    v.resize(size, fill_byte(tag));
    let head = size.min(8);
    v[..head].copy_from_slice(&tag.to_le_bytes()[..head]);
    // len == capacity: no reallocation.
    black_box(v.into_boxed_slice())
}

/// True when `b` still holds what [`make`] wrote with `tag` (checked at the head, the middle
/// and the end, so large blocks cost nothing to check).
pub(crate) fn intact(b: &[u8], tag: u64) -> bool {
    let b = black_box(b);
    let head = b.len().min(8);
    let fill = fill_byte(tag);
    b[..head] == tag.to_le_bytes()[..head]
        && b[head..].first().is_none_or(|&x| x == fill)
        && b[head..]
            .get(b.len().saturating_sub(head) / 2)
            .is_none_or(|&x| x == fill)
        && b[head..].last().is_none_or(|&x| x == fill)
}

/// Panics unless `b` is intact (a corrupted block means the allocator handed out memory twice).
pub(crate) fn check(b: &[u8], tag: u64) {
    assert!(
        intact(b, tag),
        "block of {} B with tag {tag:#x} was overwritten",
        b.len()
    );
}

/// A burst of allocations of several small sizes: takes the allocator through its generic path,
/// where it runs deferred work (collecting other threads' frees, purging expired pages).
pub(crate) fn nudge() {
    let mut v: Vec<Box<[u8]>> = Vec::with_capacity(3 * 512);
    for i in 0..512u64 {
        for size in [24, 136, 1500] {
            v.push(make(size, i));
        }
    }
    for (i, b) in v.iter().enumerate() {
        check(b, i as u64 / 3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let s = a.log_size(16, 8192);
            assert!((16..=8192).contains(&s), "{s}");
            assert_eq!(s, b.log_size(16, 8192));
            assert!(a.range(3, 5) >= 3 && b.range(3, 5) <= 5);
        }
    }

    #[test]
    fn blocks_check_their_contents() {
        for size in [0, 1, 7, 8, 9, 48, 4096] {
            let mut b = make(size, 0xABCD_EF01);
            assert_eq!(b.len(), size);
            assert!(intact(&b, 0xABCD_EF01));
            if size > 0 {
                assert!(size < 8 || !intact(&b, 0x1234));
                *b.last_mut().unwrap() ^= 1;
                assert!(!intact(&b, 0xABCD_EF01));
            }
        }
    }
}
