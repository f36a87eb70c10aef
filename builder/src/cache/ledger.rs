//! The push ledger: which repositories of which registries hold which blobs, as far as this
//! machine's pushes know — read to offer cross-repository mounts instead of uploads.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use crate::digest::Digest;

/// One append-only file per registry (`<digest> <repository>` lines) under `dir` (the cache's
/// `pushed/`).
#[derive(Debug, Clone)]
pub struct PushLedger {
    pub dir: PathBuf,
}

impl PushLedger {
    fn file(&self, registry: &str) -> PathBuf {
        let name: String = registry
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{name}.log"))
    }

    /// Repositories of `registry` known to hold each blob.
    pub fn sources(&self, registry: &str) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let text = fs::read_to_string(self.file(registry)).unwrap_or_default();
        for line in text.lines() {
            if let Some((d, repo)) = line.split_once(' ') {
                let v = m.entry(d.to_owned()).or_default();
                if !v.iter().any(|r| r == repo) {
                    v.push(repo.to_owned());
                }
            }
        }
        m
    }

    /// Notes that `repository` of `registry` holds `blobs` (best effort: a lost note only
    /// costs a later upload).
    pub fn record(&self, registry: &str, repository: &str, blobs: &[Digest]) {
        let known = self.sources(registry);
        let lines: String = blobs
            .iter()
            .filter(|d| {
                !known
                    .get(&d.to_string())
                    .is_some_and(|v| v.iter().any(|r| r == repository))
            })
            .map(|d| format!("{d} {repository}\n"))
            .collect();
        if lines.is_empty() {
            return;
        }
        let _ = fs::create_dir_all(&self.dir).and_then(|()| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.file(registry))?
                .write_all(lines.as_bytes())
        });
    }
}
