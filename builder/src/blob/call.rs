//! One storage request, tried again as [`RetryPolicy`] says: every attempt counted (requests,
//! body bytes), bounded in time, and its failure turned into a [`BlobError`] — the service's
//! code, message and authentication detail, never a header or a token.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use azure_core::error::ErrorKind;
use azure_core::http::headers::HeaderName;
use azure_storage_blob::StorageError;

use super::{BlobError, Counters, Credential, ServiceFailure};
use crate::http::RetryPolicy;

/// What every request needs, cheap to clone into a task.
#[derive(Clone)]
pub(super) struct Ctx {
    pub account: Arc<str>,
    pub container: Arc<str>,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    pub counters: Arc<Counters>,
    pub credential: Arc<Credential>,
}

/// How an attempt failed.
enum Failure {
    /// Worth another attempt, after the server's `Retry-After` if it gave one.
    Again(Option<Duration>, String),
    /// Final.
    Fatal(BlobError),
}

impl Ctx {
    /// `f` until it succeeds or the policy gives up. `body` is the bytes each attempt sends
    /// (counted per attempt); `what` names the blob or container in errors.
    pub async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        what: &str,
        body: u64,
        mut f: F,
    ) -> Result<T, BlobError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = azure_core::Result<T>>,
    {
        // A request may take its bytes at 64 KiB/s plus the fixed allowance.
        let limit = self.timeout + Duration::from_millis(body / 64);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            self.counters.bytes.fetch_add(body, Ordering::Relaxed);
            let failure = match tokio::time::timeout(limit, f()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => self.failure(op, what, e),
                Err(_) => Failure::Again(None, format!("no answer within {} s", limit.as_secs())),
            };
            match failure {
                Failure::Fatal(e) => return Err(e),
                Failure::Again(after, message) => {
                    if !self.retry.again(attempt) {
                        return Err(BlobError::Transport {
                            op,
                            what: what.to_owned(),
                            account: self.account.to_string(),
                            attempts: attempt,
                            message,
                        });
                    }
                    tracing::debug!(target: "envbuild::http", "{op} {what}: {message}; attempt {} follows", attempt + 1);
                    tokio::time::sleep(self.retry.delay(attempt, after)).await;
                }
            }
        }
    }

    fn failure(&self, op: &'static str, what: &str, e: azure_core::Error) -> Failure {
        match e.kind() {
            ErrorKind::HttpResponse {
                status,
                raw_response,
                ..
            } => {
                let code = u16::from(*status);
                let after = raw_response.as_ref().and_then(|r| {
                    r.headers()
                        .get_optional_str(&HeaderName::from_static("retry-after"))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs)
                });
                let service = self.service_error(op, what, code, e);
                let retry = reqwest::StatusCode::from_u16(code)
                    .map(crate::http::retryable)
                    .unwrap_or(false);
                if retry {
                    Failure::Again(after, service.to_string())
                } else {
                    Failure::Fatal(service)
                }
            }
            ErrorKind::Io | ErrorKind::Connection => Failure::Again(None, one_line(&e)),
            ErrorKind::Credential => match self.credential.failed.lock().expect("lock").take() {
                Some(source) => Failure::Fatal(BlobError::Token(source)),
                None => Failure::Fatal(BlobError::Setup(one_line(&e))),
            },
            _ => Failure::Fatal(BlobError::Transport {
                op,
                what: what.to_owned(),
                account: self.account.to_string(),
                attempts: 1,
                message: one_line(&e),
            }),
        }
    }

    /// The service's error answer: code (the `x-ms-error-code` header or the XML's), the first
    /// line of its message (the rest is the request id and time), the authentication detail.
    fn service_error(
        &self,
        op: &'static str,
        what: &str,
        status: u16,
        e: azure_core::Error,
    ) -> BlobError {
        let (code, message, detail) = match StorageError::try_from(e) {
            Ok(s) => (
                s.error_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "(no code)".into()),
                s.message.unwrap_or_default(),
                s.authentication_error_detail,
            ),
            Err(e) => ("(no code)".into(), one_line(&e), None),
        };
        let first = |s: &str| crate::error::printable(s.lines().next().unwrap_or("").trim(), 300);
        BlobError::Service(Box::new(ServiceFailure {
            op,
            what: what.to_owned(),
            account: self.account.to_string(),
            container: self.container.to_string(),
            status,
            code: first(&code),
            message: first(&message),
            detail: detail.as_deref().map(first).filter(|d| !d.is_empty()),
        }))
    }
}

/// An azure_core error and its causes on one line.
fn one_line(e: &azure_core::Error) -> String {
    crate::error::report(crate::error::chain(e), |_| None, None).replace('\n', " ")
}
