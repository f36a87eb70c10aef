//! The OCI distribution client (reqwest): pull by digest into the cache, push blobs (HEAD to
//! skip, a cross-repository mount where another repository has them, monolithic for small
//! blobs, chunked PATCHes with explicit Content-Length and `Content-Range: start-end` for large
//! ones, resumed from the registry's `Range`), the manifest last; Basic and Bearer-challenge
//! authentication (with ACR's Entra exchange); retries through [`crate::http::RetryPolicy`].
//!
//! One file per idea: [`reference`] (names), [`client`] (the client and its request loop),
//! [`auth`] (challenges and the token cache), [`blob`] (blob transfers), [`manifest`],
//! [`push`] and [`pull`] (whole images). Host quirks live in [`crate::hosts`].

pub mod auth;
pub mod blob;
pub mod client;
pub mod fetch;
pub mod manifest;
pub mod pull;
pub mod push;
pub mod reference;
pub mod referrers;

use std::borrow::Cow;
use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::auth::entra::EntraError;
use crate::error::Hint;
use crate::http::{HttpError, RetryPolicy, Timeouts};

pub use crate::image::Pushable;
pub use blob::{Check, Sent};
pub use client::Client;
pub use pull::pull;
pub use push::{push, PushReport};
pub use reference::{BadReference, Reference};

/// Why a registry operation failed; every variant names registry and repository.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("{registry}/{repository}: {what}: HTTP {status}: {message}")]
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
    #[error("{registry}/{repository}: {what}: {message}")]
    TimedOut {
        registry: String,
        repository: String,
        what: String,
        message: String,
    },
    #[error("{registry}/{repository}: cannot connect ({what}): {source}")]
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
        source: EntraError,
    },
    #[error("{registry}/{repository}: {source}")]
    Http {
        registry: String,
        repository: String,
        #[source]
        source: HttpError,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A local blob that is not what its descriptor says, found just before its upload.
    #[error(transparent)]
    Blob(Box<crate::image::ImageError>),
}

impl Hint for RegistryError {
    fn hint(&self) -> Option<Cow<'_, str>> {
        match self {
            RegistryError::Status { hint, .. } => hint.map(Cow::Borrowed),
            RegistryError::Connect { .. } => Some(Cow::Borrowed("is the registry up and the address right? Plain HTTP is used only for loopback or --insecure-registry")),
            RegistryError::TimedOut { .. } => Some(Cow::Borrowed("the registry stopped answering; on a slow or distant link raise --connect-timeout or --idle-timeout (seconds)")),
            _ => None,
        }
    }
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Hosts (host or host:port) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Extra CA certificate (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Blob size above which uploads are chunked, and the chunk size.
    pub chunk: u64,
    /// Parallel blob transfers.
    pub parallel: usize,
    /// Attempts per request for retryable failures, and the backoff between them.
    pub retry: RetryPolicy,
    /// How long a connection or a silence may take.
    pub timeouts: Timeouts,
}

/// The registry's error message from an OCI error body (`{"errors":[{"code","message"}]}`,
/// distribution spec), or the body's start.
pub(crate) fn error_message(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    match serde_json::from_str::<Errors>(body) {
        Ok(e) => e
            .errors
            .iter()
            .map(|e| {
                crate::error::printable(
                    &format!(
                        "{}: {}",
                        e.code.as_deref().unwrap_or("?"),
                        e.message.as_deref().unwrap_or("")
                    ),
                    300,
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(_) => crate::error::printable(body, 300),
    }
}
