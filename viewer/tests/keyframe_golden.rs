//! Keyframes of every version restore: `assets/traces/golden-keyframes-vN.hltrace` holds a synthetic
//! stream with stacks and real model keyframes of keyframe version N, written by the build that
//! wrote that version (version 0, before keyframes had a header, is in the recorded scenarios'
//! traces: `model_sites::version_0_keyframes_of_recorded_traces_still_restore`). Each keyframe,
//! restored by today's [`Model::from_keyframe`] and replayed to the end, gives the model a replay
//! from the start gives. Only the current version's file can be rewritten (`HEAPLENS_BLESS=1`);
//! a new keyframe version gets a file of its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use heaplens_alloc::event::stack_mode;
use heaplens_viewer::model::{KEYFRAME_MAGIC, KEYFRAME_VERSION, Model};
use heaplens_viewer::trace::synth::{self, SynthConfig};
use heaplens_viewer::trace::{
    EndInfo, EndReason, ExitStatus, Metadata, TraceReader, TraceWriter, WriterOptions,
};

fn golden(version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../assets/traces/golden-keyframes-v{version}.hltrace"
    ))
}

/// Live bytes per site, by the site's frames.
fn site_bytes(m: &Model) -> BTreeMap<Vec<u64>, u64> {
    let mut out = BTreeMap::new();
    for (leaf, s) in m.sites().sites() {
        if s.live_bytes > 0.0 {
            let pcs: Vec<u64> = m.sites().stack(leaf).iter().map(|f| f.pc).collect();
            *out.entry(pcs).or_insert(0) += s.live_bytes as u64;
        }
    }
    out
}

/// FNV-1a over bytes.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The hash of each older version's golden file as it was written: `(version, hash)`.
const FROZEN: [(u16, u64); 2] = [(1, 0xdd52_bea5_1a04_bee2), (2, 0xa85b_0ba9_5b12_2d81)];

#[test]
fn older_keyframe_golden_files_are_never_rewritten() {
    for (version, hash) in FROZEN {
        assert!(version < KEYFRAME_VERSION);
        let bytes = std::fs::read(golden(version)).unwrap();
        assert_eq!(
            fnv(&bytes),
            hash,
            "golden-keyframes-v{version}.hltrace was rewritten"
        );
    }
    assert_eq!(
        FROZEN.len(),
        usize::from(KEYFRAME_VERSION) - 1,
        "every older version's file has its hash here"
    );
}

#[test]
fn every_keyframe_version_restores_to_the_model_a_replay_from_the_start_gives() {
    if std::env::var_os("HEAPLENS_BLESS").is_some() {
        write_keyframes_trace(&golden(KEYFRAME_VERSION));
    }
    for version in 1..=KEYFRAME_VERSION {
        let path = golden(version);
        let mut r = TraceReader::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (a golden file per version)", path.display()));
        let events: Vec<_> = r.events().map(Result::unwrap).collect();
        // The files before version 3 were written with a synthetic generator whose collects
        // left blocks on `local_free` that it had moved to `free`: a debug build's invariant
        // check (used + local_free within capacity) would stop their replay.
        let checked = version >= 3;
        let mut full = Model::new();
        full.set_invariant_checks(checked);
        for (heap, e) in &events {
            full.apply(*heap, e);
        }
        assert!(full.sites().is_on());
        let keyframes = r.keyframes().to_vec();
        assert!(
            keyframes.len() >= 4,
            "v{version}: {} keyframes",
            keyframes.len()
        );
        for (k, kf) in keyframes.iter().enumerate() {
            let bytes = r.read_keyframe(k).unwrap();
            let header: Vec<u8> = KEYFRAME_MAGIC
                .iter()
                .copied()
                .chain(version.to_le_bytes())
                .collect();
            assert!(bytes.starts_with(&header), "v{version} keyframe {k}");
            let mut restored = Model::from_keyframe(&bytes)
                .unwrap_or_else(|e| panic!("v{version} keyframe {k}: {e}"));
            restored.set_invariant_checks(checked);
            for (heap, e) in &events[kf.event_index as usize..] {
                restored.apply(*heap, e);
            }
            assert_eq!(
                restored.current(),
                full.current(),
                "v{version} keyframe {k}"
            );
            assert_eq!(
                site_bytes(&restored),
                site_bytes(&full),
                "v{version} keyframe {k}"
            );
        }
    }
}

/// Writes the current version's golden file (the same stream for every version).
fn write_keyframes_trace(path: &std::path::Path) {
    let batches = synth::generate(&SynthConfig {
        threads: 3,
        events: 30_000,
        seed: 13,
        cross_thread: 0.1,
        census_every: 3,
        stacks: stack_mode::ALL,
        sample_bytes: 0,
    });
    let options = WriterOptions {
        chunk_events: 4096,
        zstd_level: Some(3),
    };
    let mut meta = Metadata::with_allocator_constants();
    meta.command = vec!["keyframes".into()];
    let mut w = TraceWriter::create_with(path, &meta, options).unwrap();
    let mut model = Model::new();
    let (mut applied, mut next) = (0u64, 5_000u64);
    for (h, evs) in &batches {
        w.write_batch(*h, evs).unwrap();
        model.apply_batch(*h, evs);
        applied += evs.len() as u64;
        if applied >= next {
            let snapshot = model.to_keyframe().unwrap();
            w.write_keyframe(applied, model.time(), &snapshot).unwrap();
            next = applied + 5_000;
        }
    }
    w.finish(EndInfo {
        reason: EndReason::Clean,
        status: ExitStatus::Code(0),
    })
    .unwrap();
}
