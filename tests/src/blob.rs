//! A stand-in for Azure Blob Storage's data plane, as the real service answers (the facts it
//! relies on are in `blob/ops.rs`): HTTPS with the test CA, path-style URLs
//! (`/{account}/{container}/{blob}`, as Azurite serves them), Entra bearer tokens for
//! `https://storage.azure.com` only, `x-ms-version` ≥ 2017-11-09, per-identity data role; Put
//! Blob, Put Block, Put Block List, Get Block List, Get Blob Properties, Get Blob (ranges), List
//! Blobs (prefix, maxresults, marker); the service's XML error bodies and `x-ms-error-code`.
//!
//! **Committed blobs are plain files** under `root/<account>/<container>/<blob name>` (written
//! beside, then renamed in), so the ARM stand-in's job runner mounts what was really uploaded;
//! metadata is kept in memory and staged blocks under `root/.staged/`, outside that tree.
//!
//! Faults on demand ([`BlobServer::fault`]): a dropped connection halfway through a request's
//! body, 500, 503 with `Retry-After`; and [`BlobServer::kill_after_blocks`], after which the
//! server drops every connection, as a process or network that died would, until
//! [`BlobServer::revive`]. Every request is counted, with the body bytes received.

mod ops;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Any,
    PutBlob,
    PutBlock,
    PutBlockList,
    GetBlockList,
    GetBlob,
    Properties,
    List,
}

/// A fault injected into the next matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Half the request body is read, then the connection is dropped without an answer.
    Reset,
    /// 500 InternalError.
    Internal,
    /// 503 ServerBusy with `Retry-After: N` seconds.
    Busy(u64),
}

/// What a bearer token is to the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Not a token the service can validate.
    Unknown,
    /// A valid token for another audience (ARM's, say).
    WrongAudience,
    Expired,
    /// A storage token of this identity.
    Identity(String),
}

/// Decides what a bearer token is.
pub type Auth = Arc<dyn Fn(&str) -> Access + Send + Sync>;

/// One request as answered: method, operation, path, status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub op: Op,
    pub path: String,
    pub status: u16,
}

/// A blob's place: (account, container, name).
pub(crate) type Key = (String, String, String);

#[derive(Default)]
pub(crate) struct State {
    /// (account, container) that exist.
    pub containers: BTreeSet<(String, String)>,
    /// Identities without the data role (all others have "Storage Blob Data Contributor").
    pub denied: BTreeSet<String>,
    pub faults: VecDeque<(Op, Fault)>,
    /// After this many more stored blocks, every connection is dropped.
    pub kill_after: Option<u64>,
    pub dead: bool,
    pub log: Vec<Logged>,
    /// Metadata of committed blobs, by (account, container, name).
    pub metadata: HashMap<Key, BTreeMap<String, String>>,
    /// Committed block lists (id, size) of blobs made by Put Block List.
    pub committed: HashMap<Key, Vec<(String, u64)>>,
    /// Staged blocks: base64 id → (file, size), by blob.
    pub staged: HashMap<Key, BTreeMap<String, (PathBuf, u64)>>,
    pub next_file: u64,
    /// The most blobs a List Blobs page holds (the service may answer fewer than `maxresults`).
    pub page_cap: Option<usize>,
}

pub(crate) struct Shared {
    pub root: PathBuf,
    pub auth: Auth,
    pub state: Mutex<State>,
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub url: Mutex<String>,
}

/// The running stand-in; stops when dropped.
pub struct BlobServer {
    shared: Arc<Shared>,
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for BlobServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobServer")
            .field("url", &self.url)
            .finish()
    }
}

impl BlobServer {
    /// Serves `root` over HTTPS; a bearer token is accepted when `check` says so (the identity
    /// `caller`, which has the data role).
    pub fn start(check: crate::azure::TokenCheck, root: PathBuf) -> BlobServer {
        BlobServer::with_auth(
            Arc::new(move |t: &str| {
                if check(t) {
                    Access::Identity("caller".into())
                } else {
                    Access::Unknown
                }
            }),
            root,
        )
    }

    /// Accepts the storage-scoped tokens the Entra stand-in issued; its other tokens are for
    /// another audience, refused as the service refuses them.
    pub fn with_entra(entra: &crate::entra::Entra, root: PathBuf) -> BlobServer {
        let verify = entra.verifier();
        BlobServer::with_auth(
            Arc::new(move |t: &str| match verify(t) {
                None => Access::Unknown,
                Some(i) if !i.scope.starts_with("https://storage.azure.com") => {
                    Access::WrongAudience
                }
                Some(i) if i.expires_on <= std::time::SystemTime::now() => Access::Expired,
                Some(i) => Access::Identity(i.identity),
            }),
            root,
        )
    }

    pub fn with_auth(auth: Auth, root: PathBuf) -> BlobServer {
        std::fs::create_dir_all(root.join(".staged")).expect("blob stand-in root");
        let shared = Arc::new(Shared {
            root,
            auth,
            state: Mutex::new(State::default()),
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            url: Mutex::new(String::new()),
        });
        let (url, stop) = ops::serve(shared.clone());
        *shared.url.lock().unwrap() = url.clone();
        BlobServer {
            shared,
            url,
            _stop: stop,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The account URL of `account`, path-style: `https://127.0.0.1:PORT/{account}`.
    pub fn account_url(&self, account: &str) -> String {
        format!("{}/{account}", self.url)
    }

    /// The `ENVBUILD_STORAGE_ENDPOINT` template: `https://127.0.0.1:PORT/{account}`.
    pub fn endpoint_template(&self) -> String {
        format!("{}/{{account}}", self.url)
    }

    /// The directory that holds the committed blobs of a container (`root/<account>/<container>`).
    pub fn container_dir(&self, account: &str, container: &str) -> PathBuf {
        self.shared.root.join(account).join(container)
    }

    /// Makes `container` in `account` (both made if new).
    pub fn create_container(&self, account: &str, container: &str) {
        std::fs::create_dir_all(self.container_dir(account, container)).expect("container dir");
        self.shared
            .state
            .lock()
            .unwrap()
            .containers
            .insert((account.into(), container.into()));
    }

    /// `identity` loses the data role: its requests get 403 AuthorizationPermissionMismatch.
    pub fn deny(&self, identity: &str) {
        self.shared
            .state
            .lock()
            .unwrap()
            .denied
            .insert(identity.into());
    }

    /// The next request of kind `op` gets `fault` (queued: one fault per request; the faults
    /// of each kind in the order given).
    pub fn fault(&self, op: Op, fault: Fault) {
        self.shared
            .state
            .lock()
            .unwrap()
            .faults
            .push_back((op, fault));
    }

    /// After `n` more blocks are stored, every connection is dropped unanswered.
    pub fn kill_after_blocks(&self, n: u64) {
        self.shared.state.lock().unwrap().kill_after = Some(n);
    }

    /// Answers again after [`Self::kill_after_blocks`].
    pub fn revive(&self) {
        let mut st = self.shared.state.lock().unwrap();
        st.dead = false;
        st.kill_after = None;
    }

    /// List Blobs answers at most `n` blobs a page, whatever `maxresults` asks.
    pub fn page_cap(&self, n: usize) {
        self.shared.state.lock().unwrap().page_cap = Some(n);
    }

    /// Requests that reached the server, and request body bytes it read.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.shared.requests.load(Ordering::SeqCst),
            self.shared.bytes.load(Ordering::SeqCst),
        )
    }

    /// Every request answered (or dropped: status 0), in order.
    pub fn log(&self) -> Vec<Logged> {
        self.shared.state.lock().unwrap().log.clone()
    }

    /// A committed blob's metadata.
    pub fn metadata(
        &self,
        account: &str,
        container: &str,
        name: &str,
    ) -> Option<BTreeMap<String, String>> {
        self.shared
            .state
            .lock()
            .unwrap()
            .metadata
            .get(&(account.into(), container.into(), name.into()))
            .cloned()
    }

    /// The ids (base64) of the blocks staged and not committed for a blob.
    pub fn staged_blocks(&self, account: &str, container: &str, name: &str) -> Vec<String> {
        self.shared
            .state
            .lock()
            .unwrap()
            .staged
            .get(&(account.into(), container.into(), name.into()))
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The stand-in's root directory.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }
}
