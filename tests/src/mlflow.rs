//! A real MLflow tracking server (`mlflow server` from the project venv, scripts/setup.sh) for
//! the tests: SQLite store and artifact directory in a temporary directory, a free port, killed
//! with all its worker processes on drop; and the REST queries the tests ask it.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long `mlflow server` may take to answer `/health` (about 14 s was seen on a busy
/// two-core machine: it imports a large part of MLflow and migrates the SQLite schema).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// One point of a metric's history, as `metrics/get-history` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub step: i64,
    /// NaN where MLflow stored NaN (it answers the string "NaN").
    pub value: f64,
    pub timestamp: i64,
}

/// A running `mlflow server` (see the module doc). Its store outlives [`MlflowServer::kill`]
/// and [`MlflowServer::stop`]; [`MlflowServer::restart`] serves it again on the same port.
#[derive(Debug)]
pub struct MlflowServer {
    dir: tempfile::TempDir,
    host: String,
    port: u16,
    child: Option<Child>,
    http: reqwest::blocking::Client,
}

impl MlflowServer {
    /// Starts a server on a free port of 127.0.0.1 and waits until it answers.
    pub fn start() -> MlflowServer {
        MlflowServer::start_on("127.0.0.1")
    }

    /// Starts a server bound to `host` (e.g. "0.0.0.0" for containers on a Docker network to
    /// reach it; any Host header is then allowed) on a free port, and waits until it answers.
    pub fn start_on(host: &str) -> MlflowServer {
        let port = std::net::TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("no free port on {host}: {e}"))
            .port();
        let mut s = MlflowServer {
            dir: tempfile::tempdir().unwrap(),
            host: host.to_owned(),
            port,
            child: None,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        s.launch();
        s
    }

    /// One server on 127.0.0.1 for all the tests of this process that never kill, stop or
    /// restart it (a `&'static` gives them no `&mut` to do so): a start costs ~14 s of a busy
    /// two-core machine. They stay apart by experiment: each names its own, and the default
    /// experiment "0" belongs to `faults_between_trainer_and_server_are_retried_and_lose_nothing`
    /// alone. Started on first use; statics are never dropped, so an `atexit` handler kills its
    /// process group and removes its store when the test process exits (passed or failed).
    pub fn shared() -> &'static MlflowServer {
        static SHARED: OnceLock<MlflowServer> = OnceLock::new();
        static GROUP: AtomicI32 = AtomicI32::new(0);
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        extern "C" fn at_exit() {
            let pgid = GROUP.load(Ordering::SeqCst);
            if pgid > 0 {
                // SAFETY: kill(2) on the shared server's own process group (see launch), then
                // waitpid(2) on its leader, our child (SIGKILL ends it: the wait is short).
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                    libc::waitpid(pgid, std::ptr::null_mut(), 0);
                }
            }
            if let Some(dir) = DIR.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        SHARED.get_or_init(|| {
            let s = MlflowServer::start();
            let pgid = s.child.as_ref().expect("started").id() as i32;
            GROUP.store(pgid, Ordering::SeqCst);
            let _ = DIR.set(s.dir.path().to_owned());
            // SAFETY: registers a plain extern "C" function with no arguments.
            let registered = unsafe { libc::atexit(at_exit) } == 0;
            assert!(
                registered,
                "atexit refused the shared MLflow server's clean-up"
            );
            s
        })
    }

    /// `http://127.0.0.1:PORT` (loopback even when bound to all interfaces).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log (stdout and stderr of every start), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the server process is up (not whether it answers).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }

    /// Kills the server and every process it started (SIGKILL to its process group), as a
    /// crash would; returns once they are gone. The store stays.
    pub fn kill(&mut self) {
        self.signal_and_reap(libc::SIGKILL, Duration::from_secs(10));
    }

    /// Stops the server (SIGTERM to its process group, SIGKILL after 10 s). The store stays.
    pub fn stop(&mut self) {
        self.signal_and_reap(libc::SIGTERM, Duration::from_secs(10));
        self.signal_and_reap(libc::SIGKILL, Duration::from_secs(10));
    }

    /// Starts the server again on the same port with the same store (after `kill` or `stop`;
    /// a running server is stopped first) and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn launch(&mut self) {
        let store = self.dir.path().join("mlflow.db");
        let artifacts = self.dir.path().join("artifacts");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(mlflow_bin());
        cmd.arg("server")
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", store.display()))
            .arg("--default-artifact-root")
            .arg(&artifacts)
            .args(["--host", &self.host, "--port", &self.port.to_string()])
            .args(["--workers", "1"]);
        if !matches!(self.host.as_str(), "127.0.0.1" | "localhost") {
            cmd.args(["--allowed-hosts", "*"]);
        }
        // No job runner (it starts seven worker processes of ~230 MB each), no telemetry.
        cmd.env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            .env("DO_NOT_TRACK", "true")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: uvicorn's workers die with it.
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/setup.sh (it installs mlflow into .venv)",
                mlflow_bin().display()
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(r) = self.http.get(format!("{}/health", self.url())).send() {
                if r.status().is_success() {
                    return;
                }
            }
            if !self.is_running() {
                panic!("mlflow server exited while starting:\n{}", self.log());
            }
            if Instant::now() > deadline {
                let log = self.log();
                self.kill();
                panic!("mlflow server did not answer within {START_TIMEOUT:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn signal_and_reap(&mut self, signal: libc::c_int, wait: Duration) {
        let Some(child) = &mut self.child else {
            return;
        };
        // The group id is the child's pid (process_group(0)); the group outlives the leader
        // until its last member is gone, so signal it even when the leader has exited.
        let pgid = child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals our own child's process group.
        unsafe { libc::kill(-pgid, signal) };
        let deadline = Instant::now() + wait;
        loop {
            let leader_gone = child.try_wait().map(|s| s.is_some()).unwrap_or(true);
            // SAFETY: signal 0 only probes whether any member of the group is left.
            let group_gone = unsafe { libc::kill(-pgid, 0) } != 0;
            if leader_gone && group_gone {
                self.child = None;
                return;
            }
            if Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/2.0/mlflow/{path}", self.url())
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .get(self.api(path))
            .query(query)
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        answer(path, r)
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        let r = self
            .http
            .post(self.api(path))
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        answer(path, r)
    }

    /// The id of the experiment called `name`, if there is one.
    pub fn experiment_id(&self, name: &str) -> Option<String> {
        let r = self
            .http
            .get(self.api("experiments/get-by-name"))
            .query(&[("experiment_name", name)])
            .send()
            .unwrap();
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        let v = answer("experiments/get-by-name", r);
        Some(
            v["experiment"]["experiment_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    }

    /// Creates an experiment; returns its id.
    pub fn create_experiment(&self, name: &str) -> String {
        let v = self.post("experiments/create", &json!({ "name": name }));
        v["experiment_id"].as_str().unwrap().to_owned()
    }

    /// Creates a run in `experiment_id` (as Azure ML does before a job starts); returns its id.
    pub fn create_run(&self, experiment_id: &str) -> String {
        let v = self.post(
            "runs/create",
            &json!({ "experiment_id": experiment_id, "start_time": now_ms() }),
        );
        v["run"]["info"]["run_id"].as_str().unwrap().to_owned()
    }

    /// The whole run (`{"info":…, "data":…}`); `info.status` is RUNNING, FINISHED, FAILED….
    pub fn run(&self, run_id: &str) -> Value {
        self.get("runs/get", &[("run_id", run_id)])["run"].clone()
    }

    /// The history of metric `key` in run `run_id`, by step.
    pub fn metric_history(&self, run_id: &str, key: &str) -> Vec<MetricPoint> {
        let v = self.get(
            "metrics/get-history",
            &[
                ("run_id", run_id),
                ("metric_key", key),
                ("max_results", "25000"),
            ],
        );
        let mut points: Vec<MetricPoint> = v["metrics"]
            .as_array()
            .map(|a| a.iter().map(metric_point).collect())
            .unwrap_or_default();
        points.sort_by_key(|p| (p.step, p.timestamp));
        points
    }

    /// The parameters of run `run_id`.
    pub fn params(&self, run_id: &str) -> BTreeMap<String, String> {
        key_values(&self.run(run_id)["data"]["params"])
    }

    /// The tags of run `run_id`.
    pub fn tags(&self, run_id: &str) -> BTreeMap<String, String> {
        key_values(&self.run(run_id)["data"]["tags"])
    }

    /// The runs of an experiment (`runs/search`, newest first), each `{"info":…, "data":…}`.
    pub fn runs(&self, experiment_id: &str) -> Vec<Value> {
        let v = self.post(
            "runs/search",
            &json!({ "experiment_ids": [experiment_id], "max_results": 1000 }),
        );
        v["runs"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `.venv/bin/mlflow` of the workspace.
pub fn mlflow_bin() -> PathBuf {
    crate::root().join(".venv/bin/mlflow")
}

/// Whether the project venv has mlflow (scripts/setup.sh installs it).
pub fn available() -> bool {
    Path::new(&mlflow_bin()).is_file()
}

fn answer(what: &str, r: reqwest::blocking::Response) -> Value {
    let status = r.status();
    let text = r.text().unwrap_or_default();
    assert!(status.is_success(), "{what}: {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"))
}

fn metric_point(m: &Value) -> MetricPoint {
    let value = match &m["value"] {
        Value::String(s) => s.parse().unwrap_or(f64::NAN),
        v => v.as_f64().unwrap_or(f64::NAN),
    };
    let int = |k: &str| match &m[k] {
        Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_i64().unwrap_or(0),
    };
    MetricPoint {
        step: int("step"),
        value,
        timestamp: int("timestamp"),
    }
}

fn key_values(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    (
                        kv["key"].as_str().unwrap_or_default().to_owned(),
                        kv["value"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
