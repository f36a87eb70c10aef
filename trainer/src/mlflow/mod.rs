//! MLflow tracking for the trainer, as Azure ML jobs have it (`MLFLOW_TRACKING_URI` set): the
//! run's parameters once and each epoch's metrics through the REST API, from a thread of its
//! own, so that a slow or dead tracking server never holds training up. Never fatal: an outage
//! is one warning and a summary of what was not sent; `metrics.jsonl` stays the record.

pub mod batch;
pub mod client;
pub mod uri;
mod worker;

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use batch::Param;
use client::{Client, Cutoff};
use uri::{Auth, Endpoint, UriError};
use worker::{Msg, Worker};

use crate::output::EpochMetrics;

/// Where and as what to log, from the variables MLflow clients (and Azure ML jobs) set.
#[derive(Debug, Clone)]
pub struct Settings {
    endpoint: Endpoint,
    auth: Auth,
    /// `MLFLOW_TRACKING_URI` without user info or query, for messages.
    pub shown: String,
    /// `MLFLOW_RUN_ID`: log into this run (Azure ML creates it) rather than a new one.
    pub run_id: Option<String>,
    pub experiment: Experiment,
}

/// The experiment a new run goes into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Experiment {
    /// `MLFLOW_EXPERIMENT_ID`, or "0" (MLflow's "Default") when neither variable is set.
    Id(String),
    /// `MLFLOW_EXPERIMENT_NAME`: looked up, created when missing.
    Name(String),
}

impl Settings {
    /// `None` when `MLFLOW_TRACKING_URI` is unset or empty.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Settings>, UriError> {
        let set = |k: &str| {
            var(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let Some(uri) = set("MLFLOW_TRACKING_URI") else {
            return Ok(None);
        };
        let endpoint = uri::endpoint(&uri)?;
        let experiment = match (set("MLFLOW_EXPERIMENT_ID"), set("MLFLOW_EXPERIMENT_NAME")) {
            (Some(id), _) => Experiment::Id(id),
            (None, Some(name)) => Experiment::Name(name),
            (None, None) => Experiment::Id("0".into()),
        };
        Ok(Some(Settings {
            auth: Auth::from_env(&var, &endpoint),
            endpoint,
            shown: uri::shown(&uri),
            run_id: set("MLFLOW_RUN_ID"),
            experiment,
        }))
    }
}

/// The handle the training loop holds; the sending happens on the tracker's thread.
#[derive(Debug)]
pub struct Tracker {
    tx: mpsc::Sender<Msg>,
    notes: mpsc::Receiver<String>,
    done: mpsc::Receiver<()>,
    cutoff: Cutoff,
    shown: String,
}

impl Tracker {
    /// Starts the tracker's thread, which finds or creates the run and logs `params` at once.
    pub fn start(settings: Settings, params: Vec<Param>) -> Tracker {
        Tracker::spawn(settings, params, worker::BUDGET)
    }

    /// [`Tracker::start`] with another retry budget per flush (shorter in tests).
    fn spawn(settings: Settings, params: Vec<Param>, budget: Duration) -> Tracker {
        let (tx, rx) = mpsc::channel();
        let (note_tx, notes) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let shown = settings.shown.clone();
        let cutoff = Cutoff::default();
        let client = Client::new(
            settings.endpoint.clone(),
            settings.auth.clone(),
            cutoff.clone(),
        );
        let worker = Worker::new(client, settings, params, note_tx, budget);
        std::thread::Builder::new()
            .name("mlflow".into())
            .spawn(move || {
                worker.run(rx);
                let _ = done_tx.send(());
            })
            .expect("spawning the MLflow thread");
        Tracker {
            tx,
            notes,
            done,
            cutoff,
            shown,
        }
    }

    /// Queues an epoch's metrics (step = the epoch); returns at once.
    pub fn log_epoch(&self, m: &EpochMetrics) {
        let _ = self.tx.send(Msg::Epoch(batch::epoch_metrics(m, now_ms())));
    }

    /// What the tracker has to say since the last call (warnings, the run it logs to).
    pub fn notes(&self) -> Vec<String> {
        self.notes.try_iter().collect()
    }

    /// Sends what is left and ends a run the tracker created (FINISHED, or FAILED when training
    /// failed), waiting at most `wait`; returns the last notes, with a summary of anything that
    /// was not sent.
    pub fn finish(self, succeeded: bool, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        // A call still retrying from an earlier epoch stops at the deadline too.
        self.cutoff.set(deadline);
        let _ = self.tx.send(Msg::Finish {
            succeeded,
            deadline,
        });
        let finished = self
            .done
            .recv_timeout(wait + Duration::from_secs(1))
            .is_ok();
        let mut notes: Vec<String> = self.notes.try_iter().collect();
        if !finished {
            notes.push(format!(
                "warning: MLflow: stopped waiting for {} after {}s; what it did not take is in metrics.jsonl",
                self.shown,
                wait.as_secs()
            ));
        }
        notes
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: u32) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: 1.0,
            test_loss: 1.0,
            test_accuracy: 0.5,
            seconds: 1.0,
            train_seconds: 1.0,
            images_per_second: 10.0,
            device: "cpu".into(),
        }
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn settings_follow_mlflows_variables() {
        assert!(Settings::from_env(env(&[])).unwrap().is_none());
        assert!(Settings::from_env(env(&[("MLFLOW_TRACKING_URI", " ")]))
            .unwrap()
            .is_none());
        let s = Settings::from_env(env(&[("MLFLOW_TRACKING_URI", "http://h:5000")]))
            .unwrap()
            .unwrap();
        assert_eq!((s.experiment, s.run_id), (Experiment::Id("0".into()), None));
        let s = Settings::from_env(env(&[
            ("MLFLOW_TRACKING_URI", "http://h:5000"),
            ("MLFLOW_EXPERIMENT_NAME", "mnist"),
            ("MLFLOW_RUN_ID", "abc"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.experiment, Experiment::Name("mnist".into()));
        assert_eq!(s.run_id.as_deref(), Some("abc"));
        // An id wins over a name and saves a lookup (in Azure ML both name the same experiment;
        // MLflow's own _get_experiment_id_from_env looks the name up and refuses a different id).
        let s = Settings::from_env(env(&[
            ("MLFLOW_TRACKING_URI", "http://h:5000"),
            ("MLFLOW_EXPERIMENT_NAME", "mnist"),
            ("MLFLOW_EXPERIMENT_ID", "7"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.experiment, Experiment::Id("7".into()));
        let e = Settings::from_env(env(&[("MLFLOW_TRACKING_URI", "./mlruns")])).unwrap_err();
        assert!(e.to_string().contains("not a URL"), "{e}");
    }

    #[test]
    fn settings_never_print_the_token() {
        let s = Settings::from_env(env(&[
            (
                "MLFLOW_TRACKING_URI",
                "https://u:pw-in-url@h/x?sig=qs-secret",
            ),
            ("MLFLOW_TRACKING_TOKEN", "tok-secret"),
        ]))
        .unwrap()
        .unwrap();
        let dbg = format!("{s:?}");
        for secret in ["pw-in-url", "qs-secret", "tok-secret"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert_eq!(s.shown, "https://h/x");
    }

    /// Settings aimed at a loopback port nobody listens on (free a moment ago), and the port.
    fn nobody_listening() -> (u16, Settings) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let uri = format!("http://127.0.0.1:{port}");
        let s = Settings::from_env(move |k| (k == "MLFLOW_TRACKING_URI").then(|| uri.clone()))
            .unwrap()
            .unwrap();
        (port, s)
    }

    #[test]
    fn a_dead_server_costs_training_nothing_and_the_summary_says_what_was_lost() {
        let (_, s) = nobody_listening();
        let t = Tracker::start(s, vec![Param::new("lr", 0.001)]);
        let start = Instant::now();
        for e in 1..=3 {
            t.log_epoch(&epoch(e));
        }
        // A guard that log_epoch hands off rather than sending (one send is bounded at 5 s), not a
        // speed claim: wide enough for a loaded CI machine.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "log_epoch must not wait"
        );
        let notes = t.finish(true, Duration::from_secs(3));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let all = notes.join("\n");
        assert_eq!(all.matches("is unreachable").count(), 1, "{all}");
        assert!(
            all.contains("12 metric values (epochs 1–3) and 1 parameters were not sent to")
                && all.contains("(connection refused); no run could be opened there;"),
            "{all}"
        );
    }

    /// A minimal HTTP server on `port` answering MLflow's calls (a run id for `runs/create`,
    /// `{}` for the rest) and recording each request's path and body.
    fn fake_mlflow(port: u16) -> std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> {
        use std::io::{Read, Write};
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let record = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && c.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                let _ = c.read_exact(&mut body);
                let path = head
                    .split(' ')
                    .nth(1)
                    .unwrap_or_default()
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let answer = if path.ends_with("/runs/create") {
                    r#"{"run":{"info":{"run_id":"r1"}}}"#
                } else {
                    "{}"
                };
                record
                    .lock()
                    .unwrap()
                    .push((path, String::from_utf8_lossy(&body).to_string()));
                let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}", answer.len());
            }
        });
        seen
    }

    #[test]
    fn a_server_that_comes_back_gets_the_held_epochs() {
        let (port, s) = nobody_listening();
        let t = Tracker::spawn(s, vec![Param::new("lr", 0.001)], Duration::from_millis(300));
        t.log_epoch(&epoch(1));
        let mut notes = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !notes.iter().any(|n: &String| n.contains("is unreachable")) {
            assert!(Instant::now() < deadline, "no outage seen: {notes:?}");
            std::thread::sleep(Duration::from_millis(50));
            notes.extend(t.notes());
        }
        let seen = fake_mlflow(port);
        t.log_epoch(&epoch(2));
        notes.extend(t.finish(true, Duration::from_secs(5)));
        let all = notes.join("\n");
        assert!(
            all.contains("answers again") && !all.contains("not sent"),
            "{all}"
        );
        let seen = seen.lock().unwrap().clone();
        let paths: Vec<&str> = seen
            .iter()
            .map(|(p, _)| p.trim_start_matches("/api/2.0/mlflow/"))
            .collect();
        assert_eq!(paths[..2], ["runs/create", "runs/log-batch"], "{seen:?}");
        assert_eq!(paths.last(), Some(&"runs/update"), "{seen:?}");
        assert!(seen.last().unwrap().1.contains("FINISHED"), "{seen:?}");
        // Epoch 1, held while the server was away, and epoch 2: each value once, in order.
        let steps: Vec<i64> = seen[2..seen.len() - 1]
            .iter()
            .flat_map(|(_, body)| {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                v["metrics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["step"].as_i64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(steps, [1, 1, 1, 1, 2, 2, 2, 2]);
    }
}
