//! Command-line arguments of the trainer (clap), checked before any data or output is touched.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Train a small CNN on an MNIST-format data set (MNIST, Fashion-MNIST, KMNIST…) with libtorch.
///
/// The data directory holds the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte,
/// t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, raw or gzipped (.gz). The whole data set is
/// moved to the training device once; batches are index selections on the device.
///
/// The output directory receives checkpoint.safetensors after every epoch (weights, Adam state,
/// epoch, seed), metrics.jsonl (one JSON object per epoch), and at the end model.safetensors and
/// summary.json. Every file is written to a temporary name and renamed, so a killed run never
/// leaves a half-written file; --resume continues from the last complete epoch.
///
/// When MLFLOW_TRACKING_URI is set (Azure ML jobs set it), the parameters and each epoch's
/// metrics also go to that MLflow tracking server (http, https or azureml://; MLFLOW_RUN_ID,
/// MLFLOW_EXPERIMENT_ID or MLFLOW_EXPERIMENT_NAME, MLFLOW_TRACKING_TOKEN or
/// MLFLOW_TRACKING_USERNAME/PASSWORD as MLflow reads them); a tracking outage is a warning,
/// never an error.
#[derive(Debug, Clone, Parser)]
#[command(name = "trainer", version, about, long_about)]
pub struct Args {
    /// Directory with the four IDX files (raw or .gz)
    #[arg(
        long,
        value_name = "DIR",
        env = "TRAINER_DATA",
        default_value = "/usr/share/datasets/fashion-mnist"
    )]
    pub data: PathBuf,

    /// Where checkpoints, metrics and the model go (Azure ML uploads ./outputs after a job)
    #[arg(
        long,
        value_name = "DIR",
        env = "TRAINER_OUTPUT",
        default_value = "outputs"
    )]
    pub output: PathBuf,

    /// Passes over the training set
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub epochs: u32,

    /// Images per optimisation step
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: u32,

    /// Adam learning rate (positive)
    #[arg(long, value_name = "RATE", default_value_t = 1e-3, value_parser = parse_lr, allow_negative_numbers = true)]
    pub lr: f64,

    /// Seed for initialisation, shuffling and dropout; same seed on the CPU gives the same metrics
    #[arg(long, value_name = "N", default_value_t = 42)]
    pub seed: u64,

    /// Training device: auto picks CUDA when a GPU and libtorch_cuda.so are there, else the CPU
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,

    /// Precision of the two convolutions, where nearly all the time goes: bf16 runs them in
    /// bfloat16, channels-last (weights, Adam and the linear layers stay fp32); auto picks bf16
    /// on a CPU with native bfloat16 (AVX512-BF16) and fp32 elsewhere
    #[arg(long, value_enum, default_value_t = PrecisionArg::Auto)]
    pub precision: PrecisionArg,

    /// CPU threads for libtorch [default: all available cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: Option<u32>,

    /// Continue from checkpoint.safetensors in --output (starts afresh if there is none)
    #[arg(long)]
    pub resume: bool,

    /// Data-parallel backend when WORLD_SIZE > 1 (c10d): auto and gloo use libtorch's Gloo
    /// process group (CUDA gradients staged through host memory); nccl is refused with the reason
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,

    /// Seconds a rank waits for the others: to reach MASTER_ADDR:MASTER_PORT, and in any
    /// collective (a rank that dies is seen at once; one that hangs, after this)
    #[arg(long, value_name = "SECS", default_value_t = 300, env = "TRAINER_DIST_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub dist_timeout: u64,

    /// Use only the first N training images (quick runs)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_train: Option<u64>,

    /// Use only the first N test images (quick runs)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_test: Option<u64>,
}

/// Which device to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

/// The data-parallel backend (see `--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Auto,
    Gloo,
    Nccl,
}

/// The convolutions' precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    Auto,
    Fp32,
    Bf16,
}

fn parse_lr(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && v > 0.0 && v < 10.0 {
        Ok(v)
    } else {
        Err(format!(
            "{s} is not a usable learning rate (expected 0 < lr < 10, e.g. 0.001)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn nonsense_numbers_are_refused_with_the_flag_named() {
        for (flag, value) in [
            ("--epochs", "0"),
            ("--batch-size", "0"),
            ("--lr", "-0.1"),
            ("--lr", "nan"),
            ("--threads", "0"),
        ] {
            let err = Args::try_parse_from(["trainer", flag, value])
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag), "{flag} {value}: {err}");
        }
        let a = Args::try_parse_from(["trainer", "--lr", "3e-4", "--epochs", "2"]).unwrap();
        assert_eq!((a.lr, a.epochs, a.batch_size), (3e-4, 2, 128));
    }
}
