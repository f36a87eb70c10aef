//! Pushing what `envbuild push` and `deploy` are given — an environment file (built first, from
//! the cache) or an OCI layout (`oci:DIR`) — to a repository, recording the blobs in the
//! cache's push ledger so that later pushes to other repositories mount them.

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
