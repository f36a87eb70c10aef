//! Hostile and broken registries and layouts: every case ends in one clear error within a
//! bounded time, sends no secret to a host it does not belong to, and pushes no manifest after
//! a failure. The servers are scripted ([`envbuild_e2e::hostile`]); the client is the real CLI.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use envbuild::digest::Digest;
use envbuild_e2e::hostile::{registry_answer, Answer, Hostile, Seen};
use envbuild_e2e::{bins, run};

/// A one-layer OCI layout of `layer_size` bytes; returns its directory (in `dir`) and the
/// layer's blob path.
pub fn layout(dir: &Path, layer_size: usize) -> (PathBuf, PathBuf) {
    let root = dir.join("layout");
    let blobs = root.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        fs::write(blobs.join(d.hex()), bytes).unwrap();
        (d, bytes.len())
    };
    let layer: Vec<u8> = (0..layer_size).map(|i| (i * 7 % 251) as u8).collect();
    let (ld, ls) = put(&layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/x"]}},"rootfs":{{"type":"layers","diff_ids":["{ld}"]}}}}"#
    );
    let (cd, cs) = put(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{ls}}}]}}"#
    );
    let (md, ms) = put(manifest.as_bytes());
    fs::write(
        root.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms}}}]}}"#
        ),
    )
    .unwrap();
    fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (root, blobs.join(ld.hex()))
}

/// `envbuild push oci:LAYOUT ADDR/team/app:v1 ARGS` with a clean environment; its output and
/// how long it took.
fn push(layout: &Path, addr: &str, args: &[&str], stdin: Option<&str>) -> (Output, Duration) {
    let home = tempfile::tempdir().unwrap();
    let mut c = Command::new(&bins().envbuild);
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home.path())
        .env("DOCKER_CONFIG", home.path())
        .arg("push")
        .arg(format!("oci:{}", layout.display()))
        .arg(format!("{addr}/team/app:v1"))
        .args(["--cache", &home.path().join("cache").display().to_string()])
        .args(args);
    let t = Instant::now();
    let o = match stdin {
        Some(input) => {
            c.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c.spawn().unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        }
        None => run(&mut c),
    };
    (o, t.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed push: exit 1, stderr containing each of `wanted`, nothing on stdout, and no manifest
/// reached `server`.
fn refused(o: &Output, wanted: &[&str], server: &Hostile) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    for w in wanted {
        assert!(e.contains(w), "`{w}` not in:\n{e}");
    }
    assert!(
        o.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        !server
            .seen()
            .iter()
            .any(|r| r.method == "PUT" && r.path().contains("/manifests/")),
        "a manifest was pushed after a failure"
    );
}

fn manifests(seen: &[Seen]) -> usize {
    seen.iter()
        .filter(|r| r.method == "PUT" && r.path().contains("/manifests/"))
        .count()
}

#[test]
fn credentials_never_go_to_the_host_an_upload_location_names() {
    let t = tempfile::tempdir().unwrap();
    let (dir, _) = layout(t.path(), 1000);
    for scheme in ["basic", "bearer"] {
        // The upload goes to another host (port), as registries backed by object storage do.
        let storage = Hostile::start(|r, _| match r.method.as_str() {
            "PUT" => Answer::status(201, &[("Location", "/stored/1")]),
            _ => Answer::status(405, &[]),
        });
        let storage_addr = storage.addr.clone();
        let registry = Hostile::start(move |r, me| {
            let authorized = match r.header("authorization") {
                Some(v) if scheme == "basic" => v.starts_with("Basic "),
                Some(v) => v == "Bearer registry-token-123",
                None => false,
            };
            if r.path() == "/token" {
                return Answer::status(200, &[("Content-Type", "application/json")])
                    .with_body(r#"{"token":"registry-token-123"}"#);
            }
            if !authorized {
                let challenge = if scheme == "basic" {
                    r#"Basic realm="r""#.to_owned()
                } else {
                    format!(r#"Bearer realm="http://{me}/token",service="r""#)
                };
                return Answer::status(401, &[("WWW-Authenticate", &challenge)]);
            }
            if r.method == "POST" {
                return Answer::status(
                    202,
                    &[("Location", &format!("http://{storage_addr}/upload/1"))],
                );
            }
            registry_answer(r)
        });
        let (o, _) = push(
            &dir,
            &registry.addr,
            &["--username", "ml-user", "--password-stdin"],
            Some("s3cret-pa55\n"),
        );
        assert!(o.status.success(), "{scheme}: {}", stderr(&o));
        let at_registry = registry.seen();
        assert!(
            at_registry
                .iter()
                .any(|r| r.header("authorization").is_some()),
            "{scheme}: the registry itself never got credentials"
        );
        assert_eq!(manifests(&at_registry), 1);
        let at_storage = storage.seen();
        assert!(
            at_storage.iter().any(|r| r.method == "PUT"),
            "{scheme}: the blob did not go to the Location's host"
        );
        for r in &at_storage {
            assert_eq!(
                r.header("authorization"),
                None,
                "{scheme}: credentials sent to another host: {r:?}"
            );
        }
    }
}

#[test]
fn a_registry_that_never_answers_fails_within_the_timeouts() {
    let t = tempfile::tempdir().unwrap();
    let (dir, _) = layout(t.path(), 1000);
    let silent = Hostile::start(|_, _| Answer::Never);
    let (o, took) = push(&dir, &silent.addr, &["--idle-timeout", "2"], None);
    refused(&o, &["GET /v2/", "no answer within 2 s", "hint:"], &silent);
    // Two attempts of 2 s and a backoff, not the policy's five or a hang: the ping, and the
    // checks of the layout's two blobs that go beside it, each at most twice.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(silent.seen().len() <= 3 * 2, "{:?}", silent.seen());
}

#[test]
fn an_upload_location_nobody_answers_fails_within_the_timeouts() {
    let t = tempfile::tempdir().unwrap();
    let (dir, _) = layout(t.path(), 1000);
    // A server that takes the request and never answers, and one whose connections never
    // open: a listener that accepts nothing, its backlog filled, drops every further SYN as an
    // unroutable address does (no such address is reliably unroutable from every machine).
    let dead = Hostile::start(|_, _| Answer::Never);
    let full = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let full_addr = full.local_addr().unwrap();
    let mut held = Vec::new();
    while let Ok(c) = std::net::TcpStream::connect_timeout(&full_addr, Duration::from_millis(200)) {
        held.push(c);
        assert!(held.len() < 10_000, "the backlog never filled");
    }
    for location in [
        format!("http://{}/upload/1", dead.addr),
        format!("http://{full_addr}/upload/1"),
    ] {
        let loc = location.clone();
        let registry = Hostile::start(move |r, _| match r.method.as_str() {
            "POST" => Answer::status(202, &[("Location", &loc)]),
            _ => registry_answer(r),
        });
        let (o, took) = push(
            &dir,
            &registry.addr,
            &["--idle-timeout", "2", "--connect-timeout", "2"],
            None,
        );
        let e = stderr(&o);
        assert!(
            e.contains("upload of sha256:") && (e.contains(" 2 s") || e.contains("cannot connect")),
            "{location}: {e}"
        );
        refused(&o, &[], &registry);
        assert!(took < Duration::from_secs(60), "{location}: took {took:?}");
    }
}

#[test]
fn a_web_server_answering_200_to_everything_is_not_a_registry() {
    let t = tempfile::tempdir().unwrap();
    let (dir, _) = layout(t.path(), 1000);
    let web = Hostile::start(|_, _| {
        Answer::status(200, &[("Content-Type", "text/html")])
            .with_body("<html><body>\x1b[31mWelcome\x1b[0m</body></html>")
    });
    let (o, _) = push(&dir, &web.addr, &[], None);
    refused(&o, &["HEAD blob sha256:", "is this a registry API?"], &web);
    assert!(
        !stderr(&o).contains('\x1b'),
        "raw bytes echoed: {}",
        stderr(&o)
    );
    // The closing answers are checked too: a 200 where the spec requires 201 is no success.
    let lax = Hostile::start(|r, _| match r.method.as_str() {
        "PUT" => Answer::status(200, &[("Content-Type", "text/html")]),
        _ => registry_answer(r),
    });
    let (o, _) = push(&dir, &lax.addr, &[], None);
    refused(
        &o,
        &["upload of sha256:", "200 OK (text/html)", "201 Created"],
        &lax,
    );
}

#[test]
fn a_redirect_loop_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let (dir, _) = layout(t.path(), 1000);
    let looping = Hostile::start(|r, _| match r.path() {
        "/v2/" => Answer::status(302, &[("Location", "/v2/")]),
        _ => registry_answer(r),
    });
    let (o, _) = push(&dir, &looping.addr, &[], None);
    refused(&o, &["GET /v2/", "redirects in a loop"], &looping);
}

#[test]
fn missing_or_wrong_headers_are_named() {
    let t = tempfile::tempdir().unwrap();
    let (dir, _) = layout(t.path(), 1000);
    let no_location = Hostile::start(|r, _| match r.method.as_str() {
        "POST" => Answer::status(202, &[]),
        _ => registry_answer(r),
    });
    let (o, _) = push(&dir, &no_location.addr, &[], None);
    refused(
        &o,
        &["upload of sha256:", "no Location header"],
        &no_location,
    );

    let wrong = "sha256:".to_owned() + &"0".repeat(64);
    let w2 = wrong.clone();
    let wrong_digest = Hostile::start(move |r, _| match r.method.as_str() {
        "PUT" if r.path().contains("/manifests/") => Answer::status(
            201,
            &[("Location", r.path()), ("Docker-Content-Digest", &w2)],
        ),
        _ => registry_answer(r),
    });
    let (o, _) = push(&dir, &wrong_digest.addr, &[], None);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("PUT manifest v1") && e.contains(&wrong), "{e}");
    assert!(o.stdout.is_empty());
}

#[test]
fn a_huge_token_answer_is_refused_and_never_sent_back() {
    let t = tempfile::tempdir().unwrap();
    let (dir, _) = layout(t.path(), 1000);
    let huge = format!(r#"{{"token":"{}"}}"#, "x".repeat(10 << 20));
    let registry = Hostile::start(move |r, me| {
        if r.path() == "/token" {
            return Answer::status(200, &[("Content-Type", "application/json")])
                .with_body(huge.clone());
        }
        if r.header("authorization").is_none() {
            let c = format!(r#"Bearer realm="http://{me}/token",service="r""#);
            return Answer::status(401, &[("WWW-Authenticate", &c)]);
        }
        registry_answer(r)
    });
    let (o, took) = push(&dir, &registry.addr, &[], None);
    refused(&o, &["token", "more than 256 KiB"], &registry);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let longest = registry
        .seen()
        .iter()
        .filter_map(|r| r.header("authorization").map(str::len))
        .max();
    assert_eq!(longest, None, "a token went back to the registry");
}

#[test]
fn slow_answers_and_a_slow_upload_finish_while_bytes_move() {
    let t = tempfile::tempdir().unwrap();
    // 32 MiB read at about 8 MiB/s: four seconds, more than the idle timeout, always moving
    // (what the socket buffers hold drains in well under the timeout).
    let (dir, _) = layout(t.path(), 32 << 20);
    let slow = Hostile::start(|r, _| {
        let a = registry_answer(r);
        if r.method == "PUT" && r.path().contains("/blobs/uploads/") {
            Answer::SlowRead(256 << 10, Duration::from_millis(31), Box::new(a))
        } else {
            Answer::Late(Duration::from_millis(1500), Box::new(a))
        }
    });
    let (o, took) = push(&dir, &slow.addr, &["--idle-timeout", "3"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        took > Duration::from_secs(4),
        "took {took:?}: not slow enough to test"
    );
    assert_eq!(manifests(&slow.seen()), 1);
}

#[test]
fn a_short_corrupt_or_oversized_blob_in_a_layout_is_refused_before_its_upload() {
    let registry = Hostile::start(|r, _| registry_answer(r));
    let t = tempfile::tempdir().unwrap();
    let (dir, layer) = layout(t.path(), 5000);
    let good = fs::read(&layer).unwrap();
    let digest = format!("sha256:{}", layer.file_name().unwrap().to_string_lossy());

    fs::write(&layer, &good[..4000]).unwrap();
    let (o, _) = push(&dir, &registry.addr, &[], None);
    refused(
        &o,
        &[
            &layer.display().to_string(),
            "is 4000 bytes, its descriptor says 5000",
        ],
        &registry,
    );

    let mut bad = good.clone();
    bad[10] ^= 0xff;
    fs::write(&layer, &bad).unwrap();
    let (o, _) = push(&dir, &registry.addr, &[], None);
    refused(
        &o,
        &[&layer.display().to_string(), "hash to sha256:", &digest],
        &registry,
    );
    fs::write(&layer, &good).unwrap();
    // inspect of a corrupt config names the blob and both digests.
    let config = fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| fs::read_to_string(p).is_ok_and(|t| t.starts_with(r#"{"architecture""#)))
        .unwrap();
    let c = fs::read(&config).unwrap();
    let mut flipped = c.clone();
    flipped[3] ^= 0x20;
    fs::write(&config, &flipped).unwrap();
    let o =
        run(Command::new(&bins().envbuild).args(["inspect", &format!("oci:{}", dir.display())]));
    let e = stderr(&o);
    let config_digest = format!("sha256:{}", config.file_name().unwrap().to_string_lossy());
    assert!(
        !o.status.success() && e.contains(&config_digest) && e.contains("hash to sha256:"),
        "{e}"
    );
    fs::write(&config, &c).unwrap();
    let manifest_path = {
        let index = fs::read_to_string(dir.join("index.json")).unwrap();
        let m = index.split("sha256:").nth(1).unwrap()[..64].to_owned();
        dir.join("blobs/sha256").join(m)
    };
    let m = fs::read_to_string(&manifest_path).unwrap();
    fs::write(
        &manifest_path,
        m.replace(r#""size":5000"#, r#""size":4611686018427387904"#),
    )
    .unwrap();
    // The manifest no longer matches its own digest in index.json: rewrite the index to it.
    let md = Digest::of(&fs::read(&manifest_path).unwrap());
    let new_path = dir.join("blobs/sha256").join(md.hex());
    fs::rename(&manifest_path, &new_path).unwrap();
    let size = fs::metadata(&new_path).unwrap().len();
    fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{size}}}]}}"#
        ),
    )
    .unwrap();
    let (o, _) = push(&dir, &registry.addr, &[], None);
    refused(&o, &["4611686018427387904", "beyond any blob"], &registry);
    // Sizes are checked before any request; a corrupt blob's contents just before its upload
    // (so a push never re-reads what the registry has): the good config may have gone up beside
    // it, the corrupt layer's upload never finished, and no manifest went up (`refused`).
    let seen = registry.seen();
    let layer_hex = digest.trim_start_matches("sha256:");
    assert!(
        !seen
            .iter()
            .any(|r| matches!(r.method.as_str(), "PUT" | "PATCH") && r.target.contains(layer_hex)),
        "{seen:?}"
    );
    assert!(
        seen.iter().filter(|r| r.method == "PUT").count() <= 2,
        "only the config, in the two corrupt-blob pushes: {seen:?}"
    );
}

#[test]
fn an_empty_password_on_stdin_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (dir, _) = layout(t.path(), 1000);
    let registry = Hostile::start(|r, _| registry_answer(r));
    let (o, _) = push(
        &dir,
        &registry.addr,
        &["--username", "u", "--password-stdin"],
        Some(""),
    );
    refused(
        &o,
        &["--password-stdin", "standard input was empty"],
        &registry,
    );
    assert!(registry.seen().is_empty());

    let config = tempfile::tempdir().unwrap();
    let mut c = Command::new(&bins().envbuild);
    c.env("DOCKER_CONFIG", config.path())
        .args([
            "login",
            &registry.addr,
            "--username",
            "u",
            "--password-stdin",
        ])
        .stdin(Stdio::null());
    let o = run(&mut c);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("standard input was empty") && !e.contains("Login Succeeded"),
        "{e}"
    );
    assert_eq!(
        fs::read_dir(config.path()).unwrap().count(),
        0,
        "something was stored"
    );
    assert!(registry.seen().is_empty());
}

#[test]
fn a_build_with_nothing_to_run_and_odd_environment_files_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let build = |file: &Path| {
        run(Command::new(&bins().envbuild)
            .arg("build")
            .arg(file)
            .arg("--cache")
            .arg(&cache))
    };
    fs::write(t.path().join("data.txt"), "x\n").unwrap();
    let env = t.path().join("nothing.toml");
    fs::write(
        &env,
        "name = \"nothing\"\n[base]\nscratch = true\n\n[[layer]]\nname = \"data\"\n[[layer.files]]\nsrc = \"data.txt\"\ndest = \"/data.txt\"\n",
    )
    .unwrap();
    let o = build(&env);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("nothing.toml")
            && e.contains("nothing to run")
            && e.contains("hint: set `entrypoint"),
        "{e}"
    );
    assert!(o.stdout.is_empty(), "a digest was printed");

    // A device, and a type error that names its field.
    let o = build(Path::new("/dev/zero"));
    assert!(
        stderr(&o).contains("/dev/zero: not a regular file"),
        "{}",
        stderr(&o)
    );
    fs::write(
        &env,
        "name = \"nothing\"\n[base]\nscratch = true\n\n[[layer]]\nname = \"data\"\n[[layer.files]]\nsrc = \"data.txt\"\ndest = \"/data.txt\"\nmode = \"rw\"\n",
    )
    .unwrap();
    let o = build(&env);
    assert!(
        stderr(&o).contains("nothing.toml:10: field `layer.files.mode`: invalid type"),
        "{}",
        stderr(&o)
    );
}
