//! `heaplens leaks FILE [--json]`: the blocks a recorded program never freed, grouped by the
//! stack that allocated them (symbolised), with bytes and counts. A trace without stacks is
//! grouped by block size and thread instead, and says so; with sampled stacks the figures are
//! estimates (each sampled block weighted as in the Sites tab).
//!
//! JSON keys: `stacks` (`off`, `sampled`, `all`), `leaked_blocks`, `leaked_bytes` (every live
//! block at the end, exact), `groups` (each: with stacks `stack_id`, `site`, `stack`, `blocks`,
//! `bytes`; without, `block_size`, `heap`, `thread`, `blocks`, `bytes`), `complete`, `damage`.

use std::collections::BTreeMap;
use std::path::Path;

use heaplens_alloc::stats::Bytes;
use heaplens_viewer::model::Model;
use heaplens_viewer::model::geometry::Geometry;
use heaplens_viewer::symbols::Symbolizer;
use heaplens_viewer::symbols::apart::named_frame;
use heaplens_viewer::trace::TraceReader;
use serde_json::json;

/// Most groups printed as text (JSON has them all).
const TEXT_GROUPS: usize = 20;

/// Prints the leaks of `file`.
pub fn run(file: &Path, as_json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut reader = TraceReader::open(file)?;
    Geometry::of(reader.metadata())?;
    let damage = reader.damage().map(|d| d.to_string());
    let mut model = Model::new();
    for item in reader.events() {
        let (heap, event) = item?;
        model.apply(heap, &event);
    }
    model.finish();
    let report = report(&model, &mut Symbolizer::new());
    let mode = crate::sites::mode_name(&model);
    let live = model.live();
    let summary = json!({
        "stacks": mode,
        "leaked_blocks": live.len(),
        "leaked_bytes": live.requested_bytes(),
        "groups": report,
        "complete": reader.is_complete(),
        "damage": damage,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let b = |n: f64| Bytes(n.max(0.0) as usize).to_string();
    println!("trace       {}", file.display());
    if let Some(d) = &damage {
        println!("damage      {d}");
    }
    println!(
        "leaked      {} blocks, {} requested, never freed",
        live.len(),
        b(live.requested_bytes() as f64)
    );
    let groups = summary["groups"].as_array().cloned().unwrap_or_default();
    let n = |g: &serde_json::Value, k: &str| g[k].as_f64().unwrap_or(0.0);
    if model.sites().is_on() {
        if let Some(line) = crate::sites::sampled_estimates_line(&model, "stack") {
            println!("{line}");
        }
        println!("by stack ({} stacks):", groups.len());
        for g in groups.iter().take(TEXT_GROUPS) {
            println!(
                "  {:>12} in {:>8} blocks  {}",
                b(n(g, "bytes")),
                n(g, "blocks").round(),
                g["site"].as_str().unwrap_or("?")
            );
            // Its callers: the frames after the one it is named after.
            let callers = g["site_frame"].as_u64().unwrap_or(0) as usize + 1;
            for line in g["stack"]
                .as_array()
                .into_iter()
                .flatten()
                .skip(callers)
                .take(6)
            {
                println!("  {:>25}    {}", "", line.as_str().unwrap_or(""));
            }
        }
    } else {
        println!(
            "stacks      off: grouped by block size and thread (record with --stacks for sites)"
        );
        for g in groups.iter().take(TEXT_GROUPS) {
            println!(
                "  {:>12} in {:>8} blocks  block size {:>8}, {}",
                b(n(g, "bytes")),
                n(g, "blocks"),
                b(n(g, "block_size")),
                g["thread"].as_str().unwrap_or("?")
            );
        }
    }
    if groups.len() > TEXT_GROUPS {
        println!(
            "  ... {} more (--json lists them all)",
            groups.len() - TEXT_GROUPS
        );
    }
    Ok(())
}

/// The leak groups of `model`, largest first.
pub fn report(model: &Model, sym: &mut Symbolizer) -> Vec<serde_json::Value> {
    let sites = model.sites();
    if sites.is_on() {
        let groups = sites.live_by_stack();
        let leaves: Vec<u32> = groups.iter().map(|g| g.0).collect();
        let named = sym.site_names(sites, &leaves);
        return groups
            .into_iter()
            .zip(named)
            .map(|((leaf, blocks, bytes), (site, stack))| {
                // The frame the site is named after (the ones before it are the allocation
                // plumbing it called through).
                let site_frame = named_frame(&sym.site_name(sites, leaf), &stack);
                json!({
                    "stack_id": leaf,
                    "site": site,
                    "site_frame": site_frame,
                    "stack": stack,
                    "blocks": blocks.round(),
                    "bytes": bytes.round(),
                })
            })
            .collect();
    }
    // Without stacks: by the block size of the page and the heap that owns it.
    let mut by: BTreeMap<(u64, u32), (u64, u64)> = BTreeMap::new();
    for b in model.live_blocks() {
        let (size, heap) = model
            .page_at(b.addr)
            .map_or((0, 0), |r| (r.page.block_size, r.page.owner));
        let e = by.entry((size, heap)).or_default();
        e.0 += 1;
        e.1 += b.size;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(&b.0)));
    v.into_iter()
        .map(|((size, heap), (blocks, bytes))| {
            let thread = model.heaps().get(heap).map_or_else(
                || format!("heap {heap}"),
                heaplens_viewer::model::Heap::label,
            );
            json!({
                "block_size": size,
                "heap": heap,
                "thread": thread,
                "blocks": blocks,
                "bytes": bytes,
            })
        })
        .collect()
}
