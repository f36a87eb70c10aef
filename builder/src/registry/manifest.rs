//! Manifests: put under a tag or digest (the registry's `Docker-Content-Digest` checked), and
//! fetched by digest (verified) or tag, with the media type the registry or the document names.

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;

use super::{Client, RegistryError};
use crate::digest::Digest;
use crate::image::media;

/// The largest manifest read (distribution and ACR refuse larger ones).
const MAX_MANIFEST: u64 = 4 << 20;

impl Client {
    /// Puts a manifest under `reference` (a tag or a digest); checks the registry's digest.
    pub fn push_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        Ok(self.put_manifest(reference, media_type, bytes)?.0)
    }

    /// [`Self::push_manifest`], also saying whether the registry processed a `subject` (it
    /// answered with `OCI-Subject`, as registries with the referrers API do).
    pub fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(Digest, bool), RegistryError> {
        let what = format!("PUT manifest {reference}");
        let url = self.url(&format!("manifests/{reference}"));
        let body = bytes.to_vec();
        let resp = self.send(&what, &|| {
            Ok(self
                .http
                .put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(body.clone()))
        })?;
        // The distribution spec: `201 Created` with the manifest's `Location`.
        let resp = self.expect(&what, resp, &[StatusCode::CREATED])?;
        self.location(&what, &resp)?;
        let ours = Digest::of(bytes);
        if let Some(theirs) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if theirs != ours.to_string() {
                return Err(self.protocol(
                    &what,
                    format!(
                        "registry stored {}, expected {ours}",
                        crate::error::printable(theirs, 100)
                    ),
                ));
            }
        }
        let subject = resp.headers().contains_key("oci-subject");
        Ok((ours, subject))
    }

    /// Fetches a manifest or index by digest (verified) or tag; returns bytes, media type, digest.
    pub fn get_manifest(
        &self,
        reference: &str,
    ) -> Result<(Vec<u8>, String, Digest), RegistryError> {
        let what = format!("GET manifest {reference}");
        let url = self.url(&format!("manifests/{reference}"));
        let accept = [
            media::MANIFEST,
            media::INDEX,
            media::DOCKER_MANIFEST,
            media::DOCKER_LIST,
        ]
        .join(", ");
        let resp = self.send(&what, &|| {
            Ok(self.http.get(&url).header(ACCEPT, accept.clone()))
        })?;
        let resp = self.expect(&what, resp, &[StatusCode::OK])?;
        let mt = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = crate::http::read_capped(resp, MAX_MANIFEST).map_err(|e| match e {
            None => self.protocol(
                &what,
                format!(
                    "the manifest is larger than {} MiB, the registries' limit",
                    MAX_MANIFEST >> 20
                ),
            ),
            Some(e) => self.protocol(&what, format!("reading the manifest: {e}")),
        })?;
        let d = Digest::of(&bytes);
        if let Ok(want) = reference.parse::<Digest>() {
            if want != d {
                return Err(self.protocol(
                    &what,
                    format!("the registry answered content with digest {d}"),
                ));
            }
        }
        let mt = media::declared(&bytes).unwrap_or(mt);
        Ok((bytes, mt, d))
    }

    /// [`Self::get_manifest`] of a tag that may not exist: `None` for 404.
    pub fn get_manifest_opt(&self, tag: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        match self.get_manifest(tag) {
            Ok((bytes, _, _)) => Ok(Some(bytes)),
            Err(RegistryError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
