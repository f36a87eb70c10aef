//! Authentication end to end: the Entra ID credential chain against the Entra stand-in (HTTPS
//! with the test CA), managed identity and a fake `az`.

use std::path::Path;
use std::process::{Command, Output};

use envbuild::auth::entra::{ACR_SCOPE, ARM_SCOPE};
use envbuild_e2e::entra::Entra;
use envbuild_e2e::tls;
use serde_json::Value;

/// The credential driver with exactly `vars` (plus PATH, HOME and the test CA).
fn token(vars: &[(&str, String)], path_first: Option<&Path>, args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let path = match path_first {
        Some(p) => format!("{}:/usr/bin:/bin", p.display()),
        None => "/usr/bin:/bin".into(),
    };
    let mut c = Command::new(env!("CARGO_BIN_EXE_entra-token"));
    c.env_clear()
        .env("PATH", path)
        .env("HOME", home.path())
        .env("ENVBUILD_NO_IMDS", "1")
        .env("ENVBUILD_CA_FILE", tls::ca().pem_file())
        .args(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn granted(o: &Output) -> Vec<Value> {
    assert!(
        o.status.success(),
        "no token:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn refused(o: &Output) -> String {
    assert!(!o.status.success(), "unexpected token");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn client_secret_credential_gets_a_verified_token_over_https_and_keeps_it() {
    let entra = Entra::start();
    let o = token(&entra.client_secret_env(), None, &[ARM_SCOPE, "again"]);
    let got = granted(&o);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["source"], "ClientSecretCredential");
    let t = got[0]["token"].as_str().unwrap();
    let issued = (entra.verifier())(t).expect("the stand-in issued this token");
    assert_eq!(
        (issued.identity.as_str(), issued.scope.as_str()),
        (entra.client_id.as_str(), ARM_SCOPE)
    );
    assert!(got[0]["expires_in"].as_u64().unwrap() > 3000);
    // The second request is served from the credential's cache.
    assert_eq!(got[1]["token"], got[0]["token"]);
    assert_eq!(entra.requests(), 1);
    assert!(!String::from_utf8_lossy(&o.stderr).contains(&entra.client_secret));

    // Without the test CA the stand-in's certificate is not trusted: TLS is verified.
    let mut vars = entra.client_secret_env();
    vars.push(("ENVBUILD_CA_FILE", "/dev/null".into()));
    let err = refused(&token(&vars, None, &[ACR_SCOPE]));
    assert!(err.contains("ClientSecretCredential"), "{err}");
    assert_eq!(entra.requests(), 1, "no request got through");
}

#[test]
fn wrong_client_secret_is_one_clear_error_without_the_secret() {
    let entra = Entra::start();
    let wrong = format!("{}-not-it", entra.client_secret);
    let mut vars = entra.client_secret_env();
    vars.retain(|(k, _)| *k != "AZURE_CLIENT_SECRET");
    vars.push(("AZURE_CLIENT_SECRET", wrong.clone()));
    let err = refused(&token(&vars, None, &[ARM_SCOPE]));
    assert!(err.contains("ClientSecretCredential"), "{err}");
    assert!(err.contains("Invalid client secret provided"), "{err}");
    assert!(err.contains("7000215"), "{err}");
    assert!(!err.contains(&wrong) && !err.contains(&entra.client_secret));

    // An unknown tenant names the tenant.
    let mut vars = entra.client_secret_env();
    vars.retain(|(k, _)| *k != "AZURE_TENANT_ID");
    vars.push((
        "AZURE_TENANT_ID",
        "11111111-2222-3333-4444-555555555555".into(),
    ));
    let err = refused(&token(&vars, None, &[ARM_SCOPE]));
    assert!(
        err.contains("Tenant '11111111-2222-3333-4444-555555555555' not found"),
        "{err}"
    );
}

#[test]
fn workload_identity_uses_the_federated_token_file() {
    let entra = Entra::start();
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("token");
    std::fs::write(&file, &entra.federated_token).unwrap();
    let mut vars: Vec<(&str, String)> = entra
        .client_secret_env()
        .into_iter()
        .filter(|(k, _)| *k != "AZURE_CLIENT_SECRET")
        .collect();
    vars.push(("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()));
    let got = granted(&token(&vars, None, &[ACR_SCOPE]));
    assert_eq!(got[0]["source"], "WorkloadIdentityCredential");
    let issued = (entra.verifier())(got[0]["token"].as_str().unwrap()).unwrap();
    assert_eq!(issued.scope, ACR_SCOPE);
    // A federated token Entra does not know is refused.
    std::fs::write(&file, "eyJsomething-else").unwrap();
    let err = refused(&token(&vars, None, &[ACR_SCOPE]));
    assert!(
        err.contains("WorkloadIdentityCredential") && err.contains("700213"),
        "{err}"
    );
}

#[test]
fn managed_identity_answers_when_identity_endpoint_is_set() {
    let entra = Entra::start();
    let got = granted(&token(&entra.managed_identity_env(), None, &[ARM_SCOPE]));
    assert_eq!(got[0]["source"], "ManagedIdentityCredential");
    let issued = (entra.verifier())(got[0]["token"].as_str().unwrap()).unwrap();
    assert_eq!(
        (issued.identity.as_str(), issued.scope.as_str()),
        ("managed-identity", ARM_SCOPE)
    );
    // A wrong IDENTITY_HEADER: the endpoint refuses, the chain says so and moves on.
    let mut vars = entra.managed_identity_env();
    vars[1].1 = "wrong".into();
    let err = refused(&token(&vars, None, &[ARM_SCOPE]));
    assert!(err.contains("ManagedIdentityCredential"), "{err}");
    assert!(err.contains("401") || err.contains("Unauthorized"), "{err}");
}

#[test]
fn az_cli_users_get_tokens_from_a_fake_az_first_on_path() {
    let entra = Entra::start();
    let t = tempfile::tempdir().unwrap();
    let dir = entra.fake_az(&t.path().join("bin"), true);
    let got = granted(&token(&[], Some(&dir), &[ACR_SCOPE]));
    assert_eq!(got[0]["source"], "DeveloperToolsCredential");
    let issued = (entra.verifier())(got[0]["token"].as_str().unwrap()).unwrap();
    assert_eq!(
        (issued.identity.as_str(), issued.scope.as_str()),
        ("az-cli-user", ACR_SCOPE)
    );
    assert!(got[0]["expires_in"].as_u64().unwrap() > 3000);
}

#[test]
fn nothing_configured_lists_every_credential_tried() {
    let entra = Entra::start();
    let err = refused(&token(&[], None, &[ARM_SCOPE]));
    for what in [
        "EnvironmentCredential: not configured (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE not set)",
        "ManagedIdentityCredential",
        "DeveloperToolsCredential",
        "hint: run `az login`",
    ] {
        assert!(err.contains(what), "{what} missing from:\n{err}");
    }
    // Logged-out az: its own message comes through.
    let t = tempfile::tempdir().unwrap();
    let dir = entra.fake_az(&t.path().join("bin"), false);
    let err = refused(&token(&[], Some(&dir), &[ARM_SCOPE]));
    assert!(err.contains("az login"), "{err}");
    // Azure ML's MSI_ENDPOINT source is named as unsupported, not silently skipped.
    let vars = [
        ("MSI_ENDPOINT", "http://127.0.0.1:9/msi".to_owned()),
        ("MSI_SECRET", "s".to_owned()),
    ];
    let err = refused(&token(&vars, None, &[ARM_SCOPE]));
    assert!(err.contains("MSI_ENDPOINT/MSI_SECRET"), "{err}");
    assert_eq!(entra.requests(), 0);
}

// --- ACR: Entra token exchange against a token-auth docker-registry -------------------------

use envbuild_e2e::acr::{Acr, TOKEN_USER};
use envbuild_e2e::{bins, last_line, skopeo_inspect};
use std::path::PathBuf;

fn sha256_hex(b: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b).unwrap();
    let o = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout)[..64].to_owned()
}

/// A small OCI layout built in code: a config and `layers` random layers; returns the dir.
fn tiny_layout(dir: &Path, layers: usize) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| -> Value {
        let h = sha256_hex(b);
        std::fs::write(blobs.join(&h), b).unwrap();
        serde_json::json!({"digest": format!("sha256:{h}"), "size": b.len()})
    };
    let mut descs = Vec::new();
    for i in 0..layers {
        let mut d = put(format!("layer {i} {}", tls::random(64))
            .repeat(1000)
            .as_bytes());
        d["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
        descs.push(d);
    }
    let mut config = put(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#);
    config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": descs,
    });
    let mut m = put(manifest.to_string().as_bytes());
    m["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    std::fs::write(
        dir.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [m]}).to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    dir.to_path_buf()
}

/// envbuild (debug build) with a clean environment: PATH, HOME and DOCKER_CONFIG in `t`.
fn envbuild_in(t: &Path, vars: &[(&str, String)]) -> Command {
    let mut c = Command::new(&bins().envbuild);
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", t)
        .env("DOCKER_CONFIG", t.join("docker"))
        .env("ENVBUILD_NO_IMDS", "1")
        .env("ENVBUILD_CACHE", t.join("cache"));
    for (k, v) in vars {
        c.env(k, v);
    }
    c
}

fn outputs(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn entra_vars(entra: &Entra) -> Vec<(&'static str, String)> {
    let mut v = entra.client_secret_env();
    v.push((
        "ENVBUILD_CA_FILE",
        tls::ca().pem_file().display().to_string(),
    ));
    v.push(("ENVBUILD_REGISTRY_AUTH", "entra".into()));
    v
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn entra_push_goes_through_the_acr_exchange_and_the_registry_verifies_the_jwts() {
    let entra = Entra::start();
    let acr = Acr::start(entra.verifier());
    let t = tempfile::tempdir().unwrap();
    let layout = tiny_layout(&t.path().join("img"), 2);
    let dest = format!("{}/team/tiny:v1", acr.registry.addr);
    let o = envbuild_in(t.path(), &entra_vars(&entra))
        .arg("push")
        .arg(format!("oci:{}", layout.display()))
        .arg(&dest)
        .output()
        .unwrap();
    let (stdout, stderr) = outputs(&o);
    assert!(
        o.status.success(),
        "push failed:\n{stderr}\nregistry log:\n{}",
        acr.registry.log()
    );
    let reference = last_line(&stdout);
    assert!(reference.starts_with(&format!("{}/team/tiny@sha256:", acr.registry.addr)));
    // One exchange, then access tokens for the repository (parallel blobs share the token).
    let log = acr.log();
    assert_eq!(
        log.iter().filter(|l| *l == "exchange").count(),
        1,
        "{log:?}"
    );
    assert!(
        log.contains(&"token repository:team/tiny:pull,push".to_owned()),
        "{log:?}"
    );
    assert_eq!(entra.requests(), 1);
    // The registry holds the image: skopeo reads it back with the admin user.
    let inspect: Value = skopeo_inspect(
        &dest,
        &["--creds", &format!("{}:{}", acr.user, acr.password)],
    );
    assert_eq!(
        Some(inspect["Digest"].as_str().unwrap()),
        reference.split('@').nth(1)
    );
    // No secret anywhere: output, the registry's storage (every pushed blob), the layout.
    let mut secrets = vec![entra.client_secret.clone()];
    secrets.extend(entra.issued_tokens());
    secrets.extend(acr.refresh_tokens());
    secrets.extend(acr.access_tokens());
    assert!(secrets.len() >= 4, "{}", secrets.len());
    let mut haystacks = files_under(&acr.registry.storage());
    haystacks.extend(files_under(t.path()));
    haystacks.push(("stdout".into(), o.stdout.clone()));
    haystacks.push(("stderr".into(), o.stderr.clone()));
    for (where_, bytes) in &haystacks {
        for s in &secrets {
            assert!(
                !contains(bytes, s),
                "a secret leaked into {}",
                where_.display()
            );
        }
    }
}

#[test]
fn missing_push_scope_expired_tokens_and_wrong_passwords_are_clear_errors() {
    let entra = Entra::start();
    let acr = Acr::start(entra.verifier());
    let t = tempfile::tempdir().unwrap();
    let layout = tiny_layout(&t.path().join("img"), 1);
    let push = |vars: &[(&str, String)], extra: &[&str], stdin: Option<&str>| {
        let mut c = envbuild_in(t.path(), vars);
        c.arg("push")
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("{}/team/denied:v1", acr.registry.addr))
            .args(extra);
        if let Some(input) = stdin {
            return with_stdin(c, input);
        }
        c.output().unwrap()
    };
    let names_target = |err: &str| {
        assert!(
            err.contains(&format!("{}/team/denied", acr.registry.addr)),
            "error does not name registry and repository:\n{err}"
        );
    };

    // An AcrPull-only identity: the registry refuses the push; the hint names AcrPush.
    acr.grant(&["pull"]);
    let o = push(&entra_vars(&entra), &[], None);
    let (_, err) = outputs(&o);
    assert!(!o.status.success());
    names_target(&err);
    assert!(err.contains("AcrPush"), "{err}");
    assert!(err.contains("401") || err.contains("403"), "{err}");

    // Expired access tokens: refused by the registry itself, one clear error.
    acr.grant(&["pull", "push"]);
    acr.access_lifetime(-120);
    let o = push(&entra_vars(&entra), &[], None);
    let (_, err) = outputs(&o);
    assert!(!o.status.success());
    names_target(&err);
    assert!(err.contains("HTTP 401") && err.contains("hint:"), "{err}");
    acr.access_lifetime(300);

    // A wrong admin password.
    let wrong = format!("{}x", acr.password);
    let o = push(
        &[],
        &["--username", &acr.user, "--password-stdin"],
        Some(&wrong),
    );
    let (_, err) = outputs(&o);
    assert!(!o.status.success());
    names_target(&err);
    assert!(
        err.contains("HTTP 401") && err.contains("check the credentials"),
        "{err}"
    );
    assert!(!err.contains(&wrong));

    // The right one works (the same command line, so the failures above were the point).
    let o = push(
        &[],
        &["--username", &acr.user, "--password-stdin"],
        Some(&acr.password),
    );
    assert!(o.status.success(), "{}", outputs(&o).1);

    // Registry down: one error naming it, with a hint.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = down.local_addr().unwrap().to_string();
    drop(down);
    let o = envbuild_in(t.path(), &[])
        .arg("push")
        .arg(format!("oci:{}", layout.display()))
        .arg(format!("{addr}/team/denied:v1"))
        .output()
        .unwrap();
    let (_, err) = outputs(&o);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("{addr}/team/denied: cannot connect")) && err.contains("hint:"),
        "{err}"
    );
}

/// A token the registry stops accepting before it expires (revoked): the first 401 is answered
/// with exactly one new token and the push goes on; a registry that refuses the new one too
/// gets one clear error, not a loop, and no manifest.
#[test]
fn a_token_refused_mid_push_is_renewed_once() {
    let entra = Entra::start();
    let acr = Acr::start(entra.verifier());
    let t = tempfile::tempdir().unwrap();
    let layout = tiny_layout(&t.path().join("img"), 3);
    let push = |proxy: &envbuild_e2e::FaultProxy, repo: &str| {
        envbuild_in(t.path(), &entra_vars(&entra))
            .arg("push")
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("{}/{repo}:v1", proxy.addr))
            .args(["--parallel", "1"])
            .output()
            .unwrap()
    };
    let tokens = || acr.access_tokens().len();

    // The third authenticated request (a blob's HEAD or upload) reaches the registry without
    // its token: a real 401 with the registry's challenge.
    let once = envbuild_e2e::FaultProxy::revoking(&acr.registry.addr, 2, 1);
    let o = push(&once, "team/renew");
    let (stdout, stderr) = outputs(&o);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(once.faults.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        tokens(),
        2,
        "the first token and one renewal: {:?}",
        acr.log()
    );
    assert_eq!(
        entra.requests(),
        1,
        "the ACR refresh token is reused, Entra not asked again"
    );
    let reference = last_line(&stdout);
    let inspect: Value = skopeo_inspect(
        &format!("{}/team/renew:v1", acr.registry.addr),
        &["--creds", &format!("{}:{}", acr.user, acr.password)],
    );
    assert_eq!(
        Some(inspect["Digest"].as_str().unwrap()),
        reference.split('@').nth(1)
    );

    // Every request from the second on refused: one renewal, then one clear error.
    let before = tokens();
    let always = envbuild_e2e::FaultProxy::revoking(&acr.registry.addr, 1, usize::MAX / 2);
    let o = push(&always, "team/refused");
    let (_, stderr) = outputs(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    // The push's `GET /v2/` and the four blobs' HEADs go out together, without a token: one
    // of them answers the challenge (token 1), the others retry with it. From then on each is
    // refused, and each renews at most once before the push ends with the error: at least one
    // renewal, at most one per request, never a loop.
    let renewed = tokens() - before - 1;
    assert!((1..=5).contains(&renewed), "{renewed}: {:?}", acr.log());
    assert!(
        stderr.contains(&format!("{}/team/refused", always.addr))
            && stderr.contains("HTTP 401")
            && stderr.contains("hint:"),
        "{stderr}"
    );
    assert!(
        !acr.registry
            .storage()
            .join("docker/registry/v2/repositories/team/refused/_manifests")
            .exists(),
        "no manifest may be written when blobs were refused"
    );
    for s in acr
        .access_tokens()
        .iter()
        .chain(acr.refresh_tokens().iter())
    {
        assert!(
            !stderr.contains(s.as_str()),
            "a token leaked into the error"
        );
    }
}

fn docker_config(t: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(t.join("docker/config.json")).unwrap()).unwrap()
}

fn with_stdin(mut c: Command, input: &str) -> Output {
    use std::io::Write;
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn entra_login_stores_the_acr_refresh_token_like_docker_and_push_and_skopeo_use_it() {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt;
    let entra = Entra::start();
    let acr = Acr::start(entra.verifier());
    let t = tempfile::tempdir().unwrap();
    let addr = acr.registry.addr.clone();
    std::fs::create_dir_all(t.path().join("docker")).unwrap();
    std::fs::write(
        t.path().join("docker/config.json"),
        r#"{"auths":{"other.example.io":{"auth":"b3RoZXI6c2VjcmV0"}},"psFormat":"table"}"#,
    )
    .unwrap();
    let mut vars = entra_vars(&entra);
    vars.retain(|(k, _)| *k != "ENVBUILD_REGISTRY_AUTH");
    let o = envbuild_in(t.path(), &vars)
        .args(["login", &addr, "--auth", "entra"])
        .output()
        .unwrap();
    let (stdout, stderr) = outputs(&o);
    assert!(o.status.success(), "login failed:\n{stderr}");
    assert_eq!(last_line(&stdout), "Login Succeeded");
    let c = docker_config(t.path());
    let entry = &c["auths"][&addr];
    let refresh = entry["identitytoken"].as_str().unwrap();
    assert!(acr.refresh_tokens().iter().any(|r| r == refresh));
    assert_eq!(
        entry["auth"],
        base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN_USER}:"))
    );
    // Everything else in the file is kept; only its owner can read it.
    assert_eq!(c["auths"]["other.example.io"]["auth"], "b3RoZXI6c2VjcmV0");
    assert_eq!(c["psFormat"], "table");
    let mode = std::fs::metadata(t.path().join("docker/config.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!stdout.contains(refresh) && !stderr.contains(refresh));

    // A push with no Azure configuration at all uses the stored token: no new exchange.
    let layout = tiny_layout(&t.path().join("img"), 1);
    let dest = format!("{addr}/team/login:v1");
    let o = envbuild_in(t.path(), &[])
        .arg("push")
        .arg(format!("oci:{}", layout.display()))
        .arg(&dest)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", outputs(&o).1);
    assert_eq!(acr.log().iter().filter(|l| *l == "exchange").count(), 1);
    // So does skopeo (containers/image reads identitytoken the way docker does).
    let inspect: Value = skopeo_inspect(
        &dest,
        &[
            "--authfile",
            &t.path().join("docker/config.json").display().to_string(),
        ],
    );
    assert_eq!(
        Some(inspect["Digest"].as_str().unwrap()),
        last_line(&outputs(&o).0).split('@').nth(1)
    );
}

/// A docker-credential-* helper that keeps one entry in $ENVTEST_STORE.
fn credential_helper(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("docker-credential-envtest");
    std::fs::write(
        &p,
        r#"#!/bin/sh
case "$1" in
get) read -r url
     if [ -f "$ENVTEST_STORE" ] && grep -q "\"ServerURL\":\"$url\"" "$ENVTEST_STORE"; then cat "$ENVTEST_STORE"
     else echo "credentials not found in native keychain"; exit 1; fi ;;
store) cat > "$ENVTEST_STORE" ;;
erase) rm -f "$ENVTEST_STORE" ;;
*) exit 2 ;;
esac
"#,
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn password_login_is_verified_first_and_credential_helpers_hold_the_secrets() {
    let entra = Entra::start();
    let acr = Acr::start(entra.verifier());
    let t = tempfile::tempdir().unwrap();
    let addr = acr.registry.addr.clone();
    let login = |vars: &[(&str, String)], args: &[&str], pw: &str| {
        let mut c = envbuild_in(t.path(), vars);
        c.arg("login").arg(&addr).args(args);
        with_stdin(c, pw)
    };
    // A wrong password: refused, nothing written.
    let wrong = format!("{}-wrong", acr.password);
    let o = login(&[], &["--username", &acr.user, "--password-stdin"], &wrong);
    let (_, err) = outputs(&o);
    assert!(!o.status.success());
    assert!(err.contains(&addr) && err.contains("HTTP 401"), "{err}");
    assert!(!err.contains(&wrong));
    assert!(!t.path().join("docker/config.json").exists());

    // With a credential helper configured for the registry, the secret goes to the helper.
    let bin = t.path().join("bin");
    credential_helper(&bin);
    std::fs::create_dir_all(t.path().join("docker")).unwrap();
    std::fs::write(
        t.path().join("docker/config.json"),
        serde_json::json!({"credHelpers": {&addr: "envtest"}}).to_string(),
    )
    .unwrap();
    let store = t.path().join("helper-store.json");
    let helper_env = vec![
        ("PATH", format!("{}:/usr/bin:/bin", bin.display())),
        ("ENVTEST_STORE", store.display().to_string()),
    ];
    let o = login(
        &helper_env,
        &["--username", &acr.user, "--password-stdin"],
        &acr.password,
    );
    assert!(o.status.success(), "{}", outputs(&o).1);
    let held: Value = serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    assert_eq!(
        (&held["ServerURL"], &held["Username"], &held["Secret"]),
        (
            &Value::from(addr.clone()),
            &Value::from(acr.user.clone()),
            &Value::from(acr.password.clone())
        )
    );
    let config = std::fs::read_to_string(t.path().join("docker/config.json")).unwrap();
    assert!(!config.contains(&acr.password), "{config}");
    assert_eq!(
        docker_config(t.path())["auths"][&addr],
        serde_json::json!({})
    );

    // A push reads the credentials back through the helper (`get`).
    let layout = tiny_layout(&t.path().join("img"), 1);
    let o = envbuild_in(t.path(), &helper_env)
        .arg("push")
        .arg(format!("oci:{}", layout.display()))
        .arg(format!("{addr}/team/helper:v1"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", outputs(&o).1);
    assert!(acr
        .log()
        .iter()
        .any(|l| l.starts_with("token (GET) repository:team/helper:")));

    // An Entra login through the helper stores the refresh token under the all-zero user.
    let mut vars = entra_vars(&entra);
    vars.extend(helper_env.clone());
    let o = login(&vars, &[], "");
    assert!(o.status.success(), "{}", outputs(&o).1);
    let held: Value = serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    assert_eq!(held["Username"], TOKEN_USER);
    assert!(acr
        .refresh_tokens()
        .iter()
        .any(|r| held["Secret"] == r.as_str()));
}

#[test]
fn a_second_repository_mounts_known_blobs_and_a_refused_mount_falls_back_to_upload() {
    let entra = Entra::start();
    let acr = Acr::start(entra.verifier());
    let t = tempfile::tempdir().unwrap();
    let layout = tiny_layout(&t.path().join("img"), 2);
    let addr = acr.registry.addr.clone();
    let admin = ["--username", &acr.user, "--password-stdin"];
    let push = |dest: &str| {
        let mut c = envbuild_in(t.path(), &[]);
        c.arg("push")
            .arg(format!("oci:{}", layout.display()))
            .arg(dest)
            .arg("--json")
            .args(admin);
        let o = with_stdin(c, &acr.password);
        let (stdout, stderr) = outputs(&o);
        assert!(o.status.success(), "push to {dest} failed:\n{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let first = push(&format!("{addr}/team/a:v1"));
    assert_eq!(
        (first["uploaded"].as_u64(), first["mounted"].as_u64()),
        (Some(3), Some(0)),
        "{first}"
    );
    // Same registry, another repository: every blob is mounted from team/a, none uploaded,
    // and the token asked for pull on team/a too.
    let second = push(&format!("{addr}/team/b:v1"));
    assert_eq!(
        (
            second["uploaded"].as_u64(),
            second["mounted"].as_u64(),
            second["bytes"].as_u64()
        ),
        (Some(0), Some(3), Some(0)),
        "{second}"
    );
    assert!(
        acr.log()
            .iter()
            .any(|l| l.contains("repository:team/b:pull,push")
                && l.contains("repository:team/a:pull")),
        "{:?}",
        acr.log()
    );
    let inspect: Value = skopeo_inspect(
        &format!("{addr}/team/b:v1"),
        &["--creds", &format!("{}:{}", acr.user, acr.password)],
    );
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(2));

    // The cache's push record is what offered team/a as the source: every blob, both repositories.
    let record = std::fs::read_to_string(
        t.path()
            .join("cache/pushed")
            .join(format!("{}.log", addr.replace(':', "_"))),
    )
    .unwrap();
    for repo in ["team/a", "team/b"] {
        assert_eq!(
            record
                .lines()
                .filter(|l| l.ends_with(&format!(" {repo}")))
                .count(),
            3,
            "{record}"
        );
    }
    // The registry no longer links the blobs to team/a and team/b (their layer links are gone):
    // each mount is refused (202) and the blobs go up again through the session it opened.
    let repos = acr
        .registry
        .storage()
        .join("docker/registry/v2/repositories/team");
    for r in ["a", "b"] {
        std::fs::remove_dir_all(repos.join(r).join("_layers")).unwrap();
    }
    let third = push(&format!("{addr}/team/c:v1"));
    assert_eq!(
        (third["uploaded"].as_u64(), third["mounted"].as_u64()),
        (Some(3), Some(0)),
        "{third}"
    );
}

#[test]
fn every_certificate_of_a_ca_bundle_is_trusted_not_only_the_first() {
    // A bundle whose first certificate is an unrelated CA and whose second is the one that
    // signed the server's: a reader that takes only the first cannot connect.
    let other = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    };
    let server =
        tls::serve_https(axum::Router::new().route("/", axum::routing::get(|| async { "ok" })));
    let t = tempfile::tempdir().unwrap();
    let get = |pem: &str| {
        let bundle = t.path().join("bundle.pem");
        std::fs::write(&bundle, pem).unwrap();
        envbuild::auth::entra::install_crypto_provider();
        let client = envbuild::http::blocking_client(Some(&bundle), None).unwrap();
        client.get(&server.url).send()
    };
    let both = format!("{other}{}", tls::ca().pem());
    let answer = get(&both).expect("the second certificate of the bundle is trusted");
    assert_eq!(answer.text().unwrap(), "ok");
    assert!(
        get(&other).is_err(),
        "TLS is verified: the unrelated CA alone is not enough"
    );
    // A file without certificates is refused by name, before any request.
    let empty = t.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = envbuild::http::blocking_client(Some(&empty), None).unwrap_err();
    assert!(e.to_string().contains("empty.pem"), "{e}");
}
