//! A gathered [`Tree`] written out: the canonical tar (sorted, parents first, PAX records,
//! root-owned, one fixed mtime, contents hashed while read) and, through [`compress`], the
//! compressed layer blob with both its digests.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::compress::{self, Compression};
use super::{io_err, LayerError, Node, Tree};
use crate::digest::Digest;

/// The tar header fields every entry shares: the same whatever the host.
#[derive(Debug, Clone, Copy)]
pub struct TarSettings {
    /// Modification time of every entry (SOURCE_DATE_EPOCH or 0).
    pub mtime: u64,
}

/// Digests of the file contents written, keyed by their image path.
pub type ContentDigests = BTreeMap<String, Digest>;

/// Writes `tree` as a canonical tar to `out`; returns the sha256 of each file's content.
pub fn write_tar<W: Write>(
    tree: &Tree,
    opts: TarSettings,
    out: W,
) -> Result<(W, ContentDigests), LayerError> {
    let mut b = tar::Builder::new(out);
    let mut digests = ContentDigests::new();
    let tar_io = |e: io::Error| LayerError::Io {
        path: PathBuf::from("<layer tar>"),
        source: e,
    };
    for (path, node) in &tree.nodes {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(opts.mtime);
        h.set_username("root").expect("short");
        h.set_groupname("root").expect("short");
        h.set_device_major(0).expect("ustar");
        h.set_device_minor(0).expect("ustar");
        let name = match node {
            Node::Dir { .. } => format!("{path}/"),
            _ => path.clone(),
        };
        let mut pax: Vec<(&str, String)> = Vec::new();
        if name.len() > 100 {
            pax.push(("path", name.clone()));
        }
        match node {
            Node::Dir { mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
            }
            Node::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                if target.len() > 100 {
                    pax.push(("linkpath", target.clone()));
                } else {
                    h.set_link_name(target).map_err(tar_io)?;
                }
            }
            Node::File { mode, size, .. } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                if *size >= 0o77777777777 {
                    pax.push(("size", size.to_string()));
                    h.set_size(0);
                } else {
                    h.set_size(*size);
                }
            }
        }
        set_name(&mut h, &name);
        if !pax.is_empty() {
            write_pax(&mut b, &name, &pax, opts.mtime).map_err(tar_io)?;
        }
        h.set_cksum();
        match node {
            Node::File { src, size, .. } => {
                let f = fs::File::open(src).map_err(io_err(src))?;
                let mut reader = HashingReader {
                    inner: f.take(*size),
                    hasher: Sha256::new(),
                    n: 0,
                };
                if pax.iter().any(|(k, _)| *k == "size") {
                    // Large file: header size 0 with PAX size; tar::Builder::append pads by the
                    // header size, so write data and padding ourselves.
                    b.append(&h, io::empty()).map_err(tar_io)?;
                    let w = b.get_mut();
                    io::copy(&mut reader, w).map_err(io_err(src))?;
                    let pad = (512 - (size % 512)) % 512;
                    w.write_all(&vec![0u8; pad as usize]).map_err(tar_io)?;
                } else {
                    b.append(&h, &mut reader).map_err(|e| LayerError::Io {
                        path: src.clone(),
                        source: e,
                    })?;
                }
                if reader.n != *size {
                    return Err(LayerError::Changed {
                        path: src.clone(),
                        expected: *size,
                        actual: reader.n,
                    });
                }
                digests.insert(path.clone(), Digest::from_sha256(reader.hasher));
            }
            _ => b.append(&h, io::empty()).map_err(tar_io)?,
        }
    }
    b.finish().map_err(tar_io)?;
    Ok((b.into_inner().map_err(tar_io)?, digests))
}

/// Puts `name` in the ustar name field, truncated when a PAX `path` record carries it whole.
fn set_name(h: &mut tar::Header, name: &str) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    let mut end = name.len().min(100);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    field[..end].copy_from_slice(&name.as_bytes()[..end]);
}

fn write_pax<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    records: &[(&str, String)],
    mtime: u64,
) -> io::Result<()> {
    let mut data = Vec::new();
    for (k, v) in records {
        // Each record is "LEN KEY=VALUE\n" where LEN counts the whole record, itself included.
        let rest = k.len() + v.len() + 3;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {k}={v}\n").as_bytes());
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(data.len() as u64);
    let pax_name = format!(
        "PaxHeaders/{}",
        name.rsplit('/').find(|s| !s.is_empty()).unwrap_or("x")
    );
    set_name(&mut h, &pax_name);
    h.set_cksum();
    b.append(&h, &data[..])
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// A built layer: what a manifest and a config need, and where the blob is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub media_type: String,
    pub compression: Compression,
}

/// Writes `tree` as a compressed layer blob to `out`; returns its descriptor fields and the
/// content digests of its files. `task` hears how many bytes of tar went into the compressor.
pub fn build<W: Write>(
    tree: &Tree,
    opts: TarSettings,
    compression: Compression,
    threads: usize,
    out: W,
    task: &crate::progress::Task,
) -> Result<(LayerBlob, ContentDigests), LayerError> {
    let mut sink = compress::Encoder::new(compression, threads, out);
    let counted = crate::progress::Counting::new(&mut sink, task.clone());
    let (_, digests) = write_tar(tree, opts, counted)?;
    let done = sink.finish().map_err(|e| LayerError::Io {
        path: PathBuf::from("<layer output>"),
        source: e,
    })?;
    Ok((
        LayerBlob {
            digest: done.digest,
            size: done.size,
            diff_id: done.diff_id,
            media_type: compression.media_type().to_owned(),
            compression,
        },
        digests,
    ))
}
