//! `heaplens export --format parquet` read back by DuckDB: two recordings of a C program (two
//! processes) exported into one partitioned folder; per process, the live bytes at exit in
//! `blocks` equal `heaplens stats`'s `live_bytes_at_exit`, the rows of `events` its `events`,
//! and the README's fleet query (top sites by live bytes at exit across all processes) names
//! the leaking function with the bytes both processes leaked.
//!
//! DataFusion, a second engine, runs the same fleet query on the same files and must agree.
//!
//! DuckDB and DataFusion are Python wheels in the virtual environment `.ci/run` creates; it
//! gives its python as `HEAPLENS_TEST_PYTHON`. Without it the test says so and passes, except under CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{heaplens, json, tempdir};
use heaplens_viewer::trace::TraceReader;

const PROGRAM: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
static void *shared[300];
__attribute__((noinline)) void *cache_entry(size_t n) { return malloc(n); }
__attribute__((noinline)) void *scratch(size_t n) { return malloc(n); }
static void *worker(void *arg) {
    (void)arg;
    for (int i = 0; i < 300; i++) free(shared[i]); /* cross-thread frees */
    return NULL;
}
int main(int argc, char **argv) {
    int leaks = argc > 1 ? atoi(argv[1]) : 1;
    for (int i = 0; i < 2000; i++) { char *p = scratch(16 + i % 200); p[0] = 1; free(p); }
    for (int i = 0; i < 300; i++) shared[i] = scratch(48);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    pthread_join(t, NULL);
    for (int i = 0; i < leaks; i++) memset(cache_entry(1000), 2, 1000);
    char *r = malloc(100);
    r = realloc(r, 110); /* in place: the leaked block's size is the newer one */
    r[0] = 1;
    return 0;
}
"#;

/// DuckDB's side: per process, live bytes and blocks at exit and events; then the fleet query.
const QUERY: &str = r#"
import duckdb, json, sys
root = sys.argv[1]
t = lambda name: f"read_parquet('{root}/{name}/*/*/*.parquet', hive_partitioning = true)"
con = duckdb.connect()
rows = lambda sql: con.execute(sql).fetchall()
live = rows(f"""SELECT pid, sum(size), count(*) FROM {t('blocks')}
                WHERE free_time IS NULL GROUP BY pid""")
events = rows(f"SELECT pid, count(*) FROM {t('events')} GROUP BY pid")
hosts = rows(f"SELECT DISTINCT host FROM {t('process')}")
# README's query ("Profiling a fleet").
top = rows(f"""SELECT s.site, count(DISTINCT (b.host, b.pid)) AS processes,
                      round(sum(b.size * b.site_weight)) AS live_bytes,
                      round(sum(b.site_weight)) AS live_blocks
               FROM {t('blocks')} b JOIN {t('sites')} s USING (host, pid, site_id)
               WHERE b.free_time IS NULL
               GROUP BY s.site ORDER BY live_bytes DESC, s.site LIMIT 5""")
frames = rows(f"""SELECT f.function, f.file IS NOT NULL, f.module
                  FROM (SELECT unnest(frames) AS f FROM {t('sites')})
                  WHERE f.function = 'cache_entry' LIMIT 1""")
print(json.dumps({
    "live": {str(p): [int(b), n] for p, b, n in live},
    "events": {str(p): n for p, n in events},
    "hosts": [h for (h,) in hosts],
    "top": [[s, p, int(b), int(n)] for s, p, b, n in top],
    "frames": frames,
}))
"#;

/// DataFusion's side, a second engine on the same folder: it discovers nothing by itself, so the
/// tables are registered with their hive partition columns (as Spark or Trino would), and the
/// fleet query is the README's in portable SQL. Prints the top sites as DuckDB's script does.
const DATAFUSION: &str = r#"
import datafusion, json, sys
root = sys.argv[1]
ctx = datafusion.SessionContext()
for name in ("blocks", "sites"):
    ctx.register_parquet(name, f"{root}/{name}/", table_partition_cols=[("host", "string"), ("pid", "string")])
top = ctx.sql("""SELECT s.site, count(DISTINCT concat(b.host, '/', b.pid)) AS processes,
                        round(sum(b.size * b.site_weight)) AS live_bytes,
                        round(sum(b.site_weight)) AS live_blocks
                 FROM blocks b JOIN sites s ON b.host = s.host AND b.pid = s.pid AND b.site_id = s.site_id
                 WHERE b.free_time IS NULL
                 GROUP BY s.site ORDER BY live_bytes DESC, s.site LIMIT 5""").to_pylist()
print(json.dumps([[r["site"], r["processes"], int(r["live_bytes"]), int(r["live_blocks"])] for r in top]))
"#;

/// The virtual environment's python, or None (said) when it is not set up outside CI.
fn python() -> Option<PathBuf> {
    match std::env::var_os("HEAPLENS_TEST_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("HEAPLENS_TEST_PYTHON is not set: .ci/run sets it to the venv with DuckDB")
        }
        None => {
            eprintln!(
                "skipped: HEAPLENS_TEST_PYTHON is not set (bash .ci/run sets it to .ci/venv's \
                 python, with the duckdb wheel)"
            );
            None
        }
    }
}

fn compile(dir: &Path) -> PathBuf {
    let src = dir.join("fleet.c");
    std::fs::write(&src, PROGRAM).unwrap();
    let exe = dir.join("fleet");
    let ok = Command::new("cc")
        .args(["-g", "-O1", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("cc")
        .success();
    assert!(ok, "compiling fleet.c failed");
    exe
}

#[test]
fn duckdb_reads_two_processes_and_agrees_with_stats() {
    let Some(python) = python() else { return };
    let dir = tempdir("export-parquet");
    common::known_counts(&dir); // builds libheaplens.so
    let exe = compile(&dir);
    let out = dir.join("tables");
    let _ = std::fs::remove_dir_all(&out);
    let mut procs = Vec::new();
    for (name, leaks) in [("a", 7u64), ("b", 12)] {
        let trace = dir.join(format!("{name}.hltrace"));
        let arg = leaks.to_string();
        common::record(
            &trace,
            &["--stacks", "all"],
            &[exe.as_os_str(), arg.as_ref()],
        );
        let export = heaplens()
            .arg("export")
            .arg(&trace)
            .args(["--format", "parquet", "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            export.status.success(),
            "{}",
            String::from_utf8_lossy(&export.stderr)
        );
        let pid = TraceReader::open(&trace).unwrap().metadata().pid;
        procs.push((pid, leaks, json(&["stats", "--json"], &trace)));
    }
    assert_ne!(procs[0].0, procs[1].0, "two processes");

    let q = Command::new(&python)
        .args(["-c", QUERY])
        .arg(&out)
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let got: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
    eprintln!("{got}");

    let mut leaked = 0;
    for (pid, leaks, stats) in &procs {
        let p = pid.to_string();
        let live_bytes = stats["live_bytes_at_exit"].as_u64().unwrap();
        assert_eq!(got["live"][&p][0].as_u64(), Some(live_bytes), "pid {pid}");
        assert_eq!(
            got["live"][&p][1], stats["live_blocks_at_exit"],
            "pid {pid}"
        );
        assert_eq!(got["events"][&p], stats["events"], "pid {pid}");
        assert!(live_bytes >= leaks * 1000 + 110, "the leaks are live");
        leaked += leaks * 1000;
    }
    assert_eq!(got["hosts"].as_array().unwrap().len(), 1);
    let top = &got["top"][0];
    assert!(
        top[0]
            .as_str()
            .unwrap()
            .starts_with("cache_entry (fleet.c:"),
        "{top}"
    );
    assert_eq!(top[1], 2, "both processes");
    assert_eq!(top[2].as_u64(), Some(leaked));
    assert_eq!(top[3].as_u64(), Some(7 + 12));
    // DataFusion reads the same partitioned files and answers the same question alike.
    let q = Command::new(&python)
        .args(["-c", DATAFUSION])
        .arg(&out)
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let datafusion: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
    assert_eq!(datafusion, got["top"], "DataFusion and DuckDB agree");
    let frame = &got["frames"][0];
    assert_eq!(frame[1], true, "symbolised with its file");
    assert_eq!(frame[2], "fleet");
    let _ = std::fs::remove_dir_all(&dir);
}
