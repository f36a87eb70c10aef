//! The release trainer logging to a real MLflow tracking server (`mlflow server` from the
//! project venv): parameters and each epoch's metrics arrive at the right steps with the values
//! of metrics.jsonl; rank 0 alone logs; a run named by MLFLOW_RUN_ID is used and left open;
//! faults on the way are retried; a server killed mid-run or never there costs a warning, never
//! the training. The tests that leave the server running share one (`MlflowServer::shared`),
//! each in an experiment of its own; the two that kill and restart it start their own.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use envbuild_e2e::{bins, FaultProxy, MlflowServer};
use serde_json::Value;

use super::run::DATA;

const KEYS: [&str; 4] = [
    "train_loss",
    "test_loss",
    "test_accuracy",
    "images_per_second",
];

/// The trainer on the CPU with a few thousand images, `--output out`, the MLflow variables of
/// `env` and none from this process.
fn trainer(out: &Path, epochs: u32, train_images: u32, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(&bins().trainer);
    c.args(["--data", DATA, "--device", "cpu", "--precision", "fp32"])
        .args(["--threads", "1", "--seed", "7", "--batch-size", "64"])
        .args(["--epochs", &epochs.to_string()])
        .args([
            "--limit-train",
            &train_images.to_string(),
            "--limit-test",
            "500",
        ])
        .arg("--output")
        .arg(out);
    for k in [
        "MLFLOW_TRACKING_URI",
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "WORLD_SIZE",
    ] {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn succeeded(c: &mut Command) -> String {
    let o = c.output().expect("trainer runs");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    t
}

/// metrics.jsonl, one object per epoch.
fn epochs(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asserts that the server holds, for run `run_id`, exactly the epochs `steps` of metrics.jsonl:
/// every key at step = epoch, once, with the value the trainer wrote (the same f64: both sides
/// print the shortest representation that reads back exactly).
fn assert_metrics(server: &MlflowServer, run_id: &str, out: &Path, steps: &[i64]) {
    let written = epochs(out);
    for key in KEYS {
        let history = server.metric_history(run_id, key);
        assert_eq!(
            history.iter().map(|p| p.step).collect::<Vec<_>>(),
            steps,
            "{key}: {history:?}"
        );
        for p in &history {
            let line = &written[(p.step - 1) as usize];
            assert_eq!(line["epoch"], p.step, "{line}");
            assert_eq!(
                p.value,
                line[key].as_f64().unwrap(),
                "{key} at step {}",
                p.step
            );
        }
    }
}

fn only_run(server: &MlflowServer, experiment: &str) -> Value {
    let runs = server.runs(experiment);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    runs[0].clone()
}

fn run_id(run: &Value) -> String {
    run["info"]["run_id"].as_str().unwrap().to_owned()
}

#[test]
fn params_and_each_epochs_metrics_arrive_at_their_steps_with_the_values_of_metrics_jsonl() {
    let server = MlflowServer::shared();
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let token = "tok-e2e-never-printed";
    let said = succeeded(&mut trainer(
        &out,
        2,
        2000,
        &[
            ("MLFLOW_TRACKING_URI", &server.url()),
            ("MLFLOW_EXPERIMENT_NAME", "mnist-e2e"),
            ("MLFLOW_TRACKING_TOKEN", token),
        ],
    ));
    assert!(
        said.contains("trainer: MLflow: logging to new run "),
        "{said}"
    );
    assert!(!said.contains("warning"), "{said}");
    assert!(!said.contains(token), "{said}");
    // The experiment was created by name; one run in it, ended FINISHED.
    let experiment = server
        .experiment_id("mnist-e2e")
        .expect("experiment created");
    let run = only_run(server, &experiment);
    assert_eq!(run["info"]["status"], "FINISHED", "{run:#}");
    let id = run_id(&run);
    assert_metrics(server, &id, &out, &[1, 2]);
    let params = server.params(&id);
    for (k, v) in [
        ("epochs", "2"),
        ("batch_size", "64"),
        ("lr", "0.001"),
        ("seed", "7"),
        ("threads", "1"),
        ("world_size", "1"),
        ("device", "cpu"),
        ("precision", "fp32"),
        ("train_images", "2000"),
        ("test_images", "500"),
        ("resume", "false"),
    ] {
        assert_eq!(
            params.get(k).map(String::as_str),
            Some(v),
            "{k}: {params:?}"
        );
    }
    assert_eq!(server.tags(&id)["mlflow.source.name"], "trainer");
}

#[test]
fn of_two_data_parallel_ranks_only_rank_0_logs() {
    let server = MlflowServer::shared();
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
        .to_string();
    let url = server.url();
    let children: Vec<_> = (0..2)
        .map(|r| {
            let rank = r.to_string();
            trainer(
                &out,
                2,
                1000,
                &[
                    ("MLFLOW_TRACKING_URI", &url),
                    ("MLFLOW_EXPERIMENT_NAME", "ranks"),
                    ("WORLD_SIZE", "2"),
                    ("RANK", &rank),
                    ("LOCAL_RANK", &rank),
                    ("MASTER_ADDR", "127.0.0.1"),
                    ("MASTER_PORT", &port),
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let said: Vec<String> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", text(&o));
            text(&o)
        })
        .collect();
    assert!(
        said[0].contains("MLflow: logging to new run"),
        "{}",
        said[0]
    );
    assert!(!said[1].contains("MLflow"), "{}", said[1]);
    let experiment = server.experiment_id("ranks").expect("experiment created");
    let run = only_run(server, &experiment);
    assert_metrics(server, &run_id(&run), &out, &[1, 2]);
    assert_eq!(server.params(&run_id(&run))["world_size"], "2");
}

#[test]
fn with_mlflow_run_id_the_metrics_land_in_that_run_which_stays_open() {
    let server = MlflowServer::shared();
    // As Azure ML does before the job's process starts.
    let experiment = server.create_experiment("azureml-job");
    let id = server.create_run(&experiment);
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let said = succeeded(&mut trainer(
        &out,
        2,
        1000,
        &[
            ("MLFLOW_TRACKING_URI", &server.url()),
            ("MLFLOW_RUN_ID", &id),
            ("MLFLOW_EXPERIMENT_ID", &experiment),
        ],
    ));
    assert!(
        said.contains(&format!("MLflow: logging to run {id} (MLFLOW_RUN_ID)")),
        "{said}"
    );
    let run = only_run(server, &experiment);
    assert_eq!(run_id(&run), id);
    assert_metrics(server, &id, &out, &[1, 2]);
    assert_eq!(server.params(&id)["epochs"], "2");
    // The trainer did not create it, so it does not end it (the service does).
    assert_eq!(server.run(&id)["info"]["status"], "RUNNING");
}

#[test]
fn faults_between_trainer_and_server_are_retried_and_lose_nothing() {
    let server = MlflowServer::shared();
    // Every second request: 503, 429 (Retry-After 1), a reset mid-body, an answer lost after
    // the server acted, 502, a 1.5 s stall.
    let proxy = FaultProxy::start(&server.url()["http://".len()..], false);
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let said = succeeded(&mut trainer(
        &out,
        3,
        1000,
        &[("MLFLOW_TRACKING_URI", &format!("http://{}", proxy.addr))],
    ));
    assert!(!said.contains("warning"), "{said}");
    let faults = proxy.faults.load(std::sync::atomic::Ordering::SeqCst);
    assert!(faults >= 3, "only {faults} faults");
    // The default experiment "0"; a batch re-sent after a lost answer is not counted twice.
    let run = only_run(server, "0");
    assert_eq!(run["info"]["status"], "FINISHED", "{run:#}");
    assert_metrics(server, &run_id(&run), &out, &[1, 2, 3]);
}

#[test]
fn a_server_killed_mid_run_costs_one_warning_and_nothing_of_the_training() {
    let mut server = MlflowServer::start();
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let child = trainer(
        &out,
        3,
        3000,
        &[
            ("MLFLOW_TRACKING_URI", &server.url()),
            ("MLFLOW_EXPERIMENT_NAME", "killed"),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Kill the server as soon as epoch 1 has reached it.
    let deadline = Instant::now() + Duration::from_secs(300);
    let id = loop {
        assert!(
            Instant::now() < deadline,
            "epoch 1 never reached the server"
        );
        if let Some(e) = server.experiment_id("killed") {
            if let Some(run) = server.runs(&e).first() {
                let id = run_id(run);
                if !server.metric_history(&id, "test_accuracy").is_empty() {
                    break id;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    server.kill();
    let o = child.wait_with_output().unwrap();
    let said = text(&o);
    assert!(o.status.success(), "{said}");
    assert_eq!(epochs(&out).len(), 3, "{said}");
    assert_eq!(said.matches("is unreachable").count(), 1, "{said}");
    // What reached the server before the kill is there, and the summary counts the rest.
    server.restart();
    let on_server = server.metric_history(&id, "test_accuracy");
    let steps: Vec<i64> = on_server.iter().map(|p| p.step).collect();
    assert!(steps.starts_with(&[1]) && steps.len() < 3, "{steps:?}");
    assert_metrics(&server, &id, &out, &steps);
    let unsent = 4 * (3 - steps.len());
    assert!(
        said.contains(&format!("{unsent} metric values (epoch")),
        "{unsent} unsent: {said}"
    );
    assert!(said.contains("left RUNNING"), "{said}");
    assert_eq!(server.run(&id)["info"]["status"], "RUNNING");
}

#[test]
fn a_server_that_never_existed_or_a_uri_it_cannot_speak_is_a_warning_and_never_stalls_the_run() {
    let t = tempfile::tempdir().unwrap();
    let baseline = Instant::now();
    succeeded(&mut trainer(&t.path().join("plain"), 2, 1000, &[]));
    let baseline = baseline.elapsed();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let out = t.path().join("dead");
    let said = succeeded(&mut trainer(
        &out,
        2,
        1000,
        &[("MLFLOW_TRACKING_URI", &nowhere)],
    ));
    let took = start.elapsed();
    assert_eq!(epochs(&out).len(), 2);
    assert_eq!(said.matches("is unreachable").count(), 1, "{said}");
    assert!(
        said.contains(
            "8 metric values (epochs 1–2) and 11 parameters were not sent to http://127.0.0.1:"
        ) && said.contains("no run could be opened there"),
        "{said}"
    );
    // The tracker's thread retries while training goes on and the end waits at most 10 s: a
    // guard against a trainer that hangs on a dead server, not a speed claim (a loaded machine
    // stretches both runs; speed is for the benchmarks).
    assert!(
        took < baseline + Duration::from_secs(25),
        "{took:?} against {baseline:?} without MLflow"
    );

    let said = succeeded(&mut trainer(
        &t.path().join("file"),
        1,
        1000,
        &[("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")],
    ));
    assert!(
        said.contains("trainer: warning: MLFLOW_TRACKING_URI file:///tmp/mlruns: scheme `file` is not supported"),
        "{said}"
    );
}

#[test]
fn the_test_server_comes_back_on_its_port_with_its_store_and_leaves_no_process() {
    let mut server = MlflowServer::start();
    let (url, experiment) = (server.url(), server.create_experiment("kept"));
    let run = server.create_run(&experiment);
    server.kill();
    assert!(!server.is_running());
    assert!(
        std::net::TcpStream::connect(&url["http://".len()..]).is_err(),
        "still answering after kill"
    );
    server.restart();
    assert_eq!(server.url(), url);
    assert_eq!(
        server.experiment_id("kept").as_deref(),
        Some(experiment.as_str())
    );
    assert_eq!(server.run(&run)["info"]["status"], "RUNNING");
    assert!(server.metric_history(&run, "nothing").is_empty());
    server.stop();
    assert!(!server.is_running());
    let log = server.log();
    assert_eq!(log.matches("Uvicorn running").count(), 2, "{log}");
}
