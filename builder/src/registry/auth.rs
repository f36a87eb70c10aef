//! Registry authentication: answering `WWW-Authenticate` challenges (Basic, or Bearer through
//! the challenge's token endpoint: anonymous, Basic, an identity token, or ACR's Entra exchange)
//! and the one token cache of a client.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::blocking::Response;
use reqwest::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Deserialize;

use super::{Client, RegistryError};
use crate::auth::entra::{EntraChain, EntraError, ACR_SCOPE};
use crate::auth::{Credentials, Secret};
use crate::http;

/// The most of a token endpoint's answer that is read.
const MAX_TOKEN_ANSWER: u64 = 256 << 10;
/// The longest token sent back as a header (ACR's and Docker Hub's are a few KiB).
const MAX_TOKEN: usize = 64 << 10;

/// What a client knows of its authentication, behind one lock.
#[derive(Debug, Default)]
pub(super) struct TokenCache {
    /// The Bearer token for this repository's scope, and when to stop trusting it.
    pub(super) bearer: Option<(Secret, Instant)>,
    /// The registry asked for Basic authentication.
    pub(super) basic: bool,
    /// The ACR refresh token from `/oauth2/exchange` (Entra credentials), reused until refused.
    refresh: Option<Secret>,
    /// The Entra credential chain, made on first use.
    entra: Option<Arc<EntraChain>>,
}

/// A token endpoint's answer (Docker token spec and OAuth2: `token` or `access_token`).
#[derive(Debug, Default, Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
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

impl Client {
    /// The cached Bearer token while it is valid.
    pub(super) fn current_token(&self) -> Option<Secret> {
        self.tokens
            .lock()
            .expect("lock")
            .bearer
            .as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, _)| t.clone())
    }

    /// The Authorization header for a request: the Bearer token, else Basic once the registry
    /// asked for it. Marked sensitive, so it never shows in a Debug print.
    pub(super) fn authorization(&self, token: Option<&Secret>) -> Option<HeaderValue> {
        let value = if let Some(t) = token {
            format!("Bearer {}", t.expose())
        } else {
            match (&self.credentials, self.tokens.lock().expect("lock").basic) {
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

    /// [`Self::authorization`] for a request to `url`, which gets none unless it goes to this
    /// registry (same scheme, host and port): an upload `Location` naming another host gets no
    /// password or token of this one, as containerd and go-containerregistry scope them.
    pub(super) fn authorization_for(
        &self,
        url: &str,
        token: Option<&Secret>,
    ) -> Option<HeaderValue> {
        let origin = |u: &str| {
            reqwest::Url::parse(u).ok().map(|u| {
                (
                    u.scheme().to_owned(),
                    u.host_str().map(str::to_owned),
                    u.port_or_known_default(),
                )
            })
        };
        match (origin(url), origin(&self.base)) {
            (Some(a), Some(b)) if a == b => self.authorization(token),
            _ => None,
        }
    }

    /// Answers a 401 challenge: Basic (use the credentials) or Bearer (fetch a token).
    pub(super) fn answer(&self, headers: &HeaderMap, what: &str) -> Result<(), RegistryError> {
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
                self.tokens.lock().expect("lock").basic = true;
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
                        let resp = http::send_logged(rb)
                            .map_err(|source| self.connect_err(&realm, source))?;
                        self.token_json(resp, &realm, what, None)?
                    }
                };
                let token = v.token.or(v.access_token).ok_or_else(|| {
                    self.protocol(what, "token endpoint answered without a token")
                })?;
                if token.len() > MAX_TOKEN {
                    return Err(self.protocol(
                        what,
                        format!(
                            "the token from {realm} is {} KiB long, more than the {} KiB a registry token needs; it is not sent",
                            token.len() >> 10,
                            MAX_TOKEN >> 10
                        ),
                    ));
                }
                let life = v
                    .expires_in
                    .or_else(|| jwt_seconds_left(&token))
                    .unwrap_or(60);
                self.tokens.lock().expect("lock").bearer = Some((
                    Secret::new(token),
                    Instant::now() + Duration::from_secs(life.saturating_sub(5)),
                ));
                Ok(())
            }
            _ => Err(self.status_err(what, StatusCode::UNAUTHORIZED, "no credentials accepted")),
        }
    }

    /// The token scopes of this client: push and pull on its repository, pull on the
    /// repositories it may mount from.
    pub(super) fn scopes(&self) -> Vec<String> {
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
    ) -> Result<TokenAnswer, RegistryError> {
        let status = resp.status();
        let body = match http::read_capped(resp, MAX_TOKEN_ANSWER) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(None) => {
                return Err(self.protocol(
                    what,
                    format!(
                        "{url} answered more than {} KiB, more than any token answer",
                        MAX_TOKEN_ANSWER >> 10
                    ),
                ))
            }
            Err(Some(e)) => {
                return Err(self.protocol(what, format!("reading the answer of {url}: {e}")))
            }
        };
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
        http::send_logged(self.http.post(realm).form(&form))
            .map_err(|source| self.connect_err(realm, source))
    }

    /// The Entra credential chain, made on first use (with this client's CA file).
    fn entra(&self) -> Result<Arc<EntraChain>, RegistryError> {
        if let Some(a) = &self.tokens.lock().expect("lock").entra {
            return Ok(a.clone());
        }
        let chain = EntraChain::from_env(self.settings.ca_file.as_deref())
            .map_err(|source| self.entra_err(source))?;
        let chain = Arc::new(chain);
        self.tokens.lock().expect("lock").entra = Some(chain.clone());
        Ok(chain)
    }

    fn entra_err(&self, source: EntraError) -> RegistryError {
        RegistryError::Entra {
            registry: self.reference.registry.clone(),
            repository: self.reference.repository.clone(),
            source,
        }
    }

    /// ACR's Entra flow: an Entra token for the ACR audience → `POST /oauth2/exchange` → an
    /// ACR refresh token (kept) → `POST /oauth2/token` → an access token. A refused refresh
    /// token is exchanged anew once.
    fn entra_token(
        &self,
        realm: &str,
        service: &str,
        what: &str,
    ) -> Result<TokenAnswer, RegistryError> {
        let cached = self.tokens.lock().expect("lock").refresh.clone();
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
            .entra()?
            .token(ACR_SCOPE)
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
        let resp = http::send_logged(self.http.post(&url).form(&form))
            .map_err(|source| self.connect_err(&url, source))?;
        let v = self.token_json(resp, &url, what, Some("the registry refused the Microsoft Entra ID token: the identity needs a role on this registry (AcrPush to push, AcrPull to pull)"))?;
        let refresh = v.refresh_token.filter(|t| !t.is_empty()).ok_or_else(|| {
            self.protocol(what, format!("{url} answered without a refresh_token"))
        })?;
        let refresh = Secret::new(refresh);
        self.tokens.lock().expect("lock").refresh = Some(refresh.clone());
        Ok(refresh)
    }

    /// Checks that the credentials open the registry (`GET /v2/`, answering its challenge) and
    /// returns what `docker login` would store: the ACR refresh token for Entra credentials,
    /// else the credentials themselves.
    pub fn login(&self) -> Result<Option<Credentials>, RegistryError> {
        self.ping("login")?;
        Ok(match &self.credentials {
            Some(Credentials::Entra) => self
                .tokens
                .lock()
                .expect("lock")
                .refresh
                .clone()
                .map(Credentials::IdentityToken),
            other => other.clone(),
        })
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
    #[derive(Deserialize)]
    struct Claims {
        exp: i64,
    }
    let exp = serde_json::from_slice::<Claims>(&bytes).ok()?.exp;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some(exp.saturating_sub(now).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            exchange_url("https://r.azurecr.io/oauth2/token"),
            "https://r.azurecr.io/oauth2/exchange"
        );
    }
}
