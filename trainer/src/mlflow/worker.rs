//! The tracker's thread: finds or creates the run, sends the parameters and each epoch's
//! metrics, holds what an unreachable server did not take, and sums up what was not sent.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::batch::{self, Metric, Param};
use super::client::{Client, Failure};
use super::{now_ms, Experiment, Settings};

/// How long a batch may be retried while the server answers.
pub(super) const BUDGET: Duration = Duration::from_secs(10);
/// How long one try may take once the server was found unreachable (one warning, then one
/// quick try per epoch until it answers again).
const BUDGET_WHEN_DOWN: Duration = Duration::from_secs(2);

pub(super) enum Msg {
    Epoch(Vec<Metric>),
    Finish { succeeded: bool, deadline: Instant },
}

/// The tracker's thread: the run, what is still to send, and what became of it.
pub(super) struct Worker {
    /// How long a flush may retry while the server answers ([`BUDGET`]).
    budget: Duration,
    client: Client,
    settings: Settings,
    run: Option<String>,
    created: bool,
    params: Vec<Param>,
    pending: VecDeque<Metric>,
    /// Values the server refused (kept for the summary; not retried).
    refused: Vec<Metric>,
    refused_params: usize,
    sent: usize,
    /// Why the server is unreachable, while it is.
    down: Option<String>,
    /// Why nothing more will be sent (credentials or run refused).
    stopped: Option<String>,
    notes: mpsc::Sender<String>,
}

impl Worker {
    pub(super) fn new(
        client: Client,
        settings: Settings,
        params: Vec<Param>,
        notes: mpsc::Sender<String>,
        budget: Duration,
    ) -> Worker {
        Worker {
            budget,
            client,
            settings,
            run: None,
            created: false,
            params,
            pending: VecDeque::new(),
            refused: Vec::new(),
            refused_params: 0,
            sent: 0,
            down: None,
            stopped: None,
            notes,
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Msg>) {
        self.flush(Instant::now() + self.budget);
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
                self.budget
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
                match self.client.log_batch(&run, &b, left()) {
                    Ok(()) => {}
                    // E.g. a resumed run given other values: the metrics still go.
                    Err(f @ Failure::Refused { .. }) if !f.is_auth() => {
                        self.note(format!(
                            "warning: MLflow: {} refused {} parameters ({f}); the metrics are still sent",
                            self.settings.shown,
                            b.params.len()
                        ));
                        self.refused_params += b.params.len();
                    }
                    Err(f) => return Err(f),
                }
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
        let mut left_open = false;
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
                Err(_) => {
                    left_open = true;
                    "left RUNNING (it could not be ended)".into()
                }
            });
        }
        let unsent: Vec<&Metric> = self.pending.iter().chain(&self.refused).collect();
        let params = self.params.len() + self.refused_params;
        if unsent.is_empty() && params == 0 && self.run.is_some() && !left_open {
            return;
        }
        let steps = unsent.iter().map(|m| m.step);
        let epochs = match (steps.clone().min(), steps.max()) {
            (Some(a), Some(b)) if a == b => format!(" (epoch {a})"),
            (Some(a), Some(b)) => format!(" (epochs {a}–{b})"),
            _ => String::new(),
        };
        let why = self
            .stopped
            .clone()
            .or_else(|| self.down.clone())
            .unwrap_or_else(|| "refused".into());
        let fate = match (&self.run, ended) {
            (Some(r), Some(e)) => format!("{} metric values went to run {r}, {e}", self.sent),
            (Some(r), None) => format!("{} metric values went to run {r}", self.sent),
            (None, _) => "no run could be opened there".into(),
        };
        self.note(format!(
            "warning: MLflow: {} metric values{epochs} and {params} parameters were not sent to {shown} ({why}); {fate}; metrics.jsonl has every epoch",
            unsent.len(),
        ));
    }
}
