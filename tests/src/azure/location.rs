//! What the stand-in serves outside the workspace's children: the workspace itself (Workspaces_Get,
//! a tracked resource with its `location`) and, under
//! `/subscriptions/{s}/providers/Microsoft.MachineLearningServices/locations/{loc}/`, the
//! location's `vmSizes` and the status (`computeOperationsStatus`, for `Azure-AsyncOperation`)
//! and result (`computeOperationsResults`, for `Location`) of compute starts and stops.

use axum::http::Method;
use serde_json::{json, Value};

use super::arm::{gateway, ok, rp_error, Reply};
use super::compute::LOCATION;
use super::Shared;

const PROVIDER: &str = "Microsoft.MachineLearningServices";

/// The workspace (Workspaces_Get): a tracked resource with its `location`.
pub(super) fn workspace_get(sh: &Shared, ws_id: &str, name: &str) -> Reply {
    ok(
        200,
        json!({"id": ws_id, "name": name, "type": format!("{PROVIDER}/workspaces"),
            "location": LOCATION, "tags": {}, "kind": "Default",
            "sku": {"name": "Basic", "tier": "Basic"},
            "identity": {"type": "SystemAssigned", "principalId": sh.request_id(), "tenantId": sh.request_id()},
            "properties": {"friendlyName": name, "provisioningState": "Succeeded",
                "workspaceId": sh.request_id(), "hbiWorkspace": false, "v1LegacyMode": false,
                "publicNetworkAccess": "Enabled"}}),
    )
}

/// Under `/subscriptions/{s}/providers/Microsoft.MachineLearningServices/locations/{loc}/`:
/// `vmSizes`, and the operations of start and stop. `None` for any other path (a job cancel's
/// `mfeOperationResults` included).
pub(super) fn subscription_scope(
    sh: &Shared,
    method: &Method,
    path: &str,
    api: &str,
) -> Option<Reply> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let [s, sub, p, provider, l, loc, rest @ ..] = parts.as_slice() else {
        return None;
    };
    if !s.eq_ignore_ascii_case("subscriptions")
        || !p.eq_ignore_ascii_case("providers")
        || !provider.eq_ignore_ascii_case(PROVIDER)
        || !l.eq_ignore_ascii_case("locations")
    {
        return None;
    }
    // Only its own routes: a job cancel's `mfeOperationResults` Location goes on to arm.rs.
    if !matches!(
        rest,
        ["vmSizes"] | ["computeOperationsStatus" | "computeOperationsResults", _]
    ) {
        return None;
    }
    let mut st = sh.state.lock().unwrap();
    if !st.workspaces.iter().any(|(s, _, _)| s == sub) {
        return Some(gateway(
            404,
            "SubscriptionNotFound",
            &format!("The subscription '{sub}' could not be found."),
        ));
    }
    if !loc.eq_ignore_ascii_case(LOCATION) {
        return Some(gateway(400, "LocationNotAvailableForResourceType", &format!(
            "The provided location '{loc}' is not available for resource type '{PROVIDER}/locations'. List of available regions for the resource type is '{LOCATION}'."
        )));
    }
    st.computes.advance();
    let _ = api;
    Some(match (method.as_str(), rest) {
        ("GET", ["vmSizes"]) => ok(200, st.computes.vm_sizes.clone()),
        ("GET", [kind @ ("computeOperationsStatus" | "computeOperationsResults"), id]) => {
            match st.computes.ops.get(*id) {
                None => {
                    drop(st);
                    rp_error(
                        sh,
                        404,
                        "UserError",
                        &format!("Operation {id} was not found."),
                    )
                }
                Some(op) if *kind == "computeOperationsResults" => {
                    let mut r = ok(if op.ended_at.is_some() { 200 } else { 202 }, Value::Null);
                    r.body = None;
                    if op.ended_at.is_none() {
                        r.headers = vec![("retry-after", "10".into())];
                    }
                    r
                }
                Some(op) => {
                    let status = match (&op.ended_at, op.failed) {
                        (None, _) => "InProgress",
                        (Some(_), false) => "Succeeded",
                        (Some(_), true) => "Failed",
                    };
                    let mut b =
                        json!({"id": path, "name": id, "status": status, "startTime": op.began_at});
                    if let Some(e) = &op.ended_at {
                        b["endTime"] = json!(e);
                    }
                    if status == "Failed" {
                        let what = if op.start { "start" } else { "stop" };
                        b["error"] = json!({"code": "UserError", "message": format!(
                            "Failed to {what} compute instance {}: the VM did not answer.", op.compute
                        )});
                    }
                    ok(200, b)
                }
            }
        }
        _ => {
            drop(st);
            gateway(
                404,
                "NotFound",
                &format!("The requested resource {method} {path} does not exist in the stand-in."),
            )
        }
    })
}
