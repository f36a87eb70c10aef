//! Sweep jobs: the trainer's command with `${{search_space.*}}` for each swept flag, the
//! sampling algorithm, objective, limits and early-termination policy — each field as the
//! 2025-12-01 REST definitions (mfe.json: `SweepJob`, `TrialComponent`, `SamplingAlgorithm`,
//! `Objective`, `SweepJobLimits`, `BanditPolicy`, `MedianStoppingPolicy`,
//! `TruncationSelectionPolicy`) name them — checked before any request, and the same sweep as
//! `az ml job create` YAML.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use thiserror::Error;

use super::job::JobBody;
use super::search_space::Param;
use super::{valid_name, AzureError, NameRule};

/// What the trainer logs each epoch (metrics.jsonl and MLflow): the metrics an objective may name.
pub const TRAINER_METRICS: [&str; 4] = [
    "train_loss",
    "test_loss",
    "test_accuracy",
    "images_per_second",
];

/// A sweep that the service would refuse, or that could not do what was asked.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SweepError {
    #[error("--objective {0}: expected METRIC:maximize or METRIC:minimize (e.g. test_accuracy:maximize)")]
    BadObjective(String),
    #[error("--objective {metric}: the trainer never logs `{metric}` (it logs {})", TRAINER_METRICS.join(", "))]
    UnknownMetric { metric: String },
    #[error("--max-concurrent {concurrent} is above --max-trials {total}")]
    ConcurrencyAboveTotal { concurrent: u32, total: u32 },
    #[error("grid sampling takes every value of every parameter, but --param {param} is {distribution}, which has no finite set of values: use choice(…) or --sampling random")]
    GridOverContinuous {
        param: String,
        distribution: &'static str,
    },
    #[error("bayesian sampling supports choice, uniform and quniform only; --param {param} is {distribution}")]
    BayesianDistribution {
        param: String,
        distribution: &'static str,
    },
    #[error("bayesian sampling takes no early-termination policy (Azure ML refuses the pair)")]
    BayesianEarlyTermination,
    #[error("--param {0} is given twice")]
    DuplicateParam(String),
    #[error("--param {0} is also among the fixed trainer arguments after `--`")]
    ParamAlsoFixed(String),
    #[error("no --param: a sweep needs at least one parameter to vary")]
    NoParams,
    #[error("--early-termination {text}: {why}")]
    BadPolicy { text: String, why: String },
    #[error("--sampling {0}: expected random, grid or bayesian")]
    BadSampling(String),
    #[error("--compute {0}: a sweep runs its trials on a compute cluster; `{0}` is not a cluster name but serverless compute or a VM size")]
    ServerlessCompute(String),
}

/// `samplingAlgorithm`: Grid, Random (rule Random, optional int32 seed), Bayesian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    Random { seed: Option<i32> },
    Grid,
    Bayesian,
}

impl Sampling {
    pub fn parse(s: &str, seed: Option<i32>) -> Result<Sampling, SweepError> {
        match s.to_ascii_lowercase().as_str() {
            "random" => Ok(Sampling::Random { seed }),
            "grid" => Ok(Sampling::Grid),
            "bayesian" => Ok(Sampling::Bayesian),
            _ => Err(SweepError::BadSampling(s.to_owned())),
        }
    }

    fn rest(&self) -> Value {
        match self {
            Sampling::Random { seed: Some(s) } => {
                json!({"samplingAlgorithmType": "Random", "rule": "Random", "seed": s})
            }
            Sampling::Random { seed: None } => json!({"samplingAlgorithmType": "Random"}),
            Sampling::Grid => json!({"samplingAlgorithmType": "Grid"}),
            Sampling::Bayesian => json!({"samplingAlgorithmType": "Bayesian"}),
        }
    }

    fn yaml(&self) -> Value {
        match self {
            Sampling::Random { seed: Some(s) } => json!({"type": "random", "seed": s}),
            Sampling::Random { seed: None } => json!("random"),
            Sampling::Grid => json!("grid"),
            Sampling::Bayesian => json!("bayesian"),
        }
    }
}

/// `objective`: `{goal: Maximize|Minimize, primaryMetric}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objective {
    pub metric: String,
    pub maximize: bool,
}

impl Objective {
    /// `METRIC:maximize` or `METRIC:minimize`; the metric must be one the trainer logs.
    pub fn parse(s: &str) -> Result<Objective, SweepError> {
        let (metric, goal) = s
            .rsplit_once(':')
            .ok_or_else(|| SweepError::BadObjective(s.to_owned()))?;
        let maximize = match goal.to_ascii_lowercase().as_str() {
            "maximize" | "max" => true,
            "minimize" | "min" => false,
            _ => return Err(SweepError::BadObjective(s.to_owned())),
        };
        if !TRAINER_METRICS.contains(&metric) {
            return Err(SweepError::UnknownMetric {
                metric: metric.to_owned(),
            });
        }
        Ok(Objective {
            metric: metric.to_owned(),
            maximize,
        })
    }

    pub fn goal(&self) -> &'static str {
        if self.maximize {
            "Maximize"
        } else {
            "Minimize"
        }
    }
}

/// `earlyTermination`: EarlyTerminationPolicy's `policyType`, `evaluationInterval`,
/// `delayEvaluation` (int32, default 0) and the policy's own fields.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyTermination {
    /// Bandit, MedianStopping or TruncationSelection.
    pub policy: &'static str,
    pub evaluation_interval: i32,
    pub delay_evaluation: i32,
    /// Bandit: slackFactor or slackAmount (exactly one); TruncationSelection:
    /// truncationPercentage. REST name → value.
    pub fields: BTreeMap<&'static str, Value>,
}

impl EarlyTermination {
    /// `bandit:slack_factor=0.1,evaluation_interval=1,delay_evaluation=2`,
    /// `median_stopping:evaluation_interval=1`, `truncation_selection:truncation_percentage=20`.
    pub fn parse(text: &str) -> Result<EarlyTermination, SweepError> {
        let bad = |why: String| SweepError::BadPolicy {
            text: text.to_owned(),
            why,
        };
        let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
        let (policy, allowed): (&str, &[&str]) = match kind {
            "bandit" => ("Bandit", &["slack_factor", "slack_amount"]),
            "median_stopping" => ("MedianStopping", &[]),
            "truncation_selection" => ("TruncationSelection", &["truncation_percentage"]),
            _ => {
                return Err(bad(format!(
                    "`{kind}` is not a policy (bandit, median_stopping, truncation_selection)"
                )))
            }
        };
        let mut p = EarlyTermination {
            policy,
            evaluation_interval: 0,
            delay_evaluation: 0,
            fields: BTreeMap::new(),
        };
        for kv in rest.split(',').filter(|s| !s.trim().is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad(format!("`{kv}` is not KEY=VALUE")))?;
            let (k, v) = (k.trim(), v.trim());
            let int = || -> Result<i32, SweepError> {
                v.parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| bad(format!("{k}: `{v}` is not a whole number ≥ 0")))
            };
            match k {
                "evaluation_interval" => p.evaluation_interval = int()?,
                "delay_evaluation" => p.delay_evaluation = int()?,
                "truncation_percentage" if allowed.contains(&k) => {
                    let n = int()?;
                    if !(1..=99).contains(&n) {
                        return Err(bad(format!("truncation_percentage {n} is not 1–99")));
                    }
                    p.fields.insert("truncationPercentage", json!(n));
                }
                "slack_factor" | "slack_amount" if allowed.contains(&k) => {
                    let x = v
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x > 0.0)
                        .ok_or_else(|| bad(format!("{k}: `{v}` is not a number above 0")))?;
                    let rest_name = if k == "slack_factor" {
                        "slackFactor"
                    } else {
                        "slackAmount"
                    };
                    p.fields.insert(rest_name, json!(x));
                }
                _ => {
                    let mut all = vec!["evaluation_interval", "delay_evaluation"];
                    all.extend(allowed);
                    return Err(bad(format!(
                        "`{k}` is not a {kind} setting ({})",
                        all.join(", ")
                    )));
                }
            }
        }
        if policy == "Bandit" && p.fields.len() != 1 {
            return Err(bad(
                "bandit needs exactly one of slack_factor and slack_amount".into(),
            ));
        }
        if policy == "TruncationSelection" && p.fields.is_empty() {
            return Err(bad(
                "truncation_selection needs truncation_percentage".into()
            ));
        }
        if p.evaluation_interval == 0 {
            p.evaluation_interval = 1;
        }
        Ok(p)
    }

    pub fn rest(&self) -> Value {
        let mut v = json!({
            "policyType": self.policy,
            "evaluationInterval": self.evaluation_interval,
            "delayEvaluation": self.delay_evaluation,
        });
        for (k, x) in &self.fields {
            v[*k] = x.clone();
        }
        v
    }

    fn yaml(&self) -> Value {
        let kind = match self.policy {
            "Bandit" => "bandit",
            "MedianStopping" => "median_stopping",
            _ => "truncation_selection",
        };
        let mut v = json!({
            "type": kind,
            "evaluation_interval": self.evaluation_interval,
            "delay_evaluation": self.delay_evaluation,
        });
        for (k, x) in &self.fields {
            let snake = match *k {
                "slackFactor" => "slack_factor",
                "slackAmount" => "slack_amount",
                _ => "truncation_percentage",
            };
            v[snake] = x.clone();
        }
        v
    }
}

/// `limits` (SweepJobLimits, jobLimitsType Sweep): int32 counts, ISO 8601 durations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_total_trials: u32,
    pub max_concurrent_trials: u32,
    /// ISO 8601, e.g. `PT2H`.
    pub timeout: String,
    pub trial_timeout: Option<String>,
}

/// A sweep job to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepJob {
    pub id: String,
    /// Full ARM id of the compute cluster (a sweep is not serverless here).
    pub compute_id: String,
    pub display_name: Option<String>,
    pub experiment_name: String,
    /// Full ARM id of the environment version.
    pub environment_id: String,
    /// The trainer's command with its fixed arguments; the swept flags are appended.
    pub base_command: String,
    /// The arguments after `--`, to check that no swept flag is also fixed.
    pub fixed_args: Vec<String>,
    pub environment_variables: BTreeMap<String, String>,
    /// Input name → folder URI (on the sweep, shared by every trial).
    pub inputs: BTreeMap<String, String>,
    pub outputs: Vec<String>,
    pub params: Vec<Param>,
    pub sampling: Sampling,
    pub objective: Objective,
    pub limits: Limits,
    pub early_termination: Option<EarlyTermination>,
    pub tags: BTreeMap<String, String>,
}

/// Whether a compute name is one of serverless compute's spellings or a VM size, not a cluster.
pub fn is_serverless_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "serverless" || n == "azureml:serverless" || n.starts_with("standard_")
}

impl SweepJob {
    /// The trial's command: the trainer, its fixed arguments, then `--FLAG ${{search_space.KEY}}`.
    pub fn command(&self) -> String {
        let mut c = self.base_command.clone();
        for p in &self.params {
            c += &format!(" --{} ${{{{search_space.{}}}}}", p.flag, p.key());
        }
        c
    }

    /// How many trials grid sampling has (the product of the choices), if it is a grid.
    pub fn grid_size(&self) -> Option<u64> {
        self.params.iter().try_fold(1u64, |n, p| {
            p.distribution
                .grid_size()
                .map(|k| n.saturating_mul(k as u64))
        })
    }

    /// Refuses a sweep the service would refuse or that cannot mean what was asked, before any
    /// request.
    pub fn validate(&self) -> Result<(), SweepError> {
        if self.params.is_empty() {
            return Err(SweepError::NoParams);
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.params {
            if !seen.insert(p.flag.clone()) {
                return Err(SweepError::DuplicateParam(p.flag.clone()));
            }
            let flag = format!("--{}", p.flag);
            if self
                .fixed_args
                .iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
            {
                return Err(SweepError::ParamAlsoFixed(p.flag.clone()));
            }
        }
        let l = &self.limits;
        if l.max_concurrent_trials > l.max_total_trials {
            return Err(SweepError::ConcurrencyAboveTotal {
                concurrent: l.max_concurrent_trials,
                total: l.max_total_trials,
            });
        }
        match self.sampling {
            Sampling::Grid => {
                if let Some(p) = self
                    .params
                    .iter()
                    .find(|p| p.distribution.grid_size().is_none())
                {
                    return Err(SweepError::GridOverContinuous {
                        param: p.flag.clone(),
                        distribution: p.distribution.name(),
                    });
                }
            }
            Sampling::Bayesian => {
                if let Some(p) = self
                    .params
                    .iter()
                    .find(|p| !matches!(p.distribution.name(), "choice" | "uniform" | "quniform"))
                {
                    return Err(SweepError::BayesianDistribution {
                        param: p.flag.clone(),
                        distribution: p.distribution.name(),
                    });
                }
                if self.early_termination.is_some() {
                    return Err(SweepError::BayesianEarlyTermination);
                }
            }
            Sampling::Random { .. } => {}
        }
        Ok(())
    }

    /// The search space: key → the SDK's REST form.
    pub fn search_space(&self) -> Value {
        Value::Object(
            self.params
                .iter()
                .map(|p| (p.key(), p.distribution.rest()))
                .collect(),
        )
    }

    /// The `az ml job create -f` YAML of the same sweep (CLI v2 `sweepJob` schema). Values are
    /// JSON, which YAML reads as flow scalars and collections.
    pub fn yaml(&self) -> String {
        let q = |v: &Value| v.to_string();
        let s = |t: &str| q(&json!(t));
        let mut y = String::from(
            "$schema: https://azuremlschemas.azureedge.net/latest/sweepJob.schema.json\ntype: sweep\n",
        );
        y += &format!("name: {}\n", s(&self.id));
        if let Some(d) = &self.display_name {
            y += &format!("display_name: {}\n", s(d));
        }
        y += &format!("experiment_name: {}\n", s(&self.experiment_name));
        let compute = self.compute_id.rsplit('/').next().unwrap_or_default();
        y += &format!("compute: {}\n", s(&format!("azureml:{compute}")));
        if !self.inputs.is_empty() {
            y += "inputs:\n";
            for (k, uri) in &self.inputs {
                y += &format!(
                    "  {k}: {}\n",
                    q(&json!({"type": "uri_folder", "path": uri, "mode": "ro_mount"}))
                );
            }
        }
        if !self.outputs.is_empty() {
            y += "outputs:\n";
            for k in &self.outputs {
                y += &format!(
                    "  {k}: {}\n",
                    q(&json!({"type": "uri_folder", "mode": "rw_mount"}))
                );
            }
        }
        y += "trial:\n";
        y += &format!("  command: {}\n", s(&self.command()));
        y += &format!(
            "  environment: {}\n",
            s(&environment_reference(&self.environment_id))
        );
        if !self.environment_variables.is_empty() {
            y += &format!(
                "  environment_variables: {}\n",
                q(&json!(self.environment_variables))
            );
        }
        y += &format!("sampling_algorithm: {}\n", q(&self.sampling.yaml()));
        y += "search_space:\n";
        for p in &self.params {
            y += &format!("  {}: {}\n", p.key(), q(&p.distribution.yaml()));
        }
        y += &format!(
            "objective: {}\n",
            q(
                &json!({"goal": self.objective.goal().to_ascii_lowercase(), "primary_metric": self.objective.metric})
            )
        );
        let mut limits = json!({
            "max_total_trials": self.limits.max_total_trials,
            "max_concurrent_trials": self.limits.max_concurrent_trials,
            "timeout": iso_seconds(&self.limits.timeout),
        });
        if let Some(t) = &self.limits.trial_timeout {
            limits["trial_timeout"] = json!(iso_seconds(t));
        }
        y += &format!("limits: {}\n", q(&limits));
        if let Some(e) = &self.early_termination {
            y += &format!("early_termination: {}\n", q(&e.yaml()));
        }
        if !self.tags.is_empty() {
            y += &format!("tags: {}\n", q(&json!(self.tags)));
        }
        y
    }
}

/// `azureml:NAME:VERSION` for an environment version's ARM id (the CLI's reference).
fn environment_reference(arm_id: &str) -> String {
    match arm_id
        .split_once("/environments/")
        .and_then(|(_, r)| r.split_once("/versions/"))
    {
        Some((n, v)) => format!("azureml:{n}:{v}"),
        None => format!("azureml:{arm_id}"),
    }
}

/// Seconds in an ISO 8601 duration of hours, minutes and seconds (`PT1H30M` → 5400); the CLI
/// v2 YAML gives limits in seconds.
pub fn iso_seconds(iso: &str) -> u64 {
    let mut secs = 0;
    let mut n = 0u64;
    for c in iso.trim_start_matches("PT").chars() {
        match c {
            '0'..='9' => n = n * 10 + u64::from(c as u8 - b'0'),
            'H' => (secs, n) = (secs + n * 3600, 0),
            'M' => (secs, n) = (secs + n * 60, 0),
            'S' => (secs, n) = (secs + n, 0),
            _ => {}
        }
    }
    secs
}

impl JobBody for SweepJob {
    fn id(&self) -> &str {
        &self.id
    }

    fn check(&self) -> Result<(), AzureError> {
        if !valid_name(&self.id) {
            return Err(AzureError::BadName {
                what: "job name",
                name: self.id.clone(),
                rule: NameRule::Job,
            });
        }
        for name in self.inputs.keys().chain(self.outputs.iter()) {
            if !valid_name(name) || name.contains('-') {
                return Err(AzureError::BadName {
                    what: "input/output name",
                    name: name.clone(),
                    rule: NameRule::InputOutput,
                });
            }
        }
        self.validate().map_err(AzureError::from)
    }

    fn body(&self) -> Value {
        let inputs: serde_json::Map<String, Value> = self
            .inputs
            .iter()
            .map(|(k, uri)| {
                (
                    k.clone(),
                    json!({"jobInputType": "uri_folder", "uri": uri, "mode": "ReadOnlyMount"}),
                )
            })
            .collect();
        let outputs: serde_json::Map<String, Value> = self
            .outputs
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    json!({"jobOutputType": "uri_folder", "mode": "ReadWriteMount"}),
                )
            })
            .collect();
        let mut limits = json!({
            "jobLimitsType": "Sweep",
            "maxTotalTrials": self.limits.max_total_trials,
            "maxConcurrentTrials": self.limits.max_concurrent_trials,
            "timeout": self.limits.timeout,
        });
        if let Some(t) = &self.limits.trial_timeout {
            limits["trialTimeout"] = json!(t);
        }
        let mut p = json!({
            "jobType": "Sweep",
            "computeId": self.compute_id,
            "experimentName": self.experiment_name,
            "inputs": inputs,
            "outputs": outputs,
            "tags": self.tags,
            "samplingAlgorithm": self.sampling.rest(),
            "searchSpace": self.search_space(),
            "objective": {"goal": self.objective.goal(), "primaryMetric": self.objective.metric},
            "limits": limits,
            "trial": {
                "command": self.command(),
                "environmentId": self.environment_id,
                "environmentVariables": self.environment_variables,
                "resources": {"instanceCount": 1},
            },
        });
        if let Some(d) = &self.display_name {
            p["displayName"] = json!(d);
        }
        if let Some(e) = &self.early_termination {
            p["earlyTermination"] = e.rest();
        }
        json!({ "properties": p })
    }
}

#[cfg(test)]
#[path = "sweep_tests.rs"]
mod tests;
