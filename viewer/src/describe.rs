//! Events in words, for the event log: "thread worker-2 freed a 48 B block owned by thread main:
//! pushed onto thread_free of page 3 in segment 1". No egui here.

use std::collections::HashMap;

use heaplens_alloc::event::{Event, EventKind, drop_reason, flags};
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
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&ev.addr.to_le_bytes());
    b[8..].copy_from_slice(&ev.arg.to_le_bytes());
    let n = b.iter().position(|&c| c == 0).unwrap_or(16);
    String::from_utf8_lossy(&b[..n]).into_owned()
}

fn bytes(n: u64) -> Bytes {
    Bytes(usize::try_from(n).unwrap_or(usize::MAX))
}

/// One event of `heap`, in words (the model gives names, block sizes and owners as they are now).
pub fn describe(model: &Model, names: &Namer, heap: u32, ev: &Event) -> String {
    use EventKind as K;
    let who = thread(model, heap);
    let page = || names.page(model, ev.addr);
    let block = || model.page_at(ev.addr).map(|r| r.page.block_size);
    let owner = || model.page_at(ev.addr).map(|r| r.page.owner);
    let Some(kind) = ev.event_kind() else {
        return format!("an event of unknown kind {}", ev.kind);
    };
    match kind {
        K::Alloc => {
            let b = block().map_or(String::new(), |b| format!(" (a {} block)", bytes(b)));
            format!("{who} allocated {}{b} from {}", bytes(ev.arg), page())
        }
        K::Free => {
            let size = block().map_or("a".to_owned(), |b| format!("a {}", bytes(b)));
            if ev.flags & flags::FROM_DELAYED != 0 {
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
            let how = if ev.flags & flags::TO_DELAYED != 0 {
                "the page was full, so it went onto its owner's delayed list".to_owned()
            } else if ev.flags & flags::CROSS_THREAD != 0 {
                format!("pushed onto thread_free of {}", page())
            } else {
                format!("pushed onto local_free of {}", page())
            };
            format!("{who} freed {size} block{by}: {how}")
        }
        K::Resize => format!(
            "{who} resized a block in place to {} ({})",
            bytes(ev.arg),
            page()
        ),
        K::Realloc => format!(
            "{who} reallocated {:#x} to {} at {:#x}: the block moved",
            ev.arg,
            bytes(u64::from(ev.arg32)),
            ev.addr
        ),
        K::PageInit => format!(
            "{who} set up {} for {} blocks ({} of them, bin {})",
            page(),
            bytes(ev.arg),
            ev.arg32,
            ev.aux
        ),
        K::PageExtend => format!("{who} carved more of {}: {} blocks now", page(), ev.arg32),
        K::PageCollect => format!(
            "{who} collected {}: {} blocks thread_free -> local_free, {} local_free -> free",
            page(),
            ev.arg32,
            ev.arg
        ),
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
            thread(model, ev.arg32)
        ),
        K::SegmentAlloc => format!(
            "{who} mapped {} ({}, {} pages)",
            names.segment(ev.addr),
            bytes(ev.arg),
            ev.arg32
        ),
        K::SegmentFree => format!(
            "{who} released {} ({}){}",
            names.segment(ev.addr),
            bytes(ev.arg),
            if ev.flags & flags::CACHED != 0 {
                " to the segment cache"
            } else {
                " to the OS"
            }
        ),
        K::SegmentAbandon => format!(
            "{who} exited and abandoned {}: other threads may reclaim it",
            names.segment(ev.addr)
        ),
        K::SegmentReclaim => format!("{who} reclaimed {}", names.segment(ev.addr)),
        K::ThreadStart => format!("{} started (heap {})", thread(model, ev.arg32), ev.arg32),
        K::ThreadExit => format!("{} exited", thread(model, ev.arg32)),
        K::ThreadName => format!("heap {} is thread \"{}\"", ev.arg32, text(ev)),
        K::OsCommit => format!(
            "{who} committed {} at {:#x} from the OS",
            bytes(ev.arg),
            ev.addr
        ),
        K::OsPurge => format!(
            "{who} purged {} at {:#x}: the memory went back to the OS",
            bytes(ev.arg),
            ev.addr
        ),
        K::Mark => format!("marker \"{}\" from {who}", text(ev)),
        K::Dropped => {
            let why: Vec<_> = drop_reason::names(ev.aux).collect();
            format!("{} events were lost ({})", ev.arg, why.join(", "))
        }
        K::ClockSync => "clock sync".to_owned(),
        K::CensusBegin | K::CensusPage | K::CensusPage2 | K::CensusSegment | K::CensusEnd => {
            format!("census record ({})", kind.name())
        }
        K::StackFrame => format!("{who} captured stack frame {} at {:#x}", ev.arg32, ev.addr),
        K::StackMode => "stack capture mode".to_owned(),
        K::Module | K::ModuleRange | K::ModuleText | K::ModuleGone => {
            format!("module {} ({})", ev.arg32, kind.name())
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
        let local = ev(EventKind::Free, 0, page3, 0, 0);
        assert_eq!(
            describe(&m, &names, 1, &local),
            "thread main freed a 48 B block: pushed onto local_free of page 3 in segment 1"
        );
    }
}
