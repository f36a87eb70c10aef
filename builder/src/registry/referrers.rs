//! Artifacts that refer to an image (distribution-spec 1.1): pushing one — its blobs, then its
//! manifest by digest; a registry that processes `subject` answers `OCI-Subject`, and for one
//! that does not (distribution 2.8) the client keeps the referrers tag schema up to date, an
//! image index at the tag `sha256-<hex>` — and listing them, through the referrers API where
//! the registry has it (ACR does), else through that tag.

use reqwest::header::ACCEPT;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{Client, RegistryError};
use crate::digest::Digest;
use crate::image::{attach, media, Pushable};
use crate::progress::Task;

/// The referrers tag of `subject` (the distribution spec's "Referrers Tag Schema").
pub fn tag_of(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// How an artifact reached the registry's referrers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Listed {
    /// The registry processed `subject` (it answered `OCI-Subject`).
    ReferrersApi,
    /// We added it to the index at the referrers tag.
    TagSchema,
}

/// The descriptor of an artifact manifest, as a referrers index lists it.
fn descriptor(artifact: &Pushable) -> Value {
    let v: Value = serde_json::from_slice(&artifact.manifest).unwrap_or_default();
    let mut d = json!({
        "mediaType": artifact.media_type,
        "digest": Digest::of(&artifact.manifest).to_string(),
        "size": artifact.manifest.len(),
    });
    if let Some(t) = v["artifactType"].as_str() {
        d["artifactType"] = t.into();
    }
    if v["annotations"].is_object() {
        d["annotations"] = v["annotations"].clone();
    }
    d
}

/// Puts `artifact`'s manifest by digest (its blobs must be there already, and its subject);
/// returns whether the registry processed the subject (`OCI-Subject`), i.e. lists it itself.
pub fn put_referrer(client: &Client, artifact: &Pushable) -> Result<bool, RegistryError> {
    let digest = Digest::of(&artifact.manifest);
    let (_, processed) = client.put_manifest(
        &digest.to_string(),
        &artifact.media_type,
        &artifact.manifest,
    )?;
    Ok(processed)
}

/// The index at `subject`'s referrers tag as it is now, or an empty one where there is none
/// (404); an error for anything else there.
pub fn tag_index(client: &Client, subject: &Digest) -> Result<Value, RegistryError> {
    let tag = tag_of(subject);
    let index = match client.get_manifest_opt(&tag)? {
        Some(bytes) => serde_json::from_slice::<Value>(&bytes).map_err(|e| {
            client.protocol(&format!("GET manifest {tag}"), format!("not an index: {e}"))
        })?,
        None => json!({ "schemaVersion": 2, "mediaType": media::INDEX, "manifests": [] }),
    };
    if !index["manifests"].is_array() {
        return Err(client.protocol(&format!("GET manifest {tag}"), "an index without manifests"));
    }
    Ok(index)
}

/// Puts `index` (from [`tag_index`]) back at `subject`'s referrers tag with `artifacts`
/// added, unless it lists them all already: at most one PUT.
pub fn add_to_tag_index(
    client: &Client,
    subject: &Digest,
    mut index: Value,
    artifacts: &[&Pushable],
) -> Result<(), RegistryError> {
    let tag = tag_of(subject);
    let manifests = index["manifests"].as_array_mut().ok_or_else(|| {
        client.protocol(&format!("GET manifest {tag}"), "an index without manifests")
    })?;
    let mut changed = false;
    for artifact in artifacts {
        let entry = descriptor(artifact);
        if !manifests.iter().any(|m| m["digest"] == entry["digest"]) {
            manifests.push(entry);
            changed = true;
        }
    }
    if changed {
        manifests.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
        client.push_manifest(&tag, media::INDEX, &crate::image::canonical_json(&index))?;
    }
    Ok(())
}

/// The referrers of `subject` (descriptors), of `artifact_type` when given: the referrers API,
/// else (404) the tag schema; none when neither has any.
pub fn list(
    client: &Client,
    subject: &Digest,
    artifact_type: Option<&str>,
) -> Result<(Vec<Value>, Listed), RegistryError> {
    let what = format!("GET referrers of {subject}");
    let mut url = client.url(&format!("referrers/{subject}"));
    if let Some(t) = artifact_type {
        url.push_str(&format!("?artifactType={}", crate::http::percent_encode(t)));
    }
    let resp = client.send(&what, &|| {
        Ok(client.http.get(&url).header(ACCEPT, media::INDEX))
    })?;
    let (index, how) = if resp.status() == StatusCode::NOT_FOUND {
        let tag = tag_of(subject);
        match client.get_manifest_opt(&tag)? {
            Some(bytes) => (
                serde_json::from_slice::<Value>(&bytes)
                    .map_err(|e| client.protocol(&what, format!("the index at {tag}: {e}")))?,
                Listed::TagSchema,
            ),
            None => return Ok((Vec::new(), Listed::TagSchema)),
        }
    } else {
        let resp = client.expect(&what, resp, &[StatusCode::OK])?;
        let bytes = crate::http::read_capped(resp, 4 << 20)
            .map_err(|_| client.protocol(&what, "an answer over 4 MiB"))?;
        (
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| client.protocol(&what, format!("not an index: {e}")))?,
            Listed::ReferrersApi,
        )
    };
    // Filtered here too: a registry may ignore the filter (it says so by not sending
    // OCI-Filters-Applied), and the tag schema has none.
    let found = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| artifact_type.is_none_or(|t| m["artifactType"] == t))
        .cloned()
        .collect();
    Ok((found, how))
}

/// The document of the artifact manifest `digest`: its artifact type and bytes, verified.
pub fn document(client: &Client, digest: &Digest) -> Result<(String, Vec<u8>), RegistryError> {
    let what = format!("GET artifact {digest}");
    let (bytes, _, _) = client.get_manifest(&digest.to_string())?;
    let (t, doc, size) = attach::artifact_parts(std::path::Path::new(&what), &bytes)
        .map_err(|e| client.protocol(&what, e.to_string()))?;
    let data = client.get_blob_bytes(&doc, size)?;
    Ok((t, data))
}

/// The artifact manifest `digest` and its blobs, fetched into the cache (verified), as an
/// attachment of the image it refers to.
pub fn fetch_attachment(
    client: &Client,
    digest: &Digest,
    cache: &crate::cache::Cache,
) -> Result<attach::Attachment, RegistryError> {
    let what = format!("GET artifact {digest}");
    let (manifest, _, _) = client.get_manifest(&digest.to_string())?;
    let v: Value = serde_json::from_slice(&manifest)
        .map_err(|e| client.protocol(&what, format!("not JSON: {e}")))?;
    for desc in std::iter::once(&v["config"]).chain(v["layers"].as_array().into_iter().flatten()) {
        let d: Digest = desc["digest"]
            .as_str()
            .unwrap_or("")
            .parse()
            .map_err(|e| client.protocol(&what, format!("a descriptor's digest: {e}")))?;
        client.pull_blob(
            &d,
            desc["size"].as_u64().unwrap_or(0),
            cache,
            &Task::hidden(),
        )?;
    }
    let (artifact_type, doc, size) = attach::artifact_parts(std::path::Path::new(&what), &manifest)
        .map_err(|e| client.protocol(&what, e.to_string()))?;
    cache
        .put_bytes(&manifest)
        .map_err(|source| RegistryError::Io {
            path: cache.root.clone(),
            source,
        })?;
    Ok(attach::Attachment {
        artifact_type,
        manifest,
        digest: *digest,
        payload: (doc, size),
    })
}
