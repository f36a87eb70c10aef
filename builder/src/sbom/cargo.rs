//! The crates compiled into a Rust binary, from its workspace's `Cargo.lock`: the lock's
//! packages reachable from the binary's own package through `dependencies` (every feature's
//! and target's dependencies, as the lock records them: a superset is what the lock can say).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

/// One locked crate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Crate {
    pub name: String,
    pub version: String,
    /// `registry+https://github.com/rust-lang/crates.io-index`, a git URL, or none (a path).
    pub source: Option<String>,
    /// The registry's SHA-256 of the `.crate` file.
    pub checksum: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Lock {
    #[serde(default, rename = "package")]
    packages: Vec<LockPackage>,
}

#[derive(Debug, Deserialize)]
struct LockPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
}

/// What went wrong reading a lock file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: {message}")]
    Bad { path: String, message: String },
}

/// The crates of `package` (itself first) in the lock file at `path`.
pub fn crates_of(path: &Path, package: &str) -> Result<Vec<Crate>, LockError> {
    let bad = |message: String| LockError::Bad {
        path: path.display().to_string(),
        message,
    };
    let f = std::fs::File::open(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let text = crate::http::read_capped(f, 16 << 20).map_err(|e| match e {
        Some(e) => bad(format!("cannot be read: {e}")),
        None => bad("is over 16 MiB: not a Cargo.lock".into()),
    })?;
    let text = String::from_utf8(text).map_err(|_| bad("is not UTF-8".into()))?;
    let lock: Lock =
        toml::from_str(&text).map_err(|e| bad(format!("is not a Cargo.lock: {}", e.message())))?;
    let by_name: BTreeMap<&str, Vec<&LockPackage>> =
        lock.packages.iter().fold(BTreeMap::new(), |mut m, p| {
            m.entry(p.name.as_str()).or_default().push(p);
            m
        });
    // A dependency is `name`, `name version` or `name version (source)`.
    let resolve = |dep: &str| -> Option<&LockPackage> {
        let mut it = dep.split_whitespace();
        let name = it.next()?;
        let version = it.next();
        let candidates = by_name.get(name)?;
        match version {
            None => candidates.first().copied(),
            Some(v) => candidates.iter().copied().find(|p| p.version == v),
        }
    };
    let roots: Vec<&LockPackage> = lock
        .packages
        .iter()
        .filter(|p| p.name == package && p.source.is_none())
        .collect();
    let Some(root) = roots.first() else {
        return Err(bad(format!(
            "has no workspace package `{package}` (set sbom.cargo-package to the binary's crate)"
        )));
    };
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut stack = vec![*root];
    let mut out = Vec::new();
    while let Some(p) = stack.pop() {
        if !seen.insert((p.name.clone(), p.version.clone())) {
            continue;
        }
        out.push(Crate {
            name: p.name.clone(),
            version: p.version.clone(),
            source: p.source.clone(),
            checksum: p.checksum.clone(),
        });
        stack.extend(p.dependencies.iter().filter_map(|d| resolve(d)));
    }
    // The binary's own crate first, then the rest sorted.
    out[1..].sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crates_reachable_from_the_package_with_their_checksums() {
        let t = tempfile::tempdir().unwrap();
        let lock = t.path().join("Cargo.lock");
        std::fs::write(
            &lock,
            r#"version = 4

[[package]]
name = "trainer"
version = "0.1.0"
dependencies = ["anyhow", "tch", "serde 1.0.200"]

[[package]]
name = "builder"
version = "0.1.0"
dependencies = ["reqwest"]

[[package]]
name = "anyhow"
version = "1.0.90"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "aaaa"

[[package]]
name = "tch"
version = "0.24.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "bbbb"
dependencies = ["serde 1.0.200 (registry+https://github.com/rust-lang/crates.io-index)"]

[[package]]
name = "serde"
version = "1.0.200"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "cccc"

[[package]]
name = "serde"
version = "0.9.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "dddd"

[[package]]
name = "reqwest"
version = "0.12.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "eeee"
"#,
        )
        .unwrap();
        let crates = crates_of(&lock, "trainer").unwrap();
        let names: Vec<_> = crates
            .iter()
            .map(|c| format!("{}@{}", c.name, c.version))
            .collect();
        assert_eq!(
            names,
            [
                "trainer@0.1.0",
                "anyhow@1.0.90",
                "serde@1.0.200",
                "tch@0.24.0"
            ],
            "the builder's reqwest and the other serde are not in the trainer"
        );
        assert_eq!(crates[3].checksum.as_deref(), Some("bbbb"));
        assert!(crates[0].source.is_none());
        let e = crates_of(&lock, "nope").unwrap_err().to_string();
        assert!(e.contains("no workspace package `nope`"), "{e}");
        std::fs::write(&lock, "[[package]]\nname = 3\n").unwrap();
        let e = crates_of(&lock, "trainer").unwrap_err().to_string();
        assert!(e.contains("is not a Cargo.lock"), "{e}");
    }
}
