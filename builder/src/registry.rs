//! The OCI distribution client (reqwest): pull by digest into the cache, push blobs (HEAD to
//! skip, monolithic for small blobs, chunked PATCHes with explicit Content-Length and
//! `Content-Range: start-end` for large ones, resumed from the registry's `Range`), the manifest
//! last; Basic and Bearer-challenge authentication; retries with backoff on 408/429/5xx and
//! connection errors, honouring Retry-After.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    LOCATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::cache::Cache;
use crate::digest::Digest;
use crate::image::{INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Blobs up to the chunk size go up in one request; larger ones in PATCHes of that size. The
/// default follows what each service accepts: ACR answers 413 to single requests over ~20 MB,
/// GHCR 416 to PATCH bodies over 4 MiB; elsewhere (ECR wants ≥ 5 MB, self-hosted distribution
/// anything) large chunks cost the fewest round trips and registry-side hash checkpoints.
pub fn default_chunk(registry: &str) -> u64 {
    let host = registry.split(':').next().unwrap_or(registry);
    if is_acr(registry) {
        16 << 20
    } else if host == "ghcr.io" {
        4 << 20
    } else {
        128 << 20
    }
}

/// A secret (password, token) that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Credentials for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: Secret,
    },
    /// An identity (refresh) token, exchanged at the token endpoint.
    IdentityToken(Secret),
    /// Microsoft Entra ID through the credential chain ([`crate::credential`]): an Entra token
    /// for the ACR audience, exchanged at `/oauth2/exchange` for an ACR refresh token.
    Entra,
}

/// Username under which Docker's config and ACR carry an ACR refresh token as the password.
pub const ACR_TOKEN_USERNAME: &str = "00000000-0000-0000-0000-000000000000";

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
    type Err = String;
    fn from_str(s: &str) -> Result<Reference, String> {
        let bad = |why: &str| {
            format!("`{s}` is not an image reference ({why}; expected REGISTRY/REPOSITORY[:TAG][@sha256:…])")
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

/// Why a registry operation failed; every variant names registry and repository.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("{registry}/{repository}: {what}: HTTP {status}: {message}{}", hint.map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Status {
        registry: String,
        repository: String,
        what: String,
        status: u16,
        message: String,
        hint: Option<&'static str>,
    },
    #[error("{registry}/{repository}: {what}: {message}")]
    Protocol {
        registry: String,
        repository: String,
        what: String,
        message: String,
    },
    #[error("{registry}/{repository}: cannot connect ({what}): {source}\nhint: is the registry up and the address right? Plain HTTP is used only for loopback or --insecure-registry")]
    Connect {
        registry: String,
        repository: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{registry}/{repository}: no Microsoft Entra ID token for the registry")]
    Entra {
        registry: String,
        repository: String,
        #[source]
        source: crate::credential::CredentialError,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Hosts (host or host:port) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Extra CA certificate (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Blob size above which uploads are chunked, and the chunk size.
    pub chunk: u64,
    /// Parallel blob transfers.
    pub parallel: usize,
    /// Attempts per request for retryable failures.
    pub attempts: u32,
}

/// What [`Client::send_with`] needs of an answer: its status and headers, and its body as text
/// for an error message.
trait Reply {
    fn status(&self) -> StatusCode;
    fn headers(&self) -> &HeaderMap;
    fn into_text(self) -> String;
}

impl Reply for Response {
    fn status(&self) -> StatusCode {
        Response::status(self)
    }
    fn headers(&self) -> &HeaderMap {
        Response::headers(self)
    }
    fn into_text(self) -> String {
        self.text().unwrap_or_default()
    }
}

/// One attempt of a request with the given token: the HTTP outcome, or an error before sending.
type Attempt<'a, R> =
    dyn Fn(Option<&Secret>) -> Result<Result<R, reqwest::Error>, RegistryError> + 'a;

/// An answer to an upload, read whole (upload answers carry headers and at most an error).
#[derive(Debug)]
struct Uploaded {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply for Uploaded {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    fn into_text(self) -> String {
        self.body
    }
}

/// Sends blob uploads: reqwest's async client on a runtime of its own, so that the body streams
/// from the file in 1 MiB reads. (The blocking client's bodies go in 8 KiB pieces, one channel
/// hand-off and one write each: measured here, 5 s of system time per 2.4 GB pushed, on a
/// 2-core machine where the registry needs those cycles.) One per [`Client`], made on the first
/// upload: the parallel transfers share its runtime and its pool of connections.
#[derive(Debug)]
struct Uploader {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Uploader {
    fn send(
        &self,
        rb: reqwest::RequestBuilder,
        authorization: Option<HeaderValue>,
    ) -> Result<Uploaded, reqwest::Error> {
        let rb = match authorization {
            Some(v) => rb.header(AUTHORIZATION, v),
            None => rb,
        };
        self.rt.block_on(async {
            let resp = rb.send().await?;
            let (status, headers) = (resp.status(), resp.headers().clone());
            let body = resp.text().await.unwrap_or_default();
            Ok(Uploaded {
                status,
                headers,
                body,
            })
        })
    }
}

/// `len` bytes of the file at `path` from `offset`, as a body read in 1 MiB pieces.
fn file_body(path: &Path, offset: u64, len: u64) -> io::Result<reqwest::Body> {
    use tokio::io::AsyncReadExt as _;
    let mut f = fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let f = tokio::fs::File::from_std(f).take(len);
    Ok(reqwest::Body::wrap_stream(
        tokio_util::io::ReaderStream::with_capacity(f, 1 << 20),
    ))
}

/// A client for one repository.
#[derive(Debug)]
pub struct Client {
    http: Http,
    /// The private CA of `--ca-file`, for the [`Uploader`].
    ca: Option<reqwest::Certificate>,
    uploader: Mutex<Option<Arc<Uploader>>>,
    base: String,
    reference: Reference,
    credentials: Option<Credentials>,
    /// The Bearer token for this repository's scope, and when to stop trusting it.
    token: Mutex<Option<(Secret, Instant)>>,
    /// From the last challenge: realm, service.
    challenge: Mutex<Option<BTreeMap<String, String>>>,
    basic: Mutex<bool>,
    /// The ACR refresh token from `/oauth2/exchange` (Entra credentials), reused until refused.
    refresh: Mutex<Option<Secret>>,
    /// The Entra credential chain, made on first use.
    azure: Mutex<Option<Arc<crate::credential::AzureAuth>>>,
    /// Serialises answers to challenges, so parallel transfers fetch one token, not one each.
    answering: Mutex<()>,
    /// Other repositories whose blobs this client may mount (pull scope asked for them too).
    mount_sources: Mutex<Vec<String>>,
    /// Where pushes are recorded, for cross-repository mounts.
    record: Option<PushRecord>,
    opts: Options,
}

fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

/// Parses `Bearer realm="…",service="…",scope="…"` (or Basic).
pub fn parse_challenge(h: &str) -> (String, BTreeMap<String, String>) {
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, r)) = rest.split_once('=') else {
            break;
        };
        let (v, r) = if let Some(r) = r.strip_prefix('"') {
            let end = r.find('"').unwrap_or(r.len());
            (&r[..end], r.get(end + 1..).unwrap_or(""))
        } else {
            let end = r.find(',').unwrap_or(r.len());
            (&r[..end], &r[end..])
        };
        params.insert(k.trim().to_ascii_lowercase(), v.to_owned());
        rest = r.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

fn retryable(s: StatusCode) -> bool {
    matches!(s.as_u16(), 408 | 429 | 499 | 500 | 502 | 503 | 504 | 522)
}

fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(d) = retry_after {
        return d.min(Duration::from_secs(60));
    }
    let base = 250u64 << attempt.min(6);
    let jitter = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64))
        % (base / 2 + 1);
    Duration::from_millis(base + jitter)
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The registry's error message from an OCI error body, or the body's start.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let errs = v["errors"].as_array()?.clone();
            Some(
                errs.iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e["code"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
        .unwrap_or_else(|| body.chars().take(300).collect())
}

impl Client {
    pub fn new(
        reference: &Reference,
        credentials: Option<Credentials>,
        opts: &Options,
    ) -> Result<Client, RegistryError> {
        let mut b = Http::builder()
            .timeout(None)
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("envbuild/", env!("CARGO_PKG_VERSION")));
        let mut ca = None;
        if let Some(ca_file) = &opts.ca_file {
            let pem = fs::read(ca_file).map_err(|source| RegistryError::Io {
                path: ca_file.clone(),
                source,
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| RegistryError::Io {
                path: ca_file.clone(),
                source: io::Error::other(e),
            })?;
            b = b.add_root_certificate(cert.clone());
            ca = Some(cert);
        }
        let http = b.build().map_err(|source| RegistryError::Connect {
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            what: "TLS set-up".into(),
            source,
        })?;
        let host = if reference.registry == "docker.io" {
            "registry-1.docker.io".to_owned()
        } else {
            reference.registry.clone()
        };
        let scheme = if is_loopback(&host) || opts.insecure.contains(&host) {
            "http"
        } else {
            "https"
        };
        let mut opts = opts.clone();
        if opts.chunk == 0 {
            opts.chunk = default_chunk(&reference.registry);
        }
        opts.parallel = opts.parallel.max(1);
        opts.attempts = opts.attempts.max(1);
        Ok(Client {
            http,
            ca,
            base: format!("{scheme}://{host}"),
            reference: reference.clone(),
            credentials,
            token: Mutex::new(None),
            challenge: Mutex::new(None),
            basic: Mutex::new(false),
            refresh: Mutex::new(None),
            azure: Mutex::new(None),
            answering: Mutex::new(()),
            mount_sources: Mutex::new(Vec::new()),
            uploader: Mutex::new(None),
            record: None,
            opts,
        })
    }

    /// Records pushes in `record` and mounts blobs that it knows in other repositories.
    pub fn with_push_record(mut self, record: PushRecord) -> Client {
        self.record = Some(record);
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.reference.repository)
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{}", self.base, location)
        }
    }

    fn status_err(&self, what: &str, status: StatusCode, body: &str) -> RegistryError {
        self.status_err_with(what, status, &HeaderMap::new(), body)
    }

    fn status_err_with(
        &self,
        what: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &str,
    ) -> RegistryError {
        let insufficient = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|h| h.contains("insufficient_scope"));
        let hint = match status.as_u16() {
            401 | 403 if insufficient => Some("the token does not grant this action on the repository: pushing to ACR needs the AcrPush role (pulling needs AcrPull)"),
            401 => Some("check the credentials (--username/--password-stdin, docker login, or `az acr login`)"),
            403 => Some("the identity lacks permission on this repository (on ACR: the AcrPush role to push, AcrPull to pull)"),
            404 => Some("the repository or image does not exist, or the credentials cannot see it"),
            _ => None,
        };
        RegistryError::Status {
            registry: self.reference.registry.clone(),
            repository: self.reference.repository.clone(),
            what: what.to_owned(),
            status: status.as_u16(),
            message: error_message(body),
            hint,
        }
    }

    fn protocol(&self, what: &str, message: impl Into<String>) -> RegistryError {
        RegistryError::Protocol {
            registry: self.reference.registry.clone(),
            repository: self.reference.repository.clone(),
            what: what.into(),
            message: message.into(),
        }
    }

    /// The cached Bearer token while it is valid.
    fn current_token(&self) -> Option<Secret> {
        self.token
            .lock()
            .expect("lock")
            .as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, _)| t.clone())
    }

    /// The Authorization header for a request: the Bearer token, else Basic once the registry
    /// asked for it. Marked sensitive, so it never shows in a Debug print.
    fn authorization(&self, token: Option<&Secret>) -> Option<HeaderValue> {
        let value = if let Some(t) = token {
            format!("Bearer {}", t.expose())
        } else {
            match (&self.credentials, *self.basic.lock().expect("lock")) {
                (Some(Credentials::Basic { username, password }), true) => {
                    let pair = format!("{username}:{}", password.expose());
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    )
                }
                _ => return None,
            }
        };
        let mut v = HeaderValue::from_str(&value).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    fn authorize(&self, rb: RequestBuilder, token: Option<&Secret>) -> RequestBuilder {
        match self.authorization(token) {
            Some(v) => rb.header(AUTHORIZATION, v),
            None => rb,
        }
    }

    /// Answers a 401 challenge: Basic (use the credentials) or Bearer (fetch a token).
    fn answer(&self, headers: &HeaderMap, what: &str) -> Result<(), RegistryError> {
        let h = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (scheme, params) = parse_challenge(h);
        match scheme.as_str() {
            "basic" => {
                if self.credentials.is_none() {
                    return Err(self.status_err(
                        what,
                        StatusCode::UNAUTHORIZED,
                        "the registry asks for a user name and password",
                    ));
                }
                *self.basic.lock().expect("lock") = true;
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| self.protocol(what, "Bearer challenge without realm"))?
                    .clone();
                let service = params.get("service").cloned().unwrap_or_default();
                let v = match &self.credentials {
                    Some(Credentials::Entra) => self.entra_token(&realm, &service, what)?,
                    Some(Credentials::IdentityToken(t)) => {
                        let resp = self.refresh_grant(&realm, &service, t)?;
                        self.token_json(resp, &realm, what, Some("the stored identity token was refused (expired?): run `envbuild login` for this registry again"))?
                    }
                    creds => {
                        let mut query = vec![("service", service.clone())];
                        query.extend(self.scopes().into_iter().map(|s| ("scope", s)));
                        let rb = self.http.get(&realm).query(&query);
                        let rb = match creds {
                            Some(Credentials::Basic { username, password }) => {
                                rb.basic_auth(username, Some(password.expose()))
                            }
                            _ => rb,
                        };
                        let resp = rb
                            .send()
                            .map_err(|source| self.connect_err(&realm, source))?;
                        self.token_json(resp, &realm, what, None)?
                    }
                };
                let token = v["token"]
                    .as_str()
                    .or(v["access_token"].as_str())
                    .ok_or_else(|| {
                        self.protocol(what, "token endpoint answered without a token")
                    })?;
                let life = v["expires_in"]
                    .as_u64()
                    .or_else(|| jwt_seconds_left(token))
                    .unwrap_or(60);
                *self.token.lock().expect("lock") = Some((
                    Secret::new(token),
                    Instant::now() + Duration::from_secs(life.saturating_sub(5)),
                ));
                *self.challenge.lock().expect("lock") = Some(params);
                Ok(())
            }
            _ => Err(self.status_err(what, StatusCode::UNAUTHORIZED, "no credentials accepted")),
        }
    }

    /// The token scopes of this client: push and pull on its repository, pull on the
    /// repositories it may mount from.
    fn scopes(&self) -> Vec<String> {
        if self.reference.repository.is_empty() {
            return Vec::new();
        }
        let mut v = vec![format!(
            "repository:{}:pull,push",
            self.reference.repository
        )];
        for m in self.mount_sources.lock().expect("lock").iter() {
            v.push(format!("repository:{m}:pull"));
        }
        v
    }

    fn connect_err(&self, url: &str, source: reqwest::Error) -> RegistryError {
        RegistryError::Connect {
            registry: self.reference.registry.clone(),
            repository: self.reference.repository.clone(),
            what: format!("token endpoint {url}"),
            source,
        }
    }

    /// The JSON of a token endpoint's answer, or the error naming the endpoint.
    fn token_json(
        &self,
        resp: Response,
        url: &str,
        what: &str,
        hint_401: Option<&'static str>,
    ) -> Result<Value, RegistryError> {
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        if !status.is_success() {
            let mut e = self.status_err(&format!("{what}: token from {url}"), status, &body);
            if let (RegistryError::Status { hint, .. }, Some(h), 401) =
                (&mut e, hint_401, status.as_u16())
            {
                *hint = Some(h);
            }
            return Err(e);
        }
        serde_json::from_str(&body)
            .map_err(|e| self.protocol(what, format!("{url} answered non-JSON: {e}")))
    }

    /// `POST realm` with `grant_type=refresh_token` (ACR and Docker identity tokens).
    fn refresh_grant(
        &self,
        realm: &str,
        service: &str,
        refresh: &Secret,
    ) -> Result<Response, RegistryError> {
        let scope = self.scopes().join(" ");
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("service", service),
            ("refresh_token", refresh.expose()),
        ];
        if !scope.is_empty() {
            form.push(("scope", scope.as_str()));
        }
        self.http
            .post(realm)
            .form(&form)
            .send()
            .map_err(|source| self.connect_err(realm, source))
    }

    /// The Entra credential chain, made on first use (with this client's CA file).
    fn azure(&self) -> Result<Arc<crate::credential::AzureAuth>, RegistryError> {
        let mut a = self.azure.lock().expect("lock");
        if let Some(a) = a.as_ref() {
            return Ok(a.clone());
        }
        let auth = crate::credential::AzureAuth::from_env(self.opts.ca_file.as_deref())
            .map_err(|source| self.entra_err(source))?;
        let auth = Arc::new(auth);
        *a = Some(auth.clone());
        Ok(auth)
    }

    fn entra_err(&self, source: crate::credential::CredentialError) -> RegistryError {
        RegistryError::Entra {
            registry: self.reference.registry.clone(),
            repository: self.reference.repository.clone(),
            source,
        }
    }

    /// ACR's Entra flow: an Entra token for the ACR audience → `POST /oauth2/exchange` → an
    /// ACR refresh token (kept) → `POST /oauth2/token` → an access token. A refused refresh
    /// token is exchanged anew once.
    fn entra_token(&self, realm: &str, service: &str, what: &str) -> Result<Value, RegistryError> {
        let cached = self.refresh.lock().expect("lock").clone();
        let refresh = match cached {
            Some(r) => r,
            None => self.exchange(realm, service, what)?,
        };
        let resp = self.refresh_grant(realm, service, &refresh)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let refresh = self.exchange(realm, service, what)?;
            let resp = self.refresh_grant(realm, service, &refresh)?;
            return self.token_json(resp, realm, what, None);
        }
        self.token_json(resp, realm, what, None)
    }

    /// `POST <registry>/oauth2/exchange`: an Entra access token for an ACR refresh token.
    fn exchange(&self, realm: &str, service: &str, what: &str) -> Result<Secret, RegistryError> {
        let entra = self
            .azure()?
            .token(crate::credential::ACR_SCOPE)
            .map_err(|source| self.entra_err(source))?;
        let url = exchange_url(realm);
        let tenant = std::env::var("AZURE_TENANT_ID")
            .ok()
            .filter(|t| !t.is_empty());
        let mut form = vec![
            ("grant_type", "access_token"),
            ("service", service),
            ("access_token", entra.secret.expose()),
        ];
        if let Some(t) = &tenant {
            form.push(("tenant", t.as_str()));
        }
        let resp = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .map_err(|source| self.connect_err(&url, source))?;
        let v = self.token_json(resp, &url, what, Some("the registry refused the Microsoft Entra ID token: the identity needs a role on this registry (AcrPush to push, AcrPull to pull)"))?;
        let refresh = v["refresh_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                self.protocol(what, format!("{url} answered without a refresh_token"))
            })?;
        let refresh = Secret::new(refresh);
        *self.refresh.lock().expect("lock") = Some(refresh.clone());
        Ok(refresh)
    }

    /// Checks that the credentials open the registry (`GET /v2/`, answering its challenge) and
    /// returns what `docker login` would store: the ACR refresh token for Entra credentials,
    /// else the credentials themselves.
    pub fn login(&self) -> Result<Option<Credentials>, RegistryError> {
        let what = "login";
        let url = format!("{}/v2/", self.base);
        let resp = self.send(what, &|| Ok(self.http.get(&url)))?;
        self.expect(what, resp, &[StatusCode::OK])?;
        Ok(match &self.credentials {
            Some(Credentials::Entra) => self
                .refresh
                .lock()
                .expect("lock")
                .clone()
                .map(Credentials::IdentityToken),
            other => other.clone(),
        })
    }

    /// Sends a request built by `make` (called again for every attempt), with authentication
    /// and retries. Returns responses of any non-retryable status; the caller judges them.
    fn send(
        &self,
        what: &str,
        make: &dyn Fn() -> Result<RequestBuilder, RegistryError>,
    ) -> Result<Response, RegistryError> {
        self.send_with(what, &|token| Ok(self.authorize(make()?, token).send()))
    }

    /// The loop of [`Self::send`] around `attempt`, which makes and sends one request with the
    /// given token (the blocking client, or the [`Uploader`]).
    fn send_with<R: Reply>(
        &self,
        what: &str,
        attempt_once: &Attempt<'_, R>,
    ) -> Result<R, RegistryError> {
        let mut answered = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let used = self.current_token();
            let result = attempt_once(used.as_ref())?;
            match result {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !answered => {
                    answered = true;
                    let headers = resp.headers().clone();
                    // One thread answers; the others find its new token and just retry.
                    let _one = self.answering.lock().expect("lock");
                    let now = self.current_token();
                    if now.is_none() || now == used {
                        self.token.lock().expect("lock").take();
                        self.answer(&headers, what)?;
                    }
                    attempt -= 1;
                }
                Ok(resp) if retryable(resp.status()) && attempt < self.opts.attempts => {
                    std::thread::sleep(backoff(attempt, retry_after(resp.headers())));
                }
                Ok(resp) => return Ok(resp),
                Err(e)
                    if attempt < self.opts.attempts
                        && (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()) =>
                {
                    std::thread::sleep(backoff(attempt, None));
                }
                Err(source) => {
                    return Err(RegistryError::Connect {
                        registry: self.reference.registry.clone(),
                        repository: self.reference.repository.clone(),
                        what: what.to_owned(),
                        source,
                    })
                }
            }
        }
    }

    fn expect<R: Reply>(&self, what: &str, resp: R, ok: &[StatusCode]) -> Result<R, RegistryError> {
        if ok.contains(&resp.status()) {
            Ok(resp)
        } else {
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.into_text();
            Err(self.status_err_with(what, status, &headers, &body))
        }
    }

    /// Whether the registry has the blob.
    pub fn has_blob(&self, d: &Digest) -> Result<bool, RegistryError> {
        let what = format!("HEAD blob {d}");
        let resp = self.send(&what, &|| {
            Ok(self.http.head(self.url(&format!("blobs/{d}"))))
        })?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(self.status_err(&what, s, "")),
        }
    }

    /// Uploads a blob from `path` unless the registry has it; returns whether bytes were sent.
    /// An upload session that fails for good (the registry lost it, or a lost answer left it
    /// closed) is followed by a HEAD: the blob may be there after all; else a new session starts.
    pub fn push_blob(&self, d: &Digest, size: u64, path: &Path) -> Result<bool, RegistryError> {
        Ok(self.push_blob_from(d, size, path, &[])? == Sent::Uploaded)
    }

    /// [`Self::push_blob`], first trying a cross-repository mount from each of `sources`
    /// (other repositories of this registry known to hold the blob). A refused mount (202)
    /// becomes the upload session of the fallback.
    pub fn push_blob_from(
        &self,
        d: &Digest,
        size: u64,
        path: &Path,
        sources: &[String],
    ) -> Result<Sent, RegistryError> {
        if self.has_blob(d)? {
            return Ok(Sent::Skipped);
        }
        let mut started = None;
        for from in sources.iter().filter(|s| **s != self.reference.repository) {
            let what = format!("mount of {d} from {from}");
            let url = format!("{}?mount={d}&from={}", self.url("blobs/uploads/"), from);
            let resp = self.send(&what, &|| {
                Ok(self.http.post(&url).header(CONTENT_LENGTH, 0))
            })?;
            match resp.status() {
                StatusCode::CREATED => return Ok(Sent::Mounted),
                // Not mounted; the registry opened an upload session instead: use it.
                StatusCode::ACCEPTED => {
                    started = self.location(&what, &resp).ok();
                    break;
                }
                // Some registries fail on mount outright: upload as usual.
                _ => {}
            }
        }
        let mut session = 0;
        loop {
            session += 1;
            match self.upload(d, size, path, started.take()) {
                Ok(()) => return Ok(Sent::Uploaded),
                Err(e @ RegistryError::Io { .. }) => return Err(e),
                Err(e) => {
                    if self.has_blob(d)? {
                        return Ok(Sent::Uploaded);
                    }
                    if session >= self.opts.attempts {
                        return Err(e);
                    }
                    std::thread::sleep(backoff(session, None));
                }
            }
        }
    }

    /// One upload session: POST, then one PUT or PATCH chunks (resumed from the registry's
    /// `Range` after a failure) and the closing PUT.
    fn upload(
        &self,
        d: &Digest,
        size: u64,
        path: &Path,
        started: Option<String>,
    ) -> Result<(), RegistryError> {
        let what = format!("upload of {d}");
        let io_err = |source| RegistryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut location = match started {
            Some(l) => l,
            None => {
                let resp = self.send(&what, &|| {
                    Ok(self
                        .http
                        .post(self.url("blobs/uploads/"))
                        .header(CONTENT_LENGTH, 0))
                })?;
                let resp = self.expect(&what, resp, &[StatusCode::ACCEPTED])?;
                self.location(&what, &resp)?
            }
        };
        let up = self.uploader()?;
        if size <= self.opts.chunk {
            let url = with_digest(&location, d);
            let resp = self.send_with(&what, &|token| {
                let body = file_body(path, 0, size).map_err(io_err)?;
                let rb = up
                    .http
                    .put(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(body);
                Ok(up.send(rb, self.authorization(token)))
            })?;
            self.expect(&what, resp, &[StatusCode::CREATED])?;
            return Ok(());
        }
        let mut offset = 0u64;
        let mut failures = 0;
        while offset < size {
            let end = (offset + self.opts.chunk).min(size) - 1;
            let len = end - offset + 1;
            let url = location.clone();
            let sent = self.send_with(&what, &|token| {
                let body = file_body(path, offset, len).map_err(io_err)?;
                let rb = up
                    .http
                    .request(Method::PATCH, &url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, format!("{offset}-{end}"))
                    .header(CONTENT_LENGTH, len)
                    .body(body);
                Ok(up.send(rb, self.authorization(token)))
            });
            match sent {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    location = self.location(&what, &resp)?;
                    offset = end + 1;
                    failures = 0;
                }
                other => {
                    // Ask the registry how much it has and continue from there.
                    failures += 1;
                    if failures > self.opts.attempts {
                        return match other {
                            Ok(resp) => Err(self.expect(&what, resp, &[]).expect_err("non-202")),
                            Err(e) => Err(e),
                        };
                    }
                    std::thread::sleep(backoff(failures, None));
                    let url = location.clone();
                    let resp = self.send(&what, &|| Ok(self.http.get(&url)))?;
                    let resp = self.expect(
                        &format!("{what}: status of the upload"),
                        resp,
                        &[StatusCode::NO_CONTENT, StatusCode::ACCEPTED],
                    )?;
                    offset = resp
                        .headers()
                        .get(RANGE)
                        .and_then(|r| r.to_str().ok())
                        .and_then(|r| r.rsplit('-').next()?.parse::<u64>().ok())
                        .map_or(0, |last| last + 1);
                    location = self.location(&what, &resp).unwrap_or(location);
                }
            }
        }
        let url = with_digest(&location, d);
        let resp = self.send(&what, &|| Ok(self.http.put(&url).header(CONTENT_LENGTH, 0)))?;
        self.expect(&what, resp, &[StatusCode::CREATED])?;
        Ok(())
    }

    /// This client's [`Uploader`], made on first use.
    fn uploader(&self) -> Result<Arc<Uploader>, RegistryError> {
        let mut slot = self.uploader.lock().expect("lock");
        if let Some(up) = &*slot {
            return Ok(up.clone());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.opts.parallel.min(4))
            .thread_name("envbuild-upload")
            .enable_all()
            .build()
            .map_err(|source| RegistryError::Io {
                path: PathBuf::from("(upload runtime)"),
                source,
            })?;
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("envbuild/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &self.ca {
            b = b.add_root_certificate(ca.clone());
        }
        let http = b.build().map_err(|source| RegistryError::Connect {
            registry: self.reference.registry.clone(),
            repository: self.reference.repository.clone(),
            what: "TLS set-up".into(),
            source,
        })?;
        let up = Arc::new(Uploader { rt, http });
        *slot = Some(up.clone());
        Ok(up)
    }

    fn location(&self, what: &str, resp: &impl Reply) -> Result<String, RegistryError> {
        let l = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.protocol(what, "upload answer without Location"))?;
        Ok(self.absolute(l))
    }

    /// Puts a manifest under `reference` (a tag or a digest); checks the registry's digest.
    pub fn push_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
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
        let resp = self.expect(&what, resp, &[StatusCode::CREATED, StatusCode::OK])?;
        let ours = Digest::of(bytes);
        if let Some(theirs) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if theirs != ours.to_string() {
                return Err(
                    self.protocol(&what, format!("registry stored {theirs}, expected {ours}"))
                );
            }
        }
        Ok(ours)
    }

    /// Fetches a manifest or index by digest (verified) or tag; returns bytes, media type, digest.
    pub fn get_manifest(
        &self,
        reference: &str,
    ) -> Result<(Vec<u8>, String, Digest), RegistryError> {
        let what = format!("GET manifest {reference}");
        let url = self.url(&format!("manifests/{reference}"));
        let accept = [
            MANIFEST_MEDIA_TYPE,
            INDEX_MEDIA_TYPE,
            DOCKER_MANIFEST,
            DOCKER_LIST,
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
        let bytes = resp
            .bytes()
            .map_err(|source| RegistryError::Connect {
                registry: self.reference.registry.clone(),
                repository: self.reference.repository.clone(),
                what: what.clone(),
                source,
            })?
            .to_vec();
        let d = Digest::of(&bytes);
        if let Ok(want) = reference.parse::<Digest>() {
            if want != d {
                return Err(self.protocol(
                    &what,
                    format!("the registry answered content with digest {d}"),
                ));
            }
        }
        let mt = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
            .unwrap_or(mt);
        Ok((bytes, mt, d))
    }

    /// Streams a blob into the cache, verifying digest and size; never fetches what the cache has.
    pub fn pull_blob(&self, d: &Digest, size: u64, cache: &Cache) -> Result<bool, RegistryError> {
        if cache.has_blob(d) {
            return Ok(false);
        }
        let what = format!("GET blob {d}");
        let url = self.url(&format!("blobs/{d}"));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self.send(&what, &|| Ok(self.http.get(&url)))?;
            let mut resp = self.expect(&what, resp, &[StatusCode::OK])?;
            let mut tmp = cache.temp_file().map_err(|source| RegistryError::Io {
                path: cache.root.clone(),
                source,
            })?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            let copied: io::Result<()> = (|| loop {
                let k = resp.read(&mut buf)?;
                if k == 0 {
                    return Ok(());
                }
                h.update(&buf[..k]);
                tmp.write_all(&buf[..k])?;
                n += k as u64;
            })();
            if copied.is_ok() && n == size && Digest::from_sha256(h) == *d {
                cache
                    .commit_blob(tmp, d)
                    .map_err(|source| RegistryError::Io {
                        path: cache.root.clone(),
                        source,
                    })?;
                return Ok(true);
            }
            if attempt == self.opts.attempts {
                return Err(self.protocol(&what, format!("received {n} bytes that do not match the digest and size {size} ({copied:?})")));
            }
            std::thread::sleep(backoff(attempt, None));
        }
    }
}

/// ACR's exchange endpoint beside its token endpoint (the challenge's realm).
fn exchange_url(realm: &str) -> String {
    match realm.strip_suffix("/oauth2/token") {
        Some(base) => format!("{base}/oauth2/exchange"),
        None => {
            let after_scheme = realm.find("://").map_or(0, |i| i + 3);
            let end = realm[after_scheme..]
                .find('/')
                .map_or(realm.len(), |i| after_scheme + i);
            format!("{}/oauth2/exchange", &realm[..end])
        }
    }
}

/// Seconds until a JWT-shaped token's `exp` (ACR tokens carry no `expires_in`).
fn jwt_seconds_left(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_i64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some(exp.saturating_sub(now).max(0) as u64)
}

fn with_digest(location: &str, d: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={d}")
}

/// What happened to one blob of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The registry had it.
    Skipped,
    /// Mounted from another repository of the registry.
    Mounted,
    /// Its bytes went up.
    Uploaded,
}

/// Which repositories of which registries hold which blobs, as far as this machine's pushes
/// know: one append-only file per registry (`<digest> <repository>` lines) under `dir`
/// (the cache's `pushed/`), read to offer cross-repository mounts.
#[derive(Debug, Clone)]
pub struct PushRecord {
    pub dir: PathBuf,
}

impl PushRecord {
    fn file(&self, registry: &str) -> PathBuf {
        let name: String = registry
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{name}.log"))
    }

    /// Repositories of `registry` known to hold each blob.
    pub fn sources(&self, registry: &str) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let text = fs::read_to_string(self.file(registry)).unwrap_or_default();
        for line in text.lines() {
            if let Some((d, repo)) = line.split_once(' ') {
                let v = m.entry(d.to_owned()).or_default();
                if !v.iter().any(|r| r == repo) {
                    v.push(repo.to_owned());
                }
            }
        }
        m
    }

    /// Notes that `repository` of `registry` holds `blobs` (best effort: a lost note only
    /// costs a later upload).
    pub fn record(&self, registry: &str, repository: &str, blobs: &[Digest]) {
        let known = self.sources(registry);
        let lines: String = blobs
            .iter()
            .filter(|d| {
                !known
                    .get(&d.to_string())
                    .is_some_and(|v| v.iter().any(|r| r == repository))
            })
            .map(|d| format!("{d} {repository}\n"))
            .collect();
        if lines.is_empty() {
            return;
        }
        let _ = fs::create_dir_all(&self.dir).and_then(|()| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.file(registry))?
                .write_all(lines.as_bytes())
        });
    }
}

/// A manifest and its blobs, ready to push: (digest, size, file) for config and layers.
#[derive(Debug, Clone)]
pub struct Pushable {
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub blobs: Vec<(Digest, u64, PathBuf)>,
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PushReport {
    pub reference: String,
    pub uploaded: usize,
    pub skipped: usize,
    /// Blobs mounted from another repository of the registry.
    pub mounted: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Pushes every blob (in parallel, bounded), then the manifest under the tag (or its digest).
pub fn push(
    client: &Client,
    image: &Pushable,
    on_blob: &(dyn Fn(&Digest, u64, bool, f64) + Sync),
) -> Result<PushReport, RegistryError> {
    let start = Instant::now();
    let r = &client.reference;
    // Blobs known in other repositories of this registry: mount candidates, whose pull scope
    // the token must include.
    let known = client
        .record
        .as_ref()
        .map(|rec| rec.sources(&r.registry))
        .unwrap_or_default();
    let sources = |d: &Digest| -> Vec<String> {
        known
            .get(&d.to_string())
            .map(|v| v.iter().filter(|s| **s != r.repository).cloned().collect())
            .unwrap_or_default()
    };
    {
        let mut m = client.mount_sources.lock().expect("lock");
        for (d, _, _) in &image.blobs {
            for s in sources(d) {
                if !m.contains(&s) {
                    m.push(s);
                }
            }
        }
    }
    // Largest first (taken from the end): the big layers' streams start at once and the small
    // ones fill in beside them, instead of one big layer going up alone at the end.
    let mut queue = image.blobs.clone();
    queue.sort_by_key(|(d, size, _)| (*size, *d));
    let queue = Mutex::new(queue);
    let results: Mutex<Vec<(u64, Sent)>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<RegistryError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..client.opts.parallel.min(image.blobs.len().max(1)) {
            s.spawn(|| loop {
                if first_error.lock().expect("lock").is_some() {
                    return;
                }
                let Some((d, size, path)) = queue.lock().expect("lock").pop() else {
                    return;
                };
                let t = Instant::now();
                match client.push_blob_from(&d, size, &path, &sources(&d)) {
                    Ok(sent) => {
                        on_blob(&d, size, sent == Sent::Uploaded, t.elapsed().as_secs_f64());
                        results.lock().expect("lock").push((size, sent));
                    }
                    Err(e) => {
                        first_error.lock().expect("lock").get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("lock") {
        return Err(e);
    }
    // Only after every blob is confirmed present does the manifest go up.
    let results = results.into_inner().expect("lock");
    let digest = Digest::of(&image.manifest);
    let tag = client
        .reference
        .tag
        .clone()
        .unwrap_or_else(|| digest.to_string());
    client.push_manifest(&tag, &image.media_type, &image.manifest)?;
    if let Some(rec) = &client.record {
        let digests: Vec<Digest> = image.blobs.iter().map(|(d, _, _)| *d).collect();
        rec.record(&r.registry, &r.repository, &digests);
    }
    let count = |k: Sent| results.iter().filter(|(_, s)| *s == k).count();
    Ok(PushReport {
        reference: format!("{}/{}@{digest}", r.registry, r.repository),
        uploaded: count(Sent::Uploaded),
        skipped: count(Sent::Skipped),
        mounted: count(Sent::Mounted),
        bytes: results
            .iter()
            .filter(|(_, s)| *s == Sent::Uploaded)
            .map(|(n, _)| n)
            .sum(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

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
    if mt == INDEX_MEDIA_TYPE || mt == DOCKER_LIST || manifest["manifests"].is_array() {
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
        for _ in 0..client.opts.parallel {
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

/// Credentials for pulling from `registry` when none are given: Docker's config.json
/// (`auths.<host>.auth` or `identitytoken`, or the `credHelpers`/`credsStore` helper), else
/// Microsoft Entra ID for an Azure Container Registry, else none. An unreadable config or a
/// failing helper counts as none (see [`crate::docker_config::credentials`] for the error).
pub fn default_credentials(registry: &str) -> Option<Credentials> {
    crate::docker_config::credentials(registry)
        .ok()
        .flatten()
        .or_else(|| is_acr(registry).then_some(Credentials::Entra))
}

/// Whether `registry` is an Azure Container Registry (public and sovereign clouds), where
/// Microsoft Entra ID is the default authentication.
pub fn is_acr(registry: &str) -> bool {
    let host = registry.split(':').next().unwrap_or(registry);
    [".azurecr.io", ".azurecr.cn", ".azurecr.us"]
        .iter()
        .any(|s| host.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_follow_each_services_limits() {
        assert_eq!(default_chunk("myacr.azurecr.io"), 16 << 20);
        assert_eq!(default_chunk("ghcr.io"), 4 << 20);
        assert_eq!(default_chunk("127.0.0.1:5000"), 128 << 20);
        assert_eq!(
            default_chunk("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            128 << 20
        );
    }

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
        assert!("reg.io/a@sha256:12".parse::<Reference>().is_err());
        assert!(
            is_loopback("127.0.0.1:5000")
                && is_loopback("localhost")
                && !is_loopback("myacr.azurecr.io")
        );
    }

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://r.io/oauth2/token",service="r.io",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://r.io/oauth2/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#).0,
            "basic"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(Secret::new("x").to_string(), "<redacted>");
    }

    #[test]
    fn retry_policy() {
        assert!(
            retryable(StatusCode::TOO_MANY_REQUESTS)
                && retryable(StatusCode::BAD_GATEWAY)
                && !retryable(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            backoff(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert!(backoff(2, None) >= Duration::from_millis(1000));
        assert_eq!(
            with_digest("http://h/u?x=1", &Digest::of(b"")),
            format!("http://h/u?x=1&digest={}", Digest::of(b""))
        );
    }
}
