//! What every HTTP client of envbuild shares — the registry client, the Azure ML (ARM) client and
//! the coming storage client: the user agent, the CA bundle (every certificate in the file), and
//! the one retry policy (which statuses and errors are transient, backoff with jitter,
//! `Retry-After`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use thiserror::Error;

/// `envbuild/<version>`, sent with every request.
pub const USER_AGENT: &str = concat!("envbuild/", env!("CARGO_PKG_VERSION"));
/// The longest wait a server's `Retry-After` may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The most of an error answer's body read for its message (the rest is not worth showing).
pub const MAX_ERROR_BODY: u64 = 64 << 10;

/// How long a network step may go without progress. Progress-aware: a transfer that moves bytes
/// never times out, however long it takes; a server that stops answering does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To open the TCP (and TLS) connection.
    pub connect: Duration,
    /// Without a byte read or written: waiting for an answer, or in the middle of a body.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(30),
        }
    }
}

/// Why an HTTP client could not be set up.
#[derive(Debug, Error)]
pub enum HttpError {
    #[error("CA bundle {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA bundle {}: {source}", path.display())]
    CaParse {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("CA bundle {}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("TLS set-up: {0}")]
    Tls(#[source] reqwest::Error),
}

/// The bytes of the PEM bundle at `path`, for clients of another reqwest version (azure_core's)
/// to parse with their own `from_pem_bundle`.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<u8>, HttpError> {
    std::fs::read(path).map_err(|source| HttpError::CaFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of the PEM bundle at `path` (not only the first); a file with none is an
/// error naming it.
pub fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, HttpError> {
    let pem = read_ca_bundle(path)?;
    let certs =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| HttpError::CaParse {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(HttpError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// A blocking client builder with the user agent, the timeouts and the extra CAs. The blocking
/// client's `timeout` bounds the wait for an answer's head and then each read of its body
/// separately, so it is the idle timeout here: a long download that keeps reading never runs
/// out. (reqwest's `read_timeout` would be the same idea, but its timer needs a Tokio context
/// that blocking reads of a body do not have.) Uploads of large bodies go through the async
/// client with a progress watchdog instead.
pub fn blocking_builder(
    ca: &[reqwest::Certificate],
    timeouts: Timeouts,
) -> reqwest::blocking::ClientBuilder {
    ca.iter().fold(
        reqwest::blocking::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.idle)
            .user_agent(USER_AGENT),
        |b, c| b.add_root_certificate(c.clone()),
    )
}

/// An async client builder with the user agent, the connect timeout and the extra CAs.
pub fn async_builder(ca: &[reqwest::Certificate], timeouts: Timeouts) -> reqwest::ClientBuilder {
    ca.iter().fold(
        reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .user_agent(USER_AGENT),
        |b, c| b.add_root_certificate(c.clone()),
    )
}

/// A blocking client that trusts the system's CAs and those of the bundle at `ca_file`, with
/// the default [`Timeouts`] and at most `timeout` for a whole request.
pub fn blocking_client(
    ca_file: Option<&Path>,
    timeout: Option<Duration>,
) -> Result<reqwest::blocking::Client, HttpError> {
    let ca = match ca_file {
        Some(p) => ca_certificates(p)?,
        None => Vec::new(),
    };
    blocking_builder(&ca, Timeouts::default())
        .timeout(timeout)
        .build()
        .map_err(HttpError::Tls)
}

/// Reads at most `cap` bytes of `body`; `Err(None)` when there was more, `Err(Some(e))` when
/// reading failed.
pub fn read_capped(body: impl std::io::Read, cap: u64) -> Result<Vec<u8>, Option<std::io::Error>> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    body.take(cap + 1).read_to_end(&mut buf).map_err(Some)?;
    if buf.len() as u64 > cap {
        return Err(None);
    }
    Ok(buf)
}

/// The start of an async answer's body (at most `cap` bytes) as text, for an error message.
pub async fn text_capped(mut resp: reqwest::Response, cap: u64) -> String {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.extend_from_slice(&chunk);
        if buf.len() as u64 >= cap {
            buf.truncate(cap as usize);
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// When and how often a failed request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the first retry when the server names none; doubles each time (to 64×),
    /// plus up to half again of jitter so that parallel clients do not retry in step.
    pub base: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// Whether attempt number `attempt` (1-based) may be followed by another.
    pub fn again(&self, attempt: u32) -> bool {
        attempt < self.attempts.max(1)
    }

    /// The wait after failed attempt `attempt` (1-based): the server's `Retry-After` (capped at
    /// a minute) when it gave one, else exponential backoff with jitter.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after {
            return d.min(MAX_RETRY_AFTER);
        }
        let base = self
            .base
            .saturating_mul(1 << attempt.saturating_sub(1).min(6));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        let spread = base.as_millis() as u64 / 2 + 1;
        base + Duration::from_millis(nanos % spread)
    }

    /// Sleeps for [`Self::delay`].
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>) {
        std::thread::sleep(self.delay(attempt, retry_after));
    }
}

/// Statuses worth another attempt: timeouts, throttling, and the gateway and server errors that
/// registries, ARM and storage give while overloaded or restarting.
pub fn retryable(s: StatusCode) -> bool {
    matches!(s.as_u16(), 408 | 429 | 499 | 500 | 502 | 503 | 504 | 522)
}

/// Transport errors worth another attempt: no connection, a timeout, a request or body that
/// broke off.
pub fn transient(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

/// The `Retry-After` header in seconds (the HTTP-date form is not used by these services).
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy() {
        assert!(
            retryable(StatusCode::TOO_MANY_REQUESTS)
                && retryable(StatusCode::BAD_GATEWAY)
                && retryable(StatusCode::REQUEST_TIMEOUT)
                && !retryable(StatusCode::NOT_FOUND)
                && !retryable(StatusCode::UNAUTHORIZED)
        );
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(p.delay(1, Some(Duration::from_secs(600))), MAX_RETRY_AFTER);
        let first = p.delay(1, None);
        assert!(first >= p.base && first <= p.base * 3 / 2 + Duration::from_millis(1));
        assert!(p.delay(3, None) >= p.base * 4);
        assert!(p.delay(40, None) <= p.base * 96 + Duration::from_millis(1));
        assert!(p.again(4) && !p.again(5));
        assert!(!RetryPolicy { attempts: 0, ..p }.again(1));
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = ca_certificates(&p).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = ca_certificates(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn answers_are_capped() {
        assert_eq!(read_capped(&b"12345"[..], 5).unwrap(), b"12345");
        assert!(matches!(read_capped(&b"123456"[..], 5), Err(None)));
    }
}

/// `s` percent-encoded: every byte but the unreserved `A-Z a-z 0-9 . - _ ~` (RFC 3986),
/// for a URL query value or a package URL component.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `url` as logs and errors may show it: no query (a SAS signature, an upload's state) and no
/// user info.
pub fn loggable_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// One request made, for `-v` (a `tracing` debug event of target `envbuild::http`): method,
/// URL without secrets, status or failure, time.
pub fn log_request(
    method: &reqwest::Method,
    url: &reqwest::Url,
    outcome: Result<StatusCode, &reqwest::Error>,
    took: std::time::Duration,
) {
    let url = loggable_url(url);
    let ms = took.as_millis();
    match outcome {
        Ok(s) => {
            tracing::debug!(target: "envbuild::http", "{method} {url} -> {} ({ms} ms)", s.as_u16())
        }
        Err(e) => tracing::debug!(
            target: "envbuild::http",
            "{method} {url} -> no answer: {} ({ms} ms)",
            if e.is_timeout() { "timed out" } else if e.is_connect() { "cannot connect" } else { "failed" }
        ),
    }
}

/// Sends `rb` on the blocking client, logged by [`log_request`].
pub fn send_logged(
    rb: reqwest::blocking::RequestBuilder,
) -> reqwest::Result<reqwest::blocking::Response> {
    let (client, req) = rb.build_split();
    execute_logged(&client, req?)
}

/// Executes `req` on `client`, logged by [`log_request`].
pub fn execute_logged(
    client: &reqwest::blocking::Client,
    req: reqwest::blocking::Request,
) -> reqwest::Result<reqwest::blocking::Response> {
    let (method, url) = (req.method().clone(), req.url().clone());
    let t = std::time::Instant::now();
    let r = client.execute(req);
    log_request(&method, &url, r.as_ref().map(|x| x.status()), t.elapsed());
    r
}

#[cfg(test)]
mod log_tests {
    #[test]
    fn loggable_urls_lose_query_and_user_info() {
        let u: reqwest::Url = "https://user:pw@acct.blob.core.windows.net/c/b?sv=2024&sig=SECRET"
            .parse()
            .unwrap();
        assert_eq!(
            super::loggable_url(&u),
            "https://acct.blob.core.windows.net/c/b"
        );
    }
}
