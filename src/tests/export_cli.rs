//! `heaplens export` and `heaplens diff` on real recordings of `sample-apps/c/extra_leak.c`
//! (recorded with `--stacks all`, so every figure is exact), read back by the tools they are
//! for: `go tool pprof -top` lists the same sites and totals as `heaplens stats`; the Chrome
//! JSON parses and its counter tracks end at the model's values; folded stacks and speedscope
//! parse back to the model's totals; the CSV is the model's series; the diff of a run with and
//! without the extra leak names `extra_leak` with its exact bytes and blocks.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{heaplens, json, root, tempdir};
use heaplens_viewer::export::{self, Position, csv};
use heaplens_viewer::model::Model;
use heaplens_viewer::trace::TraceReader;

/// Bytes and blocks `extra_leak` leaks with the argument "leak".
const EXTRA_BYTES: f64 = 37.0 * 333.0;
const EXTRA_BLOCKS: f64 = 37.0;

/// The two recordings (without and with the extra leak) and one without stacks, made once.
struct Recordings {
    plain: PathBuf,
    leaky: PathBuf,
    no_stacks: PathBuf,
    dir: PathBuf,
}

fn recordings() -> &'static Recordings {
    static R: OnceLock<Recordings> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tempdir("export");
        common::known_counts(&dir); // builds libheaplens.so
        let exe = dir.join("extra_leak");
        let ok = Command::new("cc")
            .args(["-g", "-O2", "-o"])
            .arg(&exe)
            .arg(root().join("sample-apps/c/extra_leak.c"))
            .status()
            .expect("cc")
            .success();
        assert!(ok, "compiling extra_leak.c failed");
        let record = |name: &str, stacks: &str, args: &[&str]| {
            let trace = dir.join(name);
            let command: Vec<&std::ffi::OsStr> = std::iter::once(exe.as_os_str())
                .chain(args.iter().map(AsRef::as_ref))
                .collect();
            common::record(&trace, &["--stacks", stacks], &command);
            trace
        };
        Recordings {
            plain: record("plain.hltrace", "all", &[]),
            leaky: record("leaky.hltrace", "all", &["leak"]),
            no_stacks: record("no-stacks.hltrace", "off", &["leak"]),
            dir,
        }
    })
}

/// Runs `heaplens export TRACE ARGS -o OUT` and returns OUT.
fn export(trace: &Path, out: &str, args: &[&str]) -> PathBuf {
    let path = recordings().dir.join(out);
    let o = heaplens()
        .arg("export")
        .arg(trace)
        .args(args)
        .arg("-o")
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    path
}

/// The model of `trace` at `pos`, as the exports see it.
fn model_at(trace: &Path, pos: &Position) -> Model {
    let mut reader = TraceReader::open(trace).unwrap();
    export::replay_to(&mut reader, pos, &[], &mut |_, _, _| {})
        .unwrap()
        .model
}

/// The function of a site as `heaplens stats` names it (`extra_leak (extra_leak.c:25)`).
fn function(site: &str) -> String {
    site.split(" (").next().unwrap_or("").to_owned()
}

/// `go tool pprof -top` of `profile` for `index`: the total and the flat bytes per function.
fn pprof_top(profile: &Path, index: &str) -> Option<(u64, BTreeMap<String, u64>)> {
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-unit=B", "-nodefraction=0"])
        .arg(format!("-sample_index={index}"))
        .arg(profile)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "go tool pprof: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let bytes = |s: &str| s.trim_end_matches('B').parse::<u64>().ok();
    // "Showing nodes accounting for 22609B, 100% of 22609B total"
    let total = text
        .lines()
        .find_map(|l| {
            l.split(" of ")
                .nth(1)?
                .strip_suffix(" total")
                .and_then(bytes)
        })
        .unwrap_or_else(|| panic!("no total in {text}"));
    let mut flat = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 6
            && let Some(b) = bytes(f[0])
            && f[1].ends_with('%')
        {
            flat.insert(f[5..].join(" "), b);
        }
    }
    Some((total, flat))
}

#[test]
fn pprof_top_lists_the_same_sites_and_totals_as_stats() {
    let r = recordings();
    let profile = export(&r.leaky, "leaky.pb.gz", &["--format", "pprof"]);
    let stats = json(&["stats", "--json"], &r.leaky);
    let Some((total, flat)) = pprof_top(&profile, "inuse_space") else {
        eprintln!("skipped: `go` is not installed (Debian package golang-go)");
        return;
    };
    // Stats' top sites by function, live bytes and bytes allocated.
    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    let mut allocated: BTreeMap<String, u64> = BTreeMap::new();
    for s in stats["top_sites"].as_array().unwrap() {
        let name = function(s["site"].as_str().unwrap());
        *live.entry(name.clone()).or_default() += s["live_bytes"].as_f64().unwrap() as u64;
        *allocated.entry(name).or_default() += s["total_bytes"].as_f64().unwrap() as u64;
    }
    // Every live block with a stack (a few the loader allocated before the hook's stacks were
    // on have none, and are in `live_bytes_at_exit` only).
    let with_stacks: u64 = live.values().sum();
    assert_eq!(total, with_stacks, "{flat:?}");
    assert!(total <= stats["live_bytes_at_exit"].as_u64().unwrap());
    assert_eq!(flat["extra_leak"], EXTRA_BYTES as u64);
    assert_eq!(flat["keep_cache"], 50 * 200);
    for (name, bytes) in &live {
        if *bytes > 0 {
            assert_eq!(flat.get(name), Some(bytes), "{name}: {flat:?}");
        }
    }
    // The top of the listing is stats' top site.
    let top = stats["top_sites"][0]["site"].as_str().unwrap();
    let most = flat.iter().max_by_key(|(_, b)| **b).unwrap();
    assert_eq!(*most.0, function(top));
    let (_, alloc_flat) = pprof_top(&profile, "alloc_space").unwrap();
    assert_eq!(alloc_flat["churn"], allocated["churn"]);
    assert_eq!(
        allocated["churn"],
        (0..2000u64).map(|i| 24 + (i % 5) * 16).sum::<u64>()
    );
}

#[test]
fn pprof_without_stacks_groups_by_thread_size_class_and_page() {
    let r = recordings();
    let profile = export(&r.no_stacks, "no-stacks.pb.gz", &["--format", "pprof"]);
    let stats = json(&["stats", "--json"], &r.no_stacks);
    let Some((total, flat)) = pprof_top(&profile, "inuse_space") else {
        eprintln!("skipped: `go` is not installed (Debian package golang-go)");
        return;
    };
    assert_eq!(total, stats["live_bytes_at_exit"].as_u64().unwrap());
    // Every block counts (no stacks to miss); pages are the leaves.
    assert!(
        flat.iter()
            .filter(|(_, b)| **b > 0)
            .all(|(k, _)| k.starts_with("page 0x")),
        "{flat:?}"
    );
    let folded = export(
        &r.no_stacks,
        "no-stacks.folded",
        &["--format", "collapsed", "--metric", "alloc_objects"],
    );
    let text = std::fs::read_to_string(folded).unwrap();
    let allocs: i64 = text
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<i64>().unwrap())
        .sum();
    assert_eq!(allocs, stats["allocs"].as_i64().unwrap());
    assert!(text.lines().all(|l| l.contains(";size class ")), "{text}");
}

#[test]
fn chrome_counter_tracks_end_at_the_models_values_and_markers_are_instants() {
    let r = recordings();
    let out = export(&r.leaky, "leaky.json", &["--format", "chrome"]);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    let model = model_at(&r.leaky, &Position::End);
    let samples = model.metrics().samples();
    let (last, before) = csv::with_previous(samples).last().unwrap();
    let want = csv::row(last, &before);
    for (name, col) in export::chrome::COUNTERS {
        let track: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["ph"] == "C" && e["name"] == name)
            .collect();
        assert_eq!(track.len(), samples.len(), "{name}");
        let value = track.last().unwrap()["args"]["value"].as_f64().unwrap();
        // JSON's decimal text of the value: equal to 1e-12.
        assert!(
            (value - want[col]).abs() <= 1e-12 * want[col].abs().max(1.0),
            "{name}: {value} {}",
            want[col]
        );
    }
    let last_committed = events
        .iter()
        .rev()
        .find(|e| e["name"] == "committed bytes")
        .unwrap();
    assert_eq!(
        last_committed["args"]["value"].as_f64().unwrap() as u64,
        last.committed_bytes
    );
    let markers: Vec<&str> = events
        .iter()
        .filter(|e| e["ph"] == "i")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(markers, ["setup done", "work done"]);
}

#[test]
fn collapsed_and_speedscope_parse_back_to_the_models_totals() {
    let r = recordings();
    let model = model_at(&r.leaky, &Position::End);
    let live: f64 = model.sites().sites().map(|(_, s)| s.live_bytes).sum();
    let allocs: f64 = model.sites().sites().map(|(_, s)| s.allocs).sum();
    assert!(live as u64 <= model.live().requested_bytes());
    assert!(live >= 10000.0 + EXTRA_BYTES);

    let folded =
        std::fs::read_to_string(export(&r.leaky, "leaky.folded", &["--format", "collapsed"]))
            .unwrap();
    let mut total = 0;
    for line in folded.lines() {
        let (stack, v) = line.rsplit_once(' ').unwrap();
        let v: u64 = v.parse().unwrap();
        total += v;
        if stack.ends_with(";extra_leak") {
            assert!(stack.contains(";main;extra_leak"), "{stack}");
            assert_eq!(v, EXTRA_BYTES as u64);
        }
    }
    assert_eq!(total, live as u64);
    let folded = std::fs::read_to_string(export(
        &r.leaky,
        "leaky-allocs.folded",
        &["--format", "collapsed", "--metric", "alloc_objects"],
    ))
    .unwrap();
    let n: u64 = folded
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(n, allocs as u64);

    let out = export(
        &r.leaky,
        "leaky.speedscope.json",
        &["--format", "speedscope"],
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    assert_eq!(
        doc["$schema"],
        "https://www.speedscope.app/file-format-schema.json"
    );
    let frames = doc["shared"]["frames"].as_array().unwrap();
    let p = &doc["profiles"][0];
    assert_eq!(p["type"], "sampled");
    assert_eq!(p["unit"], "bytes");
    let weights: Vec<u64> = p["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_u64().unwrap())
        .collect();
    assert_eq!(weights.iter().sum::<u64>(), live as u64);
    assert_eq!(p["endValue"].as_u64().unwrap(), live as u64);
    let samples = p["samples"].as_array().unwrap();
    assert_eq!(samples.len(), weights.len());
    let mut found = false;
    for (s, w) in samples.iter().zip(&weights) {
        let names: Vec<&str> = s
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                frames[i.as_u64().unwrap() as usize]["name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        if names.last() == Some(&"extra_leak") {
            found = true;
            assert_eq!(*w, EXTRA_BYTES as u64);
        }
    }
    assert!(found, "no extra_leak stack in {doc}");
}

#[test]
fn csv_rows_are_the_models_series() {
    let r = recordings();
    let text =
        std::fs::read_to_string(export(&r.leaky, "leaky.csv", &["--format", "csv"])).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), csv::COLUMNS.join(","));
    let model = model_at(&r.leaky, &Position::End);
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), model.metrics().samples().len());
    for (line, (s, before)) in rows
        .iter()
        .zip(csv::with_previous(model.metrics().samples()))
    {
        let got: Vec<f64> = line.split(',').map(|v| v.parse().unwrap()).collect();
        assert_eq!(got, csv::row(s, &before));
    }
}

#[test]
fn exports_at_a_marker_or_time_show_that_point() {
    let r = recordings();
    let at = |args: &[&str], name: &str| {
        let mut all = vec!["--format", "collapsed"];
        all.extend_from_slice(args);
        std::fs::read_to_string(export(&r.leaky, name, &all)).unwrap()
    };
    let setup = at(&["--at-marker", "setup done"], "setup.folded");
    assert!(!setup.contains("extra_leak"), "{setup}");
    assert!(setup.contains(";keep_cache 10000"), "{setup}");
    let end = at(&[], "end.folded");
    assert!(end.contains(";extra_leak 12321"), "{end}");
    // Time 0: nothing allocated yet.
    let start = at(&["--at", "0s"], "start.folded");
    assert!(start.is_empty(), "{start}");

    let out = heaplens()
        .arg("export")
        .arg(&r.leaky)
        .args(["--format", "csv", "--at-marker", "no such phase", "-o"])
        .arg(r.dir.join("none.csv"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no marker \"no such phase\"") && err.contains("\"setup done\""),
        "{err}"
    );
    assert!(!r.dir.join("none.csv").exists());
    let out = heaplens()
        .arg("export")
        .arg(&r.leaky)
        .args(["--format", "csv", "--at", "soon", "-o", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"soon\""));
}

/// The sites of a `heaplens diff --json` output that changed.
fn changed_sites(d: &serde_json::Value) -> Vec<(String, f64, f64)> {
    d["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                function(s["site"].as_str().unwrap()),
                s["delta_bytes"].as_f64().unwrap(),
                s["delta_blocks"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn diff_of_two_runs_names_the_extra_leak_and_its_exact_bytes() {
    let r = recordings();
    let out = heaplens()
        .args(["diff", "--json"])
        .arg(&r.plain)
        .arg(&r.leaky)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        changed_sites(&d),
        [("extra_leak".to_owned(), EXTRA_BYTES, EXTRA_BLOCKS)],
        "{d}"
    );
    // The size class of 333-byte blocks grew by 37 blocks.
    let classes = d["size_classes"].as_array().unwrap();
    let c = classes
        .iter()
        .find(|c| c["block_size"].as_u64().unwrap() >= 333 && c["delta_blocks"] == 37)
        .unwrap_or_else(|| panic!("{d}"));
    assert_eq!(
        c["delta_bytes"].as_u64().unwrap(),
        37 * c["block_size"].as_u64().unwrap()
    );
    // The table says the same.
    let out = heaplens()
        .arg("diff")
        .arg(&r.plain)
        .arg(&r.leaky)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| l.contains("extra_leak (")).unwrap();
    assert!(row.trim_start().starts_with("+12321 "), "{text}");
}

#[test]
fn diff_of_two_markers_of_one_trace_names_what_grew_between_them() {
    let r = recordings();
    let d = json(
        &[
            "diff",
            "--json",
            "--from",
            "setup done",
            "--to",
            "work done",
        ],
        &r.leaky,
    );
    assert_eq!(
        changed_sites(&d),
        [("extra_leak".to_owned(), EXTRA_BYTES, EXTRA_BLOCKS)],
        "{d}"
    );
    assert_eq!(d["a"]["position"], "marker \"setup done\"");
    // Nothing grew in the run without the leak.
    let d = json(
        &[
            "diff",
            "--json",
            "--from",
            "setup done",
            "--to",
            "work done",
        ],
        &r.plain,
    );
    assert_eq!(changed_sites(&d), []);
    let out = heaplens().arg("diff").arg(&r.plain).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from LABEL"));
}

#[test]
fn a_file_that_is_not_a_trace_gets_a_clear_error_and_no_output() {
    let r = recordings();
    let bad = r.dir.join("not-a-trace.hltrace");
    std::fs::write(&bad, b"this is not a heaplens trace at all").unwrap();
    let out_path = r.dir.join("bad.folded");
    let out = heaplens()
        .arg("export")
        .arg(&bad)
        .args(["--format", "collapsed", "-o"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-a-trace.hltrace"), "{err}");
    assert!(!out_path.exists());
    let out = heaplens()
        .arg("diff")
        .arg(&bad)
        .arg(&r.plain)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn view_with_a_baseline_that_is_not_a_trace_names_it() {
    let r = recordings();
    let bad = r.dir.join("not-a-baseline.hltrace");
    std::fs::write(&bad, b"nothing here").unwrap();
    let out = heaplens()
        .arg("view")
        .arg(&r.leaky)
        .arg("--diff")
        .arg(&bad)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-a-baseline.hltrace"), "{err}");
}

#[test]
fn parquet_refuses_a_position_and_standard_output() {
    // The tables themselves are checked by DuckDB in export_parquet.rs.
    let r = recordings();
    let dir = r.dir.join("tables");
    let cases: [(&[&str], &str); 2] = [
        (&["--at", "1ms", "-o", dir.to_str().unwrap()], "--at"),
        (&["-o", "-"], "folder"),
    ];
    for (args, said) in cases {
        let out = heaplens()
            .arg("export")
            .arg(&r.plain)
            .args(["--format", "parquet"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(said), "{err}");
        assert!(out.stdout.is_empty());
    }
    assert!(!dir.exists(), "nothing written");
}
