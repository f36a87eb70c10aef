//! Pulling an image pinned by digest into the cache: the index resolved to the platform's
//! manifest, then config and layers (in parallel, large ones in ranges: [`super::fetch`]),
//! each verified by digest and size.

use std::fs;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde_json::Value;

use super::fetch::Wanted;
use super::{Client, RegistryError};
use crate::cache::Cache;
use crate::digest::Digest;
use crate::image::media;
use crate::progress::{Kind, Progress, Task};

/// A pulled image: the platform manifest's digest, the manifest, the config (a value: the
/// build keeps its keys), and the layer bytes that were fetched (the rest were cached).
#[derive(Debug, Clone)]
pub struct Pulled {
    pub digest: Digest,
    pub manifest: ImageManifest,
    /// The manifest's bytes as stored (its digest is `digest`).
    pub manifest_bytes: Vec<u8>,
    pub config: Value,
    pub config_digest: Digest,
    pub config_bytes: Vec<u8>,
    pub downloaded: u64,
}

/// Pulls the image `reference` (pinned by digest) for `os/arch` into the cache. Each layer the
/// cache lacks is a download task of `progress`.
pub fn pull(
    client: &Client,
    digest: &Digest,
    os: &str,
    arch: &str,
    cache: &Cache,
    progress: &dyn Progress,
) -> Result<Pulled, RegistryError> {
    let (bytes, mt, d) = client.get_manifest(&digest.to_string())?;
    let what = format!("pull {digest}");
    let io = |source| RegistryError::Io {
        path: cache.root.clone(),
        source,
    };
    let desc = |v: &Descriptor| -> Result<(Digest, u64), RegistryError> {
        let d = v
            .digest()
            .to_string()
            .parse::<Digest>()
            .map_err(|e| client.protocol(&what, e.to_string()))?;
        Ok((d, v.size()))
    };
    let (chosen, manifest_bytes) = match serde_json::from_slice::<ImageIndex>(&bytes) {
        Ok(index) if media::is_index(&mt) || !index.manifests().is_empty() => {
            let m = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == os && p.architecture().to_string() == arch
                    })
                })
                .ok_or_else(|| {
                    client.protocol(&what, format!("the index has no {os}/{arch} manifest"))
                })?;
            let (b, _, d2) = client.get_manifest(&desc(m)?.0.to_string())?;
            (d2, b)
        }
        _ => (d, bytes),
    };
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| client.protocol(&what, format!("manifest is not JSON: {e}")))?;
    cache.put_bytes(&manifest_bytes).map_err(io)?;
    let (cd, csize) = desc(manifest.config())?;
    client.pull_blob(&cd, csize, cache, &Task::hidden())?;
    let config_bytes = fs::read(cache.blob_path(&cd)).map_err(|source| RegistryError::Io {
        path: cache.blob_path(&cd),
        source,
    })?;
    let config: Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| client.protocol(&what, format!("config is not JSON: {e}")))?;
    let layers: Vec<(Digest, u64)> = manifest
        .layers()
        .iter()
        .map(desc)
        .collect::<Result<_, _>>()?;
    // Every missing layer's task is made here, in order, so the display lists them as the
    // manifest does.
    let wanted: Vec<Wanted> = layers
        .into_iter()
        .filter(|(d, _)| {
            let there = cache.has_blob(d);
            if there {
                cache.touch(d);
            }
            !there
        })
        .map(|(digest, size)| Wanted {
            digest,
            size,
            task: progress.task(Kind::Download, &digest.to_string(), Some(size)),
        })
        .collect();
    let downloaded: u64 = wanted.iter().map(|w| w.size).sum();
    super::fetch::fetch(client, wanted, cache)?;
    Ok(Pulled {
        digest: chosen,
        manifest,
        manifest_bytes,
        config,
        config_digest: cd,
        config_bytes,
        downloaded,
    })
}
