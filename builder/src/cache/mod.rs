//! The content-addressed cache: blobs by digest, built layers by a key over their inputs, and
//! file-content digests by file identity (so a warm build re-reads nothing that did not change).

pub mod ledger;
pub mod prune;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::layer::{LayerBlob, Node, TarSettings, Tree};

/// A cache directory (`--cache`, `$ENVBUILD_CACHE`, or `~/.cache/envbuild`).
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

/// File identity used to trust a remembered content digest: what `git` and `make` trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
    digest: Digest,
}

impl Cache {
    pub fn open(root: &Path) -> io::Result<Cache> {
        for sub in ["blobs/sha256", "layers", "tmp"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    /// The default location: `$ENVBUILD_CACHE`, else `$XDG_CACHE_HOME/envbuild`, else
    /// `~/.cache/envbuild`.
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("ENVBUILD_CACHE") {
            return p.into();
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(p).join("envbuild");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| ".".into());
        home.join(".cache/envbuild")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// A temporary file in the cache, to be moved in by [`Cache::commit_blob`].
    pub fn temp_file(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.root.join("tmp"))
    }

    /// Moves a finished temporary file to its content address, readable by all (blobs are
    /// hard-linked into OCI layouts that other users and tools read; temp files start 0600).
    pub fn commit_blob(&self, tmp: tempfile::NamedTempFile, d: &Digest) -> io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.blob_path(d);
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(path)
    }

    /// Stores bytes under their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> io::Result<Digest> {
        let d = Digest::of(bytes);
        if self.has_blob(&d) {
            self.touch(&d);
        } else {
            let mut tmp = self.temp_file()?;
            tmp.write_all(bytes)?;
            self.commit_blob(tmp, &d)?;
        }
        Ok(d)
    }

    /// Copies `src` into the store, hashing while copying (one read); keeps nothing and returns
    /// `false` when its bytes are not `d` and `size`.
    pub fn import_file(&self, src: &Path, d: &Digest, size: u64) -> io::Result<bool> {
        if self.has_blob(d) {
            self.touch(d);
            return Ok(true);
        }
        let mut tmp = self.temp_file()?;
        let mut hasher = Sha256::new();
        let mut f = fs::File::open(src)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = io::Read::read(&mut f, &mut buf)?;
            if k == 0 {
                break;
            }
            hasher.update(&buf[..k]);
            tmp.write_all(&buf[..k])?;
            n += k as u64;
        }
        if n != size || Digest::from_sha256(hasher) != *d {
            return Ok(false);
        }
        self.commit_blob(tmp, d)?;
        Ok(true)
    }

    fn layer_path(&self, key: &Digest) -> PathBuf {
        self.root.join("layers").join(format!("{}.json", key.hex()))
    }

    /// The layer built earlier from the same inputs, if its blob is still there.
    pub fn layer(&self, key: &Digest) -> Option<LayerBlob> {
        let text = fs::read(self.layer_path(key)).ok()?;
        let blob: LayerBlob = serde_json::from_slice(&text).ok()?;
        let there = self.has_blob(&blob.digest);
        if there {
            self.touch(&blob.digest);
        }
        there.then_some(blob)
    }

    /// What was worked out before from the inputs `key` (of `kind`), if it was kept.
    pub fn memo(&self, kind: &str, key: &Digest) -> Option<Vec<u8>> {
        fs::read(self.root.join("memo").join(kind).join(key.hex())).ok()
    }

    /// Keeps `bytes` as what inputs `key` (of `kind`) give, replacing atomically.
    pub fn put_memo(&self, kind: &str, key: &Digest, bytes: &[u8]) -> io::Result<()> {
        let dir = self.root.join("memo").join(kind);
        fs::create_dir_all(&dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        tmp.write_all(bytes)?;
        tmp.persist(dir.join(key.hex())).map_err(|e| e.error)?;
        Ok(())
    }

    pub fn put_layer(&self, key: &Digest, blob: &LayerBlob) -> io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        tmp.write_all(&serde_json::to_vec(blob).expect("serialises"))?;
        tmp.persist(self.layer_path(key)).map_err(|e| e.error)?;
        Ok(())
    }

    fn stamps_path(&self) -> PathBuf {
        self.root.join("file-digests.json")
    }

    /// The remembered content digests of source files, by absolute path.
    pub fn stamps(&self) -> FileDigests {
        let map = fs::read(self.stamps_path())
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default();
        FileDigests { map, dirty: false }
    }

    pub fn save_stamps(&self, s: &FileDigests) -> io::Result<()> {
        if !s.dirty {
            return Ok(());
        }
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        tmp.write_all(&serde_json::to_vec(&s.map).expect("serialises"))?;
        tmp.persist(self.stamps_path()).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Content digests of source files, trusted while size, times, inode and device are unchanged.
#[derive(Debug, Default)]
pub struct FileDigests {
    map: BTreeMap<PathBuf, Stamp>,
    dirty: bool,
}

fn stamp_of(meta: &fs::Metadata, digest: Digest) -> Stamp {
    Stamp {
        size: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        ino: meta.ino(),
        dev: meta.dev(),
        digest,
    }
}

impl FileDigests {
    /// The digest of `path` if remembered and the file is unchanged.
    pub fn get(&self, path: &Path) -> Option<Digest> {
        let s = self.map.get(path)?;
        let meta = fs::metadata(path).ok()?;
        (stamp_of(&meta, s.digest) == *s).then_some(s.digest)
    }

    /// Remembers a digest computed while reading `path`. The stamp is taken now, so a file
    /// modified during the read gets a stamp that no longer matches on the next build.
    pub fn remember(&mut self, path: &Path, digest: Digest) {
        if let Ok(meta) = fs::metadata(path) {
            self.map.insert(path.to_path_buf(), stamp_of(&meta, digest));
            self.dirty = true;
        }
    }
}

/// The key of a layer: everything that decides its bytes — image paths, kinds, modes, file
/// contents (by digest), symlink targets, tar options and the compressor's identity. Source paths
/// on the host are not part of it, so two checkouts share cached layers.
pub fn layer_key(
    tree: &Tree,
    contents: &BTreeMap<String, Digest>,
    opts: TarSettings,
    compressor: &str,
) -> Option<Digest> {
    let mut h = Sha256::new();
    h.update(format!(
        "envbuild-layer-v1\0{compressor}\0mtime={}\0",
        opts.mtime
    ));
    for (path, node) in &tree.nodes {
        let line = match node {
            Node::Dir { mode } => format!("d {mode:o} {path}\0"),
            Node::Symlink { target } => format!("l {path}\0{target}\0"),
            Node::File { mode, size, .. } => {
                format!("f {mode:o} {size} {} {path}\0", contents.get(path)?)
            }
        };
        h.update(line.as_bytes());
    }
    Some(Digest::from_sha256(h))
}
