//! `envbuild sweep` end to end against the stand-in: a grid of four trials run on the Docker
//! engine two at a time, each reporting to a real MLflow tracking server; the best trial
//! envbuild reports is the one with the best metric in MLflow; the emitted YAML (read by PyYAML)
//! is the body that was sent; a Bandit policy cancels a clearly bad trial; bad input is refused
//! before any request.

use std::path::Path;
use std::process::Command;

use envbuild_e2e::azure::AzureStandIn;
use envbuild_e2e::entra::Entra;
use envbuild_e2e::mlflow::MlflowServer;
use envbuild_e2e::registry::Registry;
use envbuild_e2e::{last_line, root, run};
use serde_json::{json, Value};

use super::azure::{az_cmd, go, ws_id, Cred};

/// The YAML file as JSON, read by PyYAML from the project venv.
fn yaml_as_json(path: &Path) -> Value {
    let o = run(Command::new(root().join(".venv/bin/python")).args([
        "-c",
        "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        path.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The largest number of trials the stand-in had running at once, from its record.
fn most_at_once(record: &[String]) -> usize {
    record
        .iter()
        .filter_map(|l| l.split_once(" active=")?.1.parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_sweep_runs_two_trials_at_once_names_the_best_from_mlflow_and_bandit_cancels_a_bad_one() {
    // The process's shared server (its experiment is the environment's name, mnist-cpu).
    let mlflow = MlflowServer::shared();
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    arm.datastore("workspaceblobstore", Path::new("/usr/share/datasets"));
    arm.use_mlflow(&mlflow.url());
    let registry = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let cache = cache.to_str().unwrap();
    let env_file = root().join("environments/mnist-cpu.toml");
    let env_file = env_file.to_str().unwrap();
    let secret = entra.client_secret.clone();
    let cmd = |args: &[&str]| {
        go(
            &entra,
            &arm,
            az_cmd(&entra, &arm, Cred::Secret(&secret), args),
        )
    };
    let dest = format!("{}/envbuild/mnist-cpu:latest", registry.addr);
    let (code, out, err) = cmd(&["deploy", env_file, "--dest", &dest, "--cache", cache]);
    assert_eq!(code, 0, "{err}");
    let env_id = last_line(&out);

    let sweep_on = |compute: &str, name: &str, extra: &[&str], trainer: &[&str]| {
        let mut a = vec![
            "sweep",
            env_file,
            "--compute",
            compute,
            "--cache",
            cache,
            "--input",
            "data=azureml://datastores/workspaceblobstore/paths/fashion-mnist",
            "--objective",
            "test_accuracy:maximize",
            "--job-name",
            name,
        ];
        a.extend_from_slice(extra);
        a.push("--");
        a.extend_from_slice(trainer);
        cmd(&a)
    };
    let sweep = |name: &str, extra: &[&str], trainer: &[&str]| {
        sweep_on("cpu-cluster", name, extra, trainer)
    };
    let trainer = [
        "--epochs",
        "2",
        "--limit-train",
        "2000",
        "--limit-test",
        "500",
        "--threads",
        "1",
        "--device",
        "cpu",
    ];
    let grid = [
        "--param",
        "lr=choice(0.0003,0.003)",
        "--param",
        "batch-size=choice(32,128)",
        "--sampling",
        "grid",
        "--max-concurrent",
        "2",
    ];

    let jobs_put = || {
        arm.requests()
            .iter()
            .filter(|(m, p, _)| m == "PUT" && p.contains("/jobs/"))
            .count()
    };
    // --emit-yaml writes the sweep and submits nothing.
    let yaml = t.path().join("sweep.yml");
    let mut extra = grid.to_vec();
    extra.extend(["--emit-yaml", yaml.to_str().unwrap()]);
    let (code, _, err) = sweep("mnist-sweep", &extra, &trainer);
    assert_eq!(code, 0, "{err}");
    assert_eq!(jobs_put(), 0, "--emit-yaml submits nothing");
    let y = yaml_as_json(&yaml);

    // The sweep: four trials, two at once, each in MLflow.
    let mut extra = grid.to_vec();
    extra.push("--json");
    let (code, out, err) = sweep("mnist-sweep", &extra, &trainer);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["status"], "Completed", "{out}");
    let trials = doc["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4, "{out}");
    let record = arm.sweep_record("mnist-sweep");
    assert_eq!(
        record.iter().filter(|l| l.starts_with("start ")).count(),
        4,
        "{record:?}"
    );
    assert_eq!(most_at_once(&record), 2, "{record:?}");
    let mut best: Option<(String, f64)> = None;
    for tr in trials {
        assert_eq!(tr["status"], "Completed", "{out}");
        let id = tr["id"].as_str().unwrap();
        let run_id = arm.mlflow_run_id(id).unwrap_or_else(|| {
            let log = std::fs::read_to_string(arm.shared.job_dir(id).join("user_logs/std_log.txt"));
            panic!("trial {id} has no MLflow run: {log:?}\n{out}\n{err}")
        });
        let h = mlflow.metric_history(&run_id, "test_accuracy");
        assert_eq!(h.len(), 2, "{id}: one value per epoch: {h:?}");
        assert!(h[0].step < h[1].step, "{id}: {h:?}");
        let last = h.last().unwrap().value;
        assert!(
            (tr["metric"].as_f64().unwrap() - last).abs() < 1e-9,
            "{id}: {tr} vs {last}"
        );
        if best.as_ref().is_none_or(|b| last > b.1) {
            best = Some((id.to_owned(), last));
        }
        // The trial ran the values it reports.
        let job = arm.shared.job(id).unwrap();
        let lr = tr["params"]["lr"].to_string();
        assert!(
            job["properties"]["command"]
                .as_str()
                .unwrap()
                .ends_with(&format!(
                    "--lr {lr} --batch-size {}",
                    tr["params"]["batch_size"]
                )),
            "{job}"
        );
    }
    let (best_id, best_value) = best.unwrap();
    assert_eq!(doc["best"]["trial"], best_id.as_str(), "{out}");
    assert!((doc["best"]["metric"].as_f64().unwrap() - best_value).abs() < 1e-9);
    assert!(
        err.contains(&format!("best trial {best_id}: test_accuracy")),
        "{err}"
    );

    // The YAML is the body that was sent.
    let sent = arm.shared.job("mnist-sweep").unwrap();
    let p = &sent["properties"];
    assert_eq!(y["type"], "sweep");
    assert_eq!(y["trial"]["command"], p["trial"]["command"]);
    assert_eq!(
        y["trial"]["environment"].as_str().unwrap(),
        format!(
            "azureml:{}",
            env_id
                .split("/environments/")
                .nth(1)
                .unwrap()
                .replace("/versions/", ":")
        )
    );
    assert_eq!(y["compute"], "azureml:cpu-cluster");
    assert_eq!(p["computeId"], format!("{}/computes/cpu-cluster", ws_id()));
    assert_eq!(y["sampling_algorithm"], "grid");
    assert_eq!(
        p["samplingAlgorithm"],
        json!({"samplingAlgorithmType": "Grid"})
    );
    for (k, v) in y["search_space"].as_object().unwrap() {
        assert_eq!(json!(["choice", [v["values"]]]), p["searchSpace"][k], "{k}");
    }
    assert_eq!(
        y["objective"],
        json!({"goal": "maximize", "primary_metric": "test_accuracy"})
    );
    assert_eq!(
        p["objective"],
        json!({"goal": "Maximize", "primaryMetric": "test_accuracy"})
    );
    assert_eq!(
        y["limits"],
        json!({"max_total_trials": 4, "max_concurrent_trials": 2, "timeout": 7200})
    );
    assert_eq!(
        p["limits"],
        json!({"jobLimitsType": "Sweep", "maxTotalTrials": 4, "maxConcurrentTrials": 2, "timeout": "PT2H"})
    );
    assert_eq!(y["inputs"]["data"]["path"], p["inputs"]["data"]["uri"]);

    // Bandit: a learning rate of 5 wrecks Adam; at the first interval after the delay its
    // accuracy is far below the best's, and the stand-in cancels it.
    let (code, out, err) = sweep(
        "mnist-bandit",
        &[
            "--param",
            "lr=choice(0.001,5)",
            "--sampling",
            "grid",
            "--max-concurrent",
            "2",
            "--early-termination",
            "bandit:slack_factor=0.2,evaluation_interval=1,delay_evaluation=1",
            "--json",
        ],
        &[
            "--epochs",
            "6",
            "--limit-train",
            "2000",
            "--limit-test",
            "500",
            "--threads",
            "1",
            "--device",
            "cpu",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let record = arm.sweep_record("mnist-bandit");
    let bad = doc["trials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["params"]["lr"] == 5)
        .unwrap()
        .clone();
    assert_eq!(bad["status"], "Canceled", "{out}\n{record:?}");
    assert!(
        record.iter().any(|l| l.starts_with(&format!(
            "bandit {} at interval",
            bad["id"].as_str().unwrap()
        ))),
        "{record:?}"
    );
    assert_eq!(doc["best"]["params"]["lr"], json!(0.001), "{out}");
}

/// Each bad input is one clear error before any job request (no Docker, no image needed: the
/// compute is looked up before the environment).
#[test]
fn bad_sweep_input_is_one_clear_error_before_any_request() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    let secret = entra.client_secret.clone();
    let env_file = root().join("environments/mnist-cpu.toml");
    let env_file = env_file.to_str().unwrap();
    let cmd = |args: &[&str]| {
        go(
            &entra,
            &arm,
            az_cmd(&entra, &arm, Cred::Secret(&secret), args),
        )
    };
    let trainer = ["--epochs", "1"];
    let sweep_on = |compute: &str, name: &str, extra: &[&str], trainer: &[&str]| {
        let mut a = vec![
            "sweep",
            env_file,
            "--compute",
            compute,
            "--objective",
            "test_accuracy:maximize",
            "--job-name",
            name,
        ];
        a.extend_from_slice(extra);
        a.push("--");
        a.extend_from_slice(trainer);
        cmd(&a)
    };
    let jobs_put = || {
        arm.requests()
            .iter()
            .filter(|(m, p, _)| m == "PUT" && p.contains("/jobs/"))
            .count()
    };
    for (compute, extra, needle) in [
        (
            "cpu-cluster",
            vec!["--param", "lr=loguniform(1e-4,,1e-1)"],
            "--param lr=loguniform(1e-4,,1e-1): expected a value (at character 20)",
        ),
        (
            "cpu-cluster",
            vec!["--param", "lr=uniform(0.001,0.1)", "--sampling", "grid"],
            "grid sampling takes every value",
        ),
        (
            "cpu-cluster",
            vec![
                "--param",
                "lr=choice(0.1)",
                "--max-trials",
                "2",
                "--max-concurrent",
                "3",
            ],
            "--max-concurrent 3 is above --max-trials 2",
        ),
        (
            "gpu-nowhere",
            vec!["--param", "lr=choice(0.1)"],
            "no compute gpu-nowhere in workspace",
        ),
        (
            "serverless",
            vec!["--param", "lr=choice(0.1)"],
            "not a cluster name but serverless",
        ),
    ] {
        let (code, _, err) = sweep_on(compute, "mnist-bad", &extra, &trainer);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let a: Vec<&str> = vec![
        "sweep",
        env_file,
        "--compute",
        "cpu-cluster",
        "--param",
        "lr=choice(0.1)",
        "--objective",
        "accuracy:maximize",
    ];
    let (code, _, err) = cmd(&a);
    assert_eq!(code, 1);
    assert!(err.contains("the trainer never logs `accuracy`"), "{err}");
    assert_eq!(jobs_put(), 0, "nothing submitted");

    let (code, _, err) = sweep_on(
        "cpu-cluster",
        "mnist-bad",
        &["--param", "batch-size=choice(64)"],
        &["--batch-size", "32"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("--param batch-size is also among the fixed trainer arguments"),
        "{err}"
    );
    assert!(
        arm.requests()
            .iter()
            .all(|(m, p, _)| !(m == "GET" && p.contains("/environments/"))),
        "refused before the environment"
    );
}
