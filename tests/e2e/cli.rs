//! The command line itself: completion scripts that the shell parses, man pages, and exit
//! statuses as `--help` documents them.

use std::fs;
use std::process::Command;

use envbuild_e2e::{bins, json_shape, ok, run, Registry};

#[test]
fn completions_parse_man_pages_render_and_help_documents_exit_statuses() {
    let t = tempfile::tempdir().unwrap();
    let bash = t.path().join("envbuild.bash");
    fs::write(
        &bash,
        ok(Command::new(&bins().envbuild).args(["completions", "bash"])),
    )
    .unwrap();
    ok(Command::new("bash").arg("-n").arg(&bash));
    let script = fs::read_to_string(&bash).unwrap();
    assert!(
        script.contains("complete") && script.contains("push") && script.contains("--idle-timeout")
    );
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let s = ok(Command::new(&bins().envbuild).args(["completions", shell]));
        assert!(s.contains("push") && s.contains("inspect"), "{shell}: {s}");
    }
    let o = run(Command::new(&bins().envbuild).args(["completions", "tcsh"]));
    assert_eq!(o.status.code(), Some(2), "a usage error");

    let page = ok(Command::new(&bins().envbuild).arg("man"));
    assert!(
        page.contains(".TH envbuild 1") && page.contains("push"),
        "{page}"
    );
    let dir = t.path().join("man1");
    let listed = ok(Command::new(&bins().envbuild)
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

    let help = ok(Command::new(&bins().envbuild).arg("--help"));
    assert!(
        help.contains("Exit status: 0 success; 1 failure") && help.contains("130"),
        "{help}"
    );
    let o = run(Command::new(&bins().envbuild).args(["push"]));
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
    let o = run(Command::new(&bins().envbuild)
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
        let mut c = Command::new(&bins().envbuild);
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
        let o = run(Command::new(&bins().envbuild)
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
    insta::assert_snapshot!("build_json", json_shape(&first));
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
    let o = run(Command::new(&bins().envbuild).args(["inspect", "--json", &spec]));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    insta::assert_snapshot!("inspect_json", json_shape(&doc));
    assert_eq!(doc["digest"], first["digest"]);
    assert_eq!(doc["platform"]["os"], "linux");
    assert_eq!(doc["config"]["config"]["Entrypoint"][0], "/x");
    assert_eq!(doc["layers"][0]["digest"], first["layers"][0]["digest"]);

    // `-o json`, as az users type it, is --json.
    let o = run(Command::new(&bins().envbuild).args(["diff", "-o", "json", &spec, &spec]));
    assert!(o.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    insta::assert_snapshot!("diff_json", json_shape(&doc));
    assert_eq!(doc["identical"], true);
    assert_eq!(doc["differences"].as_array().unwrap().len(), 0);
}

/// A scratch environment with one layer of `mb` MB (zeros: compressed fast, but enough bytes
/// for the bar to move), written to `dir`.
fn sized_env(dir: &std::path::Path, mb: usize) -> std::path::PathBuf {
    fs::write(dir.join("x"), "#!/bin/sh\necho hi\n").unwrap();
    fs::write(dir.join("big"), vec![0u8; mb << 20]).unwrap();
    let env = dir.join("p.toml");
    fs::write(
        &env,
        "name = \"p\"\n[base]\nscratch = true\n\n[[layer]]\nname = \"app\"\n[[layer.files]]\nsrc = \"x\"\ndest = \"/x\"\nmode = 0o755\n[[layer.files]]\nsrc = \"big\"\ndest = \"/big\"\n\n[config]\nentrypoint = [\"/x\"]\n",
    )
    .unwrap();
    env
}

/// `cmd` (a shell line) on a pseudo-terminal, through util-linux `script`: what a user at a
/// terminal sees, stdout and stderr together.
fn on_a_terminal(cmd: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut c = Command::new("script");
    c.args(["-qec", cmd, "/dev/null"])
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = run(&mut c);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// Whether `s` holds an SGR sequence (`ESC [ digits;… m`: colour, bold), not counting the
/// cursor moves (`ESC [ 1 A`, `ESC [ 2 K`) that bars make.
fn has_colour(s: &str) -> bool {
    s.split("\x1b[").skip(1).any(|rest| {
        let params = rest.find(|c: char| !(c.is_ascii_digit() || c == ';'));
        params.is_some_and(|n| n > 0 && rest[n..].starts_with('m'))
    })
}

#[test]
fn bars_and_colour_on_a_terminal_plain_lines_in_a_pipe_nothing_with_quiet() {
    let t = tempfile::tempdir().unwrap();
    let env = sized_env(t.path(), 24);
    let reg = Registry::start(None);
    let bin = bins().envbuild.display().to_string();
    let line = |cache: &str, more: &str| {
        format!(
            "{bin} build {} --cache {c} --skip-link-check -o oci:{}/out-{cache} && {bin} push oci:{}/out-{cache} {}/p/{cache}:v1 --cache {c} {more}",
            env.display(),
            t.path().display(),
            t.path().display(),
            reg.addr,
            c = t.path().join(cache).display(),
        )
    };

    // A terminal: bars for the layer and the upload, coloured; the record lines stay.
    let (ok_, seen) = on_a_terminal(&line("tty", ""), &[]);
    assert!(ok_, "{seen}");
    assert!(
        seen.contains("layer app") && seen.contains("MiB"),
        "no bar:\n{seen}"
    );
    assert!(seen.contains("\x1b[2K"), "bars redraw their line:\n{seen}");
    assert!(seen.contains("push sha256:"), "no upload bar:\n{seen}");
    assert!(
        seen.contains("pushed  sha256:"),
        "the record of the push stays:\n{seen}"
    );
    assert!(has_colour(&seen), "colour on a terminal:\n{seen}");

    // NO_COLOR: the bars still move, without colour.
    let (ok_, seen) = on_a_terminal(&line("nocolor", ""), &[("NO_COLOR", "1")]);
    assert!(ok_, "{seen}");
    assert!(seen.contains("\x1b[2K"), "bars without colour:\n{seen}");
    assert!(!has_colour(&seen), "NO_COLOR leaves colour out:\n{seen}");
    // --color always wins over NO_COLOR, as no-color.org asks of flags.
    let (_, seen) = on_a_terminal(
        &format!("{bin} build /nonexistent.toml --color always"),
        &[("NO_COLOR", "1")],
    );
    assert!(
        seen.contains("\x1b[31m") || seen.contains("\x1b[1m"),
        "{seen}"
    );

    // A pipe: no escape at all, one line per finished transfer; -v adds each request without
    // its query (an upload's `_state`).
    let o = run(Command::new("sh").args(["-c", &line("pipe", "-v")]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains('\x1b'), "escapes in a pipe:\n{err}");
    assert!(err.contains("layer app          built"), "{err}");
    assert!(err.contains("pushed  sha256:"), "{err}");
    assert!(
        err.contains(&format!(
            "POST http://{}/v2/p/pipe/blobs/uploads/ -> 202",
            reg.addr
        )),
        "-v shows the requests:\n{err}"
    );
    assert!(
        err.contains("PUT http://") && err.contains("-> 201"),
        "{err}"
    );
    assert!(!err.contains("_state="), "a query in the log:\n{err}");

    // -q: the result only.
    let o = run(Command::new("sh").args(["-c", &line("quiet", "-q")]));
    assert!(o.status.success());
    let o2 = run(Command::new(&bin)
        .args(["build", "-q", "--skip-link-check", "--cache"])
        .arg(t.path().join("quiet2"))
        .arg(&env));
    assert!(o2.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o2.stderr),
        "",
        "-q prints nothing on stderr"
    );
    assert!(String::from_utf8_lossy(&o2.stdout)
        .trim()
        .starts_with("sha256:"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("pushed  sha256:"), "-q on push: {err}");
}

#[test]
fn cache_prune_removes_by_age_and_size_and_the_next_build_rebuilds() {
    let t = tempfile::tempdir().unwrap();
    let env = sized_env(t.path(), 1);
    let cache = t.path().join("cache");
    let build = || {
        let o = run(Command::new(&bins().envbuild)
            .args(["build", "--json", "--skip-link-check", "--cache"])
            .arg(&cache)
            .arg(&env));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let prune = |args: &[&str]| {
        let o = run(Command::new(&bins().envbuild)
            .args(["cache", "prune", "--json", "--cache"])
            .arg(&cache)
            .args(args));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let first = build();
    // Just used: the default (unused for 14 days) keeps everything.
    let kept = prune(&[]);
    insta::assert_snapshot!("cache_prune_json", json_shape(&kept));
    assert_eq!(kept["removed_blobs"], 0, "{kept}");
    assert!(kept["kept_blobs"].as_u64().unwrap() >= 3, "{kept}");
    let dry = prune(&["--keep-storage", "0", "--dry-run"]);
    assert_eq!(dry["removed_blobs"], kept["kept_blobs"], "{dry}");
    assert_eq!(
        build()["layers"][0]["cached"],
        true,
        "a dry run removed nothing"
    );
    let all = prune(&["--all"]);
    assert_eq!(all["kept_blobs"], 0, "{all}");
    assert_eq!(all["removed_layer_entries"], 1, "{all}");
    let again = build();
    assert_eq!(
        again["layers"][0]["cached"], false,
        "rebuilt after the prune"
    );
    assert_eq!(again["digest"], first["digest"], "the same image");
    let o = run(Command::new(&bins().envbuild)
        .args(["cache", "prune", "--older-than", "3w", "--cache"])
        .arg(&cache));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the unit is d, h, m or s"));
}

#[test]
fn an_sbom_says_what_it_cannot_know_a_base_without_dpkg_and_a_corrupt_metadata() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    // A base with files but no dpkg status database.
    let base_env = sized_env(t.path(), 1);
    let base = t.path().join("base");
    let o = run(Command::new(&bins().envbuild)
        .args(["build", "--skip-link-check", "--cache"])
        .arg(&cache)
        .arg(&base_env)
        .arg(format!("--output=oci:{}", base.display())));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A layer from a site-packages whose one distribution has a broken METADATA.
    let site = t.path().join("site");
    fs::create_dir_all(site.join("odd-2.0.dist-info")).unwrap();
    fs::create_dir_all(site.join("odd")).unwrap();
    fs::write(site.join("odd/__init__.py"), "").unwrap();
    fs::write(
        site.join("odd-2.0.dist-info/METADATA"),
        b"\xff\xfe not text",
    )
    .unwrap();
    fs::write(site.join("odd-2.0.dist-info/RECORD"), "odd/__init__.py,,\n").unwrap();
    let env = t.path().join("on-base.toml");
    fs::write(
        &env,
        format!(
            "name = \"on-base\"\n[base]\noci = \"{}\"\n\n[[layer]]\nname = \"py\"\n[[layer.files]]\nsrc = \"site/odd\"\ndest = \"/site/odd\"\n",
            base.display()
        ),
    )
    .unwrap();
    let out = t.path().join("out");
    let o = run(Command::new(&bins().envbuild)
        .args(["build", "--skip-link-check", "--cache"])
        .arg(&cache)
        .arg(&env)
        .arg(format!("--output=oci:{}", out.display())));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: the base")
            && err.contains("has no dpkg status")
            && err.contains("unknown"),
        "{err}"
    );
    assert!(
        err.contains("odd-2.0.dist-info/METADATA: is not UTF-8"),
        "{err}"
    );
    let doc: serde_json::Value = serde_json::from_str(&ok(
        Command::new(&bins().envbuild).args(["sbom", &format!("oci:{}", out.display())])
    ))
    .unwrap();
    assert!(
        doc["creationInfo"]["comment"]
            .as_str()
            .unwrap()
            .contains("Debian packages are unknown, not absent"),
        "{doc}"
    );
    let odd = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "odd")
        .expect("the distribution is still listed");
    assert_eq!(
        (&odd["versionInfo"], &odd["licenseDeclared"]),
        (&serde_json::json!("2.0"), &serde_json::json!("NOASSERTION"))
    );
    // CycloneDX 1.6 on request: the image as the metadata component, the distribution with
    // its purl and the layer that holds it, the same bytes from a second build.
    let cdx = |name: &str| {
        let p = t.path().join(name);
        let o = run(Command::new(&bins().envbuild)
            .args([
                "build",
                "-q",
                "--skip-link-check",
                "--sbom-format",
                "cyclonedx",
                "--cache",
            ])
            .arg(&cache)
            .arg(&env)
            .arg("--sbom")
            .arg(&p));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            fs::read(&p).unwrap(),
        )
    };
    let (digest, bytes) = cdx("a.cdx.json");
    assert_eq!(cdx("b.cdx.json").1, bytes, "the same BOM bytes");
    let bom: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (&bom["bomFormat"], &bom["specVersion"]),
        (&serde_json::json!("CycloneDX"), &serde_json::json!("1.6"))
    );
    assert_eq!(bom["metadata"]["component"]["version"], digest.as_str());
    assert_eq!(bom["metadata"]["component"]["type"], "container");
    let odd = bom["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["purl"] == "pkg:pypi/odd@2.0")
        .expect("the distribution as a component");
    assert_eq!(odd["properties"][0]["value"], "py");
    // A layout that is not there: one clear error, exit 1.
    let o = run(Command::new(&bins().envbuild)
        .args(["sbom", &format!("oci:{}", t.path().join("nope").display())]));
    assert_eq!(o.status.code(), Some(1));
}
