//! Pushing what `envbuild push` and `deploy` are given — an environment file (built first, from
//! the cache) or an OCI layout (`oci:DIR`) — to a repository, recording the blobs in the
//! cache's push ledger so that later pushes to other repositories mount them; and its reverse,
//! `envbuild pull`: an image from a registry into the cache and out as an OCI layout.

use std::path::Path;

use thiserror::Error;

use crate::auth::Credentials;
use crate::build::{self, BuildError, Reporter};
use crate::cache::ledger::PushLedger;
use crate::cache::Cache;
use crate::image::{self, ImageError};
use crate::registry::{self, Client, PushReport, Reference, RegistryError};

/// Why a push could not be done.
#[derive(Debug, Error)]
pub enum PublishError {
    #[error("push destination {0} names a digest; give REGISTRY/REPOSITORY[:TAG]")]
    DigestDestination(String),
    #[error("cache {}: {source}", path.display())]
    Cache {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl crate::error::Hint for PublishError {
    fn hint(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            PublishError::Build(e) => e.hint(),
            PublishError::Registry(e) => e.hint(),
            _ => None,
        }
    }
}

/// Pushes `source` (`oci:DIR` or an environment file) to `dest`; the build's messages and every
/// blob's progress go to `rep`.
pub fn push_source(
    source: &str,
    dest: &Reference,
    credentials: Option<Credentials>,
    cache_root: &Path,
    settings: &build::Settings,
    rep: &mut dyn Reporter,
) -> Result<PushReport, PublishError> {
    if dest.digest.is_some() {
        return Err(PublishError::DigestDestination(dest.to_string()));
    }
    let client = Client::new(dest, credentials, &settings.registry)?.with_ledger(PushLedger {
        dir: cache_root.join("pushed"),
    });
    let image = if let Some(dir) = source.strip_prefix("oci:") {
        image::pushable_from_oci(Path::new(dir))?
    } else {
        let cache = Cache::open(cache_root).map_err(|source| PublishError::Cache {
            path: cache_root.to_path_buf(),
            source,
        })?;
        let (_, built) = build::build_file(Path::new(source), &cache, settings, rep)?;
        image::pushable_from_cache(&built.image, &cache, &built.attachments)
    };
    Ok(registry::push(&client, &image, rep.progress())?)
}

/// What a pull did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PullReport {
    /// `REGISTRY/REPOSITORY@sha256:…` of the platform's manifest.
    pub reference: String,
    pub platform: String,
    pub layers: usize,
    /// Bytes of every layer, and of those that were fetched (the rest were in the cache).
    pub bytes: u64,
    pub downloaded: u64,
    pub seconds: f64,
    pub output: Option<String>,
    /// The artifacts that came along (their manifest digests).
    pub referrers: Vec<String>,
}

/// Pulls `source` (by tag or digest; an index is resolved to `os/arch`) into the cache, then
/// writes it as an OCI layout at `output` when given (tagged with the source's tag, else
/// `latest`). Layers come in parallel, each verified as it streams.
pub fn pull_source(
    source: &Reference,
    credentials: Option<Credentials>,
    cache: &Cache,
    settings: &registry::Settings,
    (os, arch): (&str, &str),
    output: Option<&Path>,
    rep: &mut dyn Reporter,
) -> Result<PullReport, PublishError> {
    let start = std::time::Instant::now();
    let client = Client::new(source, credentials, settings)?;
    let digest = match &source.digest {
        Some(d) => *d,
        None => {
            let tag = source.tag.clone().unwrap_or_else(|| "latest".into());
            let d = client.get_manifest(&tag)?.2;
            rep.message(&format!("{source} is {d}"));
            d
        }
    };
    let pulled = registry::pull(&client, &digest, os, arch, cache, rep.progress())?;
    let chosen = pulled.digest;
    let name = format!("{}/{}", source.registry, source.repository);
    let base = image::base_from_pulled(&name, chosen, &pulled.manifest, pulled.config, cache)?;
    let img = image::Image {
        config: pulled.config_bytes,
        config_digest: pulled.config_digest,
        manifest: pulled.manifest_bytes,
        digest: chosen,
        layers: base.layers,
    };
    // What refers to the image (its SBOM and provenance) comes along into the layout.
    let attachments = match registry::referrers::list(&client, &chosen, None) {
        Ok((found, _)) => {
            let mut out = Vec::new();
            for m in found {
                let Some(d) = m["digest"].as_str().and_then(|d| d.parse().ok()) else {
                    continue;
                };
                out.push(registry::referrers::fetch_attachment(&client, &d, cache)?);
            }
            // Documents first, then statements; each kind by digest: a stable layout.
            out.sort_by(|a, b| {
                let statement =
                    |x: &image::attach::Attachment| x.artifact_type == crate::sbom::IN_TOTO_JSON;
                (statement(a), a.digest).cmp(&(statement(b), b.digest))
            });
            out
        }
        Err(e) => {
            rep.message(&format!(
                "warning: the referrers of {chosen} (SBOM, provenance) could not be listed: {e}"
            ));
            Vec::new()
        }
    };
    if let Some(dir) = output {
        let tag = source.tag.clone().unwrap_or_else(|| "latest".into());
        image::write_oci(&img, cache, dir, &tag, &attachments)?;
        rep.message(&format!("wrote oci:{}", dir.display()));
    }
    Ok(PullReport {
        reference: format!("{name}@{chosen}"),
        platform: format!("{os}/{arch}"),
        layers: img.layers.len(),
        bytes: img.layers.iter().map(|l| l.size).sum(),
        downloaded: pulled.downloaded,
        seconds: start.elapsed().as_secs_f64(),
        output: output.map(|d| format!("oci:{}", d.display())),
        referrers: attachments.iter().map(|a| a.digest.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_registry_error_keeps_its_hint() {
        // PublishError shows a RegistryError transparently, so the RegistryError is not a
        // cause of its own in the chain: the hint must be passed on.
        let e = PublishError::Registry(RegistryError::Status {
            registry: "r.io".into(),
            repository: "a/b".into(),
            what: "HEAD blob".into(),
            status: 401,
            message: "denied".into(),
            hint: Some("check the credentials"),
        });
        assert_eq!(
            crate::error::report(crate::error::chain(&e), crate::hint_of, None),
            "r.io/a/b: HEAD blob: HTTP 401: denied\nhint: check the credentials"
        );
    }
}
