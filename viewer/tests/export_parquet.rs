//! The Parquet export read back with parquet's own reader, against the truth of a simulated
//! allocator (`model::synth`) whose events arrive reordered as the collector may deliver them:
//! the rows of `blocks` with no free time are exactly the simulation's live blocks (address and
//! requested size), every allocation has one row, the live bytes per site (by the pcs of
//! `sites.frames`) are the simulation's, `pages` holds every page of every census, and the
//! tables are written in several row groups under `host=`/`pid=` partitions.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use heaplens_alloc::event::{EventKind, stack_mode};
use heaplens_viewer::export::parquet::{self as export, Options};
use heaplens_viewer::model::synth::{Synth, SynthConfig, shuffle_within_ticks};
use heaplens_viewer::trace::{EndInfo, Metadata, TraceWriter};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};

fn rows(path: &Path) -> (Vec<Row>, usize) {
    let r = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
    let groups = r.metadata().num_row_groups();
    (r.into_iter().map(Result::unwrap).collect(), groups)
}

/// Column `name` of `row`.
fn field<'r>(row: &'r Row, name: &str) -> &'r Field {
    row.get_column_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| f)
        .unwrap_or_else(|| panic!("no column {name}"))
}

fn long(row: &Row, name: &str) -> Option<i64> {
    match field(row, name) {
        Field::Long(v) => Some(*v),
        Field::Null => None,
        f => panic!("{name} is {f:?}"),
    }
}

#[test]
fn blocks_sites_and_pages_match_the_simulation() {
    let mut s = Synth::new(SynthConfig {
        seed: 5,
        stacks: stack_mode::ALL,
        ..SynthConfig::default()
    });
    let mut censuses = 0;
    for _ in 0..4 {
        s.run(8_000);
        s.emit_census();
        censuses += 1;
    }
    s.quiesce();
    let truth = s.live_blocks();
    let by_site = s.site_live_bytes();
    let events = shuffle_within_ticks(s.events(), 9);
    let census_pages = events
        .iter()
        .filter(|(_, e)| e.kind == EventKind::CensusPage as u8)
        .count();
    let allocs = events
        .iter()
        .filter(|(_, e)| e.kind == EventKind::Alloc as u8)
        .count();

    let dir = std::env::temp_dir().join(format!("heaplens-export-parquet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("synth.hltrace");
    let mut meta = Metadata::with_allocator_constants();
    meta.hostname = "build 7/eu".into();
    meta.pid = 4321;
    let mut w = TraceWriter::create(&trace, &meta).unwrap();
    for run in events.chunk_by(|a, b| a.0 == b.0) {
        let batch: Vec<_> = run.iter().map(|(_, e)| *e).collect();
        w.write_batch(run[0].0, &batch).unwrap();
    }
    w.finish(EndInfo::clean(0)).unwrap();

    let out = dir.join("tables");
    let opts = Options {
        row_group_rows: 5_000,
        ..Options::default()
    };
    let summary = export::write(&trace, &out, &opts).unwrap();
    assert_eq!(summary.host, "build_7_eu", "one path component");
    let file = |table: &str| -> PathBuf {
        out.join(table)
            .join("host=build_7_eu/pid=4321/part-0.parquet")
    };

    let (events_rows, groups) = rows(&file("events"));
    assert_eq!(events_rows.len(), events.len());
    assert!(groups > 1, "written a row group at a time");

    let (blocks, _) = rows(&file("blocks"));
    assert_eq!(blocks.len(), allocs, "one row per allocation");
    let live: BTreeMap<u64, u64> = blocks
        .iter()
        .filter(|b| long(b, "free_time").is_none())
        .map(|b| {
            let addr = long(b, "address").unwrap() as u64;
            (addr, long(b, "size").unwrap() as u64)
        })
        .collect();
    assert_eq!(live, truth, "the live blocks and their sizes");
    assert!(
        blocks
            .iter()
            .all(|b| long(b, "free_time").is_none_or(|f| f >= long(b, "alloc_time").unwrap())),
        "freed after allocated"
    );

    // Live bytes per site, the site named by its frames' pcs.
    let (sites, _) = rows(&file("sites"));
    let pcs: HashMap<i64, Vec<u64>> = sites
        .iter()
        .map(|r| {
            let Field::ListInternal(frames) = field(r, "frames") else {
                panic!("frames is a list");
            };
            let pcs = frames
                .elements()
                .iter()
                .map(|f| match f {
                    Field::Group(g) => long(g, "pc").unwrap() as u64,
                    f => panic!("a frame is {f:?}"),
                })
                .collect();
            (long(r, "site_id").unwrap(), pcs)
        })
        .collect();
    let mut got: BTreeMap<Vec<u64>, u64> = BTreeMap::new();
    for b in blocks.iter().filter(|b| long(b, "free_time").is_none()) {
        if let Some(id) = long(b, "site_id") {
            *got.entry(pcs[&id].clone()).or_default() += long(b, "size").unwrap() as u64;
        }
    }
    assert_eq!(got, by_site);

    let (pages, _) = rows(&file("pages"));
    assert_eq!(pages.len(), census_pages);
    let numbered: std::collections::BTreeSet<_> =
        pages.iter().map(|p| long(p, "census").unwrap()).collect();
    assert_eq!(numbered.len(), censuses);

    let (process, _) = rows(&file("process"));
    assert_eq!(
        long(&process[0], "live_blocks_at_exit"),
        Some(truth.len() as i64)
    );
    assert_eq!(
        long(&process[0], "live_bytes_at_exit"),
        Some(truth.values().sum::<u64>() as i64)
    );
    assert_eq!(summary.unmatched_frees, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
