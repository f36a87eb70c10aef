//! `envbuild build` end to end: reproducibility (the same bytes from any checkout and machine
//! state), incremental rebuilds, acceptance by skopeo, umoci and the Docker engine, bad input
//! and the link check.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use envbuild_e2e::{base_layout, bins, last_line, ok, run, site_packages};
use serde_json::{json, Value};

/// A small environment with the shape of the real one: a library layer (a real libtorch
/// library, a nested directory, a relative symlink) and the trainer layer. Its entrypoint is the
/// base's shell, so that the link check passes without the 450 MB of libtorch.
pub const REPRO_ENV: &str = r#"
name = "repro"
[base]
oci = "${ENVBUILD_BASE}"
[[layer]]
name = "libs"
[[layer.files]]
src = "lib"
dest = "/opt/envbuild/lib"
[[layer]]
name = "trainer"
[[layer.files]]
src = "bin/trainer"
dest = "/opt/envbuild/bin/trainer"
mode = 0o755
[sbom]
cargo-lock = "Cargo.lock"
binary = "/opt/envbuild/bin/trainer"
[config]
entrypoint = ["/bin/sh"]
env = { LD_LIBRARY_PATH = "/opt/envbuild/lib" }
"#;

/// Makes a checkout of the repro environment in `dir`. `reverse` creates the files in the
/// opposite order and gives them shuffled modification times and restrictive permissions.
pub fn checkout(dir: &Path, reverse: bool) -> PathBuf {
    let libc10 = site_packages().join("torch/lib/libc10.so");
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("bin/trainer", fs::read(&bins().trainer).unwrap()),
        ("lib/libc10.so", fs::read(&libc10).unwrap()),
        ("lib/nested/data.txt", b"some data\n".to_vec()),
        ("lib/nested/more.txt", vec![7u8; 70_000]),
        // `lib` is a site-packages of one distribution, which owns two of its files.
        (
            "lib/fake_dist-1.0.dist-info/METADATA",
            b"Metadata-Version: 2.4\nName: fake-dist\nVersion: 1.0\nLicense-Expression: MIT\n"
                .to_vec(),
        ),
        (
            "lib/fake_dist-1.0.dist-info/RECORD",
            b"libc10.so,sha256=x,1\nnested/data.txt,sha256=y,1\nfake_dist-1.0.dist-info/RECORD,,\n"
                .to_vec(),
        ),
        (
            "Cargo.lock",
            fs::read(envbuild_e2e::root().join("Cargo.lock")).unwrap(),
        ),
    ];
    if reverse {
        files.reverse();
    }
    for (i, (name, bytes)) in files.iter().enumerate() {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        let mode = match (reverse, name.starts_with("bin/")) {
            (false, true) => 0o755,
            (false, false) => 0o644,
            (true, true) => 0o700,
            (true, false) => 0o600,
        };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        if reverse {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000 + 7_777 * i as u64);
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }
    symlink("nested/data.txt", dir.join("lib/link.txt")).unwrap();
    fs::write(dir.join("env.toml"), REPRO_ENV).unwrap();
    dir.join("env.toml")
}

/// Every blob of the OCI layout at `dir`: (file name, bytes), sorted.
pub fn layout_blobs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

pub fn envbuild() -> Command {
    let mut c = Command::new(&bins().envbuild);
    c.env("ENVBUILD_BASE", base_layout())
        .env_remove("SOURCE_DATE_EPOCH");
    c
}

pub fn build(env: &Path, cache: &Path, extra: &[&str]) -> String {
    let mut c = envbuild();
    c.arg("build")
        .arg(env)
        .arg("--cache")
        .arg(cache)
        .args(extra);
    last_line(&ok(&mut c))
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap()
}

pub fn manifest(layout: &Path) -> Value {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    serde_json::from_slice(&blob(
        layout,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ))
    .unwrap()
}

#[test]
fn same_inputs_same_digest_whatever_the_machine_state() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (
        t.path().join("checkout-a"),
        t.path().join("somewhere/else/checkout-b"),
    );
    let env_a = checkout(&a, false);
    let env_b = checkout(&b, true);
    let (cache_a, cache_b) = (t.path().join("cache-a"), t.path().join("cache-b"));

    let first = build(
        &env_a,
        &cache_a,
        &[
            "--threads",
            "2",
            "--output",
            &format!("oci:{}", t.path().join("out-a").display()),
        ],
    );
    assert!(first.starts_with("sha256:"), "{first}");

    // The other checkout, cold cache, one thread, umask 077, another time zone and host name.
    let script = format!(
        "umask 077; hostname envbuild-other-host 2>/dev/null; exec {} build {} --cache {} --threads 1 --output oci:{}",
        bins().envbuild.display(),
        env_b.display(),
        cache_b.display(),
        t.path().join("out-b").display()
    );
    let mut c = Command::new("unshare");
    c.args(["--uts", "sh", "-c", &script])
        .env("TZ", "Asia/Kathmandu")
        .env("ENVBUILD_BASE", base_layout());
    let o = run(&mut c);
    let second = if o.status.success() {
        last_line(&String::from_utf8_lossy(&o.stdout))
    } else {
        // No permission for a UTS namespace: everything but the host name still differs.
        let mut c = Command::new("sh");
        c.args([
            "-c",
            &script.replace("hostname envbuild-other-host 2>/dev/null; ", ""),
        ])
        .env("TZ", "Asia/Kathmandu")
        .env("ENVBUILD_BASE", base_layout());
        last_line(&ok(&mut c))
    };
    assert_eq!(first, second, "two checkouts gave two digests");

    // Warm cache: layers come from the cache and the digest is the same again.
    let mut c = envbuild();
    c.arg("build").arg(&env_a).arg("--cache").arg(&cache_a);
    let o = run(&mut c);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cached"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(last_line(&String::from_utf8_lossy(&o.stdout)), first);

    // The layouts are byte-identical, file for file.
    let list = layout_blobs;
    assert!(list(&t.path().join("out-a")) == list(&t.path().join("out-b")));

    // The SBOM (in both layouts, so byte for byte the same above): valid for the SPDX
    // project's own validator, and it lists the base's Debian packages, the distribution whose
    // RECORD owns files of a layer, and the trainer with its crates.
    let sbom = t.path().join("a.spdx.json");
    ok(Command::new(&bins().envbuild)
        .args([
            "sbom",
            &format!("oci:{}", t.path().join("out-a").display()),
            "-o",
        ])
        .arg(&sbom));
    let doc = envbuild_e2e::valid_spdx(&sbom);
    let package = |name: &str| -> Value {
        envbuild_e2e::spdx_package(&doc, name)
            .unwrap_or_else(|| panic!("no package {name} in the SBOM"))
            .clone()
    };
    assert_eq!(package("libc6")["supplier"], "Organization: Debian");
    assert!(package("libc6")["versionInfo"]
        .as_str()
        .unwrap()
        .starts_with("2.36-"));
    let fake = package("fake-dist");
    assert_eq!(
        (&fake["versionInfo"], &fake["licenseDeclared"]),
        (&json!("1.0"), &json!("MIT"))
    );
    // Its RECORD lists two files of the layer and itself.
    assert_eq!(fake["comment"], "3 files in layer libs");
    assert_eq!(package("tch")["versionInfo"], "0.24.0");
    assert_eq!(
        package("trainer")["checksums"][0]["checksumValue"],
        envbuild::digest::Digest::of(&fs::read(&bins().trainer).unwrap()).hex()
    );
    assert_eq!(doc["creationInfo"]["created"], "1970-01-01T00:00:00Z");
    let prov: Value = serde_json::from_str(&ok(Command::new(&bins().envbuild).args([
        "sbom",
        "--provenance",
        &format!("oci:{}", t.path().join("out-b").display()),
    ])))
    .unwrap();
    assert_eq!(
        prov["subject"][0]["digest"]["sha256"],
        first.trim_start_matches("sha256:")
    );
    assert_eq!(
        prov["predicate"]["buildDefinition"]["externalParameters"]["environment"]["digest"]
            ["sha256"],
        envbuild::digest::Digest::of(&fs::read(&env_a).unwrap()).hex()
    );

    // SOURCE_DATE_EPOCH is an input: it changes the digest, and nothing else does.
    let mut c = envbuild();
    c.arg("build")
        .arg(&env_a)
        .arg("--cache")
        .arg(&cache_a)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    assert_ne!(last_line(&ok(&mut c)), first);
}

#[test]
fn one_byte_trainer_change_rebuilds_only_the_trainer_layer() {
    let t = tempfile::tempdir().unwrap();
    let env = checkout(&t.path().join("c"), false);
    let cache = t.path().join("cache");
    let (out1, out2) = (t.path().join("o1"), t.path().join("o2"));
    let d1 = build(
        &env,
        &cache,
        &["--output", &format!("oci:{}", out1.display())],
    );
    let trainer = t.path().join("c/bin/trainer");
    let mut bytes = fs::read(&trainer).unwrap();
    bytes.push(0);
    fs::write(&trainer, bytes).unwrap();
    let mut c = envbuild();
    c.arg("build")
        .arg(&env)
        .arg("--cache")
        .arg(&cache)
        .arg("--output")
        .arg(format!("oci:{}", out2.display()));
    let o = run(&mut c);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let d2 = last_line(&String::from_utf8_lossy(&o.stdout));
    assert_ne!(d1, d2);
    assert!(
        stderr.contains("layer libs         cached")
            && stderr.contains("layer trainer      building"),
        "{stderr}"
    );
    let (m1, m2) = (manifest(&out1), manifest(&out2));
    let (l1, l2) = (
        m1["layers"].as_array().unwrap(),
        m2["layers"].as_array().unwrap(),
    );
    assert_eq!(l1.len(), l2.len());
    let n = l1.len();
    assert_eq!(
        l1[..n - 1],
        l2[..n - 1],
        "base and library layers must not change"
    );
    assert_ne!(l1[n - 1], l2[n - 1]);
    assert_ne!(m1["config"]["digest"], m2["config"]["digest"]);

    // `envbuild diff` names the layer, the file and the header field; exit 1 like diff(1).
    let o = run(Command::new(&bins().envbuild).args([
        "diff",
        &format!("oci:{}", out1.display()),
        &format!("oci:{}", out2.display()),
    ]));
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("layer 2: opt/envbuild/bin/trainer: content differs"),
        "{text}"
    );
    assert!(
        text.contains("layer 2: opt/envbuild/bin/trainer: header size"),
        "{text}"
    );
    assert!(text.contains("config.rootfs.diff_ids[2]"), "{text}");
    assert!(!text.contains("layer 1:"), "{text}");
    let same = ok(Command::new(&bins().envbuild).args([
        "diff",
        &format!("oci:{}", out1.display()),
        &format!("oci:{}", out1.display()),
    ]));
    assert!(same.starts_with("identical: sha256:"), "{same}");
}

#[test]
fn skopeo_umoci_and_docker_accept_the_image() {
    let _engine = envbuild_e2e::engine_lock();
    // The real CPU environment: trainer, libtorch's CPU libraries, the Debian runtime base.
    let t = tempfile::tempdir().unwrap();
    let env = envbuild_e2e::root().join("environments/mnist-cpu.toml");
    let (layout, archive) = (t.path().join("oci"), t.path().join("image.tar"));
    let digest = build(
        &env,
        &t.path().join("cache"),
        &[
            "--output",
            &format!("oci:{}", layout.display()),
            "--output",
            &format!("docker-archive:{}", archive.display()),
        ],
    );

    let inspect: Value = serde_json::from_str(&ok(
        Command::new("skopeo").args(["inspect", &format!("oci:{}", layout.display())])
    ))
    .unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(
        inspect["Layers"].as_array().unwrap().len(),
        4,
        "base, cuda-runtime, libtorch, trainer"
    );
    ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{}", layout.display()),
        &format!("dir:{}", t.path().join("dir").display()),
    ]));

    let bundle = t.path().join("bundle");
    ok(Command::new("umoci")
        .args([
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:latest", layout.display()),
        ])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        fs::read(rootfs.join("opt/envbuild/bin/trainer")).unwrap(),
        fs::read(&bins().trainer).unwrap()
    );
    assert!(rootfs
        .join("opt/envbuild/site-packages/torch/lib/libtorch_cpu.so")
        .is_file());
    assert!(rootfs.join("bin/sh").exists(), "the base's /bin/sh");

    let shown =
        ok(Command::new(&bins().envbuild).args(["inspect", &format!("oci:{}", layout.display())]));
    assert!(
        shown.starts_with(&format!("image        {digest}")),
        "{shown}"
    );
    assert!(
        shown.contains("made by    envbuild layer libtorch") && shown.contains("top level  opt"),
        "{shown}"
    );
    assert!(
        shown.contains("entrypoint   [\"/opt/envbuild/bin/trainer\"]"),
        "{shown}"
    );
    // The SBOM of the real image: torch and the CUDA wheels by their versions, the base's
    // Debian packages, the trainer's crates; inspect counts them.
    assert!(
        shown.contains("sbom: ") && shown.contains(" pypi") && shown.contains(" deb"),
        "{shown}"
    );
    let sbom = t.path().join("cpu.spdx.json");
    ok(Command::new(&bins().envbuild)
        .args(["sbom", &format!("oci:{}", layout.display()), "--output"])
        .arg(&sbom));
    let doc = envbuild_e2e::valid_spdx(&sbom);
    let version_of = |name: &str| {
        envbuild_e2e::spdx_package(&doc, name)
            .map(|p| p["versionInfo"].as_str().unwrap().to_owned())
    };
    assert_eq!(version_of("torch").as_deref(), Some("2.11.0"));
    for wheel in ["nvidia-cuda-runtime", "nvidia-cuda-cupti"] {
        let v = version_of(wheel).unwrap_or_else(|| panic!("{wheel} is not in the SBOM"));
        assert!(v.starts_with("13."), "{wheel} {v}");
    }
    assert!(version_of("libc6").is_some() && version_of("libstdc++6").is_some());
    assert_eq!(version_of("tch").as_deref(), Some("0.24.0"));
    let nvidia = doc["hasExtractedLicensingInfos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["licenseId"] == "LicenseRef-NVIDIA-Proprietary")
        .expect("NVIDIA's license, declared");
    assert!(
        nvidia["extractedText"]
            .as_str()
            .unwrap()
            .to_uppercase()
            .contains("NVIDIA"),
        "the EULA's text from the wheel"
    );
    let from_archive = ok(Command::new(&bins().envbuild)
        .args(["inspect", &format!("docker-archive:{}", archive.display())]));
    assert!(
        from_archive.contains("made by    envbuild layer trainer"),
        "{from_archive}"
    );

    let loaded = ok(Command::new("docker").args(["load", "-i"]).arg(&archive));
    assert!(loaded.contains("envbuild/mnist-cpu:latest"), "{loaded}");
    let help =
        ok(Command::new("docker").args(["run", "--rm", "envbuild/mnist-cpu:latest", "--help"]));
    assert!(help.contains("train-images-idx3-ubyte"), "{help}");
    let _ = run(Command::new("docker").args(["rmi", "-f", "envbuild/mnist-cpu:latest"]));
}

/// Expects `envbuild build` to fail with `expect` in its error, writing neither the output nor
/// anything into the cache.
fn fails(env: &Path, expect: &str, t: &Path) {
    let cache = t.join(format!("cache-{}", expect.len()));
    let out = t.join(format!("out-{}", expect.len()));
    let mut c = envbuild();
    c.arg("build")
        .arg(env)
        .arg("--cache")
        .arg(&cache)
        .arg("--output")
        .arg(format!("oci:{}", out.display()));
    let o = run(&mut c);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{expect}: {stderr}");
    assert!(stderr.contains(expect), "expected `{expect}` in:\n{stderr}");
    assert!(!out.exists(), "{expect}: output written");
    for sub in ["blobs/sha256", "layers"] {
        let n = fs::read_dir(cache.join(sub))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(n, 0, "{expect}: {sub} written in the cache");
    }
}

#[test]
fn bad_input_gives_a_clear_error_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("c");
    let env = checkout(&dir, false);
    let write = |text: String| {
        let p = dir.join("bad.toml");
        fs::write(&p, text).unwrap();
        p
    };
    fails(
        &write(REPRO_ENV.replace("mode = 0o755", "mode = 0o755\nowner = \"me\"")),
        "bad.toml:16: unknown field `owner`",
        t.path(),
    );
    fails(
        &write(REPRO_ENV.replace("bin/trainer\"\ndest", "bin/nope\"\ndest")),
        "bin/nope does not exist",
        t.path(),
    );
    fails(
        &write(REPRO_ENV.replace("dest = \"/opt/envbuild/lib\"", "dest = \"/opt/../lib\"")),
        "field `layer[0].files[0].dest`",
        t.path(),
    );
    let wrong = format!(
        "oci = \"${{ENVBUILD_BASE}}\"\ndigest = \"sha256:{}\"",
        "0".repeat(64)
    );
    fails(
        &write(REPRO_ENV.replace("oci = \"${ENVBUILD_BASE}\"", &wrong)),
        "base digest mismatch",
        t.path(),
    );
    symlink("../../../etc/passwd", dir.join("lib/nested/evil")).unwrap();
    fails(&env, "escapes its source root", t.path());
    fs::remove_file(dir.join("lib/nested/evil")).unwrap();

    // An output that cannot be written is refused before any work.
    fs::write(t.path().join("file"), b"x").unwrap();
    let cache = t.path().join("cache-out");
    let mut c = envbuild();
    c.arg("build")
        .arg(&env)
        .arg("--cache")
        .arg(&cache)
        .arg("--output")
        .arg(format!("oci:{}/file/out", t.path().display()));
    let o = run(&mut c);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not a directory"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!cache.exists(), "the cache was touched");
}

#[test]
fn link_check_names_a_missing_library_and_a_too_new_glibc() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("c");
    checkout(&dir, false);
    // The trainer as entrypoint, without libtorch_cpu.so, and asking for a glibc from the future.
    let trainer = dir.join("bin/trainer");
    let mut bytes = fs::read(&trainer).unwrap();
    let at = bytes
        .windows(11)
        .position(|w| w == b"GLIBC_2.34\0")
        .expect("the trainer needs GLIBC_2.34");
    bytes[at..at + 10].copy_from_slice(b"GLIBC_2.99");
    fs::write(&trainer, bytes).unwrap();
    let env = dir.join("link.toml");
    fs::write(
        &env,
        REPRO_ENV.replace(
            "entrypoint = [\"/bin/sh\"]",
            "entrypoint = [\"/opt/envbuild/bin/trainer\"]",
        ),
    )
    .unwrap();
    fails(
        &env,
        "trainer needs libtorch_cpu.so, which is not in the image",
        t.path(),
    );
    fails(
        &env,
        "trainer needs GLIBC_2.99 from libc.so.6, but the image's libc.so.6 (/lib/x86_64-linux-gnu/libc.so.6) provides at most GLIBC_2.36",
        t.path(),
    );
    // What the program loads at run time is checked as the entrypoint is: the shell starts,
    // the broken trainer, named as dlopened, would not load; a library that is not there is named.
    let dl = dir.join("dlopen.toml");
    let with_dlopen = |lib: &str| {
        fs::write(
            &dl,
            format!("{REPRO_ENV}\n[link-check]\ndlopen = [\"{lib}\"]\n"),
        )
        .unwrap();
    };
    with_dlopen("/opt/envbuild/bin/trainer");
    fails(
        &dl,
        "link check failed: /opt/envbuild/bin/trainer, which the program loads at run time ([link-check] dlopen), would not load in this image",
        t.path(),
    );
    with_dlopen("/opt/envbuild/lib/libnccl.so.2");
    fails(
        &dl,
        "/opt/envbuild/lib/libnccl.so.2 is not in the image",
        t.path(),
    );
    with_dlopen("libnccl.so.2");
    fails(
        &dl,
        "field `link-check.dlopen`: `libnccl.so.2` is not an absolute path in the image",
        t.path(),
    );
    // The check can be skipped on purpose.
    let mut c = envbuild();
    c.arg("build")
        .arg(&env)
        .arg("--cache")
        .arg(t.path().join("cache-skip"))
        .arg("--skip-link-check");
    assert!(last_line(&ok(&mut c)).starts_with("sha256:"));
}

#[test]
fn load_puts_the_image_into_the_engine_and_a_missing_engine_is_one_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let env = checkout(&t.path().join("c"), false);
    let cache = t.path().join("cache");
    let mut c = envbuild();
    c.arg("build")
        .arg(&env)
        .arg("--cache")
        .arg(&cache)
        .arg("--load")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let o = run(&mut c);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "no Docker engine at unix:///nonexistent/docker.sock — is the daemon running?"
        ),
        "{stderr}"
    );
    assert_eq!(
        fs::read_dir(cache.join("blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );

    let _ = run(Command::new("docker").args(["rmi", "-f", "envbuild/repro:latest"]));
    let digest = build(&env, &cache, &["--load"]);
    let config_digest = manifest_config_digest(&cache, &digest);
    let id = ok(Command::new("docker").args([
        "image",
        "inspect",
        "-f",
        "{{.Id}}",
        "envbuild/repro:latest",
    ]));
    assert_eq!(
        id.trim(),
        config_digest,
        "the engine holds exactly the built config"
    );
    let out = ok(Command::new("docker").args([
        "run",
        "--rm",
        "envbuild/repro:latest",
        "-c",
        "read line < /opt/envbuild/lib/link.txt; echo \"$line\"",
    ]));
    assert_eq!(out, "some data\n");
    let _ = run(Command::new("docker").args(["rmi", "-f", "envbuild/repro:latest"]));
}

/// The manifest `digest` as the build left it in the cache.
pub fn cached_manifest(cache: &Path, digest: &str) -> Value {
    serde_json::from_slice(
        &fs::read(
            cache
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap()
}

/// The config digest of the image whose manifest `digest` is in the cache.
fn manifest_config_digest(cache: &Path, digest: &str) -> String {
    cached_manifest(cache, digest)["config"]["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The trainer built alone (scripts/build-release.sh, what images carry) and the workspace's test
/// build resolve the trainer's dependencies with the same features, so that the test build
/// compiles none of them a second time: trainer/Cargo.toml names the features the rest of the
/// workspace turns on. Adding a feature to a shared dependency elsewhere fails this test, with
/// the line of the dependency tree that changed.
#[test]
fn the_trainer_alone_has_the_workspaces_dependency_features() {
    let tree = |select: &str| {
        envbuild_e2e::cargo_stdout(
            &envbuild_e2e::root(),
            &format!("tree --locked --offline --no-dedupe -f '{{p}} {{f}}' {select}"),
        )
    };
    let alone = tree("-p trainer -e normal,build");
    // The workspace's tree holds each member's; the trainer's ends at a blank line, and its
    // dev-dependencies (which the test build adds, and build-release.sh does not) come last.
    let all = tree("--workspace -e normal,build,dev");
    let in_workspace: Vec<&str> = all
        .lines()
        .skip_while(|l| !l.starts_with("trainer v"))
        .take_while(|l| !l.is_empty() && *l != "[dev-dependencies]")
        .collect();
    let alone: Vec<&str> = alone.lines().take_while(|l| !l.is_empty()).collect();
    assert!(
        alone.len() > 100,
        "the trainer's tree:\n{}",
        alone.join("\n")
    );
    if let Some(i) =
        (0..alone.len().max(in_workspace.len())).find(|&i| alone.get(i) != in_workspace.get(i))
    {
        panic!(
            "the trainer's dependency features differ between `-p trainer` and the workspace \
             (align them in trainer/Cargo.toml), line {}:\n  alone:        {:?}\n  in workspace: {:?}",
            i + 1,
            alone.get(i),
            in_workspace.get(i)
        );
    }
}

/// The whole chain from source to digest is reproducible only if the trainer binary is: built
/// from a second checkout at another path (own target directory, own `.venv` path), it must be
/// the same bytes. scripts/env.sh remaps the checkout and cargo home in Rust and C++ paths.
///
/// The other target directory starts with a copy of this checkout's release build, so that the
/// registry crates no checkout path reaches are not compiled a second time (minutes of CI's two
/// cores; their fingerprints hold no checkout path). All that a checkout path reaches is rebuilt
/// there, and `-v` shows it: the trainer crate and its build script (the C++ shim, compiled
/// against the other checkout's `.venv` headers), torch-sys's build script (its C++ against the
/// same headers, rerun because scripts/env.sh puts the checkout path into CXXFLAGS),
/// and the crates above them. A crate taken from the copy could carry a path of this checkout
/// (an OUT_DIR in a panic location) into both binaries alike, which equal bytes would not show;
/// so neither binary may hold either checkout's path.
#[test]
fn trainer_binary_is_identical_from_two_checkout_paths() {
    let root = envbuild_e2e::root();
    let t = tempfile::tempdir().unwrap();
    let other = t.path().join("some/other/place/envbuild");
    fs::create_dir_all(&other).unwrap();
    let files = ok(Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&root));
    let mut copied = 0;
    for f in files.split('\0').filter(|f| !f.is_empty()) {
        let (src, dst) = (root.join(f), other.join(f));
        if src.is_file() {
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            fs::copy(&src, &dst).unwrap();
            copied += 1;
        }
    }
    assert!(copied > 20, "copied {copied} files");
    // The same venv contents, seen under the other checkout's path.
    symlink(root.join(".venv"), other.join(".venv")).unwrap();
    let release = bins().trainer.parent().expect("target/release").to_owned();
    fs::create_dir_all(other.join("target/release")).unwrap();
    ok(Command::new("cp")
        .arg("-a")
        .args(["deps", "build", ".fingerprint"].map(|d| release.join(d)))
        .arg(other.join("target/release")));
    let o = envbuild_e2e::release_build(
        &other,
        &["-p", "trainer", "-v"],
        Some(&other.join("target")),
    );
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    // `Running `…`` lines: rustc with its arguments, or a build script's path.
    let ran = |what: &str, needle: &str, tail: &str| {
        assert!(
            log.lines().any(|l| {
                let l = l.trim();
                l.starts_with("Running `") && l.contains(needle) && l.ends_with(tail)
            }),
            "{what} was not rebuilt in the other checkout:\n{log}"
        );
    };
    ran("the trainer crate", " --crate-name trainer ", "");
    ran("tch", " --crate-name tch ", "");
    ran(
        "the trainer's build script",
        "/build/trainer-",
        "/build-script-build`",
    );
    ran(
        "torch-sys's build script",
        "/build/torch-sys-",
        "/build-script-build`",
    );
    let a = fs::read(&bins().trainer).unwrap();
    let b = fs::read(other.join("target/release/trainer")).unwrap();
    let leaked = |bin: &[u8], p: &Path| {
        bin.windows(p.as_os_str().len())
            .any(|w| w == p.as_os_str().as_encoded_bytes())
    };
    for (bin, which) in [(&a, "this checkout's"), (&b, "the other checkout's")] {
        for p in [&root, &other, &release] {
            assert!(!leaked(bin, p), "{} is inside {which} binary", p.display());
        }
    }
    assert!(
        a == b,
        "trainer differs between checkouts ({} vs {} bytes)",
        a.len(),
        b.len()
    );
}
