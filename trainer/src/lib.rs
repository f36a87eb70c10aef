//! The envbuild trainer: a small CNN for MNIST-format data on libtorch (tch-rs), with a
//! validating IDX reader, resumable checkpoints and per-epoch metrics.

pub mod cli;
pub mod device;
pub mod dist;
pub mod idx;
pub mod mlflow;
pub mod model;
pub mod output;
pub mod train;

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can stop a training run, each naming the file or flag involved.
#[derive(Debug, Error)]
pub enum Error {
    #[error("--data: {0}")]
    Data(#[from] idx::IdxError),
    #[error("--data: images are {rows}x{cols}; the network needs at least {min}x{min}")]
    TooSmall {
        rows: usize,
        cols: usize,
        min: usize,
    },
    #[error("--device cuda: {0}")]
    NoCuda(String),
    #[error("--output {}: {problem}", path.display())]
    Output { path: PathBuf, problem: String },
    #[error("--resume: checkpoint {}: {problem}", path.display())]
    Checkpoint { path: PathBuf, problem: String },
    /// The launch variables (WORLD_SIZE, RANK, MASTER_ADDR, …) or `--backend` are unusable.
    #[error("{0}")]
    Launch(String),
    /// The process group failed: this rank could not join, or a collective broke.
    #[error("rank {rank}: {problem}")]
    Group { rank: usize, problem: String },
    #[error("libtorch failed while {what}: {source}")]
    Torch {
        what: &'static str,
        #[source]
        source: tch::TchError,
    },
}

impl Error {
    fn torch(what: &'static str, source: tch::TchError) -> Error {
        Error::Torch { what, source }
    }

    /// A next step for the user, where there is an obvious one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::Data(idx::IdxError::NoDir(_) | idx::IdxError::Missing { .. }) => Some(
                "on Debian, `apt-get install dataset-fashion-mnist` puts Fashion-MNIST in /usr/share/datasets/fashion-mnist",
            ),
            Error::NoCuda(_) => Some("use --device cpu, or put libtorch's lib directory on LD_LIBRARY_PATH on a GPU host"),
            _ => None,
        }
    }
}

/// Parses nothing, prints only through `log`: the binary's whole job, testable in-process.
pub fn run(args: &cli::Args, mut log: impl FnMut(&str)) -> Result<output::Summary, Error> {
    let mut data = idx::load_dir(&args.data)?;
    if data.train.rows < model::Net::MIN_SIDE || data.train.cols < model::Net::MIN_SIDE {
        return Err(Error::TooSmall {
            rows: data.train.rows,
            cols: data.train.cols,
            min: model::Net::MIN_SIDE,
        });
    }
    if let Some(n) = args.limit_train {
        data.train.truncate(n as usize);
    }
    if let Some(n) = args.limit_test {
        data.test.truncate(n as usize);
    }
    let launch = dist::Launch::from_vars(|k| std::env::var(k).ok())?;
    let device = match device::resolve(args.device)? {
        // One GPU per process of a node, as torch.distributed's LOCAL_RANK means.
        tch::Device::Cuda(_) if launch.is_distributed() => tch::Device::Cuda(launch.local_rank),
        d => d,
    };
    if launch.is_distributed() {
        dist::check_backend(args.backend, device)?;
    }
    // --threads, else OMP_NUM_THREADS (as PyTorch reads it: the launcher's share of the cores
    // for each process of a node), else every core this process may use.
    let threads = match args.threads {
        Some(t) => t as i32,
        None => std::env::var("OMP_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<i32>().ok())
            .filter(|t| *t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32)),
    };
    tch::set_num_threads(threads);
    let conv_kind = match (args.precision, device) {
        (cli::PrecisionArg::Fp32, _) => tch::Kind::Float,
        (cli::PrecisionArg::Bf16, _) => tch::Kind::BFloat16,
        (cli::PrecisionArg::Auto, tch::Device::Cpu) if native_bf16() => tch::Kind::BFloat16,
        (cli::PrecisionArg::Auto, _) => tch::Kind::Float,
    };
    // Only rank 0 writes (and, resuming, reads) the output; the others get its state by
    // broadcast.
    let out = if launch.rank == 0 {
        Some(output::OutputDir::prepare(&args.output, args.resume)?)
    } else {
        None
    };
    let group = dist::Group::join(
        launch.clone(),
        std::time::Duration::from_secs(args.dist_timeout),
    )?;
    if launch.is_distributed() {
        log(&format!(
            "trainer: rank {} of {} (local rank {}), c10d Gloo group at {}:{}",
            launch.rank, launch.world, launch.local_rank, launch.master_addr, launch.master_port
        ));
    }
    log(&format!(
        "trainer: {} training / {} test images of {}x{} from {}; device {}, {} convolutions, {} threads; output {}",
        data.train.len(),
        data.test.len(),
        data.train.rows,
        data.train.cols,
        args.data.display(),
        device::name(device),
        train::precision_name(conv_kind),
        threads,
        args.output.display()
    ));
    let cfg = train::Config {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        device,
        threads,
        resume: args.resume,
        conv_kind,
    };
    // MLflow tracking when MLFLOW_TRACKING_URI is set (rank 0 only): never fatal.
    let tracker = if launch.rank == 0 {
        start_tracker(&cfg, &data, launch.world, &mut log)
    } else {
        None
    };
    let result = train::train(&data, &cfg, out.as_ref(), &group, |m| {
        log(&m.line(args.epochs));
        if let Some(t) = &tracker {
            t.log_epoch(m);
            t.notes().iter().for_each(|n| log(&format!("trainer: {n}")));
        }
    });
    if let Some(t) = tracker {
        for n in t.finish(result.is_ok(), MLFLOW_WAIT) {
            log(&format!("trainer: {n}"));
        }
    }
    result
}

/// How long the end of a run waits for MLflow tracking to take the last metrics.
const MLFLOW_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The MLflow tracker of this run, with its parameters, when `MLFLOW_TRACKING_URI` is set; an
/// unusable URI is a warning, not an error.
fn start_tracker(
    cfg: &train::Config,
    data: &idx::DataSet,
    world: usize,
    log: &mut impl FnMut(&str),
) -> Option<mlflow::Tracker> {
    let settings = match mlflow::Settings::from_env(|k| std::env::var(k).ok()) {
        Ok(s) => s?,
        Err(e) => {
            log(&format!(
                "trainer: warning: {e}; metrics go to metrics.jsonl only"
            ));
            return None;
        }
    };
    use mlflow::batch::Param;
    let params = vec![
        Param::new("epochs", cfg.epochs),
        Param::new("batch_size", cfg.batch_size),
        Param::new("lr", cfg.lr),
        Param::new("seed", cfg.seed),
        Param::new("threads", cfg.threads),
        Param::new("world_size", world),
        Param::new("device", device::name(cfg.device)),
        Param::new("precision", train::precision_name(cfg.conv_kind)),
        Param::new("train_images", data.train.len()),
        Param::new("test_images", data.test.len()),
        Param::new("resume", cfg.resume),
    ];
    Some(mlflow::Tracker::start(settings, params))
}

/// Whether this CPU computes bfloat16 natively (AVX512-BF16: Zen 4 and later, Cooper Lake,
/// Sapphire Rapids and later, whose AMX oneDNN uses too), so that oneDNN's bf16 convolutions
/// are faster than fp32 rather than emulated.
fn native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
