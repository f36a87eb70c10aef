//! Image references: `registry/repository[:tag][@digest]`, parsed by Docker's rules (no registry
//! part means Docker Hub, whose official images live in `library/`).

use std::fmt;

use thiserror::Error;

use crate::digest::Digest;

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "`{text}` is not an image reference ({why}; expected REGISTRY/REPOSITORY[:TAG][@sha256:…])"
)]
pub struct BadReference {
    pub text: String,
    pub why: String,
}

/// `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = BadReference;
    fn from_str(s: &str) -> Result<Reference, BadReference> {
        let bad = |why: &str| BadReference {
            text: s.to_owned(),
            why: why.to_owned(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?),
            ),
            None => (s, None),
        };
        // Docker's rules: no registry part means Docker Hub, whose official images live in library/.
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => ("docker.io".to_owned(), rest.to_owned()),
        };
        let path = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_owned(), Some(t.to_owned())),
            _ => (path, None),
        };
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        if repository.is_empty() || !repository.chars().all(ok) {
            return Err(bad(
                "repository names are lowercase letters, digits, `.`, `_`, `-`, `/`",
            ));
        }
        if let Some(t) = &tag {
            if t.is_empty()
                || t.len() > 128
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(bad("bad tag"));
            }
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl Reference {
    /// The registry part alone (for `login`): no repository, tag or digest.
    pub fn registry_only(registry: &str) -> Reference {
        Reference {
            registry: registry.to_owned(),
            repository: String::new(),
            tag: None,
            digest: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r: Reference = "127.0.0.1:5000/envbuild/mnist:v1".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "envbuild/mnist", Some("v1"))
        );
        let r: Reference = format!("myacr.azurecr.io/a/b@{}", Digest::of(b""))
            .parse()
            .unwrap();
        assert_eq!((r.tag, r.digest), (None, Some(Digest::of(b""))));
        let r: Reference = "ubuntu:24.04".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/ubuntu", Some("24.04"))
        );
        assert!("reg.io/UPPER".parse::<Reference>().is_err());
        let e = "reg.io/a@sha256:12".parse::<Reference>().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("`reg.io/a@sha256:12` is not an image reference"),
            "{e}"
        );
    }
}
