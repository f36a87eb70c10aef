//! Runs a sweep for real: draws the trials (grid: every combination of the choices in order;
//! random and bayesian: a seeded generator, the `seed` of RandomSamplingAlgorithm or 0), starts
//! each as a child command job `{sweep}_{n}` on the Docker engine (the `runner`), never more than
//! `maxConcurrentTrials` at once and `maxTotalTrials` in all, reads each trial's primary metric
//! from the MLflow tracking server, applies `trialTimeout`, `timeout` (the sweep ends Canceled)
//! and a Bandit policy, and names the best completed trial in the sweep's properties
//! (`best_child_run_id`, `score`) as the service does.
//!
//! Bandit, as Azure ML documents it: each logged value of the primary metric is one interval; at
//! interval i (i > delayEvaluation, i a multiple of evaluationInterval) a trial whose value is
//! worse than the best value any trial logged at interval i by more than the slack (slackFactor:
//! best/(1+f) when maximizing, best·(1+f) when minimizing; slackAmount: best ∓ a) is canceled.
//! MedianStopping and TruncationSelection are accepted and not applied. Every start, end and
//! cancel is a line of `trials.txt` in the sweep's directory.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{now_rfc3339, tracking, Job, Shared};

pub(crate) fn spawn(sh: &Arc<Shared>, key: String, image: String) {
    let sh = sh.clone();
    tokio::runtime::Handle::current().spawn(async move {
        drive(sh, key, image).await;
    });
}

/// A small seeded generator (SplitMix64): the same seed draws the same trials.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-300), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// One value of a distribution in the SDK's REST form.
fn draw(d: &Value, rng: &mut Rng) -> Value {
    let a = |i: usize| d[1][i].as_f64().unwrap_or(0.0);
    let q = |x: f64, q: f64| (x / q).round() * q;
    let x = match d[0].as_str().unwrap_or("") {
        "choice" => {
            let v = d[1][0].as_array().cloned().unwrap_or_default();
            return v[(rng.next() % v.len().max(1) as u64) as usize].clone();
        }
        "randint" => return json!(rng.next() % (a(0).max(1.0) as u64)),
        "uniform" => a(0) + rng.unit() * (a(1) - a(0)),
        "loguniform" => (a(0) + rng.unit() * (a(1) - a(0))).exp(),
        "quniform" => q(a(0) + rng.unit() * (a(1) - a(0)), a(2)),
        "qloguniform" => q((a(0) + rng.unit() * (a(1) - a(0))).exp(), a(2)),
        "normal" => a(0) + a(1) * rng.normal(),
        "lognormal" => (a(0) + a(1) * rng.normal()).exp(),
        "qnormal" => q(a(0) + a(1) * rng.normal(), a(2)),
        _ => q((a(0) + a(1) * rng.normal()).exp(), a(2)),
    };
    json!(x)
}

/// The trials' values: grid in order, else `n` seeded draws.
pub(crate) fn samples(
    space: &Map<String, Value>,
    algo: &Value,
    n: usize,
) -> Vec<Map<String, Value>> {
    if algo["samplingAlgorithmType"] == "Grid" {
        let mut out = vec![Map::new()];
        for (k, d) in space {
            let values = d[1][0].as_array().cloned().unwrap_or_default();
            out = out
                .into_iter()
                .flat_map(|m| {
                    values.iter().map(move |v| {
                        let mut m = m.clone();
                        m.insert(k.clone(), v.clone());
                        m
                    })
                })
                .collect();
        }
        out.truncate(n);
        return out;
    }
    let mut rng = Rng(algo["seed"].as_u64().unwrap_or(0));
    (0..n)
        .map(|_| {
            space
                .iter()
                .map(|(k, d)| (k.clone(), draw(d, &mut rng)))
                .collect()
        })
        .collect()
}

fn record(sh: &Shared, sweep: &str, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sh.job_dir(sweep).join("trials.txt"))
    {
        let _ = writeln!(f, "{line}");
    }
}

fn status_of(sh: &Shared, key: &str) -> String {
    let st = sh.state.lock().unwrap();
    st.jobs.get(key).map_or(String::new(), |j| {
        j.body["properties"]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    })
}

fn cancel(sh: &Shared, key: &str) {
    if let Some(j) = sh.state.lock().unwrap().jobs.get_mut(key) {
        j.cancel = true;
    }
}

const TERMINAL: [&str; 3] = ["Completed", "Failed", "Canceled"];

/// Creates child `n` of the sweep and starts it on the runner.
fn start_trial(
    sh: &Arc<Shared>,
    sweep_key: &str,
    n: usize,
    values: &Map<String, Value>,
    image: &str,
) -> String {
    let body = sh.state.lock().unwrap().jobs[sweep_key].body.clone();
    let p = &body["properties"];
    let sweep = body["name"].as_str().unwrap_or("sweep");
    let id = format!("{sweep}_{n}");
    let mut command = p["trial"]["command"].as_str().unwrap_or("").to_owned();
    for (k, v) in values {
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        command = command.replace(&format!("${{{{search_space.{k}}}}}",), &text);
        command = command.replace(&format!("${{{{ search_space.{k} }}}}"), &text);
    }
    let ws_id = sweep_key.rsplit_once("/jobs/").map_or("", |(w, _)| w);
    let artifacts = format!("azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.{id}");
    let mut outputs = p["outputs"].as_object().cloned().unwrap_or_default();
    for (name, o) in outputs.iter_mut() {
        o["uri"] = json!(format!("{artifacts}/outputs/{name}"));
    }
    let mut limits = json!({"jobLimitsType": "Command"});
    if let Some(t) = p["limits"]["trialTimeout"].as_str() {
        limits["timeout"] = json!(t);
    }
    let child = json!({
        "id": format!("{ws_id}/jobs/{id}"), "name": id,
        "type": "Microsoft.MachineLearningServices/workspaces/jobs",
        "properties": {
            "jobType": "Command", "command": command,
            "environmentId": p["trial"]["environmentId"],
            "environmentVariables": p["trial"]["environmentVariables"],
            "computeId": p["computeId"], "experimentName": p["experimentName"],
            "displayName": id, "inputs": p["inputs"], "outputs": outputs,
            "resources": {"instanceCount": 1, "shmSize": "2g"}, "limits": limits,
            "status": "NotStarted", "isArchived": false,
            "tags": {"hyperparameters": Value::Object(values.clone()).to_string()},
            "properties": {"azureml.runsource": "azureml.CommandJob", "azureml.parentRunId": sweep},
            "services": p["services"],
        },
    });
    let key = format!("{ws_id}/jobs/{id}");
    let dir = sh.job_dir(&id);
    let _ = std::fs::create_dir_all(dir.join("user_logs"));
    sh.state.lock().unwrap().jobs.insert(
        key.clone(),
        Job {
            body: child,
            dir,
            cancel: false,
        },
    );
    super::runner::spawn(sh, key.clone(), image.to_owned());
    key
}

fn set(sh: &Shared, key: &str, f: impl FnOnce(&mut Value)) {
    if let Some(j) = sh.state.lock().unwrap().jobs.get_mut(key) {
        f(&mut j.body["properties"]);
    }
}

async fn drive(sh: Arc<Shared>, key: String, image: String) {
    let body = sh.state.lock().unwrap().jobs[&key].body.clone();
    let p = &body["properties"];
    let sweep = body["name"].as_str().unwrap_or("sweep").to_owned();
    let step = sh.state.lock().unwrap().step;
    let metric = p["objective"]["primaryMetric"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let maximize = p["objective"]["goal"] == "Maximize";
    let better = |a: f64, b: f64| if maximize { a > b } else { a < b };
    let space = p["searchSpace"].as_object().cloned().unwrap_or_default();
    let l = &p["limits"];
    let total = l["maxTotalTrials"].as_u64().unwrap_or(1000) as usize;
    let plan = samples(&space, &p["samplingAlgorithm"], total);
    let concurrent = l["maxConcurrentTrials"]
        .as_u64()
        .map_or(plan.len(), |c| c as usize)
        .max(1);
    let secs = |v: &Value| {
        v.as_str()
            .and_then(super::sweep::duration_secs)
            .map(Duration::from_secs_f64)
    };
    let timeout = secs(&l["timeout"]);
    let trial_timeout = secs(&l["trialTimeout"]);
    let e = &p["earlyTermination"];
    let bandit = (e["policyType"] == "Bandit").then(|| {
        (
            e["evaluationInterval"].as_u64().unwrap_or(1).max(1) as usize,
            e["delayEvaluation"].as_u64().unwrap_or(0) as usize,
            e["slackFactor"].as_f64(),
            e["slackAmount"].as_f64(),
        )
    });
    set(&sh, &key, |p| {
        p["status"] = json!("Running");
        p["properties"]["StartTimeUtc"] = json!(now_rfc3339());
    });
    let started = Instant::now();
    let mut next = 0;
    let mut running: Vec<(String, String, Instant)> = Vec::new(); // (child key, id, start)
    let mut all: Vec<String> = Vec::new();
    let mut evaluated: BTreeMap<String, usize> = BTreeMap::new();
    let mut end = "Completed";
    loop {
        let parent_canceled = sh
            .state
            .lock()
            .unwrap()
            .jobs
            .get(&key)
            .is_some_and(|j| j.cancel);
        let timed_out = timeout.is_some_and(|t| started.elapsed() >= t);
        if parent_canceled || timed_out {
            record(
                &sh,
                &sweep,
                &format!(
                    "{} sweep canceled",
                    if timed_out { "timeout" } else { "cancel" }
                ),
            );
            for (k, ..) in &running {
                cancel(&sh, k);
            }
            while running
                .iter()
                .any(|(k, ..)| !TERMINAL.contains(&status_of(&sh, k).as_str()))
            {
                tokio::time::sleep(step).await;
            }
            end = "Canceled";
            break;
        }
        running.retain(|(k, id, _)| {
            let s = status_of(&sh, k);
            let done = TERMINAL.contains(&s.as_str());
            if done {
                record(&sh, &sweep, &format!("end {id} {s}"));
            }
            !done
        });
        while running.len() < concurrent && next < plan.len() {
            let k = start_trial(&sh, &key, next, &plan[next], &image);
            let id = format!("{sweep}_{next}");
            record(
                &sh,
                &sweep,
                &format!("start {id} active={}", running.len() + 1),
            );
            running.push((k, id.clone(), Instant::now()));
            all.push(id);
            next += 1;
        }
        if running.is_empty() && next >= plan.len() {
            break;
        }
        for (k, id, since) in &running {
            if trial_timeout.is_some_and(|t| since.elapsed() >= t)
                && !sh.state.lock().unwrap().jobs[k].cancel
            {
                record(&sh, &sweep, &format!("trialTimeout {id}"));
                cancel(&sh, k);
            }
        }
        if let Some((interval, delay, factor, amount)) = bandit {
            let mut hist = BTreeMap::new();
            for id in &all {
                hist.insert(id.clone(), tracking::history(&sh, id, &metric).await);
            }
            for (k, id, _) in &running {
                let mine = &hist[id];
                let i = mine.len();
                if i == 0 || i <= delay || i % interval != 0 || evaluated.get(id) == Some(&i) {
                    continue;
                }
                // Compared once another trial reached interval i too (a trial alone is the best).
                if hist.values().filter(|h| h.len() >= i).count() < 2 {
                    continue;
                }
                evaluated.insert(id.clone(), i);
                let best = hist
                    .values()
                    .filter_map(|h| h.get(i - 1).map(|m| m.1))
                    .fold(None, |b: Option<f64>, v| {
                        Some(b.map_or(v, |b| if better(v, b) { v } else { b }))
                    });
                let (Some(best), v) = (best, mine[i - 1].1) else {
                    continue;
                };
                let limit = match (factor, amount, maximize) {
                    (Some(f), _, true) => best / (1.0 + f),
                    (Some(f), _, false) => best * (1.0 + f),
                    (None, Some(a), true) => best - a,
                    (None, Some(a), false) => best + a,
                    _ => continue,
                };
                if better(limit, v) {
                    record(
                        &sh,
                        &sweep,
                        &format!("bandit {id} at interval {i}: {v} against best {best}"),
                    );
                    cancel(&sh, k);
                }
            }
        }
        tokio::time::sleep(step).await;
    }
    // The best completed trial, by the last value of its primary metric.
    let mut best: Option<(String, f64)> = None;
    let mut completed = 0;
    for id in &all {
        if status_of(
            &sh,
            &format!(
                "{}/jobs/{id}",
                key.rsplit_once("/jobs/").map_or("", |x| x.0)
            ),
        ) != "Completed"
        {
            continue;
        }
        completed += 1;
        if let Some(&(_, v)) = tracking::history(&sh, id, &metric).await.last() {
            if best.as_ref().is_none_or(|(_, b)| better(v, *b)) {
                best = Some((id.clone(), v));
            }
        }
    }
    if end == "Completed" && completed == 0 {
        end = "Failed";
    }
    record(&sh, &sweep, &format!("done {end}"));
    set(&sh, &key, |p| {
        if let Some((id, v)) = &best {
            p["properties"]["best_child_run_id"] = json!(id);
            p["properties"]["score"] = json!(v.to_string());
        }
        p["properties"]["EndTimeUtc"] = json!(now_rfc3339());
        p["status"] = json!(end);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_takes_every_combination_and_random_repeats_with_its_seed() {
        let space: Map<String, Value> = serde_json::from_value(json!({
            "a": ["choice", [[1, 2]]], "b": ["choice", [["x", "y", "z"]]],
        }))
        .unwrap();
        let g = samples(&space, &json!({"samplingAlgorithmType": "Grid"}), 100);
        assert_eq!(g.len(), 6);
        assert_eq!(
            g[0],
            serde_json::from_value::<Map<String, Value>>(json!({"a": 1, "b": "x"})).unwrap()
        );
        let lr: Map<String, Value> =
            serde_json::from_value(json!({"lr": ["loguniform", [(1e-4f64).ln(), (0.1f64).ln()]]}))
                .unwrap();
        let algo = json!({"samplingAlgorithmType": "Random", "seed": 5});
        let r1 = samples(&lr, &algo, 50);
        assert_eq!(r1, samples(&lr, &algo, 50));
        assert!(r1
            .iter()
            .all(|m| (1e-4..=0.1).contains(&m["lr"].as_f64().unwrap())));
        assert_ne!(
            r1,
            samples(
                &lr,
                &json!({"samplingAlgorithmType": "Random", "seed": 6}),
                50
            )
        );
    }
}
