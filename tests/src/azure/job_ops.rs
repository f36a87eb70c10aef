//! The stand-in's job operations beyond create and get, as the 2025-12-01 specification
//! defines them: a re-PUT (tags replaced, create-only fields refused), the long-running cancel
//! (202, `Location`, `Retry-After`) and the operation result its Location points at.

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::arm::{not_found, ok, rp_error, Reply};
use super::{now_rfc3339, Shared};

/// Fields a re-PUT may change (the 2025-12-01 spec: ResourceBase's tags, description,
/// properties; JobBase's isArchived and notificationSetting carry `update`); every other job
/// field is `[create, read]`.
const JOB_UPDATABLE: [&str; 5] = [
    "tags",
    "description",
    "properties",
    "isArchived",
    "notificationSetting",
];

/// A PUT on an existing job: the tags in the body replace the job's tags (the spec's
/// Jobs_CreateOrUpdate), description, isArchived and notificationSetting are updated; a change
/// to any other field is refused, naming it.
pub(super) fn job_reput(sh: &Shared, key: &str, id: &str, b: &Value) -> Reply {
    let fixed = |v: &Value| -> serde_json::Map<String, Value> {
        v["properties"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, v)| !JOB_UPDATABLE.contains(&k.as_str()) && !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut st = sh.state.lock().unwrap();
    let before = fixed(st.job_requests.get(key).unwrap_or(&Value::Null));
    let after = fixed(b);
    let changed = before
        .keys()
        .chain(after.keys())
        .find(|k| before.get(*k) != after.get(*k))
        .cloned();
    if let Some(field) = changed {
        drop(st);
        return rp_error(
            sh,
            400,
            "UserError",
            &format!("Job {id} already exists and its {field} cannot be changed; a job's tags, description, isArchived and notificationSetting can."),
        );
    }
    st.job_requests.insert(key.to_owned(), b.clone());
    let Some(j) = st.jobs.get_mut(key) else {
        drop(st);
        return not_found(sh, "jobs", id);
    };
    let p = &mut j.body["properties"];
    p["tags"] = b["properties"].get("tags").cloned().unwrap_or(json!({}));
    for k in ["description", "isArchived", "notificationSetting"] {
        if let Some(v) = b["properties"].get(k) {
            p[k] = v.clone();
        }
    }
    j.body["systemData"]["lastModifiedAt"] = json!(now_rfc3339());
    ok(200, j.body.clone())
}

/// `POST …/jobs/{id}/cancel`: 202 with `Location` (an operation result under `ops`) and
/// `Retry-After`, as the long-running Jobs_Cancel answers; the job goes CancelRequested, then
/// Canceled when its runner has stopped it.
pub(super) fn job_cancel(sh: &Shared, ws_id: &str, id: &str, ops: &str, api: &str) -> Reply {
    let key = format!("{ws_id}/jobs/{id}");
    let mut st = sh.state.lock().unwrap();
    let Some(j) = st.jobs.get_mut(&key) else {
        drop(st);
        return not_found(sh, "jobs", id);
    };
    let status = j.body["properties"]["status"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    // NotResponding is not terminal: the spec's JobStatus lets such a run come back.
    if ["Completed", "Failed", "Canceled", "Paused"].contains(&status.as_str()) {
        drop(st);
        return rp_error(
            sh,
            400,
            "UserError",
            &format!("Job {id} is in terminal state {status} and cannot be canceled."),
        );
    }
    j.cancel = true;
    j.body["properties"]["status"] = json!("CancelRequested");
    drop(st);
    let op = sh.request_id();
    sh.state.lock().unwrap().operations.insert(op.clone(), key);
    Reply {
        status: StatusCode::ACCEPTED,
        body: None,
        error: false,
        gateway: false,
        location: Some(format!("{ops}/{op}?api-version={api}")),
        text: None,
        headers: Vec::new(),
    }
}

/// `GET {Location}` of a cancel: 202 (same Location, Retry-After) until the job is Canceled
/// (or otherwise ended), then 200 with no body.
pub(super) fn operation_result(sh: &Shared, op: &str, url: String) -> Reply {
    let st = sh.state.lock().unwrap();
    let status = st.operations.get(op).and_then(|k| st.jobs.get(k)).map(|j| {
        j.body["properties"]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    });
    drop(st);
    match status {
        None => rp_error(
            sh,
            404,
            "NotFound",
            &format!("Operation {op} was not found."),
        ),
        Some(s) if ["Completed", "Failed", "Canceled"].contains(&s.as_str()) => Reply {
            status: StatusCode::OK,
            body: None,
            error: false,
            gateway: false,
            location: None,
            text: None,
            headers: Vec::new(),
        },
        Some(_) => Reply {
            status: StatusCode::ACCEPTED,
            body: None,
            error: false,
            gateway: false,
            location: Some(url),
            text: None,
            headers: Vec::new(),
        },
    }
}
