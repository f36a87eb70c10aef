//! A stand-in for Azure Resource Manager in front of Azure Machine Learning, answering as the
//! recorded service does (../shared/azure-facts.md): api-version and bearer token required,
//! ARM's headers and error bodies, environment versions (201 vs 200, immutability, validation),
//! command jobs that really run on the local Docker engine, and model versions. Logs are served
//! on an artifact-store endpoint of the stand-in's own (`{url}/artifacts/ExperimentRun/dcid.ID/…`).

mod arm;
pub mod compute;
pub mod data;
mod job_ops;
mod listing;
mod location;
mod runner;
mod schema;
mod storage;
mod sweep;
mod sweep_run;
mod tracking;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// Api-versions the stand-in accepts (the service accepts many; these are the recent stable ones).
pub const API_VERSIONS: &[&str] = &["2025-12-01", "2025-09-01", "2025-06-01", "2024-10-01"];

/// Decides whether a bearer token is one the Entra stand-in issued for ARM.
pub type TokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What the stand-in holds.
pub struct State {
    /// (subscription, resource group, workspace) that exist.
    pub workspaces: BTreeSet<(String, String, String)>,
    /// Computes (clusters, instances), their nodes and operations, the location's VM sizes;
    /// the same in every workspace.
    pub computes: compute::Computes,
    /// Datastore name → local directory (azureml://datastores/NAME/paths/P → DIR/P), for
    /// data the test has on disk already; these win over the Blob datastores below.
    pub datastores: BTreeMap<String, PathBuf>,
    /// The workspace's Azure Blob datastores (`workspaceblobstore`, the default, and
    /// `workspaceartifactstore` from the start), by name.
    pub blob_datastores: BTreeMap<String, data::BlobDatastore>,
    /// Where the Blob Storage stand-in keeps committed blobs (`{root}/{account}/{container}/…`);
    /// None: the workspace's storage holds nothing.
    pub blob_root: Option<PathBuf>,
    /// The next N ARM requests are answered 500.
    pub fail_next: usize,
    /// Every ARM request: (method, path, status).
    pub log: Vec<(String, String, u16)>,
    /// Authorization header values seen (to check that what is sent is what was issued).
    pub tokens_seen: BTreeSet<String>,
    pub(crate) envs: BTreeMap<String, Asset>,
    pub(crate) models: BTreeMap<String, Asset>,
    pub(crate) codes: BTreeMap<String, Asset>,
    pub(crate) jobs: BTreeMap<String, Job>,
    /// Pause between status changes of a job (so a client sees them).
    pub step: Duration,
    /// What the compute's identity pulls images with (its AcrPull grant): user and password.
    pub pull_credentials: Option<(String, String)>,
    /// Images pulled into the engine (removed when the stand-in stops).
    pub pulled: BTreeSet<String>,
    /// Jobs that go NotResponding for a while once Running, then come back to Running (the
    /// REST spec's JobStatus: a run can go from NotResponding back to any earlier state).
    pub not_responding: BTreeSet<String>,
    /// Answers the stand-in gave that broke the REST definitions (tests/data/azureml-*): each
    /// was turned into a 500, and a stand-in with any panics when dropped.
    pub spec_violations: Vec<String>,
    /// Each job's request body as PUT (what a re-PUT is compared with).
    pub(crate) job_requests: BTreeMap<String, Value>,
    /// Long-running operations (cancel): operation id → job key.
    pub(crate) operations: BTreeMap<String, String>,
    /// The MLflow tracking server every job reports to (`http://127.0.0.1:PORT`), if any.
    pub mlflow: Option<String>,
}

/// An asset container (environment or model) with its versions, by workspace-relative key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Asset {
    pub versions: BTreeMap<String, Value>,
    pub latest: Option<String>,
    pub created: String,
}

/// A job and where its files are.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub body: Value,
    pub dir: PathBuf,
    pub cancel: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("workspaces", &self.workspaces)
            .field("jobs", &self.jobs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Shared between the server, the job runner and the test.
pub struct Shared {
    pub state: Mutex<State>,
    pub check: TokenCheck,
    /// Which bearer tokens the log endpoint (the workspace's storage) takes: storage-scoped
    /// ones (`https://storage.azure.com/.default`); None takes none.
    pub storage_check: Mutex<Option<TokenCheck>>,
    pub jobs_dir: PathBuf,
    pub base_url: Mutex<String>,
    pub(crate) counter: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(check: TokenCheck, jobs_dir: PathBuf) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                workspaces: BTreeSet::new(),
                computes: compute::Computes::default(),
                datastores: BTreeMap::new(),
                blob_datastores: data::defaults().into_iter().collect(),
                blob_root: None,
                fail_next: 0,
                log: Vec::new(),
                tokens_seen: BTreeSet::new(),
                envs: BTreeMap::new(),
                models: BTreeMap::new(),
                codes: BTreeMap::new(),
                jobs: BTreeMap::new(),
                step: Duration::from_millis(100),
                pull_credentials: None,
                pulled: BTreeSet::new(),
                not_responding: BTreeSet::new(),
                spec_violations: Vec::new(),
                job_requests: BTreeMap::new(),
                operations: BTreeMap::new(),
                mlflow: None,
            }),
            check,
            storage_check: Mutex::new(None),
            jobs_dir,
            base_url: Mutex::new(String::new()),
            counter: AtomicU64::new(1),
        })
    }

    /// A GUID-shaped id, different on every call.
    pub(crate) fn request_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let x = (t ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            (x >> 32) as u32,
            (x >> 16) as u16,
            x as u16 & 0xfff,
            n as u16 & 0xfff,
            x & 0xffff_ffff_ffff
        )
    }

    /// The directory where a job's outputs and logs are kept.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.jobs_dir.join(id)
    }

    /// A job's current body, if any.
    pub fn job(&self, id: &str) -> Option<Value> {
        let st = self.state.lock().unwrap();
        st.jobs
            .iter()
            .find(|(k, _)| k.ends_with(&format!("/jobs/{id}")))
            .map(|(_, j)| j.body.clone())
    }

    /// Statuses a job went through, in order.
    pub fn job_history(&self, id: &str) -> Vec<String> {
        let p = self.job_dir(id).join("status_history.txt");
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// RFC 3339 UTC time for `systemData` and job times, with ARM's seven fractional digits.
pub(crate) fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let whole = envbuild::image::rfc3339(d.as_secs());
    format!(
        "{}.{:07}Z",
        whole.trim_end_matches('Z'),
        d.subsec_nanos() / 100
    )
}

pub use arm::router;

/// The running stand-in: ARM over HTTPS (the test CA) on a loopback port; stops when dropped,
/// removing its containers.
pub struct AzureStandIn {
    /// `https://127.0.0.1:PORT` (for `ENVBUILD_ARM_ENDPOINT`).
    pub url: String,
    pub shared: Arc<Shared>,
    _served: crate::tls::Served,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for AzureStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureStandIn")
            .field("url", &self.url)
            .finish()
    }
}

/// The workspace every test uses.
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000001";
pub const RESOURCE_GROUP: &str = "rg-envbuild";
pub const WORKSPACE: &str = "mlw-envbuild";

impl AzureStandIn {
    /// Starts with one workspace ([`SUBSCRIPTION`]/[`RESOURCE_GROUP`]/[`WORKSPACE`]), the compute
    /// `cpu-cluster`, and tokens accepted when `check` says so.
    pub fn start(check: TokenCheck) -> AzureStandIn {
        let dir = tempfile::tempdir().expect("stand-in dir");
        let shared = Shared::new(check, dir.path().join("jobs"));
        shared.state.lock().unwrap().workspaces.insert((
            SUBSCRIPTION.into(),
            RESOURCE_GROUP.into(),
            WORKSPACE.into(),
        ));
        let served = crate::tls::serve_https(router(shared.clone()));
        *shared.base_url.lock().unwrap() = served.url.clone();
        AzureStandIn {
            url: served.url.clone(),
            shared,
            _served: served,
            _dir: dir,
        }
    }

    /// Accepts the ARM tokens the Entra stand-in issued (and nothing else); its log endpoint,
    /// the storage tokens.
    pub fn with_entra(entra: &crate::entra::Entra) -> AzureStandIn {
        let verify = entra.verifier();
        let storage = verify.clone();
        let arm = AzureStandIn::start(Arc::new(move |t: &str| {
            verify(t).is_some_and(|i| i.scope.starts_with("https://management.azure.com"))
        }));
        *arm.shared.storage_check.lock().unwrap() = Some(Arc::new(move |t: &str| {
            storage(t).is_some_and(|i| i.scope.starts_with("https://storage.azure.com"))
        }));
        arm
    }

    /// Answers that broke the REST definitions so far (each was answered 500).
    pub fn spec_violations(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().spec_violations.clone()
    }

    /// The endpoint that serves job logs (`ENVBUILD_AZUREML_LOGS_ENDPOINT`).
    pub fn logs_endpoint(&self) -> String {
        format!("{}/artifacts", self.url)
    }

    /// Maps `azureml://datastores/NAME/paths/…` to `dir`.
    pub fn datastore(&self, name: &str, dir: &std::path::Path) {
        self.shared
            .state
            .lock()
            .unwrap()
            .datastores
            .insert(name.into(), dir.into());
    }

    /// The workspace's storage is the Blob Storage stand-in's `root`: its Blob datastores
    /// (`workspaceblobstore` …) hold what was uploaded there, under `{root}/{account}/{container}`.
    pub fn use_blob_root(&self, root: &std::path::Path) {
        self.shared.state.lock().unwrap().blob_root = Some(root.into());
    }

    /// Adds (or replaces) an Azure Blob datastore; `credentials` is None, AccountKey or Sas;
    /// a default one takes the default from the others.
    pub fn blob_datastore(
        &self,
        name: &str,
        account: &str,
        container: &str,
        credentials: &str,
        is_default: bool,
    ) {
        let mut st = self.shared.state.lock().unwrap();
        if is_default {
            for d in st.blob_datastores.values_mut() {
                d.is_default = false;
            }
        }
        st.blob_datastores.insert(
            name.into(),
            data::BlobDatastore {
                account: account.into(),
                container: container.into(),
                credentials: credentials.into(),
                is_default,
            },
        );
    }

    /// A Blob datastore of the workspace: (account, container).
    pub fn blob_location(&self, name: &str) -> Option<(String, String)> {
        self.shared
            .state
            .lock()
            .unwrap()
            .blob_datastores
            .get(name)
            .map(|d| (d.account.clone(), d.container.clone()))
    }

    /// The code versions registered: `name:version`, sorted.
    pub fn code_versions(&self) -> Vec<String> {
        let st = self.shared.state.lock().unwrap();
        let mut out: Vec<String> = st
            .codes
            .iter()
            .flat_map(|(k, a)| {
                let name = k.rsplit('/').next().unwrap_or_default().to_owned();
                a.versions.keys().map(move |v| format!("{name}:{v}"))
            })
            .collect();
        out.sort();
        out
    }

    /// Gives the compute's identity pull access to the image registry (AcrPull): the runner
    /// pulls with these credentials; without them a private registry refuses the pull.
    pub fn grant_acr_pull(&self, user: &str, password: &str) {
        self.shared.state.lock().unwrap().pull_credentials = Some((user.into(), password.into()));
    }

    /// Job `name` will report NotResponding for a few poll steps once Running, then recover.
    pub fn not_responding_once(&self, name: &str) {
        self.shared
            .state
            .lock()
            .unwrap()
            .not_responding
            .insert(name.to_owned());
    }

    /// Jobs report to this MLflow tracking server (its URL, reached from the host network), as
    /// Azure ML jobs report to the workspace's tracking service; sweeps read their metrics there.
    pub fn use_mlflow(&self, url: &str) {
        self.shared.state.lock().unwrap().mlflow = Some(url.trim_end_matches('/').to_owned());
    }

    /// A sweep's record: one line per trial started (`start ID active=N`), ended (`end ID
    /// STATUS`), canceled by the policy (`bandit ID …`) or a timeout, then `done STATUS`.
    pub fn sweep_record(&self, id: &str) -> Vec<String> {
        std::fs::read_to_string(self.shared.job_dir(id).join("trials.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The MLflow run id of job `id` (a sweep's trial included), once it started.
    pub fn mlflow_run_id(&self, id: &str) -> Option<String> {
        tracking::run_id(&self.shared, id)
    }

    /// The next `n` ARM requests get a 500.
    pub fn fail_next(&self, n: usize) {
        self.shared.state.lock().unwrap().fail_next = n;
    }

    /// ARM requests so far: (method, path, status).
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.shared.state.lock().unwrap().log.clone()
    }

    /// Environment variables that point envbuild at this stand-in's workspace.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ENVBUILD_ARM_ENDPOINT", self.url.clone()),
            ("ENVBUILD_AZUREML_LOGS_ENDPOINT", self.logs_endpoint()),
            (
                "ENVBUILD_CA_FILE",
                crate::tls::ca().pem_file().display().to_string(),
            ),
            ("AZURE_SUBSCRIPTION_ID", SUBSCRIPTION.into()),
            ("AZURE_RESOURCE_GROUP", RESOURCE_GROUP.into()),
            ("AZUREML_WORKSPACE_NAME", WORKSPACE.into()),
            ("ENVBUILD_AZURE_POLL_MIN_MS", "100".into()),
            ("ENVBUILD_AZURE_POLL_MAX_MS", "400".into()),
            ("ENVBUILD_AZURE_RETRY_MS", "50".into()),
        ]
    }
}

impl Drop for AzureStandIn {
    fn drop(&mut self) {
        // Cancel what still runs; the runner removes its containers.
        let images: Vec<String> = self
            .shared
            .state
            .lock()
            .unwrap()
            .pulled
            .iter()
            .cloned()
            .collect();
        let ids: Vec<String> = {
            let mut st = self.shared.state.lock().unwrap();
            for j in st.jobs.values_mut() {
                j.cancel = true;
            }
            st.jobs
                .values()
                .filter_map(|j| j.body["name"].as_str().map(str::to_owned))
                .collect()
        };
        for id in ids {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &format!("{}{id}", runner::CONTAINER_PREFIX)])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        for image in images {
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", &image])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        // Loud, after the clean-up: a stand-in that answered against the definitions.
        let violations = self.spec_violations();
        if !violations.is_empty() && !std::thread::panicking() {
            panic!(
                "the Azure stand-in answered against the REST definitions:\n{}",
                violations.join("\n")
            );
        }
    }
}
