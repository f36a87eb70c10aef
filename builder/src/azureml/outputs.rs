//! A job's outputs as `job download` fetches them: which outputs (one by name, or every named
//! one and the default artifacts), where each lies (the `azureml://datastores/…` URI the service
//! filled in) and where it goes locally, laid out as `az ml job download` lays them out:
//! `named-outputs/NAME/` for a named output, `artifacts/` for the default one. Each comes
//! through the Blob client: verified, into a temporary folder renamed into place.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use thiserror::Error;

use super::datastore::{self, Datastore};
use super::job::{status, TERMINAL};
use super::{AzureError, Client};
use crate::blob::{self, BlobError, BlobSettings, BlobStore, DownloadReport};
use crate::progress::Progress;

/// The output every job has: the artifact store's run folder (logs, files the job wrote to
/// `./outputs`).
pub const DEFAULT_OUTPUT: &str = "default";

/// One output to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub name: String,
    /// The datastore holding it and the path (folder) in it.
    pub datastore: String,
    pub path: String,
    /// Where it goes under the download folder: `named-outputs/NAME` or `artifacts`.
    pub local: String,
}

/// What to fetch of `job`: the output `only`, or all of them. The job must have ended (an
/// output is complete only then) and have the output; an output whose URI is not on a
/// datastore is refused by name.
pub fn plan(job: &Value, only: Option<&str>) -> Result<Vec<Fetch>, AzureError> {
    let id = job["name"].as_str().unwrap_or_default().to_owned();
    let s = status(job);
    if !TERMINAL.contains(&s) {
        return Err(AzureError::NotEnded {
            job: id,
            status: s.to_owned(),
        });
    }
    let outputs = job["properties"]["outputs"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let names: Vec<String> = match only {
        Some(o) if outputs.contains_key(o) => vec![o.to_owned()],
        Some(o) => {
            return Err(AzureError::NoOutput {
                job: id,
                output: o.to_owned(),
                outputs: outputs.keys().cloned().collect(),
            })
        }
        None => outputs.keys().cloned().collect(),
    };
    let mut out = Vec::new();
    for name in names {
        let uri = outputs[&name]["uri"].as_str().unwrap_or_default();
        let Some((datastore, path)) = super::datastore::parse_uri(uri) else {
            return Err(AzureError::OutputNotOnDatastore {
                job: id,
                output: name,
                uri: uri.to_owned(),
            });
        };
        let local = if name == DEFAULT_OUTPUT {
            "artifacts".to_owned()
        } else {
            format!("named-outputs/{name}")
        };
        out.push(Fetch {
            path: format!("{}/", path.trim_end_matches('/')),
            name,
            datastore,
            local,
        });
    }
    Ok(out)
}

/// Why `job download` failed.
#[derive(Debug, Error)]
pub enum DownloadError {
    #[error(transparent)]
    Azure(#[from] AzureError),
    #[error(transparent)]
    Blob(Box<OutputFailure>),
}

/// An output the storage would not give, or that could not be written here.
#[derive(Debug, Error)]
#[error("output {output} of job {job} (datastore {datastore}, {path})")]
pub struct OutputFailure {
    pub job: String,
    pub output: String,
    pub datastore: String,
    pub path: String,
    #[source]
    pub source: BlobError,
}

impl crate::error::Hint for DownloadError {
    fn hint(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            // Transparent: the wrapped error is not in the chain, so its hint is passed on.
            DownloadError::Azure(e) => e.hint(),
            DownloadError::Blob(_) => None,
        }
    }
}

/// One output as fetched: where it went, and what it took (None: nothing there, which only an
/// output not asked for by name may be).
#[derive(Debug)]
pub struct Fetched {
    pub fetch: Fetch,
    pub report: Option<DownloadReport>,
}

/// `job download`: GET the job, then each output of [`plan`] from its datastore into
/// `to/{named-outputs/NAME | artifacts}`, verified, complete or absent.
pub fn download(
    client: &Client,
    id: &str,
    only: Option<&str>,
    to: &Path,
    settings: &BlobSettings,
    progress: &dyn Progress,
) -> Result<Vec<Fetched>, DownloadError> {
    let Some(job) = client.get_opt(&format!("jobs/{id}"))? else {
        return Err(AzureError::NoJob {
            job: id.to_owned(),
            workspace: client.workspace.name.clone(),
        }
        .into());
    };
    let mut stores: BTreeMap<String, Datastore> = BTreeMap::new();
    let mut out = Vec::new();
    for f in plan(&job, only)? {
        if !stores.contains_key(&f.datastore) {
            stores.insert(f.datastore.clone(), datastore::get(client, &f.datastore)?);
        }
        let ds = &stores[&f.datastore];
        let failed = |source| {
            DownloadError::Blob(Box::new(OutputFailure {
                job: id.to_owned(),
                output: f.name.clone(),
                datastore: f.datastore.clone(),
                path: f.path.clone(),
                source,
            }))
        };
        let store = blob::account_url_from_env(&ds.account, &ds.endpoint)
            .and_then(|url| BlobStore::new(&url, &ds.container, client.tokens(), settings))
            .map_err(failed)?;
        let dest = to.join(&f.local);
        match store.download_prefix(f.path.trim_end_matches('/'), &dest, progress) {
            Ok(r) => out.push(Fetched {
                fetch: f,
                report: Some(r),
            }),
            // Every output asked for at once: one that holds nothing is skipped, as az ml does.
            Err(BlobError::NothingThere { .. }) if only.is_none() => out.push(Fetched {
                fetch: f,
                report: None,
            }),
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(status: &str) -> Value {
        json!({"name": "j1", "properties": {"status": status, "outputs": {
            "model": {"jobOutputType": "uri_folder", "mode": "ReadWriteMount",
                      "uri": "azureml://datastores/workspaceblobstore/paths/azureml/j1/model/"},
            "default": {"jobOutputType": "uri_folder", "mode": "ReadWriteMount",
                        "uri": "azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.j1"},
        }}})
    }

    #[test]
    fn outputs_go_where_az_ml_puts_them() {
        let all = plan(&job("Completed"), None).unwrap();
        assert_eq!(
            all,
            vec![
                Fetch {
                    name: "default".into(),
                    datastore: "workspaceartifactstore".into(),
                    path: "ExperimentRun/dcid.j1/".into(),
                    local: "artifacts".into(),
                },
                Fetch {
                    name: "model".into(),
                    datastore: "workspaceblobstore".into(),
                    path: "azureml/j1/model/".into(),
                    local: "named-outputs/model".into(),
                },
            ]
        );
        let one = plan(&job("Failed"), Some("model")).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].local, "named-outputs/model");
    }

    #[test]
    fn a_job_not_ended_or_an_output_it_lacks_is_refused() {
        for s in ["Running", "NotStarted", "NotResponding", "Finalizing"] {
            let e = plan(&job(s), None).unwrap_err().to_string();
            assert!(e.contains("j1") && e.contains(s), "{e}");
        }
        let e = plan(&job("Completed"), Some("weights"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no output `weights`") && e.contains("default, model"),
            "{e}"
        );
        let mut j = job("Completed");
        j["properties"]["outputs"]["model"]["uri"] = json!("https://elsewhere/x");
        let e = plan(&j, Some("model")).unwrap_err().to_string();
        assert!(e.contains("https://elsewhere/x"), "{e}");
    }
}
