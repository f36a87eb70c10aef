//! `envbuild run --local` as one call: check the data and output folders, connect to the
//! engine, make sure it has the image, request GPUs when it can give them, run the trainer as
//! the caller with data read-only and outputs read-write, and say how it ended. The CLI only
//! parses flags into a [`LocalRun`] and prints the [`Finished`]; a test calls [`run_local`].
//!
//! With `--code` ([`CodeRun`]) it runs the user's command instead, laid out as Azure ML lays out
//! a command job: every input, output, reference and the code directory is checked before the
//! engine is reached; the code is mounted as a copy of its snapshot, made in the cache's `tmp`
//! and checked against the snapshot's digest as it is written (so ignored files are not there,
//! and a file edited after the snapshot cannot slip in), removed when the run ends.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use super::image::{ensure_image, EnsureError, Source};
use super::ranks;
use super::run::{device_request, Gpus, JobLayout, Outcome, RunSpec, Sink};
use super::{Blocking, EngineError};
use crate::build::{self, Reporter};
use crate::cache::Cache;
use crate::jobio::{self, InputValue, JobIoError};
use crate::snapshot::{Snapshot, SnapshotError};

/// One local run, as the flags describe it.
#[derive(Debug, Clone)]
pub struct LocalRun {
    /// An environment file, `oci:DIR`, `docker-archive:FILE` or an image reference (see
    /// [`Source::parse`]).
    pub source: String,
    /// Host folder with the data set, mounted read-only at `/data`.
    pub data: PathBuf,
    /// Host folder for checkpoints, metrics and the model, mounted read-write at `/outputs`
    /// (made by the caller when missing, so it belongs to them).
    pub outputs: PathBuf,
    /// Arguments after the image's entrypoint.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs for the trainer.
    pub env: Vec<String>,
    pub shm_size: Option<i64>,
    pub memory: Option<i64>,
    pub gpus: Gpus,
    /// `UID:GID`; the caller's when `None`.
    pub user: Option<String>,
    pub stop_timeout: u32,
    pub keep: bool,
    /// Data-parallel ranks: one container each on a network of their own, with the variables
    /// Azure ML sets (see [`super::ranks`]); 1 is an ordinary run.
    pub ranks: usize,
    /// `--code`: the user's command in the code snapshot instead of the image's trainer (`data`
    /// and `args` are then unused; outputs go to `outputs`/NAME).
    pub code: Option<CodeRun>,
}

/// `run --local --code DIR [--input NAME=VALUE]… [--output NAME]… -- COMMAND…`.
#[derive(Debug, Clone)]
pub struct CodeRun {
    /// The code directory; its snapshot is the working directory.
    pub dir: PathBuf,
    /// The inputs, as [`jobio::parse_input`] made them.
    pub inputs: Vec<(String, InputValue)>,
    /// The outputs' names: each is `outputs`/NAME on the host.
    pub outputs: Vec<String>,
    /// The words of the command (after `--`): quoted and expanded by [`jobio::command_line`]
    /// and [`jobio::expand`].
    pub command: Vec<String>,
}

/// A [`CodeRun`], checked: everything but the mounts' host folders, which need the engine.
struct CheckedCode {
    snapshot: Snapshot,
    /// Host path and container path of each folder or file input.
    inputs: Vec<(PathBuf, String)>,
    outputs: Vec<String>,
    command: String,
}

impl CodeRun {
    /// Checks the code directory, inputs, outputs and references; reaches no engine.
    fn check(&self) -> Result<CheckedCode, LocalError> {
        if self.command.is_empty() {
            return Err(LocalError::NoCommand);
        }
        let inputs = jobio::inputs_by_name(&self.inputs)?;
        let outputs = jobio::outputs_checked(&self.outputs)?;
        let mut values = BTreeMap::new();
        let mut mounts = Vec::new();
        for (name, value) in &inputs {
            let host = match value {
                InputValue::Folder(p) | InputValue::File(p) => p,
                InputValue::Literal(v) => {
                    values.insert(name.clone(), v.clone());
                    continue;
                }
                InputValue::Uri(uri) => {
                    return Err(LocalError::UriInput {
                        name: name.clone(),
                        uri: uri.clone(),
                    })
                }
            };
            let at = jobio::input_path(name, value).unwrap_or_default();
            values.insert(name.clone(), at.clone());
            mounts.push((host.clone(), at));
        }
        let outputs_at = outputs
            .iter()
            .map(|o| (o.clone(), jobio::output_path(o)))
            .collect();
        let command = jobio::expand(&jobio::command_line(&self.command), &values, &outputs_at)?;
        let snapshot = Snapshot::of(&self.dir)?;
        Ok(CheckedCode {
            snapshot,
            inputs: mounts,
            outputs,
            command,
        })
    }
}

/// How a local run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub outcome: Outcome,
    /// The container's ID (removed unless kept).
    pub container: String,
    /// The outputs folder, absolute.
    pub outputs: PathBuf,
}

impl Finished {
    /// The trainer's final test accuracy, from its `summary.json` (when it wrote one).
    pub fn test_accuracy(&self) -> Option<f64> {
        #[derive(serde::Deserialize)]
        struct Summary {
            test_accuracy: f64,
        }
        let bytes = std::fs::read(self.outputs.join("summary.json")).ok()?;
        serde_json::from_slice::<Summary>(&bytes)
            .ok()
            .map(|s| s.test_accuracy)
    }
}

/// Why a local run could not start.
#[derive(Debug, Error)]
pub enum LocalError {
    #[error("--data {}: not a directory (the data set is mounted read-only at /data)", .0.display())]
    NoData(PathBuf),
    #[error("--user {0}: expected UID:GID (numbers), e.g. 1000:1000")]
    BadUser(String),
    #[error("--ranks {0}: expected 1 to 64 ranks (one container each)")]
    BadRanks(usize),
    #[error("--ranks {ranks} --gpus {gpus}: each rank takes one GPU (rank R the host's GPU R); ask for --gpus {ranks}, all or auto, or --gpus none")]
    GpuCount { ranks: usize, gpus: u32 },
    #[error("{flag} {}: {source}", path.display())]
    Folder {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--code needs the command to run after `--`, e.g. `-- python train.py --data ${{{{inputs.data}}}}`")]
    NoCommand,
    #[error("--input {name}={uri}: run --local mounts local folders and files; a URI input is for --azure")]
    UriInput { name: String, uri: String },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    JobIo(#[from] JobIoError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Image(Box<EnsureError>),
}

impl From<EnsureError> for LocalError {
    fn from(e: EnsureError) -> LocalError {
        LocalError::Image(Box::new(e))
    }
}

impl crate::error::Hint for LocalError {
    fn hint(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            LocalError::Image(e) => e.hint(),
            LocalError::Snapshot(e) => e.hint(),
            LocalError::JobIo(e) => e.hint(),
            LocalError::UriInput { .. } => {
                Some("download it and give its local path, or run it with --azure".into())
            }
            _ => None,
        }
    }
}

/// Sends build messages to the run's sink.
struct Messages<'a>(&'a dyn Sink);

impl Reporter for Messages<'_> {
    fn message(&mut self, text: &str) {
        self.0.message(text);
    }

    fn progress(&self) -> &dyn crate::progress::Progress {
        self.0.progress()
    }
}

/// Runs `r` on the local engine to its end (or to Ctrl-C/SIGTERM, which stop the container).
pub fn run_local(
    r: &LocalRun,
    cache: &Cache,
    settings: &build::Settings,
    sink: Arc<dyn Sink>,
) -> Result<Finished, LocalError> {
    // A command job: every check before the engine is reached; the trainer's data is not used.
    let code = r.code.as_ref().map(CodeRun::check).transpose()?;
    let data = if code.is_some() {
        PathBuf::new()
    } else {
        if !r.data.is_dir() {
            return Err(LocalError::NoData(r.data.clone()));
        }
        r.data.canonicalize().map_err(|source| LocalError::Folder {
            flag: "--data",
            path: r.data.clone(),
            source,
        })?
    };
    let user = match &r.user {
        Some(u) if valid_user(u) => u.clone(),
        Some(u) => return Err(LocalError::BadUser(u.clone())),
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        None => unsafe { format!("{}:{}", libc::getuid(), libc::getgid()) },
    };
    if r.ranks == 0 || r.ranks > 64 {
        return Err(LocalError::BadRanks(r.ranks));
    }
    if let (true, Gpus::Count(n)) = (r.ranks > 1, r.gpus) {
        if n as usize != r.ranks {
            return Err(LocalError::GpuCount {
                ranks: r.ranks,
                gpus: n,
            });
        }
    }
    let source = Source::parse(&r.source)?;
    let engine = Blocking::connect()?;
    // Made by us, as the caller, before the engine would make it as root.
    let folder = |source| LocalError::Folder {
        flag: "--outputs",
        path: r.outputs.clone(),
        source,
    };
    std::fs::create_dir_all(&r.outputs).map_err(folder)?;
    let outputs = r.outputs.canonicalize().map_err(folder)?;
    let image = ensure_image(&engine, &source, cache, settings, &mut Messages(&*sink))?;
    let gpus = device_request(r.gpus, engine.has_nvidia_runtime()?);
    sink.message(&match (&gpus, r.gpus) {
        (None, Gpus::Auto) => "no nvidia runtime in the Docker engine: running on the CPU".into(),
        (None, _) => "--gpus none: running on the CPU".into(),
        (Some(_), g) => format!("requesting GPUs: {g} (nvidia)"),
    });
    // The code's copy lives as long as this call (kept with --keep, for the kept container).
    let mut code_copy = None;
    let job = match code {
        None => None,
        Some(c) => {
            let (layout, copy) = lay_out(c, &outputs, cache, &*sink)?;
            code_copy = Some(copy);
            Some(layout)
        }
    };
    let spec = RunSpec {
        image: image.clone(),
        args: r.args.clone(),
        data: data.clone(),
        outputs: outputs.clone(),
        env: r.env.clone(),
        shm_size: r.shm_size,
        memory: r.memory,
        gpus,
        user,
        stop_timeout: r.stop_timeout,
        keep: r.keep,
        job,
    };
    if spec.job.is_none() {
        sink.message(&format!(
            "running {image}: {} → /data (read-only), {} → /outputs",
            data.display(),
            outputs.display()
        ));
    } else {
        sink.message(&format!("running {image}"));
    }
    let (outcome, container) = if r.ranks == 1 {
        engine.run(&spec, sink.clone())?
    } else {
        sink.message(&format!(
            "{} ranks, one container each, rank 0 at {}:{}",
            r.ranks,
            ranks::rank_host(0),
            ranks::MASTER_PORT
        ));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let specs: Vec<RunSpec> = (0..r.ranks)
            .map(|rank| {
                let mut s = spec.clone();
                // The launch variables first: a user's -e OMP_NUM_THREADS=… comes later and wins.
                s.env = ranks::rank_env(r.ranks, rank, cores);
                s.env.extend(r.env.iter().cloned());
                // Rank R gets the host's GPU R.
                s.gpus = s.gpus.map(|mut g| {
                    g.count = None;
                    g.device_ids = Some(vec![rank.to_string()]);
                    g
                });
                s
            })
            .collect();
        let (outcome, mut ids) = engine.run_ranks(&specs, sink.clone())?;
        (outcome, ids.swap_remove(0))
    };
    if r.keep {
        sink.message(&format!("kept container {container}"));
        if let Some(copy) = code_copy.take() {
            sink.message(&format!("kept its code in {}", copy.keep().display()));
        }
    }
    Ok(Finished {
        outcome,
        container,
        outputs,
    })
}

fn valid_user(u: &str) -> bool {
    u.split_once(':')
        .is_some_and(|(x, y)| x.parse::<u32>().is_ok() && y.parse::<u32>().is_ok())
}

/// The host side of a checked command job: the snapshot copied into the cache's `tmp`, each
/// output's folder `outputs`/NAME made by the caller (so it belongs to them); and what each
/// mount is, told to the sink.
fn lay_out(
    c: CheckedCode,
    outputs: &std::path::Path,
    cache: &Cache,
    sink: &dyn Sink,
) -> Result<(JobLayout, tempfile::TempDir), LocalError> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = cache.root.join("tmp");
    let folder = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| LocalError::Folder {
            flag: "--cache",
            path,
            source,
        }
    };
    let copy = tempfile::Builder::new()
        .prefix(&format!("code-{}-", &c.snapshot.short_hash()[..12]))
        .tempdir_in(&tmp)
        .map_err(folder(&tmp))?;
    // Readable by the container's user, whoever --user makes it (temp dirs start 0700).
    std::fs::set_permissions(copy.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(folder(copy.path()))?;
    c.snapshot.copy_to(copy.path())?;
    for w in c.snapshot.warnings() {
        sink.message(&format!("warning: {w}"));
    }
    sink.message(&format!(
        "code: {} ({} files, {}, snapshot {}) → {} (read-only, the working directory)",
        c.snapshot.root.display(),
        c.snapshot.files.len(),
        human_bytes(c.snapshot.total_bytes),
        c.snapshot.short_hash(),
        jobio::CODE_MOUNT
    ));
    for (host, at) in &c.inputs {
        sink.message(&format!("input: {} → {at} (read-only)", host.display()));
    }
    let mut outs = Vec::new();
    for name in &c.outputs {
        let host = outputs.join(name);
        std::fs::create_dir_all(&host).map_err(|source| LocalError::Folder {
            flag: "--outputs",
            path: host.clone(),
            source,
        })?;
        let at = jobio::output_path(name);
        sink.message(&format!("output: {} → {at}", host.display()));
        outs.push((host, at));
    }
    Ok((
        JobLayout {
            code: copy.path().to_path_buf(),
            inputs: c.inputs,
            outputs: outs,
            command: c.command,
        },
        copy,
    ))
}

/// `n` bytes for a message: B, kB or MB (powers of 1000, as az ml counts).
fn human_bytes(n: u64) -> String {
    match n {
        n if n < 1000 => format!("{n} B"),
        n if n < 1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        n => format!("{:.1} MB", n as f64 / 1e6),
    }
}
