//! Data-parallel runs on the real engine: `run --local --ranks 2` starts two containers on a
//! network of their own with the variables Azure ML sets; they train the weights two processes
//! on this host train (bit for bit: the same binary, libtorch and reduction order) and, within
//! the bound `tests/e2e/trainer/distributed.rs` justifies (one Adam step), what one process trains;
//! a rank killed mid-run ends the run, and `--resume` finishes it. (`run --azure
//! --instances 2` is in azure.rs, beside the deployment it needs.)

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envbuild_e2e::{
    assert_same_training, base_layout, bins, engine_lock, max_weight_difference, ok, run,
    trainer_ranks,
};

use super::run::{cpu_env, run_local, DATA};

#[test]
fn two_ranks_in_two_containers_train_what_two_processes_and_one_process_train() {
    let _engine = engine_lock();
    let t = tempfile::tempdir().unwrap();
    let args = [
        "--epochs",
        "1",
        "--limit-train",
        "2000",
        "--limit-test",
        "500",
        "--seed",
        "11",
        "--batch-size",
        "64",
        "--precision",
        "fp32",
        "--threads",
        "1",
        "--device",
        "cpu",
    ];
    let containers = t.path().join("containers");
    let env = cpu_env();
    let mut c = run_local(
        env.to_str().unwrap(),
        &containers,
        &["--ranks", "2", "--gpus", "none", "--data", DATA],
        &args,
    );
    c.env("ENVBUILD_BASE", base_layout());
    let o = run(&mut c);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("2 ranks, one container each, rank 0 at rank0:6105")
            && stderr.contains("rank 1: container "),
        "{stderr}"
    );
    // Rank 0 speaks plainly, rank 1 under its prefix; only rank 0 reports epochs.
    assert!(stdout.contains("trainer: rank 0 of 2"), "{stdout}");
    assert!(stdout.contains("[rank 1] trainer: rank 1 of 2"), "{stdout}");
    assert_eq!(stdout.matches("epoch 1/1").count(), 1, "{stdout}");
    // No container or network of the run is left.
    let left = ok(Command::new("docker").args([
        "network",
        "ls",
        "-q",
        "--filter",
        "name=envbuild-ranks-",
    ]));
    assert!(left.trim().is_empty(), "networks left: {left}");

    let mut with_data = vec!["--data", DATA];
    with_data.extend(args);
    let processes = t.path().join("processes");
    trainer_ranks(2, &with_data, &processes);
    assert_same_training(&containers, &processes);

    let single = t.path().join("single");
    let o = run(Command::new(&bins().trainer)
        .args(&with_data)
        .arg("--output")
        .arg(&single));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let diff = max_weight_difference(&containers, &single);
    assert!(
        diff < 1e-3,
        "2 ranks vs 1 process: weights differ by {diff}"
    );
    let acc = |d: &std::path::Path| -> f64 {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(d.join("summary.json")).unwrap())
            .unwrap()["test_accuracy"]
            .as_f64()
            .unwrap()
    };
    // 500 test images: two may fall either side of a decision boundary.
    assert!((acc(&containers) - acc(&single)).abs() <= 0.004);

    // Refused before anything starts: a GPU count that is not one per rank.
    let o = run(&mut run_local(
        env.to_str().unwrap(),
        &t.path().join("x"),
        &["--ranks", "2", "--gpus", "3"],
        &args,
    ));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("--ranks 2 --gpus 3: each rank takes one GPU"),
        "{e}"
    );
}

/// Rank 1's container killed mid-run: the run ends (rank 0 sees the connection close and stops,
/// envbuild stops whatever is left and exits non-zero), rank 0's checkpoint stays; the same two
/// ranks with `--resume` finish the run. Nothing of the run is left on the engine.
#[test]
fn a_rank_killed_mid_run_ends_the_run_and_resume_finishes_it() {
    let _engine = engine_lock();
    let t = tempfile::tempdir().unwrap();
    let outputs = t.path().join("outputs");
    let env = cpu_env();
    let args = [
        "--epochs",
        "3",
        "--limit-train",
        "8000",
        "--limit-test",
        "500",
        "--threads",
        "1",
        "--device",
        "cpu",
    ];
    let start = |extra: &[&str]| {
        let mut targs = args.to_vec();
        targs.extend(extra);
        let mut c = run_local(
            env.to_str().unwrap(),
            &outputs,
            &["--ranks", "2", "--gpus", "none", "--data", DATA],
            &targs,
        );
        c.env("ENVBUILD_BASE", base_layout());
        c
    };
    let mut child = start(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !outputs.join("checkpoint.safetensors").exists() {
        assert!(Instant::now() < deadline, "no checkpoint after 300 s");
        assert!(child.try_wait().unwrap().is_none(), "envbuild ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Rank 1 is the run's container whose host name is rank1.
    let ids =
        ok(Command::new("docker").args(["ps", "-q", "--filter", "label=org.envbuild.run=local"]));
    let rank1 = ids
        .split_whitespace()
        .find(|id| {
            ok(Command::new("docker").args(["inspect", "-f", "{{.Config.Hostname}}", id])).trim()
                == "rank1"
        })
        .unwrap_or_else(|| panic!("no rank1 container among {ids}"))
        .to_owned();
    ok(Command::new("docker").args(["kill", &rank1]));
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("the trainer exited with code"),
        "{stderr}"
    );
    assert!(!outputs.join("model.safetensors").exists(), "{stderr}");
    let left =
        ok(Command::new("docker").args(["ps", "-aq", "--filter", "label=org.envbuild.run=local"]));
    assert!(left.trim().is_empty(), "containers left: {left}");

    let out = ok(&mut start(&["--resume"]));
    assert!(out.contains("test accuracy"), "{out}");
    let epochs = fs::read_to_string(outputs.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(epochs, 3);
    assert!(outputs.join("model.safetensors").exists());
}
