//! The stack profile every stack-based export writes: locations (a pc with its functions,
//! inlined ones first), mappings (the modules), and samples (a stack of locations, leaf first,
//! with pprof's four values).
//!
//! With stacks, a sample is an allocation site: its stack, and its allocations, bytes
//! allocated, live blocks and live bytes at the position (weighted estimates when sampled,
//! exact with stacks `all`). Without stacks the allocator's structure stands in for the call
//! stack, outermost first: the thread (the heap that owns the page), the size class, the page.
//! Live blocks are grouped by page; allocations, which the model does not keep per page, by
//! thread and size class ([`StructureTally`]).

use std::collections::{BTreeMap, HashMap};

use heaplens_alloc::event::{Event, EventKind};

use super::Metric;
use crate::model::{Model, Sites};
use crate::symbols::Symbolizer;

/// One function of a location.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Line {
    /// Function name (demangled), or `module+0xoffset` when unresolved.
    pub function: String,
    /// Source file, if known.
    pub file: String,
    /// Source line, 0 if unknown.
    pub line: u32,
}

/// A pc, or a place in the allocator's structure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// The pc (0 for the allocator's structure).
    pub address: u64,
    /// Index + 1 of its mapping in [`Profile::mappings`] (0: none).
    pub mapping: u32,
    /// Its functions, the innermost inlined one first, the real function last.
    pub lines: Vec<Line>,
}

/// A module the pcs are in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// First address of its executable ranges.
    pub start: u64,
    /// End of its executable ranges.
    pub limit: u64,
    /// The file offset (ELF address) that `start` maps to.
    pub file_offset: u64,
    /// The file's path.
    pub path: String,
    /// GNU build id in hex, if recorded.
    pub build_id: String,
}

/// One stack and its four values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Indices into [`Profile::locations`], leaf first.
    pub stack: Vec<u32>,
    /// alloc_objects, alloc_space, inuse_objects, inuse_space (the order of [`Metric::ALL`]).
    pub values: [f64; 4],
}

impl Sample {
    /// The value of `m`.
    pub fn value(&self, m: Metric) -> f64 {
        self.values[m.index()]
    }
}

/// A heap profile at one position.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// Modules.
    pub mappings: Vec<Mapping>,
    /// Locations, referred to by index.
    pub locations: Vec<Location>,
    /// Samples.
    pub samples: Vec<Sample>,
    /// Whether the stacks are call stacks (false: the allocator's structure).
    pub call_stacks: bool,
    /// Trace time of the position (ns).
    pub time: u64,
}

impl Profile {
    /// The sum of `m` over the samples.
    pub fn total(&self, m: Metric) -> f64 {
        self.samples.iter().map(|s| s.value(m)).sum()
    }

    /// The stack of `s` as function names, outermost first (inlined functions after the
    /// function they were inlined into).
    pub fn names_root_first<'a>(&'a self, s: &'a Sample) -> impl Iterator<Item = &'a Line> + 'a {
        s.stack.iter().rev().flat_map(move |&l| {
            self.locations
                .get(l as usize)
                .into_iter()
                .flat_map(|loc| loc.lines.iter().rev())
        })
    }

    /// The profile of `model` at its current position; `tally` counts allocations without
    /// stacks.
    pub fn build(model: &Model, tally: &StructureTally, sym: &mut Symbolizer) -> Profile {
        if model.sites().is_on() {
            from_sites(model, sym)
        } else {
            from_structure(model, tally)
        }
    }
}

fn from_sites(model: &Model, sym: &mut Symbolizer) -> Profile {
    let sites = model.sites();
    let mut p = Profile {
        call_stacks: true,
        time: model.time(),
        ..Profile::default()
    };
    let mut mapping_of: HashMap<u32, u32> = HashMap::new();
    for m in sites.modules() {
        let Some(start) = m.ranges.iter().map(|r| r.0).min() else {
            continue;
        };
        let limit = m
            .ranges
            .iter()
            .map(|r| r.0.saturating_add(r.1))
            .max()
            .unwrap_or(start);
        p.mappings.push(Mapping {
            start,
            limit,
            file_offset: start.wrapping_sub(m.bias),
            path: m.path.clone(),
            build_id: m.build_id.iter().map(|b| format!("{b:02x}")).collect(),
        });
        mapping_of.insert(m.id, p.mappings.len() as u32);
    }
    let mut loc_of: HashMap<u64, u32> = HashMap::new();
    let mut truncated: Option<u32> = None;
    let mut ids: Vec<(u32, _)> = sites.sites().map(|(k, s)| (k, *s)).collect();
    ids.sort_by_key(|(k, _)| *k);
    for (leaf, s) in ids {
        let frames = sites.stack(leaf);
        let mut stack = Vec::with_capacity(frames.len() + 1);
        for f in &frames {
            let i = *loc_of.entry(f.pc).or_insert_with(|| {
                p.locations.push(location(sites, sym, f.pc, &mapping_of));
                (p.locations.len() - 1) as u32
            });
            stack.push(i);
        }
        if frames.last().is_some_and(|f| f.truncated) {
            let i = *truncated.get_or_insert_with(|| {
                p.locations.push(named("[truncated stack]"));
                (p.locations.len() - 1) as u32
            });
            stack.push(i);
        }
        p.samples.push(Sample {
            stack,
            values: [s.allocs, s.total_bytes, s.live_blocks, s.live_bytes],
        });
    }
    p
}

fn location(
    sites: &Sites,
    sym: &mut Symbolizer,
    pc: u64,
    mapping_of: &HashMap<u32, u32>,
) -> Location {
    let loc = sym.frame(sites, pc);
    let mapping = sites
        .module_of(pc)
        .and_then(|m| mapping_of.get(&m.id).copied())
        .unwrap_or(0);
    let lines = if loc.frames.iter().all(|f| f.function.is_none()) {
        vec![Line {
            function: loc.raw(),
            ..Line::default()
        }]
    } else {
        loc.frames
            .iter()
            .map(|f| Line {
                function: f.name().to_owned(),
                file: f.file.clone().unwrap_or_default(),
                line: f.line.unwrap_or(0),
            })
            .collect()
    };
    Location {
        address: pc,
        mapping,
        lines,
    }
}

fn named(name: &str) -> Location {
    Location {
        lines: vec![Line {
            function: name.to_owned(),
            ..Line::default()
        }],
        ..Location::default()
    }
}

/// Allocations per thread and size class, for traces without stacks: `(heap, bin, block size)`
/// -> `(allocations, bytes)`. Bounded by threads × size classes.
#[derive(Clone, Debug, Default)]
pub struct StructureTally {
    by: BTreeMap<(u32, u16, u64), (u64, u64)>,
}

impl StructureTally {
    /// Counts `ev` (already applied to `model`) if it is an allocation.
    pub fn on_event(&mut self, model: &Model, heap: u32, ev: &Event) {
        if ev.kind != EventKind::Alloc as u8 {
            return;
        }
        let (bin, size) = model
            .page_at(ev.addr)
            .map_or((0, 0), |r| (r.page.bin, r.page.block_size));
        let e = self.by.entry((heap, bin, size)).or_default();
        e.0 += 1;
        e.1 += ev.arg;
    }

    /// `(heap, bin, block size, allocations, bytes)`.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u16, u64, u64, u64)> + '_ {
        self.by
            .iter()
            .map(|(&(h, b, s), &(n, bytes))| (h, b, s, n, bytes))
    }
}

fn thread_name(model: &Model, heap: u32) -> String {
    if heap == 0 {
        return "abandoned pages".into();
    }
    if heap == u32::MAX {
        return "outside known pages".into();
    }
    model
        .heaps()
        .get(heap)
        .map_or_else(|| format!("heap {heap}"), crate::model::Heap::label)
}

fn size_class_name(bin: u16, block_size: u64) -> String {
    format!("size class {bin} ({block_size} B blocks)")
}

fn from_structure(model: &Model, tally: &StructureTally) -> Profile {
    let mut p = Profile {
        call_stacks: false,
        time: model.time(),
        ..Profile::default()
    };
    let mut loc_of: HashMap<String, u32> = HashMap::new();
    let mut loc = |p: &mut Profile, name: String| -> u32 {
        *loc_of.entry(name).or_insert_with_key(|n| {
            p.locations.push(named(n));
            (p.locations.len() - 1) as u32
        })
    };
    // Live blocks by (owner, bin, block size, page).
    let mut live: BTreeMap<(u32, u16, u64, u64), (u64, u64)> = BTreeMap::new();
    for b in model.live_blocks() {
        let key = model.page_at(b.addr).map_or((u32::MAX, 0, 0, 0), |r| {
            (r.page.owner, r.page.bin, r.page.block_size, r.page.start)
        });
        let e = live.entry(key).or_default();
        e.0 += 1;
        e.1 += b.size;
    }
    for ((heap, bin, size, page), (n, bytes)) in live {
        let stack = vec![
            loc(&mut p, format!("page {page:#x}")),
            loc(&mut p, size_class_name(bin, size)),
            loc(&mut p, thread_name(model, heap)),
        ];
        p.samples.push(Sample {
            stack,
            values: [0.0, 0.0, n as f64, bytes as f64],
        });
    }
    for (heap, bin, size, n, bytes) in tally.iter() {
        let stack = vec![
            loc(&mut p, size_class_name(bin, size)),
            loc(&mut p, thread_name(model, heap)),
        ];
        p.samples.push(Sample {
            stack,
            values: [n as f64, bytes as f64, 0.0, 0.0],
        });
    }
    p
}
