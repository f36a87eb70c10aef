//! Spec-true requests (issue 13): the stand-in refuses what the 2025-12-01 REST definitions
//! refuse, with the service's 400 UserError naming the field, and answers as they define; a job
//! re-PUT replaces its tags; cancel is long-running; job logs take a storage-scoped token only;
//! workspace names follow their pattern; `run --azure`'s job options reach the body as the spec
//! spells them, and bad ones are refused before any request.

use envbuild_e2e::azure::{AzureStandIn, WORKSPACE};
use envbuild_e2e::entra::Entra;
use envbuild_e2e::{last_line, tls};
use serde_json::{json, Value};

use super::azure::{arm_raw, arm_token, az_cmd, cancel_polls, go, token_for, ws_id, Cred};

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn message(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or("").to_owned()
}

#[test]
fn the_stand_in_refuses_and_answers_by_the_rest_definitions() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    // Slow steps, so that the job below is still before its (failing) image pull when canceled.
    arm.shared.state.lock().unwrap().step = std::time::Duration::from_secs(2);
    let tok = arm_token(&entra);
    let ws = ws_id();
    let v = |p: &str| format!("{ws}/{p}?api-version=2025-12-01");
    let put = |p: &str, body: Value| arm_raw(&arm, "PUT", &v(p), Some(&tok), Some(body));
    let img = format!("myacr.azurecr.io/a@{D1}");

    // A closed enum: "linux" is not an OperatingSystemType. The service's 400 UserError, the field named.
    let (s, h, b) = put(
        "environments/env/versions/1",
        json!({"properties": {"image": img, "osType": "linux"}}),
    );
    assert_eq!(s, 400, "{b}");
    assert_eq!(h["x-ms-response-type"], "error");
    assert_eq!(b["error"]["code"], "UserError");
    assert!(
        message(&b).contains("properties.osType: \"linux\" is not one of"),
        "{b}"
    );
    // A field the definition does not have (additionalProperties: false).
    let (s, _, b) = put(
        "environments/env/versions/1",
        json!({"properties": {"image": img, "digest": D1}}),
    );
    assert_eq!(s, 400, "{b}");
    assert!(message(&b).contains("'digest' was unexpected"), "{b}");
    assert_eq!(
        put(
            "environments/env/versions/1",
            json!({"properties": {"image": img}})
        )
        .0,
        201
    );

    // Jobs: a timeout that is not an ISO 8601 duration, a tier outside JobTier, a shmSize off
    // its pattern, a managed identity's client id that is not a UUID: each refused by name.
    let env_id = format!("{ws}/environments/env/versions/1");
    let job = |extra: Value| {
        let mut p = json!({"jobType": "Command", "command": "echo hi", "environmentId": env_id,
            "limits": {"jobLimitsType": "Command", "timeout": "PT1H"}, "tags": {"a": "1", "b": "2"}});
        for (k, val) in extra.as_object().unwrap() {
            p[k] = val.clone();
        }
        json!({ "properties": p })
    };
    for (extra, field) in [
        (
            json!({"limits": {"jobLimitsType": "Command", "timeout": "1h"}}),
            "properties.limits.timeout",
        ),
        (
            json!({"queueSettings": {"jobTier": "Cheap"}}),
            "properties.queueSettings.jobTier",
        ),
        (
            json!({"resources": {"shmSize": "lots"}}),
            "properties.resources.shmSize",
        ),
        (
            json!({"identity": {"identityType": "Managed", "clientId": "mine"}}),
            "properties.identity.clientId",
        ),
        (
            json!({"notificationSetting": {"emailOn": ["JobCanceled"]}}),
            "properties.notificationSetting.emailOn.0",
        ),
    ] {
        let (s, _, b) = put("jobs/bad-job", job(extra.clone()));
        assert_eq!(s, 400, "{extra}: {b}");
        assert!(message(&b).contains(&format!("{field}: ")), "{extra}: {b}");
    }
    // What the spec allows is taken, and the answer is a valid JobBaseResource (checked inside
    // the stand-in; a violation would be a 500 and a panic when it is dropped).
    let options = json!({"queueSettings": {"jobTier": "Spot"}, "identity": {"identityType": "UserIdentity"},
        "resources": {"instanceCount": 1, "shmSize": "8g"},
        "notificationSetting": {"emails": ["me@example.com"], "emailOn": ["JobFailed", "JobCancelled"]}});
    let (s, _, b) = put("jobs/spec-job", job(options.clone()));
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["properties"]["queueSettings"]["jobTier"], "Spot");
    // A re-PUT replaces the tags (Jobs_CreateOrUpdate: "the Tags in the definition passed in
    // will replace Tags in the existing job"); a change to a create-only field is refused.
    let mut again = job(options);
    again["properties"]["tags"] = json!({"b": "3", "c": "4"});
    let (s, _, b) = put("jobs/spec-job", again.clone());
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["properties"]["tags"], json!({"b": "3", "c": "4"}));
    let (_, _, got) = arm_raw(&arm, "GET", &v("jobs/spec-job"), Some(&tok), None);
    assert_eq!(got["properties"]["tags"], json!({"b": "3", "c": "4"}));
    again["properties"]["command"] = json!("echo other");
    let (s, _, b) = put("jobs/spec-job", again);
    assert_eq!(s, 400, "{b}");
    assert!(message(&b).contains("its command cannot be changed"), "{b}");

    // Cancel is long-running (Jobs_Cancel): 202, Location on the ARM endpoint, Retry-After 10–600.
    let (s, h, _) = arm_raw(&arm, "POST", &v("jobs/spec-job/cancel"), Some(&tok), None);
    assert_eq!(s, 202);
    let location = h["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{}/subscriptions/", arm.url)),
        "{location}"
    );
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((10..=600).contains(&retry), "{retry}");
    let path = location.strip_prefix(&arm.url).unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (s, h, _) = arm_raw(&arm, "GET", &path, Some(&tok), None);
        if s == 200 {
            break;
        }
        assert_eq!(s, 202);
        assert!(h.contains_key("location") && h.contains_key("retry-after"));
        assert!(
            std::time::Instant::now() < deadline,
            "the cancel never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, _, got) = arm_raw(&arm, "GET", &v("jobs/spec-job"), Some(&tok), None);
    assert_eq!(got["properties"]["status"], "Canceled");

    // Logs live in the workspace's storage: an ARM token is refused there, a storage one taken.
    let log = format!(
        "{}/ExperimentRun/dcid.spec-job/user_logs/std_log.txt",
        arm.logs_endpoint()
    );
    let get = |token: &str, version: bool| {
        let http = reqwest::blocking::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(tls::ca().pem().as_bytes()).unwrap(),
            )
            .build()
            .unwrap();
        let mut rb = http.get(&log).bearer_auth(token);
        if version {
            rb = rb.header("x-ms-version", "2021-08-06");
        }
        let r = rb.send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (s, text) = get(&tok, true);
    assert_eq!(s, 401, "{text}");
    assert!(
        text.contains("<Code>InvalidAuthenticationInfo</Code>"),
        "{text}"
    );
    let storage = token_for(&entra, "https://storage.azure.com/.default");
    assert_eq!(get(&storage, false).0, 400, "x-ms-version is required");
    let (s, text) = get(&storage, true);
    assert!(
        s == 200 || (s == 404 && text.contains("BlobNotFound")),
        "{s} {text}"
    );

    // Workspace names: ^[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}$. No workspace can have a name off that
    // pattern, so ARM answers a request under one as under any missing parent: 404.
    let short = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.MachineLearningServices/workspaces/ab/jobs/x?api-version=2025-12-01",
        envbuild_e2e::azure::SUBSCRIPTION,
        envbuild_e2e::azure::RESOURCE_GROUP
    );
    let (s, _, b) = arm_raw(&arm, "GET", &short, Some(&tok), None);
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("ParentResourceNotFound")),
        "{b}"
    );
    assert!(
        arm.spec_violations().is_empty(),
        "{:?}",
        arm.spec_violations()
    );
    assert_eq!(WORKSPACE, "mlw-envbuild");
}

#[test]
fn job_options_reach_the_body_and_bad_ones_are_refused_before_any_request() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    // Slow steps: the job is still before its (failing) image pull when `job cancel` runs.
    arm.shared.state.lock().unwrap().step = std::time::Duration::from_secs(2);
    let secret = entra.client_secret.clone();
    let tok = arm_token(&entra);
    let img = format!("myacr.azurecr.io/envbuild/mnist@{D1}");
    // The environment version `run --azure IMAGE` looks for (its version: the digest's first 12).
    let (s, _, b) = arm_raw(
        &arm,
        "PUT",
        &format!(
            "{}/environments/mnist/versions/111111111111?api-version=2025-12-01",
            ws_id()
        ),
        Some(&tok),
        Some(json!({"properties": {"image": img}})),
    );
    assert_eq!(s, 201, "{b}");
    let uuid = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    let run = |extra: &[&str]| {
        let mut a = vec![
            "run",
            "--azure",
            img.as_str(),
            "--environment-name",
            "mnist",
            "--compute",
            "cpu-cluster",
            "--detach",
        ];
        a.extend_from_slice(extra);
        go(
            &entra,
            &arm,
            az_cmd(&entra, &arm, Cred::Secret(&secret), &a),
        )
    };
    let (code, out, err) = run(&[
        "--job-name",
        "opts-job",
        "--tier",
        "spot",
        "--identity",
        "managed",
        "--identity-client-id",
        uuid,
        "--shm-size",
        "8g",
        "--notify-email",
        "me@example.com",
        "--notify-email",
        "ops@example.com",
        "--notify-on",
        "failed,canceled",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(last_line(&out), "opts-job");
    let p = arm.shared.job("opts-job").unwrap()["properties"].clone();
    assert_eq!(p["queueSettings"], json!({"jobTier": "Spot"}));
    assert_eq!(
        p["identity"],
        json!({"identityType": "Managed", "clientId": uuid})
    );
    assert_eq!(p["resources"]["shmSize"], "8g");
    assert_eq!(
        p["notificationSetting"],
        json!({"emails": ["me@example.com", "ops@example.com"], "emailOn": ["JobFailed", "JobCancelled"]})
    );
    // Bad options: one clear error naming the flag, before any request reaches ARM.
    let before = arm.requests().len();
    for (args, needle) in [
        (
            vec![
                "--identity",
                "managed",
                "--identity-client-id",
                "my-identity",
            ],
            "--identity-client-id `my-identity`: not a client id",
        ),
        (
            vec!["--identity", "aml", "--identity-client-id", uuid],
            "only a managed identity",
        ),
        (
            vec!["--notify-email", "me", "--job-name", "x1"],
            "--notify-email `me`: not an email address",
        ),
        (
            vec!["--notify-email", "me@example.com", "--notify-on", "done"],
            "--notify-on `done`: not one of completed, failed, canceled",
        ),
        (
            vec!["--tier", "Cheap"],
            "not one of Spot, Basic, Standard, Premium",
        ),
        (vec!["--shm-size", "lots"], "--shm-size"),
    ] {
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A workspace name the service refuses is refused here, before any request.
    let mut c = az_cmd(
        &entra,
        &arm,
        Cred::Secret(&secret),
        &["job", "show", "opts-job"],
    );
    c.env("AZUREML_WORKSPACE_NAME", "ab");
    let (code, _, err) = go(&entra, &arm, c);
    assert_eq!(code, 1);
    assert!(
        err.contains("workspace name `ab` is not valid: 3 to 33 letters"),
        "{err}"
    );
    assert_eq!(arm.requests().len(), before, "no request for bad input");

    // `job cancel` follows the 202's Location until the cancel is done: Canceled when it returns.
    let c = az_cmd(
        &entra,
        &arm,
        Cred::Secret(&secret),
        &["job", "cancel", "opts-job"],
    );
    let (code, _, err) = go(&entra, &arm, c);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("job opts-job canceled"), "{err}");
    let polls = cancel_polls(&arm, "opts-job");
    assert!(polls.len() >= 2 && polls.last() == Some(&200), "{polls:?}");
    assert_eq!(
        arm.shared.job("opts-job").unwrap()["properties"]["status"],
        "Canceled"
    );
}

/// Computes (machineLearningServices.json) and the subscription's location: every answer is a
/// valid ComputeResource, PaginatedComputeResourcesList, AmlComputeNodesInformation,
/// VirtualMachineSizeListResult, OperationStatusResult (common-types), Workspace or
/// JobBaseResourceArmPaginatedResult; the idle-shutdown body is held to IdleShutdownSetting; and
/// a stand-in answer that breaks its definition is a 500 and a recorded violation.
#[test]
fn compute_answers_and_the_idle_body_are_held_to_the_definitions() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    arm.add_cluster("cpu-2", "Standard_DS3_v2", "LowPriority", 0, 2, 1);
    arm.set_nodes("cpu-2", &[("tvm-1", "running", Some("job-a"))]);
    arm.add_instance("ci-dev", "Standard_DS11_v2", "Stopped", Some("PT30M"));
    arm.seed_job("seeded-1", "Running", Some("cpu-2"));
    let tok = arm_token(&entra);
    let ws = ws_id();
    let loc = format!(
        "/subscriptions/{}/providers/Microsoft.MachineLearningServices/locations/eastus",
        envbuild_e2e::azure::SUBSCRIPTION
    );
    let q = |p: String| format!("{p}?api-version=2025-12-01");
    let call = |m: &str, p: String, body: Option<Value>| arm_raw(&arm, m, &q(p), Some(&tok), body);
    for (m, p, want) in [
        ("GET", ws.clone(), 200),
        ("GET", format!("{ws}/jobs"), 200),
        ("GET", format!("{ws}/computes"), 200),
        ("GET", format!("{ws}/computes/ci-dev"), 200),
        ("POST", format!("{ws}/computes/cpu-2/listNodes"), 200),
        ("GET", format!("{loc}/vmSizes"), 200),
    ] {
        let (s, _, b) = call(m, p.clone(), None);
        assert_eq!(s, want, "{m} {p}: {b}");
    }
    // A start, followed through its Azure-AsyncOperation status to the end.
    let (s, h, _) = call("POST", format!("{ws}/computes/ci-dev/start"), None);
    assert_eq!(s, 202);
    let op = h["azure-asyncoperation"].to_str().unwrap().to_owned();
    let op = op.strip_prefix(&arm.url).unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, _, b) = arm_raw(&arm, "GET", &op, Some(&tok), None);
        assert_eq!(s, 200, "{b}");
        if b["status"] != "InProgress" {
            assert_eq!(b["status"], "Succeeded", "{b}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the start never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        arm.spec_violations().is_empty(),
        "{:?}",
        arm.spec_violations()
    );

    // The idle-shutdown body: the definition types its field; a number is refused by name.
    let idle = format!("{ws}/computes/ci-dev/updateIdleShutdownSetting");
    let (s, _, b) = call(
        "POST",
        idle.clone(),
        Some(json!({"idleTimeBeforeShutdown": 30})),
    );
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("UserError")),
        "{b}"
    );
    assert!(
        message(&b).contains("not a valid IdleShutdownSetting: idleTimeBeforeShutdown: "),
        "{b}"
    );
    let (s, _, b) = call(
        "POST",
        idle,
        Some(json!({"idleTimeBeforeShutdown": "PT1H"})),
    );
    assert_eq!(s, 200, "{b}");

    // A wrong stand-in fails loudly: a node state off its enum, a price tier off VMTier.
    arm.set_nodes("cpu-2", &[("tvm-1", "Running", None)]);
    let (s, _, b) = call("POST", format!("{ws}/computes/cpu-2/listNodes"), None);
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (500, Some("StandInSpecViolation")),
        "{b}"
    );
    arm.shared.state.lock().unwrap().computes.vm_sizes["value"][0]["estimatedVMPrices"]["values"]
        [0]["vmTier"] = json!("Dedicated");
    let (s, _, _) = call("GET", format!("{loc}/vmSizes"), None);
    assert_eq!(s, 500);
    let v = std::mem::take(&mut arm.shared.state.lock().unwrap().spec_violations);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v[0].contains("AmlComputeNodesInformation: nodes.0.nodeState: "),
        "{v:?}"
    );
    assert!(
        v[1].contains("VirtualMachineSizeListResult: value.0.estimatedVMPrices.values.0.vmTier: "),
        "{v:?}"
    );
}
