//! A sweep's trials as the service shows them: the child runs from Run History
//! (`GET {api}/history/v1.0{workspace}/runs/{sweep}/children`, what `az ml job list
//! --parent-job-name` reads), each trial's sampled values in its `hyperparameters` tag, its
//! metric from MLflow's REST API on the workspace's tracking endpoint (`runs/get`; an Azure ML
//! job's MLflow run id is the job's name), and the best trial from the sweep's properties
//! (`best_child_run_id`, `score`). `follow` polls all of it and reports each change.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::job::{self, Poll, TERMINAL};
use super::{AzureError, Client};

/// One trial (a child run of the sweep).
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub id: String,
    pub status: String,
    /// Search-space key → the value sampled for this trial.
    pub params: BTreeMap<String, Value>,
}

/// The data-plane host of a job's workspace, from its MLflow tracking endpoint
/// (`azureml://HOST/mlflow/v1.0/…` → `https://HOST`).
pub fn api_base(job: &Value) -> Option<String> {
    let t = job["properties"]["services"]["Tracking"]["endpoint"].as_str()?;
    let rest = t.strip_prefix("azureml://")?;
    let host = rest.split('/').next().filter(|h| !h.is_empty())?;
    Some(format!("https://{host}"))
}

/// The MLflow REST root of a job's workspace: the tracking endpoint over https, query dropped.
pub fn tracking_base(job: &Value) -> Option<String> {
    let t = job["properties"]["services"]["Tracking"]["endpoint"].as_str()?;
    let rest = t.strip_prefix("azureml://")?;
    Some(format!(
        "https://{}",
        rest.split('?').next()?.trim_end_matches('/')
    ))
}

fn json_at(client: &Client, url: &str) -> Result<Value, AzureError> {
    let text = client.get_data_plane(url)?;
    serde_json::from_str(&text).map_err(|source| AzureError::NotJson {
        method: "GET".into(),
        path: url.to_owned(),
        status: reqwest::StatusCode::OK,
        request_id: "none".into(),
        source,
    })
}

/// The sweep's trials, in the order Run History lists them.
pub fn children(client: &Client, api: &str, sweep: &str) -> Result<Vec<Trial>, AzureError> {
    let mut url = format!(
        "{api}/history/v1.0{}/runs/{sweep}/children",
        client.workspace.arm_id()
    );
    let mut out = Vec::new();
    for _ in 0..100 {
        let page = json_at(client, &url)?;
        for r in page["value"].as_array().into_iter().flatten() {
            let params = r["tags"]["hyperparameters"]
                .as_str()
                .and_then(|s| serde_json::from_str::<BTreeMap<String, Value>>(s).ok())
                .unwrap_or_default();
            out.push(Trial {
                id: r["runId"].as_str().unwrap_or_default().to_owned(),
                status: r["status"].as_str().unwrap_or("Unknown").to_owned(),
                params,
            });
        }
        match page["nextLink"].as_str() {
            Some(next) if !next.is_empty() => url = next.to_owned(),
            _ => break,
        }
    }
    Ok(out)
}

/// The latest value of `metric` for run `run_id`, and its step, if it was logged.
pub fn metric(
    client: &Client,
    tracking: &str,
    run_id: &str,
    metric: &str,
) -> Result<Option<(f64, i64)>, AzureError> {
    let url = format!("{tracking}/api/2.0/mlflow/runs/get?run_id={run_id}");
    let run = match json_at(client, &url) {
        // A trial that has not started logging has no run yet.
        Err(AzureError::GetFailed { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => {
            return Ok(None)
        }
        r => r?,
    };
    Ok(run["run"]["data"]["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["key"] == metric)
        .and_then(|m| Some((m["value"].as_f64()?, m["step"].as_i64().unwrap_or(0)))))
}

/// The best trial the service names on the sweep (`best_child_run_id`) and its `score`.
pub fn best(sweep: &Value) -> Option<(String, Option<f64>)> {
    let p = &sweep["properties"]["properties"];
    let id = p["best_child_run_id"].as_str()?.to_owned();
    let score = p["score"]
        .as_f64()
        .or_else(|| p["score"].as_str().and_then(|s| s.parse().ok()));
    Some((id, score))
}

/// What [`follow`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The sweep's own status changed.
    Sweep(String),
    /// A trial appeared or its status changed.
    Trial(Trial),
    /// A trial's objective metric changed: (trial, value, step).
    Metric(String, f64, i64),
    /// Trials or metrics cannot be read (shown once; following goes on with the status).
    Unreadable(String),
}

/// How following ended: the sweep's last body, and whether Ctrl-C detached.
#[derive(Debug, Clone)]
pub struct Followed {
    pub sweep: Value,
    pub detached: bool,
    pub trials: Vec<Trial>,
    /// Trial → its last objective value.
    pub metrics: BTreeMap<String, f64>,
}

/// Polls the sweep, its trials and their `objective` metric until the sweep ends (or `stop`),
/// calling `on` with each change.
pub fn follow(
    client: &Client,
    id: &str,
    objective: &str,
    poll: Poll,
    stop: &AtomicBool,
    on: &mut dyn FnMut(&Event),
) -> Result<Followed, AzureError> {
    let mut last = String::new();
    let mut trials: BTreeMap<String, Trial> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut metrics: BTreeMap<String, (f64, i64)> = BTreeMap::new();
    let mut warned = false;
    let mut wait = poll.min;
    loop {
        let sweep = job::get(client, id)?;
        let s = job::status(&sweep).to_owned();
        if s != last {
            on(&Event::Sweep(s.clone()));
            last.clone_from(&s);
        }
        let done = TERMINAL.contains(&s.as_str());
        if let (Some(api), Some(tracking)) = (api_base(&sweep), tracking_base(&sweep)) {
            let seen = children(client, &api, id).and_then(|now| {
                for t in now {
                    if trials.get(&t.id).map(|o| &o.status) != Some(&t.status) {
                        if !trials.contains_key(&t.id) {
                            order.push(t.id.clone());
                        }
                        on(&Event::Trial(t.clone()));
                        trials.insert(t.id.clone(), t);
                    }
                }
                for t in trials.values() {
                    if t.status == "NotStarted" || t.status == "Queued" {
                        continue;
                    }
                    if let Some(m) = metric(client, &tracking, &t.id, objective)? {
                        if metrics.get(&t.id) != Some(&m) {
                            on(&Event::Metric(t.id.clone(), m.0, m.1));
                            metrics.insert(t.id.clone(), m);
                        }
                    }
                }
                Ok(())
            });
            if let Err(e) = seen {
                if !warned {
                    on(&Event::Unreadable(e.to_string()));
                    warned = true;
                }
            }
        }
        let finish = |detached| Followed {
            sweep: sweep.clone(),
            detached,
            trials: order
                .iter()
                .filter_map(|k| trials.get(k).cloned())
                .collect(),
            metrics: metrics.iter().map(|(k, v)| (k.clone(), v.0)).collect(),
        };
        if done {
            return Ok(finish(false));
        }
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return Ok(finish(true));
            }
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
        wait = (wait + wait / 2).min(poll.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_come_from_the_tracking_service() {
        let j = json!({"properties": {"services": {"Tracking": {"jobServiceType": "Tracking",
            "endpoint": "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w?"}}}});
        assert_eq!(api_base(&j).unwrap(), "https://eastus.api.azureml.ms");
        assert_eq!(
            tracking_base(&j).unwrap(),
            "https://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w"
        );
        assert!(api_base(&json!({})).is_none());
        let s =
            json!({"properties": {"properties": {"best_child_run_id": "sw_2", "score": "0.91"}}});
        assert_eq!(best(&s), Some(("sw_2".to_owned(), Some(0.91))));
        assert_eq!(best(&json!({"properties": {}})), None);
    }
}
