//! Azure Machine Learning over Azure Resource Manager: the workspace, a blocking ARM client with
//! retries and typed errors (`error`), and the three things envbuild does there — environment
//! versions, command jobs, model versions (one submodule each); computes and what they cost.

pub mod code;
pub mod compute;
pub mod datastore;
pub mod environment;
pub mod error;
pub mod job;
pub mod lro;
pub mod model;
pub mod options;
pub mod outputs;
pub mod power;
pub mod search_space;
#[cfg(test)]
pub mod spec_check;
pub mod stage;
pub mod status;
pub mod sweep;
pub mod sweep_settings;
pub mod timeout;
pub mod trials;
pub mod vmsize;
pub mod workspace;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::Client as Http;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::Method;
use serde_json::Value;

use crate::auth::entra::ARM_SCOPE;
use crate::auth::Secret;
use crate::http::{self, RetryPolicy};
pub use error::{ArmFailure, AssetKind, AzureError, NameRule};
pub use workspace::Workspace;

/// Public Azure's ARM endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://management.azure.com";
/// The newest stable Microsoft.MachineLearningServices api-version.
pub const DEFAULT_API_VERSION: &str = "2025-12-01";
/// The scope of a token for the workspace's storage account, where job logs live.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// The Blob service version sent with storage-scoped tokens (bearer tokens need 2017-11-09 or later).
pub const STORAGE_API_VERSION: &str = "2021-08-06";

/// Where tokens come from (in `auth`, so that the storage client shares it).
pub use crate::auth::{StaticToken, TokenSource};

/// How to reach ARM.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `https://management.azure.com` or a stand-in's URL (no trailing slash).
    pub endpoint: String,
    pub api_version: String,
    /// PEM bundle with extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// Attempts per request and backoff, for 5xx, 429, 408 and connection errors.
    pub retry: RetryPolicy,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            endpoint: DEFAULT_ENDPOINT.into(),
            api_version: DEFAULT_API_VERSION.into(),
            ca_file: None,
            retry: RetryPolicy::default(),
        }
    }
}

/// A successful ARM answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Value,
    pub request_id: String,
    /// The answer's headers (`Azure-AsyncOperation`, `Location`, `Retry-After` of a 202).
    pub headers: HeaderMap,
    /// `Location` of a long-running operation's 202 (an absolute URL on the ARM endpoint).
    pub location: Option<String>,
    /// `Retry-After` of that 202.
    pub retry_after: Option<Duration>,
}

/// A blocking ARM client for one workspace.
pub struct Client {
    http: Http,
    settings: Settings,
    tokens: Arc<dyn TokenSource>,
    pub workspace: Workspace,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("settings", &self.settings)
            .field("workspace", &self.workspace)
            .finish_non_exhaustive()
    }
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned()
}

/// The hint for an ARM failure: the role that is missing, or how to check the workspace.
fn hint_for(status: u16, code: &str, ws: &Workspace) -> Option<String> {
    match (status, code) {
        (401, _) => Some(format!(
            "the token was refused; sign in again (`az login`, or check AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET) — the identity needs the \"AzureML Data Scientist\" role on workspace {}",
            ws.name
        )),
        (403, _) => Some(format!(
            "the identity lacks a role: grant it \"AzureML Data Scientist\" on workspace {} (resource group {}); the workspace's compute needs AcrPull on the image's registry",
            ws.name, ws.resource_group
        )),
        (404, "ParentResourceNotFound" | "ResourceGroupNotFound" | "SubscriptionNotFound") => Some(format!(
            "check the workspace: subscription {}, resource group {}, workspace {} (flags --subscription/--resource-group/--workspace, AZURE_SUBSCRIPTION_ID/AZURE_RESOURCE_GROUP/AZUREML_WORKSPACE_NAME, or config.json)",
            ws.subscription_id, ws.resource_group, ws.name
        )),
        _ => None,
    }
}

impl Client {
    pub fn new(
        workspace: Workspace,
        settings: Settings,
        tokens: Box<dyn TokenSource>,
    ) -> Result<Client, AzureError> {
        let http =
            http::blocking_client(settings.ca_file.as_deref(), Some(Duration::from_secs(120)))?;
        Ok(Client {
            http,
            settings,
            tokens: Arc::from(tokens),
            workspace,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Where this client's tokens come from (the storage client asks the same source, for its
    /// own scope).
    pub fn tokens(&self) -> Arc<dyn TokenSource> {
        self.tokens.clone()
    }

    /// The access token for ARM.
    fn bearer(&self) -> Result<Secret, AzureError> {
        self.bearer_for(ARM_SCOPE)
    }

    /// An access token for `scope` (ARM, or the workspace's storage for logs).
    fn bearer_for(&self, scope: &str) -> Result<Secret, AzureError> {
        self.tokens
            .token(scope)
            .map_err(|source| AzureError::Token {
                scope: scope.into(),
                source,
            })
    }

    /// `method` on `{workspace}/{path}` (empty path: the workspace itself).
    pub fn ws(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, AzureError> {
        let full = if path.is_empty() {
            self.workspace.arm_id()
        } else {
            format!("{}/{path}", self.workspace.arm_id())
        };
        self.request(method, &full, body)
    }

    /// One ARM request with retries on 5xx, 429, 408 and connection errors (never on other 4xx).
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, AzureError> {
        // A path may carry its own query (`jobs?listViewType=…`, a nextLink's `$skipToken`).
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{path}{sep}api-version={}",
            self.settings.endpoint.trim_end_matches('/'),
            self.settings.api_version
        );
        self.send(method, &url, path, body)
    }

    /// GET on a long-running operation's `Location`: only on the ARM endpoint (the ARM token
    /// goes nowhere else), its query kept as the service gave it.
    pub fn get_location(&self, location: &str) -> Result<Response, AzureError> {
        let endpoint = self.settings.endpoint.trim_end_matches('/');
        let path = location
            .strip_prefix(endpoint)
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| AzureError::ForeignLocation {
                location: location.to_owned(),
                endpoint: endpoint.to_owned(),
            })?;
        let path = path.split('?').next().unwrap_or(path).to_owned();
        self.send(Method::GET, location, &path, None)
    }

    /// The request loop of [`Client::request`] on a full `url`; `path` names it in errors.
    fn send(
        &self,
        method: Method,
        url: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, AzureError> {
        let token = self.bearer()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut rb = self
                .http
                .request(method.clone(), url)
                .header(AUTHORIZATION, bearer_header(&token));
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let wait = match http::send_logged(rb) {
                Err(source) => {
                    if !self.settings.retry.again(attempt) {
                        return Err(AzureError::Connect {
                            method: method.to_string(),
                            url: format!("{}{path}", self.settings.endpoint),
                            source,
                        });
                    }
                    None
                }
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let request_id = header(&headers, "x-ms-request-id");
                    if http::retryable(status) && self.settings.retry.again(attempt) {
                        http::retry_after(&headers)
                    } else {
                        let text = capped_text(resp, method.as_str(), path)?;
                        if status.is_success() {
                            let body = if text.trim().is_empty() {
                                Value::Null
                            } else {
                                serde_json::from_str(&text).map_err(|source| {
                                    AzureError::NotJson {
                                        method: method.to_string(),
                                        path: path.to_owned(),
                                        status,
                                        request_id: request_id.clone(),
                                        source,
                                    }
                                })?
                            };
                            return Ok(Response {
                                status: status.as_u16(),
                                body,
                                request_id,
                                location: headers
                                    .get(reqwest::header::LOCATION)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned),
                                retry_after: http::retry_after(&headers),
                                headers,
                            });
                        }
                        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        let code = v["error"]["code"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| {
                                status.canonical_reason().unwrap_or("error").to_owned()
                            });
                        let message = v["error"]["message"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| text.chars().take(300).collect());
                        return Err(AzureError::Arm(Box::new(ArmFailure {
                            method: method.to_string(),
                            path: path.to_owned(),
                            status: status.as_u16(),
                            hint: hint_for(status.as_u16(), &code, &self.workspace),
                            code,
                            message,
                            request_id,
                        })));
                    }
                }
            };
            self.settings.retry.wait(attempt, wait);
        }
    }

    /// A GET that may find nothing: `Ok(None)` for 404.
    pub fn get_opt(&self, path: &str) -> Result<Option<Value>, AzureError> {
        match self.ws(Method::GET, path, None) {
            Ok(r) => Ok(Some(r.body)),
            Err(e @ AzureError::Arm(_)) if e.status() == Some(404) => {
                if let AzureError::Arm(a) = &e {
                    // A missing workspace is an error, not "no such asset".
                    if matches!(
                        a.code.as_str(),
                        "ParentResourceNotFound" | "ResourceGroupNotFound" | "SubscriptionNotFound"
                    ) {
                        return Err(e);
                    }
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// GET on the workspace's storage (a job's log) with a storage-scoped token
    /// ([`STORAGE_SCOPE`], never the ARM token) and `x-ms-version`; the body as text.
    pub fn get_text(&self, url: &str) -> Result<String, AzureError> {
        let token = self.bearer_for(STORAGE_SCOPE)?;
        self.get_text_with(
            url,
            self.http
                .get(url)
                .header(AUTHORIZATION, bearer_header(&token))
                .header("x-ms-version", STORAGE_API_VERSION),
        )
    }

    /// GET on the workspace's data plane (Run History, MLflow tracking), which takes the ARM
    /// token as Azure ML's own clients send it; the body as text.
    pub fn get_data_plane(&self, url: &str) -> Result<String, AzureError> {
        let token = self.bearer_for(ARM_SCOPE)?;
        self.get_text_with(
            url,
            self.http
                .get(url)
                .header(AUTHORIZATION, bearer_header(&token)),
        )
    }

    fn get_text_with(
        &self,
        url: &str,
        request: reqwest::blocking::RequestBuilder,
    ) -> Result<String, AzureError> {
        let resp = http::send_logged(request).map_err(|source| AzureError::Connect {
            method: "GET".into(),
            url: url.to_owned(),
            source,
        })?;
        let status = resp.status();
        let text = capped_text(resp, "GET", url)?;
        if !status.is_success() {
            return Err(AzureError::GetFailed {
                url: url.to_owned(),
                status,
            });
        }
        Ok(text)
    }
}

/// The most of an ARM answer or a log read into memory (a job's whole log is a few MiB).
const MAX_ANSWER: u64 = 64 << 20;

/// An answer's body as text, read up to [`MAX_ANSWER`]; a longer one is an error naming it,
/// a broken read gives what arrived.
fn capped_text(
    resp: reqwest::blocking::Response,
    method: &str,
    url: &str,
) -> Result<String, AzureError> {
    match http::read_capped(resp, MAX_ANSWER) {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(None) => Err(AzureError::TooLarge {
            method: method.to_owned(),
            url: url.to_owned(),
            cap: MAX_ANSWER,
        }),
        Err(Some(_)) => Ok(String::new()),
    }
}

/// `Bearer <token>`, marked sensitive so that it never shows in a Debug print of the request.
fn bearer_header(token: &Secret) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
    v.set_sensitive(true);
    v
}

/// Whether `s` is a valid Azure ML asset or job name: `^[a-zA-Z0-9][a-zA-Z0-9\-_]{0,254}$`.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && s.len() <= 255
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_service_rule() {
        for ok in ["a", "envbuild-mnist", "A_1", "0abc", &"x".repeat(255)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "_a", "a.b", "a b", "a/b", &"x".repeat(256), "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn hints_name_the_role() {
        let ws = Workspace {
            subscription_id: "s".into(),
            resource_group: "rg".into(),
            name: "w".into(),
        };
        assert!(hint_for(403, "AuthorizationFailed", &ws)
            .unwrap()
            .contains("AzureML Data Scientist"));
        assert!(hint_for(401, "AuthenticationFailed", &ws)
            .unwrap()
            .contains("AzureML Data Scientist"));
        assert!(hint_for(404, "ParentResourceNotFound", &ws)
            .unwrap()
            .contains("resource group rg"));
        assert!(hint_for(400, "UserError", &ws).is_none());
    }
}
