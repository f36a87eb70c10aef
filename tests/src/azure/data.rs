//! The workspace's data as the stand-in holds it: its datastores (`Datastores_List` with
//! `isDefault`, `Datastores_Get`; Azure Blob, each an account and container whose committed
//! blobs the Blob Storage stand-in keeps as plain files under `{blob root}/{account}/{container}`)
//! and code versions (`codes/{name}/versions/{v}`: 201 then 200, immutable but for description
//! and tags; `codeUri` must be a folder of one of the workspace's Blob datastores, with files).
//! The runner finds a job's code and inputs here, and writes its outputs here.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::arm::{ok, rp_error, valid_name, Reply};
use super::Shared;

/// Public Azure's storage endpoint suffix, as the datastores of a workspace name it.
pub const ENDPOINT: &str = "core.windows.net";

/// An Azure Blob datastore of the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDatastore {
    pub account: String,
    pub container: String,
    /// `credentials.credentialsType`: None (identity-based), AccountKey or Sas.
    pub credentials: String,
    pub is_default: bool,
}

/// The datastores every workspace starts with: its default `workspaceblobstore` and the
/// artifact store (`workspaceartifactstore`, container `azureml`, where run logs go), both in
/// the workspace's storage account.
pub fn defaults() -> Vec<(String, BlobDatastore)> {
    let account = "stenvbuildws01".to_owned();
    vec![
        (
            "workspaceblobstore".into(),
            BlobDatastore {
                account: account.clone(),
                container: "azureml-blobstore-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0".into(),
                credentials: "None".into(),
                is_default: true,
            },
        ),
        (
            "workspaceartifactstore".into(),
            BlobDatastore {
                account,
                container: "azureml".into(),
                credentials: "None".into(),
                is_default: false,
            },
        ),
    ]
}

fn resource(ws_id: &str, name: &str, d: &BlobDatastore) -> Value {
    let credentials = match d.credentials.as_str() {
        "None" => json!({"credentialsType": "None"}),
        // The secret itself is never read back (x-ms-mutability create, update).
        k => json!({"credentialsType": k, "secrets": {"secretsType": k}}),
    };
    let parts: Vec<&str> = ws_id.trim_matches('/').split('/').collect();
    json!({
        "id": format!("{ws_id}/datastores/{name}"),
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/datastores",
        "properties": {
            "description": null, "tags": {}, "properties": {},
            "isDefault": d.is_default,
            "credentials": credentials,
            "datastoreType": "AzureBlob",
            "accountName": d.account,
            "containerName": d.container,
            "endpoint": ENDPOINT,
            "protocol": "https",
            "serviceDataAccessAuthIdentity": "None",
            "subscriptionId": parts.get(1).copied().unwrap_or_default(),
            "resourceGroup": parts.get(3).copied().unwrap_or_default(),
        },
        "systemData": {
            "createdAt": "2026-01-05T09:00:00.0000000Z", "createdBy": "envbuild test", "createdByType": "User",
            "lastModifiedAt": "2026-01-05T09:00:00.0000000Z", "lastModifiedBy": "envbuild test", "lastModifiedByType": "User",
        },
    })
}

/// `GET {ws}/datastores[?isDefault=…]` (one page: a workspace has few) and `GET {ws}/datastores/{name}`.
pub(super) fn datastores(sh: &Shared, ws_id: &str, name: Option<&str>, query: &str) -> Reply {
    let all = sh.state.lock().unwrap().blob_datastores.clone();
    if let Some(n) = name {
        return match all.get(n) {
            Some(d) => ok(200, resource(ws_id, n, d)),
            None => rp_error(
                sh,
                404,
                "UserError",
                &format!("Datastore {n} was not found in the workspace."),
            ),
        };
    }
    let filter = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("isDefault="));
    let want = match filter {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => {
            return rp_error(
                sh,
                400,
                "UserError",
                &format!("The value '{v}' is not valid for isDefault (a boolean)."),
            )
        }
    };
    let value: Vec<Value> = all
        .iter()
        .filter(|(_, d)| want.is_none_or(|w| d.is_default == w))
        .map(|(n, d)| resource(ws_id, n, d))
        .collect();
    ok(200, json!({ "value": value }))
}

/// The directory that holds datastore `name`'s blobs: a folder the test mapped to it, else the
/// Blob stand-in's `{root}/{account}/{container}`.
pub(crate) fn datastore_dir(sh: &Shared, name: &str) -> Option<PathBuf> {
    let st = sh.state.lock().unwrap();
    if let Some(d) = st.datastores.get(name) {
        return Some(d.clone());
    }
    let d = st.blob_datastores.get(name)?;
    Some(st.blob_root.as_ref()?.join(&d.account).join(&d.container))
}

/// `azureml://datastores/{ds}/paths/{p}` → the local path of `p` in the datastore (not checked to exist).
pub(crate) fn azureml_path(sh: &Shared, uri: &str) -> Result<PathBuf, String> {
    let rest = uri
        .strip_prefix("azureml://datastores/")
        .ok_or_else(|| format!("unsupported URI {uri}"))?;
    let (ds, p) = rest
        .split_once("/paths/")
        .ok_or_else(|| format!("URI {uri} has no /paths/"))?;
    let p = p.trim_matches('/');
    if p.split('/').any(|s| s == ".." || s == ".") {
        return Err(format!("URI {uri} escapes the datastore"));
    }
    let root = datastore_dir(sh, ds).ok_or_else(|| format!("datastore {ds} not found"))?;
    Ok(root.join(p))
}

/// `azureml://datastores/{ds}/paths/{p}` of a Blob datastore the Blob stand-in holds (not one
/// the test mapped to a folder of its own) → where its blobs go.
pub(crate) fn blob_path(sh: &Shared, uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("azureml://datastores/")?;
    let (ds, p) = rest.split_once("/paths/")?;
    let p = p.trim_matches('/');
    if p.is_empty() || p.split('/').any(|s| s.is_empty() || s == ".." || s == ".") {
        return None;
    }
    let st = sh.state.lock().unwrap();
    if st.datastores.contains_key(ds) {
        return None;
    }
    let d = st.blob_datastores.get(ds)?;
    Some(
        st.blob_root
            .as_ref()?
            .join(&d.account)
            .join(&d.container)
            .join(p),
    )
}

/// `https://{account}.blob.core.windows.net/{container}/{path}` of one of the workspace's Blob
/// datastores → the local folder of `path` (not checked to exist).
pub(crate) fn code_path(sh: &Shared, uri: &str) -> Result<PathBuf, String> {
    let rest = uri
        .strip_prefix("https://")
        .ok_or_else(|| format!("codeUri {uri} is not an https URL of a blob folder"))?;
    let (host, path) = rest
        .split_once('/')
        .ok_or_else(|| format!("codeUri {uri} names no container"))?;
    let account = host
        .strip_suffix(&format!(".blob.{ENDPOINT}"))
        .ok_or_else(|| format!("codeUri {uri} is not on a blob endpoint ({ENDPOINT})"))?;
    let (container, p) = path.split_once('/').unwrap_or((path, ""));
    let p = p.trim_matches('/');
    if p.is_empty() || p.split('/').any(|s| s.is_empty() || s == ".." || s == ".") {
        return Err(format!("codeUri {uri} is not a folder of the container"));
    }
    let st = sh.state.lock().unwrap();
    let known = st
        .blob_datastores
        .values()
        .any(|d| d.account == account && d.container == container);
    if !known {
        return Err(format!(
            "codeUri {uri}: storage account {account}, container {container} is not a datastore of the workspace"
        ));
    }
    let root = st
        .blob_root
        .clone()
        .ok_or_else(|| format!("codeUri {uri}: the workspace's storage holds no blobs"))?;
    Ok(root.join(account).join(container).join(p))
}

fn has_files(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut r| r.next().is_some())
}

/// `PUT {ws}/codes/{name}/versions/{v}`: the folder at codeUri must exist and hold files (what
/// was really uploaded), then the version is stored as environments and models are.
pub(super) fn code_put(
    sh: &Shared,
    ws_id: &str,
    name: &str,
    v: &str,
    b: &Value,
    url: String,
) -> Reply {
    let user = |m: &str| rp_error(sh, 400, "UserError", m);
    if !valid_name(name) || !valid_name(v) {
        return user(&format!(
            "Code name and version must match the pattern ^[a-zA-Z0-9][a-zA-Z0-9\\-_]{{0,254}}$: {name}:{v}"
        ));
    }
    let p = b["properties"].clone();
    let Some(uri) = p["codeUri"].as_str() else {
        return user("codeUri is required.");
    };
    match code_path(sh, uri) {
        Err(m) => return user(&m),
        Ok(dir) if !dir.is_dir() || !has_files(&dir) => {
            return user(&format!("No files found at codeUri {uri}."))
        }
        Ok(_) => {}
    }
    super::arm::put_version(sh, ws_id, "codes", name, v, p, url, "Code")
}

/// A job's `codeId`: the folder of a code version of this workspace (checked at PUT).
pub(crate) fn code_dir_of(sh: &Shared, ws_id: &str, code_id: &str) -> Result<PathBuf, String> {
    let (n, v) = code_id
        .strip_prefix(&format!("{ws_id}/codes/"))
        .and_then(|r| r.split_once("/versions/"))
        .ok_or_else(|| {
            format!("codeId {code_id} is not the ARM id of a code version of this workspace")
        })?;
    let uri = sh
        .state
        .lock()
        .unwrap()
        .codes
        .get(&format!("{ws_id}/codes/{n}"))
        .and_then(|a| a.versions.get(v))
        .and_then(|c| c["properties"]["codeUri"].as_str().map(str::to_owned))
        .ok_or_else(|| format!("Code {n}:{v} was not found in the workspace."))?;
    code_path(sh, &uri)
}

/// Where the service puts a named output that names no path: the default datastore's
/// `azureml/{job}/{output}/`.
pub(crate) fn default_output_uri(job: &str, output: &str) -> String {
    format!("azureml://datastores/workspaceblobstore/paths/azureml/{job}/{output}/")
}
