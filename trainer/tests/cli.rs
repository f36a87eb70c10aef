//! The trainer binary end to end on synthetic MNIST-format data made in the test: learning,
//! determinism, kill-and-resume, and the errors a user meets.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use trainer::idx::encode;

const TRAINER: &str = env!("CARGO_BIN_EXE_trainer");

/// A learnable data set: class k is a bright 4x4 patch at one of ten positions, plus noise.
fn synthetic(dir: &Path, train: u32, test: u32, side: u32) {
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

fn trainer(args: &[&str]) -> Command {
    let mut c = Command::new(TRAINER);
    c.args(args)
        .env_remove("TRAINER_DATA")
        .env_remove("TRAINER_OUTPUT");
    c
}

fn run(args: &[&str]) -> Output {
    trainer(args).output().expect("trainer runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// metrics.jsonl without the timing fields, which differ between runs.
fn metrics(out: &Path) -> Vec<Value> {
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
fn assert_same_run(a: &Path, b: &Path) {
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

fn summary(out: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn common<'a>(data: &'a Path, out: &'a Path, epochs: &'a str) -> Vec<&'a str> {
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

#[test]
fn learns_and_writes_every_output() {
    let t = tempfile::tempdir().unwrap();
    let (data, out) = (t.path().join("data"), t.path().join("out"));
    fs::create_dir(&data).unwrap();
    synthetic(&data, 600, 200, 12);
    let o = run(&common(&data, &out, "3"));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("epoch ")).count(),
        3,
        "{stdout}"
    );
    assert_eq!(
        listing(&out),
        [
            "checkpoint.safetensors",
            "metrics.jsonl",
            "model.safetensors",
            "summary.json"
        ]
    );
    let m = metrics(&out);
    let loss = |i: usize| m[i]["train_loss"].as_f64().unwrap();
    assert!(loss(2) < loss(0) * 0.7, "training loss did not fall: {m:?}");
    let acc = summary(&out)["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.8, "synthetic data should be easy, got {acc}");
    assert_eq!(m[0]["device"], "cpu");
    // The model file is a safetensors state dict with PyTorch's names.
    let model = fs::read(out.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(model[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&model[8..8 + header_len]).unwrap();
    assert_eq!(
        header["fc1.weight"]["shape"],
        serde_json::json!([128, 1024])
    );
    assert_eq!(header["conv1.weight"]["dtype"], "F32");
}

#[test]
fn same_seed_same_metrics_on_cpu() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    fs::create_dir(&data).unwrap();
    synthetic(&data, 300, 100, 10);
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    for out in [&a, &b] {
        assert!(run(&common(&data, out, "2")).status.success());
    }
    assert_same_run(&a, &b);
    let mut args = common(&data, &c, "2");
    args.extend(["--seed", "7"]);
    assert!(run(&args).status.success());
    assert_ne!(
        metrics(&a),
        metrics(&c),
        "a different seed must give a different run"
    );
}

#[test]
fn sigkill_mid_epoch_then_resume_matches_uninterrupted() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    fs::create_dir(&data).unwrap();
    synthetic(&data, 4000, 300, 16);
    let (full, killed) = (t.path().join("full"), t.path().join("killed"));
    assert!(run(&common(&data, &full, "3")).status.success());

    let mut child = trainer(&common(&data, &killed, "3"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !killed.join("checkpoint.safetensors").exists() {
        assert!(Instant::now() < deadline, "no checkpoint after epoch 1");
        std::thread::sleep(Duration::from_millis(10));
    }
    let epoch_secs = metrics_seconds(&killed);
    std::thread::sleep(Duration::from_secs_f64(epoch_secs * 0.4));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.join("summary.json").exists(),
        "the run finished before it was killed"
    );
    let epochs_before = metrics(&killed).len();
    assert!(epochs_before < 3, "{epochs_before}");

    let mut args = common(&data, &killed, "3");
    args.push("--resume");
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        !stdout.contains("epoch 1/3"),
        "resume repeated epoch 1: {stdout}"
    );
    let (a, b) = (summary(&full), summary(&killed));
    let diff = (a["test_accuracy"].as_f64().unwrap() - b["test_accuracy"].as_f64().unwrap()).abs();
    assert!(
        diff <= 0.003,
        "resumed run ends {diff} away from the uninterrupted one"
    );
    // On the CPU the resumed run is in fact the same computation.
    assert_same_run(&full, &killed);
    assert!(
        listing(&killed).iter().all(|n| !n.contains(".tmp-")),
        "{:?}",
        listing(&killed)
    );
}

fn metrics_seconds(out: &Path) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = fs::read_to_string(out.join("metrics.jsonl")) {
            if let Some(l) = text.lines().next() {
                let v: Value = serde_json::from_str(l).unwrap();
                return v["train_seconds"].as_f64().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "metrics.jsonl did not follow the checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `args` with `flag`'s value replaced (or the flag appended).
fn with<'a>(args: &[&'a str], flag: &'a str, value: &'a str) -> Vec<&'a str> {
    let mut a = args.to_vec();
    match a.iter().position(|x| *x == flag) {
        Some(i) => a[i + 1] = value,
        None => a.extend([flag, value]),
    }
    a
}

/// Runs the trainer expecting failure; returns stderr after checking the exit code and that
/// the output directory was left untouched.
fn fails(args: &[&str], out: &Path, code: i32) -> String {
    let o = run(args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        listing(out).is_empty(),
        "{args:?} left {:?} in the output dir",
        listing(out)
    );
    stderr
}

#[test]
fn bad_input_gives_one_clear_error_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (data, out) = (t.path().join("data"), t.path().join("out"));
    fs::create_dir(&data).unwrap();
    synthetic(&data, 50, 20, 8);
    let base = common(&data, &out, "1");

    let missing = t.path().join("nowhere");
    let e = fails(&with(&base, "--data", s(&missing)), &out, 1);
    assert!(
        e.contains("--data: data directory") && e.contains("nowhere"),
        "{e}"
    );

    for (flag, value, expect) in [
        ("--epochs", "0", "--epochs"),
        ("--batch-size", "0", "--batch-size"),
        ("--lr", "-1", "--lr"),
        ("--device", "tpu", "--device"),
    ] {
        let a = with(&base, flag, value);
        let e = fails(&a, &out, 2);
        assert!(
            e.contains(expect) && e.contains(value),
            "{flag} {value}: {e}"
        );
    }

    // --device cuda on a machine without a GPU or without libtorch_cuda.so.
    if !Path::new("/dev/nvidia0").exists() {
        let e = fails(&with(&base, "--device", "cuda"), &out, 1);
        assert!(e.contains("--device cuda:"), "{e}");
    }

    // Output under a regular file cannot be created.
    let file = t.path().join("file");
    fs::write(&file, b"x").unwrap();
    let bad_out = file.join("out");
    let e = fails(&with(&base, "--output", s(&bad_out)), &out, 1);
    assert!(
        e.contains("--output") && e.contains("cannot create it"),
        "{e}"
    );

    // Corrupt data files, one at a time.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "train-images-idx3-ubyte",
            encode(&[50], &[0; 50]),
            "wrong magic number",
        ),
        (
            "train-images-idx3-ubyte",
            encode(&[50, 8, 8], &[0; 100]),
            "truncated",
        ),
        (
            "train-labels-idx1-ubyte",
            encode(&[49], &[0; 49]),
            "holds 50 images but",
        ),
        (
            "t10k-labels-idx1-ubyte",
            encode(&[20], &[42; 20]),
            "label 42 at index 0 is out of range",
        ),
    ];
    for (name, bytes, expect) in cases {
        let d = t.path().join(format!("bad-{name}-{}", expect.len()));
        fs::create_dir(&d).unwrap();
        synthetic(&d, 50, 20, 8);
        fs::write(d.join(name), bytes).unwrap();
        let e = fails(&with(&base, "--data", s(&d)), &out, 1);
        assert!(e.contains(name) && e.contains(expect), "{name}: {e}");
    }

    // A finished run is not overwritten without --resume.
    assert!(run(&base).status.success());
    let before = fs::read(out.join("model.safetensors")).unwrap();
    let o = run(&base);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("pass --resume"));
    assert_eq!(fs::read(out.join("model.safetensors")).unwrap(), before);
}

#[test]
fn help_teaches_the_data_layout() {
    let o = run(&["--help"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    for want in [
        "train-images-idx3-ubyte",
        "--limit-train",
        "--resume",
        "auto",
    ] {
        assert!(text.contains(want), "help lacks {want}");
    }
}
