//! A batch of events packed for the backlog: each event as a 2-byte control word and four
//! values of 0 to 8 bytes each, as many as the value needs (the control word holds the four
//! lengths): the event's first word (kind, flags, aux, arg32), then its address, `arg` and time
//! as zigzag differences from the batch's previous event. About a third of the 32 bytes an
//! [`Event`] takes in memory on allocation-heavy programs; packing and unpacking read and write
//! whole 8-byte words, with no loop per byte (a varint a field cost the recorder as much time to
//! unpack as the encoder took to encode).
//!
//! Why: while the program runs, the recorder's encoder and keyframe model (at a lower priority)
//! fall behind and the backlog grows into fresh memory, which the kernel faults in and zeroes
//! page by page on the reader's thread, the one the program waits for. Packed, a batch needs a
//! third of those pages, and the reader reads every batch into one buffer that stays in cache.
//! The packing is private to the backlog: what leaves it is the batch of events that came in.

use heaplens_alloc::event::Event;
use heaplens_viewer::trace::encode::{unzigzag, zigzag};

/// The most bytes one event packs into: the control word and four 8-byte values.
const MAX_PACKED: usize = 2 + 4 * 8;

/// Bytes past the last value, so that every value is read as a whole 8-byte word.
const SLACK: usize = 8;

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

/// Events packed by [`pack`].
#[derive(Debug)]
pub struct Packed {
    /// The packed events, then [`SLACK`] bytes.
    bytes: Vec<u8>,
    /// How many.
    len: usize,
}

impl Packed {
    /// The memory it holds.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// How many events it holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }
}

/// Packs `events`, using `scratch` as room to pack in (it keeps its memory, written once, for
/// the next batch); the result holds only the bytes it needs.
pub fn pack(events: &[Event], scratch: &mut Vec<u8>) -> Packed {
    let need = events.len() * MAX_PACKED + SLACK;
    if scratch.len() < need {
        scratch.resize(need, 0);
    }
    let out = &mut scratch[..need];
    let mut at = 0;
    let (mut addr, mut arg, mut time) = (0u64, 0u64, 0u64);
    for e in events {
        let values = [
            u64::from(e.kind)
                | u64::from(e.flags) << 8
                | u64::from(e.aux) << 16
                | u64::from(e.arg32) << 32,
            zigzag(e.addr.wrapping_sub(addr)),
            zigzag(e.arg.wrapping_sub(arg)),
            zigzag(e.time.wrapping_sub(time)),
        ];
        (addr, arg, time) = (e.addr, e.arg, e.time);
        // The lengths first, then where each value goes: no value's place waits for the
        // previous value's length to be worked out and stored.
        let n = values.map(bytes_of);
        let control = (n[0] | n[1] << 4 | n[2] << 8 | n[3] << 12) as u16;
        let place = [2, 2 + n[0], 2 + n[0] + n[1], 2 + n[0] + n[1] + n[2]];
        let dst = &mut out[at..at + MAX_PACKED];
        dst[..2].copy_from_slice(&control.to_le_bytes());
        for (v, p) in values.into_iter().zip(place) {
            dst[p..p + 8].copy_from_slice(&v.to_le_bytes());
        }
        at += place[3] + n[3];
    }
    Packed {
        bytes: out[..at + SLACK].to_vec(),
        len: events.len(),
    }
}

/// Appends the events of `packed` to `events` (cleared first). `None` if `packed` is not what
/// [`pack`] made (it always is: the backlog holds only its own packing).
pub fn unpack(packed: &Packed, events: &mut Vec<Event>) -> Option<()> {
    events.clear();
    events.reserve(packed.len);
    let b = packed.bytes.as_slice();
    let mut at = 0;
    let (mut addr, mut arg, mut time) = (0u64, 0u64, 0u64);
    for _ in 0..packed.len {
        let c = b.get(at..at + 2)?;
        let control = u16::from_le_bytes([c[0], c[1]]);
        at += 2;
        let mut values = [0u64; 4];
        for (i, v) in values.iter_mut().enumerate() {
            let n = usize::from(control >> (4 * i) & 0xf);
            let word = u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?);
            *v = word & *MASK.get(n)?;
            at += n;
        }
        let [head, d_addr, d_arg, d_time] = values;
        addr = addr.wrapping_add(unzigzag(d_addr));
        arg = arg.wrapping_add(unzigzag(d_arg));
        time = time.wrapping_add(unzigzag(d_time));
        events.push(Event {
            kind: head as u8,
            flags: (head >> 8) as u8,
            aux: (head >> 16) as u16,
            arg32: (head >> 32) as u32,
            addr,
            arg,
            time,
        });
    }
    (at + SLACK == b.len()).then_some(())
}

/// How many low bytes of `v` are not zero bytes above the highest set bit (0 for 0).
#[inline]
fn bytes_of(v: u64) -> usize {
    (71 - v.leading_zeros() as usize) / 8
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn events_come_back_as_they_went_in_and_smaller() {
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
        for _ in 0..5000 {
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
        unpack(&empty, &mut back).unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn a_damaged_packing_is_refused_not_misread() {
        let events = vec![ev(1, 0, 2, 3, 0x1000, 64, 5); 10];
        let packed = pack(&events, &mut Vec::new());
        let mut out = Vec::new();
        let short = Packed {
            bytes: packed.bytes[..packed.bytes.len() - 1].to_vec(),
            len: packed.len,
        };
        assert_eq!(unpack(&short, &mut out), None);
        let cut = Packed {
            bytes: packed.bytes[..packed.bytes.len() - SLACK - 1].to_vec(),
            len: packed.len,
        };
        assert_eq!(unpack(&cut, &mut out), None);
        let long = Packed {
            bytes: [packed.bytes.as_slice(), &[0]].concat(),
            len: packed.len,
        };
        assert_eq!(unpack(&long, &mut out), None);
    }
}
