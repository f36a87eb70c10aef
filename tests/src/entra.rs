//! A stand-in for Microsoft Entra ID as ../shared/azure-facts.md records it: the token endpoint
//! (`POST /{tenant}/oauth2/v2.0/token`, client credentials with a secret or a federated
//! assertion) over HTTPS with the test CA, an App Service–style managed-identity endpoint
//! (`IDENTITY_ENDPOINT`/`IDENTITY_HEADER`, api-version 2019-08-01), and a fake `az` CLI.
//! Every token it hands out is recorded; [`Entra::verifier`] lets other stand-ins (ARM, ACR)
//! check bearer tokens against that record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::json;

use crate::tls::{random, serve_http, serve_https, Served};

/// What a token was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The client id, `managed-identity`, or `az-cli-user`.
    pub identity: String,
    /// The scope asked for (`https://…/.default`; managed identity: the resource + `/.default`).
    pub scope: String,
    pub tenant: String,
    pub expires_on: SystemTime,
}

/// Checks a bearer token: what it was issued for, if the stand-in issued it and it has not
/// expired.
pub type Verifier = Arc<dyn Fn(&str) -> Option<Issued> + Send + Sync>;

#[derive(Debug, Default)]
struct Shared {
    tenant: String,
    client_id: String,
    client_secret: String,
    federated_token: String,
    identity_header: String,
    az_prefix: String,
    lifetime: u64,
    issued: Mutex<HashMap<String, Issued>>,
    requests: AtomicUsize,
}

/// The running stand-in; servers stop when it is dropped.
#[derive(Debug)]
pub struct Entra {
    /// The authority host, `https://127.0.0.1:PORT` (for `AZURE_AUTHORITY_HOST`).
    pub authority: String,
    /// The managed-identity endpoint, `http://127.0.0.1:PORT/msi/token` (`IDENTITY_ENDPOINT`).
    pub identity_endpoint: String,
    pub tenant: String,
    pub client_id: String,
    /// The one client secret the token endpoint accepts. Tests must never see it printed.
    pub client_secret: String,
    /// The federated token (`AZURE_FEDERATED_TOKEN_FILE` contents) accepted as a client assertion.
    pub federated_token: String,
    pub identity_header: String,
    shared: Arc<Shared>,
    _servers: (Served, Served),
}

fn entra_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let trace = random(12);
    (
        status,
        Json(json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {trace} Timestamp: 2026-01-01 00:00:00Z"),
            "error_codes": [code],
            "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": trace,
            "correlation_id": trace,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        })),
    )
        .into_response()
}

impl Shared {
    fn issue(&self, identity: &str, scope: &str) -> (String, u64) {
        let token = format!("entra.{}", random(24));
        self.issued.lock().expect("lock").insert(
            token.clone(),
            Issued {
                identity: identity.to_owned(),
                scope: scope.to_owned(),
                tenant: self.tenant.clone(),
                expires_on: SystemTime::now() + Duration::from_secs(self.lifetime),
            },
        );
        (token, self.lifetime)
    }
}

async fn token_endpoint(
    State(s): State<Arc<Shared>>,
    UrlPath(tenant): UrlPath<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if tenant != s.tenant {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        );
    }
    if field("grant_type") != "client_credentials" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let scope = field("scope");
    if !scope.ends_with("/.default") {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
        );
    }
    if field("client_id") != s.client_id {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{}' was not found in the directory '{tenant}'.",
                field("client_id")
            ),
        );
    }
    let secret_ok = !field("client_secret").is_empty() && field("client_secret") == s.client_secret;
    let assertion_ok = field("client_assertion_type")
        == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        && field("client_assertion") == s.federated_token;
    if !secret_ok && !assertion_ok {
        return if form.contains_key("client_assertion") {
            entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700213,
                "No matching federated identity record found for presented assertion subject.",
            )
        } else {
            entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                &format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.", s.client_id),
            )
        };
    }
    let (token, life) = s.issue(&s.client_id, scope);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": life,
        "ext_expires_in": life,
        "access_token": token,
    }))
    .into_response()
}

async fn identity_endpoint(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    if headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        != Some(s.identity_header.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"statusCode": 401, "message": "Unauthorized: X-IDENTITY-HEADER is missing or wrong"})),
        )
            .into_response();
    }
    if q.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"statusCode": 400, "message": "api-version 2019-08-01 is required"})),
        )
            .into_response();
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"statusCode": 400, "message": "resource is required"})),
        )
            .into_response();
    };
    let scope = format!("{}/.default", resource.trim_end_matches('/'));
    let (token, life) = s.issue("managed-identity", &scope);
    let expires_on = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + life;
    Json(json!({
        "access_token": token,
        "expires_on": expires_on.to_string(),
        "token_type": "Bearer",
        "resource": resource,
    }))
    .into_response()
}

impl Entra {
    /// Starts the token endpoint (HTTPS, test CA) and the managed-identity endpoint (HTTP).
    pub fn start() -> Entra {
        let shared = Arc::new(Shared {
            tenant: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            client_id: "5e3a2c1b-0d4f-4a6b-8c9d-1e2f3a4b5c6d".into(),
            client_secret: format!("cs~{}", random(24)),
            federated_token: format!("eyJfederated.{}", random(24)),
            identity_header: random(16),
            az_prefix: format!("az.{}", random(12)),
            lifetime: 3599,
            ..Shared::default()
        });
        let token = serve_https(
            Router::new()
                .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
                .with_state(shared.clone()),
        );
        let msi = serve_http(
            Router::new()
                .route("/msi/token", get(identity_endpoint))
                .with_state(shared.clone()),
        );
        Entra {
            authority: token.url.clone(),
            identity_endpoint: format!("{}/msi/token", msi.url),
            tenant: shared.tenant.clone(),
            client_id: shared.client_id.clone(),
            client_secret: shared.client_secret.clone(),
            federated_token: shared.federated_token.clone(),
            identity_header: shared.identity_header.clone(),
            shared,
            _servers: (token, msi),
        }
    }

    /// The checker for bearer tokens this stand-in issued (including the fake `az`'s).
    pub fn verifier(&self) -> Verifier {
        let s = self.shared.clone();
        Arc::new(move |token: &str| {
            if let Some(scope) = token
                .strip_prefix(&s.az_prefix)
                .and_then(|r| r.strip_prefix('.'))
            {
                return Some(Issued {
                    identity: "az-cli-user".into(),
                    scope: scope.to_owned(),
                    tenant: s.tenant.clone(),
                    expires_on: SystemTime::now() + Duration::from_secs(3600),
                });
            }
            let issued = s.issued.lock().expect("lock").get(token).cloned()?;
            (issued.expires_on > SystemTime::now()).then_some(issued)
        })
    }

    /// Every token issued by the token and managed-identity endpoints.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared
            .issued
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect()
    }

    /// How many token requests (token endpoint and managed identity) the stand-in answered.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Environment for the client-secret credential: authority, tenant, client id and secret.
    pub fn client_secret_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_AUTHORITY_HOST", self.authority.clone()),
            ("AZURE_TENANT_ID", self.tenant.clone()),
            ("AZURE_CLIENT_ID", self.client_id.clone()),
            ("AZURE_CLIENT_SECRET", self.client_secret.clone()),
        ]
    }

    /// Environment for the managed-identity credential (App Service style).
    pub fn managed_identity_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("IDENTITY_ENDPOINT", self.identity_endpoint.clone()),
            ("IDENTITY_HEADER", self.identity_header.clone()),
        ]
    }

    /// Writes a fake `az` into `dir` (put `dir` first on PATH): `az account get-access-token
    /// --scope S` prints a token for S the way the real CLI does; with `logged_in` false it
    /// fails the way the real CLI does before `az login`.
    pub fn fake_az(&self, dir: &Path, logged_in: bool) -> PathBuf {
        std::fs::create_dir_all(dir).expect("az dir");
        let body = if logged_in {
            format!(
                r#"scope=""
while [ $# -gt 0 ]; do [ "$1" = "--scope" ] && scope="$2"; shift; done
exp=$(( $(date +%s) + 3600 ))
printf '{{"accessToken":"%s","expiresOn":"2099-01-01 00:00:00.000000","expires_on":%s,"subscription":"00000000-0000-0000-0000-000000000001","tenant":"{tenant}","tokenType":"Bearer"}}\n' "{prefix}.$scope" "$exp"
"#,
                tenant = self.tenant,
                prefix = self.shared.az_prefix
            )
        } else {
            "echo \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1\n".to_owned()
        };
        let script = format!(
            "#!/bin/sh\n# fake az for envbuild tests: only `account get-access-token`\ncase \"$*\" in *\"account get-access-token\"*) ;; *) echo \"fake az: unsupported: $*\" >&2; exit 2;; esac\n{body}"
        );
        let path = dir.join("az");
        std::fs::write(&path, script).expect("write az");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod az");
        dir.to_path_buf()
    }
}
