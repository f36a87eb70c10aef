//! The command line itself: completion scripts that the shell parses, man pages, and exit
//! statuses as `--help` documents them.

use std::fs;
use std::process::Command;

use envbuild_e2e::{envbuild_debug, ok, run};

#[test]
fn completions_parse_man_pages_render_and_help_documents_exit_statuses() {
    let t = tempfile::tempdir().unwrap();
    let bash = t.path().join("envbuild.bash");
    fs::write(
        &bash,
        ok(Command::new(envbuild_debug()).args(["completions", "bash"])),
    )
    .unwrap();
    ok(Command::new("bash").arg("-n").arg(&bash));
    let script = fs::read_to_string(&bash).unwrap();
    assert!(
        script.contains("complete") && script.contains("push") && script.contains("--idle-timeout")
    );
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let s = ok(Command::new(envbuild_debug()).args(["completions", shell]));
        assert!(s.contains("push") && s.contains("inspect"), "{shell}: {s}");
    }
    let o = run(Command::new(envbuild_debug()).args(["completions", "tcsh"]));
    assert_eq!(o.status.code(), Some(2), "a usage error");

    let page = ok(Command::new(envbuild_debug()).arg("man"));
    assert!(
        page.contains(".TH envbuild 1") && page.contains("push"),
        "{page}"
    );
    let dir = t.path().join("man1");
    let listed = ok(Command::new(envbuild_debug())
        .args(["man", "--dir"])
        .arg(&dir));
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.contains(&"envbuild.1".to_owned()) && names.contains(&"envbuild-push.1".to_owned()),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".1") && !n.starts_with('.')),
        "{names:?}"
    );
    assert_eq!(listed.lines().count(), names.len());
    let push = fs::read_to_string(dir.join("envbuild-push.1")).unwrap();
    assert!(
        push.contains(".TH envbuild-push 1") && push.contains("password\\-stdin"),
        "{push}"
    );

    let help = ok(Command::new(envbuild_debug()).arg("--help"));
    assert!(
        help.contains("Exit status: 0 success; 1 failure") && help.contains("130"),
        "{help}"
    );
    let o = run(Command::new(envbuild_debug()).args(["push"]));
    assert_eq!(
        o.status.code(),
        Some(2),
        "missing arguments are a usage error"
    );
}

#[test]
fn errors_about_broken_files_print_no_raw_bytes() {
    let t = tempfile::tempdir().unwrap();
    let junk = t.path().join("junk.tar");
    // Bytes a tar reader quotes back in its errors (a header of binary garbage).
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 131 % 256) as u8).collect();
    fs::write(&junk, &bytes).unwrap();
    let o = run(Command::new(envbuild_debug())
        .arg("inspect")
        .arg(format!("docker-archive:{}", junk.display())));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("junk.tar") && e.contains("not a tar archive"),
        "{e}"
    );
    let text = String::from_utf8(o.stderr.clone()).expect("stderr is UTF-8 text");
    assert!(
        text.chars().all(|c| c == '\n' || !c.is_control()),
        "raw control bytes on stderr: {text:?}"
    );
}

#[test]
fn doctor_reports_this_machine_and_names_the_fix_without_an_engine() {
    let t = tempfile::tempdir().unwrap();
    fs::write(
        t.path().join("config.json"),
        // "ml-user:s3cret-pa55" in base64; and a helper for another registry.
        r#"{"auths":{"reg.example.com":{"auth":"bWwtdXNlcjpzM2NyZXQtcGE1NQ=="}},"credHelpers":{"myacr.azurecr.io":"acr-env"}}"#,
    )
    .unwrap();
    let doctor = |docker_host: Option<&str>, json: bool| {
        let mut c = Command::new(envbuild_debug());
        c.arg("doctor")
            .args(["--cache"])
            .arg(t.path().join("cache"))
            .args(["--venv"])
            .arg(envbuild_e2e::root().join(".venv"))
            .env("DOCKER_CONFIG", t.path())
            .env(
                "AZURE_SUBSCRIPTION_ID",
                "00000000-0000-0000-0000-000000000001",
            )
            .env("AZURE_RESOURCE_GROUP", "rg1")
            .env("AZUREML_WORKSPACE_NAME", "ws1")
            .env("ENVBUILD_REGISTRY_PASSWORD", "env-s3cret");
        if json {
            c.arg("--json");
        }
        match docker_host {
            Some(h) => c.env("DOCKER_HOST", h),
            None => c.env_remove("DOCKER_HOST"),
        };
        run(&mut c)
    };
    let o = doctor(None, false);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "ok    engine                Docker ",
        "nvidia runtime",
        "gpus",
        "ok    libtorch              torch 2.11.0",
        "reg.example.com (auths: user and password)",
        "myacr.azurecr.io (credHelpers: docker-credential-acr-env)",
        "workspace ws1 (resource group rg1",
        "cache",
    ] {
        assert!(out.contains(want), "`{want}` not in:\n{out}");
    }
    assert!(!out.contains("s3cret"), "a secret in the report:\n{out}");

    let o = doctor(Some("unix:///nonexistent/docker.sock"), true);
    assert_eq!(o.status.code(), Some(1), "a failed check fails the command");
    let checks: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let engine = &checks[0];
    assert_eq!(engine["name"], "engine");
    assert_eq!(engine["status"], "fail");
    assert!(
        engine["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/docker.sock"),
        "{engine}"
    );
    assert!(
        engine["fix"].as_str().unwrap().contains("DOCKER_HOST"),
        "{engine}"
    );
    assert!(checks
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["name"].is_string() && c["detail"].is_string()));
}

#[test]
fn build_inspect_and_diff_give_one_json_document_each() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("x"), "#!/bin/sh\necho hi\n").unwrap();
    let env = t.path().join("j.toml");
    fs::write(
        &env,
        "name = \"j\"\n[base]\nscratch = true\n\n[[layer]]\nname = \"app\"\n[[layer.files]]\nsrc = \"x\"\ndest = \"/x\"\nmode = 0o755\n\n[config]\nentrypoint = [\"/x\"]\n",
    )
    .unwrap();
    let layout = t.path().join("out");
    let build = || {
        let o = run(Command::new(envbuild_debug())
            .arg("build")
            .arg(&env)
            .arg("--cache")
            .arg(t.path().join("cache"))
            .args(["--skip-link-check", "--json", "--output"])
            .arg(format!("oci:{}", layout.display())));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let doc: serde_json::Value =
            serde_json::from_slice(&o.stdout).expect("stdout is one JSON document");
        doc
    };
    let first = build();
    assert!(first["digest"].as_str().unwrap().starts_with("sha256:"));
    let layers = first["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["from"], "app");
    assert_eq!(layers[0]["cached"], false);
    assert_eq!(first["outputs"][0], format!("oci:{}", layout.display()));
    assert_eq!(first["loaded"], false);
    let second = build();
    assert_eq!(
        second["layers"][0]["cached"], true,
        "the rebuild comes from the cache"
    );
    assert_eq!(second["digest"], first["digest"]);

    let spec = format!("oci:{}", layout.display());
    let o = run(Command::new(envbuild_debug()).args(["inspect", "--json", &spec]));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["digest"], first["digest"]);
    assert_eq!(doc["platform"]["os"], "linux");
    assert_eq!(doc["config"]["config"]["Entrypoint"][0], "/x");
    assert_eq!(doc["layers"][0]["digest"], first["layers"][0]["digest"]);

    let o = run(Command::new(envbuild_debug()).args(["diff", "--json", &spec, &spec]));
    assert!(o.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["identical"], true);
    assert_eq!(doc["differences"].as_array().unwrap().len(), 0);
}
