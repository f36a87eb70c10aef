//! Computes in the stand-in, shaped as machineLearningServices.json (stable/2025-12-01) gives
//! them: ComputeResource GET and list (pages by `$skip`), listNodes (AmlComputeNodesInformation),
//! start and stop of compute instances (202 with `Azure-AsyncOperation`, `Location` and
//! `Retry-After`; the operation goes InProgress → Succeeded while the instance goes
//! Starting → Running or Stopping → Stopped), updateIdleShutdownSetting (IdleShutdownSetting,
//! 15 minutes to 3 days; 200 without a body). The location's vmSizes and the operations'
//! status are served by `location.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::{json, Value};

use super::arm::{gateway, ok, rp_error, Reply};
use super::{now_rfc3339, AzureStandIn, Shared};

const PROVIDER: &str = "Microsoft.MachineLearningServices";
/// The stand-in's region.
pub const LOCATION: &str = "eastus";
/// Computes per page of the list.
const PAGE: usize = 2;

/// A start or stop in progress or done.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub(crate) compute: String,
    pub(crate) start: bool,
    pub(crate) began: Instant,
    pub(crate) began_at: String,
    pub(crate) ended_at: Option<String>,
    /// The operation ends Failed (the instance keeps its state).
    pub(crate) failed: bool,
}

/// What the stand-in knows of computes.
#[derive(Debug, Clone)]
pub struct Computes {
    /// Name → the Compute object (ComputeResource's `properties`).
    pub(crate) items: BTreeMap<String, Value>,
    /// Cluster name → its nodes (AmlComputeNodeInformation).
    pub(crate) nodes: BTreeMap<String, Vec<Value>>,
    pub(crate) ops: BTreeMap<String, Operation>,
    /// The location's VirtualMachineSizeListResult.
    pub vm_sizes: Value,
    /// How long a start or stop takes.
    pub op_time: Duration,
    /// Bodies that reached updateIdleShutdownSetting: (compute, body).
    pub idle_requests: Vec<(String, Value)>,
    /// Computes whose next start or stop fails.
    pub fail_next_operation: std::collections::BTreeSet<String>,
}

fn price(os: &str, tier: &str, v: f64) -> Value {
    json!({"retailPrice": v, "osType": os, "vmTier": tier})
}

/// A VirtualMachineSize; `prices` (Linux Standard, Linux LowPriority) or none at all.
fn size(name: &str, family: &str, cpus: u32, gpus: u32, prices: Option<(f64, f64)>) -> Value {
    let mut s = json!({"name": name, "family": family, "vCPUs": cpus, "gpus": gpus,
        "osVhdSizeMB": 1_047_552, "maxResourceVolumeMB": 28_672, "memoryGB": 14.0,
        "lowPriorityCapable": true, "premiumIO": true,
        "supportedComputeTypes": ["AmlCompute", "ComputeInstance"]});
    if let Some((standard, low)) = prices {
        s["estimatedVMPrices"] = json!({"billingCurrency": "USD", "unitOfMeasure": "OneHour",
            "values": [price("Windows", "Standard", standard * 1.7), price("Linux", "LowPriority", low),
                       price("Linux", "Standard", standard), price("Windows", "LowPriority", low * 2.0)]});
    }
    s
}

impl Default for Computes {
    /// `cpu-cluster` (Standard_DS3_v2, 0 to 4 nodes) and a list of sizes: two with prices (as
    /// the 2025-12-01 example VirtualMachineSize/list.json), a GPU size with a price, and
    /// `Standard_ND96amsr_A100_v4` without `estimatedVMPrices`.
    fn default() -> Computes {
        let mut c = Computes {
            items: BTreeMap::new(),
            nodes: BTreeMap::new(),
            ops: BTreeMap::new(),
            vm_sizes: json!({"value": [
                size("Standard_DS3_v2", "standardDSv2Family", 4, 0, Some((0.29, 0.06))),
                size("Standard_DS11_v2", "standardDSv2Family", 2, 0, Some((0.18, 0.04))),
                size("Standard_NC24ads_A100_v4", "standardNCADSA100v4Family", 24, 1, Some((3.67, 0.73))),
                size("Standard_ND96amsr_A100_v4", "standardNDAMSv4_A100Family", 96, 8, None),
            ]}),
            op_time: Duration::from_millis(400),
            idle_requests: Vec::new(),
            fail_next_operation: Default::default(),
        };
        c.items.insert(
            "cpu-cluster".into(),
            cluster("Standard_DS3_v2", "Dedicated", 0, 4, 0),
        );
        c
    }
}

/// An AmlCompute (example Compute/get/AmlCompute.json), Linux, steady.
fn cluster(vm: &str, priority: &str, min: u32, max: u32, current: u32) -> Value {
    json!({"computeType": "AmlCompute", "computeLocation": LOCATION, "provisioningState": "Succeeded",
        "description": null, "createdOn": now_rfc3339(), "modifiedOn": now_rfc3339(),
        "isAttachedCompute": false, "disableLocalAuth": true,
        "properties": {"osType": "Linux", "vmSize": vm, "vmPriority": priority,
            "isolatedNetwork": false, "subnet": null,
            "scaleSettings": {"maxNodeCount": max, "minNodeCount": min, "nodeIdleTimeBeforeScaleDown": "PT2M"},
            "remoteLoginPortPublicAccess": "Disabled", "allocationState": "Steady",
            "allocationStateTransitionTime": now_rfc3339(), "errors": null,
            "currentNodeCount": current, "targetNodeCount": current,
            "nodeStateCounts": {"preparingNodeCount": 0, "runningNodeCount": 0, "idleNodeCount": current,
                "unusableNodeCount": 0, "leavingNodeCount": 0, "preemptedNodeCount": 0},
            "enableNodePublicIp": true}})
}

impl Computes {
    /// Whether a compute of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.items.contains_key(name)
    }

    /// Finishes the operations whose time has come: the instance reaches Running or Stopped.
    pub(crate) fn advance(&mut self) {
        for op in self.ops.values_mut() {
            if op.ended_at.is_none() && op.began.elapsed() >= self.op_time {
                op.ended_at = Some(now_rfc3339());
                let (name, state, status) = match (op.start, op.failed) {
                    (true, false) => ("Start", "Running", "Succeeded"),
                    (false, false) => ("Stop", "Stopped", "Succeeded"),
                    (true, true) => ("Start", "Stopped", "StartFailed"),
                    (false, true) => ("Stop", "Running", "StopFailed"),
                };
                if let Some(c) = self.items.get_mut(&op.compute) {
                    c["properties"]["state"] = json!(state);
                    c["properties"]["lastOperation"] = json!({
                        "operationName": name, "operationTime": op.began_at,
                        "operationStatus": status, "operationTrigger": "User"});
                }
            }
        }
    }
}

impl AzureStandIn {
    /// Adds a cluster (AmlCompute) with these node counts.
    pub fn add_cluster(
        &self,
        name: &str,
        vm: &str,
        priority: &str,
        min: u32,
        max: u32,
        current: u32,
    ) {
        let mut st = self.shared.state.lock().unwrap();
        st.computes
            .items
            .insert(name.into(), cluster(vm, priority, min, max, current));
    }

    /// Adds a compute instance in `state`, with an idle shutdown or none (example
    /// Compute/get/ComputeInstance.json).
    pub fn add_instance(&self, name: &str, vm: &str, state: &str, idle: Option<&str>) {
        let mut p = json!({"vmSize": vm, "applicationSharingPolicy": "Personal",
            "sshSettings": {"sshPublicAccess": "Disabled", "adminUserName": "azureuser", "sshPort": 4001},
            "computeInstanceAuthorizationType": "personal", "errors": [], "state": state,
            "enableNodePublicIp": true});
        if let Some(i) = idle {
            p["idleTimeBeforeShutdown"] = json!(i);
        }
        let body = json!({"computeType": "ComputeInstance", "computeLocation": LOCATION,
            "provisioningState": "Succeeded", "description": null, "createdOn": now_rfc3339(),
            "modifiedOn": now_rfc3339(), "isAttachedCompute": false, "disableLocalAuth": true,
            "properties": p});
        self.shared
            .state
            .lock()
            .unwrap()
            .computes
            .items
            .insert(name.into(), body);
    }

    /// Gives cluster `name` these nodes: (nodeId, nodeState, runId).
    pub fn set_nodes(&self, name: &str, nodes: &[(&str, &str, Option<&str>)]) {
        let list = nodes
            .iter()
            .enumerate()
            .map(|(i, (id, state, run))| {
                json!({"nodeId": id, "privateIpAddress": format!("10.0.0.{}", i + 4),
                    "publicIpAddress": null, "port": 50000 + i, "nodeState": state, "runId": run})
            })
            .collect();
        self.shared
            .state
            .lock()
            .unwrap()
            .computes
            .nodes
            .insert(name.into(), list);
    }

    /// The next start or stop of `name` ends Failed.
    pub fn fail_next_operation(&self, name: &str) {
        let mut st = self.shared.state.lock().unwrap();
        st.computes.fail_next_operation.insert(name.into());
    }

    /// A compute's `properties.properties` as the stand-in holds it now.
    pub fn compute_properties(&self, name: &str) -> Option<Value> {
        let st = self.shared.state.lock().unwrap();
        st.computes.items.get(name).map(|c| c["properties"].clone())
    }

    /// The bodies updateIdleShutdownSetting received.
    pub fn idle_requests(&self) -> Vec<(String, Value)> {
        self.shared
            .state
            .lock()
            .unwrap()
            .computes
            .idle_requests
            .clone()
    }
}

fn resource(ws_id: &str, name: &str, props: &Value) -> Value {
    json!({"id": format!("{ws_id}/computes/{name}"), "name": name,
        "type": format!("{PROVIDER}/workspaces/computes"), "location": LOCATION,
        "tags": {}, "properties": props})
}

fn not_found(sh: &Shared, name: &str) -> Reply {
    rp_error(
        sh,
        404,
        "UserError",
        &format!("Compute {name} was not found in the workspace."),
    )
}

/// `{ws}/computes…`: `rest` is what follows `computes`.
pub(super) fn handle(
    sh: &Shared,
    method: &Method,
    ws_id: &str,
    rest: &[&str],
    body: &[u8],
    query: &str,
    api: &str,
) -> Reply {
    let base = sh.base_url.lock().unwrap().clone();
    let mut st = sh.state.lock().unwrap();
    st.computes.advance();
    let computes = &mut st.computes;
    match (method.as_str(), rest) {
        ("GET", []) => {
            let all: Vec<Value> = computes
                .items
                .iter()
                .map(|(n, p)| resource(ws_id, n, p))
                .collect();
            // $skip is the list's continuation (PaginationParameter).
            let skip = query_value(query, "$skip").unwrap_or(0);
            let page: Vec<Value> = all.iter().skip(skip).take(PAGE).cloned().collect();
            let mut out = json!({"value": page});
            if skip + PAGE < all.len() {
                out["nextLink"] = json!(format!(
                    "{base}{ws_id}/computes?api-version={api}&$skip={}",
                    skip + PAGE
                ));
            }
            ok(200, out)
        }
        ("GET", [name]) => match computes.items.get(*name) {
            Some(p) => ok(200, resource(ws_id, name, p)),
            None => {
                drop(st);
                not_found(sh, name)
            }
        },
        ("POST", [name, action]) => {
            let Some(c) = computes.items.get(*name).cloned() else {
                drop(st);
                return not_found(sh, name);
            };
            let kind = c["computeType"].as_str().unwrap_or_default().to_owned();
            let instance_only = |what: &str| {
                rp_error(sh, 400, "UserError", &format!(
                    "{what} is supported for compute instances only; compute {name} is of type {kind}."
                ))
            };
            match *action {
                "listNodes" if kind == "AmlCompute" => ok(
                    200,
                    json!({"nodes": computes.nodes.get(*name).cloned().unwrap_or_default()}),
                ),
                "listNodes" => {
                    drop(st);
                    rp_error(sh, 400, "UserError", &format!("listNodes is supported for AmlCompute only; compute {name} is of type {kind}."))
                }
                "start" | "stop" if kind != "ComputeInstance" => {
                    drop(st);
                    instance_only(action)
                }
                "start" | "stop" => {
                    let start = *action == "start";
                    let state = c["properties"]["state"].as_str().unwrap_or_default();
                    let ready = if start { "Stopped" } else { "Running" };
                    // A stop also takes an instance that runs a job.
                    let can = state == ready || (!start && state == "JobRunning");
                    if !can {
                        drop(st);
                        return rp_error(sh, 409, "UserError", &format!(
                            "Compute instance {name} is {state}; it can be {action}ed when it is {ready}."
                        ));
                    }
                    let id = sh.request_id();
                    computes.ops.insert(
                        id.clone(),
                        Operation {
                            compute: (*name).to_owned(),
                            start,
                            began: Instant::now(),
                            began_at: now_rfc3339(),
                            ended_at: None,
                            failed: computes.fail_next_operation.remove(*name),
                        },
                    );
                    if let Some(c) = computes.items.get_mut(*name) {
                        c["properties"]["state"] =
                            json!(if start { "Starting" } else { "Stopping" });
                    }
                    let sub = ws_id.split('/').nth(2).unwrap_or_default();
                    let ops = format!(
                        "{base}/subscriptions/{sub}/providers/{PROVIDER}/locations/{LOCATION}"
                    );
                    let mut r = ok(202, Value::Null);
                    r.body = None;
                    r.location = Some(format!(
                        "{ops}/computeOperationsResults/{id}?api-version={api}"
                    ));
                    r.headers = vec![
                        (
                            "azure-asyncoperation",
                            format!("{ops}/computeOperationsStatus/{id}?api-version={api}"),
                        ),
                        ("retry-after", "10".into()),
                    ];
                    r
                }
                "updateIdleShutdownSetting" => {
                    let parsed: Result<Value, _> = serde_json::from_slice(body);
                    computes.idle_requests.push((
                        (*name).to_owned(),
                        parsed.as_ref().cloned().unwrap_or(Value::Null),
                    ));
                    if kind != "ComputeInstance" {
                        drop(st);
                        return instance_only("updateIdleShutdownSetting");
                    }
                    // The definition first (a 400 UserError naming the field), then the
                    // range its description gives.
                    let definition = super::schema::request_definition(&["computes", name, action]);
                    if let (Some(d), Ok(v)) = (definition, &parsed) {
                        if let Some(m) = super::schema::refusal(d, v) {
                            drop(st);
                            return rp_error(sh, 400, "UserError", &m);
                        }
                    }
                    let idle = match check_idle_body(parsed.ok()) {
                        Ok(i) => i,
                        Err(m) => {
                            drop(st);
                            return rp_error(sh, 400, "UserError", &m);
                        }
                    };
                    if let Some(c) = computes.items.get_mut(*name) {
                        c["properties"]["idleTimeBeforeShutdown"] = json!(idle);
                    }
                    let mut r = ok(200, Value::Null);
                    r.body = None;
                    r
                }
                _ => {
                    drop(st);
                    gateway(404, "NotFound", &format!("The requested resource POST computes/{name}/{action} does not exist in the stand-in."))
                }
            }
        }
        _ => {
            drop(st);
            gateway(
                405,
                "MethodNotAllowed",
                &format!("The stand-in does not serve {method} on computes."),
            )
        }
    }
}

/// An IdleShutdownSetting body: an object whose only property is `idleTimeBeforeShutdown`, an
/// ISO 8601 duration from 15 minutes to 3 days.
fn check_idle_body(b: Option<Value>) -> Result<String, String> {
    let Some(Value::Object(o)) = b else {
        return Err("The request body must be an IdleShutdownSetting object.".into());
    };
    if let Some(k) = o.keys().find(|k| *k != "idleTimeBeforeShutdown") {
        return Err(format!("{k} is not a property of IdleShutdownSetting."));
    }
    let Some(t) = o.get("idleTimeBeforeShutdown").and_then(Value::as_str) else {
        return Err("idleTimeBeforeShutdown must be a string in ISO 8601 format.".into());
    };
    match iso_seconds(t) {
        Some(s) if (900..=259_200).contains(&s) => Ok(t.to_owned()),
        Some(_) => Err(format!(
            "idleTimeBeforeShutdown {t} is out of range: minimum is 15 min, maximum is 3 days."
        )),
        None => Err(format!(
            "idleTimeBeforeShutdown {t} is not an ISO 8601 duration."
        )),
    }
}

/// Seconds of `P[nD][T[nH][nM][nS]]`.
fn iso_seconds(t: &str) -> Option<u64> {
    let body = t.strip_prefix('P')?;
    let (d, time) = body.split_once('T').unwrap_or((body, ""));
    let mut total = 0u64;
    for (part, units) in [(d, "D"), (time, "HMS")] {
        let mut n = String::new();
        for ch in part.chars() {
            if ch.is_ascii_digit() {
                n.push(ch);
            } else if units.contains(ch) && !n.is_empty() {
                let mul = match ch {
                    'D' => 86_400,
                    'H' => 3600,
                    'M' => 60,
                    _ => 1,
                };
                total = total.checked_add(n.parse::<u64>().ok()?.checked_mul(mul)?)?;
                n.clear();
            } else {
                return None;
            }
        }
        if !n.is_empty() {
            return None;
        }
    }
    (!body.is_empty() && body != "T").then_some(total)
}

/// The number `key` is set to in `query`.
pub(super) fn query_value(query: &str, key: &str) -> Option<usize> {
    query
        .replace("%24", "$")
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_owned))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_bodies_are_checked_as_the_definition_says() {
        assert_eq!(
            check_idle_body(Some(json!({"idleTimeBeforeShutdown": "PT30M"}))).unwrap(),
            "PT30M"
        );
        assert_eq!(
            check_idle_body(Some(json!({"idleTimeBeforeShutdown": "P3D"}))).unwrap(),
            "P3D"
        );
        for (b, why) in [
            (json!({"idleTimeBeforeShutdown": "PT14M"}), "out of range"),
            (json!({"idleTimeBeforeShutdown": "P3DT1S"}), "out of range"),
            (json!({"idleTimeBeforeShutdown": "30m"}), "not an ISO 8601"),
            (json!({"idleTimeBeforeShutdown": 30}), "must be a string"),
            (json!({"idle": "PT30M"}), "not a property"),
            (json!([]), "IdleShutdownSetting object"),
        ] {
            let e = check_idle_body(Some(b)).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
