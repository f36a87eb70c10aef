//! The workspace's computes and what they cost: clusters (AmlCompute) and compute instances as
//! the ComputeResource definition gives them, whether each bills now, a cluster's nodes
//! (listNodes), and the warnings `run --azure` and `sweep` print before they submit.
//! Starting, stopping and idle shutdown are in [`super::power`].

use std::borrow::Cow;

use reqwest::Method;
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use super::vmsize::{self, Price, VmSizes};
use super::{valid_name, AzureError, Client, NameRule};
use crate::error::Hint;

/// Why a compute command failed, or was refused before any request.
#[derive(Debug, Error)]
pub enum ComputeError {
    #[error("no compute {name} in workspace {workspace}")]
    NoCompute { name: String, workspace: String },
    #[error("compute {name} is {kind}, not a compute instance: {action} applies to compute instances only")]
    NotAnInstance {
        name: String,
        kind: String,
        action: &'static str,
    },
    #[error("idle time `{text}` {reason}")]
    BadIdleTime { text: String, reason: &'static str },
    #[error("{action} of compute {name} ended {status}: {message}")]
    OperationFailed {
        action: &'static str,
        name: String,
        status: String,
        message: String,
    },
    #[error("{action} of compute {name}: HTTP {status} without Azure-AsyncOperation or Location, so its end cannot be followed")]
    NoOperation {
        action: &'static str,
        name: String,
        status: u16,
    },
    #[error("the service's link {url} is not on the ARM endpoint {endpoint}; the token is not sent there")]
    ForeignUrl { url: String, endpoint: String },
    #[error(transparent)]
    Azure(#[from] AzureError),
}

impl Hint for ComputeError {
    fn hint(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(match self {
            ComputeError::NoCompute { .. } => "`envbuild compute list` shows the workspace's computes; without --compute a job runs serverless (with --instance-type)",
            ComputeError::NotAnInstance { .. } => "a cluster (AmlCompute) scales down to its minNodeCount by itself when idle; with minNodeCount 0 it costs nothing while idle (`envbuild compute show NAME`)",
            ComputeError::BadIdleTime { .. } => "give e.g. 30m, 2h or PT45M: Azure ML takes 15 minutes to 3 days",
            ComputeError::Azure(e) => return e.hint(),
            _ => return None,
        }))
    }
}

/// Node counts of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Nodes {
    pub current: u32,
    pub min: u32,
    pub max: u32,
}

/// A compute as envbuild shows it (from a ComputeResource).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compute {
    pub name: String,
    /// `computeType`: AmlCompute, ComputeInstance, Kubernetes, …
    #[serde(rename = "type")]
    pub kind: String,
    pub vm_size: Option<String>,
    /// An instance's `state`, a cluster's `allocationState`, else the `provisioningState`.
    pub state: String,
    /// A cluster's current, min and max node counts.
    pub nodes: Option<Nodes>,
    /// An instance's `idleTimeBeforeShutdown`, a cluster's `nodeIdleTimeBeforeScaleDown` (ISO 8601).
    pub idle: Option<String>,
    /// A cluster's `vmPriority` (Dedicated, LowPriority).
    pub vm_priority: Option<String>,
}

/// Whether a compute bills now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Billing {
    /// This many VMs are allocated (or, for a cluster's minNodeCount, kept).
    Yes(u32),
    No,
    /// Not billed through Azure ML (attached computes), or a state envbuild does not know.
    Unknown,
}

/// Instance states in which its VM is allocated (ComputeInstanceState).
const ALLOCATED: [&str; 7] = [
    "Running",
    "JobRunning",
    "Starting",
    "Restarting",
    "SettingUp",
    "UserSettingUp",
    "Stopping",
];
/// Instance states in which it is not.
const DEALLOCATED: [&str; 3] = ["Stopped", "CreateFailed", "Deleting"];

impl Compute {
    /// From a ComputeResource: type-specific fields sit under `properties.properties`.
    pub fn from_resource(r: &Value) -> Compute {
        let p = &r["properties"];
        let pp = &p["properties"];
        let s = |v: &Value| v.as_str().map(str::to_owned);
        let n = |v: &Value| v.as_u64().and_then(|x| u32::try_from(x).ok()).unwrap_or(0);
        let kind = s(&p["computeType"]).unwrap_or_else(|| "Unknown".into());
        let cluster = kind == "AmlCompute";
        let state = if kind == "ComputeInstance" {
            s(&pp["state"])
        } else if cluster {
            s(&pp["allocationState"])
        } else {
            None
        };
        Compute {
            name: s(&r["name"]).unwrap_or_default(),
            vm_size: s(&pp["vmSize"]),
            state: state
                .or_else(|| s(&p["provisioningState"]))
                .unwrap_or_else(|| "Unknown".into()),
            nodes: cluster.then(|| Nodes {
                current: n(&pp["currentNodeCount"]),
                min: n(&pp["scaleSettings"]["minNodeCount"]),
                max: n(&pp["scaleSettings"]["maxNodeCount"]),
            }),
            idle: if cluster {
                s(&pp["scaleSettings"]["nodeIdleTimeBeforeScaleDown"])
            } else {
                s(&pp["idleTimeBeforeShutdown"])
            },
            vm_priority: s(&pp["vmPriority"]),
            kind,
        }
    }

    pub fn is_instance(&self) -> bool {
        self.kind == "ComputeInstance"
    }

    /// An instance bills while its VM is allocated; a cluster for its current nodes, or its
    /// minNodeCount, which it keeps even when idle.
    pub fn billing(&self) -> Billing {
        if let Some(n) = self.nodes {
            return match n.current.max(n.min) {
                0 => Billing::No,
                k => Billing::Yes(k),
            };
        }
        if self.is_instance() {
            if ALLOCATED.contains(&self.state.as_str()) {
                return Billing::Yes(1);
            }
            if DEALLOCATED.contains(&self.state.as_str()) {
                return Billing::No;
            }
        }
        Billing::Unknown
    }

    /// The price tier of its VMs: `LowPriority` for a low-priority cluster, else `Standard`.
    pub fn tier(&self) -> &'static str {
        match self.vm_priority.as_deref() {
            Some("LowPriority") => "LowPriority",
            _ => "Standard",
        }
    }

    /// One VM's hourly price, from the location's list.
    pub fn price(&self, sizes: &VmSizes) -> Option<Price> {
        sizes.price(self.vm_size.as_deref()?, self.tier())
    }

    /// GPUs per VM, from the location's list.
    pub fn gpus(&self, sizes: &VmSizes) -> Option<u32> {
        sizes.gpus(self.vm_size.as_deref()?)
    }
}

/// A cluster node (AmlComputeNodeInformation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub id: String,
    /// idle, running, preparing, unusable, leaving, preempted.
    pub state: String,
    /// The run on it, if any.
    pub run: Option<String>,
}

/// `link` (an absolute URL the service gave: nextLink, Azure-AsyncOperation, Location) as a
/// path for [`Client::request`]: only on the ARM endpoint, its `api-version` left to the client.
pub fn link_path(client: &Client, link: &str) -> Result<String, ComputeError> {
    let endpoint = client.settings().endpoint.trim_end_matches('/');
    let foreign = || ComputeError::ForeignUrl {
        url: link.split('?').next().unwrap_or(link).to_owned(),
        endpoint: endpoint.to_owned(),
    };
    let rest = link.strip_prefix(endpoint).ok_or_else(foreign)?;
    if !rest.starts_with('/') {
        return Err(foreign());
    }
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("api-version="))
        .collect();
    Ok(if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    })
}

/// Every item of a pageable list: `first` (a workspace-relative path), then each `nextLink`.
pub fn all_pages(
    client: &Client,
    method: Method,
    first: &str,
    items: &str,
) -> Result<Vec<Value>, ComputeError> {
    let mut out = Vec::new();
    let mut page = client.ws(method, first, None)?.body;
    loop {
        out.extend(page[items].as_array().cloned().unwrap_or_default());
        match page["nextLink"].as_str().filter(|l| !l.is_empty()) {
            Some(next) => {
                let path = link_path(client, next)?;
                page = client.request(Method::GET, &path, None)?.body;
            }
            None => return Ok(out),
        }
    }
}

/// The computes of the workspace (all pages).
pub fn list(client: &Client) -> Result<Vec<Compute>, ComputeError> {
    Ok(all_pages(client, Method::GET, "computes", "value")?
        .iter()
        .map(Compute::from_resource)
        .collect())
}

/// One compute; none by that name is [`ComputeError::NoCompute`].
pub fn get(client: &Client, name: &str) -> Result<Compute, ComputeError> {
    if !valid_name(name) {
        return Err(AzureError::BadName {
            what: "compute name",
            name: name.to_owned(),
            rule: NameRule::Asset,
        }
        .into());
    }
    match client.get_opt(&format!("computes/{name}"))? {
        Some(r) => Ok(Compute::from_resource(&r)),
        None => Err(ComputeError::NoCompute {
            name: name.to_owned(),
            workspace: client.workspace.name.clone(),
        }),
    }
}

/// A cluster's nodes (`POST …/computes/{name}/listNodes`, all pages).
pub fn nodes(client: &Client, name: &str) -> Result<Vec<Node>, ComputeError> {
    let all = all_pages(
        client,
        Method::POST,
        &format!("computes/{name}/listNodes"),
        "nodes",
    )?;
    Ok(all
        .iter()
        .map(|n| Node {
            id: n["nodeId"].as_str().unwrap_or_default().to_owned(),
            state: n["nodeState"].as_str().unwrap_or("unknown").to_owned(),
            run: n["runId"].as_str().map(str::to_owned),
        })
        .collect())
}

/// The location's sizes and prices, or none when they cannot be read (the caller says so).
pub fn sizes(client: &Client) -> Result<VmSizes, AzureError> {
    vmsize::fetch(client)
}

/// What to say before a job goes to `name`: a cluster that keeps nodes up while idle, an
/// instance without idle shutdown. An unknown compute is [`ComputeError::NoCompute`], so the
/// caller stops before the job's PUT.
pub fn cost_warnings(client: &Client, name: &str) -> Result<Vec<String>, ComputeError> {
    let c = get(client, name)?;
    // Prices are a courtesy: a list that cannot be read leaves them unknown.
    let sizes = sizes(client).unwrap_or_default();
    Ok(warnings(&c, &sizes))
}

/// The warnings for one compute (see [`cost_warnings`]).
pub fn warnings(c: &Compute, sizes: &VmSizes) -> Vec<String> {
    let price = c.price(sizes);
    let each = price
        .as_ref()
        .map_or_else(|| "an unknown price".to_owned(), Price::to_string);
    let mut out = Vec::new();
    if let Some(n) = c.nodes.filter(|n| n.min > 0) {
        let total = price.as_ref().map_or(String::new(), |p| {
            format!(
                " = {}",
                Price {
                    per_hour: p.per_hour * f64::from(n.min),
                    currency: p.currency.clone()
                }
            )
        });
        out.push(format!(
            "cluster {} keeps {} node(s) up (minNodeCount {}): it bills {} × {each}{total} while idle, after this job too",
            c.name, n.min, n.min, n.min
        ));
    }
    if c.is_instance() && c.idle.is_none() {
        out.push(format!(
            "compute instance {} has no idle shutdown: it bills {each} until someone stops it (`envbuild compute idle-shutdown {} 30m`)",
            c.name, c.name
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sizes() -> VmSizes {
        VmSizes::parse(
            "eastus",
            &json!({"value": [{"name": "Standard_NC6", "gpus": 1, "estimatedVMPrices": {
                "billingCurrency": "USD", "unitOfMeasure": "OneHour", "values": [
                    {"retailPrice": 0.9, "osType": "Linux", "vmTier": "Standard"},
                    {"retailPrice": 0.18, "osType": "Linux", "vmTier": "LowPriority"}]}}]}),
        )
    }

    fn cluster(current: u32, min: u32, priority: &str) -> Compute {
        // Shaped as the 2025-12-01 example Compute/get/AmlCompute.json.
        Compute::from_resource(&json!({
            "name": "gpu", "type": "Microsoft.MachineLearningServices/workspaces/computes",
            "properties": {"computeType": "AmlCompute", "provisioningState": "Succeeded", "properties": {
                "vmSize": "STANDARD_NC6", "vmPriority": priority,
                "scaleSettings": {"maxNodeCount": 4, "minNodeCount": min, "nodeIdleTimeBeforeScaleDown": "PT2M"},
                "allocationState": "Steady", "currentNodeCount": current}}}))
    }

    fn instance(state: &str, idle: Option<&str>) -> Compute {
        let mut pp = json!({"vmSize": "STANDARD_NC6", "state": state});
        if let Some(i) = idle {
            pp["idleTimeBeforeShutdown"] = json!(i);
        }
        Compute::from_resource(&json!({"name": "ci", "properties": {
            "computeType": "ComputeInstance", "provisioningState": "Succeeded", "properties": pp}}))
    }

    #[test]
    fn billing_follows_nodes_and_instance_state() {
        let c = cluster(0, 0, "Dedicated");
        assert_eq!(
            c.nodes,
            Some(Nodes {
                current: 0,
                min: 0,
                max: 4
            })
        );
        assert_eq!(
            (c.state.as_str(), c.idle.as_deref()),
            ("Steady", Some("PT2M"))
        );
        assert_eq!(c.billing(), Billing::No);
        assert_eq!(cluster(3, 0, "Dedicated").billing(), Billing::Yes(3));
        assert_eq!(cluster(0, 2, "Dedicated").billing(), Billing::Yes(2));
        assert_eq!(instance("Running", None).billing(), Billing::Yes(1));
        assert_eq!(instance("Stopping", None).billing(), Billing::Yes(1));
        assert_eq!(instance("Stopped", None).billing(), Billing::No);
        assert_eq!(instance("Unusable", None).billing(), Billing::Unknown);
        let aks = Compute::from_resource(
            &json!({"name": "k", "properties": {"computeType": "Kubernetes", "provisioningState": "Succeeded"}}),
        );
        assert_eq!(
            (aks.state.as_str(), aks.billing()),
            ("Succeeded", Billing::Unknown)
        );
        let s = sizes();
        assert_eq!(cluster(0, 0, "Dedicated").price(&s).unwrap().per_hour, 0.9);
        assert_eq!(
            cluster(0, 0, "LowPriority").price(&s).unwrap().per_hour,
            0.18
        );
        assert_eq!(cluster(0, 0, "Dedicated").gpus(&s), Some(1));
        assert_eq!(cluster(0, 0, "Dedicated").price(&VmSizes::default()), None);
    }

    #[test]
    fn warnings_name_the_cost_or_say_it_is_unknown() {
        let w = warnings(&cluster(0, 2, "Dedicated"), &sizes());
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("minNodeCount 2") && w[0].contains("2 × $0.90/h = $1.80/h"),
            "{w:?}"
        );
        let w = warnings(&cluster(0, 1, "Dedicated"), &VmSizes::default());
        assert!(w[0].contains("1 × an unknown price while idle"), "{w:?}");
        assert!(warnings(&cluster(3, 0, "Dedicated"), &sizes()).is_empty());
        let w = warnings(&instance("Running", None), &sizes());
        assert!(
            w[0].contains("no idle shutdown") && w[0].contains("$0.90/h"),
            "{w:?}"
        );
        assert!(warnings(&instance("Running", Some("PT30M")), &sizes()).is_empty());
    }

    #[test]
    fn links_stay_on_the_arm_endpoint_and_leave_the_api_version_to_the_client() {
        let client = Client::new(
            crate::azureml::Workspace {
                subscription_id: "s".into(),
                resource_group: "r".into(),
                name: "w".into(),
            },
            crate::azureml::Settings {
                endpoint: "https://arm.example".into(),
                ..Default::default()
            },
            Box::new(crate::azureml::StaticToken(crate::auth::Secret::new("t"))),
        )
        .unwrap();
        assert_eq!(
            link_path(&client, "https://arm.example/subscriptions/s/providers/P/locations/eastus/computeOperationsStatus/1?api-version=2025-12-01&type=async").unwrap(),
            "/subscriptions/s/providers/P/locations/eastus/computeOperationsStatus/1?type=async"
        );
        assert_eq!(
            link_path(&client, "https://arm.example/x/jobs?api-version=1").unwrap(),
            "/x/jobs"
        );
        for foreign in [
            "https://evil.example/subscriptions/s?api-version=1",
            "https://arm.example.evil/subscriptions/s",
            "http://arm.example/subscriptions/s",
        ] {
            let e = link_path(&client, foreign).unwrap_err().to_string();
            assert!(
                e.contains("is not on the ARM endpoint https://arm.example"),
                "{e}"
            );
        }
    }
}
