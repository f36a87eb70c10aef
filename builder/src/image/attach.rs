//! Artifacts that refer to an image (OCI image-spec 1.1 `subject`): an SBOM, a provenance
//! statement. Each is an image manifest with an `artifactType`, the empty config and one layer
//! (the document). In an OCI layout they are blobs, listed in the image's index entry by the
//! annotation [`REFERRERS`] — not as index entries of their own, so that single-image tools
//! (skopeo, umoci: `oci:DIR` without a tag) keep reading the layout as one image.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{canonical_json, invalid, media, Image, ImageError, Pushable};
use crate::cache::Cache;
use crate::digest::Digest;

/// The index annotation of an image entry: its referrers' manifest digests, space-separated.
pub const REFERRERS: &str = "dev.envbuild.referrers";
/// The empty JSON config of an artifact (image-spec 1.1 "Guidance for an Empty Descriptor").
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_JSON: &[u8] = b"{}";

/// An artifact whose `subject` is the image; its blobs are in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub artifact_type: String,
    pub manifest: Vec<u8>,
    pub digest: Digest,
    /// The document: digest and size.
    pub payload: (Digest, u64),
}

/// Makes the artifact of `payload` (of media type `artifact_type`) for `subject` in the cache.
pub fn attach(
    cache: &Cache,
    subject: &Image,
    artifact_type: &str,
    payload: &[u8],
    created: u64,
) -> std::io::Result<Attachment> {
    let empty = cache.put_bytes(EMPTY_JSON)?;
    let doc = cache.put_bytes(payload)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::MANIFEST,
        "artifactType": artifact_type,
        "config": { "mediaType": EMPTY, "digest": empty.to_string(), "size": EMPTY_JSON.len(), "data": "e30=" },
        "layers": [{ "mediaType": artifact_type, "digest": doc.to_string(), "size": payload.len() }],
        "subject": { "mediaType": media::MANIFEST, "digest": subject.digest.to_string(), "size": subject.manifest.len() },
        "annotations": { "org.opencontainers.image.created": super::rfc3339(created) },
    });
    let manifest = canonical_json(&manifest);
    let digest = cache.put_bytes(&manifest)?;
    Ok(Attachment {
        artifact_type: artifact_type.to_owned(),
        manifest,
        digest,
        payload: (doc, payload.len() as u64),
    })
}

impl Attachment {
    /// The artifact as the registry client pushes it (blobs from the cache).
    pub fn pushable(&self, cache: &Cache) -> Pushable {
        let empty = Digest::of(EMPTY_JSON);
        Pushable {
            manifest: self.manifest.clone(),
            media_type: media::MANIFEST.into(),
            blobs: vec![
                (empty, EMPTY_JSON.len() as u64, cache.blob_path(&empty)),
                (
                    self.payload.0,
                    self.payload.1,
                    cache.blob_path(&self.payload.0),
                ),
            ],
            referrers: Vec::new(),
            verify: false,
        }
    }

    /// The blobs an OCI layout needs for it: (digest, file in the cache).
    pub fn blobs(&self, cache: &Cache) -> Vec<(Digest, PathBuf)> {
        let empty = Digest::of(EMPTY_JSON);
        vec![
            (empty, cache.blob_path(&empty)),
            (self.payload.0, cache.blob_path(&self.payload.0)),
            (self.digest, cache.blob_path(&self.digest)),
        ]
    }
}

/// One referrer read back: its artifact type, manifest digest and the document's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub artifact_type: String,
    pub manifest: Digest,
    pub document: Vec<u8>,
}

/// An artifact manifest's type and its one document's descriptor (`path` names it in errors).
pub fn artifact_parts(path: &Path, manifest: &[u8]) -> Result<(String, Digest, u64), ImageError> {
    let v: serde_json::Value = super::parse(path, manifest)?;
    let layer = &v["layers"][0];
    let t = v["artifactType"]
        .as_str()
        .or_else(|| layer["mediaType"].as_str())
        .ok_or_else(|| invalid(path, "an artifact manifest without artifactType"))?;
    let d: Digest = layer["digest"]
        .as_str()
        .unwrap_or("")
        .parse()
        .map_err(|e| invalid(path, format!("its document's digest: {e}")))?;
    let size = layer["size"]
        .as_u64()
        .ok_or_else(|| invalid(path, "its document has no size"))?;
    Ok((t.to_owned(), d, size))
}

/// The referrers an OCI layout records for its image (see [`REFERRERS`]), documents verified.
pub fn layout_referrers(dir: &Path) -> Result<Vec<Referrer>, ImageError> {
    let index_path = dir.join("index.json");
    let index: serde_json::Value = super::base::read_doc(&index_path)?;
    let list = index["manifests"][0]["annotations"][REFERRERS]
        .as_str()
        .unwrap_or("");
    let mut out = Vec::new();
    for d in list.split_whitespace() {
        let d: Digest = d
            .parse()
            .map_err(|e| invalid(&index_path, format!("{REFERRERS}: {e}")))?;
        let (path, manifest) = super::base::layout_blob(dir, &d, None)?;
        let (artifact_type, doc, size) = artifact_parts(&path, &manifest)?;
        let (_, document) = super::base::layout_blob(dir, &doc, Some(size))?;
        out.push(Referrer {
            artifact_type,
            manifest: d,
            document,
        });
    }
    Ok(out)
}
