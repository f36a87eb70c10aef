//! Writing images out: an OCI image layout or a `docker load` archive, each built under a
//! temporary name and renamed into place; and the blobs of an image, as a push sends them.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageIndex, ImageIndexBuilder, ImageManifest, MediaType, SCHEMA_VERSION};

use super::attach::Attachment;
use super::base::{layout_blob, read_doc};
use super::{
    canonical_json, descriptor, invalid, io_at, media, oci_descriptor, parse, ArchiveEntry, Image,
    ImageError, Pushable,
};
use crate::cache::Cache;
use crate::digest::Digest;

/// The image in an OCI layout, as the registry client pushes it.
pub fn pushable_from_oci(dir: &Path) -> Result<Pushable, ImageError> {
    let index_path = dir.join("index.json");
    let index: ImageIndex = read_doc(&index_path)?;
    let m = index
        .manifests()
        .first()
        .ok_or_else(|| invalid(dir, "index.json lists no manifest"))?;
    let (d, size) = descriptor(&index_path, m)?;
    let (path, manifest) = layout_blob(dir, &d, Some(size))?;
    let v: ImageManifest = parse(&path, &manifest)?;
    let mut blobs = Vec::new();
    for desc in std::iter::once(v.config()).chain(v.layers()) {
        let (d, size) = descriptor(&path, desc)?;
        blobs.push((d, size, dir.join("blobs/sha256").join(d.hex())));
    }
    // Every blob is the size its descriptor says before any request: a short blob would stream
    // less than its Content-Length. Their contents are hashed by the push, just before a blob's
    // upload, and only for blobs the registry lacks: an incremental push of a large image
    // re-reads only what changed.
    for (d, size, p) in &blobs {
        super::check_blob_size(p, d, *size)?;
    }
    let media_type = v
        .media_type()
        .as_ref()
        .map_or_else(|| media::MANIFEST.to_owned(), |m| m.to_string());
    // The referrers the layout records (SBOM, provenance), each verified as the image is.
    let mut referrers = Vec::new();
    for r in super::attach::layout_referrers(dir)? {
        let (mpath, manifest) = layout_blob(dir, &r.manifest, None)?;
        let m: serde_json::Value = parse(&mpath, &manifest)?;
        let mut rblobs = Vec::new();
        for desc in
            std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten())
        {
            let d: Digest = desc["digest"]
                .as_str()
                .unwrap_or("")
                .parse()
                .map_err(|e| invalid(&mpath, format!("a descriptor's digest: {e}")))?;
            let size = desc["size"].as_u64().unwrap_or(0);
            let p = dir.join("blobs/sha256").join(d.hex());
            super::check_blob_size(&p, &d, size)?;
            rblobs.push((d, size, p));
        }
        referrers.push(Pushable {
            manifest,
            media_type: media::MANIFEST.into(),
            blobs: rblobs,
            referrers: Vec::new(),
            verify: true,
        });
    }
    Ok(Pushable {
        manifest,
        media_type,
        blobs,
        referrers,
        verify: true,
    })
}

/// A built image whose blobs are in the cache, and its attachments, as the registry client
/// pushes them.
pub fn pushable_from_cache(img: &Image, cache: &Cache, attachments: &[Attachment]) -> Pushable {
    let mut blobs = vec![(
        img.config_digest,
        img.config.len() as u64,
        cache.blob_path(&img.config_digest),
    )];
    blobs.extend(
        img.layers
            .iter()
            .map(|l| (l.digest, l.size, cache.blob_path(&l.digest))),
    );
    Pushable {
        manifest: img.manifest.clone(),
        media_type: media::MANIFEST.into(),
        blobs,
        referrers: attachments.iter().map(|a| a.pushable(cache)).collect(),
        verify: false,
    }
}

/// A sibling temporary path for atomic replacement of `target`.
fn sibling_temp(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    target.with_file_name(format!(".{name}.envbuild-tmp-{}", std::process::id()))
}

fn link_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    fs::hard_link(src, dst).or_else(|_| fs::copy(src, dst).map(|_| ()))
}

/// Writes the image as an OCI image layout at `dir`, replacing an earlier layout atomically.
/// The index names the image `tag` (`org.opencontainers.image.ref.name`); its attachments'
/// blobs go in too, listed by the entry's [`super::attach::REFERRERS`] annotation.
pub fn write_oci(
    img: &Image,
    cache: &Cache,
    dir: &Path,
    tag: &str,
    attachments: &[Attachment],
) -> Result<(), ImageError> {
    if dir.exists()
        && !dir.join("oci-layout").is_file()
        && fs::read_dir(dir).map_err(io_at(dir))?.next().is_some()
    {
        return Err(invalid(
            dir,
            "exists, is not empty and is not an OCI layout; refusing to replace it",
        ));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    let tmp = sibling_temp(dir);
    let _ = fs::remove_dir_all(&tmp);
    let result = (|| {
        let blobs = tmp.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
        fs::write(tmp.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io_at(&tmp))?;
        for l in &img.layers {
            link_or_copy(&cache.blob_path(&l.digest), &blobs.join(l.digest.hex()))
                .map_err(io_at(&blobs))?;
        }
        fs::write(blobs.join(img.config_digest.hex()), &img.config).map_err(io_at(&blobs))?;
        fs::write(blobs.join(img.digest.hex()), &img.manifest).map_err(io_at(&blobs))?;
        for a in attachments {
            for (d, from) in a.blobs(cache) {
                let to = blobs.join(d.hex());
                if !to.exists() {
                    link_or_copy(&from, &to).map_err(io_at(&blobs))?;
                }
            }
        }
        // A pulled Docker v2 manifest keeps its own media type (and so its digest).
        let media_type = media::declared(&img.manifest).unwrap_or_else(|| media::MANIFEST.into());
        let mut entry = oci_descriptor(&media_type, &img.digest, img.manifest.len() as u64);
        let mut annotations: std::collections::HashMap<String, String> = [(
            "org.opencontainers.image.ref.name".to_owned(),
            tag.to_owned(),
        )]
        .into();
        if !attachments.is_empty() {
            let list: Vec<String> = attachments.iter().map(|a| a.digest.to_string()).collect();
            annotations.insert(super::attach::REFERRERS.to_owned(), list.join(" "));
        }
        entry.set_annotations(Some(annotations));
        let index = ImageIndexBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![entry])
            .build()
            .expect("every field of the index is set");
        let index = serde_json::to_value(&index).expect("JSON");
        fs::write(tmp.join("index.json"), canonical_json(&index)).map_err(io_at(&tmp))?;
        replace_dir(&tmp, dir)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn replace_dir(new: &Path, target: &Path) -> Result<(), ImageError> {
    if target.exists() {
        let old = target.with_file_name(format!(
            ".{}.envbuild-old-{}",
            target.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        fs::rename(target, &old).map_err(io_at(target))?;
        fs::rename(new, target).map_err(io_at(target))?;
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(new, target).map_err(io_at(target))?;
    }
    Ok(())
}

/// Writes the image as a `docker load` archive at `file` (written to a temporary name first).
pub fn write_docker_archive(
    img: &Image,
    cache: &Cache,
    file: &Path,
    repo_tag: &str,
    mtime: u64,
) -> Result<(), ImageError> {
    let layers: Vec<(Digest, u64, PathBuf)> = img
        .layers
        .iter()
        .map(|l| (l.digest, l.size, cache.blob_path(&l.digest)))
        .collect();
    archive(
        file,
        repo_tag,
        mtime,
        &img.config_digest,
        &img.config,
        &layers,
    )
}

/// The image of an OCI layout (as [`pushable_from_oci`] read and verified it) as a `docker
/// load` archive: the same config and layers, so the engine's image ID is the layout's config
/// digest.
pub fn docker_archive_from_pushable(
    p: &Pushable,
    file: &Path,
    repo_tag: &str,
    mtime: u64,
) -> Result<(), ImageError> {
    let Some(((config_digest, _, config_path), layers)) = p.blobs.split_first() else {
        return Err(invalid(file, "the image has no config"));
    };
    let config = fs::read(config_path).map_err(io_at(config_path))?;
    archive(file, repo_tag, mtime, config_digest, &config, layers)
}

/// Writes a docker archive of `config` and the layer blobs at their paths, under a temporary
/// name renamed into place.
fn archive(
    file: &Path,
    repo_tag: &str,
    mtime: u64,
    config_digest: &Digest,
    config: &[u8],
    layers: &[(Digest, u64, PathBuf)],
) -> Result<(), ImageError> {
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    let tmp = sibling_temp(file);
    let result = (|| {
        let f = fs::File::create(&tmp).map_err(io_at(&tmp))?;
        let mut b = tar::Builder::new(io::BufWriter::new(f));
        let mut add = |name: &str, size: u64, r: &mut dyn Read| -> io::Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_path(name)?;
            h.set_size(size);
            h.set_mode(0o644);
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, r)
        };
        let config_name = format!("blobs/sha256/{}", config_digest.hex());
        let layer_names: Vec<String> = layers
            .iter()
            .map(|(d, _, _)| format!("blobs/sha256/{}", d.hex()))
            .collect();
        let manifest = [ArchiveEntry {
            config: config_name.clone(),
            repo_tags: vec![repo_tag.to_owned()],
            layers: layer_names.clone(),
        }];
        let manifest = canonical_json(&serde_json::to_value(manifest).expect("JSON"));
        add("manifest.json", manifest.len() as u64, &mut &manifest[..]).map_err(io_at(&tmp))?;
        add(&config_name, config.len() as u64, &mut &config[..]).map_err(io_at(&tmp))?;
        let mut seen = std::collections::BTreeSet::new();
        for ((d, size, p), name) in layers.iter().zip(&layer_names) {
            if seen.insert(*d) {
                let mut f = fs::File::open(p).map_err(io_at(p))?;
                add(name, *size, &mut f).map_err(io_at(p))?;
            }
        }
        let w = b.into_inner().map_err(io_at(&tmp))?;
        w.into_inner()
            .map_err(|e| ImageError::Io {
                path: tmp.clone(),
                source: e.into_error(),
            })?
            .sync_all()
            .map_err(io_at(&tmp))?;
        fs::rename(&tmp, file).map_err(io_at(file))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
