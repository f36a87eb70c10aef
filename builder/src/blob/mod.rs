//! Azure Blob Storage for the workspace's datastore: content-addressed, parallel, retried and
//! resumable block uploads ([`BlobStore::upload_files`]) and verified, atomic downloads
//! ([`BlobStore::download_prefix`]), signed in with Entra ID (scope [`STORAGE_SCOPE`]).
//!
//! The requests themselves go through the `azure_storage_blob` crate (its `stage_block`,
//! `commit_block_list`, `get_block_list`, `list_blobs`, `upload` for one-shot Put Blob, and
//! `download`) over the azure_core pipeline, with a transport of our own (the CA bundle, so the
//! tests' HTTPS stand-in is trusted) and a credential that asks our [`TokenSource`]. What the
//! crate lacks is written here: its managed upload names blocks with random UUIDs and cannot
//! resume, so the orchestration is ours (`upload.rs`: block ids from the file's sha256, Get Block
//! List to find what an interrupted run staged, `envbuild_sha256` metadata to skip what is
//! already there); and its pipeline's retries are turned off in favour of the one
//! [`RetryPolicy`] of every envbuild client, so that requests and bytes are counted per attempt
//! and waits follow `Retry-After` the same way everywhere.
//!
//! The public API is blocking (the rest of envbuild is); a small tokio runtime inside runs the
//! transfers. Do not call it from inside another tokio runtime.

mod blocks;
mod call;
mod download;
mod error;
mod upload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, RetryOptions, Transport, Url};
use azure_storage_blob::{
    BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions,
    BlockBlobClient, BlockBlobClientOptions,
};

use crate::auth::TokenSource;
use crate::digest::Digest;
use crate::http::RetryPolicy;

pub use blocks::{block_id, block_size, safe_relative};
pub use error::{BlobError, ServiceFailure};

/// The scope of an Entra token for Azure Storage.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// A path-style template for the account URL (`https://127.0.0.1:PORT/{account}`, as Azurite
/// and the tests' stand-in serve it), in place of `https://{account}.blob.{suffix}`.
pub const ENDPOINT_ENV: &str = "ENVBUILD_STORAGE_ENDPOINT";
/// The metadata key that names the sha256 of a blob's bytes (`x-ms-meta-envbuild_sha256`).
pub const SHA256_KEY: &str = "envbuild_sha256";
/// Default block size: 8 MiB. Large enough that a request's overhead is small next to its bytes
/// (and above 4 MiB, where the service switches to high-throughput block ingestion), small enough
/// that a failed block costs little to send again and that memory stays at
/// `parallel × block` (64 MiB with 8 at once); 50,000 blocks of it are 390 GiB, and larger files
/// get larger blocks ([`block_size`]). azcopy's default is the same.
pub const DEFAULT_BLOCK_SIZE: u64 = 8 << 20;

/// How to reach the storage account and how hard to push.
#[derive(Debug, Clone)]
pub struct BlobSettings {
    /// PEM bundle with extra CA certificates to trust (`ENVBUILD_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// Bytes per block of a block upload, and the largest file sent in one Put Blob.
    pub block_size: u64,
    /// Requests with a body in flight at once (and so blocks in memory at once).
    pub parallel: usize,
    /// Attempts per request and backoff, for 5xx, 429, 408 and broken connections.
    pub retry: RetryPolicy,
    /// Time to open a connection.
    pub connect_timeout: Duration,
    /// The longest a request may take beyond its bytes at 64 KiB/s.
    pub request_timeout: Duration,
}

impl Default for BlobSettings {
    fn default() -> BlobSettings {
        BlobSettings {
            ca_file: None,
            block_size: DEFAULT_BLOCK_SIZE,
            parallel: 8,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// One file to upload, at `prefix/rel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadFile {
    /// '/'-separated path under the prefix.
    pub rel: String,
    pub path: PathBuf,
    pub size: u64,
    /// The sha256 of the bytes; checked again as they are read, before anything is committed.
    pub sha256: Digest,
}

/// What an upload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadReport {
    /// Body bytes sent (blocks and one-shot blobs), retries included.
    pub bytes_sent: u64,
    /// Requests made (listings, block lists, blocks, commits), retries included.
    pub requests: u64,
    /// Blobs already there with the same bytes.
    pub blobs_skipped: usize,
    /// Blobs written.
    pub blobs_uploaded: usize,
    /// Blocks found staged by an earlier, interrupted upload and not sent again.
    pub blocks_reused: u64,
}

/// What a download did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownloadReport {
    pub files: usize,
    pub bytes: u64,
    pub requests: u64,
    /// Files checked against their `envbuild_sha256` metadata (the others by size only).
    pub verified: usize,
}

/// A blob's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProps {
    pub size: u64,
    /// Its `envbuild_sha256` metadata, when it has one.
    pub sha256: Option<Digest>,
}

/// `https://{account}.blob.{suffix}`, or, when `template` (`ENVBUILD_STORAGE_ENDPOINT`) is set,
/// the template with `{account}` replaced (https only: tokens are only sent over TLS).
pub fn account_url(
    account: &str,
    suffix: &str,
    template: Option<&str>,
) -> Result<String, BlobError> {
    if !(3..=24).contains(&account.len())
        || !account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(BlobError::BadAccount(account.to_owned()));
    }
    let url = match template.filter(|t| !t.is_empty()) {
        Some(t) => {
            if !t.contains("{account}") {
                return Err(BlobError::BadEndpoint {
                    url: t.to_owned(),
                    why: "has no {account} to replace",
                });
            }
            t.replace("{account}", account)
        }
        None => format!("https://{account}.blob.{}", suffix.trim_matches('.')),
    };
    if !url.starts_with("https://") {
        return Err(BlobError::BadEndpoint {
            url,
            why: "is not https:// (tokens are only sent over TLS)",
        });
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// [`account_url`] with the template from `ENVBUILD_STORAGE_ENDPOINT`.
pub fn account_url_from_env(account: &str, suffix: &str) -> Result<String, BlobError> {
    account_url(account, suffix, std::env::var(ENDPOINT_ENV).ok().as_deref())
}

fn valid_container(c: &str) -> bool {
    (3..=63).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !c.starts_with('-')
        && !c.ends_with('-')
        && !c.contains("--")
}

/// Requests and body bytes, counted per attempt.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// Our [`TokenSource`] as azure_core's credential. The source is blocking (the credential chain
/// runs its own runtime), so it is asked on a blocking thread; its error is kept for
/// [`BlobError::Token`], which carries its hint (azure_core's error could only carry text).
struct Credential {
    tokens: Arc<dyn TokenSource>,
    failed: Mutex<Option<crate::auth::entra::EntraError>>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential")
    }
}

#[async_trait::async_trait]
impl TokenCredential for Credential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let tokens = self.tokens.clone();
        let scope = scopes.first().copied().unwrap_or(STORAGE_SCOPE).to_owned();
        let got = tokio::task::spawn_blocking(move || tokens.token(&scope))
            .await
            .map_err(|e| {
                azure_core::Error::with_message(
                    azure_core::error::ErrorKind::Credential,
                    e.to_string(),
                )
            })?;
        match got {
            // The source does not say when its token expires; the chain's credentials cache
            // their tokens, so asking again every few minutes costs nothing.
            Ok(secret) => Ok(AccessToken::new(
                secret.expose().to_owned(),
                azure_core::time::OffsetDateTime::now_utc()
                    + azure_core::time::Duration::minutes(10),
            )),
            Err(e) => {
                let text = e.to_string();
                *self.failed.lock().expect("lock") = Some(e);
                Err(azure_core::Error::with_message(
                    azure_core::error::ErrorKind::Credential,
                    text,
                ))
            }
        }
    }
}

/// A blocking client for one container of one storage account.
pub struct BlobStore {
    account_url: String,
    account: String,
    container: String,
    settings: BlobSettings,
    runtime: tokio::runtime::Runtime,
    options: ClientOptions,
    credential: Arc<Credential>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("account_url", &self.account_url)
            .field("container", &self.container)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl BlobStore {
    /// A client for `container` at `account_url` (see [`account_url`]); makes no request.
    pub fn new(
        account_url: &str,
        container: &str,
        tokens: Arc<dyn TokenSource>,
        settings: &BlobSettings,
    ) -> Result<BlobStore, BlobError> {
        let bad = |why| BlobError::BadEndpoint {
            url: account_url.to_owned(),
            why,
        };
        let url = Url::parse(account_url).map_err(|_| bad("is not a URL"))?;
        if url.scheme() != "https" {
            return Err(bad("is not https:// (tokens are only sent over TLS)"));
        }
        if !valid_container(container) {
            return Err(BlobError::BadContainer(container.to_owned()));
        }
        // The account's name: the first label of the host, or the first path segment of a
        // path-style URL.
        let account = match url
            .path_segments()
            .and_then(|mut s| s.next())
            .filter(|s| !s.is_empty())
        {
            Some(a) => a.to_owned(),
            None => url
                .host_str()
                .and_then(|h| h.split('.').next())
                .unwrap_or_default()
                .to_owned(),
        };
        crate::auth::entra::install_crypto_provider();
        let mut http = reqwest_azure::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .user_agent(crate::http::USER_AGENT);
        if let Some(path) = &settings.ca_file {
            let pem = crate::http::read_ca_bundle(path)?;
            let certs = reqwest_azure::Certificate::from_pem_bundle(&pem)
                .map_err(|e| BlobError::Setup(format!("CA bundle {}: {e}", path.display())))?;
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        let http = http
            .build()
            .map_err(|e| BlobError::Setup(format!("HTTP client: {e}")))?;
        let options = ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            // Our own loop retries (see the module's doc).
            retry: RetryOptions::none(),
            ..ClientOptions::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("envbuild-blob")
            .build()
            .map_err(|e| BlobError::Setup(format!("tokio runtime: {e}")))?;
        Ok(BlobStore {
            account_url: account_url.trim_end_matches('/').to_owned(),
            account,
            container: container.to_owned(),
            settings: BlobSettings {
                block_size: settings.block_size.clamp(1, blocks::MAX_BLOCK),
                parallel: settings.parallel.max(1),
                ..settings.clone()
            },
            runtime,
            options,
            credential: Arc::new(Credential {
                tokens,
                failed: Mutex::new(None),
            }),
            counters: Arc::new(Counters::default()),
        })
    }

    /// The storage account's name.
    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    /// `https://…/{container}/{name}`, each part of `name` percent-encoded: the blob's URL (a
    /// datastore path is this without the account URL).
    pub fn blob_url(&self, name: &str) -> String {
        let enc: Vec<String> = name.split('/').map(crate::http::percent_encode).collect();
        format!("{}/{}/{}", self.account_url, self.container, enc.join("/"))
    }

    fn container_client(&self) -> Result<BlobContainerClient, BlobError> {
        let url = Url::parse(&format!("{}/{}", self.account_url, self.container))
            .map_err(|e| BlobError::Setup(e.to_string()))?;
        BlobContainerClient::new(
            url,
            Some(self.credential.clone() as Arc<dyn TokenCredential>),
            Some(BlobContainerClientOptions {
                client_options: self.options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|e| BlobError::Setup(e.to_string()))
    }

    fn blob_client(&self, name: &str) -> Result<BlobClient, BlobError> {
        let url = Url::parse(&self.blob_url(name)).map_err(|e| BlobError::Setup(e.to_string()))?;
        BlobClient::new(
            url,
            Some(self.credential.clone() as Arc<dyn TokenCredential>),
            Some(BlobClientOptions {
                client_options: self.options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|e| BlobError::Setup(e.to_string()))
    }

    fn block_client(&self, name: &str) -> Result<BlockBlobClient, BlobError> {
        let url = Url::parse(&self.blob_url(name)).map_err(|e| BlobError::Setup(e.to_string()))?;
        BlockBlobClient::new(
            url,
            Some(self.credential.clone() as Arc<dyn TokenCredential>),
            Some(BlockBlobClientOptions {
                client_options: self.options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|e| BlobError::Setup(e.to_string()))
    }

    /// The blob `name`'s size and `envbuild_sha256`, or None when there is no such blob.
    pub fn exists(&self, name: &str) -> Result<Option<BlobProps>, BlobError> {
        let mut found = self.list(name)?;
        Ok(found.remove(name))
    }

    /// Every blob whose name starts with `prefix`: name → properties (List Blobs, all pages).
    pub fn list(&self, prefix: &str) -> Result<HashMap<String, BlobProps>, BlobError> {
        let client = self.container_client()?;
        self.runtime.block_on(download::list(self, &client, prefix))
    }

    /// Uploads `files` to `prefix/<rel>` (see the module's doc). Blocking.
    pub fn upload_files(
        &self,
        prefix: &str,
        files: &[UploadFile],
        progress: &dyn crate::progress::Progress,
    ) -> Result<UploadReport, BlobError> {
        upload::upload_files(self, prefix, files, progress)
    }

    /// Downloads every blob under `prefix/` into the directory `to` (made, or empty): into a
    /// temporary directory beside it first, each blob's size and `envbuild_sha256` checked, then
    /// renamed into place, so `to` is complete or absent. Blocking.
    pub fn download_prefix(
        &self,
        prefix: &str,
        to: &Path,
        progress: &dyn crate::progress::Progress,
    ) -> Result<DownloadReport, BlobError> {
        download::download_prefix(self, prefix, to, progress)
    }

    fn ctx(&self) -> call::Ctx {
        call::Ctx {
            account: self.account.as_str().into(),
            container: self.container.as_str().into(),
            retry: self.settings.retry,
            timeout: self.settings.request_timeout,
            counters: self.counters.clone(),
            credential: self.credential.clone(),
        }
    }

    /// Requests and body bytes sent since this client was made (every call together).
    pub fn sent(&self) -> (u64, u64) {
        (
            self.counters.requests.load(Ordering::Relaxed),
            self.counters.bytes.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Secret, StaticToken};
    use crate::error::Hint as _;

    #[test]
    fn account_urls_are_https_and_take_the_path_style_template() {
        assert_eq!(
            account_url("stenvbuild", "core.windows.net", None).unwrap(),
            "https://stenvbuild.blob.core.windows.net"
        );
        assert_eq!(
            account_url("st1", "core.chinacloudapi.cn", Some("")).unwrap(),
            "https://st1.blob.core.chinacloudapi.cn"
        );
        assert_eq!(
            account_url("st1", "x", Some("https://127.0.0.1:9/{account}/")).unwrap(),
            "https://127.0.0.1:9/st1"
        );
        assert!(matches!(
            account_url("st1", "x", Some("http://127.0.0.1:9/{account}")),
            Err(BlobError::BadEndpoint { .. })
        ));
        assert!(matches!(
            account_url("st1", "x", Some("https://127.0.0.1:9/")),
            Err(BlobError::BadEndpoint { .. })
        ));
        for bad in ["ab", "Upper1", "with-dash", "a".repeat(25).as_str()] {
            assert!(
                matches!(account_url(bad, "x", None), Err(BlobError::BadAccount(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_store_knows_its_account_and_never_shows_its_token() {
        let tokens = Arc::new(StaticToken(Secret::new("s3cr3t-token")));
        let s = BlobStore::new(
            "https://127.0.0.1:9/stpath",
            "azureml-blobstore-1",
            tokens.clone(),
            &BlobSettings::default(),
        )
        .unwrap();
        assert_eq!(s.account(), "stpath");
        assert_eq!(
            s.blob_url("LocalUpload/a b/c.py"),
            "https://127.0.0.1:9/stpath/azureml-blobstore-1/LocalUpload/a%20b/c.py"
        );
        assert!(!format!("{s:?}").contains("s3cr3t"));
        let s = BlobStore::new(
            "https://acct1.blob.core.windows.net",
            "data",
            tokens.clone(),
            &BlobSettings::default(),
        )
        .unwrap();
        assert_eq!(s.account(), "acct1");
        for bad in ["Data", "a", "a--b", "-ab"] {
            assert!(matches!(
                BlobStore::new(
                    "https://a.blob.core.windows.net",
                    bad,
                    tokens.clone(),
                    &BlobSettings::default()
                ),
                Err(BlobError::BadContainer(_))
            ));
        }
        assert!(matches!(
            BlobStore::new(
                "http://a.blob.core.windows.net",
                "data",
                tokens,
                &BlobSettings::default()
            ),
            Err(BlobError::BadEndpoint { .. })
        ));
    }

    fn service(code: &str) -> BlobError {
        BlobError::Service(Box::new(ServiceFailure {
            op: "Put Block",
            what: "c/b".into(),
            account: "stacct".into(),
            container: "cont".into(),
            status: 403,
            code: code.into(),
            message: "m".into(),
            detail: None,
        }))
    }

    #[test]
    fn refusals_say_what_to_do() {
        let h = service("AuthorizationPermissionMismatch")
            .hint()
            .unwrap()
            .into_owned();
        assert!(
            h.contains("\"Storage Blob Data Contributor\"")
                && h.contains("stacct")
                && h.contains("cont"),
            "{h}"
        );
        assert!(service("KeyBasedAuthenticationNotPermitted")
            .hint()
            .unwrap()
            .contains("Entra ID"));
        assert!(service("InvalidAuthenticationInfo")
            .hint()
            .unwrap()
            .contains("https://storage.azure.com"));
        assert!(service("BlobNotFound").hint().is_none());
        let e = service("AuthorizationPermissionMismatch").to_string();
        assert_eq!(
            e,
            "Put Block c/b on storage account stacct: 403 AuthorizationPermissionMismatch: m"
        );
        // The crate root knows the type.
        assert!(crate::hint_of(&service("AuthorizationPermissionMismatch")).is_some());
    }
}
