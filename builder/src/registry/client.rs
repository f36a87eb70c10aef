//! The client for one repository: its settings, its HTTP clients, and the request loop every
//! registry request goes through (authentication answered once per challenge, retries by the
//! [`RetryPolicy`](crate::http::RetryPolicy)), and the errors that name registry and repository.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::StatusCode;

use super::auth::TokenCache;
use super::{error_message, Reference, RegistryError, Settings};
use crate::auth::{Credentials, Secret};
use crate::cache::ledger::PushLedger;
use crate::progress::Task;
use crate::{hosts, http};

/// What [`Client::send_with`] needs of an answer: its status and headers, and its body as text
/// for an error message.
pub(super) trait Reply {
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
        match http::read_capped(self, http::MAX_ERROR_BODY) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => String::new(),
        }
    }
}

/// One attempt of a request with the given token: the HTTP outcome, or an error before sending.
pub(super) type Attempt<'a, R> =
    dyn Fn(Option<&Secret>) -> Result<Result<R, Failure>, RegistryError> + 'a;

/// Why an attempt got no answer.
#[derive(Debug)]
pub(super) enum Failure {
    Http(reqwest::Error),
    /// An upload moved no byte, and got no answer, for the idle timeout.
    Stalled,
}

impl Failure {
    fn transient(&self) -> bool {
        match self {
            Failure::Http(e) => http::transient(e),
            Failure::Stalled => true,
        }
    }

    fn timed_out(&self) -> bool {
        match self {
            Failure::Http(e) => e.is_timeout(),
            Failure::Stalled => true,
        }
    }
}

impl From<reqwest::Error> for Failure {
    fn from(e: reqwest::Error) -> Failure {
        Failure::Http(e)
    }
}

/// An answer to an upload, read whole (upload answers carry headers and at most an error).
#[derive(Debug)]
pub(super) struct Uploaded {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: String,
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
pub(super) struct Uploader {
    rt: tokio::runtime::Runtime,
    pub(super) http: reqwest::Client,
}

impl Uploader {
    /// Sends an upload whose body is `body` (`len` bytes of the file at `path` from `offset`),
    /// watched for progress: when no byte of the body is taken and no answer comes for `idle`,
    /// the attempt ends as [`Failure::Stalled`]. `task` hears the blob's position as the body
    /// is taken (`offset` + the bytes so far).
    pub(super) fn send(
        &self,
        rb: reqwest::RequestBuilder,
        authorization: Option<HeaderValue>,
        body: Option<(&Path, u64, u64)>,
        idle: Duration,
        task: &Task,
    ) -> Result<Result<Uploaded, Failure>, std::io::Error> {
        let rb = match authorization {
            Some(v) => rb.header(AUTHORIZATION, v),
            None => rb,
        };
        let (progress, started) = (Arc::new(AtomicU64::new(0)), Instant::now());
        let rb = match body {
            Some((path, offset, len)) => {
                rb.body(watched_body(path, offset, len, started, &progress, task)?)
            }
            None => rb,
        };
        let moved = |p: &AtomicU64| started + Duration::from_millis(p.load(Ordering::Relaxed));
        let (client, req) = rb.build_split();
        Ok(self.rt.block_on(async {
            let request = async {
                let req = req?;
                let (method, url, t) = (req.method().clone(), req.url().clone(), Instant::now());
                let sent = client.execute(req).await;
                http::log_request(
                    &method,
                    &url,
                    sent.as_ref().map(|r| r.status()),
                    t.elapsed(),
                );
                let resp = sent?;
                let (status, headers) = (resp.status(), resp.headers().clone());
                let body = http::text_capped(resp, http::MAX_ERROR_BODY).await;
                Ok(Uploaded {
                    status,
                    headers,
                    body,
                })
            };
            tokio::pin!(request);
            loop {
                let deadline = moved(&progress) + idle;
                tokio::select! {
                    r = &mut request => return r,
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        if moved(&progress) + idle <= Instant::now() {
                            return Err(Failure::Stalled);
                        }
                    }
                }
            }
        }))
    }
}

/// `len` bytes of the file at `path` from `offset`, as a body read in 1 MiB pieces; each piece
/// taken records, in `progress`, the milliseconds since the request began, and moves `task`.
fn watched_body(
    path: &Path,
    offset: u64,
    len: u64,
    started: Instant,
    progress: &Arc<AtomicU64>,
    task: &Task,
) -> std::io::Result<reqwest::Body> {
    use futures_util::StreamExt as _;
    use std::io::{Seek as _, SeekFrom};
    use tokio::io::AsyncReadExt as _;
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let f = tokio::fs::File::from_std(f).take(len);
    let (progress, task) = (progress.clone(), task.clone());
    let mut at = offset;
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).inspect(move |piece| {
        progress.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Ok(b) = piece {
            at += b.len() as u64;
            task.set(at);
        }
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

/// A client for one repository.
#[derive(Debug)]
pub struct Client {
    pub(super) http: Http,
    /// The extra CAs of `--ca-file`, for the [`Uploader`].
    pub(super) ca: Vec<reqwest::Certificate>,
    pub(super) uploader: Mutex<Option<Arc<Uploader>>>,
    /// `scheme://host` of the registry API.
    pub(super) base: String,
    pub(super) reference: Reference,
    pub(super) credentials: Option<Credentials>,
    /// Tokens, the answered challenge, the Entra chain: one lock.
    pub(super) tokens: Mutex<TokenCache>,
    /// Serialises answers to challenges, so parallel transfers fetch one token, not one each.
    pub(super) answering: Mutex<()>,
    /// Other repositories whose blobs this client may mount (pull scope asked for them too).
    pub(super) mount_sources: Mutex<Vec<String>>,
    /// Where pushes are recorded, for cross-repository mounts.
    pub(super) ledger: Option<PushLedger>,
    pub(super) settings: Settings,
}

impl Client {
    pub fn new(
        reference: &Reference,
        credentials: Option<Credentials>,
        settings: &Settings,
    ) -> Result<Client, RegistryError> {
        let http_err = |source| RegistryError::Http {
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            source,
        };
        let ca = match &settings.ca_file {
            Some(p) => http::ca_certificates(p).map_err(http_err)?,
            None => Vec::new(),
        };
        let client = http::blocking_builder(&ca, settings.timeouts)
            .build()
            .map_err(|e| http_err(http::HttpError::Tls(e)))?;
        let host = hosts::api_host(&reference.registry);
        let scheme = hosts::scheme(host, &settings.insecure);
        let mut settings = settings.clone();
        if settings.chunk == 0 {
            settings.chunk = hosts::default_chunk(&reference.registry);
        }
        settings.parallel = settings.parallel.max(1);
        settings.retry.attempts = settings.retry.attempts.max(1);
        Ok(Client {
            http: client,
            ca,
            base: format!("{scheme}://{host}"),
            reference: reference.clone(),
            credentials,
            tokens: Mutex::new(TokenCache::default()),
            answering: Mutex::new(()),
            mount_sources: Mutex::new(Vec::new()),
            uploader: Mutex::new(None),
            ledger: None,
            settings,
        })
    }

    /// The repository this client talks to.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Records pushes in `ledger` and mounts blobs that it knows in other repositories.
    pub fn with_ledger(mut self, ledger: PushLedger) -> Client {
        self.ledger = Some(ledger);
        self
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.reference.repository)
    }

    pub(super) fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{}", self.base, location)
        }
    }

    pub(super) fn status_err(&self, what: &str, status: StatusCode, body: &str) -> RegistryError {
        self.status_err_with(what, status, &HeaderMap::new(), body)
    }

    pub(super) fn status_err_with(
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

    pub(super) fn protocol(&self, what: &str, message: impl Into<String>) -> RegistryError {
        RegistryError::Protocol {
            registry: self.reference.registry.clone(),
            repository: self.reference.repository.clone(),
            what: what.into(),
            message: message.into(),
        }
    }

    /// Sends a request built by `make` (called again for every attempt), with authentication
    /// and retries. Returns responses of any non-retryable status; the caller judges them.
    pub(super) fn send(
        &self,
        what: &str,
        make: &dyn Fn() -> Result<RequestBuilder, RegistryError>,
    ) -> Result<Response, RegistryError> {
        self.send_with(what, &|token| {
            let mut req = match make()?.build() {
                Ok(r) => r,
                Err(e) => return Ok(Err(e.into())),
            };
            if let Some(v) = self.authorization_for(req.url().as_str(), token) {
                req.headers_mut().insert(AUTHORIZATION, v);
            }
            Ok(http::execute_logged(&self.http, req).map_err(Failure::from))
        })
    }

    /// The loop of [`Self::send`] around `attempt`, which makes and sends one request with the
    /// given token (the blocking client, or the [`Uploader`]). A request that timed out is
    /// tried once more, not the policy's every attempt: a server silent twice is down.
    pub(super) fn send_with<R: Reply>(
        &self,
        what: &str,
        attempt_once: &Attempt<'_, R>,
    ) -> Result<R, RegistryError> {
        let (mut answered, mut authenticated) = (false, false);
        let mut attempt = 0;
        let mut timeouts = 0;
        loop {
            attempt += 1;
            let used = self.current_token();
            let basic_used = self.tokens.lock().expect("lock").basic;
            let result = attempt_once(used.as_ref())?;
            match result {
                // A user name and password sent and refused: nothing to renew.
                Ok(resp)
                    if resp.status() == StatusCode::UNAUTHORIZED
                        && basic_used
                        && used.is_none() =>
                {
                    return Ok(resp)
                }
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !answered => {
                    let headers = resp.headers().clone();
                    // One thread answers; the others (requests sent beside it) find its new
                    // token and just retry.
                    let _one = self.answering.lock().expect("lock");
                    let now = self.current_token();
                    if now.is_none() || now == used {
                        // A refused token is renewed once per request; a request sent before
                        // there was any token may first authenticate.
                        answered = used.is_some() || authenticated;
                        authenticated = true;
                        self.tokens.lock().expect("lock").bearer = None;
                        self.answer(&headers, what)?;
                    }
                    attempt -= 1;
                }
                Ok(resp)
                    if http::retryable(resp.status()) && self.settings.retry.again(attempt) =>
                {
                    self.settings
                        .retry
                        .wait(attempt, http::retry_after(resp.headers()));
                }
                Ok(resp) => return Ok(resp),
                Err(f)
                    if f.transient()
                        && self.settings.retry.again(attempt)
                        && !(f.timed_out() && timeouts > 0) =>
                {
                    timeouts += usize::from(f.timed_out());
                    self.settings.retry.wait(attempt, None);
                }
                Err(f) => return Err(self.no_answer(what, f)),
            }
        }
    }

    /// The error for an attempt that got no answer: a timeout names the limit that ran out, a
    /// redirect loop says so, anything else is a connection failure.
    pub(super) fn no_answer(&self, what: &str, f: Failure) -> RegistryError {
        let (registry, repository, what) = (
            self.reference.registry.clone(),
            self.reference.repository.clone(),
            what.to_owned(),
        );
        let t = self.settings.timeouts;
        // A URL's query can be a credential (the SAS signature of a blob URL a registry
        // redirects to): errors show scheme, host and path only.
        let f = match f {
            Failure::Http(mut e) => {
                if let Some(u) = e.url_mut() {
                    u.set_query(None);
                }
                Failure::Http(e)
            }
            stalled => stalled,
        };
        match f {
            Failure::Stalled => RegistryError::TimedOut {
                registry,
                repository,
                what,
                message: format!("nothing sent or received for {} s", t.idle.as_secs()),
            },
            Failure::Http(e) if e.is_timeout() && e.is_connect() => RegistryError::TimedOut {
                registry,
                repository,
                what,
                message: format!("no connection within {} s", t.connect.as_secs()),
            },
            Failure::Http(e) if e.is_timeout() => RegistryError::TimedOut {
                registry,
                repository,
                what,
                message: format!("no answer within {} s", t.idle.as_secs()),
            },
            Failure::Http(e) if e.is_redirect() => RegistryError::Protocol {
                registry,
                repository,
                what,
                message: format!(
                    "the registry redirects in a loop or too often ({})",
                    e.url().map_or_else(String::new, |u| u.to_string())
                ),
            },
            Failure::Http(source) => RegistryError::Connect {
                registry,
                repository,
                what,
                source,
            },
        }
    }

    /// `resp` when its status is one of `ok`; else the error for its status. A success status
    /// other than those the distribution spec requires (e.g. a web server's `200 text/html`
    /// where a registry answers `202`) is named as such, not taken for success.
    pub(super) fn expect<R: Reply>(
        &self,
        what: &str,
        resp: R,
        ok: &[StatusCode],
    ) -> Result<R, RegistryError> {
        let status = resp.status();
        if ok.contains(&status) {
            return Ok(resp);
        }
        if status.is_success() || status.is_redirection() {
            let kind = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map_or_else(String::new, |t| {
                    format!(" ({})", crate::error::printable(t, 80))
                });
            let wanted: Vec<String> = ok.iter().map(|s| s.to_string()).collect();
            return Err(self.protocol(
                what,
                format!(
                    "answered {status}{kind} where a registry answers {}: is this a registry API?",
                    wanted.join(" or ")
                ),
            ));
        }
        let headers = resp.headers().clone();
        let body = resp.into_text();
        Err(self.status_err_with(what, status, &headers, &body))
    }

    /// The answer's `Location` (made absolute), which the distribution spec requires of it.
    pub(super) fn location(&self, what: &str, resp: &impl Reply) -> Result<String, RegistryError> {
        let l = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .filter(|l| !l.is_empty())
            .ok_or_else(|| {
                self.protocol(
                    what,
                    format!(
                        "the {} answer has no Location header (the distribution spec requires one)",
                        resp.status()
                    ),
                )
            })?;
        Ok(self.absolute(l))
    }

    /// Checks that the registry speaks the distribution API (`GET /v2/`, answering its
    /// challenge): a redirect loop, a silent server or a wrong answer fails here, before a blob.
    /// `what` names the step in errors (`GET /v2/` for a push, `login` for a login).
    pub fn ping(&self, what: &str) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base);
        let resp = self.send(what, &|| Ok(self.http.get(&url)))?;
        self.expect(what, resp, &[StatusCode::OK]).map(drop)
    }

    /// This client's [`Uploader`], made on first use.
    pub(super) fn uploader(&self) -> Result<Arc<Uploader>, RegistryError> {
        let mut slot = self.uploader.lock().expect("lock");
        if let Some(up) = &*slot {
            return Ok(up.clone());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.settings.parallel.min(4))
            .thread_name("envbuild-upload")
            .enable_all()
            .build()
            .map_err(|source| RegistryError::Io {
                path: PathBuf::from("(upload runtime)"),
                source,
            })?;
        let http = http::async_builder(&self.ca, self.settings.timeouts)
            .build()
            .map_err(|e| RegistryError::Http {
                registry: self.reference.registry.clone(),
                repository: self.reference.repository.clone(),
                source: http::HttpError::Tls(e),
            })?;
        let up = Arc::new(Uploader { rt, http });
        *slot = Some(up.clone());
        Ok(up)
    }
}
