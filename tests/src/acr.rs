//! A stand-in for Azure Container Registry's token service in front of a real registry:
//! Debian's docker-registry in token-auth mode, which itself verifies the JWTs this server signs
//! (ES256, `x5c` header with a signing certificate that chains to the registry's
//! `rootcertbundle`). Endpoints as ACR has them:
//! - `POST /oauth2/exchange` (`grant_type=access_token`, `service`, `tenant`, `access_token`):
//!   an Entra token for the ACR audience (checked with the [`crate::entra`] verifier) → a refresh
//!   token;
//! - `POST /oauth2/token` (`grant_type=refresh_token`, `service`, `scope`, `refresh_token`) and
//!   `GET /oauth2/token` with Basic credentials (admin user, or username
//!   `00000000-0000-0000-0000-000000000000` with a refresh token as password) → an access token
//!   whose `access` claim grants the requested actions the identity is allowed.
//!
//! Knobs for tests: [`Acr::grant`] (e.g. pull only), [`Acr::access_lifetime`] (negative:
//! expired tokens), [`Acr::revoke_refresh_tokens`]; [`Acr::log`] lists the requests it served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use base64::Engine as _;
use serde_json::json;

use crate::entra::Verifier;
use crate::tls::{ca, random, serve_http, Served};
use crate::{Registry, TokenAuth};

/// Username that marks an ACR refresh token used as a password.
pub const TOKEN_USER: &str = "00000000-0000-0000-0000-000000000000";
const ISSUER: &str = "envbuild-test-acr";
const ACR_SCOPE: &str = "https://containerregistry.azure.net/.default";

struct Shared {
    service: Mutex<String>,
    key: ring::signature::EcdsaKeyPair,
    x5c: String,
    entra: Verifier,
    admin: (String, String),
    grant: Mutex<Vec<String>>,
    access_lifetime: Mutex<i64>,
    refresh: Mutex<HashMap<String, String>>,
    access: Mutex<Vec<String>>,
    log: Mutex<Vec<String>>,
}

/// A token-auth registry with ACR's token endpoints; stopped on drop.
pub struct Acr {
    /// The registry (`127.0.0.1:PORT`); its service name is this address, as ACR's is its host.
    pub registry: Registry,
    /// Base URL of the token server (`http://127.0.0.1:PORT`); the realm is `{this}/oauth2/token`.
    pub token_server: String,
    /// Admin user (Basic at the token endpoint).
    pub user: String,
    pub password: String,
    shared: Arc<Shared>,
    _server: Served,
    _bundle: tempfile::NamedTempFile,
}

impl std::fmt::Debug for Acr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acr")
            .field("registry", &self.registry.addr)
            .field("token_server", &self.token_server)
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn unauthorized(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"errors": [{"code": "UNAUTHORIZED", "message": message}]})),
    )
        .into_response()
}

impl Shared {
    /// A JWS compact serialisation (RFC 7515) of `claims`, signed ES256 (RFC 7518 §3.4: the
    /// signature is r and s, 32 bytes each), with the signing certificate in `x5c`.
    fn sign(&self, claims: serde_json::Value) -> String {
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let header = json!({"alg": "ES256", "typ": "JWT", "x5c": [self.x5c]});
        let signed = format!("{}.{}", b64(&header), b64(&claims));
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signed.as_bytes())
            .expect("sign JWT");
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature);
        format!("{signed}.{signature}")
    }

    /// An access token for `identity` with the requested scopes cut down to what it may do.
    fn access_token(&self, identity: &str, scopes: &[String]) -> Response {
        let grant = self.grant.lock().expect("lock").clone();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                let allowed: Vec<&str> = actions
                    .split(',')
                    .filter(|a| grant.iter().any(|g| g == a))
                    .collect();
                Some(json!({"type": kind, "name": name, "actions": allowed}))
            })
            .collect();
        let t = now();
        let exp = t + *self.access_lifetime.lock().expect("lock");
        let token = self.sign(json!({
            "iss": ISSUER,
            "sub": identity,
            "aud": *self.service.lock().expect("lock"),
            "exp": exp,
            "nbf": t - 60,
            "iat": t,
            "jti": random(12),
            "access": access,
        }));
        self.access.lock().expect("lock").push(token.clone());
        Json(json!({"access_token": token})).into_response()
    }

    fn refresh_identity(&self, token: &str) -> Option<String> {
        self.refresh.lock().expect("lock").get(token).cloned()
    }
}

async fn exchange(
    State(s): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    s.log.lock().expect("lock").push("exchange".into());
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("grant_type") != "access_token" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": [{"code": "UNSUPPORTED_GRANT_TYPE", "message": "grant_type must be access_token"}]})),
        )
            .into_response();
    }
    if field("service") != *s.service.lock().expect("lock") {
        return unauthorized("the service does not match this registry");
    }
    let Some(issued) = (s.entra)(field("access_token")) else {
        return unauthorized("the Entra ID token is not valid or has expired");
    };
    if issued.scope != ACR_SCOPE {
        return unauthorized(&format!(
            "the Entra ID token's audience is {}, not {ACR_SCOPE} (azureADAuthenticationAsArmPolicy is disabled)",
            issued.scope
        ));
    }
    if !field("tenant").is_empty() && field("tenant") != issued.tenant {
        return unauthorized("the tenant does not match the token");
    }
    let t = now();
    let token = s.sign(json!({
        "iss": ISSUER, "sub": issued.identity, "aud": *s.service.lock().expect("lock"),
        "exp": t + 3 * 3600, "nbf": t - 60, "iat": t, "jti": random(12),
        "grant_type": "refresh_token", "tenant": issued.tenant,
    }));
    s.refresh
        .lock()
        .expect("lock")
        .insert(token.clone(), issued.identity);
    Json(json!({"refresh_token": token})).into_response()
}

async fn token_post(
    State(s): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    s.log
        .lock()
        .expect("lock")
        .push(format!("token {}", field("scope")));
    if field("grant_type") != "refresh_token" {
        return unauthorized("grant_type must be refresh_token");
    }
    if field("service") != *s.service.lock().expect("lock") {
        return unauthorized("the service does not match this registry");
    }
    let Some(identity) = s.refresh_identity(field("refresh_token")) else {
        return unauthorized("the refresh token is not valid or has expired");
    };
    s.access_token(&identity, &[field("scope").to_owned()])
}

async fn token_get(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    s.log
        .lock()
        .expect("lock")
        .push(format!("token (GET) {}", scopes.join(" ")));
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some((user, password)) = basic
        .as_deref()
        .and_then(|b| b.split_once(':'))
        .map(|(u, p)| (u.to_owned(), p.to_owned()))
    else {
        return unauthorized(
            "authentication required, visit https://aka.ms/acr/authorization for more information.",
        );
    };
    let identity = if user == TOKEN_USER {
        s.refresh_identity(&password)
    } else if (user.as_str(), password.as_str()) == (s.admin.0.as_str(), s.admin.1.as_str()) {
        Some(user)
    } else {
        None
    };
    match identity {
        Some(id) => s.access_token(&id, &scopes),
        None => unauthorized(
            "authentication required, visit https://aka.ms/acr/authorization for more information.",
        ),
    }
}

impl Acr {
    /// Starts the token server and a token-auth registry that trusts it. Entra tokens for the
    /// exchange are checked with `entra` (see [`crate::entra::Entra::verifier`]).
    pub fn start(entra: Verifier) -> Acr {
        let signer = ca().leaf(&["envbuild-test-acr-token-signer"]);
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signer.key_der,
            &ring::rand::SystemRandom::new(),
        )
        .expect("signing key");
        let shared = Arc::new(Shared {
            service: Mutex::new(String::new()),
            key,
            x5c: base64::engine::general_purpose::STANDARD.encode(&signer.cert_der),
            entra,
            admin: ("envbuild-admin".into(), format!("pw-{}", random(18))),
            grant: Mutex::new(vec!["pull".into(), "push".into()]),
            access_lifetime: Mutex::new(300),
            refresh: Mutex::new(HashMap::new()),
            access: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
        });
        let server = serve_http(
            Router::new()
                .route("/oauth2/exchange", post(exchange))
                .route("/oauth2/token", post(token_post).get(token_get))
                .with_state(shared.clone()),
        );
        let bundle = tempfile::Builder::new()
            .prefix("envbuild-acr-roots-")
            .suffix(".pem")
            .tempfile()
            .expect("bundle file");
        std::fs::write(bundle.path(), ca().pem()).expect("write bundle");
        let registry = Registry::start_token(&TokenAuth {
            realm: format!("{}/oauth2/token", server.url),
            issuer: ISSUER.into(),
            rootcertbundle: bundle.path().to_path_buf(),
        });
        *shared.service.lock().expect("lock") = registry.addr.clone();
        Acr {
            registry,
            token_server: server.url.clone(),
            user: shared.admin.0.clone(),
            password: shared.admin.1.clone(),
            shared,
            _server: server,
            _bundle: bundle,
        }
    }

    /// The actions granted from now on (default pull and push): `&["pull"]` is an AcrPull-only
    /// identity.
    pub fn grant(&self, actions: &[&str]) {
        *self.shared.grant.lock().expect("lock") =
            actions.iter().map(|a| (*a).to_owned()).collect();
    }

    /// Lifetime of access tokens issued from now on, in seconds; negative: already expired.
    pub fn access_lifetime(&self, secs: i64) {
        *self.shared.access_lifetime.lock().expect("lock") = secs;
    }

    /// Forgets every refresh token issued so far (as if they had expired).
    pub fn revoke_refresh_tokens(&self) {
        self.shared.refresh.lock().expect("lock").clear();
    }

    /// The requests served: `exchange`, `token <scopes>`, `token (GET) <scopes>`.
    pub fn log(&self) -> Vec<String> {
        self.shared.log.lock().expect("lock").clone()
    }

    /// Every access token issued.
    pub fn access_tokens(&self) -> Vec<String> {
        self.shared.access.lock().expect("lock").clone()
    }

    /// Every refresh token issued by `/oauth2/exchange` and not revoked.
    pub fn refresh_tokens(&self) -> Vec<String> {
        self.shared
            .refresh
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect()
    }
}
