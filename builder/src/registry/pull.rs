//! Pulling an image pinned by digest into the cache: the index resolved to the platform's
//! manifest, then config and layers (in parallel), each verified by digest and size.

use std::fs;
use std::sync::Mutex;

use serde_json::Value;

use super::{Client, RegistryError};
use crate::cache::Cache;
use crate::digest::Digest;
use crate::image::media;

/// Pulls the image `reference` (pinned by digest) for `os/arch` into the cache; returns the
/// platform manifest's digest, the manifest and the config.
pub fn pull(
    client: &Client,
    digest: &Digest,
    os: &str,
    arch: &str,
    cache: &Cache,
) -> Result<(Digest, Value, Value), RegistryError> {
    let (bytes, mt, d) = client.get_manifest(&digest.to_string())?;
    let what = format!("pull {digest}");
    let mut manifest: Value = serde_json::from_slice(&bytes)
        .map_err(|e| client.protocol(&what, format!("manifest is not JSON: {e}")))?;
    let mut chosen = d;
    if mt == media::INDEX || mt == media::DOCKER_LIST || manifest["manifests"].is_array() {
        let m = manifest["manifests"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|m| m["platform"]["os"] == os && m["platform"]["architecture"] == arch)
                    .cloned()
            })
            .ok_or_else(|| {
                client.protocol(&what, format!("the index has no {os}/{arch} manifest"))
            })?;
        let (b, _, d2) = client.get_manifest(m["digest"].as_str().unwrap_or(""))?;
        manifest = serde_json::from_slice(&b).map_err(|e| client.protocol(&what, e.to_string()))?;
        chosen = d2;
        cache.put_bytes(&b).map_err(|source| RegistryError::Io {
            path: cache.root.clone(),
            source,
        })?;
    } else {
        cache
            .put_bytes(&bytes)
            .map_err(|source| RegistryError::Io {
                path: cache.root.clone(),
                source,
            })?;
    }
    let desc = |v: &Value| -> Result<(Digest, u64), RegistryError> {
        let d = v["digest"]
            .as_str()
            .unwrap_or("")
            .parse::<Digest>()
            .map_err(|e| client.protocol(&what, e.to_string()))?;
        Ok((d, v["size"].as_u64().unwrap_or(0)))
    };
    let (cd, csize) = desc(&manifest["config"])?;
    client.pull_blob(&cd, csize, cache)?;
    let config: Value =
        serde_json::from_slice(&fs::read(cache.blob_path(&cd)).map_err(|source| {
            RegistryError::Io {
                path: cache.blob_path(&cd),
                source,
            }
        })?)
        .map_err(|e| client.protocol(&what, format!("config is not JSON: {e}")))?;
    let layers: Vec<(Digest, u64)> = manifest["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(desc)
        .collect::<Result<_, _>>()?;
    let errors = Mutex::new(Vec::new());
    let queue = Mutex::new(layers);
    std::thread::scope(|s| {
        for _ in 0..client.settings.parallel {
            s.spawn(|| loop {
                let Some((d, size)) = queue.lock().expect("lock").pop() else {
                    return;
                };
                if let Err(e) = client.pull_blob(&d, size, cache) {
                    errors.lock().expect("lock").push(e);
                    return;
                }
            });
        }
    });
    if let Some(e) = errors.into_inner().expect("lock").into_iter().next() {
        return Err(e);
    }
    Ok((chosen, manifest, config))
}
