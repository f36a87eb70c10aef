//! Model versions from a job's output: `modelUri` `azureml://jobs/{id}/outputs/{output}/`,
//! `modelType` custom_model; the version is the container's `nextVersion` unless given.

use reqwest::Method;
use serde_json::{json, Value};

use super::{valid_name, AssetKind, AzureError, Client, NameRule};

/// A model version to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelVersion {
    pub name: String,
    pub version: Option<String>,
    pub job: String,
    pub output: String,
    pub description: Option<String>,
}

impl ModelVersion {
    pub fn uri(&self) -> String {
        format!("azureml://jobs/{}/outputs/{}/", self.job, self.output)
    }

    pub fn body(&self) -> Value {
        let mut p = json!({
            "modelType": "custom_model",
            "modelUri": self.uri(),
            "jobName": self.job,
            "tags": {"envbuild.job": self.job},
        });
        if let Some(d) = &self.description {
            p["description"] = json!(d);
        }
        json!({ "properties": p })
    }
}

/// Checks the job (it must exist, be Completed and have the output), picks the version, PUTs it.
/// Returns the version and the model version's ARM id.
pub fn register(client: &Client, m: &ModelVersion) -> Result<(String, String), AzureError> {
    for (what, v) in [
        ("model name", &m.name),
        ("job", &m.job),
        ("output", &m.output),
    ] {
        if !valid_name(v) {
            return Err(AzureError::BadName {
                what,
                name: v.clone(),
                rule: NameRule::Asset,
            });
        }
    }
    let Some(job) = client.get_opt(&format!("jobs/{}", m.job))? else {
        return Err(AzureError::NoJob {
            job: m.job.clone(),
            workspace: client.workspace.name.clone(),
        });
    };
    let status = super::job::status(&job);
    if status != "Completed" {
        return Err(AzureError::NotCompleted {
            job: m.job.clone(),
            status: status.to_owned(),
            output: m.output.clone(),
        });
    }
    let outputs = &job["properties"]["outputs"];
    if outputs.get(&m.output).is_none() {
        return Err(AzureError::NoOutput {
            job: m.job.clone(),
            output: m.output.clone(),
            outputs: outputs
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default(),
        });
    }
    let version = match &m.version {
        Some(v) => {
            if !valid_name(v) {
                return Err(AzureError::BadName {
                    what: "model version",
                    name: v.clone(),
                    rule: NameRule::Version,
                });
            }
            v.clone()
        }
        None => match client.get_opt(&format!("models/{}", m.name))? {
            Some(c) => match &c["properties"]["nextVersion"] {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => "1".into(),
            },
            None => "1".into(),
        },
    };
    let path = format!("models/{}/versions/{version}", m.name);
    let r = client.ws(Method::PUT, &path, Some(&m.body()));
    match r {
        Ok(_) => Ok((version, format!("{}/{path}", client.workspace.arm_id()))),
        Err(AzureError::Arm(a)) if a.status == 409 => Err(AzureError::Conflict {
            kind: AssetKind::Model,
            name: m.name.clone(),
            version,
            message: a.message,
            request_id: a.request_id,
        }),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_body_points_at_the_job_output() {
        let m = ModelVersion {
            name: "mnist".into(),
            version: None,
            job: "job-1".into(),
            output: "model".into(),
            description: None,
        };
        assert_eq!(
            m.body(),
            json!({"properties": {
                "modelType": "custom_model",
                "modelUri": "azureml://jobs/job-1/outputs/model/",
                "jobName": "job-1",
                "tags": {"envbuild.job": "job-1"},
            }})
        );
    }
}
