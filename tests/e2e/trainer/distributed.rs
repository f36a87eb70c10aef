//! Data-parallel training through libtorch's c10d (TCPStore + Gloo), ranks as processes on
//! loopback with the variables torch.distributed and Azure ML set: equivalence with one process,
//! a rank killed mid-epoch, resume, and the launch errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::*;

/// A port nobody listens on now (the kernel's pick, released at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `args` for rank `rank` of `world`, its rendezvous at 127.0.0.1:`port`.
fn rank_cmd(args: &[&str], rank: usize, world: usize, port: u16) -> Command {
    let mut c = trainer(args);
    c.env("WORLD_SIZE", world.to_string())
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("NODE_RANK", "0")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string());
    c
}

/// Starts `world` ranks; rank r writes to `outs[r]`.
fn spawn_ranks(base: &[&str], outs: &[PathBuf], port: u16) -> Vec<Child> {
    (0..outs.len())
        .map(|r| {
            let mut args = base.to_vec();
            args.extend(["--output", s(&outs[r])]);
            rank_cmd(&args, r, outs.len(), port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

fn finish(c: Child) -> (bool, String) {
    let o = c.wait_with_output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The f32 tensors of a safetensors file by name.
fn tensors(file: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut v: Vec<(String, Vec<f32>)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, t)| *k != "__metadata__" && t["dtype"] == "F32")
        .map(|(k, t)| {
            let o = &t["data_offsets"];
            let (a, b) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            let f = data[a..b]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (k.clone(), f)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn base<'a>(data: &'a Path, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "--data",
        s(data),
        "--epochs",
        epochs,
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--threads",
        "1",
        "--batch-size",
        "32",
        "--dist-timeout",
        "60",
    ]
}

/// Two ranks at global batch 32 (16 images each) train what one process trains at batch 32:
/// the same permutation and dropout masks, the gradient of the same mean loss. Not bit for bit:
/// each rank's convolution backward sums over its 16 images and Gloo then adds the two halves,
/// where one process sums 32 images in one reduction, so the f32 roundings differ (~1e-7
/// relative per step). Adam divides each gradient by its running RMS, so where a gradient is
/// near zero that rounding can tip a weight's step either way: the bound is one Adam step (lr =
/// 0.001) over the whole run (38 steps), where a sharding error (other images or other dropout
/// masks per rank) moves weights by about a step every step. Adam is blind to a gradient's
/// scale, so the first moments in the checkpoint are compared too: a rank averaging its own
/// images' loss instead of taking its share of the global mean would double them.
#[test]
fn two_ranks_train_the_weights_one_process_trains() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    fs::create_dir(&data).unwrap();
    synthetic(&data, 600, 200, 12);
    let args = base(&data, "2");
    let single = t.path().join("single");
    let mut one = args.clone();
    one.extend(["--output", s(&single)]);
    let o = run(&one);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let outs = [t.path().join("rank0"), t.path().join("rank1")];
    let ranks = spawn_ranks(&args, &outs, free_port());
    for (r, c) in ranks.into_iter().enumerate() {
        let (ok, text) = finish(c);
        assert!(ok, "rank {r}: {text}");
        assert!(text.contains(&format!("rank {r} of 2")), "rank {r}: {text}");
    }
    // Only rank 0 writes.
    assert_eq!(
        listing(&outs[0]),
        [
            "checkpoint.safetensors",
            "metrics.jsonl",
            "model.safetensors",
            "summary.json"
        ]
    );
    assert!(!outs[1].exists(), "rank 1 wrote {:?}", listing(&outs[1]));

    let max_diff = |file: &str, name_prefix: &str| -> (f32, f32) {
        let (a, b) = (tensors(&single.join(file)), tensors(&outs[0].join(file)));
        assert_eq!(a.len(), b.len());
        let (mut worst, mut scale) = (0f32, 0f32);
        for ((na, wa), (nb, wb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            if !na.starts_with(name_prefix) {
                continue;
            }
            for (x, y) in wa.iter().zip(wb) {
                worst = worst.max((x - y).abs());
                scale = scale.max(x.abs());
            }
        }
        (worst, scale)
    };
    let (worst, _) = max_diff("model.safetensors", "");
    assert!(worst < 1e-3, "weights differ by up to {worst}");
    let (worst, scale) = max_diff("checkpoint.safetensors", "exp_avg");
    assert!(
        scale > 0.0 && worst < 0.01 * scale,
        "Adam's moments differ by up to {worst} of {scale}"
    );
    let (ma, mb) = (metrics(&single), metrics(&outs[0]));
    assert_eq!(ma.len(), 2);
    for (x, y) in ma.iter().zip(&mb) {
        let (ax, ay) = (
            x["test_accuracy"].as_f64().unwrap(),
            y["test_accuracy"].as_f64().unwrap(),
        );
        assert!((ax - ay).abs() <= 0.01, "{ma:?}\n{mb:?}");
        let (lx, ly) = (
            x["train_loss"].as_f64().unwrap(),
            y["train_loss"].as_f64().unwrap(),
        );
        assert!((lx - ly).abs() < 1e-3 * lx, "train_loss {lx} vs {ly}");
    }
}

/// SIGKILL one of three ranks mid-epoch: the other two see their connections close and stop at
/// once (not after --dist-timeout), each naming the rank whose heartbeat stopped; all three run
/// again with --resume from rank 0's checkpoint and finish the run.
#[test]
fn a_killed_rank_is_named_by_the_others_and_all_resume() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    fs::create_dir(&data).unwrap();
    synthetic(&data, 6000, 300, 16);
    let args = base(&data, "3");
    let outs = [
        t.path().join("out"),
        t.path().join("out1"),
        t.path().join("out2"),
    ];
    let mut ranks = spawn_ranks(&args, &outs, free_port());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !outs[0].join("checkpoint.safetensors").exists() {
        assert!(Instant::now() < deadline, "no checkpoint after epoch 1");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut rank1 = ranks.remove(1);
    run_on_for_a_tenth_more_cpu(&mut rank1);
    rank1.kill().unwrap(); // SIGKILL
    rank1.wait().unwrap();
    let killed = Instant::now();
    for (r, c) in [0, 2].into_iter().zip(ranks) {
        let (ok, text) = finish(c);
        assert!(!ok, "rank {r} went on without rank 1: {text}");
        assert!(
            text.contains(&format!("rank {r}:"))
                && text.contains("rank 1 stopped or cannot be reached"),
            "{text}"
        );
    }
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the others took {took:?} to stop"
    );
    assert!(!outs[0].join("summary.json").exists());
    let before = metrics(&outs[0]).len();
    assert!((1..3).contains(&before), "{before} epochs before the kill");

    let mut resumed = args.clone();
    resumed.push("--resume");
    let ranks = spawn_ranks(&resumed, &outs, free_port());
    let texts: Vec<(bool, String)> = ranks.into_iter().map(finish).collect();
    for (r, (ok, text)) in texts.iter().enumerate() {
        assert!(ok, "rank {r}: {text}");
    }
    assert!(
        !texts[0].1.contains("epoch 1/3"),
        "resume repeated epoch 1: {}",
        texts[0].1
    );
    assert_eq!(metrics(&outs[0]).len(), 3);
    assert!(outs[0].join("model.safetensors").exists());
}

#[test]
fn launch_errors_are_one_clear_message_each() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    fs::create_dir(&data).unwrap();
    synthetic(&data, 64, 32, 8);
    let out = t.path().join("out");
    let mut args = base(&data, "1");
    args.extend(["--output", s(&out)]);
    let err = |c: &mut Command| {
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(1));
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!e.contains("panicked") && !e.contains("frame #"), "{e}");
        e
    };

    // Rank 1 with nobody at MASTER_ADDR:MASTER_PORT: the timeout, not a hang.
    let started = Instant::now();
    let e =
        err(rank_cmd(&with(&args, "--dist-timeout", "2"), 1, 2, free_port()).stdout(Stdio::null()));
    assert!(
        e.contains("rank 1: could not reach the rendezvous") && e.contains("within 2 s"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // Different WORLD_SIZEs: both sides say so.
    let port = free_port();
    let r1 = rank_cmd(&args, 1, 3, port)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let e0 = err(rank_cmd(&args, 0, 2, port).stdout(Stdio::null()));
    let (_, e1) = finish(r1);
    assert!(
        e0.contains("rank 0: WORLD_SIZE is 2 here but 3 at rank 1"),
        "{e0}"
    );
    assert!(
        e1.contains("rank 1: WORLD_SIZE is 3 here but 2 at rank 0"),
        "{e1}"
    );

    // Bad variables and NCCL on the CPU, before any connection.
    let e = err(rank_cmd(&args, 2, 2, free_port()).stdout(Stdio::null()));
    assert!(e.contains("RANK: 2 is not below WORLD_SIZE 2"), "{e}");
    let e = err(rank_cmd(&args, 0, 2, free_port())
        .env_remove("MASTER_ADDR")
        .stdout(Stdio::null()));
    assert!(e.contains("MASTER_ADDR: not set"), "{e}");
    let e =
        err(rank_cmd(&with(&args, "--backend", "nccl"), 0, 2, free_port()).stdout(Stdio::null()));
    assert!(
        e.contains("--backend nccl: NCCL runs on CUDA devices"),
        "{e}"
    );
}
