//! `envbuild run --local` as one call: check the data and output folders, connect to the
//! engine, make sure it has the image, request GPUs when it can give them, run the trainer as
//! the caller with data read-only and outputs read-write, and say how it ended. The CLI only
//! parses flags into a [`LocalRun`] and prints the [`Finished`]; a test calls [`run_local`].

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use super::image::{ensure_image, EnsureError, Source};
use super::ranks;
use super::run::{device_request, Gpus, Outcome, RunSpec, Sink};
use super::{Blocking, EngineError};
use crate::build::{self, Reporter};
use crate::cache::Cache;

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
    if !r.data.is_dir() {
        return Err(LocalError::NoData(r.data.clone()));
    }
    let data = r.data.canonicalize().map_err(|source| LocalError::Folder {
        flag: "--data",
        path: r.data.clone(),
        source,
    })?;
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
    };
    sink.message(&format!(
        "running {image}: {} → /data (read-only), {} → /outputs",
        data.display(),
        outputs.display()
    ));
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
