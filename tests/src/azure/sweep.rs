//! Sweep jobs in the stand-in: the body checked as the 2025-12-01 definitions close it
//! (`SweepJob` with JobBase, `TrialComponent`, `SamplingAlgorithm` and its three kinds,
//! `Objective`, `SweepJobLimits`, `EarlyTerminationPolicy` and its three kinds — unknown
//! properties, missing required ones and values outside the closed enums are a 400), stored as the
//! service answers it, then run by `sweep_run`. Trials are child jobs named `{sweep}_{n}`, listed
//! by Run History (`/history/v1.0{workspace}/runs/{sweep}/children`, `PaginatedRunList`).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{now_rfc3339, Job, Shared};

const JOB_BASE: &[&str] = &[
    "componentId",
    "computeId",
    "description",
    "displayName",
    "experimentName",
    "identity",
    "isArchived",
    "jobType",
    "notificationSetting",
    "properties",
    "services",
    "status",
    "tags",
];
const SWEEP_OWN: &[&str] = &[
    "earlyTermination",
    "inputs",
    "limits",
    "objective",
    "outputs",
    "queueSettings",
    "samplingAlgorithm",
    "searchSpace",
    "trial",
];
const TRIAL: &[&str] = &[
    "codeId",
    "command",
    "distribution",
    "environmentId",
    "environmentVariables",
    "resources",
];
/// Distributions the stand-in samples, and their argument counts (the SDK's REST form).
const DISTRIBUTIONS: &[(&str, usize)] = &[
    ("choice", 1),
    ("randint", 1),
    ("uniform", 2),
    ("loguniform", 2),
    ("normal", 2),
    ("lognormal", 2),
    ("quniform", 3),
    ("qloguniform", 3),
    ("qnormal", 3),
    ("qlognormal", 3),
];

fn int32(v: &Value) -> bool {
    v.is_null() || v.as_i64().is_some_and(|n| i32::try_from(n).is_ok())
}

/// An ISO 8601 duration of days, hours, minutes and seconds (`P1D`, `PT2H30M`, `PT45.5S`).
pub(crate) fn duration_secs(s: &str) -> Option<f64> {
    let rest = s.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut secs = 0.0;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
            } else {
                let mult = units.iter().find(|(u, _)| *u == c)?.1;
                secs += num.parse::<f64>().ok()? * mult;
                num.clear();
                any = true;
            }
        }
        num.is_empty().then_some(())
    };
    take(days, &[('D', 86400.0)])?;
    if let Some(t) = time {
        take(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    any.then_some(secs)
}

fn only(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), String> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{what}.{k} is not a property of {what}.")),
        None => Ok(()),
    }
}

fn object<'a>(p: &'a Value, key: &str) -> Result<&'a Map<String, Value>, String> {
    p.get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{key} is required and must be an object."))
}

/// Checks a sweep's `properties` as the service does; the message of its 400 otherwise.
pub(crate) fn check(p: &Value) -> Result<(), String> {
    let props = p.as_object().ok_or("properties must be an object.")?;
    let allowed: Vec<&str> = JOB_BASE.iter().chain(SWEEP_OWN).copied().collect();
    only(props, &allowed, "SweepJob")?;
    let objective = object(p, "objective")?;
    only(objective, &["goal", "primaryMetric"], "Objective")?;
    match objective.get("goal").and_then(Value::as_str) {
        Some("Minimize" | "Maximize") => {}
        g => {
            return Err(format!(
                "Objective.goal {g:?} is not one of Minimize, Maximize."
            ))
        }
    }
    if !objective
        .get("primaryMetric")
        .and_then(Value::as_str)
        .is_some_and(|m| m.chars().any(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err("Objective.primaryMetric is required.".into());
    }
    let sampling = object(p, "samplingAlgorithm")?;
    match sampling
        .get("samplingAlgorithmType")
        .and_then(Value::as_str)
    {
        Some("Random") => {
            only(
                sampling,
                &["samplingAlgorithmType", "rule", "seed"],
                "RandomSamplingAlgorithm",
            )?;
            if !matches!(
                sampling.get("rule").map(|r| r.as_str()),
                None | Some(Some("Random" | "Sobol"))
            ) {
                return Err("RandomSamplingAlgorithm.rule is not one of Random, Sobol.".into());
            }
            if !sampling.get("seed").is_none_or(int32) {
                return Err("RandomSamplingAlgorithm.seed is not an int32.".into());
            }
        }
        Some(t @ ("Grid" | "Bayesian")) => only(
            sampling,
            &["samplingAlgorithmType"],
            &format!("{t}SamplingAlgorithm"),
        )?,
        t => {
            return Err(format!(
                "samplingAlgorithmType {t:?} is not one of Grid, Random, Bayesian."
            ))
        }
    }
    let space = object(p, "searchSpace")?;
    if space.is_empty() {
        return Err("searchSpace must name at least one parameter.".into());
    }
    for (k, d) in space {
        let ok = d.as_array().is_some_and(|a| {
            a.len() == 2
                && a[1].is_array()
                && DISTRIBUTIONS
                    .iter()
                    .any(|(n, c)| a[0] == *n && a[1].as_array().is_some_and(|x| x.len() == *c))
        });
        if !ok {
            return Err(format!("searchSpace.{k}: {d} is not a distribution."));
        }
        if sampling.get("samplingAlgorithmType") == Some(&json!("Grid")) && d[0] != "choice" {
            return Err(format!(
                "Grid sampling supports choice only; searchSpace.{k} is {}.",
                d[0]
            ));
        }
    }
    let trial = object(p, "trial")?;
    only(trial, TRIAL, "TrialComponent")?;
    for req in ["command", "environmentId"] {
        if trial
            .get(req)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(format!("TrialComponent.{req} is required."));
        }
    }
    if let Some(l) = p.get("limits").filter(|l| !l.is_null()) {
        let l = l.as_object().ok_or("limits must be an object.")?;
        only(
            l,
            &[
                "jobLimitsType",
                "maxConcurrentTrials",
                "maxTotalTrials",
                "timeout",
                "trialTimeout",
            ],
            "SweepJobLimits",
        )?;
        if l.get("jobLimitsType") != Some(&json!("Sweep")) {
            return Err("limits.jobLimitsType must be Sweep.".into());
        }
        for k in ["maxConcurrentTrials", "maxTotalTrials"] {
            if !l
                .get(k)
                .is_none_or(|v| int32(v) && v.as_i64().is_none_or(|n| n >= 1))
            {
                return Err(format!("limits.{k}: {} is not a positive int32.", l[k]));
            }
        }
        for k in ["timeout", "trialTimeout"] {
            if let Some(v) = l.get(k).filter(|v| !v.is_null()) {
                if !v.as_str().and_then(duration_secs).is_some_and(|s| s > 0.0) {
                    return Err(format!("limits.{k}: {v} is not an ISO 8601 duration."));
                }
            }
        }
    }
    if let Some(e) = p.get("earlyTermination").filter(|e| !e.is_null()) {
        let e = e
            .as_object()
            .ok_or("earlyTermination must be an object or null.")?;
        let common = ["policyType", "delayEvaluation", "evaluationInterval"];
        let (name, own): (&str, &[&str]) = match e.get("policyType").and_then(Value::as_str) {
            Some("Bandit") => ("BanditPolicy", &["slackAmount", "slackFactor"]),
            Some("MedianStopping") => ("MedianStoppingPolicy", &[]),
            Some("TruncationSelection") => ("TruncationSelectionPolicy", &["truncationPercentage"]),
            t => return Err(format!("earlyTermination.policyType {t:?} is not one of Bandit, MedianStopping, TruncationSelection.")),
        };
        let all: Vec<&str> = common.iter().chain(own).copied().collect();
        only(e, &all, name)?;
        for k in [
            "delayEvaluation",
            "evaluationInterval",
            "truncationPercentage",
        ] {
            if !e.get(k).is_none_or(int32) {
                return Err(format!("{name}.{k} is not an int32."));
            }
        }
        for k in ["slackAmount", "slackFactor"] {
            if !e.get(k).is_none_or(|v| v.is_number()) {
                return Err(format!("{name}.{k} is not a number."));
            }
        }
    }
    Ok(())
}

/// Stores a checked sweep as the service answers it and starts it. `image` is the trial
/// environment's image. Returns the stored body.
pub(crate) fn start(sh: &Arc<Shared>, ws_id: &str, id: &str, p: &Value, image: String) -> Value {
    let key = format!("{ws_id}/jobs/{id}");
    let base = sh.base_url.lock().unwrap().clone();
    let host = base.trim_start_matches("https://");
    let mut props = p.clone();
    props["status"] = json!("NotStarted");
    props["experimentName"] = p.get("experimentName").cloned().unwrap_or(json!("Default"));
    props["displayName"] = p.get("displayName").cloned().unwrap_or(json!(id));
    props["isArchived"] = json!(false);
    props["properties"] = json!({"azureml.runsource": "hyperdrive"});
    let mut limits = p
        .get("limits")
        .cloned()
        .unwrap_or(json!({"jobLimitsType": "Sweep"}));
    if limits.get("timeout").is_none_or(Value::is_null) {
        limits["timeout"] = json!("P10D");
    }
    props["limits"] = limits;
    props["services"] = json!({
        "Tracking": {"jobServiceType": "Tracking", "endpoint": format!("azureml://{host}/mlflow/v1.0{ws_id}?")},
        "Studio": {"jobServiceType": "Studio", "endpoint": format!("https://ml.azure.com/runs/{id}?wsid={ws_id}")},
    });
    let now = now_rfc3339();
    let body = json!({
        "id": key, "name": id,
        "type": "Microsoft.MachineLearningServices/workspaces/jobs",
        "properties": props,
        "systemData": {"createdAt": now, "createdBy": "envbuild-e2e", "createdByType": "User",
                       "lastModifiedAt": now, "lastModifiedBy": "envbuild-e2e", "lastModifiedByType": "User"},
    });
    let dir = sh.job_dir(id);
    let _ = std::fs::create_dir_all(dir.join("user_logs"));
    sh.state.lock().unwrap().jobs.insert(
        key.clone(),
        Job {
            body: body.clone(),
            dir,
            cancel: false,
        },
    );
    super::sweep_run::spawn(sh, key, image);
    body
}

/// `GET /history/v1.0/subscriptions/…/workspaces/{ws}/runs/{id}/children`: the trials of a
/// sweep as Run History's PaginatedRunList, or None for an unknown run.
pub(crate) fn children(sh: &Shared, ws_id: &str, parent: &str) -> Option<Value> {
    let st = sh.state.lock().unwrap();
    st.jobs.get(&format!("{ws_id}/jobs/{parent}"))?;
    let prefix = format!("{ws_id}/jobs/{parent}_");
    let mut kids: Vec<(u64, Value)> = st
        .jobs
        .iter()
        .filter_map(|(k, j)| {
            let n: u64 = k.strip_prefix(&prefix)?.parse().ok()?;
            let p = &j.body["properties"];
            Some((
                n,
                json!({
                    "runId": j.body["name"],
                    "parentRunId": parent,
                    "rootRunId": parent,
                    "experimentId": p["experimentName"],
                    "displayName": p["displayName"],
                    "status": p["status"],
                    "startTimeUtc": p["properties"]["StartTimeUtc"],
                    "endTimeUtc": p["properties"]["EndTimeUtc"],
                    "tags": p["tags"],
                    "properties": p["properties"],
                }),
            ))
        })
        .collect();
    kids.sort_by_key(|k| k.0);
    Some(json!({
        "value": kids.into_iter().map(|k| k.1).collect::<Vec<_>>(),
        "continuationToken": null, "count": null, "nextLink": null,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Value {
        json!({
            "jobType": "Sweep", "computeId": "c", "experimentName": "e",
            "objective": {"goal": "Maximize", "primaryMetric": "test_accuracy"},
            "samplingAlgorithm": {"samplingAlgorithmType": "Random", "rule": "Random", "seed": 3},
            "searchSpace": {"lr": ["loguniform", [-9.2, -2.3]], "batch_size": ["choice", [[64, 128]]]},
            "trial": {"command": "t --lr ${{search_space.lr}}", "environmentId": "e", "resources": {"instanceCount": 1}},
            "limits": {"jobLimitsType": "Sweep", "maxTotalTrials": 4, "maxConcurrentTrials": 2, "timeout": "PT2H", "trialTimeout": "PT30M"},
            "earlyTermination": {"policyType": "Bandit", "slackFactor": 0.1, "evaluationInterval": 1, "delayEvaluation": 2},
        })
    }

    #[test]
    fn sweep_bodies_are_checked_as_the_definitions_close_them() {
        check(&good()).unwrap();
        let bad = |f: &dyn Fn(&mut Value), needle: &str| {
            let mut b = good();
            f(&mut b);
            let e = check(&b).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        };
        bad(
            &|b| b["objective"]["goal"] = json!("maximize"),
            "Objective.goal",
        );
        bad(
            &|b| {
                b.as_object_mut().unwrap().remove("trial");
            },
            "trial is required",
        );
        bad(
            &|b| b["trial"]["inputs"] = json!({}),
            "TrialComponent.inputs is not a property",
        );
        bad(&|b| b["limits"]["timeout"] = json!("2h"), "limits.timeout");
        bad(
            &|b| b["limits"]["maxTotalTrials"] = json!(0),
            "limits.maxTotalTrials",
        );
        bad(
            &|b| b["samplingAlgorithm"]["samplingAlgorithmType"] = json!("Sobol"),
            "samplingAlgorithmType",
        );
        bad(
            &|b| b["samplingAlgorithm"] = json!({"samplingAlgorithmType": "Grid"}),
            "Grid sampling supports choice only",
        );
        bad(
            &|b| b["earlyTermination"]["slack"] = json!(1),
            "BanditPolicy.slack is not a property",
        );
        bad(
            &|b| b["searchSpace"]["lr"] = json!(["loguniform", [1]]),
            "searchSpace.lr",
        );
        bad(
            &|b| b["maxTrials"] = json!(3),
            "SweepJob.maxTrials is not a property",
        );
        assert_eq!(duration_secs("PT1H30M"), Some(5400.0));
        assert_eq!(duration_secs("P1DT1S"), Some(86401.0));
        assert_eq!(duration_secs("PT"), None);
        assert_eq!(duration_secs("2h"), None);
    }
}
