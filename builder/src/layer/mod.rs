//! Layers: a file tree gathered by our own walk (here), written as a canonical tar and
//! compressed reproducibly ([`archive`], [`compress`]).

pub mod archive;
pub mod compress;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use thiserror::Error;

/// What can go wrong while gathering or writing a layer.
#[derive(Debug, Error)]
pub enum LayerError {
    #[error("source {} does not exist", .0.display())]
    MissingSource(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("destination `{0}` must be an absolute image path without `..` or `.` components")]
    BadDest(String),
    #[error("symlink {} -> {target} escapes its source root {}", link.display(), root.display())]
    EscapingSymlink {
        link: PathBuf,
        target: String,
        root: PathBuf,
    },
    #[error("bad pattern `{pattern}`: {message}")]
    BadPattern { pattern: String, message: String },
    #[error("`{path}` is added twice with different contents ({} and {})", first.display(), second.display())]
    Conflict {
        path: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{} changed while it was being archived (size {expected}, read {actual})", path.display())]
    Changed {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{} is a device, socket or fifo; layers hold files, directories and symlinks", .0.display())]
    Special(PathBuf),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { src: PathBuf, size: u64, mode: u32 },
    Symlink { target: String },
}

/// The files of one layer, keyed by their path in the image (relative, no leading `/`).
/// A `BTreeMap` sorts by bytes, which puts every parent directory before its children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: BTreeMap<String, Node>,
}

/// How one source is mapped into a layer.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    pub src: PathBuf,
    /// Absolute path in the image; a directory source's contents go under it.
    pub dest: String,
    /// File mode for regular files; default 0755 when the source is executable, else 0644.
    pub mode: Option<u32>,
    /// Glob patterns over paths relative to a directory source; only matches are taken.
    pub include: Vec<String>,
    /// Glob patterns over relative paths that are left out.
    pub exclude: Vec<String>,
}

/// Checks an image path and returns it relative (`/opt/x` → `opt/x`).
pub fn image_path(dest: &str) -> Result<String, LayerError> {
    let p = Path::new(dest);
    if !p.is_absolute() {
        return Err(LayerError::BadDest(dest.into()));
    }
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => {
                parts.push(s.to_str().ok_or_else(|| LayerError::BadDest(dest.into()))?)
            }
            _ => return Err(LayerError::BadDest(dest.into())),
        }
    }
    if dest.contains("/./") || dest.ends_with("/.") {
        return Err(LayerError::BadDest(dest.into()));
    }
    Ok(parts.join("/"))
}

fn globs(patterns: &[String]) -> Result<Option<GlobSet>, LayerError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = Glob::new(p).map_err(|e| LayerError::BadPattern {
            pattern: p.clone(),
            message: e.to_string(),
        })?;
        b.add(g);
    }
    b.build().map(Some).map_err(|e| LayerError::BadPattern {
        pattern: patterns.join(", "),
        message: e.to_string(),
    })
}

/// The mode of the directory at image path `path`: 0755, except `/tmp` and `/var/tmp`, which
/// are 1777 (world-writable, sticky) as in every Linux root file system. A container that runs
/// as an arbitrary uid (`run --local` runs as the caller, with HOME=/tmp) must be able to write
/// there, or Python's tempfile, torch's caches and the like fail.
fn dir_mode(path: &str) -> u32 {
    if path == "tmp" || path == "var/tmp" {
        0o1777
    } else {
        0o755
    }
}

impl Tree {
    /// Adds `dir` and every missing parent as directories (mode 0755, see [`dir_mode`]).
    fn add_parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            self.nodes
                .entry(path[..end].to_owned())
                .or_insert(Node::Dir {
                    mode: dir_mode(&path[..end]),
                });
            end += 1;
        }
    }

    fn insert(&mut self, path: String, node: Node) -> Result<(), LayerError> {
        if path.is_empty() {
            return Ok(()); // the image root itself
        }
        self.add_parents(&path);
        match self.nodes.get(&path) {
            Some(old @ Node::File { src, .. }) if *old != node => {
                let second = match &node {
                    Node::File { src, .. } => src.clone(),
                    _ => PathBuf::from(&path),
                };
                Err(LayerError::Conflict {
                    path,
                    first: src.clone(),
                    second,
                })
            }
            Some(Node::Dir { .. }) if matches!(node, Node::Dir { .. }) => Ok(()),
            _ => {
                self.nodes.insert(path, node);
                Ok(())
            }
        }
    }

    /// Adds one source (a file, a symlink or a directory walked in sorted order).
    pub fn add(&mut self, m: &Mapping) -> Result<(), LayerError> {
        let dest = image_path(&m.dest)?;
        let meta =
            fs::symlink_metadata(&m.src).map_err(|_| LayerError::MissingSource(m.src.clone()))?;
        let include = globs(&m.include)?;
        let exclude = globs(&m.exclude)?;
        if meta.is_dir() {
            if include.is_none() {
                self.insert(
                    dest.clone(),
                    Node::Dir {
                        mode: dir_mode(&dest),
                    },
                )?;
            }
            self.walk(&m.src, &m.src, &dest, m, include.as_ref(), exclude.as_ref())
        } else {
            self.add_one(&m.src, &m.src, dest, &meta, m.mode)
        }
    }

    fn walk(
        &mut self,
        root: &Path,
        dir: &Path,
        dest: &str,
        m: &Mapping,
        include: Option<&GlobSet>,
        exclude: Option<&GlobSet>,
    ) -> Result<(), LayerError> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .map(|e| e.map(|e| e.file_name()).map_err(io_err(dir)))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let src = dir.join(&name);
            let rel = src.strip_prefix(root).expect("under root");
            if exclude.is_some_and(|g| g.is_match(rel)) {
                continue;
            }
            let name = name
                .to_str()
                .ok_or_else(|| LayerError::BadDest(src.display().to_string()))?;
            let target = if dest.is_empty() {
                name.to_owned()
            } else {
                format!("{dest}/{name}")
            };
            let meta = fs::symlink_metadata(&src).map_err(io_err(&src))?;
            if meta.is_dir() {
                if include.is_none() {
                    self.insert(
                        target.clone(),
                        Node::Dir {
                            mode: dir_mode(&target),
                        },
                    )?;
                }
                self.walk(root, &src, &target, m, include, exclude)?;
            } else if include.is_none_or(|g| g.is_match(rel)) {
                self.add_one(root, &src, target, &meta, m.mode)?;
            }
        }
        Ok(())
    }

    fn add_one(
        &mut self,
        root: &Path,
        src: &Path,
        dest: String,
        meta: &fs::Metadata,
        mode: Option<u32>,
    ) -> Result<(), LayerError> {
        use std::os::unix::fs::PermissionsExt;
        let ft = meta.file_type();
        let node = if ft.is_symlink() {
            let target = fs::read_link(src).map_err(io_err(src))?;
            let target = target
                .to_str()
                .ok_or_else(|| LayerError::BadDest(src.display().to_string()))?
                .to_owned();
            check_symlink(root, src, &target)?;
            Node::Symlink { target }
        } else if ft.is_file() {
            // Hard links are stored as regular files: one rule, no dependency on inode numbers.
            let exec = meta.permissions().mode() & 0o111 != 0;
            let mode = mode.unwrap_or(if exec { 0o755 } else { 0o644 });
            Node::File {
                src: src.to_path_buf(),
                size: meta.len(),
                mode,
            }
        } else {
            return Err(LayerError::Special(src.to_path_buf()));
        };
        self.insert(dest, node)
    }

    /// Total bytes of file content.
    pub fn content_size(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| {
                if let Node::File { size, .. } = n {
                    *size
                } else {
                    0
                }
            })
            .sum()
    }
}

/// A relative symlink must stay inside the tree it came from (absolute targets name image paths).
fn check_symlink(root: &Path, link: &Path, target: &str) -> Result<(), LayerError> {
    if target.starts_with('/') {
        return Ok(());
    }
    let rel_dir = link
        .parent()
        .and_then(|p| p.strip_prefix(root).ok())
        .unwrap_or(Path::new(""));
    let mut depth: i64 = rel_dir.components().count() as i64;
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err(LayerError::EscapingSymlink {
                link: link.to_path_buf(),
                target: target.into(),
                root: root.to_path_buf(),
            });
        }
    }
    Ok(())
}

pub use archive::{build, write_tar, ContentDigests, LayerBlob, TarSettings};

/// Applies `path` (normalised, relative) to `files` if it is a whiteout, as an engine stacks
/// layers (image-spec "Whiteouts"): `.wh..wh..opq` empties its directory, `.wh.NAME` removes
/// NAME and everything under it. Returns whether it was one.
pub fn apply_whiteout<V>(files: &mut BTreeMap<String, V>, path: &str) -> bool {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    if name == ".wh..wh..opq" {
        let prefix = format!("{dir}/");
        files.retain(|k, _| !k.starts_with(&prefix));
        return true;
    }
    let Some(gone) = name.strip_prefix(".wh.") else {
        return false;
    };
    let gone = if dir.is_empty() {
        gone.to_owned()
    } else {
        format!("{dir}/{gone}")
    };
    let prefix = format!("{gone}/");
    files.retain(|k, _| *k != gone && !k.starts_with(&prefix));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn entries(tar_bytes: &[u8]) -> Vec<(String, u8, u32, u64, String)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.entry_type().as_byte(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    e.link_name()
                        .unwrap()
                        .map(|l| l.display().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn tmp_directories_are_world_writable_and_sticky_others_0755() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("rootfs");
        for dir in ["tmp", "var/tmp", "var/lib", "opt/tmp"] {
            fs::create_dir_all(root.join(dir)).unwrap();
            fs::set_permissions(root.join(dir), fs::Permissions::from_mode(0o700)).unwrap();
        }
        let mut t = Tree::default();
        t.add(&Mapping {
            src: root,
            dest: "/".into(),
            ..Default::default()
        })
        .unwrap();
        // A parent made for a deeper destination gets the same rule.
        let f = d.path().join("f");
        fs::write(&f, b"f").unwrap();
        t.add(&Mapping {
            src: f,
            dest: "/srv/tmp/x/f".into(),
            ..Default::default()
        })
        .unwrap();
        let (bytes, _) = write_tar(&t, TarSettings { mtime: 0 }, Vec::new()).unwrap();
        let modes: BTreeMap<String, u32> =
            entries(&bytes).into_iter().map(|e| (e.0, e.2)).collect();
        assert_eq!(modes["tmp/"], 0o1777, "{modes:?}");
        assert_eq!(modes["var/tmp/"], 0o1777, "{modes:?}");
        for dir in [
            "var/",
            "var/lib/",
            "opt/",
            "opt/tmp/",
            "srv/tmp/",
            "srv/tmp/x/",
        ] {
            assert_eq!(modes[dir], 0o755, "{dir}: {modes:?}");
        }
    }

    #[test]
    fn canonical_walk_sorts_adds_parents_keeps_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("b/c")).unwrap();
        fs::write(src.join("b/c/z.so"), b"z").unwrap();
        fs::write(src.join("a.txt"), b"a").unwrap();
        fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o700)).unwrap();
        symlink("c/z.so", src.join("b/link")).unwrap();
        let long = "x".repeat(120);
        fs::write(src.join(&long), b"long").unwrap();
        let mut t = Tree::default();
        t.add(&Mapping {
            src: src.clone(),
            dest: "/opt/app".into(),
            ..Default::default()
        })
        .unwrap();
        let (bytes, digests) = write_tar(&t, TarSettings { mtime: 7 }, Vec::new()).unwrap();
        let e = entries(&bytes);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        let long_path = format!("opt/app/{long}");
        assert_eq!(
            names,
            [
                "opt/",
                "opt/app/",
                "opt/app/a.txt",
                "opt/app/b/",
                "opt/app/b/c/",
                "opt/app/b/c/z.so",
                "opt/app/b/link",
                long_path.as_str()
            ]
        );
        assert!(e.iter().all(|x| x.3 == 7));
        assert_eq!(
            e[2].2, 0o755,
            "executable source becomes 0755 whatever its other bits"
        );
        assert_eq!(e[5].2, 0o644);
        assert_eq!((e[6].1, e[6].4.as_str()), (b'2', "c/z.so"));
        assert_eq!(digests.len(), 3);
        assert_eq!(digests["opt/app/a.txt"], Digest::of(b"a"));
    }

    #[test]
    fn escaping_symlink_and_bad_dest_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        symlink("../../etc/passwd", src.join("sub/evil")).unwrap();
        let mut t = Tree::default();
        let e = t
            .add(&Mapping {
                src: src.clone(),
                dest: "/x".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("escapes its source root"), "{e}");
        for bad in ["relative", "/a/../b", "/a/./b"] {
            assert!(
                matches!(image_path(bad), Err(LayerError::BadDest(_))),
                "{bad}"
            );
        }
        let e = t
            .add(&Mapping {
                src: d.path().join("nope"),
                dest: "/x".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("does not exist"));
    }

    #[test]
    fn include_and_exclude_filter_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        for f in ["libA.so", "libB.so", "notes.txt", "__pycache__/x.pyc"] {
            let p = d.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
        let mut t = Tree::default();
        t.add(&Mapping {
            src: d.path().into(),
            dest: "/lib".into(),
            include: vec!["lib*.so".into()],
            exclude: vec!["libB.so".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.nodes.keys().collect::<Vec<_>>(), ["lib", "lib/libA.so"]);
    }
}
