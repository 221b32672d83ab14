//! C programs with each allocator preloaded: heaplens (`libheaplens.so`) against glibc's own
//! malloc and Debian's libmimalloc, libjemalloc and libtcmalloc, reported as ratios.
//!
//! Run: `cargo bench -p heaplens-preload --bench c_suite [-- --rounds N] [--only NAME[,NAME]]
//! [--alloc NAME[,NAME]] [--scale F] [--heaplens PATH]`. `--heaplens` measures another build of
//! the library (a copy kept from before a change; relative to the workspace root) instead of
//! building this one.
//!
//! The workloads are C programs under `benches/c` (compiled here with `gcc -O2 -pthread` into
//! `<target>/release/c_suite/`) and real programs (python3 on `benches/real/alloc_heavy.py`, g++
//! on `benches/real/compile.cpp`, `git log` on this repository, `xz` on a generated file). Every
//! measurement is a fresh process started with `LD_PRELOAD` set to the allocator's library (none
//! for glibc); its time is the wall time from spawn to exit, its peak RSS `ru_maxrss` from
//! `wait4` (the largest of the process and the children it waited for). Rounds are interleaved:
//! for each round, for each workload, every allocator runs once, in an order rotated each round.
//! The report gives medians, heaplens's ratio to each other allocator (the median of the rounds'
//! own ratios: within a round the allocators run back to back, at one speed of the machine),
//! geometric means, the budgets of the design document and a markdown table. Every program
//! prints a check (the C workloads verify what they allocated) or its output is hashed: all
//! allocators must agree.

#![allow(unsafe_code)] // wait4: the peak RSS of the measured process itself

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Variables that change how an allocator or the loader behaves: every run starts without them.
const SCRUBBED_ENV: [&str; 8] = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "HEAPLENS_CHECK",
    "HEAPLENS_SHOW_STATS",
    "HEAPLENS_PURGE_DELAY_MS",
    "MIMALLOC_SHOW_STATS",
    "MALLOC_CONF",
    "TCMALLOC_RELEASE_RATE",
];

const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";

/// An allocator under test: a name and the library preloaded (none: glibc's malloc).
struct Alloc {
    name: &'static str,
    lib: Option<PathBuf>,
}

/// The allocators in report order; heaplens first, every ratio is heaplens / other.
fn allocators(heaplens: PathBuf) -> Vec<Alloc> {
    let debian = |file: &str| Some(Path::new(LIB_DIR).join(file));
    vec![
        Alloc {
            name: "heaplens",
            lib: Some(heaplens),
        },
        Alloc {
            name: "mimalloc",
            lib: debian("libmimalloc.so.2"),
        },
        Alloc {
            name: "jemalloc",
            lib: debian("libjemalloc.so.2"),
        },
        Alloc {
            name: "tcmalloc",
            lib: debian("libtcmalloc.so.4"),
        },
        Alloc {
            name: "glibc",
            lib: None,
        },
    ]
}

/// What a workload runs.
enum Program {
    /// A C program from `benches/c/NAME.c`, with extra arguments after the scale.
    C(&'static str, &'static [&'static str]),
    /// python3 on `benches/real/alloc_heavy.py`.
    Python,
    /// g++ -O1 on `benches/real/compile.cpp`.
    Gxx,
    /// `git log` with patches, copy detection and word diffs, on this repository.
    GitLog,
    /// xz -6 on a generated text file.
    Xz,
}

struct Workload {
    name: &'static str,
    what: &'static str,
    program: Program,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "fixed",
        what: "one thread, malloc/free loops of 64-byte blocks (batches, and one at a time)",
        program: Program::C("fixed", &[]),
    },
    Workload {
        name: "mixed",
        what: "one thread, 2000 live blocks of 8..512 B replaced at random",
        program: Program::C("mixed", &[]),
    },
    Workload {
        name: "trees",
        what: "binary trees of 32-byte nodes, depth 4..16",
        program: Program::C("trees", &[]),
    },
    Workload {
        name: "pareto",
        what: "Pareto-sized blocks (8 B..64 KiB) with skewed lifetimes, one thread",
        program: Program::C("pareto", &["1"]),
    },
    Workload {
        name: "pareto-mt",
        what: "the same on 4 threads",
        program: Program::C("pareto", &["4"]),
    },
    Workload {
        name: "larson",
        what: "a larson-like server: 4 workers replace random 16..512 B blocks; 20 generations of threads carry the arrays on",
        program: Program::C("larson", &[]),
    },
    Workload {
        name: "prodcons",
        what: "2 producers send batches of 256 blocks (16..256 B) to 2 consumers that free them",
        program: Program::C("prodcons", &[]),
    },
    Workload {
        name: "threadex",
        what: "40 rounds of 4 new threads exchanging power-of-two blocks (16 B..64 KiB) through a shared table",
        program: Program::C("threadex", &[]),
    },
    Workload {
        name: "threadex-1m",
        what: "the same with blocks up to 1 MiB (those of 128 KiB..1 MiB are large pages)",
        program: Program::C("threadex", &["20"]),
    },
    Workload {
        name: "churn-mt",
        what: "4 threads replace random 8 B..4 KiB blocks; one in 16 goes through a shared table to another thread",
        program: Program::C("churn_mt", &[]),
    },
    Workload {
        name: "cscratch",
        what: "false sharing: 4 threads each take 50 000 8-byte blocks in turn and write each 1000 times",
        program: Program::C("cscratch", &[]),
    },
    Workload {
        name: "large",
        what: "32 live blocks of 64 KiB..8 MiB replaced or grown with realloc, every page written",
        program: Program::C("large", &[]),
    },
    Workload {
        name: "stress",
        what: "12 rounds of 8 new threads, every malloc-family entry point, 1 B..256 KiB, half the frees cross-thread (RSS is its figure)",
        program: Program::C("stress", &[]),
    },
    Workload {
        name: "python",
        what: "python3 on an allocation-heavy script (objects, dicts, strings, lists)",
        program: Program::Python,
    },
    Workload {
        name: "g++",
        what: "g++ -O1 compiling a C++ file of standard containers and templates",
        program: Program::Gxx,
    },
    Workload {
        name: "git-log",
        what: "git log -p -C -C --stat --word-diff on this repository",
        program: Program::GitLog,
    },
    Workload {
        name: "xz",
        what: "xz -6 on 1.5 MB of generated text",
        program: Program::Xz,
    },
];

struct Options {
    rounds: usize,
    scale: f64,
    only: Option<Vec<String>>,
    allocs: Option<Vec<String>>,
    heaplens: Option<PathBuf>,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        rounds: 5,
        scale: 1.0,
        only: None,
        allocs: None,
        heaplens: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--rounds" => {
                opts.rounds = value("--rounds")?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--rounds takes a positive number")?;
            }
            "--scale" => {
                opts.scale = value("--scale")?
                    .parse()
                    .ok()
                    .filter(|&s: &f64| s > 0.0)
                    .ok_or("--scale takes a positive number")?;
            }
            "--only" => {
                opts.only = Some(value("--only")?.split(',').map(str::to_owned).collect());
            }
            "--alloc" => {
                opts.allocs = Some(value("--alloc")?.split(',').map(str::to_owned).collect());
            }
            "--heaplens" => opts.heaplens = Some(PathBuf::from(value("--heaplens")?)),
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if let Some(only) = &opts.only {
        for name in only {
            if !WORKLOADS.iter().any(|w| w.name == name) {
                let names: Vec<_> = WORKLOADS.iter().map(|w| w.name).collect();
                return Err(format!(
                    "no workload {name}; there are {}",
                    names.join(", ")
                ));
            }
        }
    }
    Ok(opts)
}

/// Paths the runs need, set up once.
struct Setup {
    /// `<target>/release/c_suite`: compiled C programs, generated input, outputs.
    dir: PathBuf,
    /// The workspace root (git runs on it).
    root: PathBuf,
    /// `allocator/preload/benches`.
    benches: PathBuf,
}

impl Setup {
    fn new(heaplens: Option<&Path>) -> Result<(Setup, PathBuf), String> {
        let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .ok_or("the bench binary lives in <target>/<profile>/deps")?
            .to_path_buf();
        let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let root = crate_dir
            .join("../..")
            .canonicalize()
            .map_err(|e| format!("workspace root: {e}"))?;
        let dir = profile.join("c_suite");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        // A relative `--heaplens` is taken from the workspace root (cargo runs benches in the
        // package's directory, users type paths from the root).
        let heaplens = heaplens.map(|l| root.join(l));
        let lib = match heaplens {
            Some(lib) if lib.is_file() => lib,
            Some(lib) => return Err(format!("{} is not a file", lib.display())),
            None => build_heaplens(&root, &profile)?,
        };
        let setup = Setup {
            dir,
            root,
            benches: crate_dir.join("benches"),
        };
        Ok((setup, lib))
    }

    /// Compiles `benches/c/NAME.c` when its binary is missing or older than its sources.
    fn compile_c(&self, name: &str) -> Result<PathBuf, String> {
        let src = self.benches.join("c").join(format!("{name}.c"));
        let header = self.benches.join("c/bench.h");
        let out = self.dir.join(name);
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let fresh = match (modified(&out), modified(&src), modified(&header)) {
            (Some(o), Some(s), Some(h)) => o >= s && o >= h,
            _ => false,
        };
        if fresh {
            return Ok(out);
        }
        let output = Command::new("gcc")
            .args(["-O2", "-pthread", "-Wall", "-Wextra", "-Werror"])
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .arg("-lm")
            .output()
            .map_err(|e| format!("run gcc: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "gcc failed on {}:\n{}",
                src.display(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(out)
    }

    /// The xz input: 1.5 MB (times the scale) of log-like text from a fixed seed.
    fn xz_input(&self, scale: f64) -> Result<PathBuf, String> {
        let path = self.dir.join(format!("xz-input-{scale}.txt"));
        if path.is_file() {
            return Ok(path);
        }
        let words = [
            "alloc", "free", "page", "segment", "heap", "thread", "block", "size", "bin", "queue",
            "retire", "purge",
        ];
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let target = (1_500_000.0 * scale) as usize;
        let mut text = String::with_capacity(target + 200);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        while text.len() < target {
            for i in 0..12 {
                let r = next();
                if i > 0 {
                    text.push(' ');
                }
                if r % 10 < 7 {
                    let w = usize::try_from((r >> 8) % words.len() as u64).unwrap_or(0);
                    text.push_str(words[w]);
                } else {
                    let _ = write!(text, "{}", (r >> 20) % (1 << 30));
                }
            }
            text.push('\n');
        }
        std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The command line of `w` (program and arguments) at `scale`.
    fn command(&self, w: &Workload, scale: f64) -> Result<Vec<String>, String> {
        let s = |p: &Path| p.display().to_string();
        Ok(match w.program {
            Program::C(name, extra) => {
                let mut v = vec![s(&self.compile_c(name)?), scale.to_string()];
                v.extend(extra.iter().map(|a| (*a).to_owned()));
                v
            }
            Program::Python => vec![
                "python3".into(),
                s(&self.benches.join("real/alloc_heavy.py")),
                scale.to_string(),
            ],
            Program::Gxx => vec![
                "g++".into(),
                "-O1".into(),
                "-std=c++17".into(),
                "-c".into(),
                s(&self.benches.join("real/compile.cpp")),
                "-o".into(),
                s(&self.dir.join("compile.o")),
            ],
            Program::GitLog => vec![
                "git".into(),
                "-C".into(),
                s(&self.root),
                "log".into(),
                "-p".into(),
                "-C".into(),
                "-C".into(),
                "--stat".into(),
                "--word-diff".into(),
                "--no-color".into(),
            ],
            Program::Xz => vec![
                "xz".into(),
                "-6".into(),
                "-T1".into(),
                "-c".into(),
                s(&self.xz_input(scale)?),
            ],
        })
    }
}

/// Builds `libheaplens.so` (release) into this target directory with cargo; cargo does nothing
/// when it is up to date.
fn build_heaplens(root: &Path, profile: &Path) -> Result<PathBuf, String> {
    let target = profile.parent().ok_or("profile dir has a parent")?;
    eprintln!("building libheaplens.so (cargo build --release -p heaplens-preload)");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "heaplens-preload",
            "--target-dir",
        ])
        .arg(target)
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build -p heaplens-preload failed".into());
    }
    let lib = target.join("release/libheaplens.so");
    if lib.is_file() {
        Ok(lib)
    } else {
        Err(format!("{} missing after the build", lib.display()))
    }
}

/// One measurement.
#[derive(Clone, Copy)]
struct Sample {
    /// The round it was taken in.
    round: usize,
    time: Duration,
    /// Peak RSS in KiB (`ru_maxrss`).
    rss_kib: u64,
    /// FNV-1a of the program's standard output.
    output: u64,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs `argv` with `lib` preloaded (none: glibc), as part of round `round`; stdout goes to a
/// file in `dir`.
fn run_once(
    argv: &[String],
    lib: Option<&Path>,
    dir: &Path,
    round: usize,
) -> Result<Sample, String> {
    let out_path = dir.join("stdout.txt");
    let err_path = dir.join("stderr.txt");
    let out = std::fs::File::create(&out_path).map_err(|e| format!("create stdout: {e}"))?;
    let err = std::fs::File::create(&err_path).map_err(|e| format!("create stderr: {e}"))?;
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    if let Some(lib) = lib {
        cmd.env("LD_PRELOAD", lib);
    }
    // Own process group, so nothing the program leaves behind outlives the measurement.
    cmd.process_group(0);
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("spawn {program}: {e}"))?;
    let pid = i32::try_from(child.id()).map_err(|_| "pid out of range")?;
    let mut status = 0;
    // SAFETY: all-zero bytes are a valid `rusage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child, not yet reaped (`child` is never waited on); `status` and
        // `usage` are valid for writes.
        let r = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4: {e}"));
        }
    }
    let time = start.elapsed();
    let status = std::process::ExitStatus::from_raw(status);
    let stdout = std::fs::read(&out_path).map_err(|e| format!("read stdout: {e}"))?;
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        return Err(format!("{status} ({tail})"));
    }
    Ok(Sample {
        round,
        time,
        rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        output: fnv1a(&stdout),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

fn geomean(v: &[f64]) -> f64 {
    let logs: Vec<f64> = v
        .iter()
        .filter(|x| x.is_finite() && **x > 0.0)
        .map(|x| x.ln())
        .collect();
    if logs.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = logs.len() as f64;
    (logs.iter().sum::<f64>() / n).exp()
}

/// Per workload and allocator: the samples of every round.
struct Results {
    samples: Vec<Vec<Vec<Sample>>>,
    failures: Vec<String>,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("c_suite: {e}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::too_many_lines)]
fn run() -> Result<bool, String> {
    let opts = parse_args()?;
    let (setup, lib) = Setup::new(opts.heaplens.as_deref())?;
    let mut allocs = allocators(lib);
    if let Some(names) = &opts.allocs {
        for n in names {
            if !allocs.iter().any(|a| a.name == n) {
                return Err(format!("no allocator {n}"));
            }
        }
        allocs.retain(|a| a.name == "heaplens" || names.iter().any(|n| n == a.name));
    }
    let mut missing = Vec::new();
    allocs.retain(|a| match &a.lib {
        Some(l) if !l.is_file() => {
            missing.push(format!("{} ({} not installed)", a.name, l.display()));
            false
        }
        _ => true,
    });
    for m in &missing {
        eprintln!("skipping {m}");
    }
    let workloads: Vec<&Workload> = WORKLOADS
        .iter()
        .filter(|w| {
            opts.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|n| n == w.name))
        })
        .collect();
    let mut argvs = Vec::new();
    for w in &workloads {
        argvs.push(setup.command(w, opts.scale)?);
    }

    let mut results = Results {
        samples: vec![vec![Vec::new(); allocs.len()]; workloads.len()],
        failures: Vec::new(),
    };
    let started = Instant::now();
    for round in 0..opts.rounds {
        for (wi, w) in workloads.iter().enumerate() {
            for k in 0..allocs.len() {
                let ai = (k + round + wi) % allocs.len();
                let a = &allocs[ai];
                match run_once(&argvs[wi], a.lib.as_deref(), &setup.dir, round) {
                    Ok(s) => results.samples[wi][ai].push(s),
                    Err(e) => results
                        .failures
                        .push(format!("{} under {}: {e}", w.name, a.name)),
                }
            }
            eprint!(".");
            let _ = std::io::stderr().flush();
        }
        eprintln!(
            " round {}/{} ({:.0} s)",
            round + 1,
            opts.rounds,
            started.elapsed().as_secs_f64()
        );
    }
    // Every allocator must produce the same output.
    for (wi, w) in workloads.iter().enumerate() {
        let first = results.samples[wi]
            .iter()
            .flatten()
            .next()
            .map(|s| s.output);
        for (ai, a) in allocs.iter().enumerate() {
            if results.samples[wi][ai]
                .iter()
                .any(|s| Some(s.output) != first)
            {
                results.failures.push(format!(
                    "{} under {}: output differs from the other allocators'",
                    w.name, a.name
                ));
            }
        }
    }
    let report = report(&opts, &workloads, &allocs, &results);
    print!("{report}");
    if !missing.is_empty() {
        println!("\nnot measured: {}", missing.join(", "));
    }
    if results.failures.is_empty() {
        Ok(true)
    } else {
        println!("\nFAILED:");
        for f in &results.failures {
            println!("  {f}");
        }
        Ok(false)
    }
}

/// The median over the rounds measured for both of `h`'s and `o`'s ratio: time, or peak RSS if
/// `rss`. NaN if no round measured both.
fn paired_ratio(h: &[Sample], o: &[Sample], rss: bool) -> f64 {
    let value = |s: &Sample| {
        #[allow(clippy::cast_precision_loss)]
        if rss {
            s.rss_kib as f64
        } else {
            s.time.as_secs_f64()
        }
    };
    let ratios: Vec<f64> = h
        .iter()
        .filter_map(|a| {
            let b = o.iter().find(|b| b.round == a.round)?;
            Some(value(a) / value(b))
        })
        .collect();
    median(ratios)
}

/// Median time (seconds) and median peak RSS (MiB) of one workload under one allocator.
fn medians(samples: &[Sample]) -> (f64, f64) {
    let t = median(samples.iter().map(|s| s.time.as_secs_f64()).collect());
    #[allow(clippy::cast_precision_loss)]
    let r = median(samples.iter().map(|s| s.rss_kib as f64 / 1024.0).collect());
    (t, r)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "NOT MET" }
}

#[allow(clippy::too_many_lines)]
fn report(opts: &Options, workloads: &[&Workload], allocs: &[Alloc], r: &Results) -> String {
    let mut out = String::new();
    let med: Vec<Vec<(f64, f64)>> = r
        .samples
        .iter()
        .map(|per| per.iter().map(|s| medians(s)).collect())
        .collect();
    let _ = writeln!(
        out,
        "\nC suite under LD_PRELOAD: median of {} rounds, time in ms | peak RSS in MiB",
        opts.rounds
    );
    let _ = write!(out, "{:<12}", "workload");
    for a in allocs {
        let _ = write!(out, " {:>19}", a.name);
    }
    let _ = writeln!(out);
    for (wi, w) in workloads.iter().enumerate() {
        let _ = write!(out, "{:<12}", w.name);
        for m in &med[wi] {
            let _ = write!(out, " {:>10.1} | {:>6.1}", m.0 * 1000.0, m.1);
        }
        let _ = writeln!(out);
    }

    // Ratios heaplens / other, per workload; allocs[0] is heaplens. Each is the median of the
    // rounds' own ratios: in a round the allocators run one after the other, so a round's ratio
    // is taken at one speed of the machine, where the medians of two allocators' times may come
    // from rounds far apart (on this shared machine one workload read 0.73x in one run and
    // 1.41x in another by the ratio of medians).
    let others: Vec<usize> = (1..allocs.len()).collect();
    let ratio =
        |wi: usize, ai: usize, rss: bool| paired_ratio(&r.samples[wi][0], &r.samples[wi][ai], rss);
    let _ = writeln!(
        out,
        "\nheaplens / other (time | peak RSS): the median of each round's ratio"
    );
    let _ = write!(out, "{:<12}", "workload");
    for &ai in &others {
        let _ = write!(out, " {:>17}", format!("vs {}", allocs[ai].name));
    }
    let _ = writeln!(out);
    let mut time_ratios = vec![Vec::new(); allocs.len()];
    let mut rss_ratios = vec![Vec::new(); allocs.len()];
    for (wi, w) in workloads.iter().enumerate() {
        let _ = write!(out, "{:<12}", w.name);
        for &ai in &others {
            let (t, m) = (ratio(wi, ai, false), ratio(wi, ai, true));
            time_ratios[ai].push((w.name, t));
            rss_ratios[ai].push((w.name, m));
            let _ = write!(out, "    {t:>5.2}x | {m:>5.2}x");
        }
        let _ = writeln!(out);
    }
    let gm = |v: &[(&str, f64)]| geomean(&v.iter().map(|x| x.1).collect::<Vec<_>>());
    let _ = write!(out, "{:<12}", "geomean");
    for &ai in &others {
        let _ = write!(
            out,
            "    {:>5.2}x | {:>5.2}x",
            gm(&time_ratios[ai]),
            gm(&rss_ratios[ai])
        );
    }
    let _ = writeln!(out);
    // The same geomeans from the ratios of the medians, to show how far the machine moved.
    let _ = write!(out, "{:<12}", "(of medians)");
    for &ai in &others {
        let of_medians = |rss: bool| {
            geomean(
                &med.iter()
                    .map(|m| {
                        if rss {
                            m[0].1 / m[ai].1
                        } else {
                            m[0].0 / m[ai].0
                        }
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let _ = write!(
            out,
            "    {:>5.2}x | {:>5.2}x",
            of_medians(false),
            of_medians(true)
        );
    }
    let _ = writeln!(out);

    // Budgets (DESIGN.md, issue 13).
    let _ = writeln!(out, "\nbudgets (issue 13):");
    let worst = |v: &[(&'static str, f64)]| {
        v.iter()
            .copied()
            .filter(|x| x.1.is_finite())
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or(("-", f64::NAN))
    };
    let find = |name: &str| allocs.iter().position(|a| a.name == name);
    if let Some(mi) = find("mimalloc") {
        let g = gm(&time_ratios[mi]);
        let _ = writeln!(
            out,
            "  vs mimalloc: time geomean {g:.2}x <= 1.00x: {}",
            verdict(g <= 1.0)
        );
        let over: Vec<String> = time_ratios[mi]
            .iter()
            .filter(|x| x.1 > 1.10)
            .map(|x| format!("{} {:.2}x", x.0, x.1))
            .collect();
        let (wn, wr) = worst(&time_ratios[mi]);
        let _ = writeln!(
            out,
            "  vs mimalloc: no workload above 1.10x time (worst {wn} {wr:.2}x): {}{}",
            verdict(over.is_empty()),
            if over.is_empty() {
                String::new()
            } else {
                format!(" ({})", over.join(", "))
            }
        );
        let over: Vec<String> = rss_ratios[mi]
            .iter()
            .filter(|x| x.1 > 1.10)
            .map(|x| format!("{} {:.2}x", x.0, x.1))
            .collect();
        let (wn, wr) = worst(&rss_ratios[mi]);
        let _ = writeln!(
            out,
            "  vs mimalloc: peak RSS <= 1.10x on every workload (worst {wn} {wr:.2}x): {}{}",
            verdict(over.is_empty()),
            if over.is_empty() {
                String::new()
            } else {
                format!(" ({})", over.join(", "))
            }
        );
    }
    for other in ["jemalloc", "glibc"] {
        if let Some(i) = find(other) {
            let g = gm(&time_ratios[i]);
            let _ = writeln!(
                out,
                "  vs {other}: time geomean {g:.2}x <= 0.80x: {}",
                verdict(g <= 0.8)
            );
        }
    }

    // The markdown table for README and BENCHMARKS.md.
    let _ = writeln!(
        out,
        "\nmarkdown (median of {} rounds; time in ms, peak RSS in MiB; ratios heaplens / other, \
         the median of the rounds' ratios):\n",
        opts.rounds
    );
    let _ = write!(out, "| workload |");
    for a in allocs {
        let _ = write!(out, " {} |", a.name);
    }
    for &ai in &others {
        let _ = write!(out, " vs {} |", allocs[ai].name);
    }
    let _ = writeln!(out);
    let _ = write!(out, "|---|");
    for _ in 0..allocs.len() + others.len() {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out);
    for (wi, w) in workloads.iter().enumerate() {
        let _ = write!(out, "| `{}` |", w.name);
        for m in &med[wi] {
            let _ = write!(out, " {:.0} ms, {:.1} MiB |", m.0 * 1000.0, m.1);
        }
        for &ai in &others {
            let _ = write!(
                out,
                " {:.2}x, {:.2}x |",
                ratio(wi, ai, false),
                ratio(wi, ai, true)
            );
        }
        let _ = writeln!(out);
    }
    let _ = write!(out, "| geomean |");
    for _ in allocs {
        let _ = write!(out, " |");
    }
    for &ai in &others {
        let _ = write!(
            out,
            " **{:.2}x**, **{:.2}x** |",
            gm(&time_ratios[ai]),
            gm(&rss_ratios[ai])
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "\nworkloads:");
    for w in workloads {
        let _ = writeln!(out, "  {:<12} {}", w.name, w.what);
    }
    out
}
