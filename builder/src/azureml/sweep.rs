//! Sweep jobs: the trainer's command with `${{search_space.*}}` for each swept flag, the
//! sampling algorithm, objective, limits and early-termination policy — each field as the
//! 2025-12-01 REST definitions (mfe.json: `SweepJob`, `TrialComponent`, `SamplingAlgorithm`,
//! `Objective`, `SweepJobLimits`, `BanditPolicy`, `MedianStoppingPolicy`,
//! `TruncationSelectionPolicy`) name them — checked before any request, and the same sweep as
//! `az ml job create` YAML.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::job::{check_names, io_bodies, JobBody};
use super::search_space::Param;
pub use super::sweep_settings::{
    EarlyTermination, Limits, Objective, Sampling, SweepError, TRAINER_METRICS,
};
use super::AzureError;

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
        check_names(&self.id, self.inputs.keys(), &self.outputs)?;
        self.validate().map_err(AzureError::from)
    }

    fn body(&self) -> Value {
        let (inputs, outputs) = io_bodies(&self.inputs, &self.outputs);
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
