//! The event schema: for every [`EventKind`], what each slot of an [`Event`] means and how the
//! trace encoder codes it, in one table ([`TABLE`]), with a typed view per kind (a struct named
//! after the kind, e.g. [`Alloc`], whose fields are the slots the kind uses).
//!
//! The hook builds events through the views (`Alloc { ptr, size, stack, flags }.into_event()`),
//! the model and the describer read them through the views (`Alloc::from_event(ev).stack`), and
//! the trace encoder derives its field sets and codings from [`TABLE`]. The table below is
//! generated from [`TABLE`] ([`doc_table`]); a test fails when it differs.
//!
//! A slot marked † is used but outside the kind's narrow field set: an event with it non-zero
//! is written wide (every slot). A slot marked "(0)" is not used but is still written in every
//! event of the kind (the trace format's field set has it).
//!
//! | kind | addr | arg | arg32 | aux | flags |
//! |---|---|---|---|---|---|
//! | `Alloc` | `ptr`: pointer | `size`: requested size (bytes) | `stack`: stack id (leaf `StackFrame` node; 0: none) † | `bin`: the block's bin if the writer knows it (the hook writes 0) | `ZERO`, `ALIGNED`, `REALLOC` |
//! | `Free` | `ptr`: pointer | | | | `CROSS_THREAD`, `TO_DELAYED`, `FROM_DELAYED`, `REALLOC`, `EPOCH` |
//! | `Resize` | `ptr`: pointer | `size`: new requested size (bytes) | | | (realloc in place) |
//! | `Realloc` | `ptr`: new pointer | `old`: old pointer | `size`: new requested size (bytes, saturated) | | |
//! | `PageInit` | `start`: page start | `block_size`: block size (bytes) | `reserved`: blocks the page can hold | `bin`: bin | page kind |
//! | `PageExtend` | `start`: page start | | `capacity`: blocks carved so far | | |
//! | `PageCollect` | `start`: page start | `to_free`: blocks moved `local_free -> free` | `from_thread_free`: blocks moved `thread_free -> local_free` | | |
//! | `PageFull` | `start`: page start | | | | |
//! | `PageUnfull` | `start`: page start | | | | |
//! | `PageRetire` | `start`: page start | | | | |
//! | `PageFree` | `start`: page start | | | | |
//! | `PageReclaim` | `start`: page start | | `owner`: new owner heap id | | |
//! | `SegmentAlloc` | `base`: segment | `bytes`: bytes mapped | `pages`: page count | | page kind |
//! | `SegmentFree` | `base`: segment | `bytes`: bytes mapped | | | `CACHED` |
//! | `SegmentAbandon` | `base`: segment | | | | |
//! | `SegmentReclaim` | `base`: segment | | `owner`: new owner heap id (0: the emitting heap) † | | |
//! | `ThreadStart` | `os_tid`: OS thread id | (0) | `heap`: heap id | | |
//! | `ThreadExit` | | | `heap`: heap id | | |
//! | `ThreadName` | `text_lo`: name bytes 0..8 | `text_hi`: name bytes 8..16 | `heap`: heap id | | `MORE` (name continues) |
//! | `OsCommit` | `addr`: address | `bytes`: bytes | | | |
//! | `OsPurge` | `addr`: address | `bytes`: bytes | | | |
//! | `Mark` | `text_lo`: label bytes 0..8 | `text_hi`: label bytes 8..16 | | | `MORE` (label continues) |
//! | `Dropped` | | `lost`: events lost | | `reasons`: why (`drop_reason` bits) † | |
//! | `ClockSync` | `monotonic_ns`: nanoseconds (CLOCK_MONOTONIC) | | | | |
//! | `CensusBegin` | | `pages`: pages that follow | `number`: census number | | `PARTIAL`, `INITIAL`, `BY_HEAP`, `HEAP_PART`, `ADOPT` |
//! | `CensusPage` | `start`: page start | `block_size`: block size (bytes) | `capacity`: blocks carved so far | `bin`: bin | page kind; then `CensusPage2` |
//! | `CensusPage2` | `owner`: owner heap id (0: abandoned) | `counts`: `used \| local_free << 32` | `thread_free`: `thread_free` length | | `IN_FULL`, `EPOCH` |
//! | `CensusSegment` | `base`: segment | `bytes`: bytes mapped | `pages`: page count | | page kind |
//! | `CensusEnd` | | | `number`: census number | | `BY_HEAP`, `HEAP_PART`, `INITIAL`, `ADOPT` |
//! | `StackFrame` | `pc`: return address (the frame's pc) | `parent`: parent node id (0: outermost frame) | `id`: this node's id | | `TRUNCATED` |
//! | `StackMode` | | `interval`: mean sampling interval in bytes (0 with mode all) | | `mode`: mode (`stack_mode`) | |
//! | `Module` | `bias`: load bias (`dlpi_addr`) | | `id`: module id | | |
//! | `ModuleRange` | `start`: start of an executable range | `len`: its length (bytes) | `id`: module id | | |
//! | `ModuleText` | `text_lo`: text bytes 0..8 | `text_hi`: text bytes 8..16 | `id`: module id | `what`: 0 path, 1 build id (`module_text`) | `MORE` (continues) |
//! | `ModuleGone` | | | `id`: module id | | |

use crate::event::{Event, EventKind};

/// How the trace encoder writes a slot's value (the details are in the trace format's
/// specification, `viewer/src/trace/README.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// A varint.
    Varint,
    /// `Alloc` addr: a block freed earlier in the chunk, else a delta against the last carved
    /// block of the request's size class.
    Carved,
    /// A reference to an earlier `Alloc` of the chunk (the block freed or resized), else a delta
    /// against the heap's last `Free`/`Resize` address.
    BlockRef,
    /// A delta against the heap's last `Alloc` address.
    AfterAlloc,
    /// A delta against the heap's last page address.
    PageDelta,
    /// A delta against the heap's last segment or OS address.
    SegmentDelta,
    /// A delta against the heap's last frame pc (format version 2 on).
    FrameDelta,
    /// The request's size class (`arg`) coded as 1, 0 as 0, anything else as itself + 2.
    SizeClass,
    /// A stack id predicted from the heap's recent ones (format version 2 on).
    StackId,
    /// A node id predicted from the heap's last node id (format version 2 on).
    NodeId,
    /// A delta against the heap's last `Free`/`Resize` address.
    AfterFree,
    /// A parent node id, as a delta against the node's own id (`arg32`; version 2 on).
    ParentOfNode,
}

/// Whether and how a slot is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Not used (zero); not in the kind's field set.
    Unused,
    /// Not used (zero), but in the kind's field set: written in every event of the kind.
    Reserved,
    /// In the kind's field set: written in every event of the kind.
    Narrow(How),
    /// Used but outside the kind's field set: an event with it non-zero is written wide.
    Wide(How),
}

impl Code {
    /// Whether the slot is in the kind's field set (written in a narrow event).
    pub const fn narrow(self) -> bool {
        matches!(self, Code::Reserved | Code::Narrow(_))
    }

    /// How the slot is written when it is (plain for an unused slot of a wide event).
    pub const fn how(self) -> How {
        match self {
            Code::Unused | Code::Reserved => How::Varint,
            Code::Narrow(h) | Code::Wide(h) => h,
        }
    }
}

/// One slot of a kind: its name in the kind's view, its meaning and its coding.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// The field name in the kind's view ("" when unused or reserved).
    pub name: &'static str,
    /// What it holds, with its unit.
    pub meaning: &'static str,
    /// How the encoder writes it.
    pub code: Code,
}

impl Slot {
    const UNUSED: Slot = Slot {
        name: "",
        meaning: "",
        code: Code::Unused,
    };
}

/// Index of `addr` in [`Fields::slots`].
pub const ADDR: usize = 0;
/// Index of `arg` in [`Fields::slots`].
pub const ARG: usize = 1;
/// Index of `arg32` in [`Fields::slots`].
pub const ARG32: usize = 2;
/// Index of `aux` in [`Fields::slots`].
pub const AUX: usize = 3;
/// The slots' names in [`Fields::slots`] order.
pub const SLOT_NAMES: [&str; 4] = ["addr", "arg", "arg32", "aux"];

/// The schema of one kind.
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    /// The kind.
    pub kind: EventKind,
    /// The first trace format version that names the kind (an older one writes it as a kind it
    /// does not know: wide, every slot a varint).
    pub since: u16,
    /// `addr`, `arg`, `arg32`, `aux` (see [`ADDR`], [`ARG`], [`ARG32`], [`AUX`]).
    pub slots: [Slot; 4],
    /// What the flag bits say.
    pub flags: &'static str,
}

impl Fields {
    /// The kinds's field set in trace format `version`, as bits `1 << ADDR` etc.; `None` if that
    /// version does not name the kind.
    pub const fn narrow_mask(&self, version: u16) -> Option<u8> {
        if version < self.since {
            return None;
        }
        let mut m = 0u8;
        let mut i = 0;
        while i < 4 {
            if self.slots[i].code.narrow() {
                m |= 1 << i;
            }
            i += 1;
        }
        Some(m)
    }
}

/// The Rust type of a slot.
macro_rules! slot_ty {
    (addr) => {
        u64
    };
    (arg) => {
        u64
    };
    (arg32) => {
        u32
    };
    (aux) => {
        u16
    };
}

/// The [`Fields::slots`] index of a slot.
macro_rules! slot_index {
    (addr) => {
        ADDR
    };
    (arg) => {
        ARG
    };
    (arg32) => {
        ARG32
    };
    (aux) => {
        AUX
    };
}

macro_rules! schema {
    ($(
        $kind:ident since $since:literal $(reserved $rslot:ident)* {
            $($slot:ident $field:ident: $code:expr, $meaning:literal;)*
        } flags $flags:literal;
    )*) => {
        /// Every kind's schema, in [`EventKind`] order.
        pub const TABLE: &[Fields] = &[$(
            Fields {
                kind: EventKind::$kind,
                since: $since,
                slots: {
                    #[allow(unused_mut)]
                    let mut s = [Slot::UNUSED; 4];
                    $(
                        s[slot_index!($slot)] = Slot {
                            name: stringify!($field),
                            meaning: $meaning,
                            code: $code,
                        };
                    )*
                    $(
                        s[slot_index!($rslot)] = Slot {
                            name: "",
                            meaning: "",
                            code: Code::Reserved,
                        };
                    )*
                    s
                },
                flags: $flags,
            },
        )*];

        $(
            #[doc = concat!("The fields of a [`EventKind::", stringify!($kind), "`] event (see [`TABLE`]).")]
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
            pub struct $kind {
                $(
                    #[doc = $meaning]
                    pub $field: slot_ty!($slot),
                )*
                /// Flag bits ([`crate::event::flags`]).
                pub flags: u8,
            }

            impl $kind {
                /// The kind.
                pub const KIND: EventKind = EventKind::$kind;

                /// The event (time 0: see [`Event::at`]).
                #[inline(always)]
                pub const fn into_event(self) -> Event {
                    #[allow(unused_mut)]
                    let mut e = Event::EMPTY;
                    e.kind = EventKind::$kind as u8;
                    e.flags = self.flags;
                    $(e.$slot = self.$field;)*
                    e
                }

                /// The fields of `ev`, which is of this kind (other slots are ignored).
                #[inline(always)]
                pub const fn from_event(ev: &Event) -> Self {
                    Self {
                        $($field: ev.$slot,)*
                        flags: ev.flags,
                    }
                }
            }

            impl From<$kind> for Event {
                #[inline(always)]
                fn from(v: $kind) -> Event {
                    v.into_event()
                }
            }
        )*
    };
}

use Code::{Narrow, Wide};
use How::{
    AfterAlloc, AfterFree, BlockRef, Carved, FrameDelta, NodeId, PageDelta, ParentOfNode,
    SegmentDelta, SizeClass, StackId, Varint,
};

schema! {
    Alloc since 1 {
        addr ptr: Narrow(Carved), "pointer";
        arg size: Narrow(Varint), "requested size (bytes)";
        arg32 stack: Wide(StackId), "stack id (leaf `StackFrame` node; 0: none)";
        aux bin: Narrow(SizeClass), "the block's bin if the writer knows it (the hook writes 0)";
    } flags "`ZERO`, `ALIGNED`, `REALLOC`";
    Free since 1 {
        addr ptr: Narrow(BlockRef), "pointer";
    } flags "`CROSS_THREAD`, `TO_DELAYED`, `FROM_DELAYED`, `REALLOC`, `EPOCH`";
    Resize since 1 {
        addr ptr: Narrow(BlockRef), "pointer";
        arg size: Narrow(Varint), "new requested size (bytes)";
    } flags "(realloc in place)";
    Realloc since 1 {
        addr ptr: Narrow(AfterAlloc), "new pointer";
        arg old: Narrow(AfterFree), "old pointer";
        arg32 size: Narrow(Varint), "new requested size (bytes, saturated)";
    } flags "";
    PageInit since 1 {
        addr start: Narrow(PageDelta), "page start";
        arg block_size: Narrow(Varint), "block size (bytes)";
        arg32 reserved: Narrow(Varint), "blocks the page can hold";
        aux bin: Narrow(Varint), "bin";
    } flags "page kind";
    PageExtend since 1 {
        addr start: Narrow(PageDelta), "page start";
        arg32 capacity: Narrow(Varint), "blocks carved so far";
    } flags "";
    PageCollect since 1 {
        addr start: Narrow(PageDelta), "page start";
        arg to_free: Narrow(Varint), "blocks moved `local_free -> free`";
        arg32 from_thread_free: Narrow(Varint), "blocks moved `thread_free -> local_free`";
    } flags "";
    PageFull since 1 {
        addr start: Narrow(PageDelta), "page start";
    } flags "";
    PageUnfull since 1 {
        addr start: Narrow(PageDelta), "page start";
    } flags "";
    PageRetire since 1 {
        addr start: Narrow(PageDelta), "page start";
    } flags "";
    PageFree since 1 {
        addr start: Narrow(PageDelta), "page start";
    } flags "";
    PageReclaim since 1 {
        addr start: Narrow(PageDelta), "page start";
        arg32 owner: Narrow(Varint), "new owner heap id";
    } flags "";
    SegmentAlloc since 1 {
        addr base: Narrow(SegmentDelta), "segment";
        arg bytes: Narrow(Varint), "bytes mapped";
        arg32 pages: Narrow(Varint), "page count";
    } flags "page kind";
    SegmentFree since 1 {
        addr base: Narrow(SegmentDelta), "segment";
        arg bytes: Narrow(Varint), "bytes mapped";
    } flags "`CACHED`";
    SegmentAbandon since 1 {
        addr base: Narrow(SegmentDelta), "segment";
    } flags "";
    SegmentReclaim since 1 {
        addr base: Narrow(SegmentDelta), "segment";
        arg32 owner: Wide(Varint), "new owner heap id (0: the emitting heap)";
    } flags "";
    ThreadStart since 1 reserved arg {
        addr os_tid: Narrow(Varint), "OS thread id";
        arg32 heap: Narrow(Varint), "heap id";
    } flags "";
    ThreadExit since 1 {
        arg32 heap: Narrow(Varint), "heap id";
    } flags "";
    ThreadName since 1 {
        addr text_lo: Narrow(Varint), "name bytes 0..8";
        arg text_hi: Narrow(Varint), "name bytes 8..16";
        arg32 heap: Narrow(Varint), "heap id";
    } flags "`MORE` (name continues)";
    OsCommit since 1 {
        addr addr: Narrow(SegmentDelta), "address";
        arg bytes: Narrow(Varint), "bytes";
    } flags "";
    OsPurge since 1 {
        addr addr: Narrow(SegmentDelta), "address";
        arg bytes: Narrow(Varint), "bytes";
    } flags "";
    Mark since 1 {
        addr text_lo: Narrow(Varint), "label bytes 0..8";
        arg text_hi: Narrow(Varint), "label bytes 8..16";
    } flags "`MORE` (label continues)";
    Dropped since 1 {
        arg lost: Narrow(Varint), "events lost";
        aux reasons: Wide(Varint), "why (`drop_reason` bits)";
    } flags "";
    ClockSync since 1 {
        addr monotonic_ns: Narrow(Varint), "nanoseconds (CLOCK_MONOTONIC)";
    } flags "";
    CensusBegin since 1 {
        arg pages: Narrow(Varint), "pages that follow";
        arg32 number: Narrow(Varint), "census number";
    } flags "`PARTIAL`, `INITIAL`, `BY_HEAP`, `HEAP_PART`, `ADOPT`";
    CensusPage since 1 {
        addr start: Narrow(PageDelta), "page start";
        arg block_size: Narrow(Varint), "block size (bytes)";
        arg32 capacity: Narrow(Varint), "blocks carved so far";
        aux bin: Narrow(Varint), "bin";
    } flags "page kind; then `CensusPage2`";
    CensusPage2 since 1 {
        addr owner: Narrow(Varint), "owner heap id (0: abandoned)";
        arg counts: Narrow(Varint), "`used \\| local_free << 32`";
        arg32 thread_free: Narrow(Varint), "`thread_free` length";
    } flags "`IN_FULL`, `EPOCH`";
    CensusSegment since 1 {
        addr base: Narrow(SegmentDelta), "segment";
        arg bytes: Narrow(Varint), "bytes mapped";
        arg32 pages: Narrow(Varint), "page count";
    } flags "page kind";
    CensusEnd since 1 {
        arg32 number: Narrow(Varint), "census number";
    } flags "`BY_HEAP`, `HEAP_PART`, `INITIAL`, `ADOPT`";
    StackFrame since 2 {
        addr pc: Narrow(FrameDelta), "return address (the frame's pc)";
        arg parent: Narrow(ParentOfNode), "parent node id (0: outermost frame)";
        arg32 id: Narrow(NodeId), "this node's id";
    } flags "`TRUNCATED`";
    StackMode since 2 {
        arg interval: Narrow(Varint), "mean sampling interval in bytes (0 with mode all)";
        aux mode: Narrow(Varint), "mode (`stack_mode`)";
    } flags "";
    Module since 2 {
        addr bias: Narrow(Varint), "load bias (`dlpi_addr`)";
        arg32 id: Narrow(Varint), "module id";
    } flags "";
    ModuleRange since 2 {
        addr start: Narrow(Varint), "start of an executable range";
        arg len: Narrow(Varint), "its length (bytes)";
        arg32 id: Narrow(Varint), "module id";
    } flags "";
    ModuleText since 2 {
        addr text_lo: Narrow(Varint), "text bytes 0..8";
        arg text_hi: Narrow(Varint), "text bytes 8..16";
        arg32 id: Narrow(Varint), "module id";
        aux what: Narrow(Varint), "0 path, 1 build id (`module_text`)";
    } flags "`MORE` (continues)";
    ModuleGone since 2 {
        arg32 id: Narrow(Varint), "module id";
    } flags "";
}

/// Position of each kind byte in [`TABLE`] (`u8::MAX`: not a kind).
const INDEX: [u8; 256] = {
    let mut t = [u8::MAX; 256];
    let mut i = 0;
    while i < TABLE.len() {
        t[TABLE[i].kind as usize] = i as u8;
        i += 1;
    }
    t
};

/// The schema of the kind byte `kind`, if it names one.
pub const fn fields_of(kind: u8) -> Option<&'static Fields> {
    match INDEX[kind as usize] {
        u8::MAX => None,
        i => Some(&TABLE[i as usize]),
    }
}

/// The one kind whose slot `slot` is written as `how` (a compile-time error if there is not
/// exactly one): lets the encoder name its special codings by the table.
pub const fn kind_coded(slot: usize, how: How) -> EventKind {
    let mut found = None;
    let mut i = 0;
    while i < TABLE.len() {
        if TABLE[i].slots[slot].code.how() as u8 == how as u8 {
            assert!(found.is_none(), "two kinds share a special coding");
            found = Some(TABLE[i].kind);
        }
        i += 1;
    }
    match found {
        Some(k) => k,
        None => panic!("no kind has this coding"),
    }
}

/// The module doc's table, generated from [`TABLE`] (one line per row, without the `//! `).
pub fn doc_table() -> String {
    let mut out =
        String::from("| kind | addr | arg | arg32 | aux | flags |\n|---|---|---|---|---|---|\n");
    for f in TABLE {
        out.push_str(&format!("| `{}` |", f.kind.name()));
        for s in &f.slots {
            let cell = match s.code {
                Code::Unused => String::new(),
                Code::Reserved => "(0)".to_owned(),
                Code::Narrow(_) => format!("`{}`: {}", s.name, s.meaning),
                Code::Wide(_) => format!("`{}`: {} †", s.name, s.meaning),
            };
            out.push(' ');
            out.push_str(&cell);
            if !cell.is_empty() {
                out.push(' ');
            }
            out.push('|');
        }
        out.push(' ');
        out.push_str(f.flags);
        if !f.flags.is_empty() {
            out.push(' ');
        }
        out.push_str("|\n");
    }
    out
}

impl CensusPage2 {
    /// Blocks in use.
    pub const fn used(&self) -> u32 {
        self.counts as u32
    }

    /// Blocks on `local_free`.
    pub const fn local_free(&self) -> u32 {
        (self.counts >> 32) as u32
    }

    /// `counts` from `used` and `local_free`.
    pub const fn counts_of(used: u32, local_free: u32) -> u64 {
        used as u64 | (local_free as u64) << 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_every_kind_once_in_order() {
        let mut last = 0u8;
        let mut n = 0;
        for k in 0..=u8::MAX {
            match (EventKind::from_u8(k), fields_of(k)) {
                (Some(kind), Some(f)) => {
                    assert_eq!(f.kind, kind);
                    assert!(k > last || n == 0);
                    last = k;
                    n += 1;
                }
                (None, None) => {}
                (kind, f) => panic!("kind byte {k}: {kind:?} but {:?}", f.map(|f| f.kind)),
            }
        }
        assert_eq!(n, TABLE.len());
        for f in TABLE {
            assert!(
                f.slots.iter().any(|s| s.code.narrow()),
                "{:?} writes no slot",
                f.kind
            );
            for (i, s) in f.slots.iter().enumerate() {
                let named = !s.name.is_empty();
                assert_eq!(
                    named,
                    matches!(s.code, Code::Narrow(_) | Code::Wide(_)),
                    "{:?}.{}",
                    f.kind,
                    SLOT_NAMES[i]
                );
            }
        }
    }

    #[test]
    fn the_module_doc_table_is_the_schema() {
        let source = include_str!("schema.rs");
        let doc: String = source
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .filter_map(|l| l.strip_prefix("//! "))
            .filter(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect();
        let want = doc_table();
        if doc != want {
            let pasted: String = want.lines().map(|l| format!("//! {l}\n")).collect();
            panic!("the module doc's table differs from TABLE; paste this:\n{pasted}");
        }
    }

    #[test]
    fn views_carry_their_slots() {
        let e = Alloc {
            ptr: 0x10,
            size: 24,
            stack: 7,
            bin: 0,
            flags: crate::event::flags::ZERO,
        }
        .into_event();
        assert_eq!(
            (e.kind, e.addr, e.arg, e.arg32, e.aux, e.flags),
            (EventKind::Alloc as u8, 0x10, 24, 7, 0, 1)
        );
        assert_eq!(Alloc::from_event(&e).stack, 7);
        let c = CensusPage2 {
            owner: 3,
            counts: CensusPage2::counts_of(5, 9),
            thread_free: 2,
            flags: 0,
        };
        assert_eq!((c.used(), c.local_free()), (5, 9));
    }
}
