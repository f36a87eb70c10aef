//! The ARM side of the stand-in: one handler that checks what ARM checks (bearer token,
//! api-version, the workspace), then environments, jobs and models as the service answers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use super::job_ops::{job_cancel, job_reput, operation_result};
use super::storage::artifact;
use super::{now_rfc3339, schema, Asset, Job, Shared, API_VERSIONS};

const PROVIDER: &str = "Microsoft.MachineLearningServices";

/// The stand-in's routes: ARM under `/subscriptions/…`, logs under `/artifacts/…`.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: Option<Value>,
    pub(super) error: bool,
    pub(super) gateway: bool,
    pub(super) location: Option<String>,
    pub(super) text: Option<String>,
    /// More headers (`Azure-AsyncOperation`, `Retry-After`).
    pub(super) headers: Vec<(&'static str, String)>,
}

pub(super) fn ok(status: u16, body: Value) -> Reply {
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        body: Some(body),
        error: false,
        gateway: false,
        location: None,
        text: None,
        headers: Vec::new(),
    }
}

/// An error answered by ARM itself (gateway): `{"error":{"code","message"}}`.
pub(super) fn gateway(status: u16, code: &str, message: &str) -> Reply {
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        body: Some(json!({"error": {"code": code, "message": message}})),
        error: true,
        gateway: true,
        location: None,
        text: None,
        headers: Vec::new(),
    }
}

/// An error answered by the Azure ML resource provider, with its additionalInfo.
pub(super) fn rp_error(sh: &Shared, status: u16, code: &str, message: &str) -> Reply {
    let (op, req) = (
        sh.request_id().replace('-', ""),
        sh.request_id().replace('-', ""),
    );
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        body: Some(json!({"error": {
            "code": code,
            "message": message,
            "details": [],
            "additionalInfo": [
                {"type": "ComponentName", "info": {"value": "managementfrontend"}},
                {"type": "Correlation", "info": {"value": {"operation": op[..32], "request": req[..16]}}},
                {"type": "Environment", "info": {"value": "eastus"}},
                {"type": "Location", "info": {"value": "eastus"}},
                {"type": "Time", "info": {"value": now_rfc3339()}},
            ],
        }})),
        error: true,
        gateway: false,
        location: None,
        text: None,
        headers: Vec::new(),
    }
}

async fn handle(
    AxState(sh): AxState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let sh2 = sh.clone();
    let reply = tokio::task::spawn_blocking(move || {
        dispatch(&sh2, &method, &path, &query, &headers, &body)
    })
    .await
    .unwrap_or_else(|_| gateway(500, "InternalServerError", "stand-in panicked"));
    let request_id = sh.request_id();
    let mut resp = match (&reply.text, &reply.body) {
        (Some(t), _) => (reply.status, t.clone()).into_response(),
        (None, Some(b)) => (
            reply.status,
            [("content-type", "application/json; charset=utf-8")],
            b.to_string(),
        )
            .into_response(),
        (None, None) => reply.status.into_response(),
    };
    let h = resp.headers_mut();
    h.insert(
        "x-ms-request-id",
        HeaderValue::from_str(&request_id).unwrap(),
    );
    h.insert(
        "x-ms-correlation-request-id",
        HeaderValue::from_str(&sh.request_id()).unwrap(),
    );
    if reply.error {
        h.insert("x-ms-response-type", HeaderValue::from_static("error"));
    }
    if reply.gateway {
        h.insert("x-ms-failure-cause", HeaderValue::from_static("gateway"));
    }
    if let Some(l) = reply.location {
        if let Ok(v) = HeaderValue::from_str(&l) {
            h.insert("location", v);
        }
        // A long-running operation's 202: Retry-After in seconds, 10 to 600 in the spec.
        if reply.status == StatusCode::ACCEPTED {
            h.insert("retry-after", HeaderValue::from_static("10"));
        }
    }
    for (k, v) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    resp
}

fn dispatch(
    sh: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    let reply = check_answer(
        sh,
        method,
        path,
        dispatch_inner(sh, method, path, query, headers, body),
    );
    sh.state
        .lock()
        .unwrap()
        .log
        .push((method.to_string(), path.to_owned(), reply.status.as_u16()));
    reply
}

/// Every answer is checked against its REST definition (errors against ErrorResponse), under the
/// workspace and under the subscription's location; one that breaks it is recorded and becomes
/// a 500, so the test that met it fails.
fn check_answer(sh: &Shared, method: &Method, path: &str, reply: Reply) -> Reply {
    let definition = if reply.error {
        Some("ErrorResponse")
    } else {
        schema::answer_definition_of_path(method.as_str(), path)
    };
    let (Some(d), Some(b)) = (definition, &reply.body) else {
        return reply;
    };
    let problems = schema::problems(d, b);
    if problems.is_empty() {
        return reply;
    }
    let m = format!(
        "the stand-in's answer to {method} {path} is not a valid {d}: {}",
        problems.join("; ")
    );
    eprintln!("{m}");
    sh.state.lock().unwrap().spec_violations.push(m.clone());
    gateway(500, "StandInSpecViolation", &m)
}

fn dispatch_inner(
    sh: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    // The job logs live in the workspace's storage, which takes storage tokens, not ARM's.
    if let Some(rest) = path.strip_prefix("/artifacts/") {
        return artifact(sh, method, rest, headers);
    }
    // 1. The bearer token (ARM checks it before anything else).
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth.is_empty() {
        return gateway(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        );
    }
    let Some(token) = auth.strip_prefix("Bearer ") else {
        return gateway(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is provided in an invalid format.",
        );
    };
    sh.state
        .lock()
        .unwrap()
        .tokens_seen
        .insert(token.to_owned());
    if !(sh.check)(token) {
        return gateway(
            401,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        );
    }
    if let Some(r) = data_plane(sh, method, path, query) {
        return r;
    }
    // 2. api-version.
    let api = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("api-version="))
        .unwrap_or("");
    if api.is_empty() {
        return gateway(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    if !API_VERSIONS.contains(&api) {
        return gateway(
            400,
            "NoRegisteredProviderFound",
            &format!(
                "No registered resource provider found for location 'eastus' and API version '{api}' for type 'workspaces'. The supported api-versions are '{}'.",
                API_VERSIONS.join(", ")
            ),
        );
    }
    // 3. Injected faults.
    {
        let mut st = sh.state.lock().unwrap();
        if st.fail_next > 0 {
            st.fail_next -= 1;
            drop(st);
            return rp_error(
                sh,
                500,
                "InternalServerError",
                "System.Net.Http.HttpConnectionResponseContent",
            );
        }
    }
    // A job cancel's Location (a long-running operation's result).
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let ["subscriptions", _, "providers", p, "locations", _, "mfeOperationResults", op] =
        parts.as_slice()
    {
        if p.eq_ignore_ascii_case(PROVIDER) && method == Method::GET {
            let url = format!("{}{path}?api-version={api}", sh.base_url.lock().unwrap());
            return operation_result(sh, op, url);
        }
    }
    // Other resources under the subscription, not a workspace (vmSizes, compute operations).
    if let Some(r) = super::location::subscription_scope(sh, method, path, api) {
        return r;
    }
    // 4. The workspace.
    if parts.len() < 8
        || !parts[0].eq_ignore_ascii_case("subscriptions")
        || !parts[2].eq_ignore_ascii_case("resourceGroups")
        || !parts[4].eq_ignore_ascii_case("providers")
        || !parts[5].eq_ignore_ascii_case(PROVIDER)
        || !parts[6].eq_ignore_ascii_case("workspaces")
    {
        return gateway(
            404,
            "InvalidResourceType",
            &format!(
                "The resource type could not be found in the namespace for api version '{api}'."
            ),
        );
    }
    let (sub, rg, ws) = (parts[1], parts[3], parts[7]);
    {
        let st = sh.state.lock().unwrap();
        if !st.workspaces.iter().any(|(s, r, _)| s == sub && r == rg) {
            return gateway(
                404,
                "ResourceGroupNotFound",
                &format!("Resource group '{rg}' could not be found."),
            );
        }
        if !st
            .workspaces
            .contains(&(sub.to_owned(), rg.to_owned(), ws.to_owned()))
        {
            return gateway(
                404,
                "ParentResourceNotFound",
                &format!("Can not perform requested operation on nested resource. Parent resource '{ws}' not found."),
            );
        }
    }
    let ws_id =
        format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{PROVIDER}/workspaces/{ws}");
    let rest = &parts[8..];
    // A body is JSON, and what its REST definition allows (400 UserError naming the field).
    let json_body = || -> Result<Value, Reply> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            rp_error(
                sh,
                400,
                "UserError",
                &format!("The request body is not valid JSON: {e}"),
            )
        })?;
        match schema::request_definition(rest).and_then(|d| schema::refusal(d, &v)) {
            Some(m) => Err(rp_error(sh, 400, "UserError", &m)),
            None => Ok(v),
        }
    };
    let url = format!("{}{path}", sh.base_url.lock().unwrap());
    match (method.as_str(), rest) {
        ("GET", []) => super::location::workspace_get(sh, &ws_id, ws),
        (_, ["computes", ..]) => {
            super::compute::handle(sh, method, &ws_id, &rest[1..], body, query, api)
        }
        ("GET", ["jobs"]) => super::listing::jobs(sh, &ws_id, query, api),
        ("GET", ["environments", name]) => container_get(sh, &ws_id, "environments", name),
        ("GET", ["environments", name, "versions", v]) => {
            version_get(sh, &ws_id, "environments", name, v)
        }
        ("PUT", ["environments", name, "versions", v]) => match json_body() {
            Ok(b) => env_put(sh, &ws_id, name, v, &b, url),
            Err(r) => r,
        },
        ("GET", ["datastores"]) => super::data::datastores(sh, &ws_id, None, query),
        ("GET", ["datastores", name]) => super::data::datastores(sh, &ws_id, Some(name), query),
        ("GET", ["codes", name]) => container_get(sh, &ws_id, "codes", name),
        ("GET", ["codes", name, "versions", v]) => version_get(sh, &ws_id, "codes", name, v),
        ("PUT", ["codes", name, "versions", v]) => match json_body() {
            Ok(b) => super::data::code_put(sh, &ws_id, name, v, &b, url),
            Err(r) => r,
        },
        ("GET", ["models", name]) => container_get(sh, &ws_id, "models", name),
        ("GET", ["models", name, "versions", v]) => version_get(sh, &ws_id, "models", name, v),
        ("PUT", ["models", name, "versions", v]) => match json_body() {
            Ok(b) => model_put(sh, &ws_id, name, v, &b, url),
            Err(r) => r,
        },
        ("GET", ["jobs", id]) => match sh
            .state
            .lock()
            .unwrap()
            .jobs
            .get(&format!("{ws_id}/jobs/{id}"))
        {
            Some(j) => ok(200, j.body.clone()),
            None => not_found(sh, "jobs", id),
        },
        ("PUT", ["jobs", id]) => match json_body() {
            Ok(b) => job_put(sh, &ws_id, id, &b, url),
            Err(r) => r,
        },
        ("POST", ["jobs", id, "cancel"]) => {
            let ops = format!(
                "{}/subscriptions/{sub}/providers/{PROVIDER}/locations/eastus/mfeOperationResults",
                sh.base_url.lock().unwrap()
            );
            job_cancel(sh, &ws_id, id, &ops, api)
        }
        _ => gateway(
            404,
            "NotFound",
            &format!("The requested resource {method} {path} does not exist in the stand-in."),
        ),
    }
}

pub(super) fn not_found(sh: &Shared, kind: &str, name: &str) -> Reply {
    let what = match kind {
        "environments" => "Environment",
        "models" => "Model",
        "codes" => "Code",
        _ => "Job",
    };
    rp_error(
        sh,
        404,
        "UserError",
        &format!("{what} {name} was not found in the workspace."),
    )
}

fn system_data(created: &str) -> Value {
    json!({
        "createdAt": created, "createdBy": "envbuild test", "createdByType": "User",
        "lastModifiedAt": now_rfc3339(), "lastModifiedBy": "envbuild test", "lastModifiedByType": "User",
    })
}

fn assets<'a>(
    st: &'a mut super::State,
    kind: &str,
) -> &'a mut std::collections::BTreeMap<String, Asset> {
    match kind {
        "models" => &mut st.models,
        "codes" => &mut st.codes,
        _ => &mut st.envs,
    }
}

fn container_get(sh: &Shared, ws_id: &str, kind: &str, name: &str) -> Reply {
    let key = format!("{ws_id}/{kind}/{name}");
    let mut st = sh.state.lock().unwrap();
    let Some(a) = assets(&mut st, kind).get(&key).cloned() else {
        drop(st);
        return not_found(sh, kind, name);
    };
    let next = a
        .versions
        .keys()
        .filter_map(|v| v.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    ok(
        200,
        json!({
            "id": key, "name": name,
            "type": format!("{PROVIDER}/workspaces/{kind}"),
            "properties": {
                "description": null, "tags": {}, "properties": {}, "isArchived": false,
                "latestVersion": a.latest, "nextVersion": next.to_string(),
                "provisioningState": "Succeeded",
            },
            "systemData": system_data(&a.created),
        }),
    )
}

fn version_get(sh: &Shared, ws_id: &str, kind: &str, name: &str, v: &str) -> Reply {
    let key = format!("{ws_id}/{kind}/{name}");
    let mut st = sh.state.lock().unwrap();
    match assets(&mut st, kind)
        .get(&key)
        .and_then(|a| a.versions.get(v))
    {
        Some(b) => ok(200, b.clone()),
        None => {
            drop(st);
            let what = match kind {
                "models" => "Model",
                "codes" => "Code",
                _ => "Environment",
            };
            rp_error(
                sh,
                404,
                "UserError",
                &format!("{what} {name}:{v} was not found in the workspace."),
            )
        }
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphanumeric())
        && s.len() <= 255
        && c.all(|x| x.is_ascii_alphanumeric() || x == '-' || x == '_')
}

/// Whether an image reference carries a tag or a digest.
fn has_tag_or_digest(image: &str) -> bool {
    if image.contains('@') {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.contains(':')
}

/// Stores a new version or updates description/tags of an existing one; anything else is 409.
#[allow(clippy::too_many_arguments)]
pub(super) fn put_version(
    sh: &Shared,
    ws_id: &str,
    kind: &str,
    name: &str,
    v: &str,
    mut props: Value,
    url: String,
    what: &str,
) -> Reply {
    let key = format!("{ws_id}/{kind}/{name}");
    let now = now_rfc3339();
    let mut st = sh.state.lock().unwrap();
    let asset = assets(&mut st, kind)
        .entry(key.clone())
        .or_insert_with(|| Asset {
            created: now.clone(),
            ..Asset::default()
        });
    if let Some(existing) = asset.versions.get(v).cloned() {
        let mut a = existing["properties"].clone();
        let mut b = props.clone();
        // Fields the service fills in are compared as the caller could have sent them.
        for k in ["description", "tags"] {
            a.as_object_mut().map(|o| o.remove(k));
            b.as_object_mut().map(|o| o.remove(k));
        }
        let same = b
            .as_object()
            .map(|o| o.iter().all(|(k, val)| a.get(k) == Some(val)))
            .unwrap_or(true);
        if !same {
            drop(st);
            return rp_error(
                sh,
                409,
                "UserError",
                &format!(
                    "{what} {name} with version {v} is already registered and cannot be changed."
                ),
            );
        }
        let mut updated = existing;
        updated["properties"]["description"] = props["description"].clone();
        updated["properties"]["tags"] = props.get("tags").cloned().unwrap_or(json!({}));
        updated["systemData"]["lastModifiedAt"] = json!(now);
        asset.versions.insert(v.to_owned(), updated.clone());
        return ok(200, updated);
    }
    if props.get("tags").is_none() {
        props["tags"] = json!({});
    }
    if props.get("description").is_none() {
        props["description"] = Value::Null;
    }
    props["properties"] = json!({"azureml.labels": "latest"});
    props["isArchived"] = json!(false);
    if props.get("isAnonymous").is_none() {
        props["isAnonymous"] = json!(false);
    }
    props["provisioningState"] = json!("Succeeded");
    // CodeVersion has no stage (environments and models do).
    if kind != "codes" {
        props["stage"] = json!("Development");
    }
    let out = json!({
        "id": format!("{key}/versions/{v}"),
        "name": v,
        "type": format!("{PROVIDER}/workspaces/{kind}/versions"),
        "properties": props,
        "systemData": system_data(&now),
    });
    // The label moves to the newest version.
    for other in asset.versions.values_mut() {
        if let Some(p) = other["properties"]["properties"].as_object_mut() {
            p.remove("azureml.labels");
        }
    }
    asset.versions.insert(v.to_owned(), out.clone());
    asset.latest = Some(v.to_owned());
    let mut r = ok(201, out);
    r.location = Some(url);
    r
}

fn env_put(sh: &Shared, ws_id: &str, name: &str, v: &str, b: &Value, url: String) -> Reply {
    let user = |m: &str| rp_error(sh, 400, "UserError", m);
    if !valid_name(name) || !valid_name(v) {
        return user(&format!(
            "Environment name and version must match the pattern ^[a-zA-Z0-9][a-zA-Z0-9\\-_]{{0,254}}$: {name}:{v}"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("azureml") || lower.starts_with("microsoft") {
        return user(&format!(
            "Environment name {name} is reserved: names starting with 'AzureML' or 'Microsoft' are reserved for curated environments."
        ));
    }
    let Some(p) = b.get("properties").filter(|p| p.is_object()) else {
        return user("The request body must contain 'properties'.");
    };
    let image = p.get("image").and_then(Value::as_str);
    let build = p.get("build").filter(|b| !b.is_null());
    match (image, build) {
        (Some(_), Some(_)) => {
            return user("More than one of BaseImage, BaseDockerfile, and BuildContext were set; these are mutually exclusive properties.")
        }
        (None, None) => {
            return user("One of BaseImage, BaseDockerfile, or BuildContext must be set.")
        }
        (Some(i), None) if !has_tag_or_digest(i) => {
            return user(&format!(
                "Image '{i}' must specify a tag or a digest (for example {i}:latest or {i}@sha256:...)."
            ))
        }
        _ => {}
    }
    if p.get("condaFile")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
        && image.is_none()
    {
        return user("A conda file requires an image.");
    }
    let mut props = p.clone();
    for (k, d) in [
        ("osType", json!("Linux")),
        ("autoRebuild", json!("Disabled")),
        ("condaFile", json!("")),
        ("environmentType", json!("UserCreated")),
    ] {
        if props.get(k).is_none() {
            props[k] = d;
        }
    }
    put_version(
        sh,
        ws_id,
        "environments",
        name,
        v,
        props,
        url,
        "Environment",
    )
}

fn model_put(sh: &Shared, ws_id: &str, name: &str, v: &str, b: &Value, url: String) -> Reply {
    let user = |m: &str| rp_error(sh, 400, "UserError", m);
    if !valid_name(name) || !valid_name(v) {
        return user(&format!("Model name and version must match the pattern ^[a-zA-Z0-9][a-zA-Z0-9\\-_]{{0,254}}$: {name}:{v}"));
    }
    let p = b["properties"].clone();
    let Some(uri) = p["modelUri"].as_str() else {
        return user("modelUri is required.");
    };
    // azureml://jobs/<id>/outputs/<output>/ must name a job with that output, whose files exist.
    if let Some(rest) = uri.strip_prefix("azureml://jobs/") {
        let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        if let [job, "outputs", output] = segs.as_slice() {
            let exists = sh
                .state
                .lock()
                .unwrap()
                .jobs
                .get(&format!("{ws_id}/jobs/{job}"))
                .map(|j| j.dir.join("outputs").join(output));
            match exists {
                None => {
                    return user(&format!(
                        "Job {job} referenced by modelUri {uri} was not found."
                    ))
                }
                Some(d)
                    if !d.is_dir()
                        || std::fs::read_dir(&d)
                            .map(|mut r| r.next().is_none())
                            .unwrap_or(true) =>
                {
                    return user(&format!(
                        "No files found at {uri}: the job's output {output} is empty or missing."
                    ))
                }
                _ => {}
            }
        } else {
            return user(&format!("Invalid modelUri {uri}."));
        }
    }
    let mut props = p;
    if props.get("modelType").is_none() {
        props["modelType"] = json!("custom_model");
    }
    put_version(sh, ws_id, "models", name, v, props, url, "Model")
}

/// `resources` (JobResourceConfiguration: ResourceConfiguration's instanceCount, instanceType,
/// properties, plus dockerArgs and shmSize; additionalProperties false) and `distribution`
/// (DistributionConfiguration, discriminated by distributionType PyTorch | TensorFlow | Mpi;
/// PyTorch's only property processCountPerInstance, int32, nullable; additionalProperties
/// false), as the 2025-12-01 definitions in mfe.json type them. The stand-in runs the PyTorch
/// distribution only.
fn check_resources_and_distribution(p: &Value) -> Result<(), String> {
    let int32 = |v: &Value| v.as_i64().is_some_and(|n| i32::try_from(n).is_ok());
    if let Some(r) = p.get("resources").filter(|r| !r.is_null()) {
        let Some(r) = r.as_object() else {
            return Err("resources must be an object.".into());
        };
        for (k, v) in r {
            let ok = match k.as_str() {
                "instanceCount" => int32(v) && v.as_i64() >= Some(1),
                "instanceType" | "dockerArgs" => v.is_string() || v.is_null(),
                "properties" => v.is_object() || v.is_null(),
                "shmSize" => v.as_str().is_some_and(|s| {
                    let t = s.trim_end_matches(['b', 'B', 'k', 'K', 'm', 'M', 'g', 'G']);
                    s.len() == t.len() + 1 && !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
                }),
                _ => {
                    return Err(format!(
                        "resources.{k} is not a property of JobResourceConfiguration."
                    ))
                }
            };
            if !ok {
                return Err(format!("resources.{k}: {v} is not a valid value."));
            }
        }
    }
    let Some(d) = p.get("distribution").filter(|d| !d.is_null()) else {
        return Ok(());
    };
    let Some(d) = d.as_object() else {
        return Err("distribution must be an object or null.".into());
    };
    match d.get("distributionType").and_then(Value::as_str) {
        Some("PyTorch") => {}
        Some(t @ ("TensorFlow" | "Mpi")) => {
            return Err(format!(
                "The stand-in runs the PyTorch distribution only, not {t}."
            ))
        }
        Some(t) => {
            return Err(format!(
                "distribution.distributionType {t} is not one of PyTorch, TensorFlow, Mpi."
            ))
        }
        None => return Err("distribution.distributionType is required.".into()),
    }
    for (k, v) in d {
        match k.as_str() {
            "distributionType" => {}
            "processCountPerInstance" if v.is_null() || int32(v) => {}
            "processCountPerInstance" => {
                return Err(format!(
                    "distribution.processCountPerInstance: {v} is not an int32."
                ))
            }
            _ => return Err(format!("distribution.{k} is not a property of PyTorch.")),
        }
    }
    Ok(())
}

fn job_put(sh: &Arc<Shared>, ws_id: &str, id: &str, b: &Value, url: String) -> Reply {
    let user = |m: &str| rp_error(sh, 400, "UserError", m);
    if !valid_name(id) {
        return user(&format!(
            "Job name {id} must match the pattern ^[a-zA-Z0-9][a-zA-Z0-9\\-_]{{0,254}}$."
        ));
    }
    let key = format!("{ws_id}/jobs/{id}");
    if sh.state.lock().unwrap().jobs.contains_key(&key) {
        return job_reput(sh, &key, id, b);
    }
    let p = &b["properties"];
    let sweep = p["jobType"] == "Sweep";
    if sweep {
        if let Err(m) = super::sweep::check(p) {
            return user(&m);
        }
    } else if p["jobType"] != "Command" {
        return user("The stand-in runs jobType Command and Sweep only.");
    }
    let c = if sweep { &p["trial"] } else { p };
    let Some(command) = c["command"].as_str().filter(|c| !c.trim().is_empty()) else {
        return user("The command of a Command job is required.");
    };
    let Some(env_id) = c["environmentId"].as_str() else {
        return user("environmentId is required.");
    };
    // The environment must be a version in this workspace (ARM has no @latest).
    let image = {
        let st = sh.state.lock().unwrap();
        env_id
            .strip_prefix(&format!("{ws_id}/environments/"))
            .and_then(|r| r.split_once("/versions/"))
            .and_then(|(n, v)| {
                st.envs
                    .get(&format!("{ws_id}/environments/{n}"))?
                    .versions
                    .get(v)
                    .cloned()
            })
            .and_then(|e| e["properties"]["image"].as_str().map(str::to_owned))
    };
    let Some(image) = image else {
        return user(&format!("Environment {env_id} was not found; environmentId must be the full ARM id of a registered environment version."));
    };
    if let Some(c) = p["computeId"].as_str() {
        let name = c.strip_prefix(&format!("{ws_id}/computes/"));
        let known = name.is_some_and(|n| sh.state.lock().unwrap().computes.contains(n));
        if !known {
            return user(&format!("Compute {c} was not found in the workspace."));
        }
    }
    if let Err(m) = check_resources_and_distribution(c) {
        return user(&m);
    }
    // The code version must exist (CommandJob.codeId, the ARM id of a code asset).
    if let Some(code) = c["codeId"].as_str() {
        if let Err(m) = super::data::code_dir_of(sh, ws_id, code) {
            return user(&m);
        }
    }
    // Inputs: uri_folder or uri_file on a known datastore, or literal; ${{…}} must name
    // declared inputs/outputs.
    let inputs = p["inputs"].as_object().cloned().unwrap_or_default();
    for (name, i) in &inputs {
        let uri = i["uri"].as_str().unwrap_or("");
        match i["jobInputType"].as_str() {
            Some("literal") => {}
            Some("uri_folder" | "uri_file") if uri.starts_with("azureml://datastores/") => {
                if let Err(m) = super::data::azureml_path(sh, uri) {
                    return user(&format!("Input {name}: {m}."));
                }
            }
            _ => {
                return user(&format!(
                    "Input {name}: the stand-in takes literal inputs, and uri_folder or uri_file inputs on azureml://datastores/, only."
                ))
            }
        }
    }
    let mut outputs = p["outputs"].as_object().cloned().unwrap_or_default();
    for r in placeholders(command) {
        let ok = match r.split_once('.') {
            Some(("inputs", n)) => inputs.contains_key(n),
            Some(("outputs", n)) => outputs.contains_key(n),
            Some(("search_space", n)) => sweep && p["searchSpace"].get(n).is_some(),
            _ => false,
        };
        if !ok {
            return user(&format!(
                "The command refers to ${{{{{r}}}}}, which is not an input or output of the job."
            ));
        }
    }
    if sweep {
        let mut r = ok(201, super::sweep::start(sh, ws_id, id, p, image));
        r.location = Some(url);
        return r;
    }
    let artifacts = format!("azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.{id}");
    for (name, o) in outputs.iter_mut() {
        if o.get("uri").is_none_or(Value::is_null) {
            o["uri"] = json!(super::data::default_output_uri(id, name));
        }
    }
    outputs.insert(
        "default".into(),
        json!({"jobOutputType": "uri_folder", "mode": "ReadWriteMount", "uri": artifacts}),
    );
    let now = now_rfc3339();
    let mut props = p.clone();
    props["outputs"] = Value::Object(outputs);
    props["status"] = json!("NotStarted");
    props["experimentName"] = p.get("experimentName").cloned().unwrap_or(json!("Default"));
    props["displayName"] = p.get("displayName").cloned().unwrap_or(json!(id));
    props["isArchived"] = json!(false);
    props["properties"] =
        json!({"azureml.runsource": "azureml.CommandJob", "ContentSnapshotId": sh.request_id()});
    let mut res = p.get("resources").cloned().unwrap_or(json!({}));
    if res.get("instanceCount").is_none() {
        res["instanceCount"] = json!(1);
    }
    if res.get("shmSize").is_none() {
        res["shmSize"] = json!("2g");
    }
    props["resources"] = res;
    props["services"] = json!({
        "Tracking": {"jobServiceType": "Tracking", "endpoint": format!("azureml://{}/mlflow/v1.0{ws_id}?", url.trim_start_matches("https://").split('/').next().unwrap_or_default())},
        "Studio": {"jobServiceType": "Studio", "endpoint": format!("https://ml.azure.com/runs/{id}?wsid={ws_id}")},
    });
    let body = json!({
        "id": key, "name": id,
        "type": format!("{PROVIDER}/workspaces/jobs"),
        "properties": props,
        "systemData": system_data(&now),
    });
    let dir = sh.job_dir(id);
    let _ = std::fs::create_dir_all(dir.join("user_logs"));
    sh.state
        .lock()
        .unwrap()
        .job_requests
        .insert(key.clone(), b.clone());
    sh.state.lock().unwrap().jobs.insert(
        key.clone(),
        Job {
            body: body.clone(),
            dir,
            cancel: false,
        },
    );
    super::runner::spawn(sh, key, image);
    let mut r = ok(201, body);
    r.location = Some(url);
    r
}

/// The `${{…}}` references in a command.
pub(crate) fn placeholders(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = command;
    while let Some(i) = rest.find("${{") {
        let after = &rest[i + 3..];
        match after.find("}}") {
            Some(j) => {
                out.push(after[..j].trim().to_owned());
                rest = &after[j + 2..];
            }
            None => break,
        }
    }
    out
}

/// The workspace's data plane on the stand-in's host: Run History's children of a run
/// (`GET /history/v1.0{workspace}/runs/{id}/children`) and MLflow's `runs/get` on the tracking
/// endpoint (`GET /mlflow/v1.0{workspace}/api/2.0/mlflow/runs/get?run_id=JOB`).
fn data_plane(sh: &Shared, method: &Method, path: &str, query: &str) -> Option<Reply> {
    let (rest, mlflow) = match (
        path.strip_prefix("/history/v1.0"),
        path.strip_prefix("/mlflow/v1.0"),
    ) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return None,
    };
    let ws_len = rest
        .match_indices('/')
        .nth(8)
        .map_or(rest.len(), |(i, _)| i);
    let (ws_id, tail) = rest.split_at(ws_len);
    if method != Method::GET {
        return Some(gateway(405, "MethodNotAllowed", "Only GET is served here."));
    }
    let reply = |status: u16, body: Value| Reply {
        error: status >= 400,
        ..ok(status, body)
    };
    if mlflow {
        if tail != "/api/2.0/mlflow/runs/get" {
            return Some(gateway(
                404,
                "NotFound",
                "The stand-in serves MLflow runs/get only.",
            ));
        }
        let job = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("run_id="))
            .unwrap_or("");
        let (status, body) = super::tracking::runs_get(sh, job);
        return Some(reply(status, body));
    }
    let parent = tail
        .strip_prefix("/runs/")
        .and_then(|t| t.strip_suffix("/children"));
    Some(
        match parent.and_then(|p| super::sweep::children(sh, ws_id, p)) {
            Some(list) => ok(200, list),
            None => rp_error(
                sh,
                404,
                "UserError",
                &format!("Run {} was not found.", parent.unwrap_or(tail)),
            ),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_digests_are_recognised() {
        assert!(has_tag_or_digest("r.io/a/b:1"));
        assert!(has_tag_or_digest("127.0.0.1:5000/a@sha256:00"));
        assert!(!has_tag_or_digest("127.0.0.1:5000/a/b"));
        assert!(!has_tag_or_digest("r.io/a"));
        assert_eq!(
            placeholders("t --data ${{inputs.data}} --output ${{ outputs.model }}"),
            vec!["inputs.data", "outputs.model"]
        );
    }
}
