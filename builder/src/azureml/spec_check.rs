//! Test-only: checks a body against the Azure ML 2025-12-01 REST definitions kept as JSON Schema
//! in `tests/data/azureml-2025-12-01/` (see its README), so that a body the service would refuse
//! fails a unit test. Every request body envbuild builds is checked here; the sweep body too.

use std::sync::OnceLock;

use serde_json::{json, Value};

/// The generated schema document (`translate.py` writes it from the spec excerpts).
const SCHEMA: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/data/azureml-2025-12-01/azureml.schema.json"
));

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_str(SCHEMA).expect("azureml.schema.json is JSON"))
}

/// Why `body` is not a valid `definition` (`JobBaseResource`, `EnvironmentVersionResource`,
/// `ModelVersionResource`, …): one `path: problem` line per violation; empty when it is valid.
pub fn violations(definition: &str, body: &Value) -> Vec<String> {
    let doc = document();
    assert!(
        doc["$defs"].get(definition).is_some(),
        "no definition {definition} in azureml.schema.json"
    );
    let schema = json!({
        "$schema": doc["$schema"],
        "$ref": format!("#/$defs/{definition}"),
        "$defs": doc["$defs"],
    });
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .expect("azureml.schema.json compiles");
    validator
        .iter_errors(body)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Panics, listing every violation, unless `body` is a valid `definition`.
pub fn assert_valid(definition: &str, body: &Value) {
    let v = violations(definition, body);
    assert!(
        v.is_empty(),
        "the 2025-12-01 definition {definition} refuses this body:\n  {}\n{body:#}",
        v.join("\n  ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_refuses_what_the_service_refuses() {
        let env = json!({"properties": {"image": "r.azurecr.io/a@sha256:00", "osType": "Linux"}});
        assert_valid("EnvironmentVersionResource", &env);
        let mut bad = env.clone();
        bad["properties"]["osType"] = json!("linux");
        let v = violations("EnvironmentVersionResource", &bad);
        assert!(
            v.len() == 1 && v[0].starts_with("/properties/osType: "),
            "{v:?}"
        );
        let mut extra = env;
        extra["properties"]["imageDigest"] = json!("x");
        assert!(!violations("EnvironmentVersionResource", &extra).is_empty());
        // A discriminated union: the discriminator picks the closed definition.
        let job = |limits: Value| json!({"properties": {"jobType": "Command", "command": "x", "environmentId": "/e", "limits": limits}});
        assert_valid(
            "JobBaseResource",
            &job(json!({"jobLimitsType": "Command", "timeout": "PT2H"})),
        );
        for bad in [
            json!({"jobLimitsType": "Command", "timeout": "2h"}),
            json!({"jobLimitsType": "Sweep", "timeout": "PT2H", "maxTotalTrials": "x"}),
            json!({"jobLimitsType": "Command", "maxTotalTrials": 3}),
            json!({"timeout": "PT2H"}),
        ] {
            let v = violations("JobBaseResource", &job(bad.clone()));
            assert!(
                v.iter().any(|l| l.starts_with("/properties/limits")),
                "{bad}: {v:?}"
            );
        }
        let mut no_command = job(Value::Null);
        no_command["properties"]
            .as_object_mut()
            .unwrap()
            .remove("command");
        assert!(!violations("JobBaseResource", &no_command).is_empty());
        // Computes (machineLearningServices.json; open objects, closed enums).
        let cluster = json!({"name": "cpu", "properties": {"computeType": "AmlCompute",
            "properties": {"vmSize": "STANDARD_DS3_V2", "vmPriority": "Dedicated", "currentNodeCount": 0}}});
        assert_valid("ComputeResource", &cluster);
        let mut spot = cluster;
        spot["properties"]["properties"]["vmPriority"] = json!("Spot");
        let v = violations("ComputeResource", &spot);
        assert!(
            v.iter()
                .any(|l| l.starts_with("/properties/properties/vmPriority")),
            "{v:?}"
        );
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn every_body_envbuild_sends_is_valid() {
        use crate::azureml::environment::EnvironmentVersion;
        use crate::azureml::job::{trainer_command, CommandJob, Input, JobBody};
        use crate::azureml::model::ModelVersion;
        use crate::azureml::options::{Identity, JobOptions, NotifyOn, Tier};

        let env = EnvironmentVersion::new(
            "envbuild-mnist",
            &format!("my.azurecr.io/a@{D}"),
            None,
            Some("abc".into()),
        )
        .unwrap();
        assert_valid("EnvironmentVersionResource", &env.body());
        for description in [None, Some("trained".to_owned())] {
            let m = ModelVersion {
                name: "mnist".into(),
                version: None,
                job: "j1".into(),
                output: "model".into(),
                description,
            };
            assert_valid("ModelVersionResource", &m.body());
        }
        let ws = "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w";
        let base = CommandJob {
            id: "envbuild-mnist-1-abcd".into(),
            command: trainer_command(true, "model", &["--epochs".into(), "1".into()]),
            environment_id: format!("{ws}/environments/e/versions/0123456789ab"),
            compute_id: None,
            display_name: None,
            experiment_name: "Default".into(),
            environment_variables: Default::default(),
            code_id: None,
            inputs: Default::default(),
            outputs: vec!["model".into()],
            instance_type: None,
            instance_count: 1,
            processes_per_instance: None,
            timeout: "PT2H".into(),
            tags: Default::default(),
            options: JobOptions::default(),
        };
        let uuid = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
        let identities = [
            None,
            Some(Identity::AmlToken),
            Some(Identity::Managed { client_id: None }),
            Some(Identity::Managed {
                client_id: Some(uuid.into()),
            }),
            Some(Identity::User),
        ];
        let mut checked = 0;
        // Every combination the CLI allows: compute or serverless (with a VM size), display name,
        // inputs, variables, one node or a PyTorch distribution, and each job option.
        for compute in [None, Some(format!("{ws}/computes/cpu-cluster"))] {
            for (nodes, per_node) in [(1, None), (2, Some(1)), (2, Some(4))] {
                for (i, identity) in identities.iter().enumerate() {
                    let mut j = base.clone();
                    j.compute_id = compute.clone();
                    if compute.is_none() {
                        j.instance_type = Some("Standard_NC4as_T4_v3".into());
                    }
                    (j.instance_count, j.processes_per_instance) = (nodes, per_node);
                    if i % 2 == 1 {
                        j.display_name = Some("mnist".into());
                        j.inputs.insert(
                            "data".into(),
                            Input::Folder(
                                "azureml://datastores/workspaceblobstore/paths/mnist/".into(),
                            ),
                        );
                        // A code asset, a file and a literal input (run --code).
                        j.code_id = Some(format!("{ws}/codes/src/versions/0123456789abcdef"));
                        j.inputs.insert(
                            "labels".into(),
                            Input::File(
                                "azureml://datastores/workspaceblobstore/paths/LocalUpload/ab/labels.csv"
                                    .into(),
                            ),
                        );
                        j.inputs.insert("lr".into(), Input::Literal("0.01".into()));
                        j.environment_variables.insert("SEED".into(), "1".into());
                        j.tags.insert("envbuild.environment".into(), "mnist".into());
                    }
                    j.options = JobOptions {
                        tier: Tier::ALL.get(i).copied(),
                        identity: identity.clone(),
                        shm_size: (i % 2 == 0).then(|| "8g".to_owned()),
                        emails: if i > 2 {
                            vec!["me@example.com".into()]
                        } else {
                            vec![]
                        },
                        email_on: if i == 4 {
                            vec![NotifyOn::Failed, NotifyOn::Canceled]
                        } else {
                            vec![]
                        },
                    };
                    j.check().unwrap();
                    assert_valid("JobBaseResource", &j.body());
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 30);
        // A body the service would refuse fails: a bad enum, a bad timeout, a field it lacks.
        let mut b = base.body();
        b["properties"]["queueSettings"] = json!({"jobTier": "Cheap"});
        let v = violations("JobBaseResource", &b);
        assert!(
            v.iter()
                .any(|l| l.starts_with("/properties/queueSettings/jobTier")),
            "{v:?}"
        );
        let mut b = base.body();
        b["properties"]["limits"]["timeout"] = json!("2h");
        assert!(!violations("JobBaseResource", &b).is_empty());
        let mut b = base.body();
        b["properties"]["resources"]["shmSize"] = json!("lots");
        assert!(!violations("JobBaseResource", &b).is_empty());
        let mut b = base.body();
        b["properties"]["identity"] = json!({"identityType": "Managed", "clientId": "not-a-uuid"});
        assert!(!violations("JobBaseResource", &b).is_empty());
    }

    #[test]
    fn the_idle_shutdown_body_is_valid() {
        use crate::azureml::power::{idle_body, parse_idle};
        for human in ["15m", "30m", "2h", "1h30m", "72h", "PT45M"] {
            let iso = parse_idle(human).unwrap();
            assert_valid("IdleShutdownSetting", &idle_body(&iso));
        }
        // The definition is open but types its one field: a number is refused.
        let v = violations(
            "IdleShutdownSetting",
            &json!({"idleTimeBeforeShutdown": 30}),
        );
        assert!(
            v.len() == 1 && v[0].starts_with("/idleTimeBeforeShutdown: "),
            "{v:?}"
        );
    }

    /// Whether the definition holds the field at `path` in `body`: an undefined field of an open
    /// definition takes any value, a defined one refuses an array of arrays (no field envbuild
    /// reads is an array of arrays).
    fn defined(definition: &str, body: &Value, path: &[&str]) -> bool {
        let mut b = body.clone();
        let mut at = &mut b;
        for p in path {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*p],
            };
        }
        *at = json!([[0]]);
        assert!(violations(definition, body).is_empty(), "{body}");
        !violations(definition, &b).is_empty()
    }

    #[test]
    fn every_field_envbuild_reads_in_an_answer_is_defined() {
        let of = |kind: &str| {
            let mut c = json!({"name": "c", "properties": {"computeType": kind, "properties": {}}});
            if kind == "AmlCompute" {
                c["properties"]["properties"]["scaleSettings"] = json!({"maxNodeCount": 4});
            }
            c
        };
        let reads: &[(&str, Value, &[&str])] = &[
            // compute.rs: Compute from a ComputeResource.
            ("ComputeResource", of("AmlCompute"), &["name"]),
            (
                "ComputeResource",
                of("AmlCompute"),
                &["properties", "provisioningState"],
            ),
            (
                "ComputeResource",
                of("AmlCompute"),
                &["properties", "properties", "vmSize"],
            ),
            (
                "ComputeResource",
                of("AmlCompute"),
                &["properties", "properties", "vmPriority"],
            ),
            (
                "ComputeResource",
                of("AmlCompute"),
                &["properties", "properties", "allocationState"],
            ),
            (
                "ComputeResource",
                of("AmlCompute"),
                &["properties", "properties", "currentNodeCount"],
            ),
            (
                "ComputeResource",
                of("AmlCompute"),
                &["properties", "properties", "scaleSettings", "minNodeCount"],
            ),
            (
                "ComputeResource",
                of("AmlCompute"),
                &["properties", "properties", "scaleSettings", "maxNodeCount"],
            ),
            (
                "ComputeResource",
                of("AmlCompute"),
                &[
                    "properties",
                    "properties",
                    "scaleSettings",
                    "nodeIdleTimeBeforeScaleDown",
                ],
            ),
            (
                "ComputeResource",
                of("ComputeInstance"),
                &["properties", "properties", "vmSize"],
            ),
            (
                "ComputeResource",
                of("ComputeInstance"),
                &["properties", "properties", "state"],
            ),
            (
                "PaginatedComputeResourcesList",
                json!({"value": []}),
                &["nextLink"],
            ),
            // compute.rs: listNodes.
            (
                "AmlComputeNodesInformation",
                json!({"nodes": [{}]}),
                &["nodes", "0", "nodeId"],
            ),
            (
                "AmlComputeNodesInformation",
                json!({"nodes": [{}]}),
                &["nodes", "0", "nodeState"],
            ),
            (
                "AmlComputeNodesInformation",
                json!({"nodes": [{}]}),
                &["nodes", "0", "runId"],
            ),
            (
                "AmlComputeNodesInformation",
                json!({"nodes": []}),
                &["nextLink"],
            ),
            // vmsize.rs: the location's sizes and prices; the workspace's location.
            (
                "VirtualMachineSizeListResult",
                json!({"value": [{}]}),
                &["value", "0", "name"],
            ),
            (
                "VirtualMachineSizeListResult",
                json!({"value": [{}]}),
                &["value", "0", "gpus"],
            ),
            (
                "EstimatedVMPrices",
                json!({"billingCurrency": "USD", "unitOfMeasure": "OneHour", "values": [{"retailPrice": 1.0, "osType": "Linux", "vmTier": "Standard"}]}),
                &["values", "0", "retailPrice"],
            ),
            (
                "EstimatedVMPrices",
                json!({"billingCurrency": "USD", "unitOfMeasure": "OneHour", "values": []}),
                &["billingCurrency"],
            ),
            (
                "EstimatedVMPrices",
                json!({"billingCurrency": "USD", "unitOfMeasure": "OneHour", "values": []}),
                &["unitOfMeasure"],
            ),
            ("Workspace", json!({}), &["location"]),
            // power.rs: the Azure-AsyncOperation status (common-types OperationStatusResult).
            (
                "OperationStatusResult",
                json!({"status": "InProgress", "error": {}}),
                &["status"],
            ),
            (
                "OperationStatusResult",
                json!({"status": "Failed", "error": {}}),
                &["error", "code"],
            ),
            (
                "OperationStatusResult",
                json!({"status": "Failed", "error": {}}),
                &["error", "message"],
            ),
            // status.rs: the jobs list.
            (
                "JobBaseResourceArmPaginatedResult",
                json!({"value": []}),
                &["nextLink"],
            ),
        ];
        for (definition, body, path) in reads {
            assert!(
                defined(definition, body, path),
                "{definition} does not define {}",
                path.join(".")
            );
        }
        // compute.rs also reads a compute instance's `properties.idleTimeBeforeShutdown`, which
        // ComputeInstanceProperties of 2025-12-01 does not define (the open object lets it
        // through); `compute show` prints it only where the service sends it.
        assert!(!defined(
            "ComputeResource",
            &of("ComputeInstance"),
            &["properties", "properties", "idleTimeBeforeShutdown"]
        ));
    }
}
