//! A byte stream the encoder appends to: room is made once per batch, and each byte then costs
//! a store and one bounds check that never fails, where `Vec::push` also compared the length
//! with the capacity and kept a path to grow it (about 45 instructions an event across the
//! encoder's ten streams).
//!
//! The buffer is kept zero-filled beyond what was written ([`Sink::room`] grows it with
//! zeros), so it needs no `unsafe`: the bytes past [`Sink::len`] are simply overwritten.

/// Most bytes one value takes as LEB128 (64 bits).
pub const MAX_VARINT: usize = 10;

/// Writes `v` as LEB128 to the start of `out`; returns the bytes it took (1 to 10). The one
/// varint writer of the trace's encoding.
#[inline(always)]
pub fn leb128(out: &mut [u8; MAX_VARINT], mut v: u64) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        out[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    n + 1
}

/// An append-only byte stream with room made ahead.
#[derive(Default)]
pub struct Sink {
    buf: Vec<u8>,
    len: usize,
}

impl Sink {
    /// Bytes written.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The bytes written.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Forgets what was written, keeping the room.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Makes room for `n` more bytes: the writes after it up to that many find their place
    /// (a write past it still lands, growing the buffer).
    #[inline]
    pub fn room(&mut self, n: usize) {
        let need = self.len + n;
        if need > self.buf.len() {
            self.grow(need);
        }
    }

    #[inline(never)]
    #[cold]
    fn grow(&mut self, need: usize) {
        let size = need.max(self.buf.len() * 2).max(4096);
        self.buf.resize(size, 0);
    }

    /// Appends one byte.
    #[inline(always)]
    pub fn push(&mut self, b: u8) {
        match self.buf.get_mut(self.len) {
            Some(slot) => *slot = b,
            None => {
                self.grow(self.len + 1);
                self.buf[self.len] = b;
            }
        }
        self.len += 1;
    }

    /// Appends one byte where [`Sink::room`] made room for it: a store and the count, without
    /// the bounds check [`Sink::push`] makes (the encoder's batch loop, whose every stream had
    /// room made for the batch at its widest: 8 instructions an event fewer, 4.3 % of the
    /// encoder's, on larson's events).
    ///
    /// # Safety
    /// Fewer bytes were written since the last [`Sink::room`]`(n)` than `n` (so `len` is below
    /// the buffer's length).
    #[inline(always)]
    #[allow(unsafe_code)]
    pub unsafe fn push_in_room(&mut self, b: u8) {
        debug_assert!(self.len < self.buf.len(), "a write past the room made");
        // SAFETY: `len < buf.len()`, by the caller's room (the buffer is never shorter than
        // `room` left it: `clear` keeps it, only `grow` changes it, and it only lengthens).
        unsafe { *self.buf.get_unchecked_mut(self.len) = b };
        self.len += 1;
    }

    /// [`Sink::varint`] where [`Sink::room`] made room for its bytes: a value below 128 (most
    /// of them in the encoder's hot streams) by [`Sink::push_in_room`], the rest as `varint`.
    ///
    /// # Safety
    /// As [`Sink::push_in_room`], for the varint's bytes.
    #[inline(always)]
    #[allow(unsafe_code)]
    pub unsafe fn varint_in_room(&mut self, v: u64) {
        if v < 0x80 {
            // SAFETY: forwarded: room for this value's one byte.
            unsafe { self.push_in_room(v as u8) };
        } else {
            self.varint(v);
        }
    }

    /// Appends `v` as LEB128.
    #[inline(always)]
    pub fn varint(&mut self, v: u64) {
        if v < 0x80 {
            self.push(v as u8);
        } else if v < 0x4000 {
            // Two bytes (stack ids under `--stacks all`, most address deltas that are not one
            // byte): inline, where the general case makes room and loops.
            self.push(v as u8 | 0x80);
            self.push((v >> 7) as u8);
        } else {
            self.varint_long(v);
        }
    }

    #[inline(never)]
    fn varint_long(&mut self, v: u64) {
        self.room(MAX_VARINT);
        let out: &mut [u8; MAX_VARINT] = (&mut self.buf[self.len..self.len + MAX_VARINT])
            .try_into()
            .expect("a slice of MAX_VARINT bytes");
        self.len += leb128(out, v);
    }
}

/// Empties `out` and makes room in it for `n` bytes. Where it has too little, it is replaced by
/// a fresh buffer a quarter larger than `n`, not grown: growing copies the old buffer (all of
/// its capacity, to the allocator) and doubles it, and the writer's payload buffers, a few MiB
/// each and kept from chunk to chunk, were faulted in anew each time a chunk came out a little
/// larger than those before.
pub fn room_for(out: &mut Vec<u8>, n: usize) {
    out.clear();
    if out.capacity() < n {
        *out = Vec::with_capacity(n + n / 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_a_vector_would() {
        let mut sink = Sink::default();
        let mut vec = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..50_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 1000 == 0 {
                sink.room(64);
            }
            let v = x >> (x % 64);
            sink.varint(v);
            super::super::encode::put_varint(&mut vec, v);
            sink.push(x as u8);
            vec.push(x as u8);
        }
        assert_eq!(sink.bytes(), &vec[..]);
        assert_eq!(sink.len(), vec.len());
        sink.clear();
        assert_eq!(sink.len(), 0);
        sink.varint(300);
        assert_eq!(sink.bytes(), &[0xac, 0x02]);
    }

    #[test]
    fn writes_in_room_are_the_checked_writes() {
        let (mut fast, mut checked) = (Sink::default(), Sink::default());
        for round in 0..3u64 {
            fast.room(3 * 1000);
            for v in 0..1000u64 {
                let v = v * round * 37;
                // SAFETY: room for 1000 values of at most 3 bytes was made just above.
                #[allow(unsafe_code)]
                unsafe {
                    fast.push_in_room(v as u8);
                    fast.varint_in_room(v % 300);
                };
                checked.push(v as u8);
                checked.varint(v % 300);
            }
        }
        assert_eq!(fast.bytes(), checked.bytes());
    }

    #[test]
    fn room_for_keeps_a_buffer_large_enough_and_replaces_a_small_one() {
        let mut out = vec![7u8; 100];
        room_for(&mut out, 1000);
        assert!(out.is_empty() && out.capacity() >= 1250);
        out.extend_from_slice(&[1; 900]);
        let kept = out.as_ptr();
        room_for(&mut out, 1200);
        assert!(out.is_empty());
        assert_eq!(out.as_ptr(), kept, "room enough: the same buffer");
    }
}
