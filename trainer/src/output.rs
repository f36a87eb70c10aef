//! The output directory: atomic writes (temporary name, then rename), the metrics log and the
//! checks made before anything is written there.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const METRICS: &str = "metrics.jsonl";
pub const MODEL: &str = "model.safetensors";
pub const SUMMARY: &str = "summary.json";

/// One epoch's results: a line of `metrics.jsonl` and of stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: u32,
    pub train_loss: f64,
    pub test_loss: f64,
    /// Fraction of test images classified correctly (0..1).
    pub test_accuracy: f64,
    /// Wall time of the epoch: training and evaluation.
    pub seconds: f64,
    /// Wall time of the training part alone.
    pub train_seconds: f64,
    /// Training images per second of `train_seconds`.
    pub images_per_second: f64,
    pub device: String,
}

impl EpochMetrics {
    /// The human-readable line printed after each epoch.
    pub fn line(&self, epochs: u32) -> String {
        format!(
            "epoch {}/{epochs}  train_loss {:.4}  test_loss {:.4}  test_accuracy {:.2}%  {:.1}s  {:.0} images/s  {}",
            self.epoch,
            self.train_loss,
            self.test_loss,
            self.test_accuracy * 100.0,
            self.seconds,
            self.images_per_second,
            self.device
        )
    }
}

/// Final results, written to `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub epochs: u32,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub train_loss: f64,
    pub train_images: usize,
    pub test_images: usize,
    pub image_shape: [usize; 2],
    pub parameters: i64,
    pub batch_size: u32,
    pub lr: f64,
    pub seed: u64,
    pub device: String,
    /// The convolutions' precision: "fp32" or "bf16".
    #[serde(default = "fp32")]
    pub precision: String,
    pub threads: i32,
    /// Training seconds summed over the epochs this summary covers.
    pub train_seconds: f64,
    pub model: String,
}

fn fp32() -> String {
    "fp32".into()
}

/// The output directory of one run.
#[derive(Debug)]
pub struct OutputDir {
    pub dir: PathBuf,
}

impl OutputDir {
    /// Creates the directory if needed and proves it writable; refuses to mix a new run into an
    /// old one unless `resume` is set.
    pub fn prepare(dir: &Path, resume: bool) -> Result<OutputDir, Error> {
        let err = |what: &str, e: std::io::Error| Error::Output {
            path: dir.to_path_buf(),
            problem: format!("{what}: {e}"),
        };
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Output {
                path: dir.to_path_buf(),
                problem: "exists and is not a directory".into(),
            });
        }
        fs::create_dir_all(dir).map_err(|e| err("cannot create it", e))?;
        let probe = dir.join(format!(".write-test-{}", std::process::id()));
        fs::write(&probe, b"").map_err(|e| err("is not writable", e))?;
        let _ = fs::remove_file(&probe);
        let out = OutputDir {
            dir: dir.to_path_buf(),
        };
        out.remove_stale_temporaries();
        if !resume {
            for name in [CHECKPOINT, MODEL] {
                if dir.join(name).exists() {
                    return Err(Error::Output {
                        path: dir.to_path_buf(),
                        problem: format!(
                            "already holds a training run ({name}); pass --resume to continue it or choose another --output"
                        ),
                    });
                }
            }
        }
        Ok(out)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A temporary path beside `name`, renamed over it by [`OutputDir::commit`].
    pub fn temp_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!(".{name}.tmp-{}", std::process::id()))
    }

    /// Moves a finished temporary file into place (atomic on POSIX file systems).
    pub fn commit(&self, name: &str) -> Result<(), Error> {
        fs::rename(self.temp_path(name), self.path(name)).map_err(|e| Error::Output {
            path: self.path(name),
            problem: format!("cannot move into place: {e}"),
        })
    }

    /// Writes `bytes` to `name` atomically.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        let tmp = self.temp_path(name);
        let res = fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Output {
                path: self.path(name),
                problem: format!("cannot write: {e}"),
            });
        }
        self.commit(name)
    }

    /// Rewrites `metrics.jsonl` with all epochs so far.
    pub fn write_metrics(&self, all: &[EpochMetrics]) -> Result<(), Error> {
        let mut text = String::new();
        for m in all {
            text.push_str(&serde_json::to_string(m).expect("metrics serialise"));
            text.push('\n');
        }
        self.write(METRICS, text.as_bytes())
    }

    /// The metrics of epochs `1..=upto` from an earlier run, if the file is there.
    pub fn read_metrics(&self, upto: u32) -> Result<Vec<EpochMetrics>, Error> {
        let path = self.path(METRICS);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Output {
                    path,
                    problem: format!("cannot read: {e}"),
                })
            }
        };
        let mut out = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let m: EpochMetrics = serde_json::from_str(line).map_err(|e| Error::Output {
                path: path.clone(),
                problem: format!("line {}: not an epoch record: {e}", i + 1),
            })?;
            if m.epoch <= upto {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Removes temporaries left by a killed run (`.NAME.tmp-PID`).
    fn remove_stale_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_file_and_an_old_run() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        fs::write(&file, b"x").unwrap();
        let e = OutputDir::prepare(&file, false).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        let e = OutputDir::prepare(&file.join("sub"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot create it"), "{e}");
        let run = d.path().join("run");
        let out = OutputDir::prepare(&run, false).unwrap();
        out.write(MODEL, b"m").unwrap();
        let e = OutputDir::prepare(&run, false).unwrap_err().to_string();
        assert!(e.contains("--resume"), "{e}");
        assert!(OutputDir::prepare(&run, true).is_ok());
    }

    #[test]
    fn metrics_round_trip_and_cut_at_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let out = OutputDir::prepare(d.path(), false).unwrap();
        let m = |epoch| EpochMetrics {
            epoch,
            train_loss: 0.5,
            test_loss: 0.4,
            test_accuracy: 0.9,
            seconds: 1.0,
            train_seconds: 0.9,
            images_per_second: 100.0,
            device: "cpu".into(),
        };
        out.write_metrics(&[m(1), m(2), m(3)]).unwrap();
        assert_eq!(out.read_metrics(2).unwrap(), vec![m(1), m(2)]);
        // A stale temporary from a killed run is cleaned up on the next start.
        fs::write(d.path().join(".model.safetensors.tmp-1"), b"half").unwrap();
        OutputDir::prepare(d.path(), true).unwrap();
        assert!(!d.path().join(".model.safetensors.tmp-1").exists());
        assert!(m(1).line(3).starts_with("epoch 1/3  train_loss 0.5000"));
    }
}
