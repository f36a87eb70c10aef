//! The trainer binary end to end on synthetic MNIST-format data made in the test: learning,
//! determinism, kill-and-resume, and the errors a user meets.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use envbuild_e2e::idx_file as encode;
use serde_json::Value;

use super::common::*;

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
    // 2000 images: epochs long enough that the kill lands mid-epoch, short enough not to
    // dominate the suite.
    synthetic(&data, 2000, 300, 16);
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
    run_on_for_a_tenth_more_cpu(&mut child);
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
        "MLFLOW_TRACKING_URI",
    ] {
        assert!(text.contains(want), "help lacks {want}");
    }
}
