//! Helpers shared by the trainer's integration tests: synthetic MNIST-format data, the binary,
//! and readers of what a run writes.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use envbuild_e2e::{bins, idx_file as encode};
use serde_json::Value;

/// A learnable data set: class k is a bright 4x4 patch at one of ten positions, plus noise.
pub fn synthetic(dir: &Path, train: u32, test: u32, side: u32) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let mut images = Vec::with_capacity((n * side * side) as usize);
        let mut labels = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k = (rand() % 10) as u32;
            let (py, px) = (1 + (k / 5) * (side / 2), 1 + (k % 5) * (side - 5) / 4);
            for y in 0..side {
                for x in 0..side {
                    let on = (py..py + 4).contains(&y) && (px..px + 4).contains(&x);
                    let noise = (rand() % 60) as u8;
                    images.push(if on { 190 + noise } else { noise });
                }
            }
            labels.push(k as u8);
        }
        fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            encode(&[n, side, side], &images),
        )
        .unwrap();
        fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            encode(&[n], &labels),
        )
        .unwrap();
    }
}

pub fn trainer(args: &[&str]) -> Command {
    let mut c = Command::new(&bins().trainer);
    c.args(args)
        .env_remove("TRAINER_DATA")
        .env_remove("TRAINER_OUTPUT");
    c
}

pub fn run(args: &[&str]) -> Output {
    trainer(args).output().expect("trainer runs")
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// metrics.jsonl without the timing fields, which differ between runs.
pub fn metrics(out: &Path) -> Vec<Value> {
    fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            for k in ["seconds", "train_seconds", "images_per_second"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

/// Asserts that two runs are the same computation: the same weights, bit for bit, and the same
/// metrics. The one exception is train_loss, the f32 sum of each batch's mean loss: CI saw it one
/// ulp apart between two processes whose weights, test loss and accuracy were identical (the
/// rounding of a parallel reduction; the gradients do not depend on it), so it gets a relative
/// tolerance of 1e-5 — far below any change in what was trained.
pub fn assert_same_run(a: &Path, b: &Path) {
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), mb.len(), "{ma:?}\n{mb:?}");
    for (x, y) in ma.iter().zip(&mb) {
        let (mut x, mut y) = (x.clone(), y.clone());
        let lx = x.as_object_mut().unwrap().remove("train_loss").unwrap();
        let ly = y.as_object_mut().unwrap().remove("train_loss").unwrap();
        let (lx, ly) = (lx.as_f64().unwrap(), ly.as_f64().unwrap());
        assert!(
            (lx - ly).abs() <= 1e-5 * lx.abs().max(ly.abs()),
            "train_loss {lx} vs {ly}"
        );
        assert_eq!(x, y);
    }
    assert!(
        fs::read(a.join("model.safetensors")).unwrap()
            == fs::read(b.join("model.safetensors")).unwrap(),
        "the two runs trained different weights"
    );
}

pub fn summary(out: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

pub fn common<'a>(data: &'a Path, out: &'a Path, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "--data",
        s(data),
        "--output",
        s(out),
        "--epochs",
        epochs,
        "--device",
        "cpu",
        "--threads",
        "2",
        "--batch-size",
        "32",
    ]
}

/// Lets a live trainer run on until it has used a tenth more CPU time than it had at the call,
/// which a test makes right after epoch 1's checkpoint appears: the trainer is then some batches
/// into epoch 2, and far from the end of a 3-epoch run. CPU time, not the clock: in a loaded
/// suite an epoch's wall time varies several-fold from one epoch to the next as neighbouring
/// tests come and go, and a wait of 0.4 of epoch 1's seconds once ended after the whole run had
/// finished. A tenth, not more: start-up and epoch 1 count in the budget, and under load an
/// epoch's CPU time varies too (OpenMP threads spin while they wait for each other), so a budget
/// of two fifths once reached past the end of a run. Panics if the trainer exits first.
pub fn run_on_for_a_tenth_more_cpu(child: &mut std::process::Child) {
    let start = cpu_ticks(child.id());
    let until = start + start.div_ceil(10);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let exited = child.try_wait().unwrap();
        assert!(exited.is_none(), "the run finished before it was killed");
        if cpu_ticks(child.id()) >= until {
            return;
        }
        assert!(Instant::now() < deadline, "the trainer stopped using CPU");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The CPU time a live process has used so far (user + system), in clock ticks: fields 14 and
/// 15 of /proc/PID/stat, counted after the command name's closing parenthesis.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // The state (field 3) is fields[0] here, so utime (14) and stime (15) are 11 and 12.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `args` with `flag`'s value replaced (or the flag appended).
pub fn with<'a>(args: &[&'a str], flag: &'a str, value: &'a str) -> Vec<&'a str> {
    let mut a = args.to_vec();
    match a.iter().position(|x| *x == flag) {
        Some(i) => a[i + 1] = value,
        None => a.extend([flag, value]),
    }
    a
}
