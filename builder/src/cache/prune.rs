//! `envbuild cache prune`: removes blobs least recently used first (a blob's mtime is its last
//! use: builds, pulls and pushes touch what they use), then the layer entries whose blob went,
//! and temporary files that killed builds left. OCI layouts written from the cache keep their
//! blobs: they are hard links, and removing the cache's name leaves theirs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::Cache;

/// What to remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Every blob.
    pub all: bool,
    /// Blobs not used for this long.
    pub unused_for: Option<Duration>,
    /// Then, least recently used first, until the blobs take no more than this.
    pub keep_bytes: Option<u64>,
    /// Say what would go; remove nothing.
    pub dry_run: bool,
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub removed_blobs: usize,
    pub removed_bytes: u64,
    pub kept_blobs: usize,
    pub kept_bytes: u64,
    /// Layer entries (inputs → blob) whose blob is gone.
    pub removed_layer_entries: usize,
    /// Temporary files older than an hour.
    pub removed_temp_files: usize,
    pub dry_run: bool,
}

/// Temporary files younger than this may belong to a build that is running.
const TEMP_AGE: Duration = Duration::from_secs(3600);

struct Blob {
    path: PathBuf,
    size: u64,
    used: SystemTime,
}

fn blobs(cache: &Cache) -> io::Result<Vec<Blob>> {
    let mut out = Vec::new();
    for e in fs::read_dir(cache.root.join("blobs/sha256"))? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_file() {
            out.push(Blob {
                path: e.path(),
                size: m.len(),
                used: m.modified()?,
            });
        }
    }
    // Least recently used first; the path makes the order total.
    out.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.path.cmp(&b.path)));
    Ok(out)
}

/// Prunes `cache` by `policy` at time `now`.
pub fn prune(cache: &Cache, policy: Policy, now: SystemTime) -> io::Result<Pruned> {
    let all = blobs(cache)?;
    let mut total: u64 = all.iter().map(|b| b.size).sum();
    let mut report = Pruned {
        dry_run: policy.dry_run,
        ..Pruned::default()
    };
    let mut removed = std::collections::HashSet::new();
    let mut remove = |b: &Blob, report: &mut Pruned| -> io::Result<()> {
        removed.insert(b.path.clone());
        if !policy.dry_run {
            match fs::remove_file(&b.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        report.removed_blobs += 1;
        report.removed_bytes += b.size;
        Ok(())
    };
    for b in &all {
        let old = policy
            .unused_for
            .is_some_and(|d| now.duration_since(b.used).unwrap_or_default() >= d);
        let over = policy.keep_bytes.is_some_and(|k| total > k);
        if policy.all || old || over {
            remove(b, &mut report)?;
            total -= b.size;
        } else {
            report.kept_blobs += 1;
            report.kept_bytes += b.size;
        }
    }
    // A layer entry is gone with its blob (or when it is not one at all).
    let gone = |p: &Path| -> bool {
        let Ok(text) = fs::read(p) else { return false };
        serde_json::from_slice::<crate::layer::LayerBlob>(&text).map_or(true, |l| {
            let blob = cache.blob_path(&l.digest);
            removed.contains(&blob) || !blob.is_file()
        })
    };
    for e in fs::read_dir(cache.root.join("layers"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") && gone(&p) {
            if !policy.dry_run {
                fs::remove_file(&p)?;
            }
            report.removed_layer_entries += 1;
        }
    }
    for e in fs::read_dir(cache.root.join("tmp"))? {
        let e = e?;
        let m = e.metadata()?;
        let age = now
            .duration_since(m.modified().unwrap_or(now))
            .unwrap_or_default();
        if age >= TEMP_AGE {
            if !policy.dry_run {
                if m.is_dir() {
                    fs::remove_dir_all(e.path())?;
                } else {
                    fs::remove_file(e.path())?;
                }
            }
            report.removed_temp_files += 1;
        }
    }
    Ok(report)
}

/// `30d`, `12h`, `90m`, `45s`: a duration for `--older-than`.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not an age (use e.g. 30d, 12h, 90m)"))?;
    let secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" | "" => 1,
        _ => return Err(format!("`{s}`: the unit is d, h, m or s")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// `10GB`, `500MB`, `1.5GiB`, `0`: a size for `--keep-storage`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a size (use e.g. 10GB, 500MB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "`{s}`: the unit is B, KB, MB, GB, TB or KiB, MiB, GiB"
            ))
        }
    };
    Ok((n * mult) as u64)
}

impl Cache {
    /// Marks the blob `d` as used now (its mtime), so that a prune keeps the newest.
    pub fn touch(&self, d: &crate::digest::Digest) {
        if let Ok(f) = fs::File::open(self.blob_path(d)) {
            let _ = f.set_modified(SystemTime::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn aged(cache: &Cache, bytes: &[u8], days_ago: u64, now: SystemTime) -> Digest {
        let d = cache.put_bytes(bytes).unwrap();
        let f = fs::File::open(cache.blob_path(&d)).unwrap();
        f.set_modified(now - Duration::from_secs(days_ago * 86_400))
            .unwrap();
        d
    }

    #[test]
    fn prune_removes_old_blobs_then_the_least_recently_used_to_the_size_and_their_layer_entries() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::open(t.path()).unwrap();
        let now = SystemTime::now();
        let old = aged(&cache, &[1u8; 1000], 40, now);
        let mid = aged(&cache, &[2u8; 1000], 10, now);
        let new = aged(&cache, &[3u8; 1000], 1, now);
        let layer = crate::layer::LayerBlob {
            digest: old,
            size: 1000,
            diff_id: old,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            compression: crate::layer::compress::Compression::Gzip(6),
        };
        cache.put_layer(&Digest::of(b"key"), &layer).unwrap();
        let stale = cache.root.join("tmp/blob-left");
        fs::write(&stale, b"x").unwrap();
        fs::File::open(&stale)
            .unwrap()
            .set_modified(now - Duration::from_secs(7200))
            .unwrap();
        let fresh = cache.root.join("tmp/blob-running");
        fs::write(&fresh, b"y").unwrap();

        let month = Policy {
            unused_for: Some(Duration::from_secs(30 * 86_400)),
            dry_run: true,
            ..Policy::default()
        };
        let dry = prune(&cache, month, now).unwrap();
        assert_eq!((dry.removed_blobs, dry.removed_layer_entries), (1, 1));
        assert!(cache.has_blob(&old), "a dry run removes nothing");

        let done = prune(
            &cache,
            Policy {
                dry_run: false,
                ..month
            },
            now,
        )
        .unwrap();
        assert_eq!(
            (done.removed_blobs, done.removed_bytes, done.kept_blobs),
            (1, 1000, 2)
        );
        assert_eq!(
            (done.removed_layer_entries, done.removed_temp_files),
            (1, 1)
        );
        assert!(!cache.has_blob(&old) && cache.has_blob(&mid) && cache.has_blob(&new));
        assert!(cache.layer(&Digest::of(b"key")).is_none());
        assert!(
            !stale.exists() && fresh.exists(),
            "a running build's file stays"
        );

        // Using a blob makes it the newest: the size limit then takes the other.
        cache.touch(&mid);
        let sized = prune(
            &cache,
            Policy {
                keep_bytes: Some(1500),
                ..Policy::default()
            },
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!((sized.removed_blobs, sized.kept_bytes), (1, 1000));
        assert!(cache.has_blob(&mid) && !cache.has_blob(&new));

        let all = prune(
            &cache,
            Policy {
                all: true,
                ..Policy::default()
            },
            now,
        )
        .unwrap();
        assert_eq!((all.removed_blobs, all.kept_blobs), (1, 0));
    }

    #[test]
    fn ages_and_sizes_parse_with_their_units_and_refuse_others() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
        assert!(parse_age("3w")
            .unwrap_err()
            .contains("the unit is d, h, m or s"));
        assert!(parse_age("soon").is_err());
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(1_610_612_736));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").unwrap_err().contains("the unit is"));
    }
}
