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

/// The definition a request body must satisfy: `PUT {ws}/…` by what it creates.
pub(crate) fn request_definition(rest: &[&str]) -> Option<&'static str> {
    match rest {
        ["environments", _, "versions", _] => Some("EnvironmentVersionResource"),
        ["models", _, "versions", _] => Some("ModelVersionResource"),
        ["jobs", _] => Some("JobBaseResource"),
        _ => None,
    }
}

/// The definition of a successful answer to `method` on `{ws}/…rest` (None: no body defined).
pub(crate) fn answer_definition(method: &str, rest: &[&str]) -> Option<&'static str> {
    match (method, rest) {
        ("GET", ["environments", _]) => Some("EnvironmentContainerResource"),
        ("GET", ["models", _]) => Some("ModelContainerResource"),
        ("GET" | "PUT", r) => request_definition(r),
        _ => None,
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
}
