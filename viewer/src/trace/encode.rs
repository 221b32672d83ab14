//! Event batch encoding inside an Events chunk (before compression).
//!
//! Each chunk decodes on its own: every predictor starts empty at the chunk's start. The events
//! are split into byte streams, so that zstd sees like next to like:
//!
//! | stream | per batch | per event |
//! |---|---|---|
//! | 0 ops | heap id, event count (varints) | op = kind × 4 + wide × 2 + (flags ≠ 0) (varint), then flags (byte) if not 0 |
//! | 1 time | v6: the batch's times in runs of equal ones: per run, its events (varint), then zigzag(its time − the time before) | before v6: time − previous event's time in the chunk (zigzag varint) |
//! | 2 refs | | `Alloc`, `Free`, `Resize`: where the address comes from (varint, below); v5: an `Alloc`'s in a byte with its size's high part ([`joint_code`]) |
//! | 3 addr | | an address delta (zigzag varint) or an address (varint), by kind (below) |
//! | 4 aux | | aux (varint); for `Alloc`: 0 → 0, the request's size class → 1, else aux + 2 |
//! | 5 arg32 | | arg32 (varint) |
//! | 6 arg | | arg (varint); for `Realloc` (the old pointer): zigzag(arg − the heap's last `Free`/`Resize` address) |
//! | 7 ref low (v3) | | `Free`, `Resize`: the reference's low byte |
//! | 8 ref high (v3) | | `Free`, `Resize`: the reference >> 8 (varint) |
//! | 9 size low (v3) | | `Alloc`: the size's low byte (the arg stream holds size >> 8) |
//! | 10 page addr (v4) | | page events: the address against a neighbour's page ([`PageBase`]) |
//! | 11 page (v4) | | page events: aux, arg32, arg (varints) |
//! | 12 page ops (v4) | events before the first page event | page events: op, then the events before the next one |
//! | 13 flags (v4) | | flags bytes (a `Free`'s against the `CROSS_THREAD` its reference predicts) |
//!
//! The payload is the stream lengths (varints) followed by the streams: seven, ten from
//! version 3, where a `Free`'s or `Resize`'s reference and an `Alloc`'s size are split in a low
//! byte and the rest ([`put_split`]) instead of a varint in the refs or arg stream, and fourteen
//! from version 4, where page events and flags are apart (the specification, `README.md` in
//! this directory, says how). From version 7 the refs and ref high streams are stored
//! Huffman-coded ([`ENTROPY_CODED`]).
//!
//! **Fields.** Each kind has a set of fields it uses (the schema's table,
//! `heaplens_alloc::schema::TABLE`, from which [`fields`] and the address codings here are
//! derived). A *narrow* event (wide = 0) writes only those, the others being zero. An
//! event with a non-zero field outside its kind's set, and every event of an unknown kind, is
//! *wide* (wide = 1) and writes all four: addr, aux, arg32, arg.
//!
//! **Addresses.** Predictors are kept per heap (and `Alloc` ones per size class of the request,
//! [`size_class`]); they start at zero in every chunk.
//! - `Alloc`: refs 0: addr holds zigzag(addr − the last `Alloc` coded this way of the same heap
//!   and size class, or if none of any class). Blocks are carved sequentially, so this is mostly
//!   the block size. Otherwise the address is a block freed earlier in the chunk: each heap keeps
//!   a stack of freed blocks per size class (in push order, entries numbered from 0) and a cursor
//!   `next` (starts at −1). refs `2v + 1`: the entry numbered `next − unzigzag(v)`; refs
//!   `2v + 2`: the entry numbered `len − 1 − v` (from the top). Then `next` = that number − 1.
//!   mimalloc reuses freed blocks LIFO, so the cursor walks down the stack and `v` is mostly 0.
//!   Version 5 keeps these stacks per size class and page, and names a reused block in the stack
//!   of the page its class last allocated from ([`PageStacks`]; the specification says how).
//! - `Free`, `Resize`: refs `2d + 1`: the address of this heap's `d`-th latest `Alloc` in the
//!   chunk; `2d + 2`: the chunk's `d`-th latest `Alloc` of any heap (cross-thread frees); refs 0:
//!   addr holds zigzag(addr − the heap's last `Free`/`Resize` address). A `Free` found by
//!   reference pushes the block onto the freed stack of the heap and size class of its `Alloc`.
//! - `Realloc` (after its `Alloc`): zigzag(addr − the heap's last `Alloc` address); page events (`Page*`,
//!   `CensusPage`) and segment and OS events (`Segment*`, `CensusSegment`, `OsCommit`,
//!   `OsPurge`): zigzag(addr − the heap's last address of the same group).
//! - every other kind byte, known or not: the address as a varint.
//!
//! Any [`Event`] value round-trips exactly; the predictors only decide how few bytes it takes.

use std::collections::HashMap;

use super::addr_map::AddrMap;
use super::huffman;
use super::sink::{MAX_VARINT, Sink};

use heaplens_alloc::event::{Event, EventKind};
use heaplens_alloc::schema::{self, How};

/// Most byte streams in an Events payload, of any version ([`streams`]).
pub const STREAMS: usize = 14;

/// The byte streams' names, in payload order (the table at the top): for tools that say where a
/// trace's bytes go.
pub const STREAM_NAMES: [&str; STREAMS] = [
    "ops",
    "time",
    "refs",
    "addr",
    "aux",
    "arg32",
    "arg",
    "ref_lo",
    "ref_hi",
    "size_lo",
    "page_addr",
    "page",
    "page_ops",
    "flags",
];

/// The number of byte streams in an Events payload of format `version`: 7; from version 3, three
/// more for the split values ([`put_split`]): 7 and 8 a `Free`'s or `Resize`'s reference (low
/// byte, the rest), 9 an `Alloc`'s size (low byte; the rest goes to the arg stream); from
/// version 4, four more: 10 the page events' addresses, 11 their other fields, 12 their ops
/// and where they are, 13 every event's flags.
pub const fn streams(version: u16) -> usize {
    match version {
        ..3 => 7,
        3 => 10,
        _ => STREAMS,
    }
}

/// The streams stored Huffman-coded from version 7 ([`huffman`]): an `Alloc`'s joint byte
/// (refs) and a reference's high part (ref_hi). Their bytes are all statistics and no repeats:
/// zstd spent most of its time on them (300-470 MB/s) for what an order-0 coder makes as small.
/// The references' low bytes stay with zstd, which finds enough repeats in them to beat
/// Huffman's rounding on a near-flat distribution (1.13x against 1.10x).
pub const ENTROPY_CODED: [usize; 2] = [2, 8];

/// Fewest payload bytes an event takes (its op; from version 6 an event may take no byte of
/// time, in a run of equal times): a decoder uses it to bound an event count before trusting
/// it.
pub const MIN_EVENT_BYTES: usize = 1;

/// Most distinct heaps in one chunk: bounds a decoder's predictor state (about 1 KiB a heap).
/// A writer starts a new chunk rather than exceed it.
pub const MAX_CHUNK_HEAPS: usize = 4096;

/// Size classes the `Alloc` predictor keeps apart.
const CLASSES: usize = 128;

/// How many events ahead [`ChunkEncoder::push_batch`] prefetches the address map.
const PREFETCH_AHEAD: usize = 8;

/// Address groups delta-coded against the group's last address.
const GROUPS: usize = 5;
/// Page addresses are predicted from block addresses rounded down to this (a small page, the
/// allocator's smallest; frozen here for format version 4).
const PAGE_GRAIN: u64 = 1 << 16;
const GROUP_ALLOC: usize = 0;
const GROUP_FREE: usize = 1;
const GROUP_PAGE: usize = 2;
const GROUP_SEGMENT: usize = 3;
const GROUP_FRAME: usize = 4;

/// Stack ids of a heap's recent `Alloc`s that an `Alloc`'s arg32 can name by position.
const STACK_MRU: usize = 8;

// The kinds with a coding of their own, named by the schema's table.
/// The kind whose `addr` is a carved or reused block (`Alloc`): its size class drives the
/// predictors.
const ALLOC: u8 = schema::kind_coded(schema::ADDR, How::Carved) as u8;
/// The kind whose `aux` is coded against the request's size class (`Alloc`).
const SIZE_CLASS_AUX: u8 = schema::kind_coded(schema::AUX, How::SizeClass) as u8;
/// The kind whose `arg32` is a predicted stack id (`Alloc`).
const STACK_ID_ARG32: u8 = schema::kind_coded(schema::ARG32, How::StackId) as u8;
/// The kind whose `arg32` is a predicted node id and `arg` its parent (`StackFrame`).
const STACK_FRAME: u8 = schema::kind_coded(schema::ARG32, How::NodeId) as u8;
const _: () = assert!(schema::kind_coded(schema::ARG, How::ParentOfNode) as u8 == STACK_FRAME);
/// The kind whose `arg` is coded against the heap's last `Free`/`Resize` address (`Realloc`).
const AFTER_FREE_ARG: u8 = schema::kind_coded(schema::ARG, How::AfterFree) as u8;
/// A free pushes its block onto the freed stack (a `Resize` refers to a block without freeing it).
const FREE: u8 = EventKind::Free as u8;
/// A `Free`'s flag that version 4 predicts from its reference: set when the block's `Alloc` was
/// another heap's.
const CROSS_THREAD: u8 = heaplens_alloc::event::flags::CROSS_THREAD;
/// The fields of a narrow `Alloc`, in every version: an `Alloc` without a stack id (arg32) is
/// narrow. A narrow `Free` has only its address.
const ALLOC_FIELDS: u8 = field::ADDR | field::AUX | field::ARG;
const _: () = {
    assert!(
        fields(1, ALLOC) == ALLOC_FIELDS && fields(super::format::VERSION, ALLOC) == ALLOC_FIELDS
    );
    assert!(fields(1, FREE) == field::ADDR && fields(super::format::VERSION, FREE) == field::ADDR);
    assert!(
        matches!(code_of(1, ALLOC), AddrCode::Alloc)
            && matches!(code_of(super::format::VERSION, ALLOC), AddrCode::Alloc)
    );
    assert!(
        matches!(code_of(1, FREE), AddrCode::Ref)
            && matches!(code_of(super::format::VERSION, FREE), AddrCode::Ref)
    );
    // A bare op (kind × 4) of both fits one varint byte, and a wide one.
    assert!(ALLOC < 32 && FREE < 32);
    // An `Alloc` with a stack id is wide, and its aux and arg32 are coded as a size class and a
    // stack id (`code_event`'s path for it).
    assert!(fields(super::format::VERSION, ALLOC) & field::ARG32 == 0);
    assert!(SIZE_CLASS_AUX == ALLOC && STACK_ID_ARG32 == ALLOC);
    assert!(AFTER_FREE_ARG != ALLOC && STACK_FRAME != ALLOC);
};

/// The byte streams of an Events payload being written, by name (the table at the top).
#[derive(Default)]
struct Streams {
    ops: Sink,
    time: Sink,
    refs: Sink,
    addr: Sink,
    aux: Sink,
    arg32: Sink,
    arg: Sink,
    ref_lo: Sink,
    ref_hi: Sink,
    size_lo: Sink,
    page_addr: Sink,
    page: Sink,
    page_ops: Sink,
    flags: Sink,
}

impl Streams {
    /// Every stream, in payload order.
    fn all(&mut self) -> [&mut Sink; STREAMS] {
        [
            &mut self.ops,
            &mut self.time,
            &mut self.refs,
            &mut self.addr,
            &mut self.aux,
            &mut self.arg32,
            &mut self.arg,
            &mut self.ref_lo,
            &mut self.ref_hi,
            &mut self.size_lo,
            &mut self.page_addr,
            &mut self.page,
            &mut self.page_ops,
            &mut self.flags,
        ]
    }
}

/// Field bits of [`fields`].
pub mod field {
    /// `addr`.
    pub const ADDR: u8 = 1;
    /// `aux`.
    pub const AUX: u8 = 2;
    /// `arg32`.
    pub const ARG32: u8 = 4;
    /// `arg`.
    pub const ARG: u8 = 8;
    /// Every field.
    pub const ALL: u8 = ADDR | AUX | ARG32 | ARG;
}

/// The fields an event of `kind` uses in format `version` (every kind uses at least one); an
/// event with another field non-zero is written wide. The field sets are the schema's
/// ([`schema::TABLE`]: the slots coded narrow); a kind the version does not name uses all.
pub const fn fields(version: u16, kind: u8) -> u8 {
    let Some(f) = schema::fields_of(kind) else {
        return field::ALL;
    };
    let Some(m) = f.narrow_mask(version) else {
        return field::ALL;
    };
    // The schema's slot order is addr, arg, arg32, aux; the field bits' are addr, aux, arg32, arg.
    let mut bits = 0;
    if m & (1 << schema::ADDR) != 0 {
        bits |= field::ADDR;
    }
    if m & (1 << schema::ARG) != 0 {
        bits |= field::ARG;
    }
    if m & (1 << schema::ARG32) != 0 {
        bits |= field::ARG32;
    }
    if m & (1 << schema::AUX) != 0 {
        bits |= field::AUX;
    }
    bits
}

/// The field sets of every kind in each format version, as the format's specification lists
/// them (`README.md`, **Fields**): generated from the schema, and a test fails when the
/// specification differs.
pub fn field_sets_table() -> String {
    let names = |bits: u8| {
        let all = [
            (field::ADDR, "addr"),
            (field::AUX, "aux"),
            (field::ARG32, "arg32"),
            (field::ARG, "arg"),
        ];
        let v: Vec<&str> = all
            .iter()
            .filter(|(b, _)| bits & b != 0)
            .map(|(_, n)| *n)
            .collect();
        v.join(", ")
    };
    let mut out = String::from(
        "| kind | version 1 | versions 2 to 5 | used outside the set (wide when not 0) |\n|---|---|---|---|\n",
    );
    for f in schema::TABLE {
        let k = f.kind as u8;
        let v1 = if f.since > 1 {
            "not named (wide)".to_owned()
        } else {
            names(fields(1, k))
        };
        let wide: Vec<&str> = f
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.code, schema::Code::Wide(_)))
            .map(|(i, _)| schema::SLOT_NAMES[i])
            .collect();
        let wide = if wide.is_empty() {
            String::new()
        } else {
            format!(" {}", wide.join(", "))
        };
        out.push_str(&format!(
            "| `{}` | {v1} | {} |{wide} |\n",
            f.kind.name(),
            names(fields(2, k)),
        ));
    }
    out
}

/// [`fields`] of every kind byte in one version.
const fn fields_table(version: u16) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut k = 0;
    while k < 256 {
        t[k] = fields(version, k as u8);
        k += 1;
    }
    t
}

/// [`fields`] of every kind byte in format version 1.
static FIELDS_V1: [u8; 256] = fields_table(1);

/// [`fields`] of every kind byte in the version this build writes.
static FIELDS: [u8; 256] = fields_table(super::format::VERSION);

/// The fields `e` writes, and whether it is wide.
#[inline]
fn present(fields: &[u8; 256], e: &Event) -> (u8, bool) {
    use field::{ADDR, ALL, ARG, ARG32, AUX};
    let f = fields[usize::from(e.kind)];
    let used = (if e.addr != 0 { ADDR } else { 0 })
        | (if e.aux != 0 { AUX } else { 0 })
        | (if e.arg32 != 0 { ARG32 } else { 0 })
        | (if e.arg != 0 { ARG } else { 0 });
    if used & !f == 0 {
        (f, false)
    } else {
        (ALL, true)
    }
}

/// How an event's address is coded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AddrCode {
    /// A freed block, else a delta against the last `Alloc` of the size class.
    Alloc,
    /// A reference to an earlier `Alloc` (the block it frees or resizes), else a delta.
    Ref,
    /// A delta against the last address of the heap's group.
    Delta(u8),
    /// A page event's address (version 4), against the page of a block ([`PageBase`]), in the
    /// page streams.
    Page(PageBase),
    /// The address itself.
    Plain,
    /// Not written (zero).
    Absent,
}

/// What a page event's address is coded against (version 4): the page, rounded down to
/// [`PAGE_GRAIN`], of a block its neighbours in the batch name. Measured on recordings of two
/// multithreaded C programs, 97-100 % of each kind's pages are that page exactly.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PageBase {
    /// The next `Alloc` of the batch (`PageInit`, `PageExtend`, `PageCollect`: the allocator
    /// prepares the page it is about to allocate from); 0 if none follows.
    NextAlloc,
    /// The heap's last `Alloc` of the size class of the batch's next `Alloc` (`PageFull`: the
    /// page that class was allocated from until it filled); 0 if none follows.
    ClassOfNextAlloc,
    /// The heap's last `Free` or `Resize` (`PageUnfull`, `PageRetire`, `PageFree`: the free
    /// that changed the page's state).
    LastFree,
    /// The heap's last page event coded this way (the other page kinds: `PageReclaim`,
    /// `CensusPage`), as in version 3.
    LastPage,
}

/// The [`PageBase`] of a page event of `kind`.
const fn page_base(kind: u8) -> PageBase {
    use EventKind::*;
    match kind {
        k if k == PageInit as u8 || k == PageExtend as u8 || k == PageCollect as u8 => {
            PageBase::NextAlloc
        }
        k if k == PageFull as u8 => PageBase::ClassOfNextAlloc,
        k if k == PageUnfull as u8 || k == PageRetire as u8 || k == PageFree as u8 => {
            PageBase::LastFree
        }
        _ => PageBase::LastPage,
    }
}

/// How the address of a `kind` is coded when it is written in format `version`: the schema's
/// coding of `addr` ([`schema::TABLE`]); plain for a kind the version does not name.
const fn code_of(version: u16, kind: u8) -> AddrCode {
    let Some(f) = schema::fields_of(kind) else {
        return AddrCode::Plain;
    };
    if version < f.since {
        return AddrCode::Plain;
    }
    match f.slots[schema::ADDR].code.how() {
        How::Carved => AddrCode::Alloc,
        How::BlockRef => AddrCode::Ref,
        How::AfterAlloc => AddrCode::Delta(GROUP_ALLOC as u8),
        How::PageDelta if version >= 4 => AddrCode::Page(page_base(kind)),
        How::PageDelta => AddrCode::Delta(GROUP_PAGE as u8),
        How::SegmentDelta => AddrCode::Delta(GROUP_SEGMENT as u8),
        How::FrameDelta => AddrCode::Delta(GROUP_FRAME as u8),
        How::Varint
        | How::SizeClass
        | How::StackId
        | How::NodeId
        | How::AfterFree
        | How::ParentOfNode => AddrCode::Plain,
    }
}

/// [`code_of`] every kind byte in one version.
const fn codes_table(version: u16) -> [AddrCode; 256] {
    let mut t = [AddrCode::Plain; 256];
    let mut k = 0;
    while k < 256 {
        t[k] = code_of(version, k as u8);
        k += 1;
    }
    t
}

/// [`code_of`] every kind byte in format version 1.
static CODES_V1: [AddrCode; 256] = codes_table(1);

/// [`code_of`] every kind byte in format versions 2 and 3.
static CODES_V3: [AddrCode; 256] = codes_table(3);

/// [`code_of`] every kind byte in the version this build writes.
static CODES: [AddrCode; 256] = codes_table(super::format::VERSION);

/// How a format version codes events: its tables, and which predictors and streams it uses.
#[derive(Clone, Copy)]
struct Coding {
    fields: &'static [u8; 256],
    codes: &'static [AddrCode; 256],
    /// Version 2 on: stack ids and node ids are predicted.
    stacks: bool,
    /// Version 3 on: `Free`/`Resize` references and `Alloc` sizes are split ([`put_split`]).
    split: bool,
    /// Version 4 on: page events are coded in streams of their own, their addresses against
    /// their neighbours' blocks ([`PageBase`]).
    pages: bool,
    /// Version 5 on: an `Alloc`'s refs code and size share a byte ([`joint_code`]).
    joint: bool,
    /// Version 6 on: times are coded in runs of equal ones ([`code_time_runs`]).
    time_runs: bool,
    /// Version 7 on: the [`ENTROPY_CODED`] streams are stored Huffman-coded ([`huffman`]).
    entropy: bool,
    /// Byte streams in a payload ([`streams`]).
    streams: usize,
    /// The version this build writes: every flag above set, and the tables this build's. The
    /// encoder's loop is compiled once for it with the flags as constants
    /// ([`ChunkEncoder::push_batch`]), and once for the older versions.
    latest: bool,
}

/// Accessors of the coding's flags for the encoder's loop: `flag::<L>()` is a constant (set) in
/// its copy for the latest version (`L`), and reads the flag in the other.
macro_rules! latest_flags {
    ($($flag:ident),*) => {
        $(
            #[inline(always)]
            fn $flag<const L: bool>(&self) -> bool {
                L || self.$flag
            }
        )*
    };
}

impl Coding {
    latest_flags!(pages, split, joint, stacks, time_runs);

    /// `fields`, a constant table when `L`.
    #[inline(always)]
    fn fields<const L: bool>(&self) -> &'static [u8; 256] {
        if L { &FIELDS } else { self.fields }
    }

    /// `codes`, a constant table when `L`.
    #[inline(always)]
    fn codes<const L: bool>(&self) -> &'static [AddrCode; 256] {
        if L { &CODES } else { self.codes }
    }

    /// The coding of format `version` (a later one than this build's is coded as this build's).
    fn of(version: u16) -> Self {
        let v1 = version < 2;
        Self {
            fields: if v1 { &FIELDS_V1 } else { &FIELDS },
            codes: match version {
                ..2 => &CODES_V1,
                2 | 3 => &CODES_V3,
                _ => &CODES,
            },
            stacks: !v1,
            split: version >= 3,
            pages: version >= 4,
            joint: version >= 5,
            time_runs: version >= 6,
            entropy: version >= 7,
            streams: streams(version),
            latest: version >= super::format::VERSION,
        }
    }
}

/// An event's op: kind × 4 + wide × 2 + (flags ≠ 0), the table at the top.
#[inline(always)]
const fn op_of(kind: u8, wide: bool, flagged: bool) -> u64 {
    (kind as u64) << 2 | (wide as u64) << 1 | flagged as u64
}

/// How the address of an event of `kind` with fields `f` is coded, by the table of a version.
#[inline]
fn addr_code(codes: &[AddrCode; 256], kind: u8, f: u8) -> AddrCode {
    if f & field::ADDR == 0 {
        AddrCode::Absent
    } else {
        codes[usize::from(kind)]
    }
}

/// The size class of a request, as the `Alloc` predictor sees it: exact per 16 B up to 64 B,
/// then four classes per doubling, at most 127 (the allocator's bins, frozen here for format
/// version 1).
///
/// Every `Alloc` the encoder and the decoders see asks it: up to [`CLASS_TABLE_BYTES`] it is a
/// table lookup, where the arithmetic took about 20 instructions.
#[inline]
pub fn size_class(size: u64) -> u8 {
    // (`try_from`, not `as`: a 32-bit `usize` would wrap a huge size into the table.)
    match usize::try_from(size.div_ceil(16))
        .ok()
        .and_then(|g| CLASS_BY_GRANULES.get(g))
    {
        Some(&c) => c,
        None => size_class_computed(size),
    }
}

/// The largest request whose class [`size_class`] looks up in [`CLASS_BY_GRANULES`].
const CLASS_TABLE_BYTES: u64 = 4096;

/// [`size_class`] of the requests up to [`CLASS_TABLE_BYTES`], by their 16-byte granules.
const CLASS_BY_GRANULES: [u8; (CLASS_TABLE_BYTES / 16) as usize + 1] = {
    let mut t = [0; (CLASS_TABLE_BYTES / 16) as usize + 1];
    let mut g = 0;
    while g < t.len() {
        t[g] = size_class_computed(g as u64 * 16);
        g += 1;
    }
    t
};

/// [`size_class`] by arithmetic.
const fn size_class_computed(size: u64) -> u8 {
    let granules = size.div_ceil(16);
    let c = if granules <= 4 {
        if granules == 0 { 1 } else { granules }
    } else {
        let w = granules - 1;
        let b = (63 - w.leading_zeros()) as u64;
        ((b << 2) + ((w >> (b - 2)) & 3)) - 3
    };
    if c < CLASSES as u64 - 1 {
        c as u8
    } else {
        CLASSES as u8 - 1
    }
}

/// `Alloc` aux: 0, `class` (the size class of the request: the allocator's bin), or anything
/// else.
#[inline]
fn code_alloc_aux(aux: u16, class: u8) -> u64 {
    match aux {
        0 => 0,
        a if a == u16::from(class) => 1,
        a => u64::from(a) + 2,
    }
}

/// Refs codes below this share their byte with an `Alloc`'s size (version 5, [`joint_code`]).
const JOINT_REFS: u64 = 15;
/// Size high parts (size >> 8) below this are told whole in that byte; from it on, the byte
/// says "at least this" and the arg stream holds the rest.
const JOINT_HIGH: u64 = 16;
const _: () = assert!(JOINT_REFS * JOINT_HIGH < 256);

/// An `Alloc`'s refs code `r` and the high part `hi` of its size (size >> 8) as one byte
/// (version 5), and what goes to the refs stream after it and to the arg stream: 0 and then `r`
/// − [`JOINT_REFS`] when `r` is not small; else 1 + `r` × [`JOINT_HIGH`] + min(`hi`,
/// `JOINT_HIGH` − 1), and `hi` − (`JOINT_HIGH` − 1) when `hi` is not small. zstd's Huffman stage
/// spends at least a bit a byte: the two most common codes of an `Alloc`, each mostly one value,
/// cost about two bits apart and one together.
#[inline]
fn joint_code(r: u64, hi: u64) -> (u8, Option<u64>, Option<u64>) {
    const TOP: u64 = JOINT_HIGH - 1;
    if r < JOINT_REFS {
        let byte = 1 + r * JOINT_HIGH + hi.min(TOP);
        (byte as u8, None, (hi >= TOP).then(|| hi - TOP))
    } else {
        (0, Some(r - JOINT_REFS), Some(hi))
    }
}

/// Reads what [`joint_code`] wrote: the refs code and the size (its low byte from `size_lo`).
#[inline]
fn get_joint(
    refs: &mut Bytes<'_>,
    size_lo: &mut Bytes<'_>,
    arg: &mut Bytes<'_>,
) -> Result<(u64, u64), &'static str> {
    const TOP: u64 = JOINT_HIGH - 1;
    let byte = u64::from(refs.byte()?);
    let (r, hi) = match byte {
        0 => (
            refs.varint()?
                .checked_add(JOINT_REFS)
                .ok_or("refs code overflows")?,
            arg.varint()?,
        ),
        b => {
            let (r, hi) = ((b - 1) / JOINT_HIGH, (b - 1) % JOINT_HIGH);
            if r >= JOINT_REFS {
                return Err("bad joint refs and size byte");
            }
            let hi = if hi == TOP {
                arg.varint()?.checked_add(TOP).ok_or("size overflows")?
            } else {
                hi
            };
            (r, hi)
        }
    };
    if hi >> 56 != 0 {
        return Err("size overflows 64 bits");
    }
    Ok((r, hi << 8 | u64::from(size_lo.byte()?)))
}

/// A wrapping 64-bit difference as a small number whatever its sign (0, -1, 1, -2 ... become
/// 0, 1, 2, 3 ...), and its inverse: one definition with the stream's packing.
pub use heaplens_alloc::pack::{unzigzag, zigzag};

/// [`zigzag`] of a wrapping 32-bit difference.
#[inline]
fn zigzag32(v: u32) -> u64 {
    let s = v as i32;
    u64::from(((s << 1) ^ (s >> 31)) as u32)
}

/// The inverse of [`zigzag32`]; `None` if `v` is wider than 32 bits.
#[inline]
fn unzigzag32(v: u64) -> Option<u32> {
    let v = u32::try_from(v).ok()?;
    Some((v >> 1) ^ (v & 1).wrapping_neg())
}

/// Appends `v` as LEB128.
#[inline(always)]
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        put_varint_long(out, v);
    }
}

#[inline(never)]
fn put_varint_long(out: &mut Vec<u8>, v: u64) {
    // Built on the stack and appended at once: one capacity check instead of one per byte.
    let mut b = [0u8; MAX_VARINT];
    let n = super::sink::leb128(&mut b, v);
    out.extend_from_slice(&b[..n]);
}

/// A bounds-checked reader of bytes and varints.
#[derive(Clone, Copy)]
pub struct Bytes<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    /// Reads `buf` from the start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// One byte.
    #[inline]
    pub fn byte(&mut self) -> Result<u8, &'static str> {
        let b = *self.buf.get(self.pos).ok_or("stream ends early")?;
        self.pos += 1;
        Ok(b)
    }

    /// `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.remaining() {
            return Err("stream ends early");
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A LEB128 value of at most 64 bits.
    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, &'static str> {
        // The common case: one byte.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        self.varint_long()
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64, &'static str> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err("varint overflows 64 bits");
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
            shift += 7;
        }
    }
}

/// The [`STREAMS`] byte streams of an Events payload (its stream lengths, then the streams).
/// `n` streams ([`streams`] of the version); the others are empty.
pub fn split_streams(payload: &[u8], n: usize) -> Result<[&[u8]; STREAMS], &'static str> {
    let mut head = Bytes::new(payload);
    let mut lens = [0usize; STREAMS];
    for len in &mut lens[..n.min(STREAMS)] {
        *len = usize::try_from(head.varint()?).map_err(|_| "stream length too large")?;
    }
    let mut streams: [&[u8]; STREAMS] = [&[]; STREAMS];
    for (s, &len) in streams.iter_mut().zip(&lens) {
        *s = head.take(len)?;
    }
    if head.remaining() != 0 {
        return Err("bytes after the last stream");
    }
    Ok(streams)
}

/// Bytes of an entropy-coded stream [`code_entropy_stream`] compresses to see whether zstd finds
/// repeats in it.
const SAMPLE_BYTES: usize = 16 << 10;

/// A zstd compressor for [`zstd_beats_huffman`]'s samples, and room for what it writes; made at
/// the first sample.
type Sampler = Option<(zstd::bulk::Compressor<'static>, Vec<u8>)>;

/// Codes stream `src` of [`ENTROPY_CODED`] into `out`: Huffman-coded, unless zstd would make it
/// clearly smaller by its repeats, and then stored for zstd to compress with the payload. On
/// larson's chunks these streams are all statistics (Huffman 3.98x on refs where zstd makes
/// 3.75x); a binary-trees program frees its tree in an order that repeats, and its version 7
/// traces were 1.5 times version 6's until this choice (0.03 bytes an event: zstd's long matches).
fn code_entropy_stream(src: &[u8], out: &mut Vec<u8>, sampler: &mut Sampler) {
    if src.len() >= 1024 && zstd_beats_huffman(src, sampler) {
        huffman::store(src, out);
    } else {
        huffman::encode(src, out);
    }
}

/// Whether zstd would code `src` in a sixth fewer bytes than the Huffman coder: both measured
/// on a 16 KiB sample from the stream's middle (zstd at level 1, about 40 us; Huffman by
/// [`huffman::estimated_bytes`], at least a bit a byte: binary trees' refs stream is one value
/// nearly everywhere, 0.06 bits a byte, which zstd's runs code 16 times smaller).
fn zstd_beats_huffman(src: &[u8], sampler: &mut Sampler) -> bool {
    let at = (src.len() / 2).saturating_sub(SAMPLE_BYTES / 2);
    let sample = &src[at..(at + SAMPLE_BYTES).min(src.len())];
    if sampler.is_none() {
        *sampler = zstd::bulk::Compressor::new(1).ok().map(|c| (c, Vec::new()));
    }
    let Some((zstd, room)) = sampler else {
        return false;
    };
    room.clear();
    room.reserve(zstd::zstd_safe::compress_bound(sample.len()));
    let Ok(zstd_bytes) = zstd.compress_to_buffer(sample, room) else {
        return false;
    };
    (zstd_bytes as f64) * 6.0 < huffman::estimated_bytes(sample) * 5.0
}

/// Whether stream `k` of a payload of format `version` is stored entropy-coded
/// ([`ENTROPY_CODED`], from version 7).
pub fn is_entropy_coded(version: u16, k: usize) -> bool {
    Coding::of(version).entropy && ENTROPY_CODED.contains(&k)
}

/// The [`STREAMS`] byte streams of an Events payload of format `version` as the encoder wrote
/// them before storing: the entropy-coded ones decoded ([`is_entropy_coded`]). For tools and
/// tests that look at a stream's bytes; the decoder reads them in place.
pub fn plain_streams(payload: &[u8], version: u16) -> Result<[Vec<u8>; STREAMS], &'static str> {
    let mut streams = split_streams(payload, streams(version))?;
    let mut decoded = Default::default();
    if Coding::of(version).entropy {
        decode_entropy_coded(&mut streams, payload.len().saturating_mul(8), &mut decoded)?;
    }
    Ok(streams.map(<[u8]>::to_vec))
}

/// Decodes the [`ENTROPY_CODED`] streams of `streams` (a payload of version 7 or later, split)
/// into `decoded`, at most `max` bytes each, and points `streams` at them: the streams as the
/// encoder wrote them.
fn decode_entropy_coded<'a>(
    streams: &mut [&'a [u8]; STREAMS],
    max: usize,
    decoded: &'a mut [Vec<u8>; ENTROPY_CODED.len()],
) -> Result<(), &'static str> {
    for (&i, d) in ENTROPY_CODED.iter().zip(decoded.iter_mut()) {
        huffman::decode(streams[i], max, d)?;
    }
    let decoded: &'a [Vec<u8>; ENTROPY_CODED.len()] = decoded;
    for (&i, d) in ENTROPY_CODED.iter().zip(decoded) {
        streams[i] = d;
    }
    Ok(())
}

/// Each stream of an Events payload of format `version`: its bytes before storing, and what it
/// takes after zstd at `level` (the writer's payload goes through zstd whole): a Huffman-coded
/// stream as stored, since zstd finds nothing more in it; any other compressed alone. For tools
/// that say where a trace's bytes go.
pub fn stream_sizes(
    payload: &[u8],
    version: u16,
    level: i32,
) -> Result<[(u64, u64); STREAMS], &'static str> {
    let stored = split_streams(payload, streams(version))?;
    let plain = plain_streams(payload, version)?;
    let mut sizes = [(0, 0); STREAMS];
    for (k, size) in sizes.iter_mut().enumerate() {
        let after = if is_entropy_coded(version, k) && !huffman::is_stored(stored[k]) {
            stored[k].len()
        } else {
            zstd::bulk::compress(&plain[k], level)
                .map_err(|_| "zstd failed")?
                .len()
        };
        *size = (plain[k].len() as u64, after as u64);
    }
    Ok(sizes)
}

/// Writes the times of a batch (version 6) in runs of equal times: per run, its length and
/// zigzag(its time − the time before it, `prev` for the first). Returns the batch's earliest and
/// latest time. The hook stamps events with a clock that moves about once a buffer, so a batch
/// is mostly one run: the time stream then takes two bytes a batch instead of one an event.
fn code_time_runs(time: &mut Sink, events: &[Event], mut prev: u64) -> (u64, u64) {
    let (mut lo, mut hi) = (u64::MAX, 0);
    let mut rest = events;
    while let Some(first) = rest.first() {
        let t = first.time;
        let n = rest.iter().position(|e| e.time != t).unwrap_or(rest.len());
        time.varint(n as u64);
        time.varint(zigzag(t.wrapping_sub(prev)));
        (prev, lo, hi) = (t, lo.min(t), hi.max(t));
        rest = &rest[n..];
    }
    (lo, hi)
}

/// Writes `v` split: its low byte to `lo`, the rest (`v >> 8`) as a varint to `hi`. zstd codes
/// each byte stream with one Huffman table; a random value's low byte is near uniform and its
/// high part small, and kept apart neither blurs the other's statistics as a varint's bytes do.
///
/// # Safety
/// Inside a batch ([`ChunkEncoder::start_batch`]): `lo` has room for this byte and `hi` for a
/// varint (an event writes at most one split value to each pair of streams).
// Always: in `code_ref`'s `put_ref!`, `#[inline]` left a call (1 % of `push_batch`'s
// instructions).
#[inline(always)]
#[allow(unsafe_code)]
unsafe fn put_split(lo: &mut Sink, hi: &mut Sink, v: u64) {
    // SAFETY: forwarded: room for a byte in `lo` and a varint in `hi`.
    unsafe {
        lo.push_in_room(v as u8);
        hi.varint_in_room(v >> 8);
    }
}

/// Reads a value [`put_split`] wrote.
#[inline]
fn get_split(lo: &mut Bytes<'_>, hi: &mut Bytes<'_>) -> Result<u64, &'static str> {
    let l = lo.byte()?;
    let h = hi.varint()?;
    if h >> 56 != 0 {
        return Err("split value overflows 64 bits");
    }
    Ok(h << 8 | u64::from(l))
}

/// Predictor state of one heap, the same on both sides.
struct Predictor {
    /// Last address of each group (`GROUP_ALLOC`: of any `Alloc`).
    last_addr: [u64; GROUPS],
    /// Last carved `Alloc` of each size class.
    class_addr: [u64; CLASSES],
    /// Last carved `Alloc` of any class.
    carved: u64,
    /// Last `Alloc` of each size class, carved or not (version 4: [`PageBase::ClassOfNextAlloc`]).
    class_any: [u64; CLASSES],
    /// Id of the heap's last `StackFrame` node (version 2).
    frame_id: u32,
    /// Stack ids of the heap's latest `Alloc`s with one, most recent first (version 2).
    stacks: [u32; STACK_MRU],
}

impl Default for Predictor {
    fn default() -> Self {
        Self {
            last_addr: [0; GROUPS],
            class_addr: [0; CLASSES],
            carved: 0,
            class_any: [0; CLASSES],
            frame_id: 0,
            stacks: [0; STACK_MRU],
        }
    }
}

impl Predictor {
    /// The prediction for a carved `Alloc` of class `c`.
    #[inline]
    fn alloc_base(&self, c: u8) -> u64 {
        match self.class_addr[usize::from(c)] {
            0 => self.carved,
            a => a,
        }
    }

    #[inline]
    fn note_carved(&mut self, c: u8, addr: u64) {
        self.class_addr[usize::from(c)] = addr;
        self.carved = addr;
    }

    /// The code of an `Alloc`'s stack id: its position among the recent ids; else
    /// `STACK_MRU` + 2 × its number among the ids the heap used in the chunk (`seen`, id ->
    /// number); else, a new one, `STACK_MRU` + 2 × zigzag(id − the heap's last frame id) + 1.
    /// Moves the id to the front of the recent ones.
    #[inline]
    fn code_stack(&mut self, id: u32, seen: &mut StackNumbers) -> u64 {
        let at = self.stacks.iter().position(|&s| s == id);
        let code = match at {
            Some(i) => i as u64,
            None => match seen.number_or_add(id) {
                Some(number) => STACK_MRU as u64 + 2 * u64::from(number),
                None => STACK_MRU as u64 + 2 * zigzag32(id.wrapping_sub(self.frame_id)) + 1,
            },
        };
        self.move_to_front(id, at.unwrap_or(STACK_MRU - 1));
        code
    }

    /// The stack id a [`Predictor::code_stack`] code names (`seen`: the heap's ids used in the
    /// chunk, in order).
    #[inline]
    fn decode_stack(&mut self, code: u64, seen: &mut Vec<u32>) -> Option<u32> {
        let id = match usize::try_from(code) {
            Ok(i) if i < STACK_MRU => self.stacks[i],
            _ => {
                let w = code - STACK_MRU as u64;
                if w & 1 == 0 {
                    *seen.get(usize::try_from(w / 2).ok()?)?
                } else {
                    let id = unzigzag32(w / 2)?.wrapping_add(self.frame_id);
                    seen.push(id);
                    id
                }
            }
        };
        self.note_stack(id);
        Some(id)
    }

    #[inline]
    fn note_stack(&mut self, id: u32) {
        let i = self
            .stacks
            .iter()
            .position(|&s| s == id)
            .unwrap_or(STACK_MRU - 1);
        self.move_to_front(id, i);
    }

    /// Puts `id` first among the recent stack ids, moving those before position `i` one down
    /// (the one at `i` drops out). Selects over the fixed few, where `copy_within` called
    /// `memmove` for every `Alloc` under `--stacks all`.
    #[inline]
    fn move_to_front(&mut self, id: u32, i: usize) {
        let old = self.stacks;
        for k in 1..STACK_MRU {
            self.stacks[k] = if k <= i { old[k - 1] } else { old[k] };
        }
        self.stacks[0] = id;
    }

    /// The code of a `StackFrame`'s node id: zigzag(id − (the heap's last node id + 1)).
    #[inline]
    fn code_frame_id(&mut self, id: u32) -> u64 {
        let code = zigzag32(id.wrapping_sub(self.frame_id.wrapping_add(1)));
        self.frame_id = id;
        code
    }

    /// The node id a [`Predictor::code_frame_id`] code names.
    #[inline]
    fn decode_frame_id(&mut self, code: u64) -> Option<u32> {
        let id = unzigzag32(code)?.wrapping_add(self.frame_id.wrapping_add(1));
        self.frame_id = id;
        Some(id)
    }
}

/// The stack ids one heap's `Alloc`s used in a chunk, numbered in order of first use (the
/// encoder's side of `seen`). Under `--stacks all` most `Alloc`s whose id is not among the
/// recent few look theirs up here, and a program whose stacks are many (binary trees: a stack
/// for each path from the root, 10^5 and more) made `std`'s map, beyond the cache, a tenth of
/// `heaplens record`'s time. An [`AddrMap`] takes one cache line a lookup, which the encoder
/// starts loading a few events ahead ([`StackNumbers::prefetch`]); with the prefetch, the
/// recorder's encoding threads took 16-25 % fewer samples recording binary trees under
/// `--stacks all` (perf, three pairs of runs), the file byte for byte the same.
///
/// It makes its map at its first id: a heap's state is moved out of its list for each batch,
/// and the empty state left behind must cost nothing to make.
#[derive(Default)]
struct StackNumbers(Option<AddrMap>);

impl StackNumbers {
    /// Where `id` is kept in the map, whose hash ignores an address's low four bits.
    #[inline]
    fn key(id: u32) -> u64 {
        u64::from(id) << 4
    }

    /// The number of `id`, or `None` if it is new (it then takes the next number).
    #[inline]
    fn number_or_add(&mut self, id: u32) -> Option<u32> {
        let map = self.0.get_or_insert_with(AddrMap::new);
        let next = map.len() as u64;
        map.insert_new(Self::key(id), next).map(|n| n as u32)
    }

    /// Starts loading where `id` is looked up.
    #[inline]
    fn prefetch(&self, id: u32) {
        if let Some(map) = &self.0 {
            map.prefetch(Self::key(id));
        }
    }
}

impl Empty for StackNumbers {
    fn empty(&mut self) {
        if let Some(map) = &mut self.0 {
            map.clear();
        }
    }
}

/// A freed stack's cursor: the entry number the next reuse is expected at.
#[inline]
fn ref_code(next: i64, len: u32, seq: u32) -> u64 {
    let from_next = zigzag(next.wrapping_sub(i64::from(seq)) as u64);
    let from_top = u64::from(len - 1 - seq);
    if from_next <= from_top {
        2 * from_next + 1
    } else {
        2 * from_top + 2
    }
}

/// What the encoder knows about an address in this chunk. Heaps are named by their slot in
/// the chunk's heap list. Kept in the [`AddrMap`] packed in a word ([`Block::pack`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    /// Allocated by heap `slot`, its `in_heap`-th `Alloc` (and `in_chunk`-th in the chunk).
    Live {
        slot: u32,
        in_heap: u32,
        in_chunk: u32,
        class: u8,
    },
    /// Freed: entry `seq` of the freed stack of heap `slot` and `class` (version 5: of its
    /// freed stack number `stack` in the heap's, per class and page).
    Freed {
        slot: u32,
        class: u8,
        seq: u32,
        stack: u32,
    },
}

impl Block {
    // The packed layout: bit 63 tells Freed from Live; slot (12 bits: fewer than
    // MAX_CHUNK_HEAPS), class (7 bits: fewer than CLASSES), then 20-bit counts (each below
    // MAX_CHUNK_EVENTS; a freed stack's number too, as a chunk has fewer stacks than events).
    const FREED: u64 = 1 << 63;

    #[inline]
    fn pack(self) -> u64 {
        match self {
            Block::Live {
                slot,
                in_heap,
                in_chunk,
                class,
            } => {
                u64::from(slot)
                    | u64::from(class) << 12
                    | u64::from(in_heap) << 19
                    | u64::from(in_chunk) << 39
            }
            Block::Freed {
                slot,
                class,
                seq,
                stack,
            } => {
                Self::FREED
                    | u64::from(slot)
                    | u64::from(class) << 12
                    | u64::from(seq) << 19
                    | u64::from(stack) << 39
            }
        }
    }

    #[inline]
    fn unpack(v: u64) -> Self {
        let slot = (v & 0xfff) as u32;
        let class = ((v >> 12) & 0x7f) as u8;
        let count = |shift: u32| ((v >> shift) & 0xf_ffff) as u32;
        if v & Self::FREED != 0 {
            Block::Freed {
                slot,
                class,
                seq: count(19),
                stack: count(39),
            }
        } else {
            Block::Live {
                slot,
                in_heap: count(19),
                in_chunk: count(39),
                class,
            }
        }
    }
}

const _: () = {
    assert!(MAX_CHUNK_HEAPS <= 1 << 12);
    assert!(CLASSES <= 1 << 7);
    assert!(super::format::MAX_CHUNK_EVENTS <= 1 << 20);
};

/// A freed stack on the encoder side: how many entries, and the cursor.
#[derive(Clone, Copy)]
struct StackHead {
    len: u32,
    next: i64,
}

impl Default for StackHead {
    fn default() -> Self {
        Self { len: 0, next: -1 }
    }
}

/// One heap's state in a chunk, on either side: the predictor; its `Alloc`s (`A`: the encoder
/// counts them, the decoder keeps each one's address, class and page stack); its freed stacks
/// per size class and, from version 5, per class and page (`K`: the encoder's heads, the
/// decoder's stacks; a freed block's [`Block::Freed`] names its stack by number, so a reuse
/// looks nothing up); and the stack ids its `Alloc`s used in the chunk, in first use order
/// (`S`: numbered by id on the encoder's side, [`StackNumbers`], looked up for most `Alloc`s
/// under `--stacks all`; listed on the decoder's).
#[derive(Default)]
struct ChunkHeap<A, K, S> {
    pred: Predictor,
    allocs: A,
    stacks: Vec<K>,
    page_stacks: PageStacks<K>,
    seen: S,
}

/// Encoder state of one heap.
type EncodeHeap = ChunkHeap<u32, StackHead, StackNumbers>;

/// Decoder state of one heap.
type DecodeHeap = ChunkHeap<Vec<(u64, u8, u32)>, Stack, Vec<u32>>;

/// State emptied for the next chunk, keeping its room.
trait Empty {
    fn empty(&mut self);
}

impl Empty for u32 {
    fn empty(&mut self) {
        *self = 0;
    }
}

impl<T> Empty for Vec<T> {
    fn empty(&mut self) {
        self.clear();
    }
}

impl<A: Empty, K: Default, S: Empty> ChunkHeap<A, K, S> {
    /// Back to its state at the start of a chunk ([`Default`]), its maps and vectors keeping
    /// their room (the heaps of a chunk are kept for the next one's: growing a heap's list of
    /// `Alloc`s anew for each chunk copied it at each doubling).
    fn empty(&mut self) {
        // Every field named: one added later must be emptied here too.
        let ChunkHeap {
            pred,
            allocs,
            stacks,
            page_stacks,
            seen,
        } = self;
        *pred = Predictor::default();
        allocs.empty();
        stacks.clear();
        page_stacks.empty();
        seen.empty();
    }

    /// The freed stack of size class `c` (versions before 5).
    fn stack(&mut self, c: u8) -> &mut K {
        let c = usize::from(c);
        if self.stacks.len() <= c {
            self.stacks.resize_with(c + 1, K::default);
        }
        &mut self.stacks[c]
    }
}

/// The key of a freed stack of version 5: size class `c` and the page ([`PAGE_GRAIN`]) of `addr`.
#[inline]
fn page_key(c: u8, addr: u64) -> u64 {
    (addr & !(PAGE_GRAIN - 1)) | u64::from(c)
}

/// The freed stacks of one heap per size class and page (version 5), numbered in order of
/// creation, on either side (`T`: the encoder's heads or the decoder's stacks).
struct PageStacks<T> {
    stacks: Vec<T>,
    /// Their numbers by [`page_key`], rotated past the bits the map's hash ignores (a
    /// `HashMap` here was 2 % of `heaplens record ./churn_mt`'s samples).
    numbers: AddrMap,
    /// Per class, the key and number of the last one looked up: a class allocates from one page
    /// for a while, and its blocks are often freed in runs too, so most lookups stop here.
    last: Vec<(u64, u32)>,
}

impl<T> Default for PageStacks<T> {
    fn default() -> Self {
        Self {
            stacks: Vec::new(),
            numbers: AddrMap::with_slots(16),
            last: Vec::new(),
        }
    }
}

impl<T> PageStacks<T> {
    /// Back to no stacks ([`Default`]), keeping the room.
    fn empty(&mut self) {
        let PageStacks {
            stacks,
            numbers,
            last,
        } = self;
        stacks.clear();
        numbers.clear();
        last.clear();
    }
}

impl<T: Default> PageStacks<T> {
    /// The number of the stack of class `c` and the page of `addr`, made empty if new.
    #[inline(always)]
    fn number(&mut self, c: u8, addr: u64) -> u32 {
        let key = page_key(c, addr);
        match self.last.get(usize::from(c)) {
            Some(&(k, n)) if k == key => n,
            _ => self.look_up(c, key),
        }
    }

    /// [`PageStacks::number`] of a key that is not its class's last one (one free in 20 on a
    /// server-like program, 1 in 6 on random frees).
    #[cold]
    #[inline(never)]
    fn look_up(&mut self, c: u8, key: u64) -> u32 {
        if self.last.is_empty() {
            self.last = vec![(u64::MAX, 0); CLASSES];
        }
        let next = self.stacks.len() as u64;
        let n = match self.numbers.insert_new(key.rotate_left(4), next) {
            Some(n) => n as u32,
            None => {
                self.stacks.push(T::default());
                next as u32
            }
        };
        self.last[usize::from(c)] = (key, n);
        n
    }
}

/// A page difference in pages (`to` and `from` are page starts), as a small number.
#[inline]
fn page_delta(to: u64, from: u64) -> u64 {
    zigzag((to.wrapping_sub(from) as i64 >> PAGE_GRAIN.trailing_zeros()) as u64)
}

/// The page `page_delta(to, from)` names.
#[inline]
fn page_at(from: u64, delta: u64) -> u64 {
    from.wrapping_add(unzigzag(delta) << PAGE_GRAIN.trailing_zeros())
}

/// The slot of `heap` in a chunk's heap list, adding it if new: one of `spare` (the heaps of
/// chunks before, emptied, which keep their room) or a new one.
fn slot_of<T: Default>(
    index: &mut HashMap<u32, usize>,
    heaps: &mut Vec<T>,
    spare: &mut Vec<T>,
    heap: u32,
) -> usize {
    *index.entry(heap).or_insert_with(|| {
        heaps.push(spare.pop().unwrap_or_default());
        heaps.len() - 1
    })
}

/// Builds the payload of one Events chunk, batch by batch.
pub struct ChunkEncoder {
    coding: Coding,
    streams: Streams,
    index: HashMap<u32, usize>,
    /// Boxed: a batch takes its heap's state out for its length (see `start_batch`) by
    /// swapping two pointers, where moving the state itself copied it twice and built an
    /// empty one to leave in its place.
    #[allow(clippy::vec_box)] // the boxes are the point: see above
    heaps: Vec<Box<EncodeHeap>>,
    /// The heaps of chunks finished before, emptied, for the next chunk's: their maps keep
    /// their room instead of growing again for each chunk.
    #[allow(clippy::vec_box)] // as `heaps`, whose boxes they become
    spare: Vec<Box<EncodeHeap>>,
    /// What stands in the list for the heap a batch has taken out.
    parked: Option<Box<EncodeHeap>>,
    blocks: AddrMap,
    allocs: u32,
    prev_time: u64,
    events: u32,
    start_time: u64,
    end_time: u64,
    /// The index in the batch being coded of its next `Alloc` after the last page event that
    /// looked (the batch's length if none), for [`PageBase::NextAlloc`].
    next_alloc: usize,
    /// Whether the last reference coded named another heap's `Alloc`.
    other_heaps: bool,
    /// The index in the batch being coded after its last page event (0 before the first).
    after_page: usize,
    /// The [`ENTROPY_CODED`] streams' coded bytes, while a payload is written (kept for their
    /// room).
    coded: [Vec<u8>; ENTROPY_CODED.len()],
    /// Compresses a sample of each such stream, to see whether zstd would find repeats in it
    /// ([`code_entropy_stream`]).
    sampler: Sampler,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    /// An empty chunk of the version this build writes.
    pub fn new() -> Self {
        Self::for_version(super::format::VERSION)
    }

    /// An empty chunk of format `version` (1 up to [`super::format::VERSION`]; a later one is
    /// written as this build's).
    pub fn for_version(version: u16) -> Self {
        Self {
            coding: Coding::of(version),
            streams: Default::default(),
            index: HashMap::new(),
            heaps: Vec::new(),
            spare: Vec::new(),
            parked: Some(Box::default()),
            blocks: AddrMap::new(),
            allocs: 0,
            prev_time: 0,
            events: 0,
            start_time: u64::MAX,
            end_time: 0,
            next_alloc: 0,
            other_heaps: false,
            after_page: 0,
            coded: Default::default(),
            sampler: None,
        }
    }

    /// Events encoded so far.
    pub fn len(&self) -> u32 {
        self.events
    }

    /// Whether no event was encoded.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Whether a batch of `heap` fits the chunk's heap limit ([`MAX_CHUNK_HEAPS`]).
    pub fn has_room_for(&self, heap: u32) -> bool {
        self.heaps.len() < MAX_CHUNK_HEAPS || self.index.contains_key(&heap)
    }

    /// Earliest and latest event time (`(0, 0)` when empty).
    pub fn time_range(&self) -> (u64, u64) {
        if self.events == 0 {
            (0, 0)
        } else {
            (self.start_time, self.end_time)
        }
    }

    /// Encodes a batch of one heap's events.
    pub fn push_batch(&mut self, heap: u32, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        if self.coding.latest {
            self.push_events::<true>(heap, events);
        } else {
            self.push_events::<false>(heap, events);
        }
    }

    /// [`ChunkEncoder::push_batch`] of a non-empty batch, in the coding of the latest version if
    /// `L` (else in `self.coding`'s).
    fn push_events<const L: bool>(&mut self, heap: u32, events: &[Event]) {
        let (cur, mut h) = self.start_batch(heap, events.len());
        // The times, and the time range, in a pass of their own: in the loop below the range's
        // two compares were among a dozen values kept on the stack.
        let runs = self.coding.time_runs::<L>();
        let (lo, hi) = if runs {
            code_time_runs(&mut self.streams.time, events, self.prev_time)
        } else {
            events.iter().fold((u64::MAX, 0), |(lo, hi), e| {
                (lo.min(e.time), hi.max(e.time))
            })
        };
        self.start_time = self.start_time.min(lo);
        self.end_time = self.end_time.max(hi);
        let mut prev_time = self.prev_time;
        // A table that stays in the cache is not prefetched (binary trees' chunks of 156
        // blocks: 4 % fewer instructions in this loop).
        let prefetch = !self.blocks.stays_in_cache();
        for (i, e) in events.iter().enumerate() {
            // The address lookups miss the cache: start the one of an event a few ahead. (The
            // events themselves are in the cache: the time pass above read them all.)
            if prefetch && let Some(ahead) = events.get(i + PREFETCH_AHEAD) {
                self.blocks.prefetch(ahead.addr);
            }
            if !runs {
                self.streams
                    .time
                    .varint(zigzag(e.time.wrapping_sub(prev_time)));
                prev_time = e.time;
            }
            self.code_event::<L>(&mut h, cur, e, events, i);
        }
        if self.coding.pages::<L>() {
            // The events after the batch's last page event.
            let gap = events.len() - self.after_page;
            self.streams.page_ops.varint(gap as u64);
        }
        // In runs or not, the times end at the batch's last one.
        self.prev_time = events.last().map_or(prev_time, |e| e.time);
        self.parked = Some(std::mem::replace(&mut self.heaps[cur], h));
        self.events += events.len() as u32;
    }

    /// Begins a batch of `n` events of `heap`: writes its head, and takes the heap's state out
    /// of the list (most events touch it, and a local needs no bounds check); returns its slot
    /// and state, to put back after.
    fn start_batch(&mut self, heap: u32, n: usize) -> (usize, Box<EncodeHeap>) {
        // Room for the batch at its widest (wide events with flags), so that no write grows a
        // stream.
        let s = &mut self.streams;
        s.ops.room(2 * MAX_VARINT + 3 * n);
        s.ref_lo.room(n);
        s.size_lo.room(n);
        // Version 6's time runs take up to two values an event.
        s.time.room(2 * MAX_VARINT * n);
        for wide in [
            &mut s.refs,
            &mut s.addr,
            &mut s.aux,
            &mut s.arg32,
            &mut s.arg,
            &mut s.ref_hi,
        ] {
            wide.room(MAX_VARINT * n);
        }
        s.page_addr.room(MAX_VARINT * n);
        s.page.room(3 * MAX_VARINT * n);
        s.page_ops.room(MAX_VARINT + 2 * MAX_VARINT * n);
        s.flags.room(n);
        self.streams.ops.varint(u64::from(heap));
        self.streams.ops.varint(n as u64);
        self.next_alloc = 0;
        self.after_page = 0;
        let cur = slot_of(&mut self.index, &mut self.heaps, &mut self.spare, heap);
        let parked = self.parked.take().unwrap_or_default();
        (cur, std::mem::replace(&mut self.heaps[cur], parked))
    }

    /// Codes event `e`, number `i` of a batch of heap `cur` (state `h`), but its time.
    #[inline(always)]
    fn code_event<const L: bool>(
        &mut self,
        h: &mut EncodeHeap,
        cur: usize,
        e: &Event,
        batch: &[Event],
        i: usize,
    ) {
        // The two kinds of nearly every event, narrow and without flags, go straight to their
        // codings (the same as `code_fields`', without looking up how).
        if e.kind == ALLOC && e.flags == 0 {
            if e.arg32 == 0 {
                // SAFETY: in a batch (`push_events`), whose room is at least 3 op bytes an event.
                #[allow(unsafe_code)]
                unsafe {
                    self.streams
                        .ops
                        .push_in_room(op_of(ALLOC, false, false) as u8);
                };
                self.code_alloc::<L>(h, cur, e);
                return;
            }
            if L {
                return self.code_alloc_with_stack(h, cur, e, batch.get(i + PREFETCH_AHEAD));
            }
        }
        let bare = e.flags == 0 && e.arg32 == 0;
        if e.kind == FREE && self.coding.pages::<L>() {
            return self.code_free::<L>(h, cur, e, batch, i);
        }
        if e.kind == FREE && bare && e.aux == 0 && e.arg == 0 {
            self.streams.ops.push(op_of(FREE, false, false) as u8);
            self.code_ref::<L>(h, cur, e);
            return;
        }
        let (f, wide) = present(self.coding.fields::<L>(), e);
        let op = op_of(e.kind, wide, e.flags != 0);
        let paged = self.is_paged::<L>(e.kind);
        // A page event's op goes to the page stream (version 4): the ops stream keeps its
        // pattern of allocations and frees, which zstd finds as repeats.
        let s = &mut self.streams;
        if paged {
            // The events since the batch's start or its last page event.
            s.page_ops.varint((i - self.after_page) as u64);
            self.after_page = i + 1;
        }
        let ops = if paged { &mut s.page_ops } else { &mut s.ops };
        ops.varint(op);
        if e.flags != 0 {
            // From version 4 in a stream of their own, where they do not break the ops' repeats.
            if self.coding.pages::<L>() {
                &mut s.flags
            } else {
                ops
            }
            .push(e.flags);
        }
        self.code_fields::<L>(h, cur, batch, i, f);
    }

    /// An `Alloc` with a stack id, without flags, in the latest version (`--stacks all`, or a
    /// sampled one): wide, its four fields as `code_fields` writes them (the refs code and the
    /// size together, the stack id predicted). Out of the loop, which keeps its registers for
    /// the events without one. Starts loading where the stack id of `ahead`, the event a few
    /// later, is numbered (here, where the events without a stack never pass).
    #[inline(never)]
    fn code_alloc_with_stack(
        &mut self,
        h: &mut EncodeHeap,
        cur: usize,
        e: &Event,
        ahead: Option<&Event>,
    ) {
        if let Some(a) = ahead.filter(|a| a.arg32 != 0) {
            h.seen.prefetch(a.arg32);
        }
        self.streams.ops.push(op_of(ALLOC, true, false) as u8);
        let class = self.code_alloc_addr::<true>(h, cur, e);
        let s = &mut self.streams;
        s.aux.varint(code_alloc_aux(e.aux, class));
        s.arg32.varint(h.pred.code_stack(e.arg32, &mut h.seen));
    }

    /// A `Free` (version 4): its flags are coded against the `CROSS_THREAD` its reference
    /// predicts, so its op is written after its address.
    #[inline(always)]
    fn code_free<const L: bool>(
        &mut self,
        h: &mut EncodeHeap,
        cur: usize,
        e: &Event,
        batch: &[Event],
        i: usize,
    ) {
        // Narrow, its address alone; wide, all four fields (the address by reference too). The
        // fields are or-ed, not compared one by one: one test instead of a chain of three.
        let wide = if (u64::from(e.arg32) | u64::from(e.aux) | e.arg) == 0 {
            self.code_ref::<L>(h, cur, e);
            false
        } else {
            let (f, wide) = present(self.coding.fields::<L>(), e);
            self.code_fields::<L>(h, cur, batch, i, f);
            wide
        };
        let predicted = if self.other_heaps { CROSS_THREAD } else { 0 };
        let flags = e.flags ^ predicted;
        let s = &mut self.streams;
        // SAFETY: in a batch (`push_events`), whose room is at least 3 op bytes an event (this
        // event writes no other).
        #[allow(unsafe_code)]
        unsafe {
            s.ops.push_in_room(op_of(FREE, wide, flags != 0) as u8);
        };
        if flags != 0 {
            s.flags.push(flags);
        }
    }

    /// Whether an event of `kind` is coded in the page streams (version 4).
    #[inline]
    fn is_paged<const L: bool>(&self, kind: u8) -> bool {
        // Only the tables of version 4 on code addresses as pages.
        matches!(
            self.coding.codes::<L>()[usize::from(kind)],
            AddrCode::Page(_)
        )
    }

    /// Codes the fields `f` of event `i` of a batch of heap `cur` (state `h`), by its kind's
    /// codings.
    fn code_fields<const L: bool>(
        &mut self,
        h: &mut EncodeHeap,
        cur: usize,
        batch: &[Event],
        i: usize,
        f: u8,
    ) {
        let e = &batch[i];
        let (codes, stacks, split) = (
            self.coding.codes::<L>(),
            self.coding.stacks::<L>(),
            self.coding.split::<L>(),
        );
        match addr_code(codes, e.kind, f) {
            AddrCode::Alloc => {
                self.code_alloc_addr::<L>(h, cur, e);
            }
            AddrCode::Ref => self.code_ref::<L>(h, cur, e),
            AddrCode::Delta(g) => {
                let last = &mut h.pred.last_addr[usize::from(g)];
                self.streams.addr.varint(zigzag(e.addr.wrapping_sub(*last)));
                *last = e.addr;
            }
            AddrCode::Page(base) => {
                let base = self.page_base(h, batch, i, base);
                self.streams
                    .page_addr
                    .varint(zigzag(e.addr.wrapping_sub(base)));
            }
            AddrCode::Plain => self.streams.addr.varint(e.addr),
            AddrCode::Absent => {}
        }
        if self.is_paged::<L>(e.kind) {
            // A page event's other fields, plain, in the page stream (version 4).
            let page = &mut self.streams.page;
            for (bit, v) in [
                (field::AUX, u64::from(e.aux)),
                (field::ARG32, u64::from(e.arg32)),
                (field::ARG, e.arg),
            ] {
                if f & bit != 0 {
                    page.varint(v);
                }
            }
            return;
        }
        let s = &mut self.streams;
        if f & field::AUX != 0 {
            match e.kind {
                SIZE_CLASS_AUX => s.aux.varint(code_alloc_aux(e.aux, size_class(e.arg))),
                _ => s.aux.varint(u64::from(e.aux)),
            }
        }
        if f & field::ARG32 != 0 {
            let v = match e.kind {
                STACK_ID_ARG32 if stacks => h.pred.code_stack(e.arg32, &mut h.seen),
                STACK_FRAME if stacks => h.pred.code_frame_id(e.arg32),
                _ => u64::from(e.arg32),
            };
            s.arg32.varint(v);
        }
        if f & field::ARG != 0 {
            match e.kind {
                AFTER_FREE_ARG => {
                    let last = h.pred.last_addr[GROUP_FREE];
                    s.arg.varint(zigzag(e.arg.wrapping_sub(last)));
                }
                // The parent, against the node's own id.
                STACK_FRAME if stacks => {
                    s.arg.varint(zigzag(u64::from(e.arg32).wrapping_sub(e.arg)));
                }
                // Version 5: written with the address (`joint_code`).
                ALLOC if self.coding.joint::<L>() => {}
                // SAFETY: in a batch (`push_events`); a wide `Alloc` writes one size (the
                // split version's `code_alloc_addr` writes none).
                #[allow(unsafe_code)]
                ALLOC if split => unsafe { put_split(&mut s.size_lo, &mut s.arg, e.arg) },
                _ => s.arg.varint(e.arg),
            }
        }
    }

    /// What the address of page event `i` of a batch is coded against ([`PageBase`]); notes it
    /// for the next event coded against the last page.
    fn page_base(&mut self, h: &mut EncodeHeap, batch: &[Event], i: usize, base: PageBase) -> u64 {
        let page = |a: u64| a & !(PAGE_GRAIN - 1);
        match base {
            PageBase::LastPage => {
                std::mem::replace(&mut h.pred.last_addr[GROUP_PAGE], batch[i].addr)
            }
            PageBase::LastFree => page(h.pred.last_addr[GROUP_FREE]),
            PageBase::NextAlloc | PageBase::ClassOfNextAlloc => {
                if self.next_alloc <= i {
                    self.next_alloc = batch[i + 1..]
                        .iter()
                        .position(|e| e.kind == ALLOC)
                        .map_or(batch.len(), |p| i + 1 + p);
                }
                match batch.get(self.next_alloc) {
                    None => 0,
                    Some(a) if base == PageBase::NextAlloc => page(a.addr),
                    Some(a) => page(h.pred.class_any[usize::from(size_class(a.arg))]),
                }
            }
        }
    }

    /// A narrow `Alloc` (addr, aux, arg): [`ChunkEncoder::code_fields`] of its field set.
    #[inline(always)]
    fn code_alloc<const L: bool>(&mut self, h: &mut EncodeHeap, cur: usize, e: &Event) {
        if !self.coding.split::<L>() {
            return self.code_fields::<L>(h, cur, std::slice::from_ref(e), 0, ALLOC_FIELDS);
        }
        let class = self.code_alloc_addr::<L>(h, cur, e);
        let s = &mut self.streams;
        // SAFETY: in a batch (`push_events`), whose room is a varint an event in the aux and
        // arg streams and a byte an event in the size stream; a narrow `Alloc` writes one aux
        // value and at most one size.
        #[allow(unsafe_code)]
        unsafe {
            s.aux.varint_in_room(code_alloc_aux(e.aux, class));
            if !self.coding.joint::<L>() {
                put_split(&mut s.size_lo, &mut s.arg, e.arg);
            }
        }
    }

    /// The address of an `Alloc` of heap `cur`: a block freed earlier in the chunk, else
    /// carved. Returns the request's size class.
    #[inline(always)]
    fn code_alloc_addr<const L: bool>(&mut self, h: &mut EncodeHeap, cur: usize, e: &Event) -> u8 {
        let c = size_class(e.arg);
        let live = Block::Live {
            slot: cur as u32,
            in_heap: h.allocs,
            in_chunk: self.allocs,
            class: c,
        };
        let Streams {
            refs,
            addr,
            size_lo,
            arg,
            ..
        } = &mut self.streams;
        let r = match self.blocks.insert(e.addr, live.pack()).map(Block::unpack) {
            // Version 5: the block's page's freed stack. On the page of the class's last
            // `Alloc` (mostly: the allocator takes blocks from one page until it runs out), the
            // reference + 1; on another, 1, and in the addr stream the page and the reference.
            Some(Block::Freed {
                slot,
                class,
                seq,
                stack,
            }) if slot as usize == cur && class == c && self.coding.joint::<L>() => {
                let page = e.addr & !(PAGE_GRAIN - 1);
                let predicted = h.pred.class_any[usize::from(c)] & !(PAGE_GRAIN - 1);
                let s = &mut h.page_stacks.stacks[stack as usize];
                let r = ref_code(s.next, s.len, seq);
                s.next = i64::from(seq) - 1;
                if page == predicted {
                    r + 1
                } else {
                    addr.varint(page_delta(page, predicted));
                    addr.varint(r);
                    1
                }
            }
            Some(Block::Freed {
                slot, class, seq, ..
            }) if slot as usize == cur && class == c => {
                let s = h.stack(c);
                let r = ref_code(s.next, s.len, seq);
                s.next = i64::from(seq) - 1;
                r
            }
            _ => {
                addr.varint(zigzag(e.addr.wrapping_sub(h.pred.alloc_base(c))));
                h.pred.note_carved(c, e.addr);
                0
            }
        };
        if self.coding.joint::<L>() {
            // Version 5: the refs code with the size (which code_fields then leaves out).
            let (byte, more_refs, more_size) = joint_code(r, e.arg >> 8);
            // SAFETY: in a batch (`push_events`), whose room is a varint an event in the refs
            // stream (this byte and a reference below 2^21 take at most 4) and a byte an event
            // in the size stream (an `Alloc`'s one).
            #[allow(unsafe_code)]
            unsafe {
                refs.push_in_room(byte);
            };
            if let Some(v) = more_refs {
                refs.varint(v);
            }
            if let Some(v) = more_size {
                arg.varint(v);
            }
            // SAFETY: as above.
            #[allow(unsafe_code)]
            unsafe {
                size_lo.push_in_room(e.arg as u8);
            };
        } else {
            refs.varint(r);
        }
        h.pred.last_addr[GROUP_ALLOC] = e.addr;
        h.pred.class_any[usize::from(c)] = e.addr;
        h.allocs += 1;
        self.allocs += 1;
        c
    }

    /// The address of a `Free` or `Resize` of heap `cur`: a reference to the block's `Alloc`
    /// in the chunk, else a delta.
    #[inline(always)]
    fn code_ref<const L: bool>(&mut self, h: &mut EncodeHeap, cur: usize, e: &Event) {
        let split = self.coding.split::<L>();
        let Streams {
            refs,
            addr,
            ref_lo,
            ref_hi,
            ..
        } = &mut self.streams;
        // A reference: split from version 3, else a varint.
        macro_rules! put_ref {
            ($v:expr) => {
                if split {
                    // SAFETY: in a batch (`push_events`), whose room is a byte an event in the
                    // reference's low stream and a varint in its high one; an event has one
                    // reference.
                    #[allow(unsafe_code)]
                    unsafe {
                        put_split(ref_lo, ref_hi, $v);
                    };
                } else {
                    refs.varint($v);
                }
            };
        }
        let found = self.blocks.get_mut(e.addr);
        match found.as_ref().map(|b| Block::unpack(**b)) {
            Some(Block::Live {
                slot,
                in_heap,
                in_chunk,
                class,
            }) => {
                self.other_heaps = slot as usize != cur;
                let owner = if slot as usize == cur {
                    put_ref!(1 + 2 * u64::from(h.allocs - 1 - in_heap));
                    &mut *h
                } else {
                    put_ref!(2 + 2 * u64::from(self.allocs - 1 - in_chunk));
                    &mut *self.heaps[slot as usize]
                };
                if e.kind == FREE {
                    let (s, stack) = if self.coding.joint::<L>() {
                        let n = owner.page_stacks.number(class, e.addr);
                        (&mut owner.page_stacks.stacks[n as usize], n)
                    } else {
                        (owner.stack(class), 0)
                    };
                    if let Some(b) = found {
                        *b = Block::Freed {
                            slot,
                            class,
                            seq: s.len,
                            stack,
                        }
                        .pack();
                    }
                    s.len += 1;
                }
            }
            _ => {
                self.other_heaps = false;
                put_ref!(0);
                let last = h.pred.last_addr[GROUP_FREE];
                addr.varint(zigzag(e.addr.wrapping_sub(last)));
            }
        }
        h.pred.last_addr[GROUP_FREE] = e.addr;
    }

    /// Writes the payload to `out` (cleared first) and starts a new chunk.
    pub fn finish_into(&mut self, out: &mut Vec<u8>) {
        let entropy = self.coding.entropy;
        let mut all = self.streams.all();
        if entropy {
            for (&i, coded) in ENTROPY_CODED.iter().zip(&mut self.coded) {
                coded.clear();
                code_entropy_stream(all[i].bytes(), coded, &mut self.sampler);
            }
        }
        let streams = &mut all[..self.coding.streams];
        let coded = &self.coded;
        // Stream i's coded bytes, if it is stored coded.
        let coded_of = |i: usize| {
            ENTROPY_CODED
                .iter()
                .position(|&c| entropy && c == i)
                .map(|k| &coded[k])
        };
        let bytes = |i: usize, s: &Sink| coded_of(i).map_or(s.len(), Vec::len);
        // The payload's whole size at once: grown stream by stream, a payload buffer was
        // copied at each doubling and ended up with room for twice its bytes.
        super::sink::room_for(
            out,
            streams
                .iter()
                .enumerate()
                .map(|(i, s)| MAX_VARINT + bytes(i, s))
                .sum(),
        );
        for (i, s) in streams.iter().enumerate() {
            put_varint(out, bytes(i, s) as u64);
        }
        for (i, s) in streams.iter_mut().enumerate() {
            out.extend_from_slice(coded_of(i).map_or(s.bytes(), Vec::as_slice));
            s.clear();
        }
        self.index.clear();
        for mut h in self.heaps.drain(..) {
            h.empty();
            self.spare.push(h);
        }
        self.blocks.clear();
        self.allocs = 0;
        self.prev_time = 0;
        self.events = 0;
        self.start_time = u64::MAX;
        self.end_time = 0;
    }
}

/// A freed stack on the decoder side.
struct Stack {
    addrs: Vec<u64>,
    next: i64,
}

impl Default for Stack {
    fn default() -> Self {
        Self {
            addrs: Vec::new(),
            next: -1,
        }
    }
}

impl Stack {
    /// The block a reference `v` (`2v + 1` from the cursor, `2v + 2` from the top) names; moves
    /// the cursor below it.
    fn take(&mut self, v: u64) -> Result<u64, &'static str> {
        let len = self.addrs.len() as i64;
        let back = (v - 1) >> 1;
        let seq = if v & 1 == 1 {
            self.next.wrapping_sub(unzigzag(back) as i64)
        } else {
            (len - 1).wrapping_sub(back as i64)
        };
        if !(0..len).contains(&seq) {
            return Err("reference to no freed block");
        }
        self.next = seq - 1;
        Ok(self.addrs[seq as usize])
    }
}

/// Decodes Events payloads of one format version. Keeps its scratch space from one chunk to the
/// next.
pub struct Decoder {
    index: HashMap<u32, usize>,
    heaps: Vec<DecodeHeap>,
    /// The heaps of chunks decoded before, emptied, for the next chunk's: their vectors keep
    /// their room (a heap's `Alloc`s, grown anew for each chunk, were copied at each doubling:
    /// 16 MB a chunk of larson's trace).
    spare: Vec<DecodeHeap>,
    /// Every `Alloc` of the chunk: address, heap slot, class.
    all_allocs: Vec<(u64, u32, u8, u32)>,
    coding: Coding,
    /// The [`ENTROPY_CODED`] streams decoded (kept for their room).
    decoded: [Vec<u8>; ENTROPY_CODED.len()],
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Events decoded a column at a time.
const BLOCK: usize = 1024;

impl Decoder {
    /// A decoder of the version this build writes.
    pub fn new() -> Self {
        Self::for_version(super::format::VERSION)
    }

    /// A decoder of format `version` (1 up to [`super::format::VERSION`]; a later one is read
    /// as this build's).
    pub fn for_version(version: u16) -> Self {
        Self {
            index: HashMap::new(),
            heaps: Vec::new(),
            spare: Vec::new(),
            all_allocs: Vec::new(),
            coding: Coding::of(version),
            decoded: Default::default(),
        }
    }

    /// Decodes an Events payload holding `count` events, appending `(heap, event)` pairs to
    /// `out`. Never trusts a count further than the payload's size allows. On error `out` is as
    /// it was.
    pub fn decode(
        &mut self,
        payload: &[u8],
        count: u32,
        out: &mut Vec<(u32, Event)>,
    ) -> Result<(), &'static str> {
        let start = out.len();
        let mut decoded = std::mem::take(&mut self.decoded);
        let r = self.decode_columns(payload, count as usize, &mut decoded, out);
        self.decoded = decoded;
        self.index.clear();
        for mut h in self.heaps.drain(..) {
            h.empty();
            self.spare.push(h);
        }
        self.all_allocs.clear();
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    fn decode_columns(
        &mut self,
        payload: &[u8],
        count: usize,
        decoded: &mut [Vec<u8>; ENTROPY_CODED.len()],
        out: &mut Vec<(u32, Event)>,
    ) -> Result<(), &'static str> {
        if count.saturating_mul(MIN_EVENT_BYTES) > payload.len() {
            return Err("more events than the payload can hold");
        }
        let mut streams = split_streams(payload, self.coding.streams)?;
        if self.coding.entropy {
            // An event writes at most a value to each of these streams.
            decode_entropy_coded(&mut streams, count.saturating_mul(MAX_VARINT), decoded)?;
        }
        let [
            mut ops,
            mut time,
            mut refs,
            mut addr,
            mut aux,
            mut arg32,
            mut arg,
            mut ref_lo,
            mut ref_hi,
            mut size_lo,
            mut page_addr,
            mut page_fields,
            mut page_ops,
            mut flag_bytes,
        ] = streams.map(Bytes::new);
        let Coding {
            fields,
            codes,
            stacks,
            split,
            pages,
            joint,
            time_runs,
            ..
        } = self.coding;
        // Events left in the current run of equal times (version 6).
        let mut run_left = 0u64;
        let page = |a: u64| a & !(PAGE_GRAIN - 1);
        // Page events whose address waits for the batch's next `Alloc` (version 4): their index
        // in `out`, and what the address is coded against; the batch they are in.
        let mut pending: Vec<(usize, PageBase)> = Vec::new();
        let mut pending_batch = 0u32;
        let mut batch_no = 0u32;
        // Events of the batch before its next page event (version 4).
        let mut gap_left = 0u64;

        // Blocks of events small enough to stay in cache while each column is decoded into
        // them in turn.
        out.reserve(count);
        let mut t = 0u64;
        let mut batch_left = 0usize;
        let (mut heap, mut slot) = (0u32, 0usize);
        let mut done = 0usize;
        while done < count {
            let n = (count - done).min(BLOCK);
            let first = out.len();
            // Per event of the block: the fields it writes, its heap's slot, its size class.
            let mut masks = [0u8; BLOCK];
            let mut slots = [0u32; BLOCK];
            let mut classes = [0u8; BLOCK];
            let mut batch_of = [0u32; BLOCK];
            // Ops: batches, kinds, flags, which fields follow.
            for (i, ((mask, slot_of_event), batch_of_event)) in masks[..n]
                .iter_mut()
                .zip(&mut slots[..n])
                .zip(&mut batch_of[..n])
                .enumerate()
            {
                while batch_left == 0 {
                    if gap_left != 0 {
                        return Err("page event gaps do not add up to the batch");
                    }
                    heap = u32::try_from(ops.varint()?).map_err(|_| "heap id too large")?;
                    let k = ops.varint()?;
                    if k == 0 || k > (count - done - i) as u64 {
                        return Err("batch sizes do not add up to the event count");
                    }
                    batch_left = k as usize;
                    if pages {
                        gap_left = page_ops.varint()?;
                    }
                    if self.heaps.len() >= MAX_CHUNK_HEAPS && !self.index.contains_key(&heap) {
                        return Err("too many heaps in one chunk");
                    }
                    slot = slot_of(&mut self.index, &mut self.heaps, &mut self.spare, heap);
                    batch_no = batch_no.wrapping_add(1);
                }
                batch_left -= 1;
                *batch_of_event = batch_no;
                // A page event's op and fields are in the page stream (version 4).
                let paged = pages && gap_left == 0;
                let src = if paged { &mut page_ops } else { &mut ops };
                let op = src.varint()?;
                let kind = u8::try_from(op >> 2).map_err(|_| "kind too large")?;
                let flags = match op & 1 {
                    0 => 0,
                    _ if pages => flag_bytes.byte()?,
                    _ => src.byte()?,
                };
                *mask = if op & 2 == 2 {
                    field::ALL
                } else {
                    fields[usize::from(kind)]
                };
                *slot_of_event = slot as u32;
                let mut e = Event {
                    kind,
                    flags,
                    ..Event::default()
                };
                if pages {
                    if paged != matches!(codes[usize::from(kind)], AddrCode::Page(_)) {
                        return Err("a page event out of its place");
                    }
                    if paged {
                        read_page_fields(&mut page_fields, *mask, &mut e)?;
                        // The passes below see only its address.
                        *mask &= field::ADDR;
                        gap_left = page_ops.varint()?;
                    } else {
                        gap_left -= 1;
                    }
                }
                out.push((heap, e));
            }
            let events = &mut out[first..];
            let masks = &masks[..n];

            // The plain columns.
            // Times: in runs from version 6 ([`code_time_runs`]); before, each event is a run of
            // one whose length is not written.
            for (_, e) in events.iter_mut() {
                if run_left == 0 {
                    run_left = if time_runs { time.varint()? } else { 1 };
                    if run_left == 0 {
                        return Err("a run of times with no events");
                    }
                    t = t.wrapping_add(unzigzag(time.varint()?));
                }
                run_left -= 1;
                e.time = t;
            }
            // An `Alloc`'s refs code, read with its size (version 5).
            let mut alloc_refs = [0u64; BLOCK];
            for ((((_, e), &f), class), r) in events
                .iter_mut()
                .zip(masks)
                .zip(&mut classes)
                .zip(&mut alloc_refs)
            {
                if f & field::ARG != 0 {
                    e.arg = if joint && e.kind == ALLOC {
                        let (code, size) = get_joint(&mut refs, &mut size_lo, &mut arg)?;
                        *r = code;
                        size
                    } else if split && e.kind == ALLOC {
                        get_split(&mut size_lo, &mut arg)?
                    } else {
                        arg.varint()?
                    };
                }
                if e.kind == ALLOC {
                    *class = size_class(e.arg);
                }
            }
            // Stack ids and node ids are predicted (below); every other arg32 is plain.
            let mut raw32 = [0u64; BLOCK];
            for (((_, e), &f), raw) in events.iter_mut().zip(masks).zip(&mut raw32) {
                if f & field::ARG32 != 0 {
                    *raw = arg32.varint()?;
                    if !(stacks && matches!(e.kind, STACK_ID_ARG32 | STACK_FRAME)) {
                        e.arg32 = u32::try_from(*raw).map_err(|_| "arg32 too large")?;
                    }
                }
            }
            for (((_, e), &f), &class) in events.iter_mut().zip(masks).zip(&classes) {
                if f & field::AUX != 0 {
                    let x = aux.varint()?;
                    e.aux = match (e.kind, x) {
                        (SIZE_CLASS_AUX, 0) => 0,
                        (SIZE_CLASS_AUX, 1) => u16::from(class),
                        (SIZE_CLASS_AUX, x) => u16::try_from(x - 2).map_err(|_| "aux too large")?,
                        (_, x) => u16::try_from(x).map_err(|_| "aux too large")?,
                    };
                }
            }

            // Addresses, with the predictors.
            let heaps = &mut self.heaps;
            let all_allocs = &mut self.all_allocs;
            let per_event = masks.iter().zip(&slots).zip(&classes).zip(&raw32);
            for (k, (((&f, &cur), &c), &raw)) in per_event.enumerate() {
                let at = first + k;
                let e = &mut out[at].1;
                let cur = cur as usize;
                // The bases of the page events waiting for this `Alloc` (version 4).
                let mut bases = None;
                if stacks && f & field::ARG32 != 0 {
                    let h = &mut heaps[cur];
                    match e.kind {
                        STACK_ID_ARG32 => {
                            e.arg32 = h
                                .pred
                                .decode_stack(raw, &mut h.seen)
                                .ok_or("bad stack id")?;
                        }
                        STACK_FRAME => {
                            e.arg32 = h.pred.decode_frame_id(raw).ok_or("node id too large")?;
                            e.arg = u64::from(e.arg32).wrapping_sub(unzigzag(e.arg));
                        }
                        _ => {}
                    }
                }
                e.addr = match addr_code(codes, e.kind, f) {
                    AddrCode::Alloc => {
                        let h = &mut heaps[cur];
                        // Version 5 read it with the size (an `Alloc`'s field sets, narrow and
                        // wide, both have arg).
                        let r = if joint { alloc_refs[k] } else { refs.varint()? };
                        let a = match r {
                            0 => {
                                let a = h.pred.alloc_base(c).wrapping_add(unzigzag(addr.varint()?));
                                h.pred.note_carved(c, a);
                                a
                            }
                            v if joint => {
                                let predicted =
                                    h.pred.class_any[usize::from(c)] & !(PAGE_GRAIN - 1);
                                let (page, r) = match v {
                                    1 => (page_at(predicted, addr.varint()?), addr.varint()?),
                                    v => (predicted, v - 1),
                                };
                                if r == 0 {
                                    return Err("reference to no freed block");
                                }
                                let n = h.page_stacks.number(c, page);
                                h.page_stacks.stacks[n as usize].take(r)?
                            }
                            v => h.stack(c).take(v)?,
                        };
                        // Where the block goes once freed (version 5).
                        let stack = if joint { h.page_stacks.number(c, a) } else { 0 };
                        if !pending.is_empty() && pending_batch == batch_of[k] {
                            bases = Some((page(a), page(h.pred.class_any[usize::from(c)])));
                        }
                        h.pred.class_any[usize::from(c)] = a;
                        h.pred.last_addr[GROUP_ALLOC] = a;
                        h.allocs.push((a, c, stack));
                        all_allocs.push((a, cur as u32, c, stack));
                        a
                    }
                    AddrCode::Ref => {
                        let r = if split {
                            get_split(&mut ref_lo, &mut ref_hi)?
                        } else {
                            refs.varint()?
                        };
                        let a = match r {
                            0 => heaps[cur].pred.last_addr[GROUP_FREE]
                                .wrapping_add(unzigzag(addr.varint()?)),
                            v => {
                                let back = usize::try_from((v - 1) / 2).unwrap_or(usize::MAX);
                                let (a, owner, c, stack) = if v & 1 == 1 {
                                    let allocs = &heaps[cur].allocs;
                                    let i = allocs.len().checked_sub(1 + back);
                                    let (a, c, stack) =
                                        allocs[i.ok_or("reference to no allocation")?];
                                    (a, cur as u32, c, stack)
                                } else {
                                    let i = all_allocs.len().checked_sub(1 + back);
                                    all_allocs[i.ok_or("reference to no allocation")?]
                                };
                                if e.kind == FREE {
                                    let owner = &mut heaps[owner as usize];
                                    if joint {
                                        &mut owner.page_stacks.stacks[stack as usize]
                                    } else {
                                        owner.stack(c)
                                    }
                                    .addrs
                                    .push(a);
                                    // Another heap's block: the flags were coded against
                                    // `CROSS_THREAD` (version 4).
                                    if pages && v & 1 == 0 {
                                        e.flags ^= CROSS_THREAD;
                                    }
                                }
                                a
                            }
                        };
                        heaps[cur].pred.last_addr[GROUP_FREE] = a;
                        a
                    }
                    AddrCode::Delta(g) => {
                        let last = &mut heaps[cur].pred.last_addr[usize::from(g)];
                        *last = last.wrapping_add(unzigzag(addr.varint()?));
                        *last
                    }
                    AddrCode::Page(base) => {
                        let d = unzigzag(page_addr.varint()?);
                        let pred = &mut heaps[cur].pred;
                        match base {
                            PageBase::LastPage => {
                                let last = &mut pred.last_addr[GROUP_PAGE];
                                *last = last.wrapping_add(d);
                                *last
                            }
                            PageBase::LastFree => page(pred.last_addr[GROUP_FREE]).wrapping_add(d),
                            // Against 0 until the batch's next `Alloc` gives the base.
                            PageBase::NextAlloc | PageBase::ClassOfNextAlloc => {
                                if pending_batch != batch_of[k] {
                                    pending.clear();
                                    pending_batch = batch_of[k];
                                }
                                pending.push((at, base));
                                d
                            }
                        }
                    }
                    AddrCode::Plain => addr.varint()?,
                    AddrCode::Absent => 0,
                };
                if e.kind == AFTER_FREE_ARG && f & field::ARG != 0 {
                    e.arg = unzigzag(e.arg).wrapping_add(heaps[cur].pred.last_addr[GROUP_FREE]);
                }
                if let Some((block, class)) = bases {
                    for (p, base) in pending.drain(..) {
                        let b = if base == PageBase::NextAlloc {
                            block
                        } else {
                            class
                        };
                        let a = &mut out[p].1.addr;
                        *a = a.wrapping_add(b);
                    }
                }
            }
            done += n;
        }
        if batch_left != 0 {
            return Err("batch sizes do not add up to the event count");
        }
        if gap_left != 0 {
            return Err("page event gaps do not add up to the batch");
        }
        if run_left != 0 {
            return Err("a run of times past the last event");
        }
        if [
            ops,
            time,
            refs,
            addr,
            aux,
            arg32,
            arg,
            ref_lo,
            ref_hi,
            size_lo,
            page_addr,
            page_fields,
            page_ops,
            flag_bytes,
        ]
        .iter()
        .any(|b| b.remaining() != 0)
        {
            return Err("bytes after the last event");
        }
        Ok(())
    }
}

/// Reads the fields `mask` (but the address) of a page event into `e`, from the page stream
/// (version 4): aux, arg32, arg, as [`ChunkEncoder::code_fields`] writes them.
fn read_page_fields(page: &mut Bytes<'_>, mask: u8, e: &mut Event) -> Result<(), &'static str> {
    if mask & field::AUX != 0 {
        e.aux = u16::try_from(page.varint()?).map_err(|_| "aux too large")?;
    }
    if mask & field::ARG32 != 0 {
        e.arg32 = u32::try_from(page.varint()?).map_err(|_| "arg32 too large")?;
    }
    if mask & field::ARG != 0 {
        e.arg = page.varint()?;
    }
    Ok(())
}

/// Decodes one Events payload (see [`Decoder::decode`]).
pub fn decode_events(
    payload: &[u8],
    count: u32,
    out: &mut Vec<(u32, Event)>,
) -> Result<(), &'static str> {
    Decoder::new().decode(payload, count, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Alloc` predictor's size classes are the allocator's bins (at most 127), whether
    /// looked up in the table or computed: every size up to a large block, and beyond.
    #[test]
    fn size_classes_are_the_allocators_bins_in_the_table_and_past_it() {
        use heaplens_alloc::{LARGE_OBJ_SIZE_MAX, bin::bin_of};
        let bin = |size: u64| bin_of(size as usize).min(CLASSES - 1) as u8;
        for size in 0..=2 * CLASS_TABLE_BYTES {
            assert_eq!(size_class(size), bin(size), "{size} B");
        }
        for shift in 13..=LARGE_OBJ_SIZE_MAX.ilog2() {
            let p = 1u64 << shift;
            for size in [p - 1, p, p + 1, p + p / 4, p + p / 4 + 1] {
                assert_eq!(size_class(size), bin(size), "{size} B");
            }
        }
        // Past the allocator's bins, the last class.
        for size in [1 << 40, u64::MAX] {
            assert_eq!(usize::from(size_class(size)), CLASSES - 1);
        }
    }

    /// Version 7 stores the refs and ref_hi streams Huffman-coded: the bytes version 6 stores
    /// as they are, in fewer bytes, every event read back; a coded stream cut short, or a
    /// payload read as the other version, is refused.
    #[test]
    fn version_7_stores_the_entropy_bound_streams_coded() {
        // 3000 blocks of sizes at random (16 B to 2 KiB), freed in a scrambled order (references of
        // many sizes, so ref_hi has values to code), some reused: statistics, not repeats.
        let mut events = Vec::new();
        let mut rng = super::super::synth::Rng::new(0x2545_f491_4f6c_dd1d);
        let sizes: Vec<u64> = (0..3000).map(|_| 16 * (1 + rng.below(128))).collect();
        let addr = |i: u64| 0x7f00_0000_0000 + 64 * i;
        let ev = |kind: EventKind, i: u64| Event {
            kind: kind as u8,
            addr: addr(i),
            arg: if kind == EventKind::Alloc {
                sizes[i as usize]
            } else {
                0
            },
            ..Event::default()
        };
        for i in 0..3000 {
            events.push(ev(EventKind::Alloc, i));
        }
        let mut order: Vec<u64> = (0..3000).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for &i in &order {
            events.push(ev(EventKind::Free, i));
        }
        for &i in order.iter().rev().take(1000) {
            events.push(ev(EventKind::Alloc, i));
        }
        let payload_of = |version: u16| {
            let mut enc = ChunkEncoder::for_version(version);
            for batch in events.chunks(2046) {
                enc.push_batch(1, batch);
            }
            let mut payload = Vec::new();
            enc.finish_into(&mut payload);
            payload
        };
        let (v6, v7) = (payload_of(6), payload_of(7));
        let n = events.len() as u32;
        for (version, payload) in [(6, &v6), (7, &v7)] {
            let mut out = Vec::new();
            Decoder::for_version(version)
                .decode(payload, n, &mut out)
                .unwrap();
            assert!(out.iter().map(|(_, e)| *e).eq(events.iter().copied()));
        }
        let (stored6, stored7) = (
            split_streams(&v6, STREAMS).unwrap(),
            split_streams(&v7, STREAMS).unwrap(),
        );
        let plain7 = plain_streams(&v7, 7).unwrap();
        for k in 0..STREAMS {
            assert_eq!(
                plain7[k], stored6[k],
                "stream {k}: the same bytes before storing"
            );
            if ENTROPY_CODED.contains(&k) {
                assert!(
                    stored7[k].len() < stored6[k].len() * 3 / 4,
                    "stream {k}: {} coded bytes against {}",
                    stored7[k].len(),
                    stored6[k].len()
                );
            } else {
                assert_eq!(stored7[k], stored6[k], "stream {k} is stored as it is");
            }
        }
        // What a tool reports: each stream's plain bytes, and a coded one as stored.
        let sizes = stream_sizes(&v7, 7, 1).unwrap();
        for k in 0..STREAMS {
            assert_eq!(sizes[k].0, stored6[k].len() as u64, "stream {k}");
            if ENTROPY_CODED.contains(&k) {
                assert_eq!(sizes[k].1, stored7[k].len() as u64, "stream {k}");
            }
        }
        // ref_hi's coded bytes one short, the payload otherwise the same.
        let mut cut = Vec::new();
        for (k, s) in stored7.iter().enumerate() {
            put_varint(&mut cut, (s.len() - usize::from(k == 8)) as u64);
        }
        for (k, s) in stored7.iter().enumerate() {
            cut.extend_from_slice(&s[..s.len() - usize::from(k == 8)]);
        }
        let mut out = Vec::new();
        assert!(Decoder::for_version(7).decode(&cut, n, &mut out).is_err());
        assert!(out.is_empty());
        assert!(Decoder::for_version(7).decode(&v6, n, &mut out).is_err());
    }

    /// An entropy-coded stream that repeats itself, or is one value nearly everywhere, is left
    /// to zstd (stored as it is); one that is only skewed is Huffman-coded; each reads back.
    #[test]
    fn a_stream_that_repeats_itself_is_left_to_zstd() {
        let mut rng = super::super::synth::Rng::new(0x9e37_79b9_7f4a_7c15);
        let skewed: Vec<u8> = (0..64 << 10)
            .map(|_| {
                let r = rng.next_u64();
                match r % 10 {
                    0..=5 => 1,
                    6..=8 => 2,
                    _ => (r >> 40) as u8,
                }
            })
            .collect();
        // The same statistics, but the first 1000 bytes over and over.
        let repeating: Vec<u8> = skewed[..1000]
            .iter()
            .cycle()
            .take(64 << 10)
            .copied()
            .collect();
        // One value nearly everywhere (under a bit a byte, Huffman's floor).
        let one_value: Vec<u8> = (0..64 << 10)
            .map(|i| if i % 997 == 0 { 7 } else { 1 })
            .collect();
        let mut sampler = None;
        for (src, left_to_zstd) in [(&repeating, true), (&one_value, true), (&skewed, false)] {
            let mut out = Vec::new();
            code_entropy_stream(src, &mut out, &mut sampler);
            if left_to_zstd {
                assert_eq!(
                    out.len(),
                    3 + 1 + src.len(),
                    "stored: its length, mode, bytes"
                );
            } else {
                assert!(out.len() < src.len() / 2, "coded: {} bytes", out.len());
            }
            let mut back = Vec::new();
            huffman::decode(&out, src.len(), &mut back).unwrap();
            assert_eq!(&back, src);
        }
    }

    /// Version 5's freed stacks per page: frees into two pages of one class interleave, then the
    /// allocator reuses them page by page (LIFO within a page, as mimalloc). Every reuse but
    /// the first of each page is the next block of the page the class last allocated from
    /// (refs value 2, one joint byte with the size), and the stream round-trips.
    #[test]
    fn reused_blocks_are_named_in_their_pages_stack() {
        let ev = |kind: EventKind, addr: u64| Event {
            kind: kind as u8,
            addr,
            arg: if kind == EventKind::Alloc { 48 } else { 0 },
            ..Event::default()
        };
        let (a, b) = (0x7f00_0001_0000u64, 0x7f00_0002_0000u64);
        let mut events = Vec::new();
        for i in 0..64 {
            events.push(ev(EventKind::Alloc, a + 48 * i));
            events.push(ev(EventKind::Alloc, b + 48 * i));
        }
        for i in 0..64 {
            events.push(ev(EventKind::Free, a + 48 * i));
            events.push(ev(EventKind::Free, b + 48 * i));
        }
        // Page b's blocks, then page a's, each most recently freed first.
        for page in [b, a] {
            for i in (0..64).rev() {
                events.push(ev(EventKind::Alloc, page + 48 * i));
            }
        }
        let mut enc = ChunkEncoder::new();
        enc.push_batch(1, &events);
        let mut payload = Vec::new();
        enc.finish_into(&mut payload);
        let mut out = Vec::new();
        decode_events(&payload, events.len() as u32, &mut out).unwrap();
        assert!(out.iter().map(|(_, e)| *e).eq(events.iter().copied()));
        let streams = plain_streams(&payload, super::super::format::VERSION).unwrap();
        let refs = &streams[2];
        assert_eq!(refs.len(), 256, "one joint byte per Alloc");
        // The joint byte of refs value r and a 48-byte size: 1 + 16r.
        let next_on_page = refs[128..].iter().filter(|&&x| x == 1 + 16 * 2).count();
        assert!(next_on_page >= 128 - 2, "{next_on_page} of 128 reuses");
    }

    /// Version 5's joint byte: every refs value and size round-trips, the common ones (small
    /// refs value, size below 3840) in one byte of refs and none of arg, and bad bytes and
    /// overflowing sizes are refused.
    #[test]
    fn an_allocs_refs_value_and_size_share_a_byte() {
        let values = [
            0,
            1,
            2,
            14,
            15,
            16,
            17,
            255,
            1 << 20,
            u64::MAX >> 1,
            u64::MAX,
        ];
        let sizes = [0, 1, 255, 256, 3839, 3840, 3841, 4096, 1 << 40, u64::MAX];
        for &r in &values {
            for &size in &sizes {
                let (byte, more_refs, more_size) = joint_code(r, size >> 8);
                let mut refs = vec![byte];
                let mut arg = Vec::new();
                if let Some(v) = more_refs {
                    put_varint(&mut refs, v);
                }
                if let Some(v) = more_size {
                    put_varint(&mut arg, v);
                }
                if r < JOINT_REFS && size < 3840 {
                    assert_eq!((refs.len(), arg.len()), (1, 0), "r {r} size {size}");
                }
                let lo = [size as u8];
                let (mut b, mut l, mut a) = (Bytes::new(&refs), Bytes::new(&lo), Bytes::new(&arg));
                assert_eq!(get_joint(&mut b, &mut l, &mut a), Ok((r, size)));
                assert_eq!((b.remaining(), a.remaining()), (0, 0));
            }
        }
        for byte in 241..=255u8 {
            let (refs, lo) = ([byte], [0u8]);
            let (mut b, mut l, mut a) = (Bytes::new(&refs), Bytes::new(&lo), Bytes::new(&[]));
            assert!(get_joint(&mut b, &mut l, &mut a).is_err(), "byte {byte}");
        }
        // A high part of 2^56 or more overflows.
        let mut arg = Vec::new();
        put_varint(&mut arg, 1 << 56);
        let (refs, lo) = ([0u8, 0], [0u8]);
        let (mut b, mut l, mut a) = (Bytes::new(&refs), Bytes::new(&lo), Bytes::new(&arg));
        assert!(get_joint(&mut b, &mut l, &mut a).is_err());
    }

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(Bytes::new(&b).varint(), Ok(v));
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(u64::MAX), 1); // -1
        assert_eq!(zigzag(1), 2);
        // 11 bytes, or a tenth byte with more than one bit: not a 64-bit varint.
        assert!(Bytes::new(&[0xff; 11]).varint().is_err());
        assert!(
            Bytes::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2])
                .varint()
                .is_err()
        );
        assert!(Bytes::new(&[0x80]).varint().is_err());
    }

    #[test]
    fn blocks_pack_losslessly() {
        let max = super::super::format::MAX_CHUNK_EVENTS - 1;
        let heaps = MAX_CHUNK_HEAPS as u32 - 1;
        let classes = CLASSES as u8 - 1;
        for b in [
            Block::Live {
                slot: 0,
                in_heap: 0,
                in_chunk: 0,
                class: 0,
            },
            Block::Live {
                slot: heaps,
                in_heap: max,
                in_chunk: max,
                class: classes,
            },
            Block::Live {
                slot: 5,
                in_heap: 1,
                in_chunk: max,
                class: 3,
            },
            Block::Freed {
                slot: 0,
                class: 0,
                seq: 0,
                stack: 0,
            },
            Block::Freed {
                slot: heaps,
                class: classes,
                seq: max,
                stack: max,
            },
        ] {
            assert_eq!(Block::unpack(b.pack()), b);
        }
    }

    #[test]
    fn batches_round_trip() {
        let ev = |kind: u8, addr: u64, time: u64| Event {
            kind,
            addr,
            time,
            arg: addr ^ 0x55,
            ..Event::default()
        };
        let mut enc = ChunkEncoder::new();
        let a = [
            ev(1, 0x1000, 5),
            ev(2, 0x1000, 5),
            ev(4, 0x20, 9),
            ev(200, 7, 3),
        ];
        let b = [ev(1, 0xffff_0000, 4), ev(61, 0, u64::MAX)];
        enc.push_batch(3, &a);
        enc.push_batch(0, &b);
        enc.push_batch(3, &a[..1]);
        assert_eq!(enc.len(), 7);
        assert_eq!(enc.time_range(), (3, u64::MAX));
        let mut payload = Vec::new();
        enc.finish_into(&mut payload);
        assert!(enc.is_empty());
        let mut out = Vec::new();
        decode_events(&payload, 7, &mut out).unwrap();
        let want: Vec<(u32, Event)> = a
            .iter()
            .map(|&e| (3, e))
            .chain(b.iter().map(|&e| (0, e)))
            .chain([(3, a[0])])
            .collect();
        assert_eq!(out, want);
        out.clear();
        assert!(decode_events(&payload, 6, &mut out).is_err());
        assert!(decode_events(&payload, 8, &mut out).is_err());
        assert!(decode_events(&payload[..payload.len() - 1], 7, &mut out).is_err());
    }

    /// Version 4's page events: an allocator-shaped stream (pages prepared before the `Alloc`
    /// that uses them, filled pages, frees that unfill or retire a page, frees of another heap's
    /// blocks with and without `CROSS_THREAD`, page events that end a batch and so have no
    /// `Alloc` after them, batches longer than the decoder's block) round-trips exactly, and
    /// each page address the neighbours predict costs one byte.
    #[test]
    fn page_events_round_trip_against_their_neighbours() {
        use EventKind::*;
        let page = |n: u64| 0x7f00_0000_0000 + n * PAGE_GRAIN;
        let ev = |kind: EventKind, addr: u64, arg: u64, flags: u8| Event {
            kind: kind as u8,
            flags,
            addr,
            arg,
            time: 0,
            ..Event::default()
        };
        let mut rng = crate::trace::synth::Rng::new(11);
        let mut batches: Vec<(u32, Vec<Event>)> = Vec::new();
        let mut predicted = 0usize;
        let mut recent: Vec<Vec<u64>> = vec![Vec::new(); 3];
        let mut unflagged = 0usize;
        let mut serial = 0u64;
        for b in 0..12u64 {
            let heap = (b % 3) as u32;
            let mut v = Vec::new();
            let mut n = 0u64;
            while v.len() < 1500 {
                n += 1;
                serial += 1;
                // Every block at an address of its own, 256 to a page.
                let pg = page(serial / 256);
                let size = 16 * (1 + n % 5);
                let block = pg + 256 * (serial % 256);
                match rng.below(6) {
                    0 => {
                        v.push(ev(PageCollect, pg, n % 3, 0));
                        predicted += 1;
                    }
                    1 => {
                        // The page the class was allocated from until now filled.
                        v.push(ev(PageFull, 0, 0, 0));
                        predicted += 1;
                    }
                    _ => {}
                }
                v.push(ev(Alloc, block, size, 0));
                recent[heap as usize].push(block);
                if rng.below(4) == 0 {
                    // Another heap's block (allocated in an earlier batch), mostly flagged.
                    let other = rng.below(3) as usize;
                    let theirs = if other != heap as usize {
                        recent[other].pop()
                    } else {
                        None
                    };
                    let free = match theirs {
                        Some(a) if rng.below(8) == 0 => {
                            unflagged += 1;
                            ev(Free, a, 0, 0)
                        }
                        Some(a) => ev(Free, a, 0, CROSS_THREAD),
                        None => ev(Free, recent[heap as usize].pop().unwrap(), 0, 0),
                    };
                    let freed_page = free.addr & !(PAGE_GRAIN - 1);
                    v.push(free);
                    if rng.below(3) == 0 {
                        v.push(ev(PageUnfull, freed_page, 0, 0));
                        predicted += 1;
                    }
                }
            }
            // A page event with no `Alloc` after it in its batch.
            v.push(ev(PageCollect, page(999), 2, 0));
            v.push(ev(PageInit, page(5) + 4096, 48, 3));
            batches.push((heap, v));
        }
        // `PageFull`'s page: the last `Alloc` of the next `Alloc`'s class in the heap (0 before).
        let mut class_last: HashMap<(u32, u8), u64> = HashMap::new();
        for (heap, v) in &mut batches {
            for i in 0..v.len() {
                if v[i].kind == Alloc as u8 {
                    class_last.insert((*heap, size_class(v[i].arg)), v[i].addr);
                } else if v[i].kind == PageFull as u8 {
                    let next = v[i + 1..].iter().find(|e| e.kind == Alloc as u8).unwrap();
                    let last = class_last.get(&(*heap, size_class(next.arg))).copied();
                    v[i].addr = last.unwrap_or(0) & !(PAGE_GRAIN - 1);
                }
            }
        }
        let mut enc = ChunkEncoder::new();
        let mut want = Vec::new();
        for (heap, v) in &batches {
            enc.push_batch(*heap, v);
            want.extend(v.iter().map(|&e| (*heap, e)));
        }
        let mut payload = Vec::new();
        enc.finish_into(&mut payload);
        let mut out = Vec::new();
        decode_events(&payload, want.len() as u32, &mut out).unwrap();
        assert_eq!(out.len(), want.len());
        for (i, (got, w)) in out.iter().zip(&want).enumerate() {
            assert_eq!(got, w, "event {i}");
        }
        let streams = plain_streams(&payload, super::super::format::VERSION).unwrap();
        let page_events = want
            .iter()
            .filter(|(_, e)| matches!(CODES[usize::from(e.kind)], AddrCode::Page(_)))
            .count();
        // One byte each where predicted (0), a few more for the two unpredicted a batch.
        let zeros = streams[10].iter().filter(|&&b| b == 0).count();
        assert!(
            zeros >= predicted,
            "{zeros} zero page addresses, {predicted} predicted"
        );
        assert!(streams[10].len() < page_events + 12 * 2 * MAX_VARINT);
        // A flags byte only for the frees of another heap's block without `CROSS_THREAD` (the
        // others' flags are what their references predict) and each batch's `PageInit`.
        assert!(unflagged > 0);
        assert_eq!(streams[13].len(), unflagged + batches.len());
        // Damage is refused, not misread.
        for cut in [1, 2, 7] {
            out.clear();
            assert!(
                decode_events(&payload[..payload.len() - cut], want.len() as u32, &mut out)
                    .is_err()
            );
        }
    }

    /// An event of `f`'s kind with every slot the schema gives it filled (`wide`: the slots
    /// outside its field set too), values drawn from `rng`.
    fn filled(f: &schema::Fields, rng: &mut crate::trace::synth::Rng, wide: bool) -> Event {
        use schema::Code;
        let mut e = Event {
            kind: f.kind as u8,
            flags: rng.below(256) as u8,
            time: rng.below(1 << 40),
            ..Event::default()
        };
        for (i, s) in f.slots.iter().enumerate() {
            let on = match s.code {
                Code::Unused | Code::Reserved => false,
                Code::Narrow(_) => true,
                Code::Wide(_) => wide,
            };
            if !on {
                continue;
            }
            let v = 1 + rng.below(1 << 47);
            match i {
                schema::ADDR => e.addr = v,
                schema::ARG => e.arg = v,
                schema::ARG32 => e.arg32 = v as u32 | 1,
                _ => e.aux = v as u16 | 1,
            }
        }
        if f.slots[schema::AUX].code.how() == How::SizeClass && rng.chance(0.5) {
            e.aux = u16::from(size_class(e.arg)); // the coding's short case
        }
        e
    }

    #[test]
    fn the_specification_lists_the_schemas_field_sets() {
        let spec = include_str!("README.md");
        let want = field_sets_table();
        assert!(
            spec.contains(&want),
            "README.md's field sets differ from the schema; paste this:\n{want}"
        );
    }

    #[test]
    fn every_kind_of_the_schema_round_trips_through_the_encoder() {
        let mut rng = crate::trace::synth::Rng::new(11);
        let version = super::super::format::VERSION;
        let mut batches: Vec<(u32, Vec<Event>)> = Vec::new();
        for round in 0..6u32 {
            let mut v = Vec::new();
            for f in schema::TABLE {
                let narrow = filled(f, &mut rng, false);
                // Filled as the table says, it is written narrow, with exactly its field set.
                let bits = fields(version, f.kind as u8);
                assert_eq!(present(&FIELDS, &narrow), (bits, false), "{:?}", f.kind);
                let mask = f.narrow_mask(version).unwrap();
                assert_eq!(
                    mask.count_ones(),
                    bits.count_ones(),
                    "{:?}: the encoder's field set is the schema's",
                    f.kind
                );
                v.push(narrow);
                let wide = filled(f, &mut rng, true);
                let has_wide = f
                    .slots
                    .iter()
                    .any(|s| matches!(s.code, schema::Code::Wide(_)));
                assert_eq!(present(&FIELDS, &wide).1, has_wide, "{:?}", f.kind);
                v.push(wide);
                // A block freed and resized after its allocation: the reference codings.
                if f.kind == EventKind::Alloc {
                    let a = *v.last().unwrap();
                    v.push(Event {
                        kind: EventKind::Resize as u8,
                        addr: a.addr,
                        arg: a.arg + 1,
                        ..a
                    });
                    v.push(Event {
                        kind: EventKind::Free as u8,
                        addr: a.addr,
                        arg: 0,
                        arg32: 0,
                        aux: 0,
                        ..a
                    });
                    v.push(Event { aux: 0, ..a }); // the freed block reused
                }
            }
            batches.push((1 + round % 3, v));
        }
        let mut enc = ChunkEncoder::new();
        for (h, v) in &batches {
            enc.push_batch(*h, v);
        }
        let n = enc.len();
        let mut payload = Vec::new();
        enc.finish_into(&mut payload);
        let mut out = Vec::new();
        decode_events(&payload, n, &mut out).unwrap();
        let want: Vec<(u32, Event)> = batches
            .iter()
            .flat_map(|(h, v)| v.iter().map(move |e| (*h, *e)))
            .collect();
        for (i, (got, want)) in out.iter().zip(&want).enumerate() {
            assert_eq!(got, want, "event {i}");
        }
        assert_eq!(out.len(), want.len());
    }

    #[test]
    fn stack_ids_and_frames_round_trip() {
        let mut rng = crate::trace::synth::Rng::new(3);
        let mut batches: Vec<(u32, Vec<Event>)> = Vec::new();
        let mut next = 0u32;
        for b in 0..40u64 {
            let heap = 1 + (b % 3) as u32;
            let mut v = Vec::new();
            for i in 0..50u64 {
                if rng.chance(0.2) {
                    next += 1 + rng.below(3) as u32;
                    v.push(Event {
                        kind: STACK_FRAME,
                        flags: (i % 2) as u8,
                        arg32: next,
                        addr: 0x5555_0000_0000 + rng.below(1 << 20),
                        arg: u64::from(next) - rng.below(u64::from(next) + 1),
                        ..Event::default()
                    });
                }
                let stack = match rng.below(4) {
                    0 => 0,
                    1 => next,
                    2 => 1 + rng.below(u64::from(next)) as u32,
                    _ => u32::MAX - rng.below(4) as u32,
                };
                v.push(Event {
                    kind: ALLOC,
                    arg32: stack,
                    addr: 0x7f00_0000_0000 + (b * 50 + i) * 16,
                    arg: 8 + rng.below(100),
                    ..Event::default()
                });
            }
            batches.push((heap, v));
        }
        let mut enc = ChunkEncoder::new();
        for (h, v) in &batches {
            enc.push_batch(*h, v);
        }
        let n = enc.len();
        let mut payload = Vec::new();
        enc.finish_into(&mut payload);
        // The next chunk starts afresh: the same batches again, the same bytes (the heaps'
        // stack numbers emptied, not carried over).
        for (h, v) in &batches {
            enc.push_batch(*h, v);
        }
        let mut again = Vec::new();
        enc.finish_into(&mut again);
        assert!(
            again == payload,
            "a second chunk of the same batches codes otherwise"
        );
        let mut out = Vec::new();
        decode_events(&payload, n, &mut out).unwrap();
        let want: Vec<(u32, Event)> = batches
            .iter()
            .flat_map(|(h, v)| v.iter().map(move |e| (*h, *e)))
            .collect();
        assert_eq!(out, want);
        // Version 1 reads the same bytes otherwise: its tables do not predict ids.
        out.clear();
        let v1 = Decoder::for_version(1).decode(&payload, n, &mut out);
        assert!(v1.is_err() || out != want);
    }

    /// Encodes `batches` in `version` and decodes them with that version's decoder.
    fn round_trip(version: u16, batches: &[(u32, Vec<Event>)]) -> Vec<(u32, Event)> {
        let mut enc = ChunkEncoder::for_version(version);
        for (h, v) in batches {
            enc.push_batch(*h, v);
        }
        let n = enc.len();
        let mut payload = Vec::new();
        enc.finish_into(&mut payload);
        let mut out = Vec::new();
        Decoder::for_version(version)
            .decode(&payload, n, &mut out)
            .unwrap();
        out
    }

    /// A decoder that decoded other chunks before (its heaps kept, emptied, for their room)
    /// decodes a chunk as a fresh one does: the same heap ids, other streams, every version.
    #[test]
    fn a_decoder_used_before_decodes_as_a_fresh_one() {
        for version in 1..=super::super::format::VERSION {
            let mut used = Decoder::for_version(version);
            for seed in 1..=4 {
                let mut enc = ChunkEncoder::for_version(version);
                for (h, v) in &seeded_stream(seed, 8_000) {
                    enc.push_batch(*h, v);
                }
                let n = enc.len();
                let mut payload = Vec::new();
                enc.finish_into(&mut payload);
                let (mut again, mut fresh) = (Vec::new(), Vec::new());
                used.decode(&payload, n, &mut again).unwrap();
                Decoder::for_version(version)
                    .decode(&payload, n, &mut fresh)
                    .unwrap();
                assert!(again == fresh, "version {version}, seed {seed}");
                assert_eq!(fresh.len(), n as usize);
            }
        }
    }

    /// The encoder's loop for the latest version takes every flag as set and this build's
    /// tables (`Coding::pages::<true>` ...): they must be what `Coding::of` gives it.
    #[test]
    fn the_latest_coding_is_the_one_its_loop_assumes() {
        let latest = Coding::of(super::super::format::VERSION);
        assert!(latest.latest && latest.stacks && latest.split && latest.pages && latest.joint);
        assert!(std::ptr::eq(latest.fields, &FIELDS) && std::ptr::eq(latest.codes, &CODES));
        for older in 1..super::super::format::VERSION {
            assert!(!Coding::of(older).latest, "version {older}");
        }
    }

    /// A synthetic stream of `events` events that varies with `seed`: 1-4 threads, some
    /// cross-thread frees, censuses, each stack mode in turn.
    fn seeded_stream(seed: u64, events: usize) -> Vec<(u32, Vec<Event>)> {
        use crate::trace::synth::{self, SynthConfig};
        use heaplens_alloc::event::stack_mode;
        synth::generate(&SynthConfig {
            threads: 1 + (seed % 4) as u32,
            events,
            seed,
            cross_thread: 0.1 * (seed % 3) as f64,
            census_every: 7,
            stacks: [stack_mode::ALL, stack_mode::SAMPLED, stack_mode::OFF][seed as usize % 3],
            sample_bytes: 4096,
        })
    }

    #[test]
    fn every_version_round_trips_random_streams() {
        for seed in 1..=6 {
            let batches = seeded_stream(seed, 20_000);
            // Arbitrary values among them: every field of every kind byte, extreme sizes.
            let mut rng = crate::trace::synth::Rng::new(seed);
            let odd: Vec<Event> = (0..300)
                .map(|_| Event {
                    kind: rng.below(256) as u8,
                    flags: rng.below(4) as u8,
                    aux: rng.below(1 << 16) as u16,
                    arg32: rng.below(1 << 32) as u32,
                    addr: rng.below(u64::MAX),
                    arg: [0, 255, 256, u64::MAX, rng.below(u64::MAX)][rng.below(5) as usize],
                    time: rng.below(u64::MAX),
                })
                .collect();
            let mut all = batches.clone();
            all.push((2, odd));
            all.extend(batches.iter().take(50).cloned());
            let want: Vec<(u32, Event)> = all
                .iter()
                .flat_map(|(h, v)| v.iter().map(move |e| (*h, *e)))
                .collect();
            for version in 1..=super::super::format::VERSION {
                assert_eq!(
                    round_trip(version, &all),
                    want,
                    "version {version}, seed {seed}"
                );
            }
        }
    }

    /// The latest version's loop (flags as constants, its own paths for an `Alloc` with a stack
    /// id) writes the bytes the general loop writes with the same coding, on streams with and
    /// without stacks, flagged and odd events among them.
    #[test]
    fn the_latest_versions_loop_writes_what_the_general_one_does() {
        for seed in 1..=6 {
            let mut batches = seeded_stream(seed, 30_000);
            let mut rng = crate::trace::synth::Rng::new(seed);
            for (_, events) in batches.iter_mut().step_by(5) {
                for e in events.iter_mut().step_by(3) {
                    match rng.below(4) {
                        0 => e.flags = rng.below(4) as u8,
                        1 => e.arg32 = rng.below(1 << 32) as u32,
                        _ => {}
                    }
                }
            }
            let mut payloads = [Vec::new(), Vec::new()];
            for (general, out) in payloads.iter_mut().enumerate() {
                let mut enc = ChunkEncoder::new();
                enc.coding.latest = general == 0;
                for (heap, events) in &batches {
                    enc.push_batch(*heap, events);
                }
                enc.finish_into(out);
            }
            assert!(payloads[0] == payloads[1], "seed {seed}");
        }
    }

    /// A payload damaged anywhere (bytes changed in its streams, which a chunk's checksum
    /// would catch in a file but a forged file can carry) decodes to an error or to some
    /// events, in every version, and never panics: the page events' gaps and pending
    /// addresses, the joint bytes and the per-page stacks included.
    #[test]
    fn damaged_payloads_never_panic() {
        use crate::trace::synth::{self, SynthConfig};
        use heaplens_alloc::event::stack_mode;
        let batches = synth::generate(&SynthConfig {
            threads: 3,
            events: 6_000,
            seed: 5,
            cross_thread: 0.2,
            census_every: 5,
            stacks: stack_mode::ALL,
            sample_bytes: 4096,
        });
        let count: usize = batches.iter().map(|(_, v)| v.len()).sum();
        let mut rng = crate::trace::synth::Rng::new(9);
        for version in 1..=super::super::format::VERSION {
            let mut enc = ChunkEncoder::for_version(version);
            for (heap, events) in &batches {
                enc.push_batch(*heap, events);
            }
            let mut payload = Vec::new();
            enc.finish_into(&mut payload);
            let mut out = Vec::new();
            for _ in 0..3000 {
                let mut bad = payload.clone();
                for _ in 0..1 + rng.below(4) {
                    // Past the stream lengths mostly: the streams themselves.
                    let at = rng.below(bad.len() as u64) as usize;
                    bad[at] = rng.below(256) as u8;
                }
                out.clear();
                let n = count as u32 + [0, 0, 0, 1][rng.below(4) as usize];
                let _ = Decoder::for_version(version).decode(&bad, n, &mut out);
            }
        }
    }

    #[test]
    fn split_values_round_trip_and_reject_overflow() {
        for v in [0, 1, 255, 256, 0xffff, 1 << 56, u64::MAX] {
            let (mut lo, mut hi) = (Sink::default(), Sink::default());
            lo.room(1);
            hi.room(MAX_VARINT);
            // SAFETY: room for a byte in `lo` and a varint in `hi`, made just above.
            #[allow(unsafe_code)]
            unsafe {
                put_split(&mut lo, &mut hi, v);
            };
            assert_eq!(
                get_split(&mut Bytes::new(lo.bytes()), &mut Bytes::new(hi.bytes())),
                Ok(v)
            );
        }
        // A high part of more than 56 bits does not fit.
        let mut hi = Vec::new();
        put_varint(&mut hi, 1 << 56);
        assert!(get_split(&mut Bytes::new(&[0]), &mut Bytes::new(&hi)).is_err());
        assert!(get_split(&mut Bytes::new(&[]), &mut Bytes::new(&[0])).is_err());
    }

    #[test]
    fn times_are_coded_in_runs_and_bad_runs_are_refused() {
        let free = |addr: u64, time: u64| Event {
            kind: FREE,
            addr,
            time,
            ..Event::default()
        };
        // One run of 500 events at one time, then a run of 2, one back in time, and one of 1.
        let mut batch: Vec<Event> = (0..500).map(|i| free(0x1000 + 16 * i, 7_000)).collect();
        batch.extend([
            free(16, 7_100),
            free(32, 7_100),
            free(48, 90),
            free(64, u64::MAX),
        ]);
        let mut enc = ChunkEncoder::new();
        enc.push_batch(3, &batch);
        enc.push_batch(4, &batch[500..]);
        assert_eq!(enc.time_range(), (90, u64::MAX));
        let mut payload = Vec::new();
        enc.finish_into(&mut payload);
        let streams = plain_streams(&payload, super::super::format::VERSION).unwrap();
        // The first batch's runs: (500, 7000), (2, +100), (1, -7010), (1, MAX - 90); the
        // second's start again from the time before them.
        let mut want = Vec::new();
        let runs = [(500, 7_000), (2, 7_100), (1, 90), (1, u64::MAX)];
        for batch_runs in [&runs[..], &runs[1..]] {
            let mut prev = if want.is_empty() { 0 } else { u64::MAX };
            for &(n, t) in batch_runs {
                put_varint(&mut want, n);
                put_varint(&mut want, zigzag(t.wrapping_sub(prev)));
                prev = t;
            }
        }
        assert_eq!(streams[1], &want[..], "the time stream");
        let mut out = Vec::new();
        Decoder::new().decode(&payload, 508, &mut out).unwrap();
        let times: Vec<u64> = out.iter().map(|(_, e)| e.time).collect();
        let sent: Vec<u64> = batch.iter().chain(&batch[500..]).map(|e| e.time).collect();
        assert_eq!(times, sent);

        // The same payload with its time stream replaced: runs that do not add up to the
        // events are refused.
        let stored = split_streams(&payload, STREAMS).unwrap();
        let with_times = |time: &[u8]| {
            let mut p = Vec::new();
            for (i, s) in stored.iter().enumerate() {
                put_varint(&mut p, if i == 1 { time.len() } else { s.len() } as u64);
            }
            for (i, s) in stored.iter().enumerate() {
                p.extend_from_slice(if i == 1 { time } else { s });
            }
            p
        };
        assert_eq!(with_times(&want), payload);
        // The first run one event shorter (499): the runs end before the events do.
        let mut short = want.clone();
        short[..2].copy_from_slice(&[0xf3, 0x03]);
        for (time, why) in [
            (&[0u8, 0][..], "a run of times with no events"),
            (&[0xf4, 0x03, 0][..], "a run of times past the last event"),
        ] {
            let mut time = time.to_vec();
            if why.ends_with("past the last event") {
                // One run of 500, then one of more events than are left.
                time.extend([0x20, 0]);
            }
            let mut out = Vec::new();
            assert_eq!(
                Decoder::new().decode(&with_times(&time), 508, &mut out),
                Err(why),
                "{why}"
            );
        }
        assert!(
            Decoder::new()
                .decode(&with_times(&short), 508, &mut Vec::new())
                .is_err()
        );
    }
}
