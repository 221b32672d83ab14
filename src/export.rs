//! `heaplens export TRACE --format FORMAT -o OUT`: a trace in a format other tools read.
//!
//! `parquet`: tables for SQL engines in hive partitions, `OUT/TABLE/host=HOST/pid=PID/
//! part-0.parquet` (see `heaplens_viewer::export::parquet`); export every process's trace
//! into the same OUT and query them all at once.

use std::io::Write;
use std::path::Path;

use heaplens_viewer::export::parquet;

/// The formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables for SQL engines (DuckDB, Spark, Trino, DataFusion), zstd, hive-partitioned.
    Parquet,
}

/// Exports `trace` to `out` in `format`, and says what it wrote.
pub fn run(trace: &Path, format: Format, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    match format {
        Format::Parquet => {
            let s = parquet::write(trace, out, &parquet::Options::default())?;
            let mut stdout = std::io::stdout();
            for (name, path, rows) in &s.tables {
                writeln!(stdout, "{name:<8} {rows:>12} rows  {}", path.display())?;
            }
            if s.events_lost > 0 {
                writeln!(
                    stdout,
                    "{} events of damaged chunks were skipped",
                    s.events_lost
                )?;
            }
            if s.unmatched_frees > 0 {
                writeln!(
                    stdout,
                    "{} frees of blocks allocated before recording have no row in blocks",
                    s.unmatched_frees
                )?;
            }
        }
    }
    Ok(())
}
