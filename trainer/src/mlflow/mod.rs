//! MLflow tracking for the trainer, as Azure ML jobs have it (`MLFLOW_TRACKING_URI` set): the
//! run's parameters once and each epoch's metrics through the REST API, from a thread of its
//! own, so that a slow or dead tracking server never holds training up. Never fatal: an outage
//! is one warning and a summary of what was not sent; `metrics.jsonl` stays the record.

pub mod batch;
pub mod client;
pub mod uri;

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use batch::{Metric, Param};
use client::{Client, Cutoff, Failure};
use uri::{Auth, Endpoint, UriError};

use crate::output::EpochMetrics;

/// How long a batch may be retried while the server answers.
const BUDGET: Duration = Duration::from_secs(10);
/// How long one try may take once the server was found unreachable (one warning, then one
/// quick try per epoch until it answers again).
const BUDGET_WHEN_DOWN: Duration = Duration::from_secs(2);

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

enum Msg {
    Epoch(Vec<Metric>),
    Finish { succeeded: bool, deadline: Instant },
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
        let (tx, rx) = mpsc::channel();
        let (note_tx, notes) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let shown = settings.shown.clone();
        let cutoff = Cutoff::default();
        let worker = Worker {
            client: Client::new(
                settings.endpoint.clone(),
                settings.auth.clone(),
                cutoff.clone(),
            ),
            settings,
            run: None,
            created: false,
            params,
            pending: VecDeque::new(),
            refused: Vec::new(),
            sent: 0,
            down: None,
            stopped: None,
            notes: note_tx,
        };
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

/// The tracker's thread: the run, what is still to send, and what became of it.
struct Worker {
    client: Client,
    settings: Settings,
    run: Option<String>,
    created: bool,
    params: Vec<Param>,
    pending: VecDeque<Metric>,
    /// Values the server refused (kept for the summary; not retried).
    refused: Vec<Metric>,
    sent: usize,
    /// Why the server is unreachable, while it is.
    down: Option<String>,
    /// Why nothing more will be sent (credentials or run refused).
    stopped: Option<String>,
    notes: mpsc::Sender<String>,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        self.flush(Instant::now() + BUDGET);
        while let Ok(msg) = rx.recv() {
            let mut finish = None;
            let mut next = Some(msg);
            // Everything queued meanwhile goes in the same batches.
            while let Some(m) = next {
                match m {
                    Msg::Epoch(ms) => self.pending.extend(ms),
                    Msg::Finish {
                        succeeded,
                        deadline,
                    } => finish = Some((succeeded, deadline)),
                }
                next = rx.try_recv().ok();
            }
            if let Some((succeeded, deadline)) = finish {
                self.finish(succeeded, deadline);
                return;
            }
            let budget = if self.down.is_some() {
                BUDGET_WHEN_DOWN
            } else {
                BUDGET
            };
            self.flush(Instant::now() + budget);
        }
    }

    fn note(&self, s: String) {
        let _ = self.notes.send(s);
    }

    /// Finds or makes the run, then sends the parameters and the pending metrics, until done or
    /// the server fails (then they wait for the next flush).
    fn flush(&mut self, deadline: Instant) {
        if self.stopped.is_some() {
            return;
        }
        let left = || deadline.saturating_duration_since(Instant::now());
        let result = (|| {
            let run = match &self.run {
                Some(r) => r.clone(),
                None => self.open_run(left())?,
            };
            for b in batch::split(&self.params, &[]) {
                self.client.log_batch(&run, &b, left())?;
                self.params.drain(..b.params.len());
            }
            while !self.pending.is_empty() {
                let b = batch::split(&[], self.pending.make_contiguous())
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                let n = b.metrics.len();
                match self.client.log_batch(&run, &b, left()) {
                    Ok(()) => self.sent += n,
                    Err(f @ Failure::Refused { .. }) if !f.is_auth() => {
                        if self.refused.is_empty() {
                            self.note(format!(
                                "warning: MLflow: {} refused {n} metric values ({f}); they stay in metrics.jsonl only",
                                self.settings.shown
                            ));
                        }
                        self.refused.extend(b.metrics);
                    }
                    Err(f) => return Err(f),
                }
                self.pending.drain(..n);
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if let Some(why) = self.down.take() {
                    self.note(format!(
                        "MLflow: {} answers again (it was: {why}); the held metrics are sent",
                        self.settings.shown
                    ));
                }
            }
            Err(f) if f.is_auth() || matches!(f, Failure::Refused { .. }) => {
                self.note(format!(
                    "warning: MLflow: {} refused the run ({f}); no more metrics go there, metrics.jsonl has them all",
                    self.settings.shown
                ));
                self.stopped = Some(f.to_string());
            }
            Err(f) => {
                if self.down.is_none() {
                    self.note(format!(
                        "warning: MLflow: {} is unreachable ({f}); training goes on, metrics.jsonl keeps every epoch, and the tracker tries again each epoch",
                        self.settings.shown
                    ));
                }
                self.down = Some(f.to_string());
            }
        }
    }

    /// The run to log into: `MLFLOW_RUN_ID`'s when it exists, else a new one in the experiment.
    fn open_run(&mut self, budget: Duration) -> Result<String, Failure> {
        let shown = self.settings.shown.clone();
        if let Some(id) = self.settings.run_id.clone() {
            if self.client.run_exists(&id, budget)? {
                self.note(format!(
                    "MLflow: logging to run {id} (MLFLOW_RUN_ID) at {shown}"
                ));
                self.run = Some(id.clone());
                return Ok(id);
            }
            self.note(format!(
                "warning: MLflow: MLFLOW_RUN_ID {id} names no run at {shown}; logging to a new run"
            ));
            self.settings.run_id = None;
        }
        let experiment = match &self.settings.experiment {
            Experiment::Id(id) => id.clone(),
            Experiment::Name(name) => self.client.experiment_id(name, budget)?,
        };
        let tags = [
            ("mlflow.source.name", "trainer"),
            ("mlflow.source.type", "LOCAL"),
        ];
        let id = self
            .client
            .create_run(&experiment, now_ms(), &tags, budget)?;
        self.note(format!(
            "MLflow: logging to new run {id} in experiment {experiment} at {shown}"
        ));
        self.run = Some(id.clone());
        self.created = true;
        Ok(id)
    }

    fn finish(&mut self, succeeded: bool, deadline: Instant) {
        if self.down.is_some() {
            // One quick try, not the whole budget, for a server already found dead.
            let quick = Instant::now() + BUDGET_WHEN_DOWN;
            self.flush(quick.min(deadline));
        } else {
            self.flush(deadline);
        }
        let shown = self.settings.shown.clone();
        let mut ended = None;
        if let (Some(run), true, None) = (&self.run, self.created, &self.stopped) {
            let status = if succeeded { "FINISHED" } else { "FAILED" };
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = if self.down.is_some() {
                left.min(BUDGET_WHEN_DOWN)
            } else {
                left
            };
            ended = Some(match self.client.end_run(run, status, now_ms(), budget) {
                Ok(()) => format!("ended {status}"),
                Err(_) => "left RUNNING (it could not be ended)".into(),
            });
        }
        let unsent: Vec<&Metric> = self.pending.iter().chain(&self.refused).collect();
        if !unsent.is_empty() || !self.params.is_empty() || self.run.is_none() {
            let steps = unsent.iter().map(|m| m.step);
            let (lo, hi) = (steps.clone().min(), steps.max());
            let epochs = match (lo, hi) {
                (Some(a), Some(b)) if a == b => format!(" (epoch {a})"),
                (Some(a), Some(b)) => format!(" (epochs {a}–{b})"),
                _ => String::new(),
            };
            let why = self
                .stopped
                .clone()
                .or_else(|| self.down.clone())
                .unwrap_or_else(|| "refused".into());
            let run = match &self.run {
                Some(r) => format!("run {r}"),
                None => "no run".into(),
            };
            self.note(format!(
                "warning: MLflow: not sent to {shown} ({why}): {} metric values{epochs}, {} parameters; {} metric values were sent to {run}{}; metrics.jsonl has every epoch",
                unsent.len(),
                self.params.len(),
                self.sent,
                ended.map(|e| format!(", {e}")).unwrap_or_default(),
            ));
        }
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
        // An id wins over a name, as in mlflow.tracking.fluent._get_experiment_id.
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

    #[test]
    fn a_dead_server_costs_training_nothing_and_the_summary_says_what_was_lost() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let uri = format!("http://127.0.0.1:{port}");
        let s = Settings::from_env(move |k| (k == "MLFLOW_TRACKING_URI").then(|| uri.clone()))
            .unwrap()
            .unwrap();
        let t = Tracker::start(s, vec![Param::new("lr", 0.001)]);
        let start = Instant::now();
        for epoch in 1..=3 {
            t.log_epoch(&EpochMetrics {
                epoch,
                train_loss: 1.0,
                test_loss: 1.0,
                test_accuracy: 0.5,
                seconds: 1.0,
                train_seconds: 1.0,
                images_per_second: 10.0,
                device: "cpu".into(),
            });
        }
        assert!(
            start.elapsed() < Duration::from_millis(100),
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
            all.contains(
                "12 metric values (epochs 1–3), 1 parameters; 0 metric values were sent to no run"
            ),
            "{all}"
        );
    }
}
