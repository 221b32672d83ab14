//! Allocation sites in the command's reports: the top sites of `heaplens stats`, symbolised.

use heaplens_alloc::event::stack_mode;
use heaplens_viewer::model::{Model, SiteKey};
use heaplens_viewer::symbols::Symbolizer;
use serde_json::json;

/// The variable that tells the target's hook how to capture stacks (`off`, `sampled`, `all`).
pub const STACKS_ENV: &str = "HEAPLENS_STACKS";
/// The variable that sets the mean sampling interval in bytes.
pub const SAMPLE_BYTES_ENV: &str = "HEAPLENS_SAMPLE_BYTES";
/// The default mean sampling interval (as jemalloc, tcmalloc and Go).
pub const DEFAULT_SAMPLE_BYTES: u64 = 512 * 1024;

/// How stacks are captured (`--stacks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StackMode {
    /// No stacks.
    Off,
    /// A stack for about one allocation per sampling interval of bytes.
    #[default]
    Sampled,
    /// A stack for every allocation.
    All,
}

/// `--stacks` and `--sample-bytes`.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct StackArgs {
    /// Stack capture: off, sampled (about one allocation per --sample-bytes, estimates
    /// unbiased) or all (every allocation).
    #[arg(long, value_enum, default_value_t = StackMode::Sampled)]
    pub stacks: StackMode,
    /// Mean sampling interval in bytes with --stacks sampled.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SAMPLE_BYTES)]
    pub sample_bytes: u64,
}

impl StackArgs {
    /// The environment that passes these to a target's hook.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mode = match self.stacks {
            StackMode::Off => "off",
            StackMode::Sampled => "sampled",
            StackMode::All => "all",
        };
        vec![
            (STACKS_ENV, mode.into()),
            (SAMPLE_BYTES_ENV, self.sample_bytes.to_string()),
        ]
    }
}

/// The name of a stack mode as the trace recorded it.
pub fn mode_name(model: &Model) -> &'static str {
    let s = model.sites();
    match s.mode() {
        stack_mode::SAMPLED => "sampled",
        stack_mode::ALL => "all",
        _ if s.is_on() => "unknown",
        _ => "off",
    }
}

/// The line `stats` and `leaks` print when the stacks were sampled: a figure per `per` (site,
/// stack) weighs each sampled block by its chance, so it is an estimate, and one site can read
/// more than the exact totals beside it. `None` unless the stacks were sampled.
pub fn sampled_estimates_line(model: &Model, per: &str) -> Option<String> {
    (model.sites().mode() == stack_mode::SAMPLED)
        .then(|| format!("stacks      sampled: figures per {per} are estimates"))
}

/// The top `n` sites by live bytes (then by bytes allocated), symbolised, as JSON rows.
pub fn top_sites(model: &Model, sym: &mut Symbolizer, n: usize) -> Vec<serde_json::Value> {
    let sites = model.sites();
    let mut ranked = sites.ranked(SiteKey::LiveBytes);
    if ranked.len() < n {
        let seen: Vec<u32> = ranked.iter().map(|r| r.0).collect();
        ranked.extend(
            sites
                .ranked(SiteKey::TotalBytes)
                .into_iter()
                .filter(|r| !seen.contains(&r.0)),
        );
    }
    ranked.truncate(n);
    let leaves: Vec<u32> = ranked.iter().map(|r| r.0).collect();
    let named = sym.site_names(sites, &leaves);
    ranked
        .into_iter()
        .zip(named)
        .map(|((leaf, s), (site, stack))| {
            json!({
                "stack_id": leaf,
                "site": site,
                "stack": stack,
                "live_bytes": s.live_bytes.round(),
                "live_blocks": s.live_blocks.round(),
                "peak_live_bytes": s.peak_live_bytes.round(),
                "total_bytes": s.total_bytes.round(),
                "allocs": s.allocs.round(),
                "temporary": s.temporary.round(),
            })
        })
        .collect()
}
