//! [`crate::pack`]'s packing with AVX-512, on the processors that have it (Ice Lake and later;
//! `pack` checks at run time and falls back to its loop). The same bytes either way: an event's
//! four words are one 256-bit vector, their differences and lengths are taken lane by lane, and
//! the bytes each value needs are gathered with one byte compress (`vpcompressb`) instead of a
//! length, a place and a store per value. With the control words first (`Form::ControlsFirst`,
//! the newest) two events' values lie next to each other, so events are packed two at a time
//! in one 512-bit vector: one compress, one store and one control-word store for the pair (a
//! hot batch of larson's events: 3.5-3.6 ns an event packed one at a time, 2.8-3.0 in pairs).
//! Unpacking in pairs was tried too and was slower (2.7 against 2.55 ns an event): there each
//! event waits for the running values the one before leaves, paired or not.
//!
//! Unpacking ([`unpack_to`]) expands each event's value bytes into its four words with one byte
//! expand (`vpexpandb`), reading only those bytes. An event's place is the previous one's plus
//! its length, summed from the control word's nibbles in scalar code. With the control words
//! first (`Form::ControlsFirst`) their loads wait for nothing, and that sum is the only work
//! one event waits for; interleaved, each control word's load waits for the previous sum too.

use core::arch::x86_64::{
    __m256i, __m512i, _MM_HINT_T0, _mm_cvtsi128_si32, _mm_cvtsi128_si64, _mm_prefetch,
    _mm_setr_epi8, _mm256_add_epi64, _mm256_and_si256, _mm256_cmplt_epu8_mask,
    _mm256_cvtepi64_epi8, _mm256_cvtsi256_si32, _mm256_loadu_si256, _mm256_lzcnt_epi64,
    _mm256_mask_blend_epi64, _mm256_maskz_compress_epi8, _mm256_maskz_expandloadu_epi8,
    _mm256_maskz_mov_epi64, _mm256_set1_epi64x, _mm256_setr_epi8, _mm256_setzero_si256,
    _mm256_shuffle_epi8, _mm256_slli_epi64, _mm256_srai_epi64, _mm256_srli_epi64,
    _mm256_storeu_si256, _mm256_sub_epi64, _mm256_xor_si256, _mm512_broadcast_i32x4,
    _mm512_castsi256_si512, _mm512_castsi512_si256, _mm512_cmplt_epu8_mask, _mm512_cvtepi64_epi8,
    _mm512_extracti64x4_epi64, _mm512_inserti64x4, _mm512_loadu_si512, _mm512_lzcnt_epi64,
    _mm512_mask_blend_epi64, _mm512_maskz_compress_epi8, _mm512_maskz_mov_epi64, _mm512_set1_epi64,
    _mm512_shuffle_epi8, _mm512_slli_epi64, _mm512_srai_epi64, _mm512_srli_epi64,
    _mm512_storeu_si512, _mm512_sub_epi64, _mm512_xor_si512, _pext_u32, _pext_u64,
};

use crate::event::Event;
use crate::pack::{SLACK, chained, control_at, layout, room_for};

/// Whether this processor runs [`pack_with`] (checked once by `std`, then a load).
#[inline]
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512cd")
        && std::arch::is_x86_feature_detected!("avx512vbmi2")
        && std::arch::is_x86_feature_detected!("bmi2")
        && std::arch::is_x86_feature_detected!("popcnt")
}

/// Events ahead of the one packed whose line is fetched (2 KiB): the collector packs a buffer
/// just filled on another core, whose lines the hardware prefetcher, stopping at each 4 KiB
/// page, fetches too late. 32 ahead took packing's share of `record ./larson 1`'s samples from
/// 9.6-14.0 % to 7.8-9.3 %, 64 ahead to 7.3-9.8 %, and 128 ahead gained nothing more
/// (allocator/BENCHMARKS.md).
const PREFETCH_AHEAD: usize = 64;

/// The lanes of an event of `kind` packed against the previous values (a mask of the four
/// words): addr and time, and arg unless `LAST_ALLOC` and `kind` is not `Alloc`'s.
#[inline(always)]
fn chained_lanes<const LAST_ALLOC: bool>(kind: u8) -> u8 {
    if chained::<LAST_ALLOC>(kind) {
        0b1110
    } else {
        0b1010
    }
}

/// Starts loading the event [`PREFETCH_AHEAD`] after number `i` of `events`, if there is one.
#[inline]
#[target_feature(enable = "sse")]
fn prefetch_ahead(events: &[Event], i: usize) {
    if let Some(ahead) = events.get(i + PREFETCH_AHEAD) {
        // Only a hint to the cache (safe to call in this function, which has SSE).
        _mm_prefetch::<_MM_HINT_T0>((&raw const *ahead).cast());
    }
}

/// `crate::pack`'s `pack_with`: the same bytes.
///
/// # Safety
/// The processor has the features [`available`] checks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd,avx512vbmi2,bmi2,popcnt")]
pub(crate) unsafe fn pack_with<const LAST_ALLOC: bool, const SPLIT: bool>(
    events: &[Event],
    dst: &mut [u8],
) -> Option<usize> {
    let dst = dst.get_mut(..room_for(events.len()))?;
    // Where the next event's bytes go (its values, after its control word unless `SPLIT`).
    let (mut at, lead) = layout::<SPLIT>(events.len());
    // The previous values: [-, addr, arg, time] (the head word is packed as it is; `arg` the
    // last `Alloc`'s if `LAST_ALLOC`).
    let mut prev = _mm256_setzero_si256();
    // Each byte's number in its word, and where each word's lowest byte is in its 128-bit half.
    let byte_in_word = _mm256_setr_epi8(
        0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5,
        6, 7,
    );
    let low_byte = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8,
        8, 8,
    );
    let seventy_one = _mm256_set1_epi64x(71);
    // With the control words first, two events' values are next to each other: they are
    // packed two at a time, in one 512-bit vector (see the module docs); an odd last one alone.
    let mut first = 0;
    if SPLIT {
        let byte_in_word = _mm512_set1_epi64(0x0706_0504_0302_0100);
        let low_byte = _mm512_broadcast_i32x4(_mm_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8,
        ));
        let seventy_one = _mm512_set1_epi64(71);
        while let Some([e0, e1]) = events.get(first..first + 2).map(|p| [&p[0], &p[1]]) {
            prefetch_ahead(events, first);
            // SAFETY: two `Event`s in a row are 64 bytes (`repr(C)`): each one's head word,
            // addr, arg and time.
            let v = unsafe { _mm512_loadu_si512((&raw const *e0).cast::<__m512i>()) };
            // The first event is packed against `prev`, the second against the values the
            // first leaves.
            let (c0, c1) = (
                chained_lanes::<LAST_ALLOC>(e0.kind),
                chained_lanes::<LAST_ALLOC>(e1.kind),
            );
            let after_first = _mm256_mask_blend_epi64(c0, prev, _mm512_castsi512_si256(v));
            let prevs = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(prev), after_first);
            let d = _mm512_sub_epi64(v, _mm512_maskz_mov_epi64(c0 | c1 << 4, prevs));
            let z = _mm512_xor_si512(_mm512_slli_epi64::<1>(d), _mm512_srai_epi64::<63>(d));
            let z = _mm512_mask_blend_epi64(0b0001_0001, z, v);
            let n = _mm512_srli_epi64::<3>(_mm512_sub_epi64(seventy_one, _mm512_lzcnt_epi64(z)));
            let keep = _mm512_cmplt_epu8_mask(byte_in_word, _mm512_shuffle_epi8(n, low_byte));
            let values = _mm512_maskz_compress_epi8(keep, z);
            // The eight lengths, a byte each, then a nibble each: the two control words.
            let lengths = _mm_cvtsi128_si64(_mm512_cvtepi64_epi8(n)) as u64;
            let controls = _pext_u64(lengths, 0x0f0f_0f0f_0f0f_0f0f) as u32;
            dst.get_mut(2 * first..2 * first + 4)?
                .copy_from_slice(&controls.to_le_bytes());
            // The room holds the two events' 64 value bytes at their worst (`room_for`).
            let slot = dst.get_mut(at..at + 64)?;
            // SAFETY: `slot` holds 64 bytes.
            unsafe { _mm512_storeu_si512(slot.as_mut_ptr().cast::<__m512i>(), values) };
            at += keep.count_ones() as usize;
            prev = _mm256_mask_blend_epi64(c1, after_first, _mm512_extracti64x4_epi64::<1>(v));
            first += 2;
        }
    }
    for (i, e) in events.iter().enumerate().skip(first) {
        prefetch_ahead(events, i);
        // SAFETY: an `Event` is 32 bytes (`repr(C)`): its head word, addr, arg and time.
        let v = unsafe { _mm256_loadu_si256((&raw const *e).cast::<__m256i>()) };
        // The lanes packed against the previous values: addr and time, and arg unless only an
        // `Alloc`'s is (the rest against 0).
        let chained = chained_lanes::<LAST_ALLOC>(e.kind);
        let d = _mm256_sub_epi64(v, _mm256_maskz_mov_epi64(chained, prev));
        let z = _mm256_xor_si256(_mm256_slli_epi64::<1>(d), _mm256_srai_epi64::<63>(d));
        // The head word as it is.
        let z = _mm256_mask_blend_epi64(0b0001, z, v);
        // Bytes each value needs: (71 - leading zeros) / 8, 0 for 0.
        let n = _mm256_srli_epi64::<3>(_mm256_sub_epi64(seventy_one, _mm256_lzcnt_epi64(z)));
        let keep = _mm256_cmplt_epu8_mask(byte_in_word, _mm256_shuffle_epi8(n, low_byte));
        let values = _mm256_maskz_compress_epi8(keep, z);
        // The four lengths, a byte each, then a nibble each.
        let lengths = _mm_cvtsi128_si32(_mm256_cvtepi64_epi8(n)) as u32;
        let control = _pext_u32(lengths, 0x0f0f_0f0f) as u16;
        let c = control_at::<SPLIT>(i, at);
        dst.get_mut(c..c + 2)?
            .copy_from_slice(&control.to_le_bytes());
        let slot = dst.get_mut(at + lead..at + lead + 32)?;
        // SAFETY: `slot` holds 32 bytes.
        unsafe { _mm256_storeu_si256(slot.as_mut_ptr().cast::<__m256i>(), values) };
        at += lead + keep.count_ones() as usize;
        prev = _mm256_mask_blend_epi64(chained, prev, v);
    }
    dst.get_mut(at..at + SLACK)?.fill(0);
    Some(at + SLACK)
}

/// The low `n` bits of a byte (all 8 from 8 on: a longer length is refused by its fault bit
/// before its mask is used).
const fn low_bits(n: usize) -> u16 {
    if n >= 8 { 0xff } else { (1 << n) - 1 }
}

/// What one byte of a control word says, for [`unpack_to`]: its two lengths (4 bits each, at
/// most 8) as the mask of the value bytes they keep in their two words (the low `n` bits of
/// each byte), shifted to the byte's place in the word's 32-bit mask (`HIGH`: the control's
/// high byte, the last two words); their sum in bits 32 to 39; and bit 62 if either length is
/// above 8. The two bytes' entries added are the whole control word's: the masks do not
/// overlap, the sums add, and two faults carry into bit 63. Two loads and an add, where
/// testing the nibbles and summing them took about 25 instructions an event.
const fn control_bytes<const HIGH: bool>() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut x = 0;
    while x < 256 {
        let (lo, hi) = (x & 0xf, x >> 4);
        let keep = (low_bits(lo) | low_bits(hi) << 8) as u64;
        let fault = if lo > 8 || hi > 8 { 1u64 << 62 } else { 0 };
        t[x] = (if HIGH { keep << 16 } else { keep }) | ((lo + hi) as u64) << 32 | fault;
        x += 1;
    }
    t
}

/// [`control_bytes`] of a control word's low byte (the first two words).
const CONTROL_LOW: [u64; 256] = control_bytes::<false>();
/// [`control_bytes`] of a control word's high byte (the last two words).
const CONTROL_HIGH: [u64; 256] = control_bytes::<true>();

/// `crate::pack`'s `unpack_into`, storing the events at `out`: how many were stored, and
/// whether all `len` were and end exactly at the slack (as `unpack_into`'s verdict). The same
/// events and verdicts as the loop, on any bytes.
///
/// # Safety
/// The processor has the features [`available`] checks; `out` has room for `len` events, which
/// the calling thread may write; `b` can hold `len` events (`crate::pack::fits`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512cd,avx512vbmi2,bmi2,popcnt")]
pub(crate) unsafe fn unpack_to<const LAST_ALLOC: bool, const SPLIT: bool>(
    b: &[u8],
    len: usize,
    out: *mut Event,
) -> (usize, bool) {
    // Values end at most here: the slack follows them.
    let end = b.len() - SLACK;
    // Where the next event's bytes are. If `SPLIT`, `len` control words come first, which end
    // before the slack (`fits`, checked by `unpack_here`).
    let (mut at, lead) = layout::<SPLIT>(len);
    // The previous values: [-, addr, arg, time], as packing keeps them.
    let mut prev = _mm256_setzero_si256();
    let one = _mm256_set1_epi64x(1);
    for i in 0..len {
        // Interleaved, `at <= end`, and a control word and the byte after it lie inside the
        // slack at worst.
        let c = control_at::<SPLIT>(i, at);
        let control = u16::from_le_bytes([b[c], b[c + 1]]);
        let what =
            CONTROL_LOW[usize::from(control as u8)] + CONTROL_HIGH[usize::from(control >> 8)];
        if what >> 62 != 0 {
            return (i, false);
        }
        let next = at + lead + (what >> 32 & 0xff) as usize;
        if next > end {
            return (i, false);
        }
        // SAFETY: the expand reads the `next - at - lead` value bytes (as many as the mask, the
        // entries' low 32 bits, has bits), which end at `next <= end < b.len()`; the rest are
        // not read.
        let z =
            unsafe { _mm256_maskz_expandloadu_epi8(what as u32, b.as_ptr().add(at + lead).cast()) };
        // Zigzag undone on the three difference words; the head word as it is.
        let d = _mm256_xor_si256(
            _mm256_srli_epi64::<1>(z),
            _mm256_sub_epi64(_mm256_setzero_si256(), _mm256_and_si256(z, one)),
        );
        let d = _mm256_mask_blend_epi64(0b0001, d, z);
        // The kind is the head word's low byte (0 if the head word has no bytes, as packed).
        let kind = _mm256_cvtsi256_si32(z) as u8;
        let chained = chained_lanes::<LAST_ALLOC>(kind);
        let v = _mm256_add_epi64(d, _mm256_maskz_mov_epi64(chained, prev));
        prev = _mm256_mask_blend_epi64(chained, prev, v);
        // SAFETY: `out` has room for `len` events and `i < len`; an `Event` is the four words.
        unsafe { _mm256_storeu_si256(out.add(i).cast::<__m256i>(), v) };
        at = next;
    }
    (len, at == end)
}
