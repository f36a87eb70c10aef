//! `envbuild push` and registry base images against a real registry on loopback.

use std::fs;
use std::process::Command;

use envbuild_e2e::{bins, last_line, ok, run, skopeo_inspect, Registry};
use serde_json::Value;

use super::build::{build, cached_manifest, checkout, envbuild, layout_blobs, manifest, REPRO_ENV};

fn push(
    env: &std::path::Path,
    dest: &str,
    cache: &std::path::Path,
    extra: &[&str],
) -> (Value, String, String) {
    let mut c = envbuild();
    c.arg("push")
        .arg(env)
        .arg(dest)
        .arg("--cache")
        .arg(cache)
        .arg("--json")
        .args(extra);
    let o = run(&mut c);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "push failed:\n{stderr}");
    // One JSON document on stdout, nothing else.
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    let reference = summary["reference"].as_str().unwrap().to_owned();
    (summary, reference, stderr)
}

#[test]
fn push_is_incremental_chunked_and_readable_by_skopeo_and_docker() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let env = checkout(&t.path().join("c"), false);
    let cache = t.path().join("cache");
    let digest = build(&env, &cache, &[]);
    let dest = format!("{}/envbuild/repro:v1", reg.addr);

    // 1 MiB chunks: the 5.9 MB base layer goes up in PATCHes.
    let (s, reference, _) = push(&env, &dest, &cache, &["--chunk-mib", "1"]);
    insta::assert_snapshot!("push_json", envbuild_e2e::json_shape(&s));
    assert_eq!(reference, format!("{}/envbuild/repro@{digest}", reg.addr));
    assert_eq!(
        (s["uploaded"].as_u64(), s["skipped"].as_u64()),
        (Some(4), Some(0)),
        "{s}"
    );
    let inspect: Value = skopeo_inspect(&dest, &[]);
    assert_eq!(inspect["Digest"], digest.as_str());
    // skopeo copies it back out byte for byte: same digest from the registry as from the build.
    let back = t.path().join("back");
    ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{dest}"),
        &format!("oci:{}:x", back.display()),
    ]));
    assert_eq!(
        manifest(&back)["layers"],
        cached_manifest(&cache, &digest)["layers"]
    );

    // Same image again: nothing travels but the manifest.
    let (s, _, stderr) = push(&env, &dest, &cache, &[]);
    assert_eq!(
        (s["uploaded"].as_u64(), s["skipped"].as_u64()),
        (Some(0), Some(4)),
        "{s}\n{stderr}"
    );

    // A trainer change: only the trainer layer and the config travel.
    let trainer = t.path().join("c/bin/trainer");
    let mut bytes = fs::read(&trainer).unwrap();
    bytes.push(1);
    fs::write(&trainer, bytes).unwrap();
    let (s, reference2, _) = push(&env, &dest, &cache, &[]);
    assert_eq!(
        (s["uploaded"].as_u64(), s["skipped"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    assert_ne!(reference2, reference);

    // The Docker engine pulls it by digest from the registry and runs it.
    let _ = run(Command::new("docker").args(["rmi", "-f", &reference2]));
    ok(Command::new("docker").args(["pull", "-q", &reference2]));
    let out = ok(Command::new("docker").args(["run", "--rm", &reference2, "-c", "echo ran"]));
    assert_eq!(out, "ran\n");
    let _ = run(Command::new("docker").args(["rmi", "-f", &reference2]));
}

#[test]
fn base_image_pulled_from_a_registry_by_digest() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let base = envbuild_e2e::base_layout();
    let mut c = Command::new(&bins().envbuild);
    c.args([
        "push",
        &format!("oci:{}", base.display()),
        &format!("{}/envbuild/base:1", reg.addr),
    ]);
    let base_ref = last_line(&ok(&mut c));
    let dir = t.path().join("c");
    checkout(&dir, false);
    let env = dir.join("pulled.toml");
    fs::write(
        &env,
        REPRO_ENV.replace(
            "oci = \"${ENVBUILD_BASE}\"",
            &format!("image = \"{base_ref}\""),
        ),
    )
    .unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    build(
        &dir.join("env.toml"),
        &t.path().join("cache"),
        &["--output", &format!("oci:{}", a.display())],
    );
    build(
        &env,
        &t.path().join("cache2"),
        &["--output", &format!("oci:{}", b.display())],
    );
    // The same layers, base reused byte for byte; only the base name annotation differs.
    assert_eq!(manifest(&a)["layers"], manifest(&b)["layers"]);
    assert_eq!(
        manifest(&b)["annotations"]["org.opencontainers.image.base.name"],
        base_ref.as_str()
    );
    // A digest the registry does not have is a clear error.
    let missing = format!("{}/envbuild/base@sha256:{}", reg.addr, "1".repeat(64));
    fs::write(
        &env,
        REPRO_ENV.replace(
            "oci = \"${ENVBUILD_BASE}\"",
            &format!("image = \"{missing}\""),
        ),
    )
    .unwrap();
    let mut c = envbuild();
    c.arg("build")
        .arg(&env)
        .arg("--cache")
        .arg(t.path().join("cache3"));
    let o = run(&mut c);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}/envbuild/base", reg.addr)) && stderr.contains("HTTP 404"),
        "{stderr}"
    );
}

#[test]
fn basic_auth_wrong_password_is_clear_and_secrets_never_print() {
    let reg = Registry::start(Some(("ml-user", "s3cret-pa55")));
    let t = tempfile::tempdir().unwrap();
    let env = checkout(&t.path().join("c"), false);
    let cache = t.path().join("cache");
    let dest = format!("{}/team/repro:v1", reg.addr);
    let attempt = |user: Option<&str>, password: &str| {
        let mut c = envbuild();
        c.arg("push")
            .arg(&env)
            .arg(&dest)
            .arg("--cache")
            .arg(&cache)
            .env("ENVBUILD_REGISTRY_PASSWORD", password)
            .env("DOCKER_CONFIG", t.path());
        if let Some(u) = user {
            c.args(["--username", u]);
        }
        run(&mut c)
    };
    for (user, password) in [(None, ""), (Some("ml-user"), "wrong-password-123")] {
        let o = attempt(user, password);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("{}/team/repro", reg.addr)) && stderr.contains("401"),
            "{stderr}"
        );
        assert!(stderr.contains("hint:"), "{stderr}");
        assert!(
            password.is_empty() || !stderr.contains(password),
            "password printed: {stderr}"
        );
    }
    let o = attempt(Some("ml-user"), "s3cret-pa55");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stderr}");
    assert!(!stdout.contains("s3cret-pa55") && !stderr.contains("s3cret-pa55"));
    // Nothing pushed carries the password.
    for e in fs::read_dir(cache.join("blobs/sha256")).unwrap() {
        let bytes = fs::read(e.unwrap().path()).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"s3cret-pa55"));
    }
}

#[test]
fn push_through_faults_completes_and_endless_faults_leave_no_manifest() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let env = checkout(&t.path().join("c"), false);
    let cache = t.path().join("cache");
    let digest = build(&env, &cache, &[]);

    // Every second request fails in one of six ways; 1 MiB chunks give many PATCHes to hit; one
    // transfer at a time keeps the order of requests, and so the test, deterministic: each
    // failed attempt's retry gets a clean slot. (With the default 4 transfers, their requests
    // interleave and one HEAD can draw five faulted slots in a row, which is a push that fails
    // as it should after five attempts, and a test that fails by chance.)
    let proxy = envbuild_e2e::FaultProxy::start(&reg.addr, false);
    let dest = format!("{}/faulty/repro:v1", proxy.addr);
    let (s, reference, stderr) = push(
        &env,
        &dest,
        &cache,
        &["--chunk-mib", "1", "--parallel", "1"],
    );
    assert!(
        proxy.faults.load(std::sync::atomic::Ordering::SeqCst) >= 6,
        "too few faults injected"
    );
    assert_eq!(
        reference,
        format!("{}/faulty/repro@{digest}", proxy.addr),
        "{s}\n{stderr}"
    );
    // The registry itself (not through the proxy) holds exactly what a clean push leaves.
    let back = t.path().join("back");
    ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{}/faulty/repro:v1", reg.addr),
        &format!("oci:{}:x", back.display()),
    ]));
    let m = cached_manifest(&cache, &digest);
    assert_eq!(manifest(&back)["layers"], m["layers"]);
    assert_eq!(manifest(&back)["config"], m["config"]);

    // Faults that never stop: a clear error after bounded retries, and no manifest.
    let endless = envbuild_e2e::FaultProxy::start(&reg.addr, true);
    let mut c = envbuild();
    c.arg("push")
        .arg(&env)
        .arg(format!("{}/never/repro:v1", endless.addr))
        .arg("--cache")
        .arg(&cache);
    let started = std::time::Instant::now();
    let o = run(&mut c);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}/never/repro", endless.addr)),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "retries are bounded"
    );
    let o = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/never/repro:v1", reg.addr),
    ]));
    assert!(
        !o.status.success(),
        "a manifest was pushed although its blobs failed"
    );
}

/// A push killed part-way, run again, sends only what had not arrived. (Whole blobs: an upload
/// session is not carried across processes, as with skopeo and crane.)
#[test]
fn a_killed_push_run_again_sends_only_what_is_missing() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let env = checkout(&t.path().join("c"), false);
    let cache = t.path().join("cache");
    let digest = build(&env, &cache, &[]);

    // One blob at a time: the first two uploads pass, the third hangs in the proxy, and the
    // push is killed (SIGKILL) while it waits.
    let proxy = envbuild_e2e::FaultProxy::hanging_at(&reg.addr, 2);
    let mut child = envbuild()
        .arg("push")
        .arg(&env)
        .arg(format!("{}/envbuild/killed:v1", proxy.addr))
        .arg("--cache")
        .arg(&cache)
        .args(["--parallel", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let waited = std::time::Instant::now();
    while proxy.faults.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(120),
            "the third upload never came"
        );
        assert!(child.try_wait().unwrap().is_none(), "push ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let dest = format!("{}/envbuild/killed:v1", reg.addr);
    let (s, reference, _) = push(&env, &dest, &cache, &[]);
    assert_eq!(
        (s["uploaded"].as_u64(), s["skipped"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    assert_eq!(reference, format!("{}/envbuild/killed@{digest}", reg.addr));
    let inspect: Value = skopeo_inspect(&dest, &[]);
    assert_eq!(inspect["Digest"], digest.as_str());
}

/// `skopeo inspect --raw` of `reference` in a loopback registry: the manifest as stored.
fn raw(reference: &str) -> Value {
    let out = ok(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}")));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn push_attaches_sbom_and_provenance_through_the_tag_schema_or_the_referrers_api() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let env = checkout(&t.path().join("c"), false);
    let cache = t.path().join("cache");
    let layout = t.path().join("oci");
    build(
        &env,
        &cache,
        &["--output", &format!("oci:{}", layout.display())],
    );
    let source = std::path::PathBuf::from(format!("oci:{}", layout.display()));
    let local =
        ok(Command::new(&bins().envbuild).args(["sbom", &format!("oci:{}", layout.display())]));

    // distribution 2.8 has no referrers API: the artifacts go into the index at the
    // `sha256-<hex>` tag, where skopeo — another client — reads them.
    let dest = format!("{}/envbuild/sbom:v1", reg.addr);
    let (s, reference, _) = push(&source, &dest, &cache, &[]);
    let image = reference.rsplit_once('@').unwrap().1.to_owned();
    let listed: Vec<(&str, &str)> = s["referrers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["artifact_type"].as_str().unwrap(),
                r["listed"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("application/spdx+json", "tag_schema"),
            ("application/vnd.in-toto+json", "tag_schema")
        ],
        "{s}"
    );
    let index = raw(&format!(
        "{}/envbuild/sbom:sha256-{}",
        reg.addr,
        image.trim_start_matches("sha256:")
    ));
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    let spdx = entries
        .iter()
        .find(|m| m["artifactType"] == "application/spdx+json")
        .expect("the SBOM in the referrers index");
    let artifact = raw(&format!(
        "{}/envbuild/sbom@{}",
        reg.addr,
        spdx["digest"].as_str().unwrap()
    ));
    assert_eq!(
        artifact["subject"]["digest"],
        image.as_str(),
        "the SBOM's subject is the image"
    );
    let o = run(Command::new(&bins().envbuild).args(["sbom", &dest]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        local,
        "the SBOM read back is the built one"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("referrers tag schema"));
    // Pushing again changes nothing: the index keeps two entries.
    push(&source, &dest, &cache, &[]);
    let again = raw(&format!(
        "{}/envbuild/sbom:sha256-{}",
        reg.addr,
        image.trim_start_matches("sha256:")
    ));
    assert_eq!(again["manifests"].as_array().unwrap().len(), 2);

    // A registry with the referrers API (as ACR): it answers OCI-Subject, so no tag is made,
    // and `envbuild sbom` lists through the API.
    let api = envbuild_e2e::ReferrersRegistry::start(&reg.addr);
    let dest = format!("{}/envbuild/api:v1", api.addr);
    let (s, _, _) = push(&source, &dest, &cache, &[]);
    assert!(
        s["referrers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["listed"] == "referrers_api"),
        "{s}"
    );
    assert_eq!(api.subject_puts(), 2);
    let tags: Value = serde_json::from_str(&ok(Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{}/envbuild/api", api.addr))))
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]), "no referrers tag");
    let o = run(Command::new(&bins().envbuild)
        .args(["sbom", &format!("{}/envbuild/api@{image}", api.addr)]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), local);
    assert!(String::from_utf8_lossy(&o.stderr).contains("referrers API"));
    assert!(api.referrers_requests() >= 1);
    let prov: Value = serde_json::from_str(&ok(Command::new(&bins().envbuild).args([
        "sbom",
        "--provenance",
        &dest,
    ])))
    .unwrap();
    assert_eq!(prov["predicateType"], "https://slsa.dev/provenance/v1");
}

#[test]
fn pull_writes_the_same_layout_the_build_wrote_and_fetches_nothing_twice() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let env = checkout(&t.path().join("c"), false);
    let built = t.path().join("built");
    build(
        &env,
        &t.path().join("cache"),
        &["--output", &format!("oci:{}", built.display())],
    );
    let dest = format!("{}/envbuild/pull:v1", reg.addr);
    let (_, reference, _) = push(
        &std::path::PathBuf::from(format!("oci:{}", built.display())),
        &dest,
        &t.path().join("cache"),
        &[],
    );
    let pulled = t.path().join("pulled");
    let cache = t.path().join("pull-cache");
    let pull = |extra: &[&str]| -> Value {
        let o = run(Command::new(&bins().envbuild)
            .args(["pull", &dest, "--json", "--cache"])
            .arg(&cache)
            .args(extra));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("one JSON document")
    };
    let first = pull(&["--output", &format!("oci:{}", pulled.display())]);
    insta::assert_snapshot!("pull_json", envbuild_e2e::json_shape(&first));
    assert_eq!(first["reference"], reference.as_str());
    assert_eq!(
        first["downloaded"], first["bytes"],
        "a cold cache fetches every layer"
    );
    assert_eq!(
        first["referrers"].as_array().unwrap().len(),
        2,
        "SBOM and provenance came along"
    );
    // The layout holds the very blobs the build wrote (image, SBOM, provenance), and other
    // tools read it.
    let blobs = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(blobs(&pulled), blobs(&built));
    let inspect: Value = serde_json::from_str(&ok(
        Command::new("skopeo").args(["inspect", &format!("oci:{}", pulled.display())])
    ))
    .unwrap();
    assert_eq!(
        Some(inspect["Digest"].as_str().unwrap()),
        reference.rsplit_once('@').map(|x| x.1)
    );
    assert_eq!(
        ok(Command::new(&bins().envbuild).args(["sbom", &format!("oci:{}", pulled.display())])),
        ok(Command::new(&bins().envbuild).args(["sbom", &format!("oci:{}", built.display())]))
    );
    let again = pull(&[]);
    assert_eq!(
        again["downloaded"], 0,
        "everything was in the cache: {again}"
    );
    // Bad input: one clear error each.
    let o = run(Command::new(&bins().envbuild).args(["pull", &dest, "--output", "dir:x"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not oci:DIR"));
    let o = run(Command::new(&bins().envbuild)
        .args(["pull", &format!("{}/envbuild/none:v1", reg.addr), "--cache"])
        .arg(&cache));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("envbuild/none"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn push_and_pull_through_a_wan_shaped_link_move_the_same_bytes() {
    // 100 ms round trips and 20 MB/s per connection: every request pays the delay, every
    // connection the cap, and push and pull still carry exactly the image the build wrote.
    let reg = Registry::start(None);
    let rtt = std::time::Duration::from_millis(100);
    let wan = envbuild_e2e::ShapingProxy::start(
        &reg.addr,
        envbuild_e2e::Shaping {
            rtt,
            rate: Some(20_000_000),
        },
    );
    let t = tempfile::tempdir().unwrap();
    let env = checkout(&t.path().join("c"), false);
    let built = t.path().join("built");
    let cache = t.path().join("cache");
    let digest = build(
        &env,
        &cache,
        &["--output", &format!("oci:{}", built.display())],
    );
    let dest = format!("{}/wan/repro:v1", wan.addr);
    let started = std::time::Instant::now();
    let (_, reference, stderr) = push(&env, &dest, &cache, &[]);
    let pushed = started.elapsed();
    assert_eq!(
        reference,
        format!("{}/wan/repro@{digest}", wan.addr),
        "{stderr}"
    );
    // A push is at least: the check for the manifest, an upload's POST and PUT, the manifest's
    // PUT, each a round trip (plus the connection's own).
    assert!(pushed >= 4 * rtt, "{pushed:?}");
    let pulled = t.path().join("pulled");
    let started = std::time::Instant::now();
    let o = run(Command::new(&bins().envbuild)
        .args(["pull", &dest, "--json", "--cache"])
        .arg(t.path().join("pull-cache"))
        .arg("--output")
        .arg(format!("oci:{}", pulled.display())));
    let took = started.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(took >= 3 * rtt, "{took:?}");
    assert_eq!(manifest(&pulled), manifest(&built));
    assert!(
        layout_blobs(&pulled) == layout_blobs(&built),
        "the pulled blobs differ"
    );
}
