//! Authentication end to end: the Entra ID credential chain against the Entra stand-in (HTTPS
//! with the test CA), managed identity and a fake `az`.

use std::path::Path;
use std::process::{Command, Output};

use envbuild::credential::{ACR_SCOPE, ARM_SCOPE};
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
