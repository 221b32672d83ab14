//! The Sites tab: which code allocated the heap at the replay position. A table of the top
//! allocation sites (sortable by live bytes, peak bytes, bytes allocated, allocations and
//! temporary allocations; hover a site for its stack) and an icicle graph of the live bytes by
//! call path, outermost function at the top, frames merged by function. Both follow the
//! timeline, since they read the model at the replay position. Also the page inspector's list
//! of the sites of a page's live blocks.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use eframe::egui::{self, Color32, RichText, Sense, vec2};
use heaplens_alloc::event::stack_mode;

use super::style;
use crate::model::{Model, Page, SiteKey, Sites};
use crate::symbols::Symbolizer;

/// Rows the table shows.
const TABLE_ROWS: usize = 50;
/// Deepest icicle level drawn.
const MAX_LEVELS: usize = 48;
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
}

impl Default for SitesState {
    fn default() -> Self {
        Self {
            sort: SiteKey::LiveBytes,
            symbols: Symbolizer::new(),
            names: HashMap::new(),
        }
    }
}

impl SitesState {
    /// The name of site `leaf` and its stack as text (one frame a line).
    pub fn name(&mut self, sites: &Sites, leaf: u32) -> (String, String) {
        if let Some(n) = self.names.get(&leaf) {
            return n.clone();
        }
        let name = self.symbols.site_name(sites, leaf);
        let stack = self.symbols.stack_lines(sites, leaf).join("\n");
        let n = (name, stack);
        if self.names.len() < 100_000 {
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

/// Draws the tab.
pub fn draw(ui: &mut egui::Ui, model: &Model, state: &mut SitesState) {
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
                    for (rank, (leaf, s)) in rows.iter().take(TABLE_ROWS).enumerate() {
                        let (name, stack) = state.name(sites, *leaf);
                        ui.label(format!("{}. {name}", rank + 1))
                            .on_hover_text(stack);
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
    ui.separator();
    ui.label(RichText::new("Live bytes by call path").strong())
        .on_hover_text(
            "An icicle graph: the outermost function on top, each row the functions it called; \
         a box's width is the live bytes allocated under it",
        );
    icicle(ui, model, state);
}

/// A node of the call tree: a function, the live bytes under it, its callees.
struct Node {
    name: String,
    bytes: f64,
    children: Vec<usize>,
}

/// The call tree of the live bytes, outermost frames first, merged by function name.
fn call_tree(model: &Model, state: &mut SitesState) -> Vec<Node> {
    let sites = model.sites();
    let mut nodes = vec![Node {
        name: "all live bytes".into(),
        bytes: 0.0,
        children: Vec::new(),
    }];
    for (leaf, s) in sites.ranked(SiteKey::LiveBytes) {
        let mut path: Vec<String> = Vec::new();
        for f in sites.stack(leaf).iter().rev() {
            let loc = state.symbols.frame(sites, f.pc);
            if loc.frames.iter().all(|fr| fr.function.is_none()) {
                path.push(loc.raw());
            } else {
                path.extend(loc.frames.iter().rev().map(|fr| fr.name().to_owned()));
            }
        }
        nodes[0].bytes += s.live_bytes;
        let mut cur = 0;
        for name in path.into_iter().take(MAX_LEVELS) {
            let found = nodes[cur]
                .children
                .iter()
                .copied()
                .find(|&c| nodes[c].name == name);
            let next = match found {
                Some(c) => c,
                None => {
                    nodes.push(Node {
                        name,
                        bytes: 0.0,
                        children: Vec::new(),
                    });
                    let c = nodes.len() - 1;
                    nodes[cur].children.push(c);
                    c
                }
            };
            nodes[next].bytes += s.live_bytes;
            cur = next;
        }
    }
    nodes
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
    egui::ScrollArea::vertical()
        .id_salt("icicle")
        .show(ui, |ui| {
            let (rect, resp) = ui.allocate_exact_size(vec2(width, height), Sense::hover());
            let painter = ui.painter_at(rect);
            let font = egui::FontId::proportional(12.0);
            for (r, n) in &boxes {
                let r = r.translate(rect.min.to_vec2()).shrink2(vec2(0.5, 1.0));
                painter.rect_filled(r, 2.0, color_of(&nodes[*n].name));
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
                    resp.on_hover_text(format!(
                        "{}\n{} live ({share:.1}%)",
                        node.name,
                        style::bytes(node.bytes.round() as u64)
                    ));
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
        let addr = p.start.wrapping_add(i.wrapping_mul(p.block_size));
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
    egui::Grid::new("page-sites").num_columns(3).show(ui, |ui| {
        for (leaf, (blocks, bytes)) in rows.iter().take(8) {
            let (name, stack) = state.name(sites, *leaf);
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
