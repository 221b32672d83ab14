//! Events in words, for the event log: "thread worker-2 freed a 48 B block owned by thread main:
//! pushed onto thread_free of page 3 in segment 1". No egui here.

use std::collections::HashMap;

use heaplens_alloc::event::{Event, EventKind, drop_reason, flags};
use heaplens_alloc::schema::{self, Code};
use heaplens_alloc::stats::Bytes;

use crate::model::{Model, segment_base};

/// Names segments by their rank in address order ("segment 1" is the lowest), as the segment
/// map numbers them. Build one per frame and describe many events with it.
#[derive(Debug, Default)]
pub struct Namer {
    rank: HashMap<u64, usize>,
}

impl Namer {
    /// Numbers the model's segments.
    pub fn new(model: &Model) -> Self {
        let rank = model
            .segments_by_address()
            .iter()
            .enumerate()
            .map(|(i, s)| (s.base, i + 1))
            .collect();
        Self { rank }
    }

    /// "segment 3", or the address of a segment that is gone.
    pub fn segment(&self, base: u64) -> String {
        match self.rank.get(&base) {
            Some(n) => format!("segment {n}"),
            None => format!("segment {base:#x}"),
        }
    }

    /// The number of the segment at `base` (1-based), if it is live.
    pub fn number(&self, base: u64) -> Option<usize> {
        self.rank.get(&base).copied()
    }

    /// "page 3 in segment 1" for an address inside a page.
    pub fn page(&self, model: &Model, addr: u64) -> String {
        match model.page_at(addr) {
            Some(r) => format!("page {} in {}", r.page.index, self.segment(r.segment.base)),
            None => format!("a page of {}", self.segment(segment_base(addr))),
        }
    }
}

/// "thread main", from a heap id.
pub fn thread(model: &Model, heap: u32) -> String {
    if heap == 0 {
        return "the process".to_owned();
    }
    match model.heaps().get(heap) {
        Some(h) if !h.name.is_empty() => format!("thread {}", h.name),
        _ => format!("heap {heap}"),
    }
}

fn text(ev: &Event) -> String {
    let b = ev.text();
    let n = b.iter().position(|&c| c == 0).unwrap_or(16);
    String::from_utf8_lossy(&b[..n]).into_owned()
}

/// The slots `ev`'s kind uses, by their names in the schema: "start 0x7f0000010000, block_size
/// 48, capacity 1365, bin 3".
pub fn slots(ev: &Event) -> String {
    let Some(f) = schema::fields_of(ev.kind) else {
        return String::new();
    };
    let values = [ev.addr, ev.arg, u64::from(ev.arg32), u64::from(ev.aux)];
    let mut out = Vec::new();
    for (s, v) in f.slots.iter().zip(values) {
        if !matches!(s.code, Code::Narrow(_) | Code::Wide(_)) {
            continue;
        }
        // Addresses in hex.
        if matches!(
            s.name,
            "ptr" | "old" | "start" | "base" | "addr" | "pc" | "bias"
        ) {
            out.push(format!("{} {v:#x}", s.name));
        } else {
            out.push(format!("{} {v}", s.name));
        }
    }
    if ev.flags != 0 {
        out.push(format!("flags {:#x}", ev.flags));
    }
    out.join(", ")
}

fn bytes(n: u64) -> Bytes {
    Bytes(usize::try_from(n).unwrap_or(usize::MAX))
}

/// One event of `heap`, in words (the model gives names, block sizes and owners as they are now).
pub fn describe(model: &Model, names: &Namer, heap: u32, ev: &Event) -> String {
    use EventKind as K;
    let who = thread(model, heap);
    // Blocks and pages are named by `addr` in every kind that names one (`ptr`, `start`).
    let page = || names.page(model, ev.addr);
    let block = || model.page_at(ev.addr).map(|r| r.page.block_size);
    let owner = || model.page_at(ev.addr).map(|r| r.page.owner);
    let Some(kind) = ev.event_kind() else {
        return format!("an event of unknown kind {}", ev.kind);
    };
    match kind {
        K::Alloc => {
            let b = block().map_or(String::new(), |b| format!(" (a {} block)", bytes(b)));
            let a = schema::Alloc::from_event(ev);
            format!("{who} allocated {}{b} from {}", bytes(a.size), page())
        }
        K::Free => {
            let size = block().map_or("a".to_owned(), |b| format!("a {}", bytes(b)));
            let f = schema::Free::from_event(ev).flags;
            if f & flags::FROM_DELAYED != 0 {
                return format!(
                    "{who} took {size} block off its delayed list onto local_free of {}",
                    page()
                );
            }
            let by = match owner() {
                Some(o) if o != heap && o != 0 => format!(" owned by {}", thread(model, o)),
                Some(0) => " of an abandoned page".to_owned(),
                _ => String::new(),
            };
            let how = if f & flags::TO_DELAYED != 0 {
                "the page was full, so it went onto its owner's delayed list".to_owned()
            } else if f & flags::CROSS_THREAD != 0 {
                format!("pushed onto thread_free of {}", page())
            } else {
                format!("pushed onto local_free of {}", page())
            };
            format!("{who} freed {size} block{by}: {how}")
        }
        K::Resize => format!(
            "{who} resized a block in place to {} ({})",
            bytes(schema::Resize::from_event(ev).size),
            page()
        ),
        K::Realloc => {
            let r = schema::Realloc::from_event(ev);
            format!(
                "{who} reallocated {:#x} to {} at {:#x}: the block moved",
                r.old,
                bytes(u64::from(r.size)),
                r.ptr
            )
        }
        K::PageInit => {
            let p = schema::PageInit::from_event(ev);
            format!(
                "{who} set up {} for {} blocks ({} of them, bin {})",
                page(),
                bytes(p.block_size),
                p.reserved,
                p.bin
            )
        }
        K::PageExtend => format!(
            "{who} carved more of {}: {} blocks now",
            page(),
            schema::PageExtend::from_event(ev).capacity
        ),
        K::PageCollect => {
            let c = schema::PageCollect::from_event(ev);
            format!(
                "{who} collected {}: {} blocks thread_free -> local_free, {} local_free -> free",
                page(),
                c.from_thread_free,
                c.to_free
            )
        }
        K::PageFull => format!(
            "{}: no free block left, moved to {who}'s full queue",
            page()
        ),
        K::PageUnfull => format!(
            "{}: a block was freed, back from the full queue to its bin's queue",
            page()
        ),
        K::PageRetire => format!("{} is empty; {who} keeps it a moment for reuse", page()),
        K::PageFree => format!("{who} gave {} back to its segment", page()),
        K::PageReclaim => format!(
            "{} of an abandoned segment now belongs to {}",
            page(),
            thread(model, schema::PageReclaim::from_event(ev).owner)
        ),
        K::SegmentAlloc => {
            let s = schema::SegmentAlloc::from_event(ev);
            format!(
                "{who} mapped {} ({}, {} pages)",
                names.segment(s.base),
                bytes(s.bytes),
                s.pages
            )
        }
        K::SegmentFree => {
            let s = schema::SegmentFree::from_event(ev);
            format!(
                "{who} released {} ({}){}",
                names.segment(s.base),
                bytes(s.bytes),
                if s.flags & flags::CACHED != 0 {
                    " to the segment cache"
                } else {
                    " to the OS"
                }
            )
        }
        K::SegmentAbandon => format!(
            "{who} exited and abandoned {}: other threads may reclaim it",
            names.segment(schema::SegmentAbandon::from_event(ev).base)
        ),
        K::SegmentReclaim => format!(
            "{who} reclaimed {}",
            names.segment(schema::SegmentReclaim::from_event(ev).base)
        ),
        K::ThreadStart => {
            let s = schema::ThreadStart::from_event(ev);
            format!(
                "{} started (heap {}, thread id {})",
                thread(model, s.heap),
                s.heap,
                s.os_tid
            )
        }
        K::ThreadExit => format!(
            "{} exited",
            thread(model, schema::ThreadExit::from_event(ev).heap)
        ),
        K::ThreadName => format!(
            "heap {} is thread \"{}\"",
            schema::ThreadName::from_event(ev).heap,
            text(ev)
        ),
        K::OsCommit => {
            let o = schema::OsCommit::from_event(ev);
            format!(
                "{who} committed {} at {:#x} from the OS",
                bytes(o.bytes),
                o.addr
            )
        }
        K::OsPurge => {
            let o = schema::OsPurge::from_event(ev);
            format!(
                "{who} purged {} at {:#x}: the memory went back to the OS",
                bytes(o.bytes),
                o.addr
            )
        }
        K::Mark => format!("marker \"{}\" from {who}", text(ev)),
        K::Dropped => {
            let d = schema::Dropped::from_event(ev);
            let why: Vec<_> = drop_reason::names(d.reasons).collect();
            format!("{} events were lost ({})", d.lost, why.join(", "))
        }
        K::ClockSync => "clock sync".to_owned(),
        K::CensusBegin | K::CensusPage | K::CensusPage2 | K::CensusSegment | K::CensusEnd => {
            format!("census record ({}: {})", kind.name(), slots(ev))
        }
        K::StackFrame => {
            let f = schema::StackFrame::from_event(ev);
            format!("{who} captured stack frame {} at {:#x}", f.id, f.pc)
        }
        K::StackMode => format!("stack capture mode ({})", slots(ev)),
        K::Module | K::ModuleRange | K::ModuleText | K::ModuleGone => {
            format!("module event ({}: {})", kind.name(), slots(ev))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heaplens_alloc::event::EventKind;

    fn ev(kind: EventKind, flags: u8, addr: u64, arg: u64, arg32: u32) -> Event {
        Event {
            kind: kind as u8,
            flags,
            addr,
            arg,
            arg32,
            ..Event::default()
        }
    }

    #[test]
    fn a_cross_thread_free_names_both_threads_the_list_and_the_page() {
        let seg = 0x7000_0000_0000u64;
        let mut m = Model::new();
        let name = |heap: u32, n: &str| {
            let mut b = [0u8; 16];
            b[..n.len()].copy_from_slice(n.as_bytes());
            Event {
                kind: EventKind::ThreadName as u8,
                arg32: heap,
                addr: u64::from_le_bytes(b[..8].try_into().unwrap()),
                arg: u64::from_le_bytes(b[8..].try_into().unwrap()),
                ..Event::default()
            }
        };
        m.apply(0, &name(1, "main"));
        m.apply(0, &name(2, "worker-2"));
        m.apply(1, &ev(EventKind::SegmentAlloc, 0, seg, 4 << 20, 64));
        let page3 = seg + 3 * 65536;
        m.apply(1, &ev(EventKind::PageInit, 0, page3, 48, 1365));
        m.apply(1, &ev(EventKind::Alloc, 0, page3, 40, 0));
        let names = Namer::new(&m);
        let free = ev(EventKind::Free, flags::CROSS_THREAD, page3, 0, 0);
        assert_eq!(
            describe(&m, &names, 2, &free),
            "thread worker-2 freed a 48 B block owned by thread main: pushed onto thread_free of page 3 in segment 1"
        );
        let census = Event {
            aux: 3,
            ..ev(EventKind::CensusPage, 0, page3, 48, 1365)
        };
        assert_eq!(
            describe(&m, &names, 0, &census),
            "census record (CensusPage: start 0x700000030000, block_size 48, capacity 1365, bin 3)"
        );
        let local = ev(EventKind::Free, 0, page3, 0, 0);
        assert_eq!(
            describe(&m, &names, 1, &local),
            "thread main freed a 48 B block: pushed onto local_free of page 3 in segment 1"
        );
    }
}
