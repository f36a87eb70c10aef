//! Your own code and data on Azure ML, end to end against the stand-ins: the ARM stand-in's
//! datastores and code versions answering as the REST definitions say, `run --azure --code DIR
//! --input …` uploading through the Blob Storage stand-in (nothing twice), the job running in the
//! uploaded code with the uploaded data, `job download` bringing its outputs back, and every bad
//! input refused with nothing registered.

use serde_json::{json, Value};

use envbuild_e2e::azure::AzureStandIn;
use envbuild_e2e::entra::Entra;

use super::azure::{arm_raw, arm_token, ws_id};

#[test]
fn datastores_and_code_versions_answer_as_the_service() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    let tok = arm_token(&entra);
    let ws = ws_id();
    let v = |p: &str| format!("{ws}/{p}?api-version=2025-12-01");
    let root = tempfile::tempdir().unwrap();
    arm.use_blob_root(root.path());
    let (account, container) = arm.blob_location("workspaceblobstore").unwrap();

    // The default datastore, filtered by isDefault; the artifact store is not the default.
    let (s, _, b) = arm_raw(
        &arm,
        "GET",
        &format!("{ws}/datastores?api-version=2025-12-01&isDefault=true"),
        Some(&tok),
        None,
    );
    assert_eq!(s, 200, "{b}");
    let list = b["value"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{b}");
    let d = &list[0];
    assert_eq!(d["name"], "workspaceblobstore");
    assert_eq!(d["id"], format!("{ws}/datastores/workspaceblobstore"));
    let p = &d["properties"];
    assert_eq!(
        (
            p["datastoreType"].as_str(),
            p["isDefault"].as_bool(),
            p["accountName"].as_str(),
            p["containerName"].as_str(),
            p["endpoint"].as_str(),
            p["protocol"].as_str(),
        ),
        (
            Some("AzureBlob"),
            Some(true),
            Some(account.as_str()),
            Some(container.as_str()),
            Some("core.windows.net"),
            Some("https")
        )
    );
    let (s, _, b) = arm_raw(&arm, "GET", &v("datastores"), Some(&tok), None);
    assert_eq!(s, 200);
    let names: Vec<&str> = b["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["workspaceartifactstore", "workspaceblobstore"]);
    // A key-based datastore: its secret is never read back, only its kind.
    arm.blob_datastore("keyed", "stkeyonly01", "data", "AccountKey", false);
    let (s, _, b) = arm_raw(&arm, "GET", &v("datastores/keyed"), Some(&tok), None);
    assert_eq!(s, 200);
    assert_eq!(
        b["properties"]["credentials"],
        json!({"credentialsType": "AccountKey", "secrets": {"secretsType": "AccountKey"}})
    );
    let (s, _, b) = arm_raw(&arm, "GET", &v("datastores/nope"), Some(&tok), None);
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("UserError")));

    // A code version: its codeUri must be a folder with files in one of the workspace's Blob
    // datastores.
    let folder = "LocalUpload/0123456789abcdef0123456789abcdef/src";
    let uri = format!("https://{account}.blob.core.windows.net/{container}/{folder}");
    let code = |uri: &str| json!({"properties": {"codeUri": uri, "description": "d", "tags": {}}});
    let put = |path: &str, body: Value| arm_raw(&arm, "PUT", &v(path), Some(&tok), Some(body));
    let version = "codes/src/versions/0123456789abcdef0123456789abcdef";
    let (s, _, b) = put(version, code(&uri));
    assert_eq!(s, 400, "nothing uploaded yet: {b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No files found"),
        "{b}"
    );
    let dir = root.path().join(&account).join(&container).join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.py"), "print('hi')\n").unwrap();
    for elsewhere in [
        format!("https://other.blob.core.windows.net/{container}/{folder}"),
        format!("https://{account}.blob.core.windows.net/nope/{folder}"),
        format!("http://{account}.blob.core.windows.net/{container}/{folder}"),
        format!("https://{account}.blob.core.windows.net/{container}/../x"),
    ] {
        let (s, _, b) = put(version, code(&elsewhere));
        assert_eq!(s, 400, "{elsewhere}: {b}");
    }
    assert_eq!(arm.code_versions(), Vec::<String>::new());
    let (s, _, b) = put(version, code(&uri));
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["properties"]["codeUri"], uri.as_str());
    assert!(b["properties"].get("stage").is_none(), "{b}");
    // The same again: 200; description and tags may change; another codeUri may not.
    let (s, _, _) = put(version, code(&uri));
    assert_eq!(s, 200);
    let mut retag = code(&uri);
    retag["properties"]["tags"] = json!({"a": "b"});
    assert_eq!(put(version, retag).0, 200);
    let other = format!("https://{account}.blob.core.windows.net/{container}/LocalUpload/x/src");
    std::fs::create_dir_all(
        root.path()
            .join(&account)
            .join(&container)
            .join("LocalUpload/x/src"),
    )
    .unwrap();
    std::fs::write(
        root.path()
            .join(&account)
            .join(&container)
            .join("LocalUpload/x/src/a"),
        "a",
    )
    .unwrap();
    let (s, _, b) = put(version, code(&other));
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be changed"),
        "{b}"
    );
    // A body the definitions refuse: 400 naming the field.
    let (s, _, b) = put(
        "codes/src/versions/2",
        json!({"properties": {"codeUri": uri, "codeHash": "x"}}),
    );
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CodeVersionResource"),
        "{b}"
    );
    let (s, _, b) = arm_raw(&arm, "GET", &v(version), Some(&tok), None);
    assert_eq!((s, b["properties"]["tags"]["a"].as_str()), (200, Some("b")));
    let (s, _, b) = arm_raw(&arm, "GET", &v("codes/src"), Some(&tok), None);
    assert_eq!(s, 200);
    assert_eq!(
        b["properties"]["latestVersion"],
        "0123456789abcdef0123456789abcdef"
    );
    assert_eq!(
        arm.code_versions(),
        ["src:0123456789abcdef0123456789abcdef"]
    );

    // A job's codeId must be a code version of the workspace; literal and uri_file inputs.
    put(
        "environments/env/versions/1",
        json!({"properties": {"image": "r.io/a@sha256:1111111111111111111111111111111111111111111111111111111111111111"}}),
    );
    let job = |code_id: &str, inputs: Value| {
        json!({"properties": {"jobType": "Command", "command": "python train.py ${{inputs.lr}}",
            "environmentId": format!("{ws}/environments/env/versions/1"),
            "codeId": code_id, "inputs": inputs}})
    };
    let lr = json!({"lr": {"jobInputType": "literal", "value": "0.01"}});
    let (s, _, b) = put(
        "jobs/code-missing",
        job(&format!("{ws}/codes/src/versions/9"), lr.clone()),
    );
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("src:9"),
        "{b}"
    );
    let (s, _, b) = put(
        "jobs/bad-literal",
        job(
            &format!("{ws}/{version}"),
            json!({"lr": {"jobInputType": "literal", "value": "-"}}),
        ),
    );
    assert_eq!(s, 400, "LiteralJobInput.value's pattern: {b}");
    let (s, _, b) = put(
        "jobs/no-file",
        job(
            &format!("{ws}/{version}"),
            json!({"lr": {"jobInputType": "literal", "value": "0.01"},
                   "f": {"jobInputType": "uri_file", "uri": "azureml://datastores/nope/paths/a.csv"}}),
        ),
    );
    assert_eq!(s, 400, "{b}");
    assert!(arm.spec_violations().is_empty());
}
