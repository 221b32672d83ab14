//! Which allocations get a stack: the stack mode, and sampling by bytes.
//!
//! Sampling works as in jemalloc, tcmalloc and Go: every allocated byte is a sample point with
//! probability 1/interval (a Poisson process on bytes), so an allocation of `s` bytes is sampled
//! with probability `1 - exp(-s / interval)`; a block of `interval` bytes or more is always
//! sampled. The distance to the next sample point is drawn from an exponential distribution with
//! the interval as mean. An unbiased estimate weighs a sampled allocation of `s` bytes by
//! `1 / (1 - exp(-s / interval))` allocations when `s < interval`, and by 1 otherwise.
//!
//! Each heap keeps a [`Sampler`]. The traced allocation path tests one thing, `size >=
//! countdown`, and otherwise takes `size` off the countdown; everything else happens out of line
//! in [`Sampler::on_slow`]. The countdown is capped at the interval (the rest of the distance to
//! the next sample point waits in `extra`), so that the one compare also catches every block of
//! the interval or more. Mode `all` keeps the countdown at 0 (every allocation is out of line),
//! mode `off` far away.

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::event::stack_mode;

/// How stacks are captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackMode {
    /// No stacks.
    Off,
    /// A stack for about one allocation per sampling interval of bytes.
    Sampled,
    /// A stack for every allocation.
    All,
}

impl StackMode {
    /// The `aux` of a `StackMode` event ([`stack_mode`]).
    pub const fn code(self) -> u16 {
        match self {
            Self::Off => stack_mode::OFF,
            Self::Sampled => stack_mode::SAMPLED,
            Self::All => stack_mode::ALL,
        }
    }

    /// The mode named `off`, `sampled` or `all`.
    pub fn parse(name: &[u8]) -> Option<Self> {
        match name {
            b"off" | b"0" | b"none" => Some(Self::Off),
            b"sampled" => Some(Self::Sampled),
            b"all" => Some(Self::All),
            _ => None,
        }
    }

    const fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Off,
            2 => Self::All,
            _ => Self::Sampled,
        }
    }
}

/// The default mean sampling interval: 512 KiB.
pub const DEFAULT_INTERVAL: usize = 512 << 10;

static MODE: AtomicU8 = AtomicU8::new(1);
static INTERVAL: AtomicUsize = AtomicUsize::new(DEFAULT_INTERVAL);
/// `HEAPLENS_SAMPLE_SEED` (0: seed each thread from its addresses and the clock).
static SEED: AtomicU64 = AtomicU64::new(0);
/// Moved on by every change of mode or interval: a heap that sees a new epoch starts afresh.
static EPOCH: AtomicU32 = AtomicU32::new(1);

/// Sets how stacks are captured, and the mean sampling interval in bytes for
/// [`StackMode::Sampled`] (0 keeps the current one). Threads follow at their next allocation. A
/// collector that runs already reported the mode it started with: set the mode before recording.
pub fn set_stack_mode(mode: StackMode, interval: usize) {
    MODE.store(mode as u8, Relaxed);
    if interval > 0 {
        INTERVAL.store(interval, Relaxed);
    }
    EPOCH.fetch_add(1, Relaxed);
    #[cfg(feature = "hook")]
    crate::init::for_each_heap(|h| h.stacks.sampler.countdown.store(0, Relaxed));
}

/// The stack mode.
pub fn stack_mode() -> StackMode {
    StackMode::from_u8(MODE.load(Relaxed))
}

/// The mean sampling interval in bytes.
pub fn sample_interval() -> usize {
    INTERVAL.load(Relaxed)
}

/// Fixes the sampling seed (tests: `HEAPLENS_SAMPLE_SEED`); 0 seeds from the clock.
pub fn set_sample_seed(seed: u64) {
    SEED.store(seed, Relaxed);
    EPOCH.fetch_add(1, Relaxed);
}

pub(crate) fn current_epoch() -> u32 {
    EPOCH.load(Relaxed)
}

/// A countdown that stays out of reach with stacks off (`size` is at most `MAX_ALLOC_SIZE`).
const OFF_COUNTDOWN: usize = usize::MAX / 2;

/// A heap's sampling state. `countdown` is atomic only so that [`set_stack_mode`] may reset it
/// from another thread; its owner reads and writes it with plain relaxed loads and stores.
#[repr(C)]
pub struct Sampler {
    /// Bytes the traced path may allocate before it must ask [`Sampler::on_slow`].
    pub(crate) countdown: AtomicUsize,
    /// The rest of the distance to the next sample point, beyond `countdown`.
    extra: usize,
    /// xorshift64* state (0: not seeded yet).
    rng: u64,
    epoch: u32,
}

impl Sampler {
    /// A sampler whose first allocation goes out of line (and seeds it).
    pub const fn new() -> Self {
        Self {
            countdown: AtomicUsize::new(0),
            extra: 0,
            rng: 0,
            epoch: 0,
        }
    }

    /// The traced path's test: whether an allocation of `size` bytes must go out of line; if
    /// not, it is taken off the countdown.
    #[inline(always)]
    pub fn take(&self, size: usize) -> bool {
        let c = self.countdown.load(Relaxed);
        if size >= c {
            return true;
        }
        self.countdown.store(c - size, Relaxed);
        false
    }

    /// Out of line: whether the allocation of `size` bytes gets a stack under the current mode;
    /// re-arms the countdown. `salt` tells the threads' seeds apart.
    pub fn on_slow(&mut self, size: usize, salt: u64) -> bool {
        let epoch = current_epoch();
        if epoch != self.epoch {
            self.epoch = epoch;
            self.rng = 0;
        }
        let mode = stack_mode();
        let interval = sample_interval();
        self.decide(size, mode, interval, salt)
    }

    /// [`Sampler::on_slow`] with the mode and interval given (tests).
    pub fn decide(&mut self, size: usize, mode: StackMode, interval: usize, salt: u64) -> bool {
        match mode {
            StackMode::Off => {
                self.countdown.store(OFF_COUNTDOWN, Relaxed);
                false
            }
            StackMode::Sampled if interval > 0 => {
                let mut residual = if self.rng == 0 {
                    self.rng = seed(salt);
                    self.draw(interval)
                } else {
                    self.countdown.load(Relaxed) + self.extra
                };
                let hit = if size >= interval {
                    true
                } else if size >= residual {
                    residual = self.draw(interval);
                    true
                } else {
                    residual -= size;
                    false
                };
                let c = residual.min(interval);
                self.countdown.store(c, Relaxed);
                self.extra = residual - c;
                hit
            }
            StackMode::Sampled | StackMode::All => {
                self.countdown.store(0, Relaxed);
                true
            }
        }
    }

    /// Bytes to the next sample point: exponential with mean `interval`.
    fn draw(&mut self, interval: usize) -> usize {
        // xorshift64*: the top 53 bits make a uniform number in (0, 1].
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let u = ((r >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let d = -ln(u) * interval as f64;
        if d >= OFF_COUNTDOWN as f64 {
            OFF_COUNTDOWN
        } else {
            d as usize
        }
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

/// A nonzero seed: the fixed seed mixed with `salt`, or the clock and `salt`.
fn seed(salt: u64) -> u64 {
    let fixed = SEED.load(Relaxed);
    let base = if fixed != 0 {
        fixed
    } else {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-parameter.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
        ts.tv_nsec.cast_unsigned() ^ (ts.tv_sec.cast_unsigned() << 32)
    };
    // splitmix64 of the two.
    let mut z = base ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    if z == 0 { 0x9e37_79b9_7f4a_7c15 } else { z }
}

/// Natural logarithm of `u` in (0, 1], without libm (no symbol lookups inside `malloc`): `u =
/// m * 2^e` with `m` in [1, 2), and `ln m` from the series of `atanh`.
fn ln(u: f64) -> f64 {
    let bits = u.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    let t = (m - 1.0) / (m + 1.0); // in [0, 1/3)
    let t2 = t * t;
    let mut term = t;
    let mut sum = 0.0;
    let mut k = 1.0;
    while k < 40.0 {
        sum += term / k;
        term *= t2;
        k += 2.0;
    }
    2.0 * sum + e as f64 * core::f64::consts::LN_2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_matches_the_library() {
        for u in [
            1.0,
            0.5,
            0.1,
            1e-6,
            0.999_999,
            0.75,
            1.0 / (1u64 << 53) as f64,
        ] {
            assert!((ln(u) - u.ln()).abs() < 1e-12, "ln({u})");
        }
    }

    /// Counts samples over a million allocations of known sizes with a fixed seed.
    fn run(sizes: &[usize], interval: usize) -> (u64, f64) {
        let mut s = Sampler::new();
        // Seeded here, not from the clock (`seed` mixes it in unless a seed is fixed): the
        // tolerances below are ~2.5 standard deviations, which a clock seed missed about one
        // run in a hundred.
        s.rng = 0x2545_f491_4f6c_dd1d;
        let first = s.draw(interval);
        s.countdown.store(first, Relaxed);
        let (mut samples, mut estimate) = (0u64, 0.0);
        for i in 0..1_000_000 {
            let size = sizes[i % sizes.len()];
            if s.take(size) {
                continue_slow(&mut s, size, interval, &mut samples, &mut estimate);
            }
        }
        (samples, estimate)
    }

    fn continue_slow(s: &mut Sampler, size: usize, iv: usize, n: &mut u64, est: &mut f64) {
        if s.decide(size, StackMode::Sampled, iv, 42) {
            *n += 1;
            *est += if size >= iv {
                size as f64
            } else {
                size as f64 / (1.0 - (-(size as f64) / iv as f64).exp())
            };
        }
    }

    #[test]
    fn sampling_by_bytes_meets_its_expectation() {
        // A million allocations of 64..1024 bytes, 544 MB in all: with a 64 KiB interval,
        // 1 - exp(-s/interval) of each size.
        let sizes: Vec<usize> = (1..=16).map(|i| i * 64).collect();
        let interval = 64 << 10;
        let (samples, estimate) = run(&sizes, interval);
        let total: usize = (0..1_000_000).map(|i| sizes[i % sizes.len()]).sum();
        let expected: f64 = (0..1_000_000)
            .map(|i| 1.0 - (-(sizes[i % sizes.len()] as f64) / interval as f64).exp())
            .sum();
        let dev = (samples as f64 - expected).abs() / expected;
        assert!(dev < 0.03, "{samples} samples, {expected:.0} expected");
        let err = (estimate - total as f64).abs() / total as f64;
        assert!(err < 0.03, "estimated {estimate:.0} bytes of {total}");
    }

    #[test]
    fn blocks_of_the_interval_or_more_are_always_sampled() {
        let interval = 4096;
        let (samples, estimate) = run(&[interval, 3 * interval], interval);
        assert_eq!(samples, 1_000_000);
        assert_eq!(estimate, 1_000_000.0 * 2.0 * interval as f64);
    }

    #[test]
    fn mixed_sizes_stay_unbiased() {
        // Small blocks interleaved with blocks above the interval: the large ones must not
        // disturb the small ones' sampling, nor be counted more than once.
        let interval = 16 << 10;
        let sizes = [32, 100, 20_000, 48, 700];
        let (_, estimate) = run(&sizes, interval);
        let total: usize = (0..1_000_000).map(|i| sizes[i % sizes.len()]).sum();
        let err = (estimate - total as f64).abs() / total as f64;
        assert!(err < 0.03, "estimated {estimate:.0} bytes of {total}");
    }

    #[test]
    fn modes_all_and_off() {
        let mut s = Sampler::new();
        assert!(s.decide(8, StackMode::All, 1 << 20, 1));
        assert!(s.take(0), "mode all sends every allocation out of line");
        assert!(!s.decide(8, StackMode::Off, 1 << 20, 1));
        assert!(!s.take(crate::MAX_ALLOC_SIZE));
    }

    #[test]
    fn modes_parse() {
        assert_eq!(StackMode::parse(b"all"), Some(StackMode::All));
        assert_eq!(StackMode::parse(b"sampled"), Some(StackMode::Sampled));
        assert_eq!(StackMode::parse(b"off"), Some(StackMode::Off));
        assert_eq!(StackMode::parse(b"some"), None);
    }
}
