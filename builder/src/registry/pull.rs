//! Pulling an image pinned by digest into the cache: the index resolved to the platform's
//! manifest, then config and layers (in parallel), each verified by digest and size.

use std::fs;
use std::sync::Mutex;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde_json::Value;

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
    let errors = Mutex::new(Vec::new());
    // Every missing layer's task is made here, in order, so the display lists them as the
    // manifest does.
    let mut queue: Vec<(Digest, u64, Task)> = layers
        .into_iter()
        .filter(|(d, _)| {
            let there = cache.has_blob(d);
            if there {
                cache.touch(d);
            }
            !there
        })
        .map(|(d, size)| {
            let t = progress.task(Kind::Download, &d.to_string(), Some(size));
            (d, size, t)
        })
        .collect();
    let downloaded: u64 = queue.iter().map(|(_, size, _)| size).sum();
    // The threads pop the largest first: over capped connections the largest layer is the
    // longest stream, and starting it last would leave the others idle while it finishes.
    queue.sort_by_key(|(_, size, _)| *size);
    let queue = Mutex::new(queue);
    std::thread::scope(|s| {
        for _ in 0..client.settings.parallel {
            s.spawn(|| loop {
                let Some((d, size, task)) = queue.lock().expect("lock").pop() else {
                    return;
                };
                match client.pull_blob(&d, size, cache, &task) {
                    Ok(_) => task.finish("pulled"),
                    Err(e) => {
                        errors.lock().expect("lock").push(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = errors.into_inner().expect("lock").into_iter().next() {
        return Err(e);
    }
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
