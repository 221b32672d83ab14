//! Order-0 Huffman coding of a byte stream, for the streams zstd shrinks by their bytes'
//! statistics rather than by repeats (format version 7: an `Alloc`'s joint reference-and-size
//! byte, a reference's high part; `encode::ENTROPY_CODED`). zstd codes those too, but first
//! looks for repeats at every byte and codes the few short ones it finds: on a chunk of larson's
//! trace it spent 2.7 of its 4.7 ms on these two streams (320 and 470 MB/s), which this coder
//! codes at about 1 GB/s into as many bytes.
//!
//! ```text
//! coded   = (nothing, for an empty stream)
//!         | n varint | 0 | byte * n                         stored as it is
//!         | n varint | 1 | symbol                           n times one byte
//!         | n varint | 2 | lengths[128] | len0 varint | len1 varint | len2 varint
//!                        | lane0 | lane1 | lane2 | lane3      Huffman-coded
//! lengths = each byte value's code length in bits, 0 (absent) to MAX_BITS: value 2i in the low
//!           nibble of byte i, 2i + 1 in its high nibble
//! lane k  = the codes of the stream's symbols k * q .. min((k + 1) * q, n), q = ceil(n / 4),
//!           first code in the lowest bits, each code's first bit lowest; zero bits to the end
//!           of the last byte; lane 3's length is what is left of the stream
//! ```
//!
//! The codes are canonical (by length, then byte value, counting up), so the lengths alone
//! define them. Lanes let a decoder follow independent chains of table lookups at once. A decoder refuses lengths that over-fill the code space, a code the lengths do not
//! define, a lane that ends early, and bytes beyond a lane's last code.

/// Longest code, in bits: a decoder's table has `1 << MAX_BITS` entries (4 KiB).
pub const MAX_BITS: u32 = 11;

const TABLE: usize = 1 << MAX_BITS;
const LANES: usize = 4;

const STORED: u8 = 0;
const ONE_SYMBOL: u8 = 1;
const CODED: u8 = 2;

/// Bytes of the code-length table.
const LENGTHS_BYTES: usize = 128;

/// Appends `src` to `out` in the stored mode: its bytes as they are, for zstd to find the
/// repeats in (the encoder's choice for a stream that repeats itself, see
/// `encode::ChunkEncoder::finish_into`).
pub fn store(src: &[u8], out: &mut Vec<u8>) {
    if !src.is_empty() {
        super::encode::put_varint(out, src.len() as u64);
        out.push(STORED);
        out.extend_from_slice(src);
    }
}

/// Appends the coded form of `src` to `out`.
pub fn encode<'a>(src: &'a [u8], out: &mut Vec<u8>) {
    let n = src.len();
    if n == 0 {
        return;
    }
    // A histogram per lane: each lane's coded size comes from its own. The lanes are counted
    // in step, two tables a lane taking turns, so that a byte value repeated does not wait on
    // its own count's store (the usual trick of fast histograms).
    let q = n.div_ceil(LANES);
    let mut tables = [[0u32; 256]; 2 * LANES];
    let parts: Vec<&[u8]> = src.chunks(q).collect();
    let mut step = 0;
    if let [a, b, c, d] = parts[..] {
        step = d.len() & !1;
        let pairs = |p: &'a [u8]| p[..step].chunks_exact(2);
        for (((w, x), y), z) in pairs(a).zip(pairs(b)).zip(pairs(c)).zip(pairs(d)) {
            for (lane, pair) in [w, x, y, z].into_iter().enumerate() {
                tables[2 * lane][usize::from(pair[0])] += 1;
                tables[2 * lane + 1][usize::from(pair[1])] += 1;
            }
        }
    }
    for (lane, part) in parts.iter().enumerate() {
        for &b in &part[step.min(part.len())..] {
            tables[2 * lane][usize::from(b)] += 1;
        }
    }
    let mut counts = [[0u32; 256]; LANES];
    for (lane, c) in counts.iter_mut().enumerate() {
        for (v, (x, y)) in c
            .iter_mut()
            .zip(tables[2 * lane].iter().zip(&tables[2 * lane + 1]))
        {
            *v = x + y;
        }
    }
    let mut total = [0u64; 256];
    for c in &counts {
        for (t, &v) in total.iter_mut().zip(c) {
            *t += u64::from(v);
        }
    }
    let symbols = total.iter().filter(|&&c| c != 0).count();
    if symbols == 1 {
        super::encode::put_varint(out, n as u64);
        out.push(ONE_SYMBOL);
        out.push(src[0]);
        return;
    }
    let lengths = code_lengths(&total);
    let lane_bits: Vec<u64> = counts
        .iter()
        .map(|c| {
            c.iter()
                .zip(&lengths)
                .map(|(&k, &l)| u64::from(k) * u64::from(l))
                .sum()
        })
        .collect();
    let lane_bytes: Vec<usize> = lane_bits.iter().map(|b| b.div_ceil(8) as usize).collect();
    let coded = LENGTHS_BYTES + 3 * super::sink::MAX_VARINT + lane_bytes.iter().sum::<usize>();
    if coded >= n {
        return store(src, out);
    }
    super::encode::put_varint(out, n as u64);
    out.push(CODED);
    for pair in lengths.chunks(2) {
        out.push(pair[0] | pair[1] << 4);
    }
    for &len in &lane_bytes[..LANES - 1] {
        super::encode::put_varint(out, len as u64);
    }
    let codes = canonical_codes(&lengths);
    // Each lane into its own part of `out`, two lanes at a time. A short stream may fill fewer
    // than four lanes (5 bytes: 2, 2, 1); the others are empty, as their lengths say.
    let at = out.len();
    out.resize(at + lane_bytes.iter().sum::<usize>(), 0);
    let mut regions: Vec<&mut [u8]> = Vec::with_capacity(LANES);
    let mut rest = &mut out[at..];
    for &len in &lane_bytes {
        let (region, after) = rest.split_at_mut(len);
        regions.push(region);
        rest = after;
    }
    let mut regions = regions.into_iter();
    let mut parts = parts.into_iter();
    while let (Some(ra), Some(rb)) = (regions.next(), regions.next()) {
        let (pa, pb) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
        write_lanes(pa, ra, pb, rb, &codes);
    }
}

/// Bits on their way to a lane: the codes not yet stored whole, first bit lowest.
#[derive(Default)]
struct BitWriter {
    acc: u64,
    bits: u32,
    /// Where the next byte goes.
    at: usize,
}

impl BitWriter {
    /// Adds a code (`code | length << 16`).
    #[inline(always)]
    fn put(&mut self, code: u32) {
        self.acc |= u64::from(code & 0xffff) << self.bits;
        self.bits += code >> 16;
    }

    /// Stores the whole bytes pending as one 8-byte word, whatever the word holds past them: no
    /// branch, but `out` must have 8 bytes from here (the caller makes sure).
    #[inline(always)]
    fn store_word(&mut self, out: &mut [u8]) {
        out[self.at..self.at + 8].copy_from_slice(&self.acc.to_le_bytes());
        let whole = self.bits >> 3;
        self.at += whole as usize;
        self.acc >>= whole * 8;
        self.bits &= 7;
    }

    /// Stores the whole bytes pending one at a time (near the lane's end).
    fn store_bytes(&mut self, out: &mut [u8]) {
        while self.bits >= 8 {
            out[self.at] = self.acc as u8;
            self.at += 1;
            self.acc >>= 8;
            self.bits -= 8;
        }
    }

    /// Stores the last bits, padded with zeros to a byte.
    fn finish(&mut self, out: &mut [u8]) {
        self.store_bytes(out);
        if self.bits > 0 {
            out[self.at] = self.acc as u8;
            self.at += 1;
        }
    }
}

/// Writes the codes of lanes `pa` and `pb` into `ra` and `rb`, each exactly as long as its codes
/// need. The two lanes go in step, their chains of shifts independent; a lane's word stores stay
/// within it while 64 symbols or more are left (a bit each at least), and the rest is stored a
/// byte at a time.
fn write_lanes(pa: &[u8], ra: &mut [u8], pb: &[u8], rb: &mut [u8], codes: &[u32; 256]) {
    let (mut wa, mut wb) = (BitWriter::default(), BitWriter::default());
    // Four codes of at most 11 bits on at most 7 pending: 51 bits at most between stores.
    let in_step = pa.len().min(pb.len()).saturating_sub(64) / 4;
    for (qa, qb) in pa.chunks_exact(4).zip(pb.chunks_exact(4)).take(in_step) {
        for (&x, &y) in qa.iter().zip(qb) {
            wa.put(codes[usize::from(x)]);
            wb.put(codes[usize::from(y)]);
        }
        wa.store_word(ra);
        wb.store_word(rb);
    }
    for (mut w, part, region) in [(wa, pa, ra), (wb, pb, rb)] {
        for quad in part[4 * in_step..].chunks(4) {
            for &s in quad {
                w.put(codes[usize::from(s)]);
            }
            w.store_bytes(region);
        }
        w.finish(region);
        debug_assert_eq!(w.at, region.len());
    }
}

/// Each byte value's code and length: `code | length << 16`, the code's bits reversed (first bit
/// lowest).
fn canonical_codes(lengths: &[u8; 256]) -> [u32; 256] {
    let mut count = [0u32; MAX_BITS as usize + 1];
    for &l in lengths {
        count[usize::from(l)] += 1;
    }
    count[0] = 0;
    let mut next = [0u32; MAX_BITS as usize + 2];
    let mut code = 0u32;
    for len in 1..=MAX_BITS as usize {
        code = (code + count[len - 1]) << 1;
        next[len] = code;
    }
    let mut codes = [0u32; 256];
    for (s, &l) in lengths.iter().enumerate() {
        if l != 0 {
            let c = next[usize::from(l)];
            next[usize::from(l)] += 1;
            codes[s] = (c.reverse_bits() >> (32 - u32::from(l))) | u32::from(l) << 16;
        }
    }
    codes
}

/// Code lengths of at most [`MAX_BITS`] for byte values counted `counts` (two or more present):
/// Huffman's, then the longest folded into the limit, taking the room from the codes just
/// shorter (the way DEFLATE encoders limit theirs).
fn code_lengths(counts: &[u64; 256]) -> [u8; 256] {
    // Symbols by count, least first; ties by value, so the code is a function of the counts.
    let mut order: Vec<(u64, u8)> = (0..=255u8)
        .filter(|&s| counts[usize::from(s)] != 0)
        .map(|s| (counts[usize::from(s)], s))
        .collect();
    order.sort_unstable();
    let m = order.len();
    // Huffman's lengths by the two-queue method over sorted leaves: node weights, parents.
    let mut weight: Vec<u64> = order.iter().map(|&(c, _)| c).collect();
    weight.reserve(m - 1);
    let mut parent = vec![0usize; 2 * m - 1];
    let (mut leaf, mut inner) = (0usize, m);
    for node in m..2 * m - 1 {
        let mut pick = || {
            if leaf < m && (inner >= node || weight[leaf] <= weight[inner]) {
                leaf += 1;
                leaf - 1
            } else {
                inner += 1;
                inner - 1
            }
        };
        let (a, b) = (pick(), pick());
        weight.push(weight[a] + weight[b]);
        parent[a] = node;
        parent[b] = node;
    }
    let mut depth = vec![0u32; 2 * m - 1];
    for node in (0..2 * m - 2).rev() {
        depth[node] = depth[parent[node]] + 1;
    }
    // Symbols per length, the too long ones counted at the limit; then, while the code space
    // is over-full, one code at the limit is dropped and a shorter one split in two.
    let mut per_len = [0u32; 64];
    for &d in &depth[..m] {
        per_len[d.min(MAX_BITS) as usize] += 1;
    }
    let limit = MAX_BITS as usize;
    let mut space: u64 = (1..=limit)
        .map(|l| u64::from(per_len[l]) << (limit - l))
        .sum();
    while space > 1 << limit {
        per_len[limit] -= 1;
        for l in (1..limit).rev() {
            if per_len[l] != 0 {
                per_len[l] -= 1;
                per_len[l + 1] += 2;
                break;
            }
        }
        space -= 1;
    }
    // The lengths, longest to the rarest symbols.
    let mut lengths = [0u8; 256];
    let mut l = limit;
    for &(_, s) in &order {
        while per_len[l] == 0 {
            l -= 1;
        }
        per_len[l] -= 1;
        lengths[usize::from(s)] = l as u8;
    }
    lengths
}

/// About the bytes [`encode`] codes `src` into, without coding it: its order-0 entropy, which
/// the coding comes within a few percent of, but a bit a byte at least (the shortest code).
pub fn estimated_bytes(src: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in src {
        counts[usize::from(b)] += 1;
    }
    let n = src.len() as f64;
    let entropy_bytes: f64 = counts
        .iter()
        .filter(|&&c| c != 0)
        .map(|&c| f64::from(c) * (n / f64::from(c)).log2() / 8.0)
        .sum();
    entropy_bytes.max(n / 8.0)
}

/// Whether `coded` holds its stream's bytes as they are (the stored mode, or empty): what zstd
/// then compresses with the payload, where a coded stream is as small as it gets.
pub fn is_stored(coded: &[u8]) -> bool {
    let mut head = super::encode::Bytes::new(coded);
    coded.is_empty() || (head.varint().is_ok() && head.byte() == Ok(STORED))
}

/// Decodes a stream [`encode`] coded (all of `coded`) into `out` (cleared first), refusing one
/// of more than `max` bytes.
pub fn decode(coded: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), &'static str> {
    out.clear();
    if coded.is_empty() {
        return Ok(());
    }
    let mut head = super::encode::Bytes::new(coded);
    let n = usize::try_from(head.varint()?).map_err(|_| "coded stream too long")?;
    if n > max {
        return Err("a coded stream longer than its chunk allows");
    }
    match head.byte()? {
        STORED => {
            let bytes = head.take(n)?;
            if head.remaining() != 0 {
                return Err("bytes after a stored stream");
            }
            out.extend_from_slice(bytes);
        }
        ONE_SYMBOL => {
            let s = head.byte()?;
            if head.remaining() != 0 {
                return Err("bytes after a one-symbol stream");
            }
            out.resize(n, s);
        }
        CODED => {
            let table = head.take(LENGTHS_BYTES)?;
            let mut lengths = [0u8; 256];
            for (i, &b) in table.iter().enumerate() {
                lengths[2 * i] = b & 0xf;
                lengths[2 * i + 1] = b >> 4;
            }
            let lookup = decode_table(&lengths)?;
            let mut lane_len = [0usize; LANES];
            for len in &mut lane_len[..LANES - 1] {
                *len = usize::try_from(head.varint()?).map_err(|_| "lane too long")?;
            }
            let mut lanes: [&[u8]; LANES] = [&[]; LANES];
            for (lane, &len) in lanes.iter_mut().zip(&lane_len[..LANES - 1]) {
                *lane = head.take(len)?;
            }
            lanes[LANES - 1] = head.take(head.remaining())?;
            // Every symbol takes a bit at least.
            if n > coded.len().saturating_mul(8) {
                return Err("more symbols than a coded stream can hold");
            }
            out.resize(n, 0);
            decode_lanes(&lookup, lanes, out)?;
        }
        _ => return Err("unknown coded-stream mode"),
    }
    Ok(())
}

/// The decoder's table: for each `MAX_BITS` bits (first bit lowest), the symbol whose code they
/// begin with and its length (`length | symbol << 8`: the length, which the next lookup waits
/// for, without a shift), or 0 where no code does.
fn decode_table(lengths: &[u8; 256]) -> Result<Box<[u16; TABLE]>, &'static str> {
    if lengths.iter().any(|&l| u32::from(l) > MAX_BITS) {
        return Err("code longer than the limit");
    }
    let space: u64 = lengths
        .iter()
        .filter(|&&l| l != 0)
        .map(|&l| 1u64 << (MAX_BITS - u32::from(l)))
        .sum();
    if space > TABLE as u64 {
        return Err("code lengths over-fill the code space");
    }
    if lengths.iter().filter(|&&l| l != 0).count() < 2 {
        return Err("a coded stream has fewer than two symbols");
    }
    let codes = canonical_codes(lengths);
    let mut table = Box::new([0u16; TABLE]);
    for (s, &c) in codes.iter().enumerate() {
        let len = c >> 16;
        if len == 0 {
            continue;
        }
        let entry = len as u16 | (s as u16) << 8;
        let mut i = (c & 0xffff) as usize;
        while i < TABLE {
            table[i] = entry;
            i += 1 << len;
        }
    }
    Ok(table)
}

/// A lane's bits, read first bit lowest.
struct Lane<'a> {
    bytes: &'a [u8],
    /// Next byte to load (past the end, bytes read as zeros).
    pos: usize,
    acc: u64,
    /// Bits pending in `acc` (at most 63 where a refill begins).
    bits: u32,
}

impl<'a> Lane<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let mut lane = Self {
            bytes,
            pos: 0,
            acc: 0,
            bits: 0,
        };
        lane.refill();
        lane
    }

    /// Loads whole bytes until 56 or more bits are pending: one 8-byte load and no branch but
    /// the lane's last 8 bytes, which are loaded one at a time (zeros past the end: a code that
    /// reads them is caught by `finish`).
    #[inline(always)]
    fn refill(&mut self) {
        match self.bytes.get(self.pos..self.pos + 8) {
            Some(word) => {
                let w = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
                self.acc |= w << self.bits;
                self.pos += ((63 - self.bits) >> 3) as usize;
                self.bits |= 56;
            }
            None => self.refill_tail(),
        }
    }

    #[inline(never)]
    fn refill_tail(&mut self) {
        while self.bits <= 56 {
            let b = self.bytes.get(self.pos).copied().unwrap_or(0);
            self.acc |= u64::from(b) << self.bits;
            self.pos += 1;
            self.bits += 8;
        }
    }

    /// The next symbol's table entry, its bits taken (at most [`MAX_BITS`]; at least that many
    /// are pending). An entry of length 0 is a code the lengths do not define: it takes no
    /// bits, and the caller refuses the stream.
    #[inline(always)]
    fn entry(&mut self, table: &[u16; TABLE]) -> u16 {
        let entry = table[(self.acc as usize) & (TABLE - 1)];
        let len = u32::from(entry as u8);
        self.acc >>= len;
        self.bits -= len;
        entry
    }

    /// Checks that the lane's codes ended in its last byte.
    fn finish(&self) -> Result<(), &'static str> {
        // Bytes loaded (past the end too, as zeros), less the bits not yet taken.
        let used = 8 * self.pos as u64 - u64::from(self.bits);
        if used.div_ceil(8) != self.bytes.len() as u64 {
            return Err(if used > 8 * self.bytes.len() as u64 {
                "a coded lane ends early"
            } else {
                "bytes after a coded lane's last code"
            });
        }
        Ok(())
    }
}

/// Decodes the four lanes into `out` (the stream's length), two at a time: two independent
/// chains of table lookups interleave, and two lanes' state stays in registers (four spilled to
/// the stack and ran at half the speed).
fn decode_lanes(
    table: &[u16; TABLE],
    lanes: [&[u8]; LANES],
    out: &mut [u8],
) -> Result<(), &'static str> {
    let q = out.len().div_ceil(LANES).max(1);
    let mut parts = out.chunks_mut(q);
    // The shortest code length met: 0 if a lookup found no code.
    let mut shortest = u8::MAX;
    for pair in lanes.chunks(2) {
        let (mut a, mut b) = (Lane::new(pair[0]), Lane::new(pair[1]));
        let pa = parts.next().unwrap_or_default();
        let pb = parts.next().unwrap_or_default();
        // Four symbols a lane between refills: 44 of the 56 or more bits pending.
        let steps = pa.len().min(pb.len()) / 4;
        for (qa, qb) in pa.chunks_exact_mut(4).zip(pb.chunks_exact_mut(4)) {
            for (x, y) in qa.iter_mut().zip(qb.iter_mut()) {
                let (ea, eb) = (a.entry(table), b.entry(table));
                shortest = shortest.min(ea as u8).min(eb as u8);
                *x = (ea >> 8) as u8;
                *y = (eb >> 8) as u8;
            }
            a.refill();
            b.refill();
        }
        for (lane, part) in [(&mut a, pa), (&mut b, pb)] {
            for slot in &mut part[4 * steps..] {
                let e = lane.entry(table);
                shortest = shortest.min(e as u8);
                *slot = (e >> 8) as u8;
                lane.refill();
            }
            lane.finish()?;
        }
    }
    if shortest == 0 {
        return Err("a code the lengths do not define");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coded_form(src: &[u8]) -> Vec<u8> {
        let mut coded = Vec::new();
        encode(src, &mut coded);
        coded
    }

    fn round_trip(src: &[u8]) -> Vec<u8> {
        let coded = coded_form(src);
        let mut back = vec![7u8; 3];
        decode(&coded, src.len(), &mut back).unwrap();
        assert_eq!(back, src, "round trip of {} bytes", src.len());
        coded
    }

    /// A deterministic skewed byte source (a few values most of the time).
    fn skewed(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = super::super::synth::Rng::new(seed);
        (0..n)
            .map(|_| {
                let r = (rng.next_u64() >> 32) as u32;
                match r % 100 {
                    0..=59 => 1,
                    60..=79 => 3,
                    80..=89 => 5,
                    _ => (r >> 8) as u8,
                }
            })
            .collect()
    }

    #[test]
    fn streams_of_every_shape_round_trip() {
        assert!(
            round_trip(&[]).is_empty(),
            "an empty stream codes to nothing"
        );
        round_trip(&[9]);
        round_trip(&[9, 9, 9, 9, 9, 9, 9]);
        round_trip(&[1, 2]);
        round_trip(&[1, 2, 3]);
        for n in [4, 5, 7, 100, 1000, 4099, 100_000] {
            round_trip(&skewed(n, n as u64));
        }
        let all: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        round_trip(&all);
    }

    #[test]
    fn a_skewed_stream_codes_near_its_entropy() {
        let src = skewed(200_000, 42);
        let coded = round_trip(&src);
        let mut counts = [0u64; 256];
        for &b in &src {
            counts[usize::from(b)] += 1;
        }
        let n = src.len() as f64;
        let entropy_bytes: f64 = counts
            .iter()
            .filter(|&&c| c != 0)
            .map(|&c| -(c as f64) * (c as f64 / n).log2() / 8.0)
            .sum();
        assert_eq!(coded[3], CODED, "200 000 as a varint takes three bytes");
        let estimate = estimated_bytes(&src);
        assert!((estimate - entropy_bytes).abs() < 1.0 && coded.len() as f64 > estimate);
        assert_eq!(estimated_bytes(&[5u8; 800]), 100.0, "a bit a byte at least");
        assert!(
            (coded.len() as f64) < entropy_bytes * 1.03 + 200.0,
            "{} coded bytes against an order-0 entropy of {entropy_bytes:.0}",
            coded.len()
        );
    }

    #[test]
    fn incompressible_bytes_are_stored_and_one_value_is_one_byte() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..5000)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (x >> 56) as u8
            })
            .collect();
        let coded = round_trip(&random);
        assert_eq!(coded[2], STORED, "5000 as a varint takes two bytes");
        assert!(is_stored(&coded) && is_stored(&[]));
        assert!(!is_stored(&coded_form(&skewed(5000, 3))));
        assert_eq!(coded.len(), 3 + 5000);
        let coded = round_trip(&[4u8; 1000]);
        assert_eq!(coded, [0xe8, 0x07, ONE_SYMBOL, 4]);
    }

    #[test]
    fn codes_stay_within_the_limit_for_any_counts() {
        // Fibonacci counts make Huffman's depths as uneven as they get (up to 40 here).
        let mut counts = [0u64; 256];
        let (mut a, mut b) = (1u64, 1u64);
        for c in counts.iter_mut().take(40) {
            *c = a;
            (a, b) = (b, a + b);
        }
        let lengths = code_lengths(&counts);
        assert!(lengths.iter().all(|&l| u32::from(l) <= MAX_BITS));
        assert!(lengths[..40].iter().all(|&l| l != 0));
        let space: u64 = lengths[..40]
            .iter()
            .map(|&l| 1u64 << (MAX_BITS - u32::from(l)))
            .sum();
        assert_eq!(space, 1 << MAX_BITS, "the limited code is still complete");
        // And a stream with those counts round-trips.
        let src: Vec<u8> = (0..40u8)
            .flat_map(|s| std::iter::repeat_n(s, counts[usize::from(s)].min(5000) as usize))
            .collect();
        round_trip(&src);
    }

    /// Hostile bytes: every single-byte change and every cut of a coded stream either decodes
    /// to the stream's length or is refused, without a panic or a read out of bounds (the
    /// chunk's checksum catches accidents before this; a crafted file does not).
    #[test]
    fn no_damage_makes_the_decoder_panic() {
        let src = skewed(3000, 11);
        let coded = coded_form(&src);
        let mut out = Vec::new();
        let mut refused = 0;
        for at in 0..coded.len() {
            for flip in [0x01u8, 0x10, 0x80, 0xff] {
                let mut bad = coded.clone();
                bad[at] ^= flip;
                match decode(&bad, src.len(), &mut out) {
                    Ok(()) => assert_eq!(out.len(), src.len(), "byte {at} ^ {flip:#x}"),
                    Err(_) => refused += 1,
                }
            }
        }
        // Cut anywhere but to nothing (an empty stream, which is valid).
        for cut in 1..coded.len() {
            assert!(
                decode(&coded[..cut], src.len(), &mut out).is_err(),
                "cut at {cut}"
            );
        }
        // Most changes are caught (a changed code bit that still decodes to some byte is not).
        assert!(
            refused > coded.len(),
            "{refused} of {} refused",
            4 * coded.len()
        );
    }

    #[test]
    fn damaged_coded_streams_are_refused() {
        let src = skewed(10_000, 7);
        let coded = coded_form(&src);
        let mut out = Vec::new();
        // Cut short: a lane ends early (or the table is cut).
        for cut in [coded.len() - 1, 200, 5] {
            assert!(
                decode(&coded[..cut], 1 << 20, &mut out).is_err(),
                "cut at {cut}"
            );
        }
        // A byte too many after the last lane.
        let mut longer = coded.clone();
        longer.push(0);
        assert!(decode(&longer, 1 << 20, &mut out).is_err());
        // Lengths that over-fill the code space: every value at one bit.
        let mut bad = coded.clone();
        for b in &mut bad[3..3 + LENGTHS_BYTES] {
            *b = 0x11;
        }
        assert_eq!(
            decode(&bad, 1 << 20, &mut out),
            Err("code lengths over-fill the code space")
        );
        // An unknown mode.
        let mut bad = coded.clone();
        bad[2] = 9;
        assert_eq!(
            decode(&bad, 1 << 20, &mut out),
            Err("unknown coded-stream mode")
        );
        // More symbols than the caller allows, or than the bytes could hold.
        assert_eq!(
            decode(&coded, src.len() - 1, &mut out),
            Err("a coded stream longer than its chunk allows")
        );
        assert!(decode(&[0xff, 0xff, 0xff, 0x7f, CODED], usize::MAX, &mut out).is_err());
    }
}
