//! pprof: a gzipped `profile.proto` heap profile, as Go's runtime writes one. Four sample
//! types (`alloc_objects`/count, `alloc_space`/bytes, `inuse_objects`/count,
//! `inuse_space`/bytes; the default is the `--metric`), mappings with build ids, locations (one
//! per pc, its inlined functions as lines, innermost first), functions and lines, the string
//! table with "" first. Functions carry names, so `go tool pprof` needs no symbols of its own.
//!
//! Encoded by hand (varints and length-delimited fields; the messages are small and fixed):
//! field numbers from pprof's `proto/profile.proto`.

use std::collections::HashMap;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::Metric;
use super::profile::{Line, Profile};

/// Appends protobuf fields to a buffer.
#[derive(Default)]
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        Self::varint(&mut self.buf, (u64::from(field) << 3) | u64::from(wire));
    }

    /// A varint field (left out when 0, as proto3 does).
    fn uint(&mut self, field: u32, v: u64) -> &mut Self {
        if v != 0 {
            self.key(field, 0);
            Self::varint(&mut self.buf, v);
        }
        self
    }

    fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.uint(field, v as u64)
    }

    fn bool(&mut self, field: u32, v: bool) -> &mut Self {
        self.uint(field, u64::from(v))
    }

    fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, 2);
        Self::varint(&mut self.buf, b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }

    fn message(&mut self, field: u32, m: &Message) -> &mut Self {
        self.bytes(field, &m.buf)
    }

    /// A packed repeated varint field.
    fn packed(&mut self, field: u32, vs: impl Iterator<Item = u64>) -> &mut Self {
        let mut inner = Vec::new();
        for v in vs {
            Self::varint(&mut inner, v);
        }
        self.bytes(field, &inner)
    }
}

/// The string table: "" is index 0.
struct Strings {
    index: HashMap<String, i64>,
    list: Vec<String>,
}

impl Strings {
    fn new() -> Self {
        Self {
            index: HashMap::from([(String::new(), 0)]),
            list: vec![String::new()],
        }
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.list.len() as i64;
        self.list.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

// Field numbers of profile.proto.
mod field {
    pub const SAMPLE_TYPE: u32 = 1;
    pub const SAMPLE: u32 = 2;
    pub const MAPPING: u32 = 3;
    pub const LOCATION: u32 = 4;
    pub const FUNCTION: u32 = 5;
    pub const STRING_TABLE: u32 = 6;
    pub const TIME_NANOS: u32 = 9;
    pub const PERIOD_TYPE: u32 = 11;
    pub const PERIOD: u32 = 12;
    pub const COMMENT: u32 = 13;
    pub const DEFAULT_SAMPLE_TYPE: u32 = 14;
}

/// The profile encoded as `profile.proto` (not compressed). `start_unix_ns` is when the trace
/// started: the profile's time is that plus the position.
pub fn encode(p: &Profile, default: Metric, start_unix_ns: u64, comment: &str) -> Vec<u8> {
    let mut st = Strings::new();
    let mut out = Message::default();
    for m in Metric::ALL {
        let mut vt = Message::default();
        vt.int(1, st.id(m.name())).int(2, st.id(m.unit()));
        out.message(field::SAMPLE_TYPE, &vt);
    }
    for s in &p.samples {
        let mut m = Message::default();
        m.packed(1, s.stack.iter().map(|&l| u64::from(l) + 1));
        m.packed(2, s.values.iter().map(|&v| v.round() as i64 as u64));
        out.message(field::SAMPLE, &m);
    }
    for (i, mp) in p.mappings.iter().enumerate() {
        let mut m = Message::default();
        m.uint(1, i as u64 + 1)
            .uint(2, mp.start)
            .uint(3, mp.limit)
            .uint(4, mp.file_offset)
            .int(5, st.id(&mp.path))
            .int(6, st.id(&mp.build_id))
            .bool(7, true)
            .bool(8, true)
            .bool(9, true)
            .bool(10, true);
        out.message(field::MAPPING, &m);
    }
    // Functions: one per (name, file).
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut function_list: Vec<(String, String)> = Vec::new();
    let mut function_id = |l: &Line| -> u64 {
        let key = (l.function.clone(), l.file.clone());
        *functions.entry(key.clone()).or_insert_with(|| {
            function_list.push(key);
            function_list.len() as u64
        })
    };
    for (i, loc) in p.locations.iter().enumerate() {
        let mut m = Message::default();
        m.uint(1, i as u64 + 1)
            .uint(2, u64::from(loc.mapping))
            .uint(3, loc.address);
        for l in &loc.lines {
            let mut line = Message::default();
            line.uint(1, function_id(l)).int(2, i64::from(l.line));
            m.message(4, &line);
        }
        out.message(field::LOCATION, &m);
    }
    for (i, (name, file)) in function_list.iter().enumerate() {
        let mut m = Message::default();
        let n = st.id(name);
        m.uint(1, i as u64 + 1)
            .int(2, n)
            .int(3, n)
            .int(4, st.id(file));
        out.message(field::FUNCTION, &m);
    }
    let comment = st.id(comment);
    let space = st.id("space");
    let bytes = st.id("bytes");
    let default_type = st.id(default.name());
    out.uint(field::TIME_NANOS, start_unix_ns.saturating_add(p.time));
    let mut period = Message::default();
    period.int(1, space).int(2, bytes);
    out.message(field::PERIOD_TYPE, &period);
    out.int(field::PERIOD, 1);
    out.packed(field::COMMENT, std::iter::once(comment as u64));
    out.int(field::DEFAULT_SAMPLE_TYPE, default_type);
    for s in &st.list {
        out.bytes(field::STRING_TABLE, s.as_bytes());
    }
    out.buf
}

/// Writes the profile gzipped to `w`.
pub fn write(
    p: &Profile,
    default: Metric,
    start_unix_ns: u64,
    comment: &str,
    w: impl Write,
) -> std::io::Result<()> {
    let mut gz = GzEncoder::new(w, Compression::default());
    gz.write_all(&encode(p, default, start_unix_ns, comment))?;
    gz.finish()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_encode_as_protobuf_does() {
        let mut b = Vec::new();
        Message::varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        let mut m = Message::default();
        m.uint(1, 150);
        assert_eq!(m.buf, [0x08, 0x96, 0x01]);
        m.uint(2, 0);
        assert_eq!(m.buf.len(), 3, "zero is left out");
        let mut m = Message::default();
        m.bytes(2, b"testing");
        assert_eq!(m.buf[..2], [0x12, 0x07]);
    }
}
