//! Code asset versions: an uploaded code snapshot becomes `codes/{name}/versions/{hash}` whose
//! `codeUri` is the https URL of the uploaded folder, and a job's `codeId`. The version is the
//! snapshot's content hash, so the same code is the same version; one that exists with the same
//! `codeUri` is reused, one with another is refused (versions are immutable).

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{json, Value};

use super::{valid_name, AssetKind, AzureError, Client, NameRule};

/// What to register: the folder at `uri` (uploaded and verified before this is made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeVersion {
    pub name: String,
    pub version: String,
    /// `https://{account}.blob.{endpoint}/{container}/LocalUpload/{hash}/{dir}`.
    pub uri: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
}

/// What [`register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 201: a new version.
    Created,
    /// The version was there with this codeUri already.
    Unchanged,
}

/// The code asset's name for a folder called `dir`: its letters, digits, `-` and `_` (others
/// become `-`), starting with a letter or digit; `code` when nothing is left.
pub fn name_for(dir: &str) -> String {
    let s = super::job::name_part(dir);
    if s.is_empty() {
        "code".into()
    } else {
        s
    }
}

impl CodeVersion {
    /// Checks the name and version the service would refuse.
    pub fn check(&self) -> Result<(), AzureError> {
        for (what, v, rule) in [
            ("code name", &self.name, NameRule::Asset),
            ("code version", &self.version, NameRule::Version),
        ] {
            if !valid_name(v) {
                return Err(AzureError::BadName {
                    what,
                    name: v.clone(),
                    rule,
                });
            }
        }
        Ok(())
    }

    /// `codes/{name}/versions/{version}` under the workspace.
    pub fn path(&self) -> String {
        format!("codes/{}/versions/{}", self.name, self.version)
    }

    /// The version's full ARM id (a job's `codeId`).
    pub fn arm_id(&self, ws: &super::Workspace) -> String {
        format!("{}/{}", ws.arm_id(), self.path())
    }

    /// The PUT body (CodeVersionResource).
    pub fn body(&self) -> Value {
        json!({"properties": {
            "codeUri": self.uri,
            "description": self.description,
            "tags": self.tags,
        }})
    }
}

/// GET the version; PUT it when absent. The caller has uploaded and verified the files at
/// `code.uri` first: a version never points at a partial upload.
pub fn register(client: &Client, code: &CodeVersion) -> Result<Outcome, AzureError> {
    code.check()?;
    if let Some(existing) = client.get_opt(&code.path())? {
        let uri = existing["properties"]["codeUri"].as_str().unwrap_or("");
        if uri.trim_end_matches('/') == code.uri.trim_end_matches('/') {
            return Ok(Outcome::Unchanged);
        }
        return Err(AzureError::CodeVersionTaken {
            name: code.name.clone(),
            version: code.version.clone(),
            existing: uri.to_owned(),
            uri: code.uri.clone(),
        });
    }
    match client.ws(Method::PUT, &code.path(), Some(&code.body())) {
        Ok(r) if r.status == 201 => Ok(Outcome::Created),
        Ok(_) => Ok(Outcome::Unchanged),
        Err(AzureError::Arm(a)) if a.status == 409 => Err(AzureError::Conflict {
            kind: AssetKind::Code,
            name: code.name.clone(),
            version: code.version.clone(),
            message: a.message,
            request_id: a.request_id,
        }),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> CodeVersion {
        CodeVersion {
            name: name_for("src"),
            version: "0123456789abcdef0123456789abcdef".into(),
            uri: "https://stenvbuild01.blob.core.windows.net/azureml-blobstore-0123/LocalUpload/0123456789abcdef0123456789abcdef/src".into(),
            description: "envbuild code snapshot of src (2 files, 10 bytes)".into(),
            tags: [(
                "envbuild.snapshot.digest".to_owned(),
                format!("sha256:{}", "0".repeat(64)),
            )]
            .into(),
        }
    }

    #[test]
    fn the_body_and_path_are_the_recorded_shape() {
        let c = code();
        c.check().unwrap();
        assert_eq!(
            c.path(),
            "codes/src/versions/0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            c.body(),
            json!({"properties": {
                "codeUri": c.uri,
                "description": c.description,
                "tags": {"envbuild.snapshot.digest": format!("sha256:{}", "0".repeat(64))},
            }})
        );
        crate::azureml::spec_check::assert_valid("CodeVersionResource", &c.body());
    }

    #[test]
    fn names_are_made_valid_and_bad_ones_refused() {
        assert_eq!(name_for("train"), "train");
        assert_eq!(name_for("my code.v2"), "my-code-v2");
        assert_eq!(name_for("_x"), "x");
        assert_eq!(name_for("..."), "code");
        assert_eq!(name_for("é"), "code");
        assert!(valid_name(&name_for(&"a".repeat(300))));
        let mut bad = code();
        bad.version = "a/b".into();
        assert!(bad.check().unwrap_err().to_string().contains("`a/b`"));
    }
}
