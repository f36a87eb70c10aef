//! The stand-in's facts, checked: bodies against the 2025-12-01 REST definitions kept as JSON
//! Schema in `tests/data/azureml-2025-12-01/` (see its README). A request body the service would
//! refuse gets ARM's 400 `UserError` naming the field; every answer the stand-in gives is
//! checked too, and one that breaks the definitions is recorded and turned into a 500, so that a
//! wrong stand-in fails the test that met it instead of teaching the client a wrong shape.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use jsonschema::Validator;
use serde_json::{json, Value};

const SCHEMA: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/azureml-2025-12-01/azureml.schema.json"
));

/// The compiled validator of one definition (compiled once, kept for the process).
fn validator(definition: &str) -> &'static Validator {
    static DOC: OnceLock<Value> = OnceLock::new();
    static CACHE: OnceLock<Mutex<HashMap<String, &'static Validator>>> = OnceLock::new();
    let doc = DOC.get_or_init(|| serde_json::from_str(SCHEMA).expect("azureml.schema.json"));
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    if let Some(v) = cache.get(definition) {
        return v;
    }
    assert!(
        doc["$defs"].get(definition).is_some(),
        "no definition {definition} in azureml.schema.json"
    );
    let schema = json!({
        "$schema": doc["$schema"],
        "$ref": format!("#/$defs/{definition}"),
        "$defs": doc["$defs"],
    });
    let v: &'static Validator = Box::leak(Box::new(
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .expect("azureml.schema.json compiles"),
    ));
    cache.insert(definition.to_owned(), v);
    v
}

/// A JSON pointer (`/properties/osType`) as the field path the service names
/// (`properties.osType`); the body itself is `(body)`.
pub(crate) fn field_path(pointer: &str) -> String {
    if pointer.is_empty() {
        return "(body)".into();
    }
    pointer
        .trim_start_matches('/')
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".")
}

/// Every way `body` breaks `definition`: `field.path: problem`.
pub(crate) fn problems(definition: &str, body: &Value) -> Vec<String> {
    validator(definition)
        .iter_errors(body)
        .map(|e| format!("{}: {e}", field_path(&e.instance_path().to_string())))
        .collect()
}

/// The definition a request body must satisfy: `PUT {ws}/…` by what it creates, and the one
/// action envbuild posts a body to (`Compute_UpdateIdleShutdownSetting`).
pub(crate) fn request_definition(rest: &[&str]) -> Option<&'static str> {
    match rest {
        ["environments", _, "versions", _] => Some("EnvironmentVersionResource"),
        ["models", _, "versions", _] => Some("ModelVersionResource"),
        ["codes", _, "versions", _] => Some("CodeVersionResource"),
        ["jobs", _] => Some("JobBaseResource"),
        ["computes", _, "updateIdleShutdownSetting"] => Some("IdleShutdownSetting"),
        _ => None,
    }
}

/// The definition of a successful answer to `method` on `{ws}/…rest` (None: no body defined:
/// start and stop answer 202 without one, updateIdleShutdownSetting 200 without one, the
/// long-running cancel 202/200 without one).
pub(crate) fn answer_definition(method: &str, rest: &[&str]) -> Option<&'static str> {
    match (method, rest) {
        ("GET", []) => Some("Workspace"),
        ("GET", ["environments", _]) => Some("EnvironmentContainerResource"),
        ("GET", ["models", _]) => Some("ModelContainerResource"),
        ("GET", ["codes", _]) => Some("CodeContainerResource"),
        ("GET", ["datastores"]) => Some("DatastoreResourceArmPaginatedResult"),
        ("GET", ["datastores", _]) => Some("DatastoreResource"),
        ("GET", ["jobs"]) => Some("JobBaseResourceArmPaginatedResult"),
        ("GET", ["computes"]) => Some("PaginatedComputeResourcesList"),
        ("GET", ["computes", _]) => Some("ComputeResource"),
        ("POST", ["computes", _, "listNodes"]) => Some("AmlComputeNodesInformation"),
        ("GET", r @ (["environments" | "models" | "codes", _, "versions", _] | ["jobs", _])) => {
            request_definition(r)
        }
        ("PUT", r) => request_definition(r),
        _ => None,
    }
}

/// The definition of a successful answer under
/// `/subscriptions/{s}/providers/Microsoft.MachineLearningServices/locations/{loc}/…rest`:
/// `VirtualMachineSizes_List`, and the `Azure-AsyncOperation` status of a compute start or stop.
/// machineLearningServices.json names no path or body for that status; common-types v3 defines
/// its body, `OperationStatusResult`. The `Location` (`computeOperationsResults`,
/// `mfeOperationResults`) answers carry no body.
pub(crate) fn location_answer_definition(method: &str, rest: &[&str]) -> Option<&'static str> {
    match (method, rest) {
        ("GET", ["vmSizes"]) => Some("VirtualMachineSizeListResult"),
        ("GET", ["computeOperationsStatus", _]) => Some("OperationStatusResult"),
        _ => None,
    }
}

/// The definition of a successful answer to `method` on `path` (an ARM path, no query).
pub(crate) fn answer_definition_of_path(method: &str, path: &str) -> Option<&'static str> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let is = |i: usize, w: &str| parts.get(i).is_some_and(|p| p.eq_ignore_ascii_case(w));
    if parts.len() >= 8 && is(0, "subscriptions") && is(2, "resourceGroups") && is(6, "workspaces")
    {
        answer_definition(method, &parts[8..])
    } else if parts.len() >= 6
        && is(0, "subscriptions")
        && is(2, "providers")
        && is(3, "Microsoft.MachineLearningServices")
        && is(4, "locations")
    {
        location_answer_definition(method, &parts[6..])
    } else {
        None
    }
}

/// The 400 message for a request body that breaks its definition: the first problem, with
/// the field path, as the service's `UserError` names the field.
pub(crate) fn refusal(definition: &str, body: &Value) -> Option<String> {
    let all = problems(definition, body);
    let first = all.first()?;
    Some(format!(
        "The request body is not a valid {definition}: {first}{}",
        match all.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(
            field_path("/properties/resources/shmSize"),
            "properties.resources.shmSize"
        );
        assert_eq!(field_path(""), "(body)");
        let body = json!({"properties": {"image": "r.io/a@sha256:00", "osType": "linux"}});
        let m = refusal("EnvironmentVersionResource", &body).unwrap();
        assert!(
            m.starts_with(
                "The request body is not a valid EnvironmentVersionResource: properties.osType: "
            ),
            "{m}"
        );
        let ok = json!({"properties": {"image": "r.io/a@sha256:00", "osType": "Linux"}});
        assert_eq!(refusal("EnvironmentVersionResource", &ok), None);
        assert_eq!(request_definition(&["jobs", "j1"]), Some("JobBaseResource"));
        assert_eq!(answer_definition("POST", &["jobs", "j1", "cancel"]), None);
    }

    #[test]
    fn every_compute_route_has_its_definition() {
        let ws = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/w";
        let loc = "/subscriptions/s/providers/Microsoft.MachineLearningServices/locations/eastus";
        for (method, path, want) in [
            ("GET", ws.to_owned(), Some("Workspace")),
            (
                "GET",
                format!("{ws}/jobs"),
                Some("JobBaseResourceArmPaginatedResult"),
            ),
            ("GET", format!("{ws}/jobs/j1"), Some("JobBaseResource")),
            (
                "GET",
                format!("{ws}/computes"),
                Some("PaginatedComputeResourcesList"),
            ),
            ("GET", format!("{ws}/computes/c"), Some("ComputeResource")),
            (
                "POST",
                format!("{ws}/computes/c/listNodes"),
                Some("AmlComputeNodesInformation"),
            ),
            ("POST", format!("{ws}/computes/c/start"), None),
            (
                "POST",
                format!("{ws}/computes/c/updateIdleShutdownSetting"),
                None,
            ),
            (
                "GET",
                format!("{loc}/vmSizes"),
                Some("VirtualMachineSizeListResult"),
            ),
            (
                "GET",
                format!("{loc}/computeOperationsStatus/op"),
                Some("OperationStatusResult"),
            ),
            ("GET", format!("{loc}/computeOperationsResults/op"), None),
        ] {
            assert_eq!(
                answer_definition_of_path(method, &path),
                want,
                "{method} {path}"
            );
        }
        assert_eq!(
            request_definition(&["computes", "c", "updateIdleShutdownSetting"]),
            Some("IdleShutdownSetting")
        );
        // The idle-shutdown body: a string; the range (15 minutes to 3 days) is the
        // description's, checked by compute.rs.
        let m = refusal(
            "IdleShutdownSetting",
            &json!({"idleTimeBeforeShutdown": 30}),
        )
        .unwrap();
        assert!(m.contains("idleTimeBeforeShutdown: "), "{m}");
        assert_eq!(
            refusal(
                "IdleShutdownSetting",
                &json!({"idleTimeBeforeShutdown": "PT30M"})
            ),
            None
        );
    }

    #[test]
    fn compute_answers_are_held_to_the_definitions() {
        let node = |state: &str, port: Value| {
            json!({"nodes": [{"nodeId": "n1", "privateIpAddress": "10.0.0.4",
            "publicIpAddress": null, "port": port, "nodeState": state, "runId": null}]})
        };
        assert!(problems("AmlComputeNodesInformation", &node("idle", json!(50000))).is_empty());
        let p = problems("AmlComputeNodesInformation", &node("Idle", json!(50000)));
        assert!(
            p.len() == 1 && p[0].starts_with("nodes.0.nodeState: "),
            "{p:?}"
        );
        assert!(!problems("AmlComputeNodesInformation", &node("idle", json!("50000"))).is_empty());
        let instance = |state: &str| {
            json!({"name": "ci", "properties": {"computeType": "ComputeInstance",
            "properties": {"state": state, "lastOperation": {"operationName": "Start",
                "operationStatus": "StartFailed", "operationTrigger": "User"}}}})
        };
        assert!(problems("ComputeResource", &instance("Running")).is_empty());
        let p = problems("ComputeResource", &instance("running"));
        assert!(
            p.len() == 1 && p[0].starts_with("properties.properties.state: "),
            "{p:?}"
        );
        let cluster = json!({"properties": {"computeType": "AmlCompute", "properties": {"scaleSettings": {"minNodeCount": 0}}}});
        let p = problems("ComputeResource", &cluster);
        assert!(
            p.len() == 1 && p[0].starts_with("properties.properties.scaleSettings: "),
            "{p:?}"
        );
        assert!(!problems(
            "ComputeResource",
            &json!({"properties": {"computeType": "Cluster"}})
        )
        .is_empty());
        let price = |tier: &str| {
            json!({"value": [{"name": "Standard_DS3_v2", "gpus": 0, "estimatedVMPrices": {
            "billingCurrency": "USD", "unitOfMeasure": "OneHour",
            "values": [{"retailPrice": 0.29, "osType": "Linux", "vmTier": tier}]}}]})
        };
        assert!(problems("VirtualMachineSizeListResult", &price("Spot")).is_empty());
        assert!(!problems("VirtualMachineSizeListResult", &price("Dedicated")).is_empty());
        assert!(problems("OperationStatusResult", &json!({"status": "InProgress"})).is_empty());
        assert!(!problems("OperationStatusResult", &json!({"name": "op"})).is_empty());
        let jobs = json!({"value": [], "nextLink": "https://x", "count": 0});
        assert!(!problems("JobBaseResourceArmPaginatedResult", &jobs).is_empty());
    }
}
