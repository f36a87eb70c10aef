//! Environment versions: a pushed image, pinned by digest, becomes `{name}/versions/{version}`
//! where the version is derived from the digest — registering the same image again changes
//! nothing, a new image is a new version, and Azure ML never builds anything.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use reqwest::Method;
use serde_json::{json, Value};

use super::{valid_name, AssetKind, AzureError, Client, NameRule};
use crate::registry::Reference;

/// What to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentVersion {
    pub name: String,
    pub version: String,
    /// `registry/repository@sha256:…` (a tag, if any, is dropped: the digest is what runs).
    pub image: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
}

/// What `register` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 201: a new version.
    Created,
    /// The version was there with this image already.
    Unchanged,
}

/// Refuses names Azure ML reserves or cannot hold.
pub fn check_name(name: &str) -> Result<(), AzureError> {
    if !valid_name(name) {
        return Err(AzureError::BadName {
            what: "environment name",
            name: name.to_owned(),
            rule: NameRule::Environment,
        });
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("azureml") || lower.starts_with("microsoft") {
        return Err(AzureError::ReservedName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// The version for an image digest: its first 12 hex digits (a valid asset version; the same
/// image always gives the same version, another image another one).
pub fn version_for(digest: &crate::digest::Digest) -> String {
    digest.hex()[..12].to_owned()
}

impl EnvironmentVersion {
    /// From a pushed reference, which must carry a digest.
    pub fn new(
        name: &str,
        image: &str,
        description: Option<String>,
        revision: Option<String>,
    ) -> Result<EnvironmentVersion, AzureError> {
        check_name(name)?;
        let r: Reference = image.parse()?;
        let Some(digest) = r.digest else {
            return Err(AzureError::NoDigest {
                image: image.to_owned(),
            });
        };
        let pinned = format!("{}/{}@{digest}", r.registry, r.repository);
        let mut tags = BTreeMap::new();
        tags.insert("envbuild.image.digest".to_owned(), digest.to_string());
        if let Some(rev) = revision.filter(|r| !r.is_empty() && r != "unknown") {
            tags.insert("envbuild.source.revision".to_owned(), rev);
        }
        Ok(EnvironmentVersion {
            name: name.to_owned(),
            version: version_for(&digest),
            description: description.unwrap_or_else(|| {
                format!("envbuild image {pinned} (prebuilt; no Azure ML build)")
            }),
            image: pinned,
            tags,
        })
    }

    /// The PUT body.
    pub fn body(&self) -> Value {
        json!({"properties": {
            "image": self.image,
            "description": self.description,
            "tags": self.tags,
            "osType": "Linux",
        }})
    }

    /// `environments/{name}/versions/{version}` under the workspace.
    pub fn path(&self) -> String {
        format!("environments/{}/versions/{}", self.name, self.version)
    }

    /// The version's full ARM id (what jobs reference).
    pub fn arm_id(&self, ws: &super::Workspace) -> String {
        format!("{}/{}", ws.arm_id(), self.path())
    }

    /// The Azure ML CLI v2 YAML (`az ml environment create -f`). Values are written as JSON
    /// strings, which YAML reads as double-quoted scalars.
    pub fn yaml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut y = String::from(
            "$schema: https://azuremlschemas.azureedge.net/latest/environment.schema.json\n",
        );
        y += &format!("name: {}\n", q(&self.name));
        y += &format!("version: {}\n", q(&self.version));
        y += &format!("image: {}\n", q(&self.image));
        y += &format!("description: {}\n", q(&self.description));
        y += "os_type: linux\n";
        if !self.tags.is_empty() {
            y += "tags:\n";
            for (k, v) in &self.tags {
                y += &format!("  {}: {}\n", q(k), q(v));
            }
        }
        y
    }
}

/// Writes the YAML to `path` through a temporary file in the same directory.
pub fn write_yaml(env: &EnvironmentVersion, path: &Path) -> Result<(), AzureError> {
    let io = |source| AzureError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(env.yaml().as_bytes()).map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// GET the version; PUT it when absent. The same image already registered is a no-op; another
/// image under the same version (a 12-digit collision) or a 409 is explained.
pub fn register(client: &Client, env: &EnvironmentVersion) -> Result<Outcome, AzureError> {
    if let Some(existing) = client.get_opt(&env.path())? {
        let image = existing["properties"]["image"].as_str().unwrap_or("");
        if image == env.image {
            return Ok(Outcome::Unchanged);
        }
        return Err(AzureError::VersionTaken {
            name: env.name.clone(),
            version: env.version.clone(),
            existing: image.to_owned(),
            image: env.image.clone(),
        });
    }
    match client.ws(Method::PUT, &env.path(), Some(&env.body())) {
        Ok(r) if r.status == 201 => Ok(Outcome::Created),
        Ok(_) => Ok(Outcome::Unchanged),
        Err(AzureError::Arm(a)) if a.status == 409 => Err(AzureError::Conflict {
            kind: AssetKind::Environment,
            name: env.name.clone(),
            version: env.version.clone(),
            message: a.message,
            request_id: a.request_id,
        }),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn version_is_derived_from_the_digest_and_is_a_valid_name() {
        let e = EnvironmentVersion::new(
            "envbuild-mnist",
            &format!("my.azurecr.io/envbuild/mnist:v1@{D}"),
            None,
            Some("abc123".into()),
        )
        .unwrap();
        assert_eq!(e.version, "0123456789ab");
        assert!(valid_name(&e.version));
        assert_eq!(e.image, format!("my.azurecr.io/envbuild/mnist@{D}"));
        assert_eq!(
            e.path(),
            "environments/envbuild-mnist/versions/0123456789ab"
        );
        assert_eq!(
            e.body(),
            json!({"properties": {
                "image": format!("my.azurecr.io/envbuild/mnist@{D}"),
                "description": format!("envbuild image my.azurecr.io/envbuild/mnist@{D} (prebuilt; no Azure ML build)"),
                "tags": {"envbuild.image.digest": D, "envbuild.source.revision": "abc123"},
                "osType": "Linux",
            }})
        );
        let other = D.replace("sha256:0", "sha256:f");
        let e2 = EnvironmentVersion::new(
            "envbuild-mnist",
            &format!("my.azurecr.io/x@{other}"),
            None,
            None,
        )
        .unwrap();
        assert_ne!(e2.version, e.version);
        assert!(!e2.tags.contains_key("envbuild.source.revision"));
    }

    #[test]
    fn refuses_tags_without_digest_and_reserved_or_bad_names() {
        let e = EnvironmentVersion::new("x", "my.azurecr.io/envbuild/mnist:v1", None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no digest"), "{e}");
        for name in [
            "AzureML-pytorch",
            "azureml_x",
            "Microsoft-thing",
            "-x",
            "a.b",
        ] {
            let e = EnvironmentVersion::new(name, &format!("r.io/x@{D}"), None, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{name}`")), "{e}");
        }
    }

    #[test]
    fn yaml_has_the_cli_v2_fields_and_is_written_atomically() {
        let e = EnvironmentVersion::new(
            "env-1",
            &format!("r.io/x@{D}"),
            Some("say \"hi\"".into()),
            None,
        )
        .unwrap();
        let y = e.yaml();
        assert!(y.starts_with(
            "$schema: https://azuremlschemas.azureedge.net/latest/environment.schema.json\nname: \"env-1\"\nversion: \"0123456789ab\"\n"
        ), "{y}");
        assert!(y.contains(&format!("image: \"r.io/x@{D}\"\n")), "{y}");
        assert!(y.contains("description: \"say \\\"hi\\\"\"\n"), "{y}");
        assert!(y.contains("os_type: linux\n"), "{y}");
        assert!(
            y.contains(&format!("tags:\n  \"envbuild.image.digest\": \"{D}\"\n")),
            "{y}"
        );
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("env.yml");
        write_yaml(&e, &p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), y);
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        let bad = t.path().join("missing/dir/env.yml");
        assert!(write_yaml(&e, &bad).is_err());
    }
}
