//! The workspace's jobs list (Jobs_List in mfe.json, stable/2025-12-01): `listViewType`
//! (ActiveOnly — the default —, ArchivedOnly, All), `jobType`, pages continued by `$skipToken`
//! in `nextLink`; and jobs seeded into the stand-in without running, for tests of what lists them.

use serde_json::{json, Value};

use super::arm::{ok, rp_error, Reply};
use super::compute::query_value;
use super::{now_rfc3339, AzureStandIn, Job, Shared};

/// Jobs per page.
const PAGE: usize = 2;

/// `GET {ws}/jobs`.
pub(super) fn jobs(sh: &Shared, ws_id: &str, query: &str, api: &str) -> Reply {
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
    };
    let view = param("listViewType").unwrap_or_else(|| "ActiveOnly".into());
    if !["ActiveOnly", "ArchivedOnly", "All"].contains(&view.as_str()) {
        return rp_error(
            sh,
            400,
            "UserError",
            &format!("listViewType {view} is not one of ActiveOnly, ArchivedOnly, All."),
        );
    }
    let job_type = param("jobType");
    let skip = query_value(query, "$skipToken").unwrap_or(0);
    let st = sh.state.lock().unwrap();
    let all: Vec<Value> = st
        .jobs
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ws_id}/jobs/")))
        .map(|(_, j)| j.body.clone())
        .filter(|b| {
            let archived = b["properties"]["isArchived"].as_bool().unwrap_or(false);
            match view.as_str() {
                "ActiveOnly" => !archived,
                "ArchivedOnly" => archived,
                _ => true,
            }
        })
        .filter(|b| {
            job_type
                .as_deref()
                .is_none_or(|t| b["properties"]["jobType"] == t)
        })
        .collect();
    let page: Vec<Value> = all.iter().skip(skip).take(PAGE).cloned().collect();
    let mut out = json!({"value": page});
    if skip + PAGE < all.len() {
        let base = sh.base_url.lock().unwrap().clone();
        out["nextLink"] = json!(format!(
            "{base}{ws_id}/jobs?api-version={api}&listViewType={view}&$skipToken={}",
            skip + PAGE
        ));
    }
    ok(200, out)
}

impl AzureStandIn {
    /// A Command job that already exists in the workspace with `status`, on `compute` (or
    /// serverless); it does not run.
    pub fn seed_job(&self, name: &str, status: &str, compute: Option<&str>) {
        let ws_id = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.MachineLearningServices/workspaces/{}",
            super::SUBSCRIPTION, super::RESOURCE_GROUP, super::WORKSPACE
        );
        let mut p = json!({"jobType": "Command", "status": status, "command": "true",
            "environmentId": format!("{ws_id}/environments/seed/versions/1"),
            "experimentName": "Default", "displayName": name, "isArchived": false,
            "limits": {"jobLimitsType": "Command", "timeout": "PT2H"}});
        if let Some(c) = compute {
            p["computeId"] = json!(format!("{ws_id}/computes/{c}"));
        }
        let now = now_rfc3339();
        let body = json!({"id": format!("{ws_id}/jobs/{name}"), "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/jobs", "properties": p,
            "systemData": {"createdAt": now, "createdBy": "envbuild test", "createdByType": "User"}});
        let dir = self.shared.job_dir(name);
        self.shared.state.lock().unwrap().jobs.insert(
            format!("{ws_id}/jobs/{name}"),
            Job {
                body,
                dir,
                cancel: false,
            },
        );
    }
}
