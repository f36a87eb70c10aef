//! `envbuild status` as one library call: the workspace's jobs that have not ended (every page
//! of the jobs list, `listViewType=ActiveOnly`: not archived) and the computes that bill now,
//! each with its hourly price when the location's list gives one.

use reqwest::Method;
use serde::Serialize;
use serde_json::Value;

use super::compute::{self, all_pages, Billing, Compute, ComputeError};
use super::job::TERMINAL;
use super::vmsize::Price;
use super::Client;

/// A job that has not ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveJob {
    pub name: String,
    pub status: String,
    /// Command, Sweep, Pipeline, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The compute's name; none for serverless.
    pub compute: Option<String>,
    pub created: Option<String>,
}

/// A compute that bills now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Billed {
    #[serde(flatten)]
    pub compute: Compute,
    /// VMs billed.
    pub vms: u32,
    /// One VM's hourly price; none when the list has none.
    pub price: Option<Price>,
    /// `vms` × `price`.
    pub per_hour: Option<Price>,
}

/// The workspace at a glance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub jobs: Vec<ActiveJob>,
    pub billing: Vec<Billed>,
    /// The computes whose billing envbuild cannot tell (attached ones), by name.
    pub unknown: Vec<String>,
    /// Why prices are missing, when the location's list could not be read.
    pub prices_note: Option<String>,
}

impl Status {
    /// The sum of the known hourly costs, and whether some are unknown.
    pub fn total(&self) -> (Option<Price>, bool) {
        let mut sum: Option<Price> = None;
        let mut unknown = false;
        for b in &self.billing {
            match &b.per_hour {
                Some(p) => match &mut sum {
                    Some(s) if s.currency == p.currency => s.per_hour += p.per_hour,
                    Some(_) => unknown = true,
                    None => sum = Some(p.clone()),
                },
                None => unknown = true,
            }
        }
        (sum, unknown)
    }
}

fn active_job(j: &Value) -> Option<ActiveJob> {
    let p = &j["properties"];
    let status = p["status"].as_str().unwrap_or("Unknown");
    if TERMINAL.contains(&status) {
        return None;
    }
    Some(ActiveJob {
        name: j["name"].as_str().unwrap_or_default().to_owned(),
        status: status.to_owned(),
        kind: p["jobType"].as_str().unwrap_or("Unknown").to_owned(),
        compute: p["computeId"]
            .as_str()
            .map(|c| c.rsplit('/').next().unwrap_or(c).to_owned()),
        created: j["systemData"]["createdAt"].as_str().map(str::to_owned),
    })
}

/// The jobs that have not ended (all pages).
pub fn active_jobs(client: &Client) -> Result<Vec<ActiveJob>, ComputeError> {
    Ok(
        all_pages(client, Method::GET, "jobs?listViewType=ActiveOnly", "value")?
            .iter()
            .filter_map(active_job)
            .collect(),
    )
}

/// Jobs, then computes and prices.
pub fn status(client: &Client) -> Result<Status, ComputeError> {
    let jobs = active_jobs(client)?;
    let computes = compute::list(client)?;
    let (sizes, prices_note) = match compute::sizes(client) {
        Ok(s) => (s, None),
        Err(e) => (Default::default(), Some(e.to_string())),
    };
    let mut billing = Vec::new();
    let mut unknown = Vec::new();
    for c in computes {
        match c.billing() {
            Billing::Yes(vms) => {
                let price = c.price(&sizes);
                let per_hour = price.as_ref().map(|p| Price {
                    per_hour: p.per_hour * f64::from(vms),
                    currency: p.currency.clone(),
                });
                billing.push(Billed {
                    compute: c,
                    vms,
                    price,
                    per_hour,
                });
            }
            Billing::Unknown => unknown.push(c.name),
            Billing::No => {}
        }
    }
    Ok(Status {
        jobs,
        billing,
        unknown,
        prices_note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_jobs_that_have_not_ended_are_active() {
        let j = |s: &str| {
            json!({"name": "j", "properties": {"status": s, "jobType": "Command",
            "computeId": "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w/computes/gpu"},
            "systemData": {"createdAt": "2026-01-01T00:00:00Z"}})
        };
        let a = active_job(&j("Running")).unwrap();
        assert_eq!(a.compute.as_deref(), Some("gpu"));
        assert_eq!((a.kind.as_str(), a.status.as_str()), ("Command", "Running"));
        assert!(active_job(&j("NotResponding")).is_some());
        for done in ["Completed", "Failed", "Canceled"] {
            assert!(active_job(&j(done)).is_none(), "{done}");
        }
        let serverless = json!({"name": "s", "properties": {"status": "Queued"}});
        assert_eq!(active_job(&serverless).unwrap().compute, None);
    }

    #[test]
    fn the_total_adds_known_prices_and_says_when_some_are_unknown() {
        let billed = |p: Option<f64>| Billed {
            compute: Compute::from_resource(
                &json!({"name": "c", "properties": {"computeType": "ComputeInstance"}}),
            ),
            vms: 1,
            price: None,
            per_hour: p.map(|v| Price {
                per_hour: v,
                currency: "USD".into(),
            }),
        };
        let mut s = Status {
            jobs: vec![],
            billing: vec![billed(Some(0.5)), billed(Some(1.25))],
            unknown: vec![],
            prices_note: None,
        };
        assert_eq!(
            s.total(),
            (
                Some(Price {
                    per_hour: 1.75,
                    currency: "USD".into()
                }),
                false
            )
        );
        s.billing.push(billed(None));
        assert!(s.total().1);
        s.billing.clear();
        assert_eq!(s.total(), (None, false));
    }
}
