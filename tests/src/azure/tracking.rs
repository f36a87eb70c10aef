//! The stand-in's MLflow side: a real MLflow tracking server (started by the test) that every
//! job reports to, as an Azure ML job reports to its workspace's tracking service. Each job gets
//! an MLflow run in the experiment of its `experimentName` and the variables Azure ML sets for it
//! (MLFLOW_TRACKING_URI, MLFLOW_RUN_ID, MLFLOW_EXPERIMENT_ID, MLFLOW_EXPERIMENT_NAME); the job's
//! MLflow run id is kept in `mlflow_run_id.txt` in its directory, since a real MLflow server
//! picks run ids itself where Azure ML uses the job's name.

use serde_json::{json, Value};

use super::Shared;

/// The tracking server's URL, if the test gave the stand-in one.
pub(crate) fn server(sh: &Shared) -> Option<String> {
    sh.state.lock().unwrap().mlflow.clone()
}

/// The MLflow run id of job `id`, once its run exists.
pub(crate) fn run_id(sh: &Shared, id: &str) -> Option<String> {
    std::fs::read_to_string(sh.job_dir(id).join("mlflow_run_id.txt"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> Result<Value, String> {
    let c = reqwest::Client::new();
    let mut rb = c.request(method, &url);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("{url}: {e}"))
}

/// Creates job `id`'s MLflow run (in experiment `experiment`, made when missing) and returns the
/// variables the job's processes get.
pub(crate) async fn start_run(
    sh: &Shared,
    base: &str,
    id: &str,
    experiment: &str,
) -> Result<Vec<String>, String> {
    let api = format!("{base}/api/2.0/mlflow");
    let by_name = || {
        call(
            reqwest::Method::GET,
            format!("{api}/experiments/get-by-name?experiment_name={experiment}"),
            None,
        )
    };
    let exp = match by_name().await {
        Ok(v) => v["experiment"]["experiment_id"].clone(),
        // Made here, or by a trial started at the same moment (then it exists: read it).
        Err(_) => match call(
            reqwest::Method::POST,
            format!("{api}/experiments/create"),
            Some(json!({ "name": experiment })),
        )
        .await
        {
            Ok(v) => v["experiment_id"].clone(),
            Err(_) => by_name().await?["experiment"]["experiment_id"].clone(),
        },
    };
    let exp_id = exp.as_str().unwrap_or_default().to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let run = call(
        reqwest::Method::POST,
        format!("{api}/runs/create"),
        Some(json!({
            "experiment_id": exp_id, "run_name": id, "start_time": now,
            "tags": [{"key": "mlflow.runName", "value": id}, {"key": "azureml.job", "value": id}],
        })),
    )
    .await?;
    let run_id = run["run"]["info"]["run_id"]
        .as_str()
        .ok_or_else(|| format!("runs/create answered without a run id: {run}"))?
        .to_owned();
    std::fs::write(sh.job_dir(id).join("mlflow_run_id.txt"), &run_id).map_err(|e| e.to_string())?;
    Ok(vec![
        format!("MLFLOW_TRACKING_URI={base}"),
        format!("MLFLOW_RUN_ID={run_id}"),
        format!("MLFLOW_EXPERIMENT_ID={exp_id}"),
        format!("MLFLOW_EXPERIMENT_NAME={experiment}"),
    ])
}

/// Every value of `key` that job `id` logged: (step, value), in step order.
pub(crate) async fn history(sh: &Shared, id: &str, key: &str) -> Vec<(i64, f64)> {
    let (Some(base), Some(run)) = (server(sh), run_id(sh, id)) else {
        return Vec::new();
    };
    let url = format!("{base}/api/2.0/mlflow/metrics/get-history?run_id={run}&metric_key={key}");
    let mut out: Vec<(i64, f64)> = match call(reqwest::Method::GET, url, None).await {
        Ok(v) => v["metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| Some((m["step"].as_i64().unwrap_or(0), m["value"].as_f64()?)))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort_by_key(|m| m.0);
    out
}

/// `GET {mlflow}/api/2.0/mlflow/runs/get?run_id=JOB` as the workspace's tracking endpoint answers
/// it: the job name stands for its MLflow run. (status, body).
pub(crate) fn runs_get(sh: &Shared, job: &str) -> (u16, Value) {
    let missing = |m: String| {
        (
            404,
            json!({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": m}),
        )
    };
    let Some(base) = server(sh) else {
        return missing("This workspace has no tracking server in the stand-in.".into());
    };
    let Some(run) = run_id(sh, job) else {
        return missing(format!("Run '{job}' not found."));
    };
    let url = format!("{base}/api/2.0/mlflow/runs/get?run_id={run}");
    // The ARM handler runs on a blocking thread inside the server's runtime: a plain thread
    // keeps reqwest's blocking client out of it.
    let got = std::thread::spawn(move || -> Result<(u16, String), String> {
        let r = reqwest::blocking::get(&url).map_err(|e| e.to_string())?;
        let s = r.status().as_u16();
        Ok((s, r.text().map_err(|e| e.to_string())?))
    })
    .join()
    .unwrap_or_else(|_| Err("panicked".into()));
    match got {
        Ok((s, t)) => (s, serde_json::from_str(&t).unwrap_or(Value::Null)),
        Err(e) => (
            503,
            json!({"error_code": "TEMPORARILY_UNAVAILABLE", "message": e}),
        ),
    }
}
