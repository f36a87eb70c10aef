//! The Debian packages of a base image, from what dpkg left in its layers:
//! `var/lib/dpkg/status` (or distroless' `var/lib/dpkg/status.d/*`), and each package's
//! `usr/share/doc/PKG/copyright` for its licenses (DEP-5 `License:` fields). Layers are read in
//! order with their whiteouts, as an engine stacks them.

use std::collections::BTreeMap;
use std::io::{self, Read};

/// One installed Debian package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package, when it differs from the binary one.
    pub source: Option<String>,
    /// The `License:` short names of its copyright file, as written there (Debian names).
    pub licenses: Vec<String>,
}

/// What the base's layers say about Debian packages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebScan {
    pub packages: Vec<DebPackage>,
    /// Whether a dpkg status database was found at all (else the packages are unknown).
    pub found_status: bool,
}

const STATUS: &str = "var/lib/dpkg/status";
const STATUS_D: &str = "var/lib/dpkg/status.d/";
/// Files are read up to this size (a large status database is a few MB; the largest copyright
/// file in Debian 12 is about 600 KiB).
const MAX_FILE: u64 = 64 << 20;

/// Reads the layers (each a tar, compressed or not) in order.
pub fn scan_layers<R: Read>(layers: impl IntoIterator<Item = R>) -> io::Result<DebScan> {
    let mut c = Collector::default();
    for r in layers {
        c.add_tar(r)?;
    }
    Ok(c.finish())
}

/// The files that matter, path → contents, as layers stack them (later ones win, whiteouts
/// remove): from base layer tars, then from the new layers' own files.
#[derive(Debug, Default)]
pub struct Collector {
    files: BTreeMap<String, Vec<u8>>,
}

/// Whether the image path `path` is one the scan reads.
pub fn wanted(path: &str) -> bool {
    path == STATUS
        || (path.starts_with(STATUS_D) && !path[STATUS_D.len()..].contains('/'))
        || is_copyright(path)
}

impl Collector {
    /// One layer tar, compressed or not.
    pub fn add_tar<R: Read>(&mut self, r: R) -> io::Result<()> {
        let files = &mut self.files;
        let mut a = tar::Archive::new(crate::layer::compress::decoder(r)?);
        for e in a.entries()? {
            let mut e = e?;
            let path = e.path()?.to_string_lossy().into_owned();
            let path = path
                .trim_start_matches("./")
                .trim_start_matches('/')
                .to_owned();
            if crate::layer::apply_whiteout(files, &path) {
                continue;
            }
            if !wanted(&path) || !e.header().entry_type().is_file() {
                continue;
            }
            let mut buf = Vec::new();
            e.by_ref().take(MAX_FILE).read_to_end(&mut buf)?;
            files.insert(path, buf);
        }
        Ok(())
    }

    /// A file of a new layer, at `path` in the image, read from `src`.
    pub fn add_file(&mut self, path: &str, src: &std::path::Path) -> io::Result<()> {
        if wanted(path) {
            let f = std::fs::File::open(src)?;
            let mut buf = Vec::new();
            f.take(MAX_FILE).read_to_end(&mut buf)?;
            self.files.insert(path.to_owned(), buf);
        }
        Ok(())
    }

    /// What was collected, as bytes to keep (text: status and copyright files are text, and
    /// [`Self::finish`] reads them as such).
    pub fn to_memo(&self) -> Vec<u8> {
        let text: BTreeMap<&str, std::borrow::Cow<'_, str>> = self
            .files
            .iter()
            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v)))
            .collect();
        serde_json::to_vec(&text).expect("a map of strings serialises")
    }

    /// A collector holding what [`Self::to_memo`] kept; `None` for bytes that are not one.
    pub fn from_memo(bytes: &[u8]) -> Option<Collector> {
        let text: BTreeMap<String, String> = serde_json::from_slice(bytes).ok()?;
        Some(Collector {
            files: text.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
        })
    }

    pub fn finish(self) -> DebScan {
        let files = self.files;
        let mut text = String::new();
        let mut found_status = false;
        for (p, bytes) in &files {
            if p == STATUS || p.starts_with(STATUS_D) {
                found_status = true;
                text.push_str(&String::from_utf8_lossy(bytes));
                text.push_str("\n\n");
            }
        }
        let mut packages: Vec<DebPackage> = parse_status(&text)
            .into_iter()
            .map(|mut p| {
                let doc = format!("usr/share/doc/{}/copyright", p.name);
                if let Some(c) = files.get(&doc) {
                    p.licenses = copyright_licenses(&String::from_utf8_lossy(c));
                }
                p
            })
            .collect();
        packages.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
        packages.dedup_by(|a, b| a.name == b.name && a.architecture == b.architecture);
        DebScan {
            packages,
            found_status,
        }
    }
}

fn is_copyright(path: &str) -> bool {
    path.strip_prefix("usr/share/doc/")
        .and_then(|rest| rest.strip_suffix("/copyright"))
        .is_some_and(|pkg| !pkg.is_empty() && !pkg.contains('/'))
}

/// The paragraphs of a dpkg status file as field maps (continuation lines dropped: none of the
/// fields read here has them).
fn paragraphs(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The installed packages of a status file (`Status: install ok installed`; distroless'
/// status.d entries have no Status field and are installed by being there).
pub fn parse_status(text: &str) -> Vec<DebPackage> {
    paragraphs(text)
        .into_iter()
        .filter(|p| {
            p.get("status")
                .is_none_or(|s| s.split_whitespace().last() == Some("installed"))
        })
        .filter_map(|p| {
            let name = p.get("package")?.clone();
            let version = p.get("version")?.clone();
            // `Source: name (version)` when the source's version differs.
            let source = p
                .get("source")
                .map(|s| s.split_whitespace().next().unwrap_or("").to_owned())
                .filter(|s| !s.is_empty() && *s != name);
            Some(DebPackage {
                name,
                version,
                architecture: p.get("architecture").cloned().unwrap_or_default(),
                source,
                licenses: Vec::new(),
            })
        })
        .collect()
}

/// The distinct `License:` short names of a machine-readable (DEP-5) copyright file, in order
/// of first appearance; none for a free-form one.
pub fn copyright_licenses(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("License:") {
            let v = v.trim();
            if !v.is_empty() && !out.iter().any(|o| o == v) {
                out.push(v.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, p, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    const STATUS_TEXT: &str = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u10\nDescription: GNU C Library\n continuation line\n\nPackage: removed\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: dash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 0.5.12-2\n";

    #[test]
    fn installed_packages_their_sources_and_licenses_come_from_the_layers() {
        let copyright = b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: LGPL-2.1+\n\nFiles: x\nLicense: GPL-2+\n\nLicense: LGPL-2.1+\n text\n";
        let one = layer(&[
            ("var/lib/dpkg/status", STATUS_TEXT.as_bytes()),
            ("usr/share/doc/libc6/copyright", copyright),
        ]);
        let scan = scan_layers([&one[..]]).unwrap();
        assert!(scan.found_status);
        let names: Vec<_> = scan.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["dash", "libc6"], "sorted, the removed one left out");
        let libc = &scan.packages[1];
        assert_eq!(libc.version, "2.36-9+deb12u10");
        assert_eq!(libc.architecture, "amd64");
        assert_eq!(libc.source.as_deref(), Some("glibc"));
        assert_eq!(libc.licenses, ["LGPL-2.1+", "GPL-2+"]);
        assert!(
            scan.packages[0].licenses.is_empty(),
            "dash has no copyright file here"
        );
    }

    #[test]
    fn a_later_layer_replaces_or_whites_out_the_status() {
        let one = layer(&[("var/lib/dpkg/status", STATUS_TEXT.as_bytes())]);
        let two = layer(&[("var/lib/dpkg/.wh.status", b"")]);
        let scan = scan_layers([&one[..], &two[..]]).unwrap();
        assert_eq!(scan, DebScan::default(), "whited out: unknown, not empty");
        // A kept collection reads back as the same scan.
        let mut c = Collector::default();
        c.add_tar(&one[..]).unwrap();
        let kept = Collector::from_memo(&c.to_memo()).unwrap();
        assert_eq!(kept.finish(), scan_layers([&one[..]]).unwrap());
        assert!(Collector::from_memo(b"not json").is_none());
        let distroless = layer(&[(
            "var/lib/dpkg/status.d/base",
            b"Package: base-files\nVersion: 12.4\nArchitecture: amd64\n",
        )]);
        let scan = scan_layers([&distroless[..]]).unwrap();
        assert!(scan.found_status);
        assert_eq!(scan.packages[0].name, "base-files");
        let none = layer(&[("etc/hostname", b"x")]);
        assert!(!scan_layers([&none[..]]).unwrap().found_status);
    }
}
