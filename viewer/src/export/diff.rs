//! Comparing two positions (two traces, or two markers of one): which allocation sites and
//! size classes grew, by live bytes and blocks.
//!
//! Sites of different runs have different ids and pcs (address space layout differs), so a
//! site is known by its symbolised stack: sites whose stacks read the same are one site, in a
//! run and across runs. Size classes are known by block size.

use std::collections::BTreeMap;

use crate::model::{Model, Sites};
use crate::symbols::Symbolizer;

/// Live figures of one site at one position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteFigures {
    /// The site's name (the program's innermost function, with file:line).
    pub site: String,
    /// Its stack, one function a line, leaf first.
    pub stack: Vec<String>,
    /// Its call path by function name, outermost first (the icicle's path).
    pub path: Vec<String>,
    /// Bytes requested by its live blocks.
    pub live_bytes: f64,
    /// Its live blocks.
    pub live_blocks: f64,
}

/// Live figures of one size class at one position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassFigures {
    /// The bin.
    pub bin: u16,
    /// Blocks the program holds.
    pub live_blocks: i64,
    /// Their bytes (block bytes).
    pub live_bytes: i64,
}

/// What is live at one position, by site and by size class.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// By stack (its lines joined).
    pub sites: BTreeMap<String, SiteFigures>,
    /// By block size.
    pub classes: BTreeMap<u64, ClassFigures>,
    /// Requested bytes of every live block.
    pub live_bytes: u64,
    /// Live blocks.
    pub live_blocks: u64,
    /// Whether the trace has stacks.
    pub stacks: bool,
}

/// The call path of site `leaf` by function name, outermost first: each frame's functions with
/// those inlined into it after it, `module+0xoffset` for a pc without symbols.
pub fn call_path(sites: &Sites, sym: &mut Symbolizer, leaf: u32) -> Vec<String> {
    let mut path = Vec::new();
    for f in sites.stack(leaf).iter().rev() {
        let loc = sym.frame(sites, f.pc);
        if loc.frames.iter().all(|fr| fr.function.is_none()) {
            path.push(loc.raw());
        } else {
            path.extend(loc.frames.iter().rev().map(|fr| fr.name().to_owned()));
        }
    }
    path
}

impl Snapshot {
    /// What `model` holds now.
    pub fn take(model: &Model, sym: &mut Symbolizer) -> Snapshot {
        let sites = model.sites();
        let mut snap = Snapshot {
            live_bytes: model.live().requested_bytes(),
            live_blocks: model.live().len(),
            stacks: sites.is_on(),
            ..Snapshot::default()
        };
        for (leaf, s) in sites.sites() {
            if s.live_blocks.abs() < 1e-9 && s.live_bytes.abs() < 1e-6 {
                continue;
            }
            let stack = sym.stack_lines(sites, leaf);
            let key = stack.join("\n");
            let e = snap.sites.entry(key).or_insert_with(|| SiteFigures {
                site: sym.site_name(sites, leaf),
                path: call_path(sites, sym, leaf),
                stack,
                ..SiteFigures::default()
            });
            e.live_bytes += s.live_bytes;
            e.live_blocks += s.live_blocks;
        }
        // Sites that share a name get the callers that tell them apart.
        let (names, stacks): (Vec<String>, Vec<Vec<String>>) = snap
            .sites
            .values()
            .map(|f| (f.site.clone(), f.stack.clone()))
            .unzip();
        let told = crate::symbols::apart::told_apart(&names, &stacks);
        for (f, name) in snap.sites.values_mut().zip(told) {
            f.site = name;
        }
        for g in model.bins(None) {
            let e = snap.classes.entry(g.block_size).or_default();
            e.bin = g.bin;
            e.live_blocks += g.totals.held;
            e.live_bytes += g.totals.held_bytes;
        }
        snap
    }
}

/// One site's change from A to B.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteChange {
    /// The site's name.
    pub site: String,
    /// Its stack, leaf first.
    pub stack: Vec<String>,
    /// Live bytes at A and at B.
    pub bytes: (f64, f64),
    /// Live blocks at A and at B.
    pub blocks: (f64, f64),
}

impl SiteChange {
    /// Bytes B − A.
    pub fn delta_bytes(&self) -> f64 {
        self.bytes.1 - self.bytes.0
    }

    /// Blocks B − A.
    pub fn delta_blocks(&self) -> f64 {
        self.blocks.1 - self.blocks.0
    }
}

/// One size class's change from A to B.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassChange {
    /// The bin.
    pub bin: u16,
    /// Its block size.
    pub block_size: u64,
    /// Live block bytes at A and at B.
    pub bytes: (i64, i64),
    /// Live blocks at A and at B.
    pub blocks: (i64, i64),
}

impl ClassChange {
    /// Bytes B − A.
    pub fn delta_bytes(&self) -> i64 {
        self.bytes.1 - self.bytes.0
    }
}

/// The changes from A to B: sites and size classes whose live bytes or blocks differ, the
/// largest growth first (then the largest shrink last).
#[derive(Clone, Debug, Default)]
pub struct Diff {
    /// Sites.
    pub sites: Vec<SiteChange>,
    /// Size classes.
    pub classes: Vec<ClassChange>,
    /// Requested bytes live at A and at B.
    pub live_bytes: (u64, u64),
    /// Blocks live at A and at B.
    pub live_blocks: (u64, u64),
}

/// Compares `a` with `b`.
pub fn compare(a: &Snapshot, b: &Snapshot) -> Diff {
    let mut sites: BTreeMap<&str, SiteChange> = BTreeMap::new();
    for (side, snap) in [(0, a), (1, b)] {
        for (key, s) in &snap.sites {
            let e = sites.entry(key).or_insert_with(|| SiteChange {
                site: s.site.clone(),
                stack: s.stack.clone(),
                ..SiteChange::default()
            });
            if side == 0 {
                e.bytes.0 += s.live_bytes;
                e.blocks.0 += s.live_blocks;
            } else {
                e.bytes.1 += s.live_bytes;
                e.blocks.1 += s.live_blocks;
            }
        }
    }
    let mut sites: Vec<SiteChange> = sites
        .into_values()
        .filter(|c| c.delta_bytes().abs() >= 0.5 || c.delta_blocks().abs() >= 0.5)
        .collect();
    sites.sort_by(|x, y| {
        y.delta_bytes()
            .total_cmp(&x.delta_bytes())
            .then_with(|| x.site.cmp(&y.site))
    });
    let mut classes: BTreeMap<u64, ClassChange> = BTreeMap::new();
    for (side, snap) in [(0, a), (1, b)] {
        for (&size, c) in &snap.classes {
            let e = classes.entry(size).or_insert(ClassChange {
                bin: c.bin,
                block_size: size,
                ..ClassChange::default()
            });
            if side == 0 {
                e.bytes.0 += c.live_bytes;
                e.blocks.0 += c.live_blocks;
            } else {
                e.bytes.1 += c.live_bytes;
                e.blocks.1 += c.live_blocks;
            }
        }
    }
    let mut classes: Vec<ClassChange> = classes
        .into_values()
        .filter(|c| c.bytes.0 != c.bytes.1 || c.blocks.0 != c.blocks.1)
        .collect();
    classes.sort_by(|x, y| {
        y.delta_bytes()
            .cmp(&x.delta_bytes())
            .then(x.block_size.cmp(&y.block_size))
    });
    Diff {
        sites,
        classes,
        live_bytes: (a.live_bytes, b.live_bytes),
        live_blocks: (a.live_blocks, b.live_blocks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, bytes: f64, blocks: f64) -> (String, SiteFigures) {
        (
            name.to_owned(),
            SiteFigures {
                site: name.to_owned(),
                stack: vec![name.to_owned()],
                path: vec![name.to_owned()],
                live_bytes: bytes,
                live_blocks: blocks,
            },
        )
    }

    #[test]
    fn changes_are_ranked_by_growth_and_unchanged_sites_left_out() {
        let a = Snapshot {
            sites: [site("same", 10.0, 1.0), site("shrank", 500.0, 5.0)].into(),
            ..Snapshot::default()
        };
        let b = Snapshot {
            sites: [
                site("same", 10.0, 1.0),
                site("shrank", 100.0, 1.0),
                site("new", 4000.0, 40.0),
            ]
            .into(),
            ..Snapshot::default()
        };
        let d = compare(&a, &b);
        let names: Vec<&str> = d.sites.iter().map(|s| s.site.as_str()).collect();
        assert_eq!(names, ["new", "shrank"]);
        assert_eq!(d.sites[0].delta_bytes(), 4000.0);
        assert_eq!(d.sites[0].delta_blocks(), 40.0);
        assert_eq!(d.sites[1].delta_bytes(), -400.0);
    }
}
