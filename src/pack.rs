//! A batch of events packed for the backlog: each field as a varint, addresses, 64-bit values and
//! times as differences from the batch's previous event (about a third of the 32 bytes an
//! [`Event`] takes in memory on allocation-heavy programs).
//!
//! Why: while the program runs, the recorder's encoder and keyframe model (at a lower priority)
//! fall behind and the backlog grows into fresh memory, which the kernel faults in and zeroes
//! page by page on the reader's thread, the one the program waits for. Packed, a batch needs a
//! third of those pages, and the reader reads every batch into one buffer that stays in cache.
//! The packing is private to the backlog: what leaves it is the batch of events that came in.

use heaplens_alloc::event::Event;

/// The most bytes one event packs into: kind, flags, then varints of at most 3 (aux), 5 (arg32)
/// and 10 (addr, arg, time) bytes.
const MAX_PACKED: usize = 2 + 3 + 5 + 3 * 10;

/// Events packed by [`pack`].
#[derive(Debug)]
pub struct Packed {
    /// The packed events.
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
    let need = events.len() * MAX_PACKED;
    if scratch.len() < need {
        scratch.resize(need, 0);
    }
    let out = &mut scratch[..need];
    let mut at = 0;
    let (mut addr, mut arg, mut time) = (0u64, 0u64, 0u64);
    for e in events {
        out[at] = e.kind;
        out[at + 1] = e.flags;
        at += 2;
        at = put(out, at, u64::from(e.aux));
        at = put(out, at, u64::from(e.arg32));
        at = put(out, at, zigzag(e.addr.wrapping_sub(addr)));
        at = put(out, at, zigzag(e.arg.wrapping_sub(arg)));
        at = put(out, at, zigzag(e.time.wrapping_sub(time)));
        (addr, arg, time) = (e.addr, e.arg, e.time);
    }
    Packed {
        bytes: out[..at].to_vec(),
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
        let (kind, flags) = (*b.get(at)?, *b.get(at + 1)?);
        at += 2;
        let aux;
        let arg32;
        let (d_addr, d_arg, d_time);
        (aux, at) = get(b, at)?;
        (arg32, at) = get(b, at)?;
        (d_addr, at) = get(b, at)?;
        (d_arg, at) = get(b, at)?;
        (d_time, at) = get(b, at)?;
        addr = addr.wrapping_add(unzigzag(d_addr));
        arg = arg.wrapping_add(unzigzag(d_arg));
        time = time.wrapping_add(unzigzag(d_time));
        events.push(Event {
            kind,
            flags,
            aux: u16::try_from(aux).ok()?,
            arg32: u32::try_from(arg32).ok()?,
            addr,
            arg,
            time,
        });
    }
    (at == b.len()).then_some(())
}

fn zigzag(v: u64) -> u64 {
    (v << 1) ^ ((v as i64 >> 63) as u64)
}

fn unzigzag(v: u64) -> u64 {
    (v >> 1) ^ (v & 1).wrapping_neg()
}

/// Writes `v` as a varint at `at` in `out` (which has room); returns where the next goes.
#[inline]
fn put(out: &mut [u8], mut at: usize, mut v: u64) -> usize {
    while v >= 0x80 {
        out[at] = v as u8 | 0x80;
        v >>= 7;
        at += 1;
    }
    out[at] = v as u8;
    at + 1
}

/// The varint at `at` in `b`, and where the next starts.
#[inline]
fn get(b: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = *b.get(at)?;
        at += 1;
        if shift > 63 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some((v, at));
        }
        shift += 7;
    }
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
        let long = Packed {
            bytes: [packed.bytes.as_slice(), &[0]].concat(),
            len: packed.len,
        };
        assert_eq!(unpack(&long, &mut out), None);
    }
}
