//! Batches of events packed small: each event as a 2-byte control word and four values of 0 to
//! 8 bytes each, as many as the value needs (the control word holds the four lengths): the
//! event's first word (kind, flags, aux, arg32), then its address and time as zigzag
//! differences from the batch's previous event, and its `arg` (an `Alloc`'s size) as one from
//! the batch's last `Alloc`'s, or from 0 ([`Form`]). About a fifth of the 32 bytes an
//! [`Event`] takes in memory on allocation-heavy programs; packing and unpacking read and write
//! whole 8-byte words, with no loop per byte (a varint a field cost as much time to unpack as
//! the trace encoder took to encode). Where the processor has AVX-512, `crate::pack_avx512`
//! packs the same bytes, and unpacks them for [`unpack_here`].
//!
//! ```text
//! packed = control u16 * count | values * count | slack[8]  (Form::ControlsFirst, the newest)
//!        | (control u16 | values) * count | slack[8]         (Form::Previous, Form::LastAlloc)
//! values = head[n0] | d_addr[n1] | d_arg[n2] | d_time[n3]   (little-endian)
//!          control = n0 | n1 << 4 | n2 << 8 | n3 << 12, each n in 0..=8
//!          d_arg   = zigzag(arg - base), base: an Alloc's, the arg of the batch's last Alloc
//!                    before it (0 if none); any other event's, 0 (Form::ControlsFirst and
//!                    Form::LastAlloc; Form::Previous: the arg of the batch's previous event)
//! ```
//!
//! The control words come first so that an unpacker knows where every event's values are
//! without waiting: interleaved, each event's place is the previous one's plus a length read
//! from the bytes at that place, one load after another.
//!
//! The collector of a traced process packs each batch before it goes on the socket
//! ([`crate::wire`]'s packed batch frame): the kernel then copies a quarter of the bytes on
//! both sides, and `heaplens record` keeps the packed batch in its backlog as it came, until
//! its encoder unpacks it. Packed bytes from a socket are untrusted: [`unpack`] refuses
//! anything [`pack`] could not have made, and never reads out of bounds.

use crate::event::{Event, EventKind};

/// The kind whose `arg` is packed against the last one's ([`Form::LastAlloc`]).
const ALLOC: u8 = EventKind::Alloc as u8;

/// Whether an event of `kind` has its `arg` packed against the batch's running `arg` (the
/// previous event's, or with `LAST_ALLOC` the last `Alloc`'s), rather than against 0.
#[inline(always)]
pub(crate) fn chained<const LAST_ALLOC: bool>(kind: u8) -> bool {
    !LAST_ALLOC || kind == ALLOC
}

/// The most bytes one event packs into: the control word and four 8-byte values.
pub const MAX_PACKED: usize = 2 + 4 * 8;

/// Bytes past the last value, so that every value is read as a whole 8-byte word.
pub const SLACK: usize = 8;

/// The fewest bytes one event packs into (its control word).
pub const MIN_PACKED: usize = 2;

/// The mask that keeps the low `n` bytes of a word, by `n`.
const MASK: [u64; 9] = [
    0,
    0xff,
    0xffff,
    0xff_ffff,
    0xffff_ffff,
    0xff_ffff_ffff,
    0xffff_ffff_ffff,
    0xff_ffff_ffff_ffff,
    u64::MAX,
];

/// A signed difference as an unsigned number with small magnitudes small (0, -1, 1, -2, ... ->
/// 0, 1, 2, 3, ...). Shared with the trace encoder.
#[inline]
#[must_use]
pub fn zigzag(v: u64) -> u64 {
    let s = v.cast_signed();
    ((s << 1) ^ (s >> 63)).cast_unsigned()
}

/// The inverse of [`zigzag`].
#[inline]
#[must_use]
pub fn unzigzag(v: u64) -> u64 {
    (v >> 1) ^ (v & 1).wrapping_neg()
}

/// How a batch is packed: what each event's `arg` is a difference from, and where the control
/// words are. Each packed batch frame says which by its type ([`crate::wire`]); [`pack_to`]
/// writes the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Each `arg` against the batch's previous event's, each control word before its event's
    /// values (stream versions 2 and 3).
    Previous,
    /// An `Alloc`'s `arg` against the batch's last `Alloc`'s, any other event's against 0, each
    /// control word before its event's values (stream version 4). A `Free`'s `arg` is 0, where
    /// against the `Alloc` before it, it cost that size's bytes, and the next `Alloc`'s against
    /// it the same again: `arg` took 1.76 bytes an event of larson packed against the previous
    /// event, 0.78 this way (13 % of all the packed bytes, which `heaplens record`'s backlog
    /// holds). Against the last event of the same kind, a table of 256, the bytes were the
    /// same and packing took a third longer: each event waited for a store to the table two
    /// events before.
    LastAlloc,
    /// The `arg`s as [`Form::LastAlloc`]'s, all the control words first, then all the values
    /// (stream version 5): the same bytes, in another order. AVX-512 unpacking took 4-7 ns an
    /// event of larson this way against 8-10 interleaved in a loop of its own, and 23 % fewer
    /// samples in `heaplens record ./larson 1` (allocator/BENCHMARKS.md).
    ControlsFirst,
}

/// Events packed by [`pack`], or received packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The packed events, then [`SLACK`] bytes.
    bytes: Vec<u8>,
    /// How many.
    len: usize,
    /// How they are packed.
    form: Form,
}

impl Packed {
    /// `len` events packed in `bytes` (which end in [`SLACK`] bytes) in `form`, as they came
    /// from a peer: `None` if `bytes` cannot hold `len` events (the contents are checked by
    /// [`unpack`]), so that a count read from a socket never makes anyone reserve more than the
    /// bytes allow.
    #[must_use]
    pub fn from_parts(bytes: Vec<u8>, len: usize, form: Form) -> Option<Self> {
        fits(bytes.len(), len).then_some(Self { bytes, len, form })
    }

    /// How they are packed.
    #[must_use]
    pub fn form(&self) -> Form {
        self.form
    }

    /// The packed bytes, slack included.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The memory it holds.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// How many events it holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no events.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Bytes [`pack_to`] may need for `n` events (it uses fewer: [`MAX_PACKED`] is the worst case).
#[must_use]
pub const fn room_for(n: usize) -> usize {
    n * MAX_PACKED + SLACK
}

/// Packs `events` into the start of `dst`, slack included, in the newest form
/// ([`Form::ControlsFirst`]); returns the bytes used, or `None` if `dst` is shorter than
/// [`room_for`] the events. Nothing is allocated: the collector packs into room it keeps from
/// one batch to the next.
pub fn pack_to(events: &[Event], dst: &mut [u8]) -> Option<usize> {
    pack_to_as(events, dst, Form::ControlsFirst)
}

/// [`pack_to`] in `form`: the older forms are how peers of older stream versions packed (for
/// tests of a reader that reads them all).
pub fn pack_to_as(events: &[Event], dst: &mut [u8], form: Form) -> Option<usize> {
    match form {
        Form::Previous => pack_fastest::<false, false>(events, dst),
        Form::LastAlloc => pack_fastest::<true, false>(events, dst),
        Form::ControlsFirst => pack_fastest::<true, true>(events, dst),
    }
}

/// [`pack_with`] with AVX-512 where the processor has it (`crate::pack_avx512`), else the loop.
#[inline(always)]
fn pack_fastest<const LAST_ALLOC: bool, const SPLIT: bool>(
    events: &[Event],
    dst: &mut [u8],
) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if crate::pack_avx512::available() {
        // SAFETY: the processor has the features (checked just above).
        return unsafe { crate::pack_avx512::pack_with::<LAST_ALLOC, SPLIT>(events, dst) };
    }
    pack_with::<LAST_ALLOC, SPLIT>(events, dst)
}

/// Where a packing's values start, and the bytes before each event's values (its control word
/// if interleaved): all `len` control words go first if `SPLIT` ([`Form::ControlsFirst`]).
#[inline(always)]
pub(crate) const fn layout<const SPLIT: bool>(len: usize) -> (usize, usize) {
    if SPLIT { (2 * len, 0) } else { (0, 2) }
}

/// Where event `i`'s control word is, its values starting at `at`.
#[inline(always)]
pub(crate) const fn control_at<const SPLIT: bool>(i: usize, at: usize) -> usize {
    if SPLIT { 2 * i } else { at }
}

/// [`pack_to_as`]: the `arg`s against [`Form::LastAlloc`]'s if `LAST_ALLOC`, the control words
/// first if `SPLIT`.
#[inline(always)]
fn pack_with<const LAST_ALLOC: bool, const SPLIT: bool>(
    events: &[Event],
    dst: &mut [u8],
) -> Option<usize> {
    let dst = dst.get_mut(..room_for(events.len()))?;
    // Where the next event's bytes go (its values, after its control word unless `SPLIT`).
    let (mut at, lead) = layout::<SPLIT>(events.len());
    // `arg`: the previous event's, or the last `Alloc`'s if `LAST_ALLOC`.
    let (mut addr, mut arg, mut time) = (0u64, 0u64, 0u64);
    for (i, e) in events.iter().enumerate() {
        let chained = chained::<LAST_ALLOC>(e.kind);
        let values = [
            u64::from(e.kind)
                | u64::from(e.flags) << 8
                | u64::from(e.aux) << 16
                | u64::from(e.arg32) << 32,
            zigzag(e.addr.wrapping_sub(addr)),
            zigzag(e.arg.wrapping_sub(if chained { arg } else { 0 })),
            zigzag(e.time.wrapping_sub(time)),
        ];
        (addr, time) = (e.addr, e.time);
        if chained {
            arg = e.arg;
        }
        // The lengths first, then where each value goes: no value's place waits for the
        // previous value's length to be worked out and stored.
        let n = values.map(bytes_of);
        let control = (n[0] | n[1] << 4 | n[2] << 8 | n[3] << 12) as u16;
        let place = [
            lead,
            lead + n[0],
            lead + n[0] + n[1],
            lead + n[0] + n[1] + n[2],
        ];
        let c = control_at::<SPLIT>(i, at);
        dst[c..c + 2].copy_from_slice(&control.to_le_bytes());
        let slot = &mut dst[at..at + MAX_PACKED];
        for (v, p) in values.into_iter().zip(place) {
            slot[p..p + 8].copy_from_slice(&v.to_le_bytes());
        }
        at += place[3] + n[3];
    }
    // The slack is zeroes, whatever the room held before.
    dst[at..at + SLACK].fill(0);
    Some(at + SLACK)
}

/// Whether `bytes` bytes (slack included) can hold `len` packed events: checked on a count read
/// from a socket before anything is reserved for it.
#[must_use]
pub fn fits(bytes: usize, len: usize) -> bool {
    bytes >= SLACK
        && len
            .checked_mul(MIN_PACKED)
            .is_some_and(|least| least <= bytes - SLACK)
        && len
            .checked_mul(MAX_PACKED)
            .is_none_or(|most| most >= bytes - SLACK)
}

/// Packs `events` at the end of `out`, slack included; returns the bytes added.
pub fn pack_into(events: &[Event], out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + room_for(events.len()), 0);
    let used = pack_to(events, &mut out[start..]).unwrap_or(0);
    out.truncate(start + used);
    used
}

/// Packs `events`, using `scratch` as room to pack in (it keeps its memory for the next
/// batch); the result holds only the bytes it needs.
pub fn pack(events: &[Event], scratch: &mut Vec<u8>) -> Packed {
    scratch.clear();
    pack_into(events, scratch);
    Packed {
        bytes: scratch.as_slice().to_vec(),
        len: events.len(),
        form: Form::ControlsFirst,
    }
}

/// Appends the events of `packed` to `events` (cleared first). `None` if `packed` is not what
/// [`pack`] made: a length above 8 in a control word, values that run past the bytes, or bytes
/// left over (`events` then holds the events before the damage).
pub fn unpack(packed: &Packed, events: &mut Vec<Event>) -> Option<()> {
    unpack_bytes(&packed.bytes, packed.len, packed.form, events)
}

/// [`unpack`] of `len` events packed in `b` (slack included) in `form`, wherever they are
/// kept. `len` must be one that [`fits`] `b` (else `None`, with nothing
/// reserved).
///
/// The events go straight to memory (`event_stores::write_streamed`): they are read next by
/// another thread, whose core holds the vector's lines from the last batch; taking each line
/// back first cost `heaplens record` more than the decoding did.
pub fn unpack_bytes(b: &[u8], len: usize, form: Form, events: &mut Vec<Event>) -> Option<()> {
    let done = unpack_vec(b, len, form, events, |out, words| {
        // SAFETY: forwarded from `unpack_vec`: `out` is a slot of four words, the first the
        // head word (`Event::head_word`).
        unsafe { crate::event_stores::write_streamed(out.cast(), words) };
    });
    crate::event_stores::fence();
    done
}

/// [`unpack_bytes`] with ordinary stores: for events the calling thread reads next (a trace
/// encoder unpacking its own batch into a vector it reuses, which stays in its cache). With
/// AVX-512 where the processor has it (`crate::pack_avx512::unpack_to`): the same events and
/// verdicts.
pub fn unpack_here(b: &[u8], len: usize, form: Form, events: &mut Vec<Event>) -> Option<()> {
    #[cfg(target_arch = "x86_64")]
    if crate::pack_avx512::available() {
        return into_reserved(b, len, events, |out| {
            // SAFETY: the processor has the features (checked just above); `into_reserved`
            // reserved `len` events at `out` and checked that `b` can hold them (`fits`).
            let (n, whole) = unsafe {
                use crate::pack_avx512::unpack_to;
                match form {
                    Form::Previous => unpack_to::<false, false>(b, len, out),
                    Form::LastAlloc => unpack_to::<true, false>(b, len, out),
                    Form::ControlsFirst => unpack_to::<true, true>(b, len, out),
                }
            };
            (n, whole.then_some(()))
        });
    }
    unpack_vec(b, len, form, events, |out, [head, addr, arg, time]| {
        // SAFETY: forwarded from `unpack_vec`.
        unsafe { out.write(Event::from_words(head, addr, arg, time)) };
    })
}

/// Decodes into `events` (cleared first), each event's four words stored by `store(slot,
/// words)` into a reserved, aligned slot of `events`, which the caller may only write.
#[inline(always)]
fn unpack_vec(
    b: &[u8],
    len: usize,
    form: Form,
    events: &mut Vec<Event>,
    store: impl Fn(*mut Event, [u64; 4]),
) -> Option<()> {
    into_reserved(b, len, events, |out| {
        let mut n = 0;
        // `unpack_into` hands on at most `len` events: each goes to reserved room.
        let put = |words| {
            // SAFETY: `n < len` and `len` events were reserved.
            store(unsafe { out.add(n) }, words);
            n += 1;
        };
        let done = match form {
            Form::Previous => unpack_into::<false, false>(b, len, put),
            Form::LastAlloc => unpack_into::<true, false>(b, len, put),
            Form::ControlsFirst => unpack_into::<true, true>(b, len, put),
        };
        (n, done)
    })
}

/// Empties `events` and, if `len` events [`fits`] `b`, reserves room for them and has `decode`
/// write them at the room's start: it returns how many it wrote (at most `len`, in order from
/// the first) and its verdict, which this returns. `None` with nothing reserved if they cannot
/// fit.
#[inline(always)]
fn into_reserved(
    b: &[u8],
    len: usize,
    events: &mut Vec<Event>,
    decode: impl FnOnce(*mut Event) -> (usize, Option<()>),
) -> Option<()> {
    events.clear();
    if !fits(b.len(), len) {
        return None;
    }
    events.reserve(len);
    let (n, done) = decode(events.as_mut_ptr());
    // SAFETY: `decode` wrote the first `n <= len` events of the reserved room.
    unsafe { events.set_len(n) };
    done
}

/// Decodes up to `len` events from `b` (checked by [`fits`]), handing each to `put` as its four
/// words, as [`pack_with`] with the same `LAST_ALLOC` and `SPLIT` packed them; `Some` if exactly
/// `len` fill `b` up to its slack.
#[inline(always)]
fn unpack_into<const LAST_ALLOC: bool, const SPLIT: bool>(
    b: &[u8],
    len: usize,
    mut put: impl FnMut([u64; 4]),
) -> Option<()> {
    // Values end at most here: the slack follows them.
    let end = b.len() - SLACK;
    // Where the next event's bytes are. `fits` checked that the control words (`2 * len`
    // bytes) end before the slack.
    let mut at = layout::<SPLIT>(len).0;
    let (mut addr, mut arg, mut time) = (0u64, 0u64, 0u64);
    let mut tail = [0u8; WINDOW];
    for i in 0..len {
        // One bounds check an event: a window its largest possible slot fits in, or near the
        // end a copy of what is left, zero-padded (the values' masks drop the padding's bytes,
        // as they drop the next event's).
        let slot: &[u8; WINDOW] = match b.get(at..at + WINDOW) {
            Some(s) => s.try_into().ok()?,
            None => {
                let rest = b.get(at..)?;
                tail.fill(0);
                tail[..rest.len()].copy_from_slice(rest);
                &tail
            }
        };
        let control = if SPLIT {
            u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
        } else {
            u16::from_le_bytes([slot[0], slot[1]])
        };
        let (values, used) = decode::<SPLIT>(control, slot)?;
        at += used;
        if at > end {
            return None;
        }
        let [head, d_addr, d_arg, d_time] = values;
        addr = addr.wrapping_add(unzigzag(d_addr));
        // The kind is the head word's low byte.
        let chained = chained::<LAST_ALLOC>(head as u8);
        let this_arg = if chained { arg } else { 0 }.wrapping_add(unzigzag(d_arg));
        if chained {
            arg = this_arg;
        }
        time = time.wrapping_add(unzigzag(d_time));
        put([head, addr, this_arg, time]);
    }
    (at == end).then_some(())
}

/// Bytes [`decode`] reads an event from: more than its largest slot ([`MAX_PACKED`]), so that
/// a value read at any place four lengths of up to 15 lead to stays inside, and no length
/// needs clamping to 8 first for the compiler to leave the reads unchecked.
const WINDOW: usize = 64;
const _: () = assert!(WINDOW >= MAX_PACKED && 2 + 3 * 15 + 8 <= WINDOW);

/// [`MASK`], indexed by any 4-bit length (those above 8 are refused before a mask is used).
const MASK16: [u64; 16] = {
    let mut m = [u64::MAX; 16];
    let mut i = 0;
    while i < MASK.len() {
        m[i] = MASK[i];
        i += 1;
    }
    m
};

/// The four values, whose lengths are in `control`, of the event packed at the start of `slot`
/// (after its control word unless `SPLIT`), and the bytes it takes there; `None` if `control`
/// gives a length above 8.
#[inline]
fn decode<const SPLIT: bool>(control: u16, slot: &[u8; WINDOW]) -> Option<([u64; 4], usize)> {
    if control_fault(control) {
        return None;
    }
    let lead = layout::<SPLIT>(0).1;
    let n = [0, 4, 8, 12].map(|shift| usize::from(control >> shift & 0xf));
    let place = [
        lead,
        lead + n[0],
        lead + n[0] + n[1],
        lead + n[0] + n[1] + n[2],
    ];
    let word = |p: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&slot[p..p + 8]);
        u64::from_le_bytes(w)
    };
    let values = [
        word(place[0]) & MASK16[n[0]],
        word(place[1]) & MASK16[n[1]],
        word(place[2]) & MASK16[n[2]],
        word(place[3]) & MASK16[n[3]],
    ];
    Some((values, place[3] + n[3]))
}

/// Whether control word `control` gives a length above 8: its top bit set and another one too.
#[inline(always)]
pub(crate) fn control_fault(control: u16) -> bool {
    let (top, low) = (control >> 3 & 0x1111, control & 0x7777);
    top & (low | low >> 1 | low >> 2) & 0x1111 != 0
}

/// How many low bytes of `v` are not zero bytes above the highest set bit (0 for 0).
#[inline]
fn bytes_of(v: u64) -> usize {
    (71 - v.leading_zeros() as usize) / 8
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `len` bytes of a xorshift stream from `state` (advanced): junk for readers to refuse.
    pub(crate) fn junk(state: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                *state as u8
            })
            .collect()
    }

    fn ev(kind: u8, flags: u8, aux: u16, arg32: u32, addr: u64, arg: u64, time: u64) -> Event {
        Event {
            kind,
            flags,
            aux,
            arg32,
            addr,
            arg,
            time,
        }
    }

    /// Edge values, then a random walk like an allocation-heavy program's.
    pub(crate) fn sample_events(n: usize) -> Vec<Event> {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut events = vec![
            ev(0, 0, 0, 0, 0, 0, 0),
            ev(255, 255, u16::MAX, u32::MAX, u64::MAX, u64::MAX, u64::MAX),
            ev(1, 0, 3, 7, 0, u64::MAX, 0),
            ev(2, 1, 0, 0, u64::MAX, 0, 1),
        ];
        let (mut addr, mut time) = (0x7f00_0000_0000u64, 1_000_000u64);
        for _ in 0..n {
            let r = next();
            addr = addr.wrapping_add((r % 4096) * 16).wrapping_sub(16 * 2048);
            time += r % 3;
            events.push(ev(
                (r >> 8) as u8 % 30,
                (r >> 16) as u8 % 4,
                (r >> 24) as u16 % 70,
                (r >> 32) as u32 % 5000,
                addr,
                r >> 50,
                time,
            ));
        }
        events
    }

    #[test]
    fn events_come_back_as_they_went_in_and_smaller() {
        let events = sample_events(5000);
        let mut scratch = Vec::new();
        let packed = pack(&events, &mut scratch);
        assert_eq!(packed.len(), events.len());
        assert!(
            packed.capacity() < events.len() * 16,
            "{} bytes for {} events",
            packed.capacity(),
            events.len()
        );
        let mut back = vec![ev(9, 9, 9, 9, 9, 9, 9)];
        unpack(&packed, &mut back).unwrap();
        assert_eq!(back, events);

        // An empty batch, and the scratch reused.
        let empty = pack(&[], &mut scratch);
        assert!(empty.is_empty());
        unpack(&empty, &mut back).unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn packing_after_other_bytes_appends_and_ends_in_zeroed_slack() {
        let events = sample_events(300);
        let mut out = vec![0xaa; 5];
        let n = pack_into(&events, &mut out);
        assert_eq!(out.len(), 5 + n);
        assert_eq!(&out[..5], &[0xaa; 5]);
        assert_eq!(&out[out.len() - SLACK..], &[0; SLACK]);
        let alone = pack(&events, &mut Vec::new());
        assert_eq!(&out[5..], alone.bytes());
        // Packing again into the same room gives the same bytes (nothing left from before).
        out.truncate(5);
        pack_into(&events, &mut out);
        assert_eq!(&out[5..], alone.bytes());
        // Into room full of other bytes, exactly as large as it may need, or one byte short.
        let mut dirty = vec![0xffu8; room_for(events.len())];
        let used = pack_to(&events, &mut dirty).unwrap();
        assert_eq!(&dirty[..used], alone.bytes());
        assert_eq!(pack_to(&events, &mut dirty[1..]), None);
    }

    #[test]
    fn a_damaged_packing_is_refused_not_misread() {
        let events = vec![ev(1, 0, 2, 3, 0x1000, 64, 5); 10];
        let packed = pack(&events, &mut Vec::new());
        let mut out = Vec::new();
        let with = |bytes: Vec<u8>| Packed {
            bytes,
            len: packed.len,
            form: packed.form,
        };
        let b = packed.bytes.clone();
        assert_eq!(unpack(&with(b[..b.len() - 1].to_vec()), &mut out), None);
        assert_eq!(
            unpack(&with(b[..b.len() - SLACK - 1].to_vec()), &mut out),
            None
        );
        assert_eq!(unpack(&with([b.as_slice(), &[0]].concat()), &mut out), None);
        // A control word claiming 9 bytes for a value.
        let mut bad = b.clone();
        bad[0] = 0x09;
        assert_eq!(unpack(&with(bad), &mut out), None);
        // Garbage of every length: refused or read, never out of bounds.
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..200 {
            let junk = junk(&mut x, len);
            for n in [0, 1, 3, 50] {
                for form in FORMS {
                    if let Some(p) = Packed::from_parts(junk.clone(), n, form) {
                        let _ = unpack(&p, &mut out);
                    }
                }
            }
        }
    }

    /// Every form, oldest first.
    const FORMS: [Form; 3] = [Form::Previous, Form::LastAlloc, Form::ControlsFirst];

    /// Where the control word of each of the `n` events packed in `b` in `form` is: the first
    /// `n` pairs of bytes, or interleaved, each after the previous one's values.
    fn control_places(b: &[u8], n: usize, form: Form) -> Vec<usize> {
        if form == Form::ControlsFirst {
            return (0..n).map(|i| 2 * i).collect();
        }
        let mut at = 0;
        (0..n)
            .map(|_| {
                let control = u16::from_le_bytes([b[at], b[at + 1]]);
                let here = at;
                at += 2
                    + (0..4)
                        .map(|i| usize::from(control >> (4 * i) & 0xf))
                        .sum::<usize>();
                here
            })
            .collect()
    }

    #[test]
    fn controls_first_is_the_interleaved_packing_reordered() {
        let events = sample_events(2000);
        let mut room = vec![0; room_for(events.len())];
        let used = pack_to_as(&events, &mut room, Form::LastAlloc).unwrap();
        let interleaved = &room[..used];
        // The control words, in order, then each event's values, in order.
        let mut reordered = Vec::new();
        let mut values = Vec::new();
        let places = control_places(interleaved, events.len(), Form::LastAlloc);
        for (i, &at) in places.iter().enumerate() {
            reordered.extend_from_slice(&interleaved[at..at + 2]);
            let end = places.get(i + 1).copied().unwrap_or(used - SLACK);
            values.extend_from_slice(&interleaved[at + 2..end]);
        }
        reordered.extend_from_slice(&values);
        reordered.extend_from_slice(&[0; SLACK]);
        assert_eq!(pack(&events, &mut Vec::new()).bytes(), reordered);
    }

    #[test]
    fn both_unpackings_agree_on_every_packing() {
        let agree = |b: &[u8], n: usize, what: &str| {
            let verdicts = FORMS.map(|form| {
                let mut streamed = Vec::new();
                let mut here = vec![ev(9, 9, 9, 9, 9, 9, 9)];
                let verdict = unpack_bytes(b, n, form, &mut streamed);
                let says = format!("{what}, {n} events, {form:?}");
                assert_eq!(unpack_here(b, n, form, &mut here), verdict, "{says}");
                assert_eq!(here, streamed, "{says}");
                verdict.is_some()
            });
            // Where the events are is the same in the two interleaved forms: only their `arg`s
            // differ.
            assert_eq!(verdicts[0], verdicts[1], "{what}, {n} events");
            verdicts
        };
        let events = sample_events(3000);
        let mut x = 0x0bad_cafe_f00d_d00du64;
        for (k, form) in FORMS.into_iter().enumerate().skip(1) {
            let mut room = vec![0; room_for(events.len())];
            let used = pack_to_as(&events, &mut room, form).unwrap();
            let b = room[..used].to_vec();
            assert!(agree(&b, events.len(), "a whole packing")[k], "{form:?}");
            // Every way of damaging it near its start and its end: a byte changed, the count
            // off.
            let mut refused = 0;
            for at in (0..64).chain(b.len() - 64..b.len()) {
                let mut bad = b.clone();
                bad[at] ^= 1 << (junk(&mut x, 1)[0] % 8);
                refused += usize::from(!agree(&bad, events.len(), "a bit flipped")[k]);
            }
            assert!(refused > 0, "some damage is seen ({form:?})");
            for n in [events.len() - 1, events.len() + 1] {
                assert!(!agree(&b, n, "the count off by one")[k], "{form:?}");
            }
            // The last event claiming one value byte more than it has, which runs one byte
            // into the slack: refused, with the events before it.
            let few = &events[..5];
            let used = pack_to_as(few, &mut room, form).unwrap();
            let mut long = room[..used].to_vec();
            let last = control_places(&long, 5, form)[4];
            let control = u16::from_le_bytes([long[last], long[last + 1]]);
            let nibble = (0..4).find(|i| control >> (4 * i) & 0xf < 8).unwrap();
            long[last..last + 2].copy_from_slice(&(control + (1 << (4 * nibble))).to_le_bytes());
            assert!(!agree(&long, 5, "the last event a byte too long")[k]);
        }
        // Junk of every length, and control words of every length (one event is packed the
        // same in every form).
        for len in 0..300 {
            let junk = junk(&mut x, len);
            for n in [0, 1, 2, 7, 40] {
                agree(&junk, n, "junk");
            }
        }
        for control in 0..=u16::MAX {
            let mut one = control.to_le_bytes().to_vec();
            one.resize(2 + 32 + SLACK, 0);
            let sizes = (0..4).map(|i| usize::from(control >> (4 * i) & 0xf));
            let used = 2 + sizes.sum::<usize>();
            one.truncate(used.min(2 + 32) + SLACK);
            let verdicts = agree(&one, 1, "one event");
            assert_eq!(verdicts[1], verdicts[2], "control {control:#x}");
        }
    }

    #[test]
    fn a_count_the_bytes_cannot_hold_is_refused_before_anything_is_reserved() {
        let packed = pack(&sample_events(10), &mut Vec::new());
        let bytes = packed.bytes().to_vec();
        let same = Form::ControlsFirst;
        assert_eq!(
            Packed::from_parts(bytes.clone(), packed.len(), same),
            Some(packed.clone())
        );
        // More events than control words fit, fewer than the bytes need, no slack, a huge count.
        assert_eq!(Packed::from_parts(bytes.clone(), bytes.len(), same), None);
        assert_eq!(Packed::from_parts(bytes.clone(), 1, same), None);
        assert_eq!(Packed::from_parts(vec![0; SLACK - 1], 0, same), None);
        assert_eq!(Packed::from_parts(bytes, usize::MAX, same), None);
        assert_eq!(
            Packed::from_parts(vec![0; SLACK], 0, same).map(|p| p.len()),
            Some(0)
        );
    }

    #[test]
    fn sizes_are_packed_against_the_last_allocs_and_either_way_read_back() {
        // Allocations of one size, each freed at once: a `Free`'s `arg` is 0.
        let events: Vec<Event> = (0..1000u64)
            .flat_map(|i| {
                let addr = 0x10_0000 + 48 * i;
                [ev(1, 0, 0, 0, addr, 40, 7), ev(2, 0, 0, 0, addr, 0, 7)]
            })
            .collect();
        let mut room = vec![0; room_for(events.len())];
        let sizes = FORMS.map(|form| {
            let used = pack_to_as(&events, &mut room, form).unwrap();
            let packed = Packed::from_parts(room[..used].to_vec(), events.len(), form).unwrap();
            let mut back = Vec::new();
            unpack(&packed, &mut back).unwrap();
            assert_eq!(back, events, "{form:?}");
            used
        });
        // Against the previous event each `arg` took a byte (40 after 0, 0 after 40); against
        // the last `Alloc`'s only the first `Alloc`'s does, in either layout.
        assert_eq!(sizes[0] - sizes[1], events.len() - 1);
        assert_eq!(sizes[1], sizes[2]);
        // The form matters when reading.
        let mut room = vec![0; room_for(events.len())];
        let used = pack_to_as(&events, &mut room, Form::LastAlloc).unwrap();
        let mut back = Vec::new();
        unpack_here(&room[..used], events.len(), Form::LastAlloc, &mut back).unwrap();
        assert_eq!(back, events);
        unpack_here(&room[..used], events.len(), Form::Previous, &mut back).unwrap();
        assert_ne!(back, events);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx512_packs_exactly_as_the_loop_does() {
        use crate::pack_avx512 as simd;
        if !simd::available() {
            eprintln!("this processor has no AVX-512 (VBMI2): the loop alone is used");
            return;
        }
        // Allocations of a few sizes, each freed at once, and other kinds between.
        let alternating: Vec<Event> = (0..1500u64)
            .map(|i| {
                let addr = 0x10_0000 + 48 * (i / 2);
                match i % 3 {
                    0 => ev(1, 0, 3, 0, addr, 40 + i % 7, i / 9),
                    1 => ev(2, 1, 0, 0, addr, 0, i / 9),
                    _ => ev(16, 0, 9, 77, addr & !0xffff, 1 << (i % 40), i / 9),
                }
            })
            .collect();
        // An odd count too: with the control words first, events are packed in pairs and the
        // last one alone.
        let batches = [
            sample_events(3000),
            sample_events(2001),
            alternating,
            Vec::new(),
        ];
        for form in FORMS {
            for events in &batches {
                let mut looped = vec![0x55u8; room_for(events.len())];
                let mut vectors = vec![0xffu8; room_for(events.len())];
                // SAFETY: `available` said yes.
                let (a, b) = unsafe {
                    match form {
                        Form::Previous => (
                            pack_with::<false, false>(events, &mut looped),
                            simd::pack_with::<false, false>(events, &mut vectors),
                        ),
                        Form::LastAlloc => (
                            pack_with::<true, false>(events, &mut looped),
                            simd::pack_with::<true, false>(events, &mut vectors),
                        ),
                        Form::ControlsFirst => (
                            pack_with::<true, true>(events, &mut looped),
                            simd::pack_with::<true, true>(events, &mut vectors),
                        ),
                    }
                };
                let used = a.unwrap();
                assert_eq!(b, Some(used), "{form:?}, {} events", events.len());
                assert_eq!(looped[..used], vectors[..used], "{form:?}");
                let mut back = Vec::new();
                unpack_here(&vectors[..used], events.len(), form, &mut back).unwrap();
                assert_eq!(&back, events, "{form:?}");
                // Room one byte short is refused by both.
                let short = room_for(events.len()) - 1;
                // SAFETY: as above.
                let refused = unsafe {
                    (
                        pack_with::<true, true>(events, &mut looped[..short]),
                        simd::pack_with::<true, true>(events, &mut vectors[..short]),
                    )
                };
                assert_eq!(refused, (None, None));
            }
        }
    }

    #[test]
    fn zigzag_keeps_small_differences_small_and_round_trips() {
        for (v, z) in [(0i64, 0u64), (-1, 1), (1, 2), (-2, 3), (i64::MIN, u64::MAX)] {
            assert_eq!(zigzag(v.cast_unsigned()), z);
            assert_eq!(unzigzag(z), v.cast_unsigned());
        }
    }
}
