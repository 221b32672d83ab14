//! `heaplens diff A B` (two traces, each at its end, or at `--from` / `--to` markers) and
//! `heaplens diff TRACE --from LABEL [--to LABEL]` (two markers of one trace, `--to` the end
//! if not given): the allocation sites and size classes whose live bytes and blocks changed,
//! the largest growth first, as a table or JSON.
//!
//! JSON keys: `a`, `b` (each `trace`, `position`, `live_bytes`, `live_blocks`), `stacks`
//! (whether both have stacks), `sites` (each `site`, `stack`, `live_bytes_a`, `live_bytes_b`,
//! `delta_bytes`, `live_blocks_a`, `live_blocks_b`, `delta_blocks`), `size_classes` (each
//! `bin`, `block_size`, `live_bytes_a`, `live_bytes_b`, `delta_bytes`, `live_blocks_a`,
//! `live_blocks_b`, `delta_blocks`; block bytes).

use std::io::Write;
use std::path::{Path, PathBuf};

use heaplens_alloc::stats::Bytes;
use heaplens_viewer::export::diff::{Snapshot, compare};
use heaplens_viewer::export::{self, Position};
use heaplens_viewer::symbols::Symbolizer;
use heaplens_viewer::trace::TraceReader;
use serde_json::json;

/// `println!` that hands a failed write back.
macro_rules! println {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

/// Rows of each table printed as text (JSON has them all).
const TEXT_ROWS: usize = 15;

/// The arguments of `heaplens diff`.
#[derive(clap::Args)]
pub struct DiffArgs {
    /// The trace (A).
    pub a: PathBuf,
    /// A second trace (B); without it, A is compared with itself at two markers.
    pub b: Option<PathBuf>,
    /// The marker of A to compare from (default: A's end).
    #[arg(long, value_name = "LABEL")]
    pub from: Option<String>,
    /// The marker of B (or of A, with one trace) to compare to (default: the end).
    #[arg(long, value_name = "LABEL")]
    pub to: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn marker(label: Option<&String>) -> Position {
    label.map_or(Position::End, |l| Position::Marker(l.clone()))
}

/// What trace `path` holds at `pos`.
pub fn snapshot_at(
    path: &Path,
    pos: &Position,
    sym: &mut Symbolizer,
) -> Result<Snapshot, Box<dyn std::error::Error>> {
    let mut reader = TraceReader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let r = export::replay_to(&mut reader, pos, &[], &mut |_, _, _| {})
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Snapshot::take(&r.model, sym))
}

/// Runs `heaplens diff`.
pub fn run(args: &DiffArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut sym = Symbolizer::new();
    let (from, to) = (marker(args.from.as_ref()), marker(args.to.as_ref()));
    let (a, b, b_path) = match &args.b {
        Some(b) => (
            snapshot_at(&args.a, &from, &mut sym)?,
            snapshot_at(b, &to, &mut sym)?,
            b.clone(),
        ),
        None => {
            let Some(label) = &args.from else {
                return Err("give two traces (`heaplens diff A B`), or one with \
                            `--from LABEL` (and `--to LABEL`, else its end)"
                    .into());
            };
            // One pass: the snapshot at the first marker, then on to the second.
            let mut reader =
                TraceReader::open(&args.a).map_err(|e| format!("{}: {e}", args.a.display()))?;
            let mut first = None;
            let r = export::replay_to(
                &mut reader,
                &to,
                std::slice::from_ref(label),
                &mut |_, model, _| first = Some(Snapshot::take(model, &mut sym)),
            )
            .map_err(|e| format!("{}: {e}", args.a.display()))?;
            let b = Snapshot::take(&r.model, &mut sym);
            (first.unwrap_or_default(), b, args.a.clone())
        }
    };
    let d = compare(&a, &b);
    let side = |path: &Path, pos: &Position, s: &Snapshot| {
        json!({
            "trace": path.display().to_string(),
            "position": pos.to_string(),
            "live_bytes": s.live_bytes,
            "live_blocks": s.live_blocks,
        })
    };
    if args.json {
        let out = json!({
            "a": side(&args.a, &from, &a),
            "b": side(&b_path, &to, &b),
            "stacks": a.stacks && b.stacks,
            "sites": d.sites.iter().map(|s| json!({
                "site": s.site,
                "stack": s.stack,
                "live_bytes_a": s.bytes.0.round(),
                "live_bytes_b": s.bytes.1.round(),
                "delta_bytes": s.delta_bytes().round(),
                "live_blocks_a": s.blocks.0.round(),
                "live_blocks_b": s.blocks.1.round(),
                "delta_blocks": s.delta_blocks().round(),
            })).collect::<Vec<_>>(),
            "size_classes": d.classes.iter().map(|c| json!({
                "bin": c.bin,
                "block_size": c.block_size,
                "live_bytes_a": c.bytes.0,
                "live_bytes_b": c.bytes.1,
                "delta_bytes": c.delta_bytes(),
                "live_blocks_a": c.blocks.0,
                "live_blocks_b": c.blocks.1,
                "delta_blocks": c.blocks.1 - c.blocks.0,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let b_ = |n: f64| Bytes(n.abs().round() as usize).to_string();
    let signed = |n: f64| format!("{}{}", if n < 0.0 { "-" } else { "+" }, b_(n));
    println!(
        "A  {} at {}: {} blocks, {} live",
        args.a.display(),
        from,
        a.live_blocks,
        b_(a.live_bytes as f64)
    );
    println!(
        "B  {} at {}: {} blocks, {} live",
        b_path.display(),
        to,
        b.live_blocks,
        b_(b.live_bytes as f64)
    );
    println!(
        "change     {} live, {:+} blocks",
        signed(b.live_bytes as f64 - a.live_bytes as f64),
        b.live_blocks as i64 - a.live_blocks as i64
    );
    if !(a.stacks && b.stacks) {
        println!("sites      none: a trace has no stacks (record with --stacks sampled or all)");
    } else if d.sites.is_empty() {
        println!("sites      no site's live bytes or blocks changed");
    } else {
        println!("sites by change in live bytes (B - A, exact when both have stacks `all`):");
        println!(
            "  {:>12} {:>10} {:>12} {:>12}  site",
            "bytes", "blocks", "A", "B"
        );
        for s in d.sites.iter().take(TEXT_ROWS) {
            println!(
                "  {:>+12} {:>+10} {:>12} {:>12}  {}",
                s.delta_bytes().round() as i64,
                s.delta_blocks().round() as i64,
                b_(s.bytes.0),
                b_(s.bytes.1),
                s.site
            );
        }
        if d.sites.len() > TEXT_ROWS {
            println!(
                "  ... {} more (--json lists them all)",
                d.sites.len() - TEXT_ROWS
            );
        }
    }
    if d.classes.is_empty() {
        println!("size classes: none changed");
    } else {
        println!("size classes by change in live block bytes (B - A):");
        println!(
            "  {:>12} {:>10} {:>5} {:>10}",
            "bytes", "blocks", "bin", "block"
        );
        for c in d.classes.iter().take(TEXT_ROWS) {
            println!(
                "  {:>+12} {:>+10} {:>5} {:>10}",
                c.delta_bytes(),
                c.blocks.1 - c.blocks.0,
                c.bin,
                b_(c.block_size as f64)
            );
        }
        if d.classes.len() > TEXT_ROWS {
            println!(
                "  ... {} more (--json lists them all)",
                d.classes.len() - TEXT_ROWS
            );
        }
    }
    Ok(())
}
