//! Azure ML end to end against the stand-in (tests/src/azure): ARM answering as recorded,
//! `register`/`deploy` idempotence, command jobs that really run the trainer image on the Docker
//! engine, model registration, every credential path, bad input, retries, and no secret in any
//! output.

use std::path::Path;
use std::process::{Command, Output};

use envbuild_e2e::acr::Acr;
use envbuild_e2e::azure::{AzureStandIn, RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE};
use envbuild_e2e::entra::Entra;
use envbuild_e2e::{bins, json_shape, last_line, ok, run, tls};
use serde_json::{json, Value};

use super::build::envbuild;

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

pub(crate) fn ws_id() -> String {
    format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}")
}

/// Which credential envbuild finds.
pub(crate) enum Cred<'a> {
    Secret(&'a str),
    Managed,
    Az(&'a Path),
}

/// `envbuild ARGS` aimed at the stand-in, with only the chosen credential in its environment.
pub(crate) fn az_cmd(entra: &Entra, arm: &AzureStandIn, cred: Cred, args: &[&str]) -> Command {
    let mut c = envbuild();
    for k in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "AZURE_SUBSCRIPTION_ID",
        "AZURE_RESOURCE_GROUP",
        "AZUREML_WORKSPACE_NAME",
    ] {
        c.env_remove(k);
    }
    c.env("ENVBUILD_NO_IMDS", "1").args(args);
    for (k, v) in arm.env() {
        c.env(k, v);
    }
    match cred {
        Cred::Secret(secret) => {
            for (k, v) in entra.client_secret_env() {
                c.env(k, v);
            }
            c.env("AZURE_CLIENT_SECRET", secret);
        }
        Cred::Managed => {
            for (k, v) in entra.managed_identity_env() {
                c.env(k, v);
            }
        }
        Cred::Az(dir) => {
            let path = std::env::var("PATH").unwrap_or_default();
            c.env("PATH", format!("{}:{path}", dir.display()));
        }
    }
    c
}

/// Runs it; (exit code, stdout, stderr), checking that no secret or token is in the output.
pub(crate) fn go(entra: &Entra, arm: &AzureStandIn, mut c: Command) -> (i32, String, String) {
    let o: Output = run(&mut c);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    let mut secrets = vec![entra.client_secret.clone(), entra.identity_header.clone()];
    secrets.extend(arm.shared.state.lock().unwrap().tokens_seen.iter().cloned());
    for s in secrets {
        assert!(
            !out.contains(&s) && !err.contains(&s),
            "a secret is in the output of {c:?}:\n{out}\n{err}"
        );
    }
    (o.status.code().unwrap_or(-1), out, err)
}

fn puts(arm: &AzureStandIn, needle: &str) -> Vec<u16> {
    arm.requests()
        .into_iter()
        .filter(|(m, p, _)| m == "PUT" && p.contains(needle))
        .map(|(_, _, s)| s)
        .collect()
}

#[test]
fn register_is_idempotent_versions_follow_the_digest_and_bad_input_is_refused() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    let t = tempfile::tempdir().unwrap();
    let secret = entra.client_secret.clone();
    let reg = |args: &[&str]| {
        go(
            &entra,
            &arm,
            az_cmd(&entra, &arm, Cred::Secret(&secret), args),
        )
    };

    let image1 = format!("myacr.azurecr.io/envbuild/mnist@{D1}");
    let yaml = t.path().join("env.yml");
    let (code, out, err) = reg(&[
        "register",
        &image1,
        "--name",
        "envbuild-mnist",
        "--revision",
        "abc123",
        "--emit-yaml",
        yaml.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let id = format!(
        "{}/environments/envbuild-mnist/versions/111111111111",
        ws_id()
    );
    assert_eq!(last_line(&out), id);
    assert!(err.contains("registered"), "{err}");
    assert_eq!(puts(&arm, "/environments/"), vec![201]);
    let y = std::fs::read_to_string(&yaml).unwrap();
    assert!(
        y.contains(&format!("image: \"{image1}\"")) && y.contains("version: \"111111111111\""),
        "{y}"
    );

    // What the service stored: name = version, the fields it adds, our tags.
    let stored = arm_get(
        &arm,
        &entra,
        "environments/envbuild-mnist/versions/111111111111",
    )
    .1;
    assert_eq!(stored["name"], "111111111111");
    assert_eq!(stored["properties"]["image"], image1.as_str());
    assert_eq!(stored["properties"]["osType"], "Linux");
    assert_eq!(stored["properties"]["tags"]["envbuild.image.digest"], D1);
    assert_eq!(
        stored["properties"]["tags"]["envbuild.source.revision"],
        "abc123"
    );
    assert_eq!(
        stored["properties"]["properties"]["azureml.labels"],
        "latest"
    );

    // Again: a GET, no PUT, the same id.
    let (code, out, err) = reg(&["register", &image1, "--name", "envbuild-mnist"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(last_line(&out), id);
    assert!(err.contains("already registered with this image"), "{err}");
    assert_eq!(puts(&arm, "/environments/"), vec![201]);
    // --json: one document, the same id, `registered: false` for the no-op.
    let (code, out, err) = reg(&["register", &image1, "--name", "envbuild-mnist", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).expect("stdout is one JSON document");
    insta::assert_snapshot!("register_json", json_shape(&doc));
    assert_eq!(
        (doc["id"].as_str(), &doc["registered"]),
        (Some(id.as_str()), &json!(false))
    );
    assert_eq!(doc["image"], image1.as_str());
    assert_eq!(puts(&arm, "/environments/"), vec![201]);

    // A new image is a new version; the container knows the latest.
    let (code, out, _) = reg(&[
        "register",
        &format!("myacr.azurecr.io/envbuild/mnist:v2@{D2}"),
        "--name",
        "envbuild-mnist",
    ]);
    assert_eq!(code, 0);
    assert!(last_line(&out).ends_with("/versions/222222222222"), "{out}");
    let container = arm_get(&arm, &entra, "environments/envbuild-mnist").1;
    assert_eq!(container["properties"]["latestVersion"], "222222222222");

    // 500s are retried (and succeed); the count of requests shows it.
    arm.fail_next(2);
    let before = arm.requests().len();
    let (code, _, err) = reg(&[
        "register",
        &format!("myacr.azurecr.io/other@{D1}"),
        "--name",
        "other-env",
    ]);
    assert_eq!(code, 0, "{err}");
    let statuses: Vec<u16> = arm.requests()[before..].iter().map(|r| r.2).collect();
    assert_eq!(
        statuses,
        vec![500, 500, 404, 201],
        "GET retried twice, then PUT"
    );

    // Refused before any request: reserved name, no digest.
    let before = arm.requests().len();
    let (code, _, err) = reg(&["register", &image1, "--name", "AzureML-pytorch"]);
    assert_eq!(code, 1);
    assert!(err.contains("`AzureML-pytorch` is reserved"), "{err}");
    let (code, _, err) = reg(&[
        "register",
        "myacr.azurecr.io/envbuild/mnist:v1",
        "--name",
        "x",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("has no digest") && err.contains("hint:"),
        "{err}"
    );
    assert_eq!(arm.requests().len(), before, "nothing sent for bad input");

    // Unknown workspace: ARM's 404, with the request id and what to check; not retried.
    let mut c = az_cmd(
        &entra,
        &arm,
        Cred::Secret(&secret),
        &["register", &image1, "--name", "e", "--workspace", "nope"],
    );
    c.env("AZUREML_WORKSPACE_NAME", "nope");
    let before = arm.requests().len();
    let (code, _, err) = go(&entra, &arm, c);
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 404 ParentResourceNotFound: Can not perform requested operation on nested resource. Parent resource 'nope' not found."), "{err}");
    assert!(
        err.contains("x-ms-request-id: ") && !err.contains("x-ms-request-id: none"),
        "{err}"
    );
    assert!(err.contains("hint: check the workspace"), "{err}");
    assert_eq!(arm.requests().len(), before + 1, "a 4xx is not retried");

    // A wrong client secret: one clear error from the credential chain, no ARM request.
    let before = arm.requests().len();
    let (code, _, err) = go(
        &entra,
        &arm,
        az_cmd(
            &entra,
            &arm,
            Cred::Secret("not-the-secret"),
            &["register", &image1, "--name", "e"],
        ),
    );
    assert_eq!(code, 1);
    assert!(err.contains("ClientSecretCredential"), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");
    assert_eq!(arm.requests().len(), before);
}

/// A raw ARM request to the stand-in (for what envbuild never sends).
pub(crate) fn arm_raw(
    arm: &AzureStandIn,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tls::ca().pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let mut rb = http.request(method.parse().unwrap(), format!("{}{path}", arm.url));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().unwrap();
    (s, h, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A token for `scope` from the Entra stand-in (client secret).
pub(crate) fn token_for(entra: &Entra, scope: &str) -> String {
    let auth = envbuild::auth::entra::EntraChain::new(&envbuild::auth::entra::Settings {
        authority_host: Some(entra.authority.clone()),
        ca_file: Some(tls::ca().pem_file().to_path_buf()),
        env: entra
            .client_secret_env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        probe_imds: false,
    })
    .unwrap();
    auth.token(scope).unwrap().secret.expose().to_owned()
}

/// Asserts that `job`'s cancel was answered 202 (Jobs_Cancel is long-running) and returns the
/// statuses of the polls of its operation's Location, in order.
pub(crate) fn cancel_polls(arm: &AzureStandIn, job: &str) -> Vec<u16> {
    let reqs = arm.requests();
    let cancel = format!("/jobs/{job}/cancel");
    assert!(
        reqs.iter()
            .any(|(m, p, s)| m == "POST" && p.ends_with(&cancel) && *s == 202),
        "{reqs:?}"
    );
    reqs.iter()
        .filter(|(m, p, _)| m == "GET" && p.contains("/mfeOperationResults/"))
        .map(|(_, _, s)| *s)
        .collect()
}

pub(crate) fn arm_token(entra: &Entra) -> String {
    token_for(entra, envbuild::auth::entra::ARM_SCOPE)
}

fn arm_get(arm: &AzureStandIn, entra: &Entra, rel: &str) -> (u16, Value) {
    let (s, _, v) = arm_raw(
        arm,
        "GET",
        &format!("{}/{rel}?api-version=2025-12-01", ws_id()),
        Some(&arm_token(entra)),
        None,
    );
    (s, v)
}

#[test]
fn the_stand_in_answers_as_the_recorded_service() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    let tok = arm_token(&entra);
    let ws = ws_id();
    let v = |p: &str| format!("{ws}/{p}?api-version=2025-12-01");

    // No token: ARM's 401 with the recorded message and headers.
    let (s, h, b) = arm_raw(&arm, "GET", &v("environments/x"), None, None);
    assert_eq!(s, 401);
    assert_eq!(
        b,
        json!({"error":{"code":"AuthenticationFailed","message":"Authentication failed. The 'Authorization' header is missing."}})
    );
    assert_eq!(h["x-ms-response-type"], "error");
    assert!(h.contains_key("x-ms-request-id") && h.contains_key("x-ms-correlation-request-id"));
    // A token the stand-in did not issue.
    assert_eq!(
        arm_raw(&arm, "GET", &v("environments/x"), Some("forged"), None).0,
        401
    );
    // No api-version.
    let (s, _, b) = arm_raw(
        &arm,
        "GET",
        &format!("{ws}/environments/x"),
        Some(&tok),
        None,
    );
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("MissingApiVersionParameter"))
    );

    let img = format!("myacr.azurecr.io/a@{D1}");
    let put = |name: &str, ver: &str, props: Value| {
        arm_raw(
            &arm,
            "PUT",
            &v(&format!("environments/{name}/versions/{ver}")),
            Some(&tok),
            Some(json!({"properties": props})),
        )
    };
    let (s, h, b) = put("env", "1", json!({"image": img, "description": "d"}));
    assert_eq!(s, 201);
    assert!(h.contains_key("location") && h.contains_key("x-ms-request-id"));
    assert!(!h.contains_key("x-ms-response-type"));
    assert_eq!(b["name"], "1");
    assert_eq!(
        b["type"],
        "Microsoft.MachineLearningServices/workspaces/environments/versions"
    );
    for (k, want) in [
        ("environmentType", "UserCreated"),
        ("provisioningState", "Succeeded"),
        ("stage", "Development"),
        ("autoRebuild", "Disabled"),
        ("osType", "Linux"),
        ("condaFile", ""),
    ] {
        assert_eq!(b["properties"][k], want, "{k}");
    }
    assert!(b["systemData"]["createdAt"].is_string());
    // Description and tags may change (200); the image may not (409, the real message).
    assert_eq!(
        put(
            "env",
            "1",
            json!({"image": img, "description": "new", "tags": {"a": "b"}})
        )
        .0,
        200
    );
    let (s, h, b) = put(
        "env",
        "1",
        json!({"image": format!("myacr.azurecr.io/a@{D2}")}),
    );
    assert_eq!(s, 409);
    assert_eq!(h["x-ms-response-type"], "error");
    assert_eq!(b["error"]["code"], "UserError");
    assert_eq!(
        b["error"]["message"],
        "Environment env with version 1 is already registered and cannot be changed."
    );
    assert_eq!(
        b["error"]["additionalInfo"][0],
        json!({"type":"ComponentName","info":{"value":"managementfrontend"}})
    );
    // Validation.
    let msg = |r: (u16, reqwest::header::HeaderMap, Value)| {
        (
            r.0,
            r.2["error"]["message"].as_str().unwrap_or("").to_owned(),
        )
    };
    let (s, m) = msg(put(
        "env",
        "2",
        json!({"image": img, "build": {"contextUri": "https://x/y", "dockerfilePath": "Dockerfile"}}),
    ));
    assert_eq!((s, m.as_str()), (400, "More than one of BaseImage, BaseDockerfile, and BuildContext were set; these are mutually exclusive properties."));
    assert_eq!(put("env", "3", json!({"description": "nothing"})).0, 400);
    let (s, m) = msg(put("env", "4", json!({"image": "myacr.azurecr.io/a"})));
    assert_eq!(s, 400);
    assert!(m.contains("tag or a digest"), "{m}");
    assert_eq!(put("AzureML-env", "1", json!({"image": img})).0, 400);
    assert_eq!(put("Microsoft-env", "1", json!({"image": img})).0, 400);
    // Container: latest and next version.
    put(
        "env",
        "7",
        json!({"image": format!("myacr.azurecr.io/a@{D2}")}),
    );
    let (s, _, b) = arm_raw(&arm, "GET", &v("environments/env"), Some(&tok), None);
    assert_eq!(s, 200);
    assert_eq!(
        (
            b["properties"]["latestVersion"].as_str(),
            b["properties"]["nextVersion"].as_str()
        ),
        (Some("7"), Some("8"))
    );
    // A job gets the default output and the Studio link; cancel answers 202; unknown env 400.
    let job = json!({"properties": {"jobType": "Command", "command": "echo hi", "environmentId": format!("{ws}/environments/env/versions/7"), "experimentName": "e"}});
    let (s, _, b) = arm_raw(&arm, "PUT", &v("jobs/j1"), Some(&tok), Some(job.clone()));
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["properties"]["status"], "NotStarted");
    assert_eq!(
        b["properties"]["services"]["Studio"]["endpoint"],
        format!("https://ml.azure.com/runs/j1?wsid={ws}")
    );
    assert_eq!(
        b["properties"]["outputs"]["default"]["uri"],
        "azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.j1"
    );
    assert_eq!(
        arm_raw(&arm, "POST", &v("jobs/j1/cancel"), Some(&tok), None).0,
        202
    );
    let mut bad = job;
    bad["properties"]["environmentId"] = json!(format!("{ws}/environments/env/versions/99"));
    assert_eq!(
        arm_raw(&arm, "PUT", &v("jobs/j2"), Some(&tok), Some(bad)).0,
        400
    );
    // Unknown resource group and workspace: ARM's 404s.
    let (s, _, b) = arm_raw(&arm, "GET", &format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/nope/providers/Microsoft.MachineLearningServices/workspaces/w/environments/e?api-version=2025-12-01"), Some(&tok), None);
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("ResourceGroupNotFound"))
    );
}

#[test]
fn every_credential_path_reaches_arm() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    let t = tempfile::tempdir().unwrap();
    let az_dir = entra.fake_az(&t.path().join("bin"), true);
    let image = format!("myacr.azurecr.io/envbuild/mnist@{D1}");
    let secret = entra.client_secret.clone();
    for (i, cred) in [Cred::Secret(&secret), Cred::Managed, Cred::Az(&az_dir)]
        .into_iter()
        .enumerate()
    {
        let name = format!("cred-{i}");
        let before = arm.shared.state.lock().unwrap().tokens_seen.len();
        let (code, out, err) = go(
            &entra,
            &arm,
            az_cmd(&entra, &arm, cred, &["register", &image, "--name", &name]),
        );
        assert_eq!(code, 0, "credential {i}: {err}");
        assert!(
            last_line(&out).contains(&format!("/environments/{name}/versions/")),
            "{out}"
        );
        let seen = arm.shared.state.lock().unwrap().tokens_seen.clone();
        assert_eq!(seen.len(), before + 1, "credential {i} brought a new token");
        assert!(seen.iter().all(|t| (entra.verifier())(t).is_some()));
    }
    // A logged-out `az` and nothing else: the error lists what was tried.
    let out_dir = entra.fake_az(&t.path().join("bin-out"), false);
    let (code, _, err) = go(
        &entra,
        &arm,
        az_cmd(
            &entra,
            &arm,
            Cred::Az(&out_dir),
            &["register", &image, "--name", "x"],
        ),
    );
    assert_eq!(code, 1);
    assert!(err.contains("tried") && err.contains("az login"), "{err}");
}

/// The real thing: deploy the CPU trainer image to a real registry, run it as a command job
/// (the stand-in runs it on the Docker engine), register the model, and compare with the same
/// trainer run directly; then a failing job and a canceled one.
#[test]
fn deploy_run_and_register_a_model_end_to_end() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    arm.datastore("workspaceblobstore", Path::new("/usr/share/datasets"));
    // A private registry behind ACR's token service: envbuild pushes with an Entra token.
    let acr = Acr::start(entra.verifier());
    let registry = &acr.registry;
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let env_file = envbuild_e2e::root().join("environments/mnist-cpu.toml");
    let secret = entra.client_secret.clone();
    let cmd = |args: &[&str]| {
        let mut c = az_cmd(&entra, &arm, Cred::Secret(&secret), args);
        c.env("ENVBUILD_REGISTRY_AUTH", "entra")
            .env("DOCKER_CONFIG", t.path().join("docker"));
        let r = go(&entra, &arm, c);
        for s in acr.access_tokens().into_iter().chain(acr.refresh_tokens()) {
            assert!(
                !r.1.contains(&s) && !r.2.contains(&s),
                "an ACR token in the output"
            );
        }
        r
    };
    let dest = format!("{}/envbuild/mnist-cpu:latest", registry.addr);
    let yaml = t.path().join("mnist.yml");
    let deploy = [
        "deploy",
        env_file.to_str().unwrap(),
        "--dest",
        &dest,
        "--cache",
        cache.to_str().unwrap(),
        "--emit-yaml",
        yaml.to_str().unwrap(),
    ];
    let (code, out, err) = cmd(&deploy);
    assert_eq!(code, 0, "{err}");
    let env_id = last_line(&out);
    assert!(
        env_id.starts_with(&format!(
            "{}/environments/envbuild-mnist-cpu/versions/",
            ws_id()
        )),
        "{out}"
    );
    let stored = arm_get(
        &arm,
        &entra,
        env_id.split_once(&format!("{}/", ws_id())).unwrap().1,
    )
    .1;
    let image = stored["properties"]["image"].as_str().unwrap().to_owned();
    assert!(
        image.starts_with(&format!("{}/envbuild/mnist-cpu@sha256:", registry.addr)),
        "{image}"
    );
    assert!(
        env_id.ends_with(&image[image.len() - 64..image.len() - 52]),
        "version from the digest"
    );
    // The version's tags name the SBOM pushed beside the image (through ACR's referrers tag
    // here: the stand-in registry is distribution 2.8) — the same document `envbuild sbom` reads.
    let sbom_digest = stored["properties"]["tags"]["envbuild.sbom.digest"]
        .as_str()
        .expect("the SBOM digest in the tags")
        .to_owned();
    let local_sbom = ok(envbuild().args([
        "sbom",
        env_file.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]));
    assert_eq!(
        envbuild::digest::Digest::of(local_sbom.trim_end_matches('\n').as_bytes()).to_string(),
        sbom_digest
    );
    assert!(
        acr.log().iter().any(|l| l == "exchange"),
        "pushed with an Entra token"
    );
    // Idempotent: same id, no second environment PUT.
    let (code, out, err) = cmd(&deploy);
    assert_eq!(code, 0, "{err}");
    assert_eq!(last_line(&out), env_id);
    assert_eq!(puts(&arm, "/environments/"), vec![201]);
    // `register ENV` finds the pushed image by building from the cache; unknown repository: clear error.
    let repo = format!("{}/envbuild/mnist-cpu", registry.addr);
    let (code, out, err) = cmd(&[
        "register",
        env_file.to_str().unwrap(),
        "--image-repository",
        &repo,
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(last_line(&out), env_id);
    let (code, _, err) = cmd(&[
        "register",
        env_file.to_str().unwrap(),
        "--image-repository",
        &format!("{}/not/pushed", registry.addr),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is not in the registry") && err.contains("hint:"),
        "{err}"
    );

    let trainer = [
        "--epochs",
        "1",
        "--limit-train",
        "2000",
        "--limit-test",
        "500",
        "--seed",
        "7",
        "--threads",
        "1",
        "--device",
        "cpu",
    ];
    let run_job = |name: &str, extra: &[&str], targs: &[&str]| {
        let mut a = vec![
            "run",
            "--azure",
            env_file.to_str().unwrap(),
            "--compute",
            "cpu-cluster",
            "--input",
            "data=azureml://datastores/workspaceblobstore/paths/fashion-mnist",
            "--cache",
            cache.to_str().unwrap(),
            "--job-name",
            name,
            "--display-name",
            "mnist test",
        ];
        a.extend_from_slice(extra);
        a.push("--");
        a.extend_from_slice(targs);
        cmd(&a)
    };
    // The compute cannot pull from the private registry until it is granted AcrPull.
    let (code, _, err) = run_job("mnist-nopull", &[], &trainer);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("job mnist-nopull: Failed") && err.contains("ImagePullFailed"),
        "{err}"
    );
    assert!(err.contains("AcrPull"), "{err}");
    arm.grant_acr_pull(&acr.user, &acr.password);

    let (code, out, err) = run_job("mnist-ok", &[], &trainer);
    assert_eq!(code, 0, "{err}");
    assert_eq!(last_line(&out), "mnist-ok");
    assert!(
        err.contains(&format!(
            "https://ml.azure.com/runs/mnist-ok?wsid={}",
            ws_id()
        )),
        "{err}"
    );
    let shown: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("job mnist-ok: "))
        .filter(|s| !s.starts_with("https"))
        .collect();
    assert_eq!(shown.last(), Some(&"Completed"), "{err}");
    assert_eq!(
        arm.shared.job_history("mnist-ok"),
        [
            "Starting",
            "Preparing",
            "Queued",
            "Running",
            "Finalizing",
            "Completed"
        ]
    );
    let job = arm.shared.job("mnist-ok").unwrap();
    let p = &job["properties"];
    assert_eq!(p["command"], "/opt/envbuild/bin/trainer --data ${{inputs.data}} --output ${{outputs.model}} --epochs 1 --limit-train 2000 --limit-test 500 --seed 7 --threads 1 --device cpu");
    assert_eq!(p["environmentId"], env_id.as_str());
    assert_eq!(p["computeId"], format!("{}/computes/cpu-cluster", ws_id()));
    assert_eq!(
        p["limits"],
        json!({"jobLimitsType": "Command", "timeout": "PT2H"})
    );

    // The model from the "Azure" job is the model of the same trainer run here.
    let job_out = arm.shared.job_dir("mnist-ok").join("outputs/model");
    let local = t.path().join("local");
    let o = run(Command::new(&bins().trainer)
        .args([
            "--data",
            "/usr/share/datasets/fashion-mnist",
            "--output",
            local.to_str().unwrap(),
        ])
        .args(trainer));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let metrics = |d: &Path| -> Value {
        serde_json::from_str(
            std::fs::read_to_string(d.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .last()
                .unwrap(),
        )
        .unwrap()
    };
    let (a, b) = (metrics(&job_out), metrics(&local));
    let (acc_a, acc_b) = (
        a["test_accuracy"].as_f64().unwrap(),
        b["test_accuracy"].as_f64().unwrap(),
    );
    assert!(
        (acc_a - acc_b).abs() <= 0.003,
        "accuracy {acc_a} vs {acc_b}"
    );
    assert!(acc_a > 0.5, "the job trained a model ({acc_a})");
    // Same seed, one CPU thread: the same training.
    envbuild_e2e::assert_same_training(&job_out, &local);

    // Data-parallel: two instances of one process each, the PyTorch distribution as the REST
    // definition spells it, run by the stand-in as two containers on a network of the job's own
    // with the variables the service sets; the model is the one two ranks train here.
    // The service also loses touch with this one for a while: NotResponding is not terminal
    // (the spec's JobStatus), so envbuild warns and follows it to Completed.
    arm.not_responding_once("mnist-ddp");
    let (code, _, err) = run_job("mnist-ddp", &["--instances", "2"], &trainer);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("job mnist-ddp: NotResponding")
            && err.contains("a job can come back from NotResponding, so envbuild keeps following")
            && err.contains("job mnist-ddp: Completed"),
        "{err}"
    );
    let history = arm.shared.job_history("mnist-ddp");
    let nr = history.iter().position(|s| s == "NotResponding").unwrap();
    assert_eq!(history[nr + 1], "Running", "{history:?}");
    let p = arm.shared.job("mnist-ddp").unwrap()["properties"].clone();
    assert_eq!(p["resources"]["instanceCount"], 2);
    assert_eq!(
        p["distribution"],
        json!({"distributionType": "PyTorch", "processCountPerInstance": 1})
    );
    let ddp_dir = arm.shared.job_dir("mnist-ddp");
    let rank1_log =
        std::fs::read_to_string(ddp_dir.join("user_logs/std_log_process_1.txt")).unwrap();
    assert!(rank1_log.contains("rank 1 of 2"), "{rank1_log}");
    let ranks_here = t.path().join("ranks");
    let mut with_data = vec!["--data", "/usr/share/datasets/fashion-mnist"];
    with_data.extend(trainer);
    envbuild_e2e::trainer_ranks(2, &with_data, &ranks_here);
    envbuild_e2e::assert_same_training(&ddp_dir.join("outputs/model"), &ranks_here);
    // What the definitions refuse, the stand-in refuses, naming the field: a distributionType
    // outside the enum, a processCountPerInstance that is not an int32, a property PyTorch does
    // not have (tests/data/azureml-2025-12-01).
    let mut body = json!({"properties": p});
    for (bad, needle) in [
        (
            json!({"distributionType": "pytorch"}),
            "properties.distribution.distributionType: \"pytorch\" is not one of",
        ),
        (
            json!({"distributionType": "PyTorch", "processCountPerInstance": "2"}),
            "properties.distribution.processCountPerInstance: \"2\" is not of types",
        ),
        (
            json!({"distributionType": "PyTorch", "nodeCount": 2}),
            "properties.distribution: Additional properties are not allowed ('nodeCount' was unexpected)",
        ),
    ] {
        body["properties"]["distribution"] = bad;
        let (s, _, v) = arm_raw(
            &arm,
            "PUT",
            &format!("{}/jobs/mnist-bad?api-version=2025-12-01", ws_id()),
            Some(&arm_token(&entra)),
            Some(body.clone()),
        );
        assert_eq!(s, 400, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(needle),
            "{v}"
        );
    }

    // Model registration: version 1, then the next one; a missing output is named.
    let (code, out, err) = cmd(&["model", "register", "fashion-cnn", "--job", "mnist-ok"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        last_line(&out),
        format!("{}/models/fashion-cnn/versions/1", ws_id())
    );
    let m = arm_get(&arm, &entra, "models/fashion-cnn/versions/1").1;
    assert_eq!(
        m["properties"]["modelUri"],
        "azureml://jobs/mnist-ok/outputs/model/"
    );
    assert_eq!(m["properties"]["modelType"], "custom_model");
    let (code, out, _) = cmd(&["model", "register", "fashion-cnn", "--job", "mnist-ok"]);
    assert_eq!(code, 0);
    assert!(
        last_line(&out).ends_with("/models/fashion-cnn/versions/2"),
        "{out}"
    );
    let (code, _, err) = cmd(&[
        "model",
        "register",
        "fashion-cnn",
        "--job",
        "mnist-ok",
        "--output",
        "weights",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("has no output `weights` (it has: default, model)"),
        "{err}"
    );
    let (code, _, err) = cmd(&[
        "model",
        "register",
        "fashion-cnn",
        "--job",
        "mnist-ok",
        "--version",
        "1",
    ]);
    // The same version with the same content is an update (200), not a new version.
    assert_eq!(code, 0, "{err}");
    assert_eq!(puts(&arm, "/models/"), vec![201, 201, 200]);
    // -o json, as az users type it: the model's document; and the job's.
    let (code, out, err) = cmd(&[
        "model",
        "register",
        "fashion-cnn",
        "--job",
        "mnist-ok",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    insta::assert_snapshot!("model_register_json", json_shape(&doc));
    assert_eq!(doc["version"], "3");
    assert_eq!(doc["uri"], "azureml://jobs/mnist-ok/outputs/model/");
    assert!(doc["id"]
        .as_str()
        .unwrap()
        .ends_with("/models/fashion-cnn/versions/3"));
    let (code, out, err) = cmd(&["job", "show", "mnist-ok", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    insta::assert_snapshot!("job_show_json", json_shape(&doc));
    assert_eq!(doc["status"], "Completed");
    assert_eq!(doc["id"], "mnist-ok");
    assert_eq!(
        doc["studio"],
        format!("https://ml.azure.com/runs/mnist-ok?wsid={}", ws_id()).as_str()
    );

    // A failing command: Failed, non-zero exit, the log's tail.
    let (code, _, err) = run_job("mnist-bad", &[], &["--epochs", "0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("job mnist-bad: Failed"), "{err}");
    assert!(
        err.contains("last lines of user_logs/std_log.txt") && err.contains("--epochs"),
        "{err}"
    );
    assert!(err.contains("ended with status Failed"), "{err}");
    let (code, _, err) = cmd(&["model", "register", "bad", "--job", "mnist-bad"]);
    assert_eq!(code, 1);
    assert!(err.contains("is Failed, not Completed"), "{err}");

    // A job that reaches limits.timeout is canceled by the service (JobLimits.timeout): it ends
    // Canceled, and envbuild says it was the timeout, not a bare Canceled.
    let (code, _, err) = run_job(
        "mnist-timeout",
        &["--timeout", "3s"],
        &["--epochs", "50", "--threads", "1"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("job mnist-timeout ended Canceled: timeout reached (limits.timeout PT3S)")
            && err.contains("--timeout"),
        "{err}"
    );
    assert_eq!(
        arm.shared
            .job_history("mnist-timeout")
            .last()
            .map(String::as_str),
        Some("Canceled")
    );

    // Ctrl-C detaches (the job goes on), `job cancel` cancels, `job show --follow` sees Canceled.
    let mut c = az_cmd(
        &entra,
        &arm,
        Cred::Secret(&secret),
        &[
            "run",
            "--azure",
            env_file.to_str().unwrap(),
            "--compute",
            "cpu-cluster",
            "--input",
            "data=azureml://datastores/workspaceblobstore/paths/fashion-mnist",
            "--cache",
            cache.to_str().unwrap(),
            "--job-name",
            "mnist-cancel",
            "--",
            "--epochs",
            "50",
            "--threads",
            "1",
        ],
    );
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while arm
        .shared
        .job("mnist-cancel")
        .map(|j| j["properties"]["status"] == "Running")
        != Some(true)
    {
        assert!(std::time::Instant::now() < deadline, "the job never ran");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(600));
    envbuild_e2e::ok(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("detached; job mnist-cancel is Running")
            && err.contains("envbuild job cancel mnist-cancel"),
        "{err}"
    );
    assert_eq!(
        arm.shared.job("mnist-cancel").unwrap()["properties"]["status"],
        "Running"
    );
    let (code, _, err) = cmd(&["job", "cancel", "mnist-cancel"]);
    assert_eq!(code, 0, "{err}");
    // Jobs_Cancel is long-running: 202 with Location and Retry-After, which envbuild follows
    // until the operation is done, so the job is Canceled when `job cancel` returns.
    let polls = cancel_polls(&arm, "mnist-cancel");
    assert_eq!(polls.last(), Some(&200), "{polls:?}");
    assert_eq!(
        arm.shared.job("mnist-cancel").unwrap()["properties"]["status"],
        "Canceled"
    );
    let (code, _, err) = cmd(&["job", "show", "mnist-cancel", "--follow"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ended with status Canceled"), "{err}");

    // No container is left behind.
    let left = envbuild_e2e::ok(Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        "name=envbuild-azsim-mnist",
    ]));
    assert!(left.trim().is_empty(), "containers left: {left}");
    drop(arm);
    let images = envbuild_e2e::ok(Command::new("docker").args([
        "images",
        "-q",
        &format!("{}/envbuild/mnist-cpu", registry.addr),
    ]));
    assert!(images.trim().is_empty(), "pulled image left: {images}");
}
