//! Why a datastore upload or download failed, with the fix when there is an obvious one (the
//! data role, `az login`, the container's name). Never a token: the service's answers are
//! quoted by code, message and authentication detail only.

use std::borrow::Cow;
use std::path::PathBuf;

use thiserror::Error;

use crate::auth::entra::EntraError;
use crate::digest::Digest;

#[derive(Debug, Error)]
pub enum BlobError {
    #[error("storage endpoint `{url}`: {why}")]
    BadEndpoint { url: String, why: &'static str },
    #[error("`{0}` is not a storage account name (3 to 24 lowercase letters and digits)")]
    BadAccount(String),
    #[error(
        "`{0}` is not a container name (3 to 63 lowercase letters, digits and single hyphens)"
    )]
    BadContainer(String),
    #[error("`{0}` cannot be a blob name here (a relative '/'-separated path without `.`, `..` or empty parts)")]
    BadName(String),
    #[error("cannot set up the storage client: {0}")]
    Setup(String),
    #[error(transparent)]
    Ca(#[from] crate::http::HttpError),
    #[error("no token for Azure Storage (https://storage.azure.com)")]
    Token(#[source] EntraError),
    /// The service answered with an error that retrying does not mend (or retries ran out).
    #[error("{0}")]
    Service(Box<ServiceFailure>),
    /// No answer after every attempt: a reset, a refused connection, a timeout.
    #[error("{op} {what} on storage account {account}: {message} (after {attempts} attempts)")]
    Transport {
        op: &'static str,
        what: String,
        account: String,
        attempts: u32,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: changed since it was hashed (expected {expected}, read {actual}); nothing of it was committed", path.display())]
    Changed {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {name}: {what}; nothing was written to {}", to.display())]
    Corrupt {
        name: String,
        what: String,
        to: PathBuf,
    },
    #[error("no blob under `{prefix}` in container {container} of storage account {account}")]
    NothingThere {
        prefix: String,
        account: String,
        container: String,
    },
    #[error("{}: exists and is not an empty directory", .0.display())]
    TargetExists(PathBuf),
}

/// A refusal by the storage service, as it gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFailure {
    pub op: &'static str,
    /// `container/blob` or `container`.
    pub what: String,
    pub account: String,
    pub container: String,
    pub status: u16,
    pub code: String,
    /// The first line of the service's message.
    pub message: String,
    /// `AuthenticationErrorDetail`, when the service gave one.
    pub detail: Option<String>,
}

impl std::fmt::Display for ServiceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} on storage account {}: {} {}: {}",
            self.op, self.what, self.account, self.status, self.code, self.message
        )?;
        match &self.detail {
            Some(d) => write!(f, " ({d})"),
            None => Ok(()),
        }
    }
}

impl BlobError {
    /// The HTTP status of a service error.
    pub fn status(&self) -> Option<u16> {
        match self {
            BlobError::Service(s) => Some(s.status),
            _ => None,
        }
    }

    /// The service's error code (`AuthorizationPermissionMismatch`, `BlobNotFound`, …).
    pub fn code(&self) -> Option<&str> {
        match self {
            BlobError::Service(s) => Some(&s.code),
            _ => None,
        }
    }
}

impl crate::error::Hint for BlobError {
    fn hint(&self) -> Option<Cow<'_, str>> {
        match self {
            BlobError::Service(s) => {
                let (account, container) = (&s.account, &s.container);
                match s.code.as_str() {
                "AuthorizationPermissionMismatch" | "AuthorizationFailure" => Some(format!(
                    "the identity may sign in but not read or write blobs: grant it the \"Storage Blob Data Contributor\" role on storage account {account} (or its container {container}); role assignments take a few minutes to apply"
                ).into()),
                "InvalidAuthenticationInfo" | "NoAuthenticationInformation" => Some(
                    "the storage account refused the token: sign in again (`az login`, or check AZURE_TENANT_ID/AZURE_CLIENT_ID) — the token must be for https://storage.azure.com and the account's tenant".into(),
                ),
                "AuthenticationFailed" => Some(
                    "the storage account did not accept Entra ID sign-in for this request (an old x-ms-version, a clock far off, or a proxy that rewrote the request)".into(),
                ),
                "KeyBasedAuthenticationNotPermitted" => Some(format!(
                    "storage account {account} takes Entra ID only; envbuild signs in with Entra ID, so the identity needs the \"Storage Blob Data Contributor\" role there"
                ).into()),
                "ContainerNotFound" => Some(format!(
                    "container {container} does not exist in storage account {account}: check the datastore's container name"
                ).into()),
                _ => None,
            }
            }
            BlobError::Transport { .. } => Some(
                "the storage account could not be reached; run the same command again: blocks already sent are kept and not sent twice".into(),
            ),
            BlobError::Changed { .. } => {
                Some("a file changed while it was uploaded; run the command again once nothing writes to it".into())
            }
            BlobError::TargetExists(_) => Some("remove it, or name another directory".into()),
            _ => None,
        }
    }
}
