//! A sweep's settings, each checked from its flag: the objective (a metric the trainer logs),
//! the sampling algorithm, the early-termination policy and the limits, with their REST names
//! (`Objective`, `SamplingAlgorithm`, `EarlyTerminationPolicy`/`BanditPolicy`/…, `SweepJobLimits`
//! in mfe.json 2025-12-01) and CLI v2 YAML names; and [`SweepError`], every refusal of a sweep.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use thiserror::Error;

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

    pub(crate) fn rest(&self) -> Value {
        match self {
            Sampling::Random { seed: Some(s) } => {
                json!({"samplingAlgorithmType": "Random", "rule": "Random", "seed": s})
            }
            Sampling::Random { seed: None } => json!({"samplingAlgorithmType": "Random"}),
            Sampling::Grid => json!({"samplingAlgorithmType": "Grid"}),
            Sampling::Bayesian => json!({"samplingAlgorithmType": "Bayesian"}),
        }
    }

    pub(crate) fn yaml(&self) -> Value {
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

    pub(crate) fn yaml(&self) -> Value {
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
