//! A fast hasher for the model's address- and id-keyed maps.
//!
//! The std `HashMap` defaults to SipHash, which costs more than the rest of applying an event.
//! Keys here are addresses and heap ids from our own trace, not chosen by an attacker to collide,
//! so a multiply-fold is enough: it spreads both the high bits (SwissTable's control bytes) and
//! the low bits (the bucket index) of 16-byte-aligned addresses.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-fold hasher for integer keys.
#[derive(Clone, Copy, Default, Debug)]
pub struct FoldHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl FoldHasher {
    #[inline(always)]
    fn mix(&mut self, x: u64) {
        let m = u128::from((self.0 ^ x).rotate_left(23)) * u128::from(K);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for FoldHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(b));
        }
    }
    #[inline(always)]
    fn write_u64(&mut self, x: u64) {
        self.mix(x);
    }
    #[inline(always)]
    fn write_u32(&mut self, x: u32) {
        self.mix(u64::from(x));
    }
    #[inline(always)]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FoldHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FoldHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};

    #[test]
    fn aligned_addresses_spread_over_low_and_high_bits() {
        let b = BuildHasherDefault::<FoldHasher>::default();
        let mut low = std::collections::HashSet::new();
        let mut high = std::collections::HashSet::new();
        for i in 0..4096u64 {
            let h = b.hash_one(0x7f00_0000_0000 + i * 16);
            low.insert(h & 0xfff);
            high.insert(h >> 57);
        }
        assert!(low.len() > 2000, "low bits: {}", low.len());
        assert_eq!(high.len(), 128);
    }
}
