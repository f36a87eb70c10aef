//! A registry with the OCI referrers API, for the tests: an HTTP reverse proxy in front of a
//! real registry ([`crate::Registry`], Debian's docker-registry, distribution 2.8) that adds what
//! distribution 2.8 lacks. It stands in for a registry that implements the OCI
//! distribution-spec v1.1 referrers API (as ACR does) so that clients can be tested on the
//! path where the registry itself keeps the referrers list, not the referrers tag schema.
//!
//! Every request goes to the upstream as it came (method, path, query, headers but `Host`,
//! body) and its answer comes back as it was, with an absolute `Location` that points at the
//! upstream rewritten to point at the proxy. On top of that, following distribution-spec v1.1:
//! - "Pushing Manifests with Subject": a `PUT /v2/<name>/manifests/<reference>` whose manifest
//!   has a `subject`, once the upstream stored it (201), is recorded as a referrer of
//!   `subject.digest` and answered with `OCI-Subject: <subject digest>`, the header that tells
//!   a client the registry processed the subject (so it must not update a referrers tag).
//! - "Listing Referrers" (end-12a, end-12b): `GET /v2/<name>/referrers/<digest>` answers 200
//!   with an image index (`application/vnd.oci.image.index.v1+json`) of the descriptors of the
//!   manifests in `<name>` whose subject is `<digest>`: `artifactType` is the manifest's own, or
//!   for an image manifest without one the config's `mediaType`; the manifest's annotations are
//!   copied. A digest without referrers gives an empty list, never 404; a digest of invalid
//!   syntax gives 400 (`DIGEST_INVALID`, the "Error Codes" format). `?artifactType=` filters,
//!   and the answer then carries `OCI-Filters-Applied: artifactType`. No pagination: the lists
//!   of the tests fit in one page.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::tls::{serve_http, Served};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Hop-by-hop headers (RFC 9110 section 7.6.1) and the framing the proxy redoes itself.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

struct Shared {
    upstream: String,
    addr: String,
    client: reqwest::Client,
    /// (repository, subject digest) → referrer descriptors, in push order.
    referrers: Mutex<HashMap<(String, String), Vec<Value>>>,
    referrers_requests: AtomicUsize,
    subject_puts: AtomicUsize,
}

/// A registry with the referrers API: a proxy on a free loopback port (plain HTTP) in front of
/// a real registry; stopped on drop.
pub struct ReferrersRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    shared: Arc<Shared>,
    _server: Served,
}

impl std::fmt::Debug for ReferrersRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReferrersRegistry")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl ReferrersRegistry {
    /// Starts the proxy in front of the registry at `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> ReferrersRegistry {
        // The port is only known once bound, and the handlers need it (to rewrite Location):
        // the address goes in after the server starts, before anyone knows where it is.
        let shared = Arc::new(OnceLock::<Arc<Shared>>::new());
        let slot = shared.clone();
        let router = Router::new().fallback(move |req: Request| {
            let s = slot.get().expect("proxy started").clone();
            handle(s, req)
        });
        let server = serve_http(router);
        let addr = server.addr.to_string();
        let inner = Arc::new(Shared {
            upstream: upstream.to_owned(),
            addr: addr.clone(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .expect("proxy client"),
            referrers: Mutex::new(HashMap::new()),
            referrers_requests: AtomicUsize::new(0),
            subject_puts: AtomicUsize::new(0),
        });
        let _ = shared.set(inner.clone());
        ReferrersRegistry {
            addr,
            shared: inner,
            _server: server,
        }
    }

    /// How many referrers requests (`GET /v2/<name>/referrers/<digest>`) it answered.
    pub fn referrers_requests(&self) -> usize {
        self.shared.referrers_requests.load(Ordering::SeqCst)
    }

    /// How many manifest PUTs with a `subject` it saw (whatever the upstream answered).
    pub fn subject_puts(&self) -> usize {
        self.shared.subject_puts.load(Ordering::SeqCst)
    }
}

async fn handle(s: Arc<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if req.method() == Method::GET {
        if let Some((name, digest)) = path
            .strip_prefix("/v2/")
            .and_then(|p| p.rsplit_once("/referrers/"))
            .filter(|(name, digest)| !name.is_empty() && !digest.contains('/'))
        {
            let query = Query::<HashMap<String, String>>::try_from_uri(req.uri())
                .map(|q| q.0)
                .unwrap_or_default();
            return referrers(&s, name, digest, query.get("artifactType"));
        }
    }
    let manifest_put = req.method() == Method::PUT
        && path
            .strip_prefix("/v2/")
            .and_then(|p| p.rsplit_once("/manifests/"))
            .is_some_and(|(name, reference)| !name.is_empty() && !reference.contains('/'));
    let name = path
        .strip_prefix("/v2/")
        .and_then(|p| p.rsplit_once("/manifests/"))
        .map(|(name, _)| name.to_owned());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("request body: {e}")).into_response(),
    };
    let referrer = if manifest_put {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(|m| m.get("subject").is_some())
    } else {
        None
    };
    if referrer.is_some() {
        s.subject_puts.fetch_add(1, Ordering::SeqCst);
    }

    let target = format!(
        "http://{}{}",
        s.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut headers = parts.headers.clone();
    for h in HOP.iter().chain(&["host", "content-length"]) {
        headers.remove(*h);
    }
    let mut forward = s
        .client
        .request(parts.method.clone(), &target)
        .headers(headers);
    let has_body = !body.is_empty()
        || parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        forward = forward.body(body.clone());
    }
    let answer = match forward.send().await {
        Ok(a) => a,
        Err(e) => {
            return (StatusCode::BAD_GATEWAY, format!("upstream {target}: {e}")).into_response()
        }
    };
    let status = answer.status();
    let mut out_headers = answer.headers().clone();
    let answer_body = match answer.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("upstream body {target}: {e}"),
            )
                .into_response()
        }
    };
    for h in HOP {
        out_headers.remove(*h);
    }
    rewrite_location(&s, &mut out_headers);

    if let (Some(manifest), Some(name)) = (referrer, name) {
        if status == StatusCode::CREATED {
            if let Some(subject) = record(&s, &name, &manifest, content_type, &body) {
                if let Ok(v) = HeaderValue::from_str(&subject) {
                    out_headers.insert("oci-subject", v);
                }
            }
        }
    }
    let mut response = Response::new(Body::from(answer_body));
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    response
}

/// An absolute `Location` on the upstream's address points at the proxy instead.
fn rewrite_location(s: &Shared, headers: &mut HeaderMap) {
    let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    for scheme in ["http://", "https://"] {
        let from = format!("{scheme}{}", s.upstream);
        if let Some(rest) = location.strip_prefix(&from) {
            if rest.is_empty() || rest.starts_with(['/', '?', '#']) {
                let to = format!("http://{}{rest}", s.addr);
                if let Ok(v) = HeaderValue::from_str(&to) {
                    headers.insert(header::LOCATION, v);
                }
                return;
            }
        }
    }
}

/// Records the pushed manifest `body` as a referrer of its subject in `name`; returns the
/// subject digest (for `OCI-Subject`), or None when the subject has no digest.
fn record(
    s: &Shared,
    name: &str,
    manifest: &Value,
    content_type: Option<String>,
    body: &Bytes,
) -> Option<String> {
    let subject = manifest.get("subject")?.get("digest")?.as_str()?.to_owned();
    let media_type = manifest
        .get("mediaType")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or(content_type)
        .unwrap_or_default();
    let digest = envbuild::digest::Digest::of(body).to_string();
    let mut descriptor = json!({
        "mediaType": media_type,
        "digest": digest,
        "size": body.len(),
    });
    // The manifest's own artifactType; else, for an image manifest (not an index), its config's
    // mediaType; an index without one gets none.
    let artifact_type = manifest
        .get("artifactType")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .or_else(|| {
            if media_type == INDEX || manifest.get("manifests").is_some() {
                None
            } else {
                manifest
                    .get("config")
                    .and_then(|c| c.get("mediaType"))
                    .and_then(Value::as_str)
            }
        });
    if let Some(t) = artifact_type {
        descriptor["artifactType"] = json!(t);
    }
    if let Some(a) = manifest.get("annotations").filter(|a| a.is_object()) {
        descriptor["annotations"] = a.clone();
    }
    let mut all = s.referrers.lock().expect("lock");
    let list = all.entry((name.to_owned(), subject.clone())).or_default();
    // The same manifest pushed again (e.g. by tag and by digest) is listed once.
    list.retain(|d| d["digest"] != json!(digest));
    list.push(descriptor);
    Some(subject)
}

fn referrers(s: &Shared, name: &str, digest: &str, artifact_type: Option<&String>) -> Response {
    s.referrers_requests.fetch_add(1, Ordering::SeqCst);
    if digest.parse::<envbuild::digest::Digest>().is_err() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": [{
                "code": "DIGEST_INVALID",
                "message": format!("invalid digest `{digest}`: expected sha256:<64 hex digits>"),
            }]})),
        )
            .into_response();
    }
    let manifests: Vec<Value> = s
        .referrers
        .lock()
        .expect("lock")
        .get(&(name.to_owned(), digest.to_owned()))
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| artifact_type.is_none_or(|t| d["artifactType"].as_str() == Some(t)))
        .collect();
    let body = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(INDEX))],
        body.to_string(),
    )
        .into_response();
    if artifact_type.is_some() {
        response.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use envbuild::digest::Digest;
    use reqwest::blocking::Client;

    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    /// Uploads `blob` to repository t/r through `base` (POST, then PUT ?digest=).
    fn push_blob(client: &Client, base: &str, blob: &[u8]) -> String {
        let digest = Digest::of(blob).to_string();
        let started = client
            .post(format!("{base}/v2/t/r/blobs/uploads/"))
            .header(header::CONTENT_LENGTH, "0")
            .send()
            .unwrap();
        assert_eq!(started.status(), StatusCode::ACCEPTED);
        assert!(started.headers().contains_key("docker-upload-uuid"));
        let location = started.headers()[header::LOCATION].to_str().unwrap();
        assert!(
            location.starts_with('/') || location.starts_with(base),
            "Location {location} does not point at the proxy {base}"
        );
        let url = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location.to_owned()
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let done = client
            .put(format!("{url}{sep}digest={digest}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(blob.to_vec())
            .send()
            .unwrap();
        assert_eq!(done.status(), StatusCode::CREATED, "{:?}", done.text());
        digest
    }

    fn referrers_of(client: &Client, base: &str, digest: &str, query: &str) -> (HeaderMap, Value) {
        let r = client
            .get(format!("{base}/v2/t/r/referrers/{digest}{query}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], INDEX);
        let headers = r.headers().clone();
        let body: Value = r.json().unwrap();
        assert_eq!(body["schemaVersion"], 2);
        assert_eq!(body["mediaType"], INDEX);
        (headers, body)
    }

    #[test]
    fn referrers_api_over_distribution() {
        let registry = crate::Registry::start(None);
        let proxy = ReferrersRegistry::start(&registry.addr);
        let base = format!("http://{}", proxy.addr);
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();

        // A tiny image through the proxy.
        let config = push_blob(&client, &base, b"{}");
        assert_eq!(
            config,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        let layer_bytes = b"a small layer".to_vec();
        let layer = push_blob(&client, &base, &layer_bytes);
        let image = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_bytes.len()}],
        })
        .to_string();
        let image_digest = Digest::of(image.as_bytes()).to_string();
        let put = client
            .put(format!("{base}/v2/t/r/manifests/v1"))
            .header(header::CONTENT_TYPE, MANIFEST)
            .body(image.clone())
            .send()
            .unwrap();
        assert_eq!(put.status(), StatusCode::CREATED, "{:?}", put.text());
        assert!(!put.headers().contains_key("oci-subject"));
        assert_eq!(
            put.headers()["docker-content-digest"],
            image_digest.as_str()
        );

        // Nothing refers to it yet: an empty list, not 404.
        let (_, empty) = referrers_of(&client, &base, &image_digest, "");
        assert_eq!(empty["manifests"], json!([]));

        // An SBOM artifact with the image as its subject, pushed by digest.
        let artifact = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": "application/spdx+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
            "layers": [{"mediaType": "application/spdx+json", "digest": layer, "size": layer_bytes.len()}],
            "subject": {"mediaType": MANIFEST, "digest": image_digest, "size": image.len()},
            "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        })
        .to_string();
        let artifact_digest = Digest::of(artifact.as_bytes()).to_string();
        let put = client
            .put(format!("{base}/v2/t/r/manifests/{artifact_digest}"))
            .header(header::CONTENT_TYPE, MANIFEST)
            .body(artifact.clone())
            .send()
            .unwrap();
        assert_eq!(put.status(), StatusCode::CREATED, "{:?}", put.text());
        assert_eq!(put.headers()["oci-subject"], image_digest.as_str());
        let location = put.headers()[header::LOCATION].to_str().unwrap();
        assert!(
            !location.contains(&registry.addr),
            "Location {location} points at the upstream"
        );
        assert_eq!(proxy.subject_puts(), 1);

        let expected = json!([{
            "mediaType": MANIFEST,
            "digest": artifact_digest,
            "size": artifact.len(),
            "artifactType": "application/spdx+json",
            "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        }]);
        let (headers, listed) = referrers_of(&client, &base, &image_digest, "");
        assert_eq!(listed["manifests"], expected);
        assert!(!headers.contains_key("oci-filters-applied"));
        let (headers, filtered) = referrers_of(
            &client,
            &base,
            &image_digest,
            // Form-encoded, as registries (Go's url.Query) decode it: a bare `+` is a space.
            "?artifactType=application/spdx%2Bjson",
        );
        assert_eq!(filtered["manifests"], expected);
        assert_eq!(headers["oci-filters-applied"], "artifactType");
        let (headers, other) = referrers_of(&client, &base, &image_digest, "?artifactType=other");
        assert_eq!(other["manifests"], json!([]));
        assert_eq!(headers["oci-filters-applied"], "artifactType");

        // An unknown subject: an empty list; a malformed digest: 400 DIGEST_INVALID.
        let unknown = Digest::of(b"nothing refers to this").to_string();
        let (_, none) = referrers_of(&client, &base, &unknown, "");
        assert_eq!(none["manifests"], json!([]));
        let bad = client
            .get(format!("{base}/v2/t/r/referrers/sha256:nothex"))
            .send()
            .unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let error: Value = bad.json().unwrap();
        assert_eq!(error["errors"][0]["code"], "DIGEST_INVALID");
        assert_eq!(proxy.referrers_requests(), 6);

        // The upstream really stored the artifact, byte for byte.
        let direct = client
            .get(format!(
                "http://{}/v2/t/r/manifests/{artifact_digest}",
                registry.addr
            ))
            .header(header::ACCEPT, MANIFEST)
            .send()
            .unwrap();
        assert_eq!(direct.status(), StatusCode::OK, "{}", registry.log());
        assert_eq!(direct.bytes().unwrap().as_ref(), artifact.as_bytes());

        // Reads through the proxy pass unchanged, HEAD included.
        let head = client
            .head(format!("{base}/v2/t/r/manifests/v1"))
            .header(header::ACCEPT, MANIFEST)
            .send()
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(
            head.headers()["docker-content-digest"],
            image_digest.as_str()
        );
        assert_eq!(
            head.headers()[header::CONTENT_LENGTH],
            image.len().to_string().as_str()
        );
    }
}
