//! Who envbuild is to registries and Azure: the secret type that never prints, registry
//! [`Credentials`], and the one policy that decides them — flags, then the environment, then
//! Docker's config and credential helpers ([`docker_config`]), then Microsoft Entra ID
//! ([`entra`]) for Azure Container Registries.

pub mod docker_config;
pub mod entra;

use std::fmt;

use thiserror::Error;

use crate::hosts;

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

/// Where Entra tokens come from: the credential chain in the CLI, a fixed source in tests. The
/// ARM client (`azureml`) and the storage client (`blob`) both ask it, each for its own scope.
pub trait TokenSource: Send + Sync {
    /// An access token for `scope`, or why none could be had (listing what was tried).
    fn token(&self, scope: &str) -> Result<Secret, entra::EntraError>;
}

/// A token source that always answers with one token (tests, and callers that hold a token).
#[derive(Debug, Clone)]
pub struct StaticToken(pub Secret);

impl TokenSource for StaticToken {
    fn token(&self, _scope: &str) -> Result<Secret, entra::EntraError> {
        Ok(self.0.clone())
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
    /// Microsoft Entra ID through the credential chain ([`entra`]): an Entra token for the ACR
    /// audience, exchanged at `/oauth2/exchange` for an ACR refresh token.
    Entra,
}

/// Username under which Docker's config and ACR carry an ACR refresh token as the password.
pub const ACR_TOKEN_USERNAME: &str = "00000000-0000-0000-0000-000000000000";

/// How a registry is authenticated to when no user name and password are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Microsoft Entra ID through the Azure credential chain (ACR's token exchange)
    Entra,
    /// Docker's config.json: auths, credHelpers, credsStore
    Docker,
    /// No credentials
    Anonymous,
}

/// Why no credentials could be decided.
#[derive(Debug, Error)]
pub enum AuthError {
    #[error("ENVBUILD_REGISTRY_AUTH=`{0}` is not one of entra, docker, anonymous")]
    BadMode(String),
    #[error("--username {0} needs --password-stdin (or ENVBUILD_REGISTRY_PASSWORD)")]
    NoPassword(String),
    #[error("Docker's config.json")]
    DockerConfig(#[source] docker_config::ConfigError),
    #[error("`--auth anonymous` has nothing to log in with")]
    AnonymousLogin,
}

/// What the command line gave: a user name, a password read from stdin, an auth mode.
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub mode: Option<AuthMode>,
}

/// `--auth`, else `ENVBUILD_REGISTRY_AUTH`.
pub fn mode_from_env(flag: Option<AuthMode>) -> Result<Option<AuthMode>, AuthError> {
    if flag.is_some() {
        return Ok(flag);
    }
    match std::env::var("ENVBUILD_REGISTRY_AUTH") {
        Ok(v) if !v.is_empty() => <AuthMode as clap::ValueEnum>::from_str(&v, true)
            .map(Some)
            .map_err(|_| AuthError::BadMode(v)),
        _ => Ok(None),
    }
}

/// The credentials for `registry`: the flags' user name and password (else
/// `ENVBUILD_REGISTRY_USERNAME`/`ENVBUILD_REGISTRY_PASSWORD`), then the auth mode (`--auth`,
/// else `ENVBUILD_REGISTRY_AUTH`), then Docker's config.json and its credential helpers, then
/// Entra ID for an Azure Container Registry. A password alone is an identity token; with the
/// all-zero ACR user name, too.
pub fn resolve(given: &Given, registry: &str) -> Result<Option<Credentials>, AuthError> {
    let password = given.password.clone().or_else(|| {
        std::env::var("ENVBUILD_REGISTRY_PASSWORD")
            .ok()
            .filter(|s| !s.is_empty())
            .map(Secret::new)
    });
    let username = given
        .username
        .clone()
        .or_else(|| std::env::var("ENVBUILD_REGISTRY_USERNAME").ok())
        .filter(|u| !u.is_empty());
    Ok(match (username, password) {
        (Some(u), Some(p)) if u == ACR_TOKEN_USERNAME => Some(Credentials::IdentityToken(p)),
        (Some(u), Some(p)) => Some(Credentials::Basic {
            username: u,
            password: p,
        }),
        (None, Some(p)) => Some(Credentials::IdentityToken(p)),
        (Some(u), None) => return Err(AuthError::NoPassword(u)),
        (None, None) => match mode_from_env(given.mode)? {
            Some(AuthMode::Entra) => Some(Credentials::Entra),
            Some(AuthMode::Anonymous) => None,
            Some(AuthMode::Docker) => {
                docker_config::credentials(registry).map_err(AuthError::DockerConfig)?
            }
            None => docker_config::credentials(registry)
                .map_err(AuthError::DockerConfig)?
                .or_else(|| host_default(registry)),
        },
    })
}

/// The credentials `login` checks and stores for `registry`: with a user name or password, those
/// (by [`resolve`], the auth mode aside); else Entra ID when asked for or for an ACR; else what
/// [`resolve`] finds.
pub fn for_login(given: &Given, registry: &str) -> Result<Option<Credentials>, AuthError> {
    if given.username.is_some() || given.password.is_some() {
        return resolve(
            &Given {
                mode: None,
                ..given.clone()
            },
            registry,
        );
    }
    match mode_from_env(given.mode)? {
        Some(AuthMode::Anonymous) => Err(AuthError::AnonymousLogin),
        Some(AuthMode::Entra) => Ok(Some(Credentials::Entra)),
        _ => match host_default(registry) {
            Some(c) => Ok(Some(c)),
            None => resolve(given, registry),
        },
    }
}

/// The credentials for pulling from `registry` when nothing was given (base images, `run
/// --local` pulls): Docker's config, else Entra ID for an ACR, else none. An unreadable config
/// or a failing helper counts as none here (a pull of a public image needs nothing).
pub fn for_pull(registry: &str) -> Option<Credentials> {
    docker_config::credentials(registry)
        .ok()
        .flatten()
        .or_else(|| host_default(registry))
}

/// What a host gets when nothing else is configured: Entra ID for an ACR.
pub fn host_default(registry: &str) -> Option<Credentials> {
    hosts::is_acr(registry).then_some(Credentials::Entra)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn given_flags_come_first() {
        let g = Given {
            username: Some("alice".into()),
            password: Some(Secret::new("pw")),
            mode: Some(AuthMode::Entra),
        };
        assert!(matches!(
            resolve(&g, "myacr.azurecr.io").unwrap(),
            Some(Credentials::Basic { username, .. }) if username == "alice"
        ));
        let token = Given {
            username: Some(ACR_TOKEN_USERNAME.into()),
            ..g.clone()
        };
        assert!(matches!(
            resolve(&token, "r.io").unwrap(),
            Some(Credentials::IdentityToken(_))
        ));
        let anonymous = Given {
            mode: Some(AuthMode::Anonymous),
            ..Given::default()
        };
        assert_eq!(resolve(&anonymous, "myacr.azurecr.io").unwrap(), None);
        assert_eq!(host_default("myacr.azurecr.io"), Some(Credentials::Entra));
        assert_eq!(host_default("ghcr.io"), None);
    }

    #[test]
    fn login_takes_what_was_given_else_entra_for_acr() {
        let anonymous = Given {
            mode: Some(AuthMode::Anonymous),
            ..Given::default()
        };
        assert!(matches!(
            for_login(&anonymous, "r.io"),
            Err(AuthError::AnonymousLogin)
        ));
        let nothing = Given {
            mode: Some(AuthMode::Docker),
            ..Given::default()
        };
        assert_eq!(
            for_login(&nothing, "myacr.azurecr.io").unwrap(),
            Some(Credentials::Entra)
        );
        let password = Given {
            username: Some("alice".into()),
            password: Some(Secret::new("pw")),
            mode: Some(AuthMode::Anonymous),
        };
        assert!(matches!(
            for_login(&password, "myacr.azurecr.io").unwrap(),
            Some(Credentials::Basic { .. })
        ));
    }
}
