//! How pushes and pulls spend round trips and connections, seen from a proxy that records every
//! request to a real registry: a push after a change opens its upload sessions beside the
//! checks (and cancels those it did not need), a pull fetches a large layer as parallel range
//! requests, verified, and copes with a server that ignores ranges or corrupts them.

use std::fs;
use std::path::Path;
use std::process::Command;

use envbuild::digest::Digest;
use envbuild_e2e::proxy::FaultProxy;
use envbuild_e2e::{bins, run, Registry};
use serde_json::Value;

use super::build::{checkout, envbuild, layout_blobs};

/// `envbuild push ENV DEST --cache CACHE --json`; the summary.
fn push(env: &Path, dest: &str, cache: &Path) -> Value {
    let o = run(envbuild()
        .args(["push", "--json"])
        .arg(env)
        .arg(dest)
        .arg("--cache")
        .arg(cache));
    assert!(
        o.status.success(),
        "push failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The upload sessions the registry still holds open for `repository`: distribution keeps a
/// session's `startedat` until it is completed or cancelled (a cancelled one leaves an empty
/// `hashstates` folder behind, and answers 404).
fn open_sessions(reg: &Registry, repository: &str) -> usize {
    let dir = reg
        .storage()
        .join("docker/registry/v2/repositories")
        .join(repository)
        .join("_uploads");
    fs::read_dir(dir).map_or(0, |d| {
        d.filter(|e| e.as_ref().unwrap().path().join("startedat").exists())
            .count()
    })
}

/// Appends a byte to the checkout's trainer: a new trainer layer and config.
fn change_trainer(env: &Path) {
    let trainer = env.parent().unwrap().join("bin/trainer");
    let mut bytes = fs::read(&trainer).unwrap();
    bytes.push(1);
    fs::write(&trainer, bytes).unwrap();
}

#[test]
fn a_push_after_a_change_opens_sessions_beside_the_checks_and_cancels_the_unneeded() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let env = checkout(&t.path().join("c"), false);
    let (cache, other_cache) = (t.path().join("cache"), t.path().join("other-cache"));
    // Every push goes through one proxy that records (the ledger knows registries by address).
    let proxy = FaultProxy::observing(&reg.addr);
    push(&env, &format!("{}/waves/repro:v1", proxy.addr), &cache);

    // After a change: the new blobs' sessions are opened with their checks (the ledger knows
    // this repository holds the others), each one used once.
    change_trainer(&env);
    proxy.requests.lock().unwrap().clear();
    let s = push(&env, &format!("{}/waves/repro:v2", proxy.addr), &cache);
    assert_eq!(
        (s["uploaded"].as_u64(), s["skipped"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    let posts = proxy.requests_starting("POST /v2/waves/repro/blobs/uploads/");
    let puts = proxy.requests_starting("PUT /v2/waves/repro/blobs/uploads/");
    // The trainer layer and the config, and the referrers' new documents.
    assert!(posts.len() >= 2, "{posts:?}");
    assert_eq!(posts.len(), puts.len(), "{posts:?}\n{puts:?}");
    assert_eq!(proxy.requests_starting("DELETE "), Vec::<String>::new());
    // Every blob was checked, the unchanged ones too.
    let heads = proxy.requests_starting("HEAD /v2/waves/repro/blobs/");
    assert!(heads.len() >= 4, "{heads:?}");
    assert_eq!(open_sessions(&reg, "waves/repro"), 0);

    // Another change, pushed first from another machine (a cache whose ledger knows nothing):
    // this cache's ledger expects the new blobs to be missing, the checks find them, and the
    // sessions opened beside the checks are cancelled, not left open.
    change_trainer(&env);
    let direct = push(&env, &format!("{}/waves/repro:v3", reg.addr), &other_cache);
    assert_eq!(direct["uploaded"].as_u64(), Some(2), "{direct}");
    proxy.requests.lock().unwrap().clear();
    let s = push(&env, &format!("{}/waves/repro:v3", proxy.addr), &cache);
    assert_eq!(
        (s["uploaded"].as_u64(), s["skipped"].as_u64()),
        (Some(0), Some(4)),
        "{s}"
    );
    let deletes = proxy.requests_starting("DELETE /v2/waves/repro/blobs/uploads/");
    assert!(deletes.len() >= 2, "{deletes:?}");
    assert_eq!(open_sessions(&reg, "waves/repro"), 0);
    let digest = |v: &Value| {
        v["reference"]
            .as_str()
            .unwrap()
            .rsplit_once('@')
            .unwrap()
            .1
            .to_owned()
    };
    assert_eq!(digest(&s), digest(&direct));
}

/// `envbuild pull REF --output oci:OUT --cache CACHE`.
fn pull(reference: &str, out: &Path, cache: &Path) -> std::process::Output {
    run(Command::new(&bins().envbuild)
        .args(["pull", reference, "--json", "--cache"])
        .arg(cache)
        .arg("--output")
        .arg(format!("oci:{}", out.display())))
}

#[test]
fn pull_fetches_a_large_layer_as_parallel_ranges_verified_whatever_the_server_does() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    // 80 MiB and 5 bytes: two whole 32 MiB parts and a short last one.
    let (src, layer) = super::hostile::layout(t.path(), (80 << 20) + 5);
    let digest: Digest = format!("sha256:{}", layer.file_name().unwrap().to_string_lossy())
        .parse()
        .unwrap();
    let o = run(envbuild()
        .args(["push", "-q"])
        .arg(format!("oci:{}", src.display()))
        .arg(format!("{}/big/one:v1", reg.addr)));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let layer_gets = |proxy: &FaultProxy| {
        let mut v = proxy.requests_starting(&format!("GET /v2/big/one/blobs/{digest}"));
        v.sort();
        v
    };

    // Parts of 32 MiB, each asked for once, and the blob the same as the one pushed.
    let proxy = FaultProxy::observing(&reg.addr);
    let out = t.path().join("ranged");
    let o = pull(
        &format!("{}/big/one:v1", proxy.addr),
        &out,
        &t.path().join("cache-1"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let get = format!("GET /v2/big/one/blobs/{digest} Range: bytes=");
    assert_eq!(
        layer_gets(&proxy),
        vec![
            format!("{get}0-33554431"),
            format!("{get}33554432-67108863"),
            format!("{get}67108864-83886084"),
        ]
    );
    assert_eq!(layout_blobs(&out), layout_blobs(&src));

    // A server that ignores ranges answers the first with the whole blob: one stream instead.
    let proxy = FaultProxy::ignoring_ranges(&reg.addr);
    let out = t.path().join("whole");
    let o = pull(
        &format!("{}/big/one:v1", proxy.addr),
        &out,
        &t.path().join("cache-2"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(layer_gets(&proxy).len(), 2, "{:?}", layer_gets(&proxy));
    assert_eq!(layout_blobs(&out), layout_blobs(&src));

    // Corrupted parts: the pull fails naming the layer, and nothing lands in the cache or the
    // output.
    let proxy = FaultProxy::corrupting_ranges(&reg.addr);
    let (out, cache) = (t.path().join("corrupt"), t.path().join("cache-3"));
    let o = pull(&format!("{}/big/one:v1", proxy.addr), &out, &cache);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(stderr.contains(&digest.to_string()), "{stderr}");
    assert!(
        !cache.join("blobs/sha256").join(digest.hex()).exists(),
        "a corrupt blob reached the cache"
    );
    assert!(!out.join("index.json").exists(), "{stderr}");
}
