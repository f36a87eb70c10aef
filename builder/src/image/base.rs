//! Base images, their blobs verified and copied into the cache: an OCI image layout (the
//! manifest chosen by pinned digest or platform), a `docker save` archive (layers reused byte
//! for byte), or an image pulled from a registry.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde_json::{json, Value};

use super::{
    descriptor, diff_ids, invalid, io_at, media, parse, platform_of, ArchiveEntry, ImageError,
    LayerDesc,
};
use crate::cache::Cache;
use crate::digest::Digest;

/// A base image, its blobs already in the cache.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// Human name for annotations (`org.opencontainers.image.base.name`).
    pub name: String,
    /// Digest of the base's manifest (or, for a docker archive, its config: the image ID).
    pub digest: Option<Digest>,
    pub layers: Vec<LayerDesc>,
    /// The base config as JSON (empty object for scratch).
    pub config: Value,
    /// Where each layer's blob is now (in the source layout, or already in the cache).
    pub blobs: Vec<PathBuf>,
}

impl BaseImage {
    pub fn scratch() -> BaseImage {
        BaseImage {
            name: "scratch".into(),
            digest: None,
            layers: Vec::new(),
            config: json!({}),
            blobs: Vec::new(),
        }
    }

    /// Copies the layer blobs into the cache (verifying each while copying); done after the
    /// link check, so that a refused build leaves the cache untouched.
    pub fn import(&self, cache: &Cache) -> Result<(), ImageError> {
        for (l, path) in self.layers.iter().zip(&self.blobs) {
            if !cache
                .import_file(path, &l.digest, l.size)
                .map_err(io_at(path))?
            {
                return Err(invalid(
                    path,
                    format!(
                        "blob does not match its digest {} and size {}",
                        l.digest, l.size
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Reads an OCI document (index, manifest) at `path`.
pub(super) fn read_doc<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ImageError> {
    let bytes = fs::read(path).map_err(io_at(path))?;
    parse(path, &bytes)
}

/// Reads a blob from an OCI layout, checking its size and digest.
pub(super) fn layout_blob(
    dir: &Path,
    d: &Digest,
    size: Option<u64>,
) -> Result<(PathBuf, Vec<u8>), ImageError> {
    let path = dir.join("blobs/sha256").join(d.hex());
    // The size from the metadata first (a wrong descriptor must not make us read a layer into
    // memory), then one read and one hash.
    if let Some(size) = size {
        super::check_blob_size(&path, d, size)?;
    }
    let bytes = fs::read(&path).map_err(io_at(&path))?;
    super::check_blob_digest(&path, d, Digest::of(&bytes))?;
    Ok((path, bytes))
}

/// A manifest of a layout: digest, size, and its descriptor (for the platform).
type Candidate = (Digest, u64, Descriptor);

/// Loads an OCI image layout as a base: picks the manifest (by pinned digest, else the only one,
/// else the one for `os/arch`) and verifies manifest and config; layers are verified when
/// [`BaseImage::import`] copies them into the cache.
pub fn load_oci(
    dir: &Path,
    pinned: Option<Digest>,
    os: &str,
    arch: &str,
) -> Result<BaseImage, ImageError> {
    let index_path = dir.join("index.json");
    if !dir.join("oci-layout").is_file() {
        return Err(invalid(dir, "not an OCI image layout (no oci-layout file)"));
    }
    let index: ImageIndex = read_doc(&index_path)?;
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut stack: Vec<(PathBuf, ImageIndex)> = vec![(index_path.clone(), index)];
    while let Some((path, idx)) = stack.pop() {
        for m in idx.manifests() {
            let (d, size) = descriptor(&path, m)?;
            if media::is_index(m.media_type().as_ref()) {
                let (p, bytes) = layout_blob(dir, &d, Some(size))?;
                let v: ImageIndex = parse(&p, &bytes)?;
                if pinned == Some(d) {
                    return Err(invalid(
                        &p,
                        format!("{d} is an index; pin the platform manifest's digest"),
                    ));
                }
                stack.push((p, v));
            } else {
                candidates.push((d, size, m.clone()));
            }
        }
    }
    let platform = format!("{os}/{arch}");
    let chosen = if let Some(p) = pinned {
        match candidates.iter().find(|c| c.0 == p) {
            Some(c) => c.clone(),
            None => {
                let found = candidates
                    .iter()
                    .map(|c| c.0.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(invalid(
                    dir,
                    format!(
                        "base digest mismatch: the environment pins {p}, the layout holds {found}"
                    ),
                ));
            }
        }
    } else if candidates.len() == 1 {
        candidates[0].clone()
    } else {
        let matching: Vec<_> = candidates
            .iter()
            .filter(|c| platform_of(&c.2).is_some_and(|(o, a)| o == os && a == arch))
            .collect();
        match matching.as_slice() {
            [one] => (*one).clone(),
            _ => {
                let found = candidates
                    .iter()
                    .map(|c| {
                        let (o, a) = platform_of(&c.2).unwrap_or(("?".into(), "?".into()));
                        format!("{o}/{a}")
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ImageError::NoPlatform {
                    path: dir.to_path_buf(),
                    platform,
                    found,
                });
            }
        }
    };
    let (manifest_path, manifest_bytes) = layout_blob(dir, &chosen.0, Some(chosen.1))?;
    let manifest: ImageManifest = parse(&manifest_path, &manifest_bytes)?;
    let mt = manifest
        .media_type()
        .as_ref()
        .map_or_else(|| media::MANIFEST.to_owned(), |m| m.to_string());
    if mt != media::MANIFEST && mt != media::DOCKER_MANIFEST {
        return Err(invalid(
            &manifest_path,
            format!("unsupported manifest media type {mt}"),
        ));
    }
    let (cd, csize) = descriptor(&manifest_path, manifest.config())?;
    let (_, config_bytes) = layout_blob(dir, &cd, Some(csize))?;
    let config: Value = parse(&manifest_path, &config_bytes)?;
    let layers = layer_descs(&manifest_path, &manifest, &config)?;
    let blobs = layers
        .iter()
        .map(|l| dir.join("blobs/sha256").join(l.digest.hex()))
        .collect();
    Ok(BaseImage {
        name: dir.display().to_string(),
        digest: Some(chosen.0),
        layers,
        config,
        blobs,
    })
}

/// The layers a manifest lists, with the diff IDs its config gives them (docker media types
/// mapped to OCI ones).
fn layer_descs(
    here: &Path,
    manifest: &ImageManifest,
    config: &Value,
) -> Result<Vec<LayerDesc>, ImageError> {
    let diff_ids = diff_ids(here, config)?;
    if manifest.layers().len() != diff_ids.len() {
        return Err(invalid(
            here,
            format!(
                "{} layers but {} diff_ids in the config",
                manifest.layers().len(),
                diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let (d, size) = descriptor(here, l)?;
        layers.push(LayerDesc {
            media_type: media::oci_layer(l.media_type().as_ref()).to_owned(),
            digest: d,
            size,
            diff_id,
        });
    }
    Ok(layers)
}

/// A base image pulled from a registry into the cache.
pub fn base_from_pulled(
    name: &str,
    digest: Digest,
    manifest: &ImageManifest,
    config: Value,
    cache: &Cache,
) -> Result<BaseImage, ImageError> {
    let layers = layer_descs(Path::new(name), manifest, &config)?;
    let blobs = layers.iter().map(|l| cache.blob_path(&l.digest)).collect();
    Ok(BaseImage {
        name: name.to_owned(),
        digest: Some(digest),
        layers,
        config,
        blobs,
    })
}

/// Loads a `docker save` archive as a base; its layer tars are reused byte for byte (they stay
/// uncompressed, media type `…layer.v1.tar`). The pin is the config digest (the image ID).
pub fn load_docker_archive(
    file: &Path,
    pinned: Option<Digest>,
    cache: &Cache,
) -> Result<BaseImage, ImageError> {
    let f = fs::File::open(file).map_err(io_at(file))?;
    let mut members: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    let mut manifest = None;
    let mut archive = tar::Archive::new(f);
    for entry in archive.entries().map_err(io_at(file))? {
        let mut e = entry.map_err(io_at(file))?;
        let name = e.path().map_err(io_at(file))?.display().to_string();
        if !e.header().entry_type().is_file() {
            continue;
        }
        if name == "manifest.json" {
            let mut s = Vec::new();
            e.read_to_end(&mut s).map_err(io_at(file))?;
            manifest = Some(s);
            continue;
        }
        let mut tmp = cache.temp_file().map_err(io_at(file))?;
        let mut h = HashTee {
            inner: tmp.as_file_mut(),
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
            n: 0,
        };
        io::copy(&mut e, &mut h).map_err(io_at(file))?;
        let (d, n) = (Digest::from_sha256(h.hasher), h.n);
        if !cache.has_blob(&d) {
            cache.commit_blob(tmp, &d).map_err(io_at(file))?;
        }
        members.insert(name, (d, n));
    }
    let manifest =
        manifest.ok_or_else(|| invalid(file, "not a docker archive (no manifest.json)"))?;
    let entries: Vec<ArchiveEntry> = serde_json::from_slice(&manifest)
        .map_err(|e| invalid(file, format!("manifest.json: {e}")))?;
    let [img] = <[ArchiveEntry; 1]>::try_from(entries)
        .map_err(|_| invalid(file, "manifest.json must describe exactly one image"))?;
    let member = |name: &str| {
        members.get(name).copied().ok_or_else(|| {
            invalid(
                file,
                format!("manifest.json names {name}, which the archive lacks"),
            )
        })
    };
    let (cd, _) = member(&img.config)?;
    if let Some(p) = pinned {
        if p != cd {
            return Err(ImageError::DigestMismatch {
                name: file.display().to_string(),
                expected: p,
                found: cd,
            });
        }
    }
    let config: Value =
        serde_json::from_slice(&fs::read(cache.blob_path(&cd)).map_err(io_at(file))?)
            .map_err(|e| invalid(file, e.to_string()))?;
    let mut layers = Vec::new();
    for l in &img.layers {
        let (d, size) = member(l)?;
        let mut magic = [0u8; 2];
        let _ = fs::File::open(cache.blob_path(&d)).and_then(|mut f| f.read_exact(&mut magic));
        let (media_type, diff_id) = if magic == [0x1f, 0x8b] {
            let mut gz = flate2::read::MultiGzDecoder::new(
                fs::File::open(cache.blob_path(&d)).map_err(io_at(file))?,
            );
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            io::copy(&mut gz, &mut h).map_err(io_at(file))?;
            (media::LAYER_GZIP, Digest::from_sha256(h))
        } else {
            (media::LAYER_TAR, d)
        };
        layers.push(LayerDesc {
            media_type: media_type.into(),
            digest: d,
            size,
            diff_id,
        });
    }
    let blobs = layers.iter().map(|l| cache.blob_path(&l.digest)).collect();
    Ok(BaseImage {
        name: file.display().to_string(),
        digest: Some(cd),
        layers,
        config,
        blobs,
    })
}

struct HashTee<'a, W> {
    inner: &'a mut W,
    hasher: sha2::Sha256,
    n: u64,
}

impl<W: io::Write> io::Write for HashTee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
