//! `heaplens export TRACE --format FORMAT -o OUT [--at TIME | --at-marker LABEL] [--metric M]`:
//! the trace for other tools (see `heaplens_viewer::export`): `pprof`, `collapsed`,
//! `speedscope`, `chrome`, `csv`, `parquet`. `-o -` writes to stdout. The trace is replayed
//! once, up to the position; memory stays that of the model (see the module's doc).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use heaplens_viewer::export::{self, ExportError, Format, Metric, Position, Profile};
use heaplens_viewer::symbols::Symbolizer;
use heaplens_viewer::trace::TraceReader;

/// The formats, as `--format` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// Gzipped pprof profile.proto (go tool pprof, Pyroscope, Parca).
    Pprof,
    /// Folded stacks, `a;b;c value` (flamegraph.pl, inferno).
    Collapsed,
    /// speedscope's JSON file format.
    Speedscope,
    /// Chrome / Perfetto trace-event JSON: counter tracks and markers.
    Chrome,
    /// Every metric series, one row per sample.
    Csv,
    /// Tables for SQL engines (DuckDB, Spark, Trino, DataFusion).
    Parquet,
}

/// `--metric`: what stacks are weighed by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
#[allow(clippy::enum_variant_names)] // pprof's names
pub enum MetricArg {
    /// Bytes live at the position.
    #[default]
    #[value(name = "inuse_space")]
    InuseSpace,
    /// Blocks live at the position.
    #[value(name = "inuse_objects")]
    InuseObjects,
    /// Bytes allocated up to the position.
    #[value(name = "alloc_space")]
    AllocSpace,
    /// Allocations up to the position.
    #[value(name = "alloc_objects")]
    AllocObjects,
}

/// The arguments of `heaplens export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The trace file, or a folder recorded with --follow-fork (every process, or --pid).
    pub file: PathBuf,
    /// The process of the folder to export (all by default: parquet into their `pid=`
    /// partitions of OUT, the other formats as OUT/PID.EXT).
    #[arg(long)]
    pub pid: Option<u32>,
    /// The output format.
    #[arg(short, long, value_enum)]
    pub format: FormatArg,
    /// The file to write (`-`: standard output).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Export the state at this trace time (1.5s, 200ms, 300us; seconds without a unit).
    #[arg(long, value_name = "TIME", conflicts_with = "at_marker")]
    pub at: Option<String>,
    /// Export the state just after the first marker with this label.
    #[arg(long, value_name = "LABEL")]
    pub at_marker: Option<String>,
    /// What pprof shows first and collapsed and speedscope weigh stacks by.
    #[arg(long, value_enum, default_value_t = MetricArg::InuseSpace)]
    pub metric: MetricArg,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Pprof => Format::Pprof,
            FormatArg::Collapsed => Format::Collapsed,
            FormatArg::Speedscope => Format::Speedscope,
            FormatArg::Chrome => Format::Chrome,
            FormatArg::Csv => Format::Csv,
            FormatArg::Parquet => Format::Parquet,
        }
    }
}

impl From<MetricArg> for Metric {
    fn from(m: MetricArg) -> Self {
        match m {
            MetricArg::InuseSpace => Metric::InuseSpace,
            MetricArg::InuseObjects => Metric::InuseObjects,
            MetricArg::AllocSpace => Metric::AllocSpace,
            MetricArg::AllocObjects => Metric::AllocObjects,
        }
    }
}

/// The position `--at` / `--at-marker` ask for.
pub fn position(at: Option<&str>, marker: Option<&str>) -> Result<Position, String> {
    match (at, marker) {
        (Some(t), _) => Position::parse_time(t).map(Position::Time),
        (None, Some(m)) => Ok(Position::Marker(m.to_owned())),
        (None, None) => Ok(Position::End),
    }
}

/// Runs `heaplens export`.
pub fn run(args: &ExportArgs) -> Result<(), Box<dyn std::error::Error>> {
    let format = Format::from(args.format);
    let pos = position(args.at.as_deref(), args.at_marker.as_deref())?;
    let processes = crate::tracedir::select(&args.file, args.pid)?;
    if let [one] = processes.as_slice() {
        return export(args, &pos, &one.path, &args.output);
    }
    // Every process of a folder: parquet into its own `pid=` partitions of OUT, the other
    // formats one file each, OUT/PID.EXT.
    if format != Format::Parquet {
        if args.output == Path::new("-") {
            return Err(format!(
                "{} holds {} processes: pick one with --pid, or give a folder with -o DIR",
                args.file.display(),
                processes.len()
            )
            .into());
        }
        std::fs::create_dir_all(&args.output)
            .map_err(|e| format!("cannot make {}: {e}", args.output.display()))?;
    }
    for p in &processes {
        let out = if format == Format::Parquet {
            args.output.clone()
        } else {
            args.output
                .join(format!("{}.{}", p.pid, extension(args.format)))
        };
        export(args, &pos, &p.path, &out)?;
    }
    Ok(())
}

/// The file name extension of a format's output.
fn extension(format: FormatArg) -> &'static str {
    match format {
        FormatArg::Pprof => "pb.gz",
        FormatArg::Collapsed => "folded",
        FormatArg::Speedscope => "speedscope.json",
        FormatArg::Chrome => "trace.json",
        FormatArg::Csv => "csv",
        FormatArg::Parquet => "parquet",
    }
}

/// Exports the trace `file` to `output`.
fn export(
    args: &ExportArgs,
    pos: &Position,
    file: &Path,
    output: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let format = Format::from(args.format);
    let metric = Metric::from(args.metric);
    if format == Format::Parquet {
        return parquet(pos, file, output);
    }
    let pos = pos.clone();
    let mut reader = TraceReader::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let meta = reader.metadata().clone();
    let replayed = export::replay_to(&mut reader, &pos, &[], &mut |_, _, _| {})
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let model = &replayed.model;
    let name = if meta.command.is_empty() {
        file.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    } else {
        meta.command.join(" ")
    };
    let to_stdout = output == Path::new("-");
    let sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        let f =
            File::create(output).map_err(|e| format!("cannot create {}: {e}", output.display()))?;
        Box::new(f)
    };
    let mut w = BufWriter::with_capacity(1 << 16, sink);
    let written: Result<String, ExportError> = (|| {
        let profile = || {
            let mut sym = Symbolizer::new();
            Profile::build(model, &replayed.tally, &mut sym)
        };
        let what = |p: &Profile| {
            let kind = if p.call_stacks {
                "allocation sites"
            } else {
                "thread/size class/page stacks (the trace has no stacks)"
            };
            format!(
                "{} samples of {kind}, {} {} in all",
                p.samples.len(),
                p.total(metric).round() + 0.0, // never "-0"
                metric.name()
            )
        };
        Ok(match format {
            Format::Pprof => {
                let p = profile();
                let comment = format!("heaplens export of {name} at {pos}");
                export::pprof::write(&p, metric, meta.start_unix_ns, &comment, &mut w)?;
                what(&p)
            }
            Format::Collapsed => {
                let p = profile();
                export::collapsed::write(&p, metric, &mut w)?;
                what(&p)
            }
            Format::Speedscope => {
                let p = profile();
                export::speedscope::write(&p, metric, &name, &mut w)?;
                what(&p)
            }
            Format::Chrome => {
                export::chrome::write(model, &name, meta.pid, &mut w)?;
                format!(
                    "{} samples x {} counter tracks, {} markers",
                    model.metrics().samples().len(),
                    export::chrome::COUNTERS.len(),
                    model.metrics().markers().len()
                )
            }
            Format::Csv => {
                export::csv::write(model.metrics().samples(), &mut w)?;
                format!("{} rows", model.metrics().samples().len())
            }
            Format::Parquet => return Err(ExportError::Invalid("parquet writes a folder".into())),
        })
    })();
    let flushed = w.flush();
    match written.map_err(|e| e.to_string()).and_then(|what| {
        flushed.map_err(|e| e.to_string())?;
        Ok(what)
    }) {
        Ok(what) => {
            if !to_stdout {
                crate::quiet::say!(
                    "wrote {} ({what}, at {pos}{})",
                    output.display(),
                    if replayed.damaged_chunks > 0 {
                        format!("; {} damaged chunks skipped", replayed.damaged_chunks)
                    } else {
                        String::new()
                    }
                );
            }
            Ok(())
        }
        Err(e) => {
            if !to_stdout {
                let _ = std::fs::remove_file(output);
            }
            Err(e.into())
        }
    }
}

/// `--format parquet`: the whole trace as tables under the folder `-o` names, in hive
/// partitions (see `heaplens_viewer::export::parquet`).
fn parquet(pos: &Position, file: &Path, output: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if *pos != Position::End {
        return Err(
            "--format parquet exports the whole trace (every event and block with its \
             times); --at and --at-marker do not apply: filter by time in SQL"
                .into(),
        );
    }
    if output == Path::new("-") {
        return Err("--format parquet writes a folder of tables; give one with -o DIR".into());
    }
    let s = export::parquet::write(file, output, &export::parquet::Options::default())
        .map_err(|e| format!("{}: {e}", file.display()))?;
    for (name, path, rows) in &s.tables {
        crate::quiet::say!("wrote {} ({rows} rows of {name})", path.display());
    }
    if s.events_lost > 0 {
        crate::quiet::say!("{} events of damaged chunks were skipped", s.events_lost);
    }
    if s.unmatched_frees > 0 {
        crate::quiet::say!(
            "{} frees of blocks allocated before recording have no row in blocks",
            s.unmatched_frees
        );
    }
    Ok(())
}
