//! The Python distributions whose files went into a layer, found exactly: a layer's file comes
//! from a site-packages directory (one that holds `*.dist-info`), and the `RECORD` of the
//! distribution that installed it lists it. Name, version and license come from its
//! `METADATA` (PEP 639 `License-Expression` first, then `License`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::layer::{Node, Tree};

/// One distribution and where its files went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    pub name: String,
    pub version: String,
    /// `License-Expression` (SPDX) when given.
    pub license_expression: Option<String>,
    /// The free-text `License` field (first line) otherwise.
    pub license_text: Option<String>,
    /// The text of its first `License-File` (capped), for a `LicenseRef-` that needs one.
    pub license_file: Option<String>,
    /// Layer name → how many of its files that layer holds.
    pub layers: BTreeMap<String, usize>,
    /// Where its metadata is.
    pub dist_info: PathBuf,
}

/// How much of a license file is kept (NVIDIA's EULA is about 60 KiB).
const MAX_LICENSE_TEXT: usize = 256 << 10;

/// The distributions owning files of `layers` (name, tree), sorted by name; warnings for
/// metadata that could not be read (the distribution is still listed, by its directory name).
pub fn scan(layers: &[(&str, &Tree)]) -> (Vec<Distribution>, Vec<String>) {
    let mut roots: HashMap<PathBuf, Option<PathBuf>> = HashMap::new();
    let mut indexes: HashMap<PathBuf, HashMap<PathBuf, usize>> = HashMap::new();
    let mut dists: Vec<Distribution> = Vec::new();
    let mut by_info: HashMap<PathBuf, usize> = HashMap::new();
    let mut warnings = Vec::new();
    for (layer, tree) in layers {
        for node in tree.nodes.values() {
            let Node::File { src, .. } = node else {
                continue;
            };
            let Some(root) = src.parent().and_then(|d| site_root(d, &mut roots)) else {
                continue;
            };
            let index = indexes
                .entry(root.clone())
                .or_insert_with(|| index_root(&root, &mut dists, &mut by_info, &mut warnings));
            if let Some(&i) = index.get(&lexical(src)) {
                *dists[i].layers.entry((*layer).to_owned()).or_default() += 1;
            }
        }
    }
    let mut out: Vec<Distribution> = dists.into_iter().filter(|d| !d.layers.is_empty()).collect();
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    (out, warnings)
}

/// The nearest ancestor of `dir` (itself included) that holds a `*.dist-info` directory.
fn site_root(dir: &Path, memo: &mut HashMap<PathBuf, Option<PathBuf>>) -> Option<PathBuf> {
    if let Some(r) = memo.get(dir) {
        return r.clone();
    }
    let here = fs::read_dir(dir).ok().is_some_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(".dist-info")
                && e.file_type().is_ok_and(|t| t.is_dir())
        })
    });
    let found = if here {
        Some(dir.to_path_buf())
    } else {
        dir.parent().and_then(|p| site_root(p, memo))
    };
    memo.insert(dir.to_path_buf(), found.clone());
    found
}

/// `path` with `.` and `..` resolved lexically (RECORD paths such as `../../bin/x`).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Reads every distribution of a site-packages root: file → distribution index.
fn index_root(
    root: &Path,
    dists: &mut Vec<Distribution>,
    by_info: &mut HashMap<PathBuf, usize>,
    warnings: &mut Vec<String>,
) -> HashMap<PathBuf, usize> {
    let mut owner = HashMap::new();
    let mut infos: Vec<PathBuf> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.extension().is_some_and(|x| x == "dist-info"))
        .collect();
    infos.sort();
    for info in infos {
        let i = *by_info.entry(info.clone()).or_insert_with(|| {
            let d = read_dist(&info).unwrap_or_else(|why| {
                warnings.push(format!(
                    "{}: {why}; listed by its directory name, license unknown",
                    info.join("METADATA").display()
                ));
                from_dir_name(&info)
            });
            dists.push(d);
            dists.len() - 1
        });
        let Ok(record) = fs::read_to_string(info.join("RECORD")) else {
            warnings.push(format!(
                "{}: no RECORD, so its files cannot be told apart from others'",
                info.display()
            ));
            continue;
        };
        for line in record.lines() {
            if let Some(p) = record_path(line) {
                owner.insert(lexical(&root.join(p)), i);
            }
        }
    }
    owner
}

/// The path field of a RECORD line (CSV: quoted when it holds a comma).
fn record_path(line: &str) -> Option<String> {
    let line = line.trim_end();
    if line.is_empty() {
        return None;
    }
    if let Some(rest) = line.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Some(out);
                }
            } else {
                out.push(c);
            }
        }
        return None;
    }
    Some(line.split(',').next()?.to_owned())
}

/// Name and version from `NAME-VERSION.dist-info`.
fn from_dir_name(info: &Path) -> Distribution {
    let stem = info
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (name, version) = stem.split_once('-').unwrap_or((&stem, ""));
    Distribution {
        name: name.replace('_', "-"),
        version: version.to_owned(),
        license_expression: None,
        license_text: None,
        license_file: None,
        layers: BTreeMap::new(),
        dist_info: info.to_path_buf(),
    }
}

/// Reads `METADATA` (core metadata: RFC 822 headers up to the first blank line).
fn read_dist(info: &Path) -> Result<Distribution, String> {
    let bytes = fs::read(info.join("METADATA")).map_err(|e| format!("cannot be read ({e})"))?;
    let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8".to_owned())?;
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        match line.split_once(':') {
            Some((k, v)) => fields.push((k.trim().to_ascii_lowercase(), v.trim().to_owned())),
            None => {
                return Err(format!(
                    "`{}` is not a header",
                    crate::error::printable(line, 60)
                ))
            }
        }
    }
    let get = |k: &str| {
        fields
            .iter()
            .find(|(f, v)| f == k && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    let name = get("name").ok_or("has no Name")?;
    let version = get("version").ok_or("has no Version")?;
    let license_file = get("license-file").and_then(|f| {
        // PEP 639 puts them under licenses/; older wheels beside METADATA.
        [info.join("licenses").join(&f), info.join(&f)]
            .iter()
            .find_map(|p| fs::read(p).ok())
            .map(|b| {
                let t = String::from_utf8_lossy(&b[..b.len().min(MAX_LICENSE_TEXT)]).into_owned();
                t
            })
    });
    Ok(Distribution {
        name,
        version,
        license_expression: get("license-expression"),
        license_text: get("license").map(|l| l.lines().next().unwrap_or("").to_owned()),
        license_file,
        layers: BTreeMap::new(),
        dist_info: info.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(site: &Path, dir: &str, metadata: &str, files: &[&str]) {
        let info = site.join(dir);
        fs::create_dir_all(&info).unwrap();
        fs::write(info.join("METADATA"), metadata).unwrap();
        let mut record = String::new();
        for f in files {
            let p = site.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, f.as_bytes()).unwrap();
            record.push_str(&format!("{f},sha256=x,1\n"));
        }
        record.push_str(&format!("{dir}/RECORD,,\n"));
        fs::write(info.join("RECORD"), record).unwrap();
    }

    #[test]
    fn files_are_attributed_to_the_distribution_whose_record_lists_them() {
        let t = tempfile::tempdir().unwrap();
        let site = t.path().join("site-packages");
        dist(
            &site,
            "torch-2.11.0.dist-info",
            "Metadata-Version: 2.4\nName: torch\nVersion: 2.11.0\nLicense: BSD-3-Clause\n\nbody: x\n",
            &["torch/lib/libc10.so", "torch/lib/libtorch_cpu.so"],
        );
        dist(
            &site,
            "nvidia_cuda_runtime-13.0.96.dist-info",
            "Name: nvidia-cuda-runtime\nVersion: 13.0.96\nLicense-Expression: LicenseRef-NVIDIA-Proprietary\nLicense-File: License.txt\n",
            &["nvidia/cu13/lib/libcudart.so.13"],
        );
        fs::create_dir_all(site.join("nvidia_cuda_runtime-13.0.96.dist-info/licenses")).unwrap();
        fs::write(
            site.join("nvidia_cuda_runtime-13.0.96.dist-info/licenses/License.txt"),
            "NVIDIA SOFTWARE LICENSE AGREEMENT",
        )
        .unwrap();
        dist(
            &site,
            "unused-1.0.dist-info",
            "Name: unused\nVersion: 1.0\n",
            &["unused/x.py"],
        );
        let mut lib = Tree::default();
        let mut cuda = Tree::default();
        for (to_cuda, f) in [
            (false, "torch/lib/libc10.so"),
            (false, "torch/lib/libtorch_cpu.so"),
            (true, "nvidia/cu13/lib/libcudart.so.13"),
        ] {
            let tree = if to_cuda { &mut cuda } else { &mut lib };
            tree.nodes.insert(
                format!("opt/{f}"),
                Node::File {
                    src: site.join(f),
                    size: 1,
                    mode: 0o644,
                },
            );
        }
        // A file from outside any site-packages belongs to no distribution.
        fs::write(t.path().join("trainer"), b"elf").unwrap();
        lib.nodes.insert(
            "opt/bin/trainer".into(),
            Node::File {
                src: t.path().join("trainer"),
                size: 3,
                mode: 0o755,
            },
        );
        let (dists, warnings) = scan(&[("libtorch", &lib), ("cuda", &cuda)]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let got: Vec<_> = dists
            .iter()
            .map(|d| (d.name.as_str(), d.version.as_str(), d.layers.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "nvidia-cuda-runtime",
                    "13.0.96",
                    [("cuda".to_owned(), 1)].into()
                ),
                ("torch", "2.11.0", [("libtorch".to_owned(), 2)].into()),
            ]
        );
        assert_eq!(dists[1].license_text.as_deref(), Some("BSD-3-Clause"));
        assert_eq!(
            dists[0].license_expression.as_deref(),
            Some("LicenseRef-NVIDIA-Proprietary")
        );
        assert_eq!(
            dists[0].license_file.as_deref(),
            Some("NVIDIA SOFTWARE LICENSE AGREEMENT")
        );
    }

    #[test]
    fn a_corrupt_metadata_is_a_warning_and_the_distribution_stays_listed() {
        let t = tempfile::tempdir().unwrap();
        let site = t.path().join("sp");
        dist(
            &site,
            "broken_pkg-0.3.dist-info",
            "\u{1b}[31mgarbage without a colon\n",
            &["broken_pkg/a.py"],
        );
        let mut tree = Tree::default();
        tree.nodes.insert(
            "a.py".into(),
            Node::File {
                src: site.join("broken_pkg/a.py"),
                size: 1,
                mode: 0o644,
            },
        );
        let (dists, warnings) = scan(&[("app", &tree)]);
        assert_eq!(dists.len(), 1);
        assert_eq!(
            (dists[0].name.as_str(), dists[0].version.as_str()),
            ("broken-pkg", "0.3")
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("METADATA") && warnings[0].contains("is not a header"));
        assert!(
            !warnings[0].contains('\u{1b}'),
            "no raw bytes: {}",
            warnings[0]
        );
        assert_eq!(
            record_path("\"a,b.py\",sha256=x,1").as_deref(),
            Some("a,b.py")
        );
        assert_eq!(lexical(Path::new("/s/../bin/x")), PathBuf::from("/bin/x"));
    }
}
