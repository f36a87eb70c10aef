//! `envbuild cache prune`: the cache's blobs, least recently used first
//! ([`envbuild::cache::prune`]).

use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use envbuild::cache::prune::{self, parse_age, parse_size, Policy};

use super::args::{print_json, CacheArgs, FormatArgs};
use super::ui::ui;

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Remove blobs not used lately (default: for 14 days), least recently used first
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Remove every blob (the next build rebuilds and re-pulls)
    #[arg(long, conflicts_with_all = ["older_than", "keep_storage"])]
    pub all: bool,
    /// Remove blobs not used for this long: 30d, 12h, 90m
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: Option<std::time::Duration>,
    /// Then remove the least recently used until the blobs take at most SIZE: 10GB, 500MB
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub keep_storage: Option<u64>,
    /// Say what would be removed; remove nothing
    #[arg(long)]
    pub dry_run: bool,
    // With --json: {removed_blobs, removed_bytes, kept_blobs, kept_bytes,
    // removed_layer_entries, removed_temp_files, dry_run}
    #[command(flatten)]
    pub format: FormatArgs,
}

/// Two weeks: what `cache prune` with no limit given removes.
const DEFAULT_AGE: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);

pub fn cache(c: CacheCommand) -> anyhow::Result<ExitCode> {
    let CacheCommand::Prune(a) = c;
    let cache = a.cache.open()?;
    let policy = Policy {
        all: a.all,
        unused_for: a
            .older_than
            .or((!a.all && a.keep_storage.is_none()).then_some(DEFAULT_AGE)),
        keep_bytes: a.keep_storage,
        dry_run: a.dry_run,
    };
    let r = prune::prune(&cache, policy, SystemTime::now())?;
    if a.format.json() {
        print_json(&r)?;
    } else {
        ui().message(&format!(
            "{} {} blobs ({:.1} GB), {} layer entries, {} temporary files; kept {} blobs ({:.1} GB) in {}",
            if r.dry_run { "would remove" } else { "removed" },
            r.removed_blobs,
            r.removed_bytes as f64 / 1e9,
            r.removed_layer_entries,
            r.removed_temp_files,
            r.kept_blobs,
            r.kept_bytes as f64 / 1e9,
            cache.root.display()
        ));
    }
    Ok(ExitCode::SUCCESS)
}
