//! The pages of one allocation site: a site clicked in the Sites table lists the pages its live
//! blocks sit on, with how full each is, and a page clicked there opens in the inspector. From
//! "which code allocated this" to the allocator's structures that code keeps in use (a site
//! whose few survivors pin mostly empty pages).

use std::collections::HashMap;

use eframe::egui::{self, RichText};

use super::style;
use crate::model::Model;

/// Pages listed at most (the rest are counted).
const ROWS: usize = 12;

/// A page holding live blocks of a site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SitePage {
    /// The page's first block.
    pub start: u64,
    /// Its blocks' size.
    pub block_size: u64,
    /// The site's live blocks on it.
    pub blocks: u64,
    /// Their requested bytes.
    pub bytes: u64,
    /// The blocks the program holds on it, the site's and others' ([`crate::model::Page::held`]).
    pub held: i64,
    /// The blocks it has room for.
    pub reserved: u32,
}

/// The pages holding live blocks of site `leaf` (a stack's leaf node), the most of its bytes
/// first. With sampled stacks, the sampled blocks only.
#[must_use]
pub fn pages_of_site(model: &Model, leaf: u32) -> Vec<SitePage> {
    let mut by: HashMap<u64, SitePage> = HashMap::new();
    for (addr, b) in model.sites().blocks() {
        if b.stack != leaf {
            continue;
        }
        let Some(r) = model.page_at(addr) else {
            continue;
        };
        let p = by.entry(r.page.start).or_insert_with(|| SitePage {
            start: r.page.start,
            block_size: r.page.block_size,
            blocks: 0,
            bytes: 0,
            held: r.page.held(),
            reserved: r.page.reserved,
        });
        p.blocks += 1;
        p.bytes += b.size;
    }
    let mut pages: Vec<SitePage> = by.into_values().collect();
    pages.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.start.cmp(&b.start)));
    pages
}

/// The site whose pages are listed.
#[derive(Debug, Default)]
pub struct SitePages {
    chosen: Option<u32>,
}

impl SitePages {
    /// Lists site `leaf`'s pages, or stops listing them if they are listed.
    pub fn toggle(&mut self, leaf: u32) {
        self.chosen = if self.chosen == Some(leaf) {
            None
        } else {
            Some(leaf)
        };
    }

    /// The site whose pages are listed.
    #[must_use]
    pub fn chosen(&self) -> Option<u32> {
        self.chosen
    }
}

/// Lists the pages of the chosen site, called `name`; a page clicked becomes `selected_page`
/// (the inspector shows it). They are worked out again when the site changes, and while the
/// model moves on at most four times a second: that is a pass over every live block with a
/// stack (a million under `--stacks all` on a large program).
pub fn draw(
    ui: &mut egui::Ui,
    model: &Model,
    state: &mut SitePages,
    name: &str,
    selected_page: &mut Option<u64>,
) {
    let Some(leaf) = state.chosen else {
        return;
    };
    let pages = super::throttle::throttled(
        ui,
        "heaplens-site-pages",
        leaf,
        model.totals().events,
        || pages_of_site(model, leaf),
    );
    let mut close = false;
    ui.horizontal(|ui| {
        ui.label(
            RichText::new(format!(
                "Pages holding live blocks of {name}: {}",
                pages.len()
            ))
            .strong(),
        );
        close = ui.small_button("close").clicked();
    });
    if pages.is_empty() {
        ui.label("None now: the site has no live block on a page at this point.");
    }
    egui::Grid::new("site-pages").num_columns(4).show(ui, |ui| {
        for p in pages.iter().take(ROWS) {
            let label = format!("page at {:#x}", p.start);
            if ui
                .selectable_label(*selected_page == Some(p.start), label)
                .on_hover_text("Open the page in the inspector")
                .clicked()
            {
                *selected_page = Some(p.start);
            }
            ui.label(format!("{} blocks", style::bytes(p.block_size)));
            ui.label(format!(
                "{} of the site's ({})",
                p.blocks,
                style::bytes(p.bytes)
            ));
            let full = p.held as f64 / f64::from(p.reserved.max(1)) * 100.0;
            ui.label(format!("{} of {} held ({full:.0} %)", p.held, p.reserved))
                .on_hover_text("Blocks the program holds on the page, of those it has room for");
            ui.end_row();
        }
    });
    if pages.len() > ROWS {
        ui.label(format!("... and {} more pages", pages.len() - ROWS));
    }
    if close {
        state.chosen = None;
    }
}
