//! `heaplens stats FILE [--json]`: replay a trace into the model and summarise it.
//!
//! The JSON keys are stable (documented in README.md): `pid`, `parent_pid` (null when the trace
//! does not record it), `command`, `events`, `allocs`, `frees`,
//! `cross_thread_frees`, `reallocs`, `threads`, `duration_s`, `peak_committed_bytes`,
//! `final_committed_bytes`, `fragmentation_at_peak`, `fragmentation_at_end` (each with
//! `internal`, `page`, `segment`), `top_size_classes` (each `bin`, `block_size`, `live_blocks`,
//! `live_bytes`, `pages`), `live_blocks_at_exit`, `live_bytes_at_exit`, `markers` (each `time_s`, `label`), `insights` (each `kind`, `text`),
//! `dropped_events`, `dropped_reasons`, `census_mismatches` (differences between the model and
//! the trace's last census; null without a census), `census_resynced` (whether the model was
//! reset to that census, events having been lost before it), `censuses` (censuses in the trace, whole),
//! `censuses_agreeing` (of those, the ones the model agreed with exactly when they arrived),
//! `complete`, `damage` (where the readable part ends, null if nowhere), `damaged_chunks` (each
//! `chunk`, `at_byte`, `defect`, `events_lost`, `from_s`, `to_s`, `resumed`: `keyframe` with
//! `resumed_at_event`, `after_gap`, `nothing_after` or `nothing_lost`), `events_lost_to_damage`, `exit`, `stacks` (the
//! stack mode: `off`, `sampled`, `all`), `top_sites` (each `stack_id`, `site`, `stack` (frames,
//! leaf first), `live_bytes`, `live_blocks`, `peak_live_bytes`, `total_bytes`, `allocs`,
//! `temporary`; estimates when sampled).
//!
//! A damaged chunk costs its own events only: the summary covers everything else, and says
//! what was lost and how the model went on (see `heaplens_viewer::source::Resumed`).

use std::io::Write;
use std::path::Path;

use heaplens_alloc::event::drop_reason;
use heaplens_alloc::stats::Bytes;
use heaplens_viewer::model::geometry::Geometry;
use heaplens_viewer::model::{Model, Sample};
use heaplens_viewer::source::{Resumed, replay_all};
use heaplens_viewer::trace::{EndReason, ExitStatus, Metadata, TraceReader};
use serde_json::json;

/// `println!` that hands a failed write back (`?`) instead of panicking: a reader that stops
/// early (`heaplens stats t.hltrace | head -1`) ends the output quietly in `main`.
macro_rules! println {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

/// The three fragmentation figures of a sample.
fn fragmentation(s: &Sample) -> serde_json::Value {
    json!({
        "internal": round3(s.internal_fragmentation()),
        "page": round3(s.page_fragmentation()),
        "segment": round3(s.segment_fragmentation()),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints the summary of `path`: a trace, or each process of a folder recorded with
/// `--follow-fork` (with `pid`: that one). A folder's JSON is an array of the processes'
/// summaries, by pid.
pub fn run(path: &Path, pid: Option<u32>, as_json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let processes = crate::tracedir::select(path, pid)?;
    let many = path.is_dir() && pid.is_none();
    let mut summaries = Vec::new();
    for (i, p) in processes.iter().enumerate() {
        if many && !as_json {
            if i > 0 {
                println!();
            }
            let parent = p
                .parent_pid
                .map_or_else(String::new, |pp| format!(", parent {pp}"));
            println!("== pid {} ({}{parent}) ==", p.pid, p.command_line());
        }
        summaries.extend(summarise(&p.path, as_json)?);
    }
    if as_json {
        let out = if many {
            serde_json::Value::Array(summaries)
        } else {
            summaries.pop().unwrap_or_default()
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// Summarises `file`: printed as text, or returned as JSON.
fn summarise(
    file: &Path,
    as_json: bool,
) -> Result<Option<serde_json::Value>, Box<dyn std::error::Error>> {
    let mut reader = TraceReader::open(file)?;
    Geometry::of(reader.metadata())?;
    let damage = reader.damage().map(|d| d.to_string());
    // Every chunk checked first: damage to a keyframe is reported too.
    reader.verify_all()?;
    let mut model = Model::new();
    let (mut censuses, mut agreeing) = (0u64, 0u64);
    let damaged = replay_all(&mut reader, &mut model, &mut |c| {
        // Whole censuses here; those the heaps take while the program runs arrive in parts,
        // counted by the model (`census_tally`).
        if !c.by_heap {
            censuses += 1;
            agreeing += u64::from(c.mismatches == 0);
        }
    })?;
    model.finish();
    let tally = model.census_tally();
    censuses += u64::from(tally.by_heap);
    agreeing += u64::from(tally.by_heap_agreeing);
    let events_lost: u64 = damaged.iter().map(|(d, _)| d.events_lost()).sum();
    let totals = model.totals();
    let exited = matches!(
        reader.end_info().map(|e| e.status),
        Some(ExitStatus::Code(_) | ExitStatus::Signal(_))
    );
    let found = heaplens_viewer::insights::insights(&model, exited);
    // A trace `heaplens attach` wrote: it began while the program ran; it ended at the program's
    // exit or when heaplens detached.
    let attached = meta_attached(reader.metadata());
    let detached = reader.end_info().map(|e| e.reason) == Some(EndReason::Detached);
    let end = model.current();
    let peak = model
        .metrics()
        .samples()
        .iter()
        .max_by_key(|s| s.committed_bytes)
        .copied()
        .unwrap_or(end);
    let mut bins = model.bins(None);
    bins.sort_by_key(|g| std::cmp::Reverse(g.totals.held_bytes));
    let top: Vec<_> = bins
        .iter()
        .filter(|g| g.totals.held_bytes > 0)
        .take(8)
        .collect();
    let live = model.live();
    let exit = match reader.end_info().map(|e| e.status) {
        Some(ExitStatus::Code(c)) => json!({ "code": c }),
        Some(ExitStatus::Signal(s)) => json!({ "signal": s }),
        Some(ExitStatus::Unknown) | None => serde_json::Value::Null,
    };
    let duration_s = reader.duration_ns() as f64 / 1e9;
    let census = model.last_census_check();
    let mut symbols = heaplens_viewer::symbols::Symbolizer::new();
    let top_sites = crate::sites::top_sites(&model, &mut symbols, 10);
    let meta = reader.metadata();
    let summary = json!({
        "pid": meta.pid,
        "parent_pid": meta.extra.get("parent_pid"),
        "command": meta.command,
        "events": totals.events,
        "allocs": totals.allocs,
        "frees": totals.frees,
        "cross_thread_frees": totals.cross_thread_frees,
        "reallocs": totals.reallocs,
        "threads": totals.threads_seen,
        "duration_s": duration_s,
        "peak_committed_bytes": totals.peak_committed.max(peak.committed_bytes),
        "final_committed_bytes": end.committed_bytes,
        "fragmentation_at_peak": fragmentation(&peak),
        "fragmentation_at_end": fragmentation(&end),
        "top_size_classes": top.iter().map(|g| json!({
            "bin": g.bin,
            "block_size": g.block_size,
            "live_blocks": g.totals.held,
            "live_bytes": g.totals.held_bytes,
            "pages": g.totals.pages,
        })).collect::<Vec<_>>(),
        "live_blocks_at_exit": live.len(),
        "live_bytes_at_exit": live.requested_bytes(),
        "markers": model.metrics().markers().iter().map(|m| json!({
            "time_s": round3(m.time as f64 / 1e9),
            "label": m.label,
        })).collect::<Vec<_>>(),
        "insights": found.iter().map(|i| json!({
            "kind": i.kind.title(),
            "text": i.text,
        })).collect::<Vec<_>>(),
        "dropped_events": totals.dropped,
        "dropped_reasons": drop_reason::names(totals.drop_reasons).collect::<Vec<_>>(),
        "census_mismatches": census.map(|c| c.mismatches),
        "census_resynced": census.map(|c| c.resynced),
        "censuses": censuses,
        "censuses_agreeing": agreeing,
        "complete": reader.is_complete(),
        "damage": damage,
        "damaged_chunks": damaged.iter().map(|(d, how)| json!({
            "chunk": d.chunk,
            "at_byte": d.at,
            "defect": d.defect.to_string(),
            "events_lost": d.events_lost(),
            "from_s": round3(d.start_time as f64 / 1e9),
            "to_s": round3(d.end_time as f64 / 1e9),
            "resumed": match how {
                Resumed::Keyframe(_) => "keyframe",
                Resumed::AfterGap => "after_gap",
                Resumed::NothingAfter => "nothing_after",
                Resumed::NothingLost => "nothing_lost",
            },
            "resumed_at_event": match how {
                Resumed::Keyframe(k) => json!(k),
                _ => serde_json::Value::Null,
            },
        })).collect::<Vec<_>>(),
        "events_lost_to_damage": events_lost,
        "exit": exit,
        "attached": attached,
        "detached": detached,
        "stacks": crate::sites::mode_name(&model),
        "top_sites": top_sites,
    });
    if as_json {
        return Ok(Some(summary));
    }
    let b = |n: u64| Bytes(usize::try_from(n).unwrap_or(usize::MAX));
    println!("trace       {}", file.display());
    if !meta.command.is_empty() {
        println!("command     {} (pid {})", meta.command.join(" "), meta.pid);
    }
    if let Some(d) = &damage {
        println!("damage      {d}");
    }
    for (d, how) in &damaged {
        println!("damage      {d}; the rest read; {how}");
    }
    match reader.end_info().map(|e| e.status) {
        Some(ExitStatus::Code(c)) => println!("exit        code {c}"),
        Some(ExitStatus::Signal(s)) => println!("exit        killed by signal {s}"),
        _ if detached => {
            println!(
                "exit        none: heaplens detached at {duration_s:.3} s, the program ran on"
            );
        }
        _ if attached => {
            println!("exit        not known (attached: heaplens is not the program's parent)");
        }
        _ => println!("exit        unknown"),
    }
    println!("duration    {duration_s:.3} s");
    println!(
        "events      {} ({} allocs, {} frees of which {} cross-thread, {} reallocs)",
        totals.events, totals.allocs, totals.frees, totals.cross_thread_frees, totals.reallocs
    );
    println!("threads     {}", totals.threads_seen);
    println!(
        "committed   peak {}, at end {}",
        b(totals.peak_committed.max(peak.committed_bytes)),
        b(end.committed_bytes)
    );
    for (label, s) in [("at peak", &peak), ("at end", &end)] {
        println!(
            "fragmentation {label:<8} internal {:.1}%, page-level {:.1}%, segment-level {:.1}%",
            100.0 * s.internal_fragmentation(),
            100.0 * s.page_fragmentation(),
            100.0 * s.segment_fragmentation()
        );
    }
    let at = if detached {
        "at detach"
    } else if exited || attached {
        "at exit"
    } else {
        "at end "
    };
    println!(
        "live {at} {} blocks, {} requested",
        live.len(),
        b(live.requested_bytes())
    );
    if totals.dropped == 0 {
        println!("dropped     0 events");
    } else {
        let why: Vec<_> = drop_reason::names(totals.drop_reasons).collect();
        println!("dropped     {} events ({})", totals.dropped, why.join(", "));
    }
    if censuses > 0 {
        println!("censuses    {censuses} in the trace, {agreeing} agree with the model");
    }
    match census {
        None => println!("census      none in the trace"),
        Some(c) if c.mismatches == 0 => {
            println!("census      the last (#{}) agrees with the model", c.number);
        }
        Some(c) => {
            let first: Vec<String> = c.first.iter().take(3).map(ToString::to_string).collect();
            println!(
                "census      the last (#{}) differs from the model in {} places: {}",
                c.number,
                c.mismatches,
                first.join("; ")
            );
            if c.resynced {
                println!("census      events were lost before it: the model was reset to it");
            }
        }
    }
    if !top.is_empty() {
        println!("top size classes by live bytes at end:");
        println!(
            "  {:>4} {:>10} {:>12} {:>12} {:>6}",
            "bin", "block", "live blocks", "live bytes", "pages"
        );
        for g in &top {
            println!(
                "  {:>4} {:>10} {:>12} {:>12} {:>6}",
                g.bin,
                b(g.block_size).to_string(),
                g.totals.held,
                b(u64::try_from(g.totals.held_bytes).unwrap_or(0)).to_string(),
                g.totals.pages
            );
        }
    }
    match crate::sites::sampled_estimates_line(&model, "site").filter(|_| !top_sites.is_empty()) {
        Some(line) => println!("{line}"),
        None => println!("stacks      {}", crate::sites::mode_name(&model)),
    }
    if !top_sites.is_empty() {
        println!("top allocation sites by live bytes at end:");
        println!(
            "  {:>12} {:>14} {:>10}  site",
            "live bytes", "allocated", "allocs"
        );
        for s in &top_sites {
            let n = |k: &str| s[k].as_f64().unwrap_or(0.0) as u64;
            println!(
                "  {:>12} {:>14} {:>10}  {}",
                b(n("live_bytes")).to_string(),
                b(n("total_bytes")).to_string(),
                n("allocs"),
                s["site"].as_str().unwrap_or("?")
            );
        }
    }
    if !found.is_empty() {
        println!("insights at end:");
        for i in &found {
            println!("  - {}: {}", i.kind.title(), i.text);
        }
    }
    Ok(None)
}

/// Whether `heaplens attach` wrote the trace (its metadata says `"attached": true`).
pub fn meta_attached(meta: &Metadata) -> bool {
    meta.extra
        .get("attached")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
}
