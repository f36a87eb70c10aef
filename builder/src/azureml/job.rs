//! Jobs: the command job's body (the trainer, or the user's command in a code asset, with
//! `${{inputs.*}}`/`${{outputs.*}}` left for the service; folder, file and literal inputs); submit
//! of any [`JobBody`], follow with backoff until a terminal status, cancel, the log's tail if served.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use thiserror::Error;

use super::options::JobOptions;
use super::{lro, valid_name, AzureError, Client, NameRule};

/// Where the trainer lives in envbuild images.
pub const TRAINER: &str = "/opt/envbuild/bin/trainer";
/// Statuses after which a job does not change. Not NotResponding: the REST specification's
/// JobStatus says a run can go from NotResponding back to any earlier state, so a follower keeps
/// following it (and warns).
pub const TERMINAL: [&str; 4] = ["Completed", "Failed", "Canceled", "Paused"];

/// A command job to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandJob {
    pub id: String,
    pub command: String,
    /// Full ARM id of the environment version.
    pub environment_id: String,
    /// Full ARM id of the compute; None = serverless.
    pub compute_id: Option<String>,
    pub display_name: Option<String>,
    pub experiment_name: String,
    pub environment_variables: BTreeMap<String, String>,
    /// Full ARM id of the code version the command runs in (its working directory); None: the
    /// image's own files only.
    pub code_id: Option<String>,
    /// Input name → a folder or file URI, or a literal value.
    pub inputs: BTreeMap<String, Input>,
    /// Output names (uri_folder, read-write mount).
    pub outputs: Vec<String>,
    pub instance_type: Option<String>,
    pub instance_count: u32,
    /// Processes per instance of a PyTorch distribution (`distributionType: PyTorch`): the
    /// service starts this many per node and sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE,
    /// NODE_RANK, RANK and LOCAL_RANK. `None`: no distribution (one process, one instance).
    pub processes_per_instance: Option<u32>,
    /// ISO 8601 duration, e.g. `PT2H`.
    pub timeout: String,
    pub tags: BTreeMap<String, String>,
    /// Tier, identity, /dev/shm size, notifications (unset: the service's defaults).
    pub options: JobOptions,
}

/// One input of a job, as the service takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `uri_folder`: a folder (`azureml://datastores/…/paths/…/`, `https://…`), mounted read-only.
    Folder(String),
    /// `uri_file`: one file, mounted read-only; `${{inputs.NAME}}` is its path.
    File(String),
    /// `literal`: the value itself, put into the command in place of `${{inputs.NAME}}`.
    Literal(String),
}

impl Input {
    /// The JobInput body: UriFolderJobInput, UriFileJobInput or LiteralJobInput.
    pub fn body(&self) -> Value {
        match self {
            Input::Folder(uri) => {
                json!({"jobInputType": "uri_folder", "uri": uri, "mode": "ReadOnlyMount"})
            }
            Input::File(uri) => {
                json!({"jobInputType": "uri_file", "uri": uri, "mode": "ReadOnlyMount"})
            }
            Input::Literal(v) => json!({"jobInputType": "literal", "value": v}),
        }
    }
}

/// A job's `inputs` (read-only `uri_folder` mounts of the URIs) and `outputs` (read-write
/// `uri_folder` mounts), as sweep jobs send them.
pub fn io_bodies(
    inputs: &BTreeMap<String, String>,
    outputs: &[String],
) -> (
    serde_json::Map<String, Value>,
    serde_json::Map<String, Value>,
) {
    let typed: BTreeMap<String, Input> = inputs
        .iter()
        .map(|(k, uri)| (k.clone(), Input::Folder(uri.clone())))
        .collect();
    typed_io_bodies(&typed, outputs)
}

/// A job's `inputs` of each kind and its `outputs` (read-write `uri_folder` mounts).
pub fn typed_io_bodies(
    inputs: &BTreeMap<String, Input>,
    outputs: &[String],
) -> (
    serde_json::Map<String, Value>,
    serde_json::Map<String, Value>,
) {
    let inputs = inputs.iter().map(|(k, i)| (k.clone(), i.body())).collect();
    let outputs = outputs
        .iter()
        .map(|k| {
            (
                k.clone(),
                json!({"jobOutputType": "uri_folder", "mode": "ReadWriteMount"}),
            )
        })
        .collect();
    (inputs, outputs)
}

/// The names a job's service checks before anything runs: the job's own, and its inputs' and
/// outputs' (no `-`: they become `${{inputs.NAME}}`).
pub fn check_names<'a>(
    id: &str,
    inputs: impl IntoIterator<Item = &'a String>,
    outputs: &'a [String],
) -> Result<(), AzureError> {
    if !valid_name(id) {
        return Err(AzureError::BadName {
            what: "job name",
            name: id.to_owned(),
            rule: NameRule::Job,
        });
    }
    for name in inputs.into_iter().chain(outputs.iter()) {
        if !valid_name(name) || name.contains('-') {
            return Err(AzureError::BadName {
                what: "input/output name",
                name: name.clone(),
                rule: NameRule::InputOutput,
            });
        }
    }
    Ok(())
}

/// Quotes one word for `/bin/sh` when it needs it (one quoting for both modes: `jobio`'s).
pub use crate::jobio::shell_quote;

/// The trainer's command line: `--data ${{inputs.data}}` when there is a `data` input,
/// `--output ${{outputs.<output>}}`, then the user's arguments, quoted.
pub fn trainer_command(has_data_input: bool, output: &str, args: &[String]) -> String {
    let mut c = TRAINER.to_owned();
    if has_data_input {
        c += " --data ${{inputs.data}}";
    }
    c += &format!(" --output ${{{{outputs.{output}}}}}");
    for a in args {
        c.push(' ');
        c += &shell_quote(a);
    }
    c
}

/// A `--timeout` that [`parse_timeout`] cannot read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("timeout `{text}` is not a duration (use e.g. 2h, 90m, 1h30m, 600s or PT2H)")]
pub struct BadDuration {
    pub text: String,
}

/// `2h`, `90m`, `45s`, `1h30m`, or ISO 8601 `PT…` → ISO 8601 (`PT2H`, `PT1H30M`).
pub fn parse_timeout(s: &str) -> Result<String, BadDuration> {
    let bad = || BadDuration { text: s.to_owned() };
    let t = s.trim();
    let body = t
        .strip_prefix("PT")
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| t.to_ascii_lowercase());
    let mut secs: u64 = 0;
    let mut num = String::new();
    for ch in body.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        secs = n
            .checked_mul(unit)
            .and_then(|d| secs.checked_add(d))
            .ok_or_else(bad)?;
    }
    if !num.is_empty() || secs == 0 {
        return Err(bad());
    }
    let (h, m, sec) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut iso = String::from("PT");
    for (v, u) in [(h, 'H'), (m, 'M'), (sec, 'S')] {
        if v > 0 {
            iso += &format!("{v}{u}");
        }
    }
    Ok(iso)
}

/// A fresh job id: `{prefix}-{unix seconds}-{4 hex}` (the asset name rule holds for a valid prefix).
pub fn new_job_id(prefix: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let salt = (now.subsec_nanos() ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("{}-{}-{salt:04x}", name_part(prefix), now.as_secs())
}

/// `s` as the start of an asset or job name: letters, digits, `-` and `_` (others become `-`),
/// at most 200, without leading `-` or `_` (the name must start with a letter or digit).
pub(crate) fn name_part(s: &str) -> String {
    let p: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(200)
        .collect();
    p.trim_start_matches(['-', '_']).to_owned()
}

/// A job envbuild can submit: a command job now, a sweep job next. [`submit`] PUTs any kind;
/// [`get`], [`cancel`], [`follow`] and [`log_tail`] need only the id, so they serve every kind.
pub trait JobBody {
    /// The job's name: the last part of `jobs/{id}`.
    fn id(&self) -> &str;
    /// Refuses what the service would refuse (names), before any request.
    fn check(&self) -> Result<(), AzureError>;
    /// The PUT body: `{"properties": {"jobType": …, …}}`.
    fn body(&self) -> Value;
}

impl JobBody for CommandJob {
    fn id(&self) -> &str {
        &self.id
    }

    fn check(&self) -> Result<(), AzureError> {
        self.options.check()?;
        // Without a distribution, N instances run N unrelated copies of the command, each
        // billed: refuse it rather than pay for it.
        if self.instance_count > 1 && self.processes_per_instance.is_none() {
            return Err(AzureError::Undistributed {
                instances: self.instance_count,
            });
        }
        check_names(&self.id, self.inputs.keys(), &self.outputs)?;
        for (name, i) in &self.inputs {
            // LiteralJobInput.value: minLength 1, pattern [a-zA-Z0-9_].
            if let Input::Literal(v) = i {
                if !v.chars().any(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(AzureError::BadLiteral {
                        name: name.clone(),
                        value: v.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn body(&self) -> Value {
        let (inputs, outputs) = typed_io_bodies(&self.inputs, &self.outputs);
        let mut resources = json!({"instanceCount": self.instance_count});
        if let Some(t) = &self.instance_type {
            resources["instanceType"] = json!(t);
        }
        let mut p = json!({
            "jobType": "Command",
            "command": self.command,
            "environmentId": self.environment_id,
            "experimentName": self.experiment_name,
            "environmentVariables": self.environment_variables,
            "inputs": inputs,
            "outputs": outputs,
            "resources": resources,
            "limits": {"jobLimitsType": "Command", "timeout": self.timeout},
            "tags": self.tags,
        });
        if let Some(c) = &self.compute_id {
            p["computeId"] = json!(c);
        }
        if let Some(c) = &self.code_id {
            p["codeId"] = json!(c);
        }
        if let Some(d) = &self.display_name {
            p["displayName"] = json!(d);
        }
        if let Some(k) = self.processes_per_instance {
            p["distribution"] =
                json!({"distributionType": "PyTorch", "processCountPerInstance": k});
        }
        self.options.apply(&mut p);
        json!({ "properties": p })
    }
}

/// Checks the job, then PUTs it; the service's answer (with `services.Studio.endpoint`).
pub fn submit(client: &Client, job: &impl JobBody) -> Result<Value, AzureError> {
    job.check()?;
    Ok(client
        .ws(
            Method::PUT,
            &format!("jobs/{}", job.id()),
            Some(&job.body()),
        )?
        .body)
}

pub fn get(client: &Client, id: &str) -> Result<Value, AzureError> {
    Ok(client.ws(Method::GET, &format!("jobs/{id}"), None)?.body)
}

/// POST cancel: 200, or 202 whose `Location` is followed until the cancel is done (Jobs_Cancel
/// is long-running, `final-state-via: location`), at the default pacing.
pub fn cancel(client: &Client, id: &str) -> Result<(), AzureError> {
    cancel_with(client, id, lro::Pacing::default()).map(drop)
}

/// [`cancel`] at `pacing` (Retry-After capped at `pacing.max`); true when the service took it
/// as a long-running operation and envbuild followed it to its end.
pub fn cancel_with(client: &Client, id: &str, pacing: lro::Pacing) -> Result<bool, AzureError> {
    let r = client.ws(Method::POST, &format!("jobs/{id}/cancel"), None)?;
    if r.status != 202 {
        return Ok(false);
    }
    lro::follow(client, r, pacing)?;
    Ok(true)
}

pub fn status(job: &Value) -> &str {
    job["properties"]["status"].as_str().unwrap_or("Unknown")
}

pub fn studio_link(job: &Value) -> Option<&str> {
    job["properties"]["services"]["Studio"]["endpoint"].as_str()
}

/// Poll intervals: from `min`, growing by half each poll, up to `max` (the SDK: 2 s → 60 s).
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Poll {
    fn default() -> Poll {
        Poll {
            min: Duration::from_secs(2),
            max: Duration::from_secs(60),
        }
    }
}

/// How following ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// A terminal status.
    Done(String),
    /// `stop` was set (Ctrl-C): the job goes on.
    Detached(String),
}

/// Polls until a terminal status, calling `on_status` with each new status (and the job body).
/// Transient poll failures are retried by the client; `stop` detaches within ~100 ms.
pub fn follow(
    client: &Client,
    id: &str,
    poll: Poll,
    stop: &AtomicBool,
    on_status: &mut dyn FnMut(&str, &Value),
) -> Result<Followed, AzureError> {
    let mut last = String::new();
    let mut wait = poll.min;
    loop {
        let job = get(client, id)?;
        let s = status(&job).to_owned();
        if s != last {
            on_status(&s, &job);
            last.clone_from(&s);
        }
        if TERMINAL.contains(&s.as_str()) {
            return Ok(Followed::Done(s));
        }
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return Ok(Followed::Detached(s));
            }
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
        wait = (wait + wait / 2).min(poll.max);
    }
}

/// The last `lines` lines of the job's `user_logs/std_log.txt`, from the artifact store at
/// `logs_endpoint` (`{endpoint}/ExperimentRun/dcid.{id}/user_logs/std_log.txt`).
pub fn log_tail(
    client: &Client,
    logs_endpoint: &str,
    id: &str,
    lines: usize,
) -> Result<String, AzureError> {
    let url = format!(
        "{}/ExperimentRun/dcid.{id}/user_logs/std_log.txt",
        logs_endpoint.trim_end_matches('/')
    );
    let text = client.get_text(&url)?;
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> CommandJob {
        CommandJob {
            id: "envbuild-mnist-1-abcd".into(),
            command: trainer_command(
                true,
                "model",
                &["--epochs".into(), "1".into(), "--note".into(), "it's here".into()],
            ),
            environment_id: "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w/environments/e/versions/0123456789ab".into(),
            compute_id: Some("/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w/computes/cpu".into()),
            display_name: Some("mnist".into()),
            experiment_name: "Default".into(),
            environment_variables: [("A".to_owned(), "1".to_owned())].into(),
            code_id: None,
            inputs: [("data".to_owned(), Input::Folder("azureml://datastores/workspaceblobstore/paths/mnist/".to_owned()))].into(),
            outputs: vec!["model".into()],
            instance_type: None,
            instance_count: 1,
            processes_per_instance: None,
            timeout: "PT2H".into(),
            tags: BTreeMap::new(),
            options: JobOptions::default(),
        }
    }

    #[test]
    fn command_job_body_has_the_recorded_shape() {
        let j = job();
        assert_eq!(
            j.command,
            "/opt/envbuild/bin/trainer --data ${{inputs.data}} --output ${{outputs.model}} --epochs 1 --note 'it'\\''s here'"
        );
        let b = j.body();
        let p = &b["properties"];
        assert_eq!(p["jobType"], "Command");
        assert_eq!(p["environmentId"], j.environment_id.as_str());
        assert_eq!(p["computeId"], j.compute_id.as_deref().unwrap());
        assert_eq!(
            p["inputs"]["data"],
            json!({"jobInputType":"uri_folder","uri":"azureml://datastores/workspaceblobstore/paths/mnist/","mode":"ReadOnlyMount"})
        );
        assert_eq!(
            p["outputs"]["model"],
            json!({"jobOutputType":"uri_folder","mode":"ReadWriteMount"})
        );
        assert_eq!(
            p["limits"],
            json!({"jobLimitsType":"Command","timeout":"PT2H"})
        );
        assert_eq!(p["resources"], json!({"instanceCount": 1}));
        assert_eq!(p["experimentName"], "Default");
        assert_eq!(p["displayName"], "mnist");
        assert_eq!(p["environmentVariables"], json!({"A":"1"}));
        let mut serverless = j.clone();
        serverless.compute_id = None;
        assert!(serverless.body()["properties"].get("computeId").is_none());
        assert!(
            p.get("distribution").is_none(),
            "one process: no distribution"
        );
        let mut bad = j.clone();
        bad.inputs
            .insert("my-data".into(), Input::Literal("x".into()));
        assert!(bad.check().unwrap_err().to_string().contains("`my-data`"));
        // Two nodes of two processes: the PyTorch distribution, as the REST definition spells it.
        let mut ddp = j.clone();
        (ddp.instance_count, ddp.processes_per_instance) = (2, Some(2));
        ddp.check().unwrap();
        let p = ddp.body()["properties"].clone();
        assert_eq!(p["resources"], json!({"instanceCount": 2}));
        assert_eq!(
            p["distribution"],
            json!({"distributionType": "PyTorch", "processCountPerInstance": 2})
        );
        // Two nodes without a distribution would bill two unrelated copies: refused.
        let mut copies = j;
        copies.instance_count = 2;
        let e = copies.check().unwrap_err().to_string();
        assert!(
            e.contains("2 instances") && e.contains("--processes-per-instance"),
            "{e}"
        );
    }

    #[test]
    fn command_job_body_is_pinned_whole() {
        let mut j = job();
        j.instance_type = Some("Standard_DS3_v2".into());
        j.tags.insert("envbuild.environment".into(), "mnist".into());
        assert_eq!(
            j.body(),
            json!({"properties": {
                "jobType": "Command",
                "command": j.command,
                "environmentId": j.environment_id,
                "computeId": j.compute_id,
                "displayName": "mnist",
                "experimentName": "Default",
                "environmentVariables": {"A": "1"},
                "inputs": {"data": {
                    "jobInputType": "uri_folder",
                    "uri": "azureml://datastores/workspaceblobstore/paths/mnist/",
                    "mode": "ReadOnlyMount",
                }},
                "outputs": {"model": {"jobOutputType": "uri_folder", "mode": "ReadWriteMount"}},
                "resources": {"instanceCount": 1, "instanceType": "Standard_DS3_v2"},
                "limits": {"jobLimitsType": "Command", "timeout": "PT2H"},
                "tags": {"envbuild.environment": "mnist"},
            }})
        );
        let mut bare = job();
        (bare.compute_id, bare.display_name) = (None, None);
        bare.inputs.clear();
        let p = &bare.body()["properties"];
        assert_eq!(p["inputs"], json!({}));
        assert!(p.get("computeId").is_none() && p.get("displayName").is_none());
    }

    #[test]
    fn code_and_every_input_kind_have_the_recorded_shape() {
        let mut j = job();
        j.code_id = Some("/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w/codes/src/versions/0123".into());
        j.command = crate::jobio::command_line(&[
            "python".into(),
            "train.py".into(),
            "--lr".into(),
            "${{inputs.lr}}".into(),
        ]);
        j.inputs.insert("lr".into(), Input::Literal("0.01".into()));
        j.inputs.insert(
            "labels".into(),
            Input::File(
                "azureml://datastores/workspaceblobstore/paths/LocalUpload/ab/labels.csv".into(),
            ),
        );
        j.check().unwrap();
        let p = j.body()["properties"].clone();
        assert_eq!(p["codeId"], j.code_id.as_deref().unwrap());
        assert_eq!(
            p["inputs"]["lr"],
            json!({"jobInputType": "literal", "value": "0.01"})
        );
        assert_eq!(
            p["inputs"]["labels"],
            json!({"jobInputType": "uri_file", "uri": "azureml://datastores/workspaceblobstore/paths/LocalUpload/ab/labels.csv", "mode": "ReadOnlyMount"})
        );
        assert_eq!(p["command"], "python train.py --lr ${{inputs.lr}}");
        // A literal the service would refuse (LiteralJobInput.value's pattern) is refused here.
        for bad in ["", "-", "..."] {
            let mut b = j.clone();
            b.inputs.insert("x".into(), Input::Literal(bad.into()));
            let e = b.check().unwrap_err().to_string();
            assert!(e.contains("input x"), "{e}");
        }
    }

    #[test]
    fn timeouts_become_iso_durations() {
        assert_eq!(parse_timeout("2h").unwrap(), "PT2H");
        assert_eq!(parse_timeout("90m").unwrap(), "PT1H30M");
        assert_eq!(parse_timeout("1h30m15s").unwrap(), "PT1H30M15S");
        assert_eq!(parse_timeout("PT45M").unwrap(), "PT45M");
        assert_eq!(parse_timeout("600s").unwrap(), "PT10M");
        for bad in ["", "2", "2d", "h", "0s", "PT", "18446744073709551615h"] {
            assert_eq!(
                parse_timeout(bad).unwrap_err().to_string(),
                format!(
                    "timeout `{bad}` is not a duration (use e.g. 2h, 90m, 1h30m, 600s or PT2H)"
                )
            );
        }
    }

    #[test]
    fn job_ids_are_valid_names() {
        let id = new_job_id("envbuild-mnist.cpu");
        assert!(valid_name(&id), "{id}");
        assert!(id.starts_with("envbuild-mnist-cpu-"), "{id}");
    }
}
