//! The Sites tab: which code allocated the heap at the replay position. A table of the top
//! allocation sites (sortable by live bytes, peak bytes, bytes allocated, allocations and
//! temporary allocations; hover a site for its stack) and an icicle graph of the live bytes by
//! call path, outermost function at the top, frames merged by function. Both follow the
//! timeline, since they read the model at the replay position. Also the page inspector's list
//! of the sites of a page's live blocks.
//!
//! **Diff mode** (`heaplens view B --diff A`): with a baseline set ([`SitesState::set_baseline`]),
//! the icicle becomes a differential flame graph: widths are the live bytes now, colours the
//! change from the baseline along each call path (red grew, blue shrank, grey unchanged; the
//! deeper the colour, the larger the change relative to the path's bytes), and the sites that
//! grew and shrank most are listed above it. Call paths are matched by function names, so two
//! runs of one program compare although their addresses differ.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use eframe::egui::{self, Color32, RichText, Sense, vec2};
use heaplens_alloc::event::stack_mode;

use super::style;
use crate::export::diff::{Diff, Snapshot, call_path, compare};
use crate::model::{Model, Page, SiteKey, Sites};
use crate::symbols::Symbolizer;

/// Rows the table shows.
const TABLE_ROWS: usize = 50;
/// Deepest icicle level drawn.
const MAX_LEVELS: usize = 48;
/// Lists of sites whose names [`SitesState::names`] keeps.
const LISTS_KEPT: usize = 4;

/// Height of an icicle row.
const ROW: f32 = 20.0;

/// What the Sites tab remembers: the sort column and the symbols resolved so far.
#[derive(Debug)]
pub struct SitesState {
    /// The column the table is sorted by (largest first).
    pub sort: SiteKey,
    /// Symbols, cached per module and pc.
    pub symbols: Symbolizer,
    /// Site names and stacks, by leaf node.
    names: HashMap<u32, (String, String)>,
    /// The last lists of sites named together ([`SitesState::names`]) and their names, newest
    /// last: the table's and the page inspector's, drawn in the same frame.
    listed: Vec<(Vec<u32>, Vec<String>)>,
    /// The site whose pages are listed (clicked in the table).
    pub pages: super::site_pages::SitePages,
    /// The baseline of diff mode: its name and what it held.
    baseline: Option<(String, Snapshot)>,
    /// The comparison with the baseline, and the model position (events applied, time) it
    /// was made at.
    diff: Option<((u64, u64), Diff)>,
}

impl Default for SitesState {
    fn default() -> Self {
        Self {
            sort: SiteKey::LiveBytes,
            symbols: Symbolizer::interactive(),
            names: HashMap::new(),
            listed: Vec::new(),
            pages: super::site_pages::SitePages::default(),
            baseline: None,
            diff: None,
        }
    }
}

/// Rows of each list of diff mode (grew most, shrank most).
const DIFF_ROWS: usize = 5;

impl SitesState {
    /// Compares the Sites tab with `baseline` (what another trace, or another point, held),
    /// called `name`: the icicle becomes a differential flame graph.
    pub fn set_baseline(&mut self, name: impl Into<String>, baseline: Snapshot) {
        self.baseline = Some((name.into(), baseline));
        self.diff = None;
    }

    /// The name of the baseline of diff mode, if one is set.
    pub fn baseline(&self) -> Option<&str> {
        self.baseline.as_ref().map(|(n, _)| n.as_str())
    }

    /// The comparison of `model` with the baseline (cached per position).
    fn diff(&mut self, model: &Model) -> Option<&Diff> {
        let (_, base) = self.baseline.as_ref()?;
        let at = (model.totals().events, model.time());
        if self.diff.as_ref().is_none_or(|(k, _)| *k != at) {
            let before = self.symbols.unresolved();
            let now = Snapshot::take(model, &mut self.symbols);
            // Made with names still unresolved: made again next frame.
            let key = if self.symbols.unresolved() == before {
                at
            } else {
                (u64::MAX, u64::MAX)
            };
            self.diff = Some((key, compare(base, &now)));
        }
        self.diff.as_ref().map(|(_, d)| d)
    }

    /// The names of sites `leaves`, listed together: those that share a name get the caller
    /// that tells them apart ([`crate::symbols::apart`]). Kept while the same sites are listed
    /// and their names are resolved.
    pub fn names(&mut self, sites: &Sites, leaves: &[u32]) -> Vec<String> {
        if let Some((_, names)) = self.listed.iter().find(|(l, _)| l == leaves) {
            return names.clone();
        }
        let before = self.symbols.unresolved();
        let (names, stacks): (Vec<String>, Vec<Vec<String>>) = leaves
            .iter()
            .map(|&leaf| {
                let (name, stack) = self.name(sites, leaf);
                (name, stack.lines().map(str::to_owned).collect())
            })
            .unzip();
        let names = crate::symbols::apart::told_apart(&names, &stacks);
        if self.symbols.unresolved() == before {
            if self.listed.len() >= LISTS_KEPT {
                self.listed.remove(0);
            }
            self.listed.push((leaves.to_vec(), names.clone()));
        }
        names
    }

    /// The name of site `leaf` and its stack as text (one frame a line).
    pub fn name(&mut self, sites: &Sites, leaf: u32) -> (String, String) {
        if let Some(n) = self.names.get(&leaf) {
            return n.clone();
        }
        let before = self.symbols.unresolved();
        let name = self.symbols.site_name(sites, leaf);
        let stack = self.symbols.stack_lines(sites, leaf).join("\n");
        let n = (name, stack);
        if self.names.len() < 100_000 && self.symbols.unresolved() == before {
            self.names.insert(leaf, n.clone());
        }
        n
    }
}

fn help(key: SiteKey) -> &'static str {
    match key {
        SiteKey::LiveBytes => "Bytes the site's blocks hold now (at the replay position)",
        SiteKey::PeakBytes => "The most bytes the site's blocks held at once, up to now",
        SiteKey::TotalBytes => "Bytes the site allocated in all, up to now",
        SiteKey::Allocs => "Allocations the site made, up to now",
        SiteKey::Temporary => {
            "Allocations freed by their thread before its next allocation (short-lived)"
        }
    }
}

fn figure(key: SiteKey, v: f64) -> String {
    match key {
        SiteKey::LiveBytes | SiteKey::PeakBytes | SiteKey::TotalBytes => {
            style::bytes(v.max(0.0).round() as u64)
        }
        SiteKey::Allocs | SiteKey::Temporary => format!("{:.0}", v.max(0.0)),
    }
}

/// Draws the tab; a page clicked in a site's list of pages becomes `selected_page`.
pub fn draw(
    ui: &mut egui::Ui,
    model: &Model,
    state: &mut SitesState,
    selected_page: &mut Option<u64>,
) {
    let sites = model.sites();
    if !sites.is_on() {
        ui.heading("Allocation sites");
        ui.label(
            "This trace has no stacks. Record with `--stacks sampled` (the default) or \
             `--stacks all` to see which code allocated each block.",
        );
        return;
    }
    ui.horizontal(|ui| {
        ui.heading("Allocation sites");
        let mode = match sites.mode() {
            stack_mode::SAMPLED => format!(
                "stacks sampled every {} on average: figures are estimates",
                style::bytes(sites.interval())
            ),
            stack_mode::ALL => "stacks of every allocation: figures are exact".to_owned(),
            _ => "stacks".to_owned(),
        };
        ui.label(RichText::new(mode).weak())
            .on_hover_text("How the recorded program captured its stacks");
    });
    let rows = sites.ranked(state.sort);
    let shown = &rows[..rows.len().min(TABLE_ROWS)];
    let leaves: Vec<u32> = shown.iter().map(|r| r.0).collect();
    let names = state.names(sites, &leaves);
    let name_width = (ui.available_width() * 0.5).max(240.0);
    egui::ScrollArea::vertical()
        .id_salt("sites-table")
        .max_height((ui.available_height() * 0.5).max(120.0))
        .show(ui, |ui| {
            egui::Grid::new("sites-grid")
                .num_columns(1 + SiteKey::ALL.len())
                .striped(true)
                .show(ui, |ui| {
                    ui.label(RichText::new("Site").strong())
                        .on_hover_text("The function that called malloc, with its file and line");
                    for key in SiteKey::ALL {
                        ui.selectable_value(&mut state.sort, key, key.title())
                            .on_hover_text(format!("{}; click to sort by it", help(key)));
                    }
                    ui.end_row();
                    for (rank, ((leaf, s), name)) in shown.iter().zip(&names).enumerate() {
                        // A long name (the callers that tell it apart) is cut at half the
                        // width, so the figures stay in view; the hover shows all of it.
                        let chosen = state.pages.chosen() == Some(*leaf);
                        let label = ui
                            .scope(|ui| {
                                ui.set_max_width(name_width);
                                let text = RichText::new(format!("{}. {name}", rank + 1));
                                let text = if chosen { text.strong() } else { text };
                                ui.add(egui::Label::new(text).truncate().sense(Sense::click()))
                            })
                            .inner;
                        if label.clicked() {
                            state.pages.toggle(*leaf);
                        }
                        if label.hovered() {
                            // The stack only for the row under the pointer, not every row.
                            let (_, stack) = state.name(sites, *leaf);
                            label.on_hover_text(format!(
                                "{name}\n\n{stack}\n\nClick to list the pages its live blocks \
                                 are on"
                            ));
                        }
                        for key in SiteKey::ALL {
                            ui.label(figure(key, key.of(s)));
                        }
                        ui.end_row();
                    }
                });
            if rows.len() > TABLE_ROWS {
                ui.label(format!("... and {} more sites", rows.len() - TABLE_ROWS));
            }
        });
    if let Some(leaf) = state.pages.chosen() {
        ui.separator();
        // Named as the table names it (told apart from the others), if it is listed there.
        let name = match leaves.iter().position(|&l| l == leaf) {
            Some(i) => names[i].clone(),
            None => state.name(sites, leaf).0,
        };
        super::site_pages::draw(ui, model, &mut state.pages, &name, selected_page);
    }
    ui.separator();
    if state.baseline.is_some() {
        diff_summary(ui, model, state);
    }
    let title = if state.baseline.is_some() {
        "Live bytes by call path (red: grew since the baseline, blue: shrank, grey: unchanged)"
    } else {
        "Live bytes by call path"
    };
    ui.label(RichText::new(title).strong()).on_hover_text(
        "An icicle graph: the outermost function on top, each row the functions it called; \
         a box's width is the live bytes allocated under it",
    );
    icicle(ui, model, state);
}

/// The sites that grew and shrank most since the baseline, as lines of text.
fn diff_summary(ui: &mut egui::Ui, model: &Model, state: &mut SitesState) {
    let name = state.baseline().unwrap_or_default().to_owned();
    let Some(d) = state.diff(model) else { return };
    let signed = |v: f64| {
        format!(
            "{}{}",
            if v < 0.0 { "-" } else { "+" },
            style::bytes(v.abs().round() as u64)
        )
    };
    let (a, b) = d.live_bytes;
    ui.label(
        RichText::new(format!(
            "Compared with {name}: live bytes {} then, {} now ({})",
            style::bytes(a),
            style::bytes(b),
            signed(b as f64 - a as f64)
        ))
        .strong(),
    )
    .on_hover_text("Red: call paths whose live bytes grew since the baseline; blue: shrank");
    let grew = d
        .sites
        .iter()
        .filter(|s| s.delta_bytes() > 0.0)
        .take(DIFF_ROWS);
    let mut any = false;
    for s in grew {
        any = true;
        ui.label(
            RichText::new(format!(
                "grew {} ({:+} blocks): {}",
                signed(s.delta_bytes()),
                s.delta_blocks().round() as i64,
                s.site
            ))
            .color(Color32::from_rgb(0xe0, 0x50, 0x40)),
        )
        .on_hover_text(s.stack.join("\n"));
    }
    let shrank: Vec<_> = d
        .sites
        .iter()
        .rev()
        .filter(|s| s.delta_bytes() < 0.0)
        .take(DIFF_ROWS)
        .collect();
    for s in shrank {
        any = true;
        ui.label(
            RichText::new(format!(
                "shrank {} ({:+} blocks): {}",
                signed(s.delta_bytes()),
                s.delta_blocks().round() as i64,
                s.site
            ))
            .color(Color32::from_rgb(0x50, 0x80, 0xe0)),
        )
        .on_hover_text(s.stack.join("\n"));
    }
    if !any {
        ui.label("No site's live bytes changed.");
    }
    ui.separator();
}

/// A node of the call tree: a function, the live bytes under it (now, and in the baseline of
/// diff mode), its callees.
struct Node {
    name: String,
    bytes: f64,
    base: f64,
    children: Vec<usize>,
}

/// Adds `bytes` (or `base`) along `path` from the root, creating nodes as needed.
fn add_path(nodes: &mut Vec<Node>, path: &[String], bytes: f64, base: f64) {
    nodes[0].bytes += bytes;
    nodes[0].base += base;
    let mut cur = 0;
    for name in path.iter().take(MAX_LEVELS) {
        let found = nodes[cur]
            .children
            .iter()
            .copied()
            .find(|&c| nodes[c].name == *name);
        let next = match found {
            Some(c) => c,
            None => {
                nodes.push(Node {
                    name: name.clone(),
                    bytes: 0.0,
                    base: 0.0,
                    children: Vec::new(),
                });
                let c = nodes.len() - 1;
                nodes[cur].children.push(c);
                c
            }
        };
        nodes[next].bytes += bytes;
        nodes[next].base += base;
        cur = next;
    }
}

/// The call tree of the live bytes, outermost frames first, merged by function name; in diff
/// mode with the baseline's bytes along the same paths.
fn call_tree(model: &Model, state: &mut SitesState) -> Vec<Node> {
    let sites = model.sites();
    let mut nodes = vec![Node {
        name: "all live bytes".into(),
        bytes: 0.0,
        base: 0.0,
        children: Vec::new(),
    }];
    for (leaf, s) in sites.ranked(SiteKey::LiveBytes) {
        let path = call_path(sites, &mut state.symbols, leaf);
        add_path(&mut nodes, &path, s.live_bytes, 0.0);
    }
    if let Some((_, base)) = &state.baseline {
        for s in base.sites.values() {
            add_path(&mut nodes, &s.path, 0.0, s.live_bytes);
        }
    }
    nodes
}

/// Diff mode's colour of a node: red as it grew, blue as it shrank, relative to its bytes.
fn diff_color(n: &Node) -> Color32 {
    let change = (n.bytes - n.base) / n.bytes.max(n.base).max(1.0);
    let k = change.abs().clamp(0.0, 1.0) as f32;
    let mix = |from: u8, to: u8| (f32::from(from) + (f32::from(to) - f32::from(from)) * k) as u8;
    if change > 0.001 {
        Color32::from_rgb(mix(0xd8, 0xe8), mix(0xd8, 0x40), mix(0xd8, 0x30))
    } else if change < -0.001 {
        Color32::from_rgb(mix(0xd8, 0x40), mix(0xd8, 0x70), mix(0xd8, 0xe8))
    } else {
        Color32::from_rgb(0xd8, 0xd8, 0xd8)
    }
}

fn color_of(name: &str) -> Color32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    let v = h.finish();
    let (r, g) = (0xc0 + (v & 0x3f) as u8, 0x60 + ((v >> 8) & 0x7f) as u8);
    Color32::from_rgb(r, g, 0x40 + ((v >> 16) & 0x3f) as u8)
}

fn icicle(ui: &mut egui::Ui, model: &Model, state: &mut SitesState) {
    let nodes = call_tree(model, state);
    if nodes[0].bytes <= 0.0 {
        ui.label("No live block has a stack at this point.");
        return;
    }
    // Lay the boxes out level by level: (rect, node).
    let width = ui.available_width().max(100.0);
    let mut boxes: Vec<(egui::Rect, usize)> = Vec::new();
    let mut level = vec![(0usize, 0.0f32, width)];
    let mut depth = 0;
    while !level.is_empty() && depth <= MAX_LEVELS {
        let mut next = Vec::new();
        for (n, x, w) in level {
            boxes.push((
                egui::Rect::from_min_size(egui::pos2(x, depth as f32 * ROW), vec2(w, ROW)),
                n,
            ));
            let mut cx = x;
            for &c in &nodes[n].children {
                let cw = w * (nodes[c].bytes / nodes[n].bytes.max(1.0)) as f32;
                if cw >= 1.0 {
                    next.push((c, cx, cw));
                }
                cx += cw;
            }
        }
        level = next;
        depth += 1;
    }
    let height = depth as f32 * ROW;
    let diff_mode = state.baseline.is_some();
    egui::ScrollArea::vertical()
        .id_salt("icicle")
        .show(ui, |ui| {
            let (rect, resp) = ui.allocate_exact_size(vec2(width, height), Sense::hover());
            let painter = ui.painter_at(rect);
            let font = egui::FontId::proportional(12.0);
            for (r, n) in &boxes {
                let r = r.translate(rect.min.to_vec2()).shrink2(vec2(0.5, 1.0));
                let fill = if diff_mode {
                    diff_color(&nodes[*n])
                } else {
                    color_of(&nodes[*n].name)
                };
                painter.rect_filled(r, 2.0, fill);
                if r.width() > 30.0 {
                    let chars = ((r.width() - 6.0) / 7.0) as usize;
                    let name = &nodes[*n].name;
                    let text: String = if name.chars().count() > chars {
                        name.chars()
                            .take(chars.saturating_sub(1))
                            .chain(['…'])
                            .collect()
                    } else {
                        name.clone()
                    };
                    painter.text(
                        r.left_center() + vec2(3.0, 0.0),
                        egui::Align2::LEFT_CENTER,
                        text,
                        font.clone(),
                        Color32::BLACK,
                    );
                }
            }
            if let Some(pos) = resp.hover_pos() {
                let rel = pos - rect.min;
                if let Some((_, n)) = boxes.iter().find(|(r, _)| r.contains(rel.to_pos2())) {
                    let node = &nodes[*n];
                    let share = 100.0 * node.bytes / nodes[0].bytes;
                    let mut text = format!(
                        "{}\n{} live ({share:.1}%)",
                        node.name,
                        style::bytes(node.bytes.round() as u64)
                    );
                    if diff_mode {
                        text.push_str(&format!(
                            "\n{} in the baseline",
                            style::bytes(node.base.round() as u64)
                        ));
                    }
                    resp.on_hover_text(text);
                }
            }
        });
}

/// The stack of the live block at `addr`, as text, if it has one.
pub fn block_stack(model: &Model, addr: u64, state: &mut SitesState) -> Option<String> {
    let sites = model.sites();
    let b = sites.block(addr)?;
    let (_, stack) = state.name(sites, b.stack);
    Some(format!(
        "{} requested, allocated at:\n{stack}",
        style::bytes(b.size)
    ))
}

/// The sites of page `p`'s live blocks (those with a stack), with blocks and bytes, for the
/// page inspector, then a separator; nothing without stacks.
pub fn page_sites(ui: &mut egui::Ui, model: &Model, p: &Page, state: &mut SitesState) {
    let sites = model.sites();
    if !sites.is_on() {
        return;
    }
    let mut by: HashMap<u32, (u64, u64)> = HashMap::new();
    for i in 0..u64::from(p.capacity) {
        let addr = p.block_addr(i);
        if let Some(b) = sites.block(addr) {
            let e = by.entry(b.stack).or_default();
            e.0 += 1;
            e.1 += b.size;
        }
    }
    ui.label(RichText::new("Allocation sites on this page").strong())
        .on_hover_text("Where the page's live blocks with a stack were allocated");
    if by.is_empty() {
        ui.label("No live block here has a stack.");
        ui.separator();
        return;
    }
    let mut rows: Vec<(u32, (u64, u64))> = by.into_iter().collect();
    rows.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(&b.0)));
    let shown = &rows[..rows.len().min(8)];
    let leaves: Vec<u32> = shown.iter().map(|r| r.0).collect();
    let names = state.names(sites, &leaves);
    egui::Grid::new("page-sites").num_columns(3).show(ui, |ui| {
        for ((leaf, (blocks, bytes)), name) in shown.iter().zip(names) {
            let (_, stack) = state.name(sites, *leaf);
            ui.label(name).on_hover_text(stack);
            ui.label(format!("{blocks} blocks"));
            ui.label(style::bytes(*bytes));
            ui.end_row();
        }
    });
    if rows.len() > 8 {
        ui.label(format!("... and {} more sites", rows.len() - 8));
    }
    ui.separator();
}

#[cfg(test)]
mod tests {
    use heaplens_alloc::event::{Event, EventKind, stack_mode};

    use super::*;

    /// A model recording every stack: stack nodes `frames` (id, pc, parent), then
    /// allocations `allocs` (stack id, address, size).
    fn model_of(frames: &[(u32, u64, u64)], allocs: &[(u32, u64, u64)]) -> Model {
        let e = |kind: EventKind, aux: u16, arg32: u32, addr: u64, arg: u64| Event {
            kind: kind as u8,
            aux,
            arg32,
            addr,
            arg,
            time: 1000,
            ..Event::default()
        };
        let mut m = Model::new();
        m.set_invariant_checks(false);
        m.apply(0, &e(EventKind::StackMode, stack_mode::ALL, 0, 0, 0));
        for &(id, pc, parent) in frames {
            m.apply(1, &e(EventKind::StackFrame, 0, id, pc, parent));
        }
        for &(stack, addr, size) in allocs {
            m.apply(1, &e(EventKind::Alloc, 0, stack, addr, size));
        }
        m
    }

    /// A model with `a` blocks of 1000 B from site 0x1001, `c` of 2000 B from 0x3001 and one
    /// of 500 B from 0x4001, each called from 0x501.
    fn model(a: u64, c: u64) -> Model {
        let base = 0x7f00_0000_0000u64;
        let allocs: Vec<(u32, u64, u64)> = (0..a)
            .map(|i| (2, base + i * 0x1000, 1000))
            .chain((0..c).map(|i| (3, base + 0x10_0000 + i * 0x1000, 2000)))
            .chain([(4, base + 0x20_0000, 500)])
            .collect();
        model_of(
            &[
                (1, 0x501, 0),
                (2, 0x1001, 1),
                (3, 0x3001, 1),
                (4, 0x4001, 1),
            ],
            &allocs,
        )
    }

    #[test]
    fn diff_mode_colours_growth_red_shrinkage_blue_and_the_unchanged_grey() {
        let mut state = SitesState::default();
        let base = Snapshot::take(&model(4, 1), &mut state.symbols);
        state.set_baseline("base", base);
        let now = model(2, 3);
        let nodes = call_tree(&now, &mut state);
        let node = |name: &str| nodes.iter().find(|n| n.name == name).unwrap();
        let (grew, shrank, same) = (node("0x3001"), node("0x1001"), node("0x4001"));
        assert_eq!((grew.bytes, grew.base), (6000.0, 2000.0));
        assert_eq!((shrank.bytes, shrank.base), (2000.0, 4000.0));
        assert_eq!((same.bytes, same.base), (500.0, 500.0));
        let red = diff_color(grew);
        assert!(red.r() > red.b() + 100, "{red:?}");
        let blue = diff_color(shrank);
        assert!(blue.b() > blue.r() + 50, "{blue:?}");
        let grey = diff_color(same);
        assert_eq!((grey.r(), grey.g()), (grey.g(), grey.b()));
        // The caller holds it all: it grew by 2000 B of 8500.
        let root = node("0x501");
        assert_eq!((root.bytes, root.base), (8500.0, 6500.0));
        let d = state.diff(&now).unwrap();
        assert_eq!(d.sites[0].delta_bytes(), 4000.0);
        assert_eq!(d.sites.last().unwrap().delta_bytes(), -2000.0);
        assert_eq!(d.sites.len(), 2);
    }
    /// Two sites whose innermost frame is the same pc, called from different places: listed
    /// together, each gets its caller; listed alone, the name is the frame's.
    #[test]
    fn sites_of_one_function_are_told_apart_by_their_callers() {
        let m = model_of(
            &[(1, 0x501, 0), (2, 0x601, 0), (3, 0x1001, 1), (4, 0x1001, 2)],
            &[(3, 0x7f00_0000_0000, 100), (4, 0x7f00_0001_0000, 100)],
        );
        let mut state = SitesState::default();
        let sites = m.sites();
        let (alone, _) = state.name(sites, 3);
        let names = state.names(sites, &[3, 4]);
        assert_eq!(
            names,
            [format!("{alone} <- 0x501"), format!("{alone} <- 0x601")]
        );
        assert_eq!(state.names(sites, &[3]), [alone]);
    }
}
