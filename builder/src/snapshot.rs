//! The code snapshot of `run --code DIR`: the files of DIR minus what its `.amlignore` (else its
//! `.gitignore`) excludes, as `az ml` uploads them, and one digest over their paths, modes and
//! contents, so the same code is the same snapshot wherever it lies.
//!
//! Rules as azure-ai-ml applies them: only the ignore file at the top of DIR is read
//! (`.amlignore` wins over `.gitignore`), with gitignore semantics (negation, `dir/` patterns,
//! the last matching rule wins, nothing below an excluded directory comes back); the ignore file
//! itself stays in the snapshot. Symbolic links are followed, as az ml does, but one that leaves
//! DIR is refused: what it points at would be uploaded without being part of the code. A
//! snapshot over 100 MB (10^8 bytes, az ml's threshold) gets az ml's size warning.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::digest::Digest;

/// The ignore files, in the order az ml looks for them at the top of the code directory.
pub const IGNORE_FILES: [&str; 2] = [".amlignore", ".gitignore"];

/// Above this many bytes, az ml warns that the upload may be slow (`file_size / 10**6 > 100`).
pub const WARN_BYTES: u64 = 100_000_000;

/// A code directory's files as they would be uploaded, and their digest.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The code directory, absolute and with symbolic links resolved.
    pub root: PathBuf,
    /// The files, sorted by `rel` (byte order).
    pub files: Vec<SnapFile>,
    /// The sum of the files' sizes.
    pub total_bytes: u64,
    /// sha256 over the sorted files: for each, `rel`, NUL, then `"{mode:o} {size} {sha256 hex}\n"`
    /// with mode 755 or 644 — the same code under any path, owner or mtime is the same snapshot.
    pub digest: Digest,
    /// The ignore file whose rules were applied (`.amlignore` or `.gitignore` in `root`).
    pub ignore_file: Option<PathBuf>,
}

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapFile {
    /// The path below the code directory, `/`-separated (a symbolic link's own path).
    pub rel: String,
    /// Where to read it (below `root`; a symbolic link is read through).
    pub path: PathBuf,
    pub size: u64,
    /// Any execute bit set: the snapshot's mode is 755, else 644.
    pub executable: bool,
    pub sha256: Digest,
}

impl SnapFile {
    /// The mode the snapshot records and a copy gets: 0o755 or 0o644.
    pub fn mode(&self) -> u32 {
        if self.executable {
            0o755
        } else {
            0o644
        }
    }
}

/// Why a code directory has no snapshot.
#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("code directory {}: no such directory", .0.display())]
    Missing(PathBuf),
    #[error("code directory {}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("code directory {}: no files{}", dir.display(), match ignore_file {
        Some(f) => format!(" left after the rules of {}", f.display()),
        None => String::new(),
    })]
    Empty {
        dir: PathBuf,
        ignore_file: Option<PathBuf>,
    },
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: a symbolic link to {}, outside the code directory {}", link.display(), target.display(), dir.display())]
    LinkOutside {
        link: PathBuf,
        target: PathBuf,
        dir: PathBuf,
    },
    #[error("{}: a symbolic link to {}, a directory that contains it (a loop)", link.display(), target.display())]
    LinkLoop { link: PathBuf, target: PathBuf },
    #[error("{}: a socket, FIFO or device, not a file the code can hold", .0.display())]
    Special(PathBuf),
    #[error("{}: the file name is not UTF-8 (blob names and the digest are UTF-8)", .0.display())]
    NotUtf8(PathBuf),
    #[error("{}: {source}", file.display())]
    Rules {
        file: PathBuf,
        #[source]
        source: ignore::Error,
    },
    #[error("{}: changed since the snapshot was taken (its sha256 is now {now}, was {was})", path.display())]
    Changed {
        path: PathBuf,
        was: Digest,
        now: Digest,
    },
}

impl crate::error::Hint for SnapshotError {
    fn hint(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            SnapshotError::Empty {
                ignore_file: Some(f),
                ..
            } => Some(
                format!(
                    "its rules exclude every file; a line `!NAME` in {} brings one back",
                    f.display()
                )
                .into(),
            ),
            SnapshotError::Empty {
                ignore_file: None, ..
            } => Some("--code takes the directory that holds your script".into()),
            SnapshotError::LinkOutside { .. } => Some(
                "copy what it points at into the code directory, or exclude the link in .amlignore"
                    .into(),
            ),
            SnapshotError::Special(_) | SnapshotError::LinkLoop { .. } => {
                Some("exclude it in the code directory's .amlignore".into())
            }
            SnapshotError::Changed { .. } => {
                Some("run again once nothing writes into the code directory".into())
            }
            _ => None,
        }
    }
}

impl Snapshot {
    /// The snapshot of `dir`: its files minus those its ignore file excludes, each read once.
    pub fn of(dir: &Path) -> Result<Snapshot, SnapshotError> {
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(SnapshotError::NotADirectory(dir.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SnapshotError::Missing(dir.to_path_buf()))
            }
            Err(source) => {
                return Err(SnapshotError::Read {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
        let root = dir.canonicalize().map_err(|source| SnapshotError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let ignore_file = IGNORE_FILES
            .iter()
            .map(|n| root.join(n))
            .find(|p| p.is_file());
        let rules = match &ignore_file {
            Some(f) => rules(&root, f)?,
            None => Gitignore::empty(),
        };
        let mut walk = Walk {
            root: &root,
            rules: &rules,
            files: Vec::new(),
            open: vec![root.clone()],
        };
        walk.dir(&root, "")?;
        let mut files = walk.files;
        if files.is_empty() {
            return Err(SnapshotError::Empty {
                dir: dir.to_path_buf(),
                ignore_file,
            });
        }
        files.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
        Ok(Snapshot {
            total_bytes: files.iter().map(|f| f.size).sum(),
            digest: digest_of(&files),
            root,
            files,
            ignore_file,
        })
    }

    /// az ml's warning for a large upload, when this snapshot is one.
    pub fn warnings(&self) -> Vec<String> {
        if self.total_bytes <= WARN_BYTES {
            return Vec::new();
        }
        vec![format!(
            "the code snapshot of {} is {:.1} MB ({} files), over 100 MB: uploads of this size can be slow; \
             exclude data, outputs and environments in {}",
            self.root.display(),
            self.total_bytes as f64 / 1e6,
            self.files.len(),
            self.ignore_file
                .clone()
                .unwrap_or_else(|| self.root.join(".amlignore"))
                .display()
        )]
    }

    /// The first 32 hex digits of the digest: the snapshot's name in paths and versions.
    pub fn short_hash(&self) -> String {
        self.digest.hex()[..32].to_owned()
    }

    /// Copies the snapshot's files into `dest` (an empty or missing directory), modes 0644 or
    /// 0755, directories 0755, checking each file's bytes against the snapshot as they are
    /// copied: what lands in `dest` is exactly the digest's content, or an error.
    pub fn copy_to(&self, dest: &Path) -> Result<(), SnapshotError> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Read { path, source }
        };
        for f in &self.files {
            let to = dest.join(&f.rel);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(write_err(parent))?;
            }
            let mut from = fs::File::open(&f.path).map_err(write_err(&f.path))?;
            let mut out = fs::File::create(&to).map_err(write_err(&to))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(write_err(&f.path)(e)),
                };
                hasher.update(&buf[..n]);
                io::Write::write_all(&mut out, &buf[..n]).map_err(write_err(&to))?;
            }
            let now = Digest::from_sha256(hasher);
            if now != f.sha256 {
                return Err(SnapshotError::Changed {
                    path: f.path.clone(),
                    was: f.sha256,
                    now,
                });
            }
            out.set_permissions(fs::Permissions::from_mode(f.mode()))
                .map_err(write_err(&to))?;
        }
        Ok(())
    }
}

/// The rules of `file`, relative to `root`.
fn rules(root: &Path, file: &Path) -> Result<Gitignore, SnapshotError> {
    let mut b = GitignoreBuilder::new(root);
    if let Some(source) = b.add(file) {
        return Err(SnapshotError::Rules {
            file: file.to_path_buf(),
            source,
        });
    }
    b.build().map_err(|source| SnapshotError::Rules {
        file: file.to_path_buf(),
        source,
    })
}

/// The digest of sorted files (see [`Snapshot::digest`]).
fn digest_of(files: &[SnapFile]) -> Digest {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.rel.as_bytes());
        h.update([0]);
        h.update(format!("{:o} {} {}\n", f.mode(), f.size, f.sha256.hex()).as_bytes());
    }
    Digest::from_sha256(h)
}

/// One walk over the code directory.
struct Walk<'a> {
    root: &'a Path,
    rules: &'a Gitignore,
    files: Vec<SnapFile>,
    /// The real paths of the directories being walked, outermost first (to see link loops).
    open: Vec<PathBuf>,
}

impl Walk<'_> {
    /// Adds the files below `dir`, whose path below the root is `prefix` (empty or ending in `/`).
    fn dir(&mut self, dir: &Path, prefix: &str) -> Result<(), SnapshotError> {
        let read = |source| SnapshotError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries = fs::read_dir(dir)
            .map_err(read)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(read)?;
        entries.sort();
        for name in entries {
            let path = dir.join(&name);
            let Some(name) = name.to_str() else {
                return Err(SnapshotError::NotUtf8(path));
            };
            let rel = format!("{prefix}{name}");
            let read = |source| SnapshotError::Read {
                path: path.clone(),
                source,
            };
            let own = fs::symlink_metadata(&path).map_err(read)?;
            // The rules first: an excluded link is neither followed nor checked.
            let (meta, target) = if own.file_type().is_symlink() {
                let meta = match fs::metadata(&path) {
                    Ok(m) => m,
                    Err(_) if self.rules.matched(&rel, false).is_ignore() => continue,
                    Err(e) => return Err(read(e)),
                };
                if self.rules.matched(&rel, meta.is_dir()).is_ignore() {
                    continue;
                }
                let target = fs::canonicalize(&path).map_err(read)?;
                if !target.starts_with(self.root) {
                    return Err(SnapshotError::LinkOutside {
                        link: path,
                        target,
                        dir: self.root.to_path_buf(),
                    });
                }
                (meta, Some(target))
            } else {
                if self.rules.matched(&rel, own.is_dir()).is_ignore() {
                    continue;
                }
                (own, None)
            };
            if meta.is_dir() {
                let real = target.unwrap_or_else(|| path.clone());
                if self.open.contains(&real) {
                    return Err(SnapshotError::LinkLoop {
                        link: path,
                        target: real,
                    });
                }
                self.open.push(real);
                self.dir(&path, &format!("{rel}/"))?;
                self.open.pop();
            } else if meta.is_file() {
                let (size, sha256) = hash_file(&path)?;
                self.files.push(SnapFile {
                    rel,
                    path,
                    size,
                    executable: meta.permissions().mode() & 0o111 != 0,
                    sha256,
                });
            } else {
                return Err(SnapshotError::Special(path));
            }
        }
        Ok(())
    }
}

/// The size and sha256 of the file at `path`, read once.
fn hash_file(path: &Path) -> Result<(u64, Digest), SnapshotError> {
    let read = |source| SnapshotError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::File::open(path).map_err(read)?;
    let mut h = Sha256::new();
    let size = io::copy(&mut f, &mut h).map_err(read)?;
    Ok((size, Digest::from_sha256(h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory made of `(path, bytes, mode)`; parents are made as needed.
    fn tree(files: &[(&str, &str, u32)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (rel, bytes, mode) in files {
            let p = t.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, bytes).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
        }
        t
    }

    fn rels(s: &Snapshot) -> Vec<&str> {
        s.files.iter().map(|f| f.rel.as_str()).collect()
    }

    const CODE: &[(&str, &str, u32)] = &[
        ("train.py", "print('hi')\n", 0o644),
        ("run.sh", "#!/bin/sh\n", 0o755),
        ("lib/util.py", "X = 1\n", 0o600),
    ];

    #[test]
    fn the_same_code_under_two_paths_is_the_same_snapshot() {
        let (a, b) = (tree(CODE), tree(CODE));
        let (sa, sb) = (
            Snapshot::of(a.path()).unwrap(),
            Snapshot::of(b.path()).unwrap(),
        );
        assert_ne!(sa.root, sb.root);
        assert_eq!(sa.digest, sb.digest);
        assert_eq!(sa.short_hash(), sb.short_hash());
        assert_eq!(sa.short_hash().len(), 32);
        assert!(sa.digest.hex().starts_with(&sa.short_hash()));
        assert_eq!(rels(&sa), ["lib/util.py", "run.sh", "train.py"]);
        assert_eq!(sa.total_bytes, 12 + 10 + 6);
        // Group and other bits do not count: 0600 and 0644 are both 644.
        assert_eq!(sa.files[0].mode(), 0o644);
        assert_eq!(sa.files[1].mode(), 0o755);
        assert_eq!(sa.files[2].sha256, Digest::of(b"print('hi')\n"));
        assert!(sa.ignore_file.is_none());
    }

    #[test]
    fn contents_names_and_the_execute_bit_change_the_digest() {
        let base = Snapshot::of(tree(CODE).path()).unwrap().digest;
        let mut content = CODE.to_vec();
        content[0].1 = "print('ho')\n";
        let mut exec = CODE.to_vec();
        exec[0].2 = 0o744;
        let mut renamed = CODE.to_vec();
        renamed[2].0 = "lib/utils.py";
        let mut moved = CODE.to_vec();
        moved[2].0 = "util.py";
        let mut more = CODE.to_vec();
        more.push(("empty.txt", "", 0o644));
        let mut digests = vec![base];
        for t in [content, exec, renamed, moved, more] {
            let d = Snapshot::of(tree(&t).path()).unwrap().digest;
            assert!(!digests.contains(&d), "{t:?} has a digest seen before");
            digests.push(d);
        }
    }

    #[test]
    fn the_digest_is_the_documented_form() {
        let t = tree(&[("a", "x", 0o644), ("b/c", "", 0o755)]);
        let s = Snapshot::of(t.path()).unwrap();
        let expected = format!(
            "a\x00644 1 {}\nb/c\x00755 0 {}\n",
            Digest::of(b"x").hex(),
            Digest::of(b"").hex()
        );
        assert_eq!(s.digest, Digest::of(expected.as_bytes()));
    }

    #[test]
    fn gitignore_rules_negation_directories_and_the_last_match() {
        let t = tree(&[
            (
                ".gitignore",
                "*.log\n!keep.log\ndata/\nbuild\n/top.txt\n*.tmp\n!*.tmp\n*.bak\n",
                0o644,
            ),
            ("a.log", "", 0o644),
            ("keep.log", "", 0o644),
            ("sub/b.log", "", 0o644),
            ("sub/keep.log", "", 0o644),
            ("data/x.csv", "", 0o644),
            ("sub/data/y.csv", "", 0o644),
            ("build/out", "", 0o644),
            ("top.txt", "", 0o644),
            ("sub/top.txt", "", 0o644),
            ("c.tmp", "", 0o644),
            ("d.bak", "", 0o644),
            ("main.py", "", 0o644),
        ]);
        // `data` as a file: `data/` matches directories only.
        fs::write(t.path().join("sub/data2"), "").unwrap();
        fs::create_dir_all(t.path().join("f")).unwrap();
        fs::write(t.path().join("f/data"), "a file named data").unwrap();
        let s = Snapshot::of(t.path()).unwrap();
        assert_eq!(
            rels(&s),
            [
                ".gitignore",
                "c.tmp",
                "f/data",
                "keep.log",
                "main.py",
                "sub/data2",
                "sub/keep.log",
                "sub/top.txt"
            ]
        );
        assert_eq!(s.ignore_file, Some(s.root.join(".gitignore")));
    }

    #[test]
    fn nothing_below_an_excluded_directory_comes_back() {
        // As in git: `!data/keep.csv` cannot re-include a file whose directory is excluded.
        let t = tree(&[
            (".amlignore", "data/\n!data/keep.csv\n", 0o644),
            ("data/keep.csv", "", 0o644),
            ("main.py", "", 0o644),
        ]);
        assert_eq!(
            rels(&Snapshot::of(t.path()).unwrap()),
            [".amlignore", "main.py"]
        );
    }

    #[test]
    fn amlignore_wins_over_gitignore() {
        let t = tree(&[
            (".amlignore", "*.csv\n", 0o644),
            (".gitignore", "*.py\n", 0o644),
            ("a.csv", "", 0o644),
            ("a.py", "", 0o644),
        ]);
        let s = Snapshot::of(t.path()).unwrap();
        assert_eq!(rels(&s), [".amlignore", ".gitignore", "a.py"]);
        assert_eq!(s.ignore_file, Some(s.root.join(".amlignore")));
        // A nested ignore file is a plain file: only the top one has rules.
        let n = tree(&[("sub/.gitignore", "*\n", 0o644), ("sub/a.py", "", 0o644)]);
        assert_eq!(
            rels(&Snapshot::of(n.path()).unwrap()),
            ["sub/.gitignore", "sub/a.py"]
        );
    }

    #[test]
    fn a_directory_emptied_by_its_rules_names_the_ignore_file() {
        let t = tree(&[(".amlignore", "*\n", 0o644), ("a.py", "", 0o644)]);
        let e = Snapshot::of(t.path()).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(&e, SnapshotError::Empty { ignore_file: Some(f), .. } if f.ends_with(".amlignore")),
            "{e:?}"
        );
        assert!(
            msg.contains("no files left after the rules of") && msg.contains(".amlignore"),
            "{msg}"
        );
        let hint = crate::error::Hint::hint(&e).unwrap();
        assert!(hint.contains("!NAME"), "{hint}");
        let empty = tempfile::tempdir().unwrap();
        fs::create_dir(empty.path().join("only-dirs")).unwrap();
        let e = Snapshot::of(empty.path()).unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::Empty {
                    ignore_file: None,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn a_missing_directory_or_a_file_is_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope");
        let e = Snapshot::of(&missing).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("no such directory"), "{e}");
        let file = t.path().join("train.py");
        fs::write(&file, "").unwrap();
        let e = Snapshot::of(&file).unwrap_err().to_string();
        assert!(
            e.contains("train.py") && e.contains("not a directory"),
            "{e}"
        );
    }

    #[test]
    fn links_inside_are_followed_and_links_outside_refused() {
        let t = tree(&[("real/a.py", "A", 0o755), ("b.py", "B", 0o644)]);
        std::os::unix::fs::symlink("b.py", t.path().join("c.py")).unwrap();
        std::os::unix::fs::symlink("real", t.path().join("alias")).unwrap();
        let s = Snapshot::of(t.path()).unwrap();
        assert_eq!(rels(&s), ["alias/a.py", "b.py", "c.py", "real/a.py"]);
        assert_eq!(s.files[2].sha256, Digest::of(b"B"));
        assert!(s.files[0].executable);

        let outside = tree(&[("secret", "S", 0o644)]);
        std::os::unix::fs::symlink(outside.path().join("secret"), t.path().join("leak")).unwrap();
        let e = Snapshot::of(t.path()).unwrap_err();
        assert!(matches!(e, SnapshotError::LinkOutside { .. }), "{e:?}");
        assert!(
            e.to_string().contains("leak") && e.to_string().contains("outside"),
            "{e}"
        );
        // Excluded, it is not followed.
        fs::write(t.path().join(".amlignore"), "leak\n").unwrap();
        let s = Snapshot::of(t.path()).unwrap();
        assert!(!rels(&s).contains(&"leak"), "{:?}", rels(&s));

        let dangling = tree(&[("a.py", "", 0o644)]);
        std::os::unix::fs::symlink("gone.py", dangling.path().join("b.py")).unwrap();
        let e = Snapshot::of(dangling.path()).unwrap_err().to_string();
        assert!(e.contains("b.py"), "{e}");
        fs::write(dangling.path().join(".gitignore"), "b.py\n").unwrap();
        assert_eq!(
            rels(&Snapshot::of(dangling.path()).unwrap()),
            [".gitignore", "a.py"]
        );

        let looped = tree(&[("sub/a.py", "", 0o644)]);
        std::os::unix::fs::symlink("..", looped.path().join("sub/up")).unwrap();
        let e = Snapshot::of(looped.path()).unwrap_err();
        assert!(matches!(e, SnapshotError::LinkLoop { .. }), "{e:?}");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        // root reads anything: the check only means something for another user.
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } == 0 {
            let t = tree(&[("a.py", "", 0o644)]);
            std::os::unix::net::UnixListener::bind(t.path().join("sock")).unwrap();
            let e = Snapshot::of(t.path()).unwrap_err();
            assert!(
                matches!(e, SnapshotError::Special(ref p) if p.ends_with("sock")),
                "{e:?}"
            );
            return;
        }
        let t = tree(&[("a.py", "", 0o644), ("locked.py", "x", 0o000)]);
        let e = Snapshot::of(t.path()).unwrap_err();
        assert!(
            matches!(&e, SnapshotError::Read { path, .. } if path.ends_with("locked.py")),
            "{e:?}"
        );
    }

    #[test]
    fn large_snapshots_get_the_size_warning() {
        let t = tree(CODE);
        let mut s = Snapshot::of(t.path()).unwrap();
        assert!(s.warnings().is_empty());
        s.total_bytes = WARN_BYTES;
        assert!(s.warnings().is_empty(), "exactly 100 MB is not over it");
        s.total_bytes = WARN_BYTES + 1;
        let w = s.warnings();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("over 100 MB") && w[0].contains(".amlignore"),
            "{w:?}"
        );
    }

    #[test]
    fn a_copy_holds_the_snapshots_files_only_and_checks_them() {
        let t = tree(&[
            (".amlignore", "secret.txt\n", 0o644),
            ("secret.txt", "S", 0o644),
            ("run.sh", "#!/bin/sh\n", 0o700),
            ("lib/u.py", "U", 0o600),
        ]);
        let s = Snapshot::of(t.path()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        s.copy_to(&dest.path().join("code")).unwrap();
        let copy = Snapshot::of(&dest.path().join("code")).unwrap();
        assert_eq!(copy.digest, s.digest);
        assert!(!dest.path().join("code/secret.txt").exists());
        let mode = |p: &str| {
            fs::metadata(dest.path().join("code").join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!((mode("run.sh"), mode("lib/u.py")), (0o755, 0o644));
        // A file changed after the snapshot is not copied as if it were the snapshot's.
        fs::write(t.path().join("lib/u.py"), "changed").unwrap();
        let e = s.copy_to(&dest.path().join("again")).unwrap_err();
        assert!(
            matches!(&e, SnapshotError::Changed { path, .. } if path.ends_with("lib/u.py")),
            "{e:?}"
        );
    }
}
