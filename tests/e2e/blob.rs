//! The datastore client (`envbuild::blob`) against the Blob Storage stand-in: a folder up and
//! back identical, nothing sent twice, faults survived, an interrupted upload resumed with only
//! the missing blocks, the data-role and audience refusals with their hints, and a download that
//! is verified and atomic. No Docker needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use envbuild::auth::{Secret, StaticToken, TokenSource};
use envbuild::blob::{BlobError, BlobSettings, BlobStore, UploadFile, UploadReport, STORAGE_SCOPE};
use envbuild::digest::Digest;
use envbuild::http::RetryPolicy;
use envbuild::progress::Hidden;
use envbuild_e2e::blob::{BlobServer, Fault, Op};
use envbuild_e2e::entra::Entra;
use envbuild_e2e::tls;

use super::azure::token_for;

const ACCOUNT: &str = "stenvbuild";
const CONTAINER: &str = "azureml-blobstore-0000";
const MIB: u64 = 1 << 20;

struct World {
    entra: Entra,
    server: BlobServer,
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

fn world() -> World {
    let entra = Entra::start();
    let dir = tempfile::tempdir().unwrap();
    let server = BlobServer::with_entra(&entra, dir.path().join("storage"));
    server.create_container(ACCOUNT, CONTAINER);
    World {
        dir: dir.path().to_path_buf(),
        entra,
        server,
        _dir: dir,
    }
}

/// 1 MiB blocks (a real upload uses 8 MiB), 3 requests at once, quick retries.
fn settings(attempts: u32) -> BlobSettings {
    BlobSettings {
        ca_file: Some(tls::ca().pem_file().to_path_buf()),
        block_size: MIB,
        parallel: 3,
        retry: RetryPolicy {
            attempts,
            base: std::time::Duration::from_millis(10),
        },
        ..BlobSettings::default()
    }
}

fn store_with(w: &World, tokens: Arc<dyn TokenSource>, attempts: u32) -> BlobStore {
    BlobStore::new(
        &w.server.account_url(ACCOUNT),
        CONTAINER,
        tokens,
        &settings(attempts),
    )
    .unwrap()
}

fn storage_token(w: &World) -> Arc<dyn TokenSource> {
    Arc::new(StaticToken(Secret::new(token_for(&w.entra, STORAGE_SCOPE))))
}

fn store(w: &World) -> BlobStore {
    store_with(w, storage_token(w), 5)
}

/// Bytes that differ from file to file and from block to block.
fn bytes(seed: u64, n: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The files under `dir` as the upload takes them.
fn files_of(dir: &Path) -> Vec<UploadFile> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<UploadFile>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let data = std::fs::read(&p).unwrap();
                out.push(UploadFile {
                    rel: p
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/"),
                    path: p.clone(),
                    size: data.len() as u64,
                    sha256: Digest::of(&data),
                });
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

/// A folder of `small` small files (an empty one among them) in two directories, and one file
/// of `big` bytes.
fn folder(at: &Path, small: usize, big: u64) -> Vec<UploadFile> {
    for i in 0..small {
        let p = at
            .join(if i % 2 == 0 { "data" } else { "data/sub" })
            .join(format!("f{i:03}.bin"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes(i as u64, (i as u64 * 997) % 5000)).unwrap();
    }
    if big > 0 {
        std::fs::write(at.join("big.bin"), bytes(7777, big)).unwrap();
    }
    files_of(at)
}

/// Every file of `a` has the same bytes at the same place in `b`, and `b` has no other file.
fn same_tree(a: &Path, b: &Path) {
    let fa = files_of(a);
    let fb = files_of(b);
    let key = |f: &UploadFile| (f.rel.clone(), f.size, f.sha256);
    assert_eq!(
        fa.iter().map(key).collect::<Vec<_>>(),
        fb.iter().map(key).collect::<Vec<_>>()
    );
}

fn total(files: &[UploadFile]) -> u64 {
    files.iter().map(|f| f.size).sum()
}

#[test]
fn a_folder_goes_up_and_comes_back_identical_and_a_second_upload_sends_nothing() {
    let w = world();
    let src = w.dir.join("src");
    // 40 small files and one of 5.5 blocks.
    let files = folder(&src, 40, 5 * MIB + MIB / 2);
    let s = store(&w);
    let first = s
        .upload_files("LocalUpload/abc/src", &files, &Hidden)
        .unwrap();
    assert_eq!(first.blobs_uploaded, files.len());
    assert_eq!(first.blobs_skipped, 0);
    assert_eq!(first.bytes_sent, total(&files));
    // 1 listing, 1 block list, 6 blocks and a commit, one Put Blob per small file.
    assert_eq!(first.requests, 1 + 1 + 6 + 1 + 40, "{first:?}");
    // What the service holds are the very files, where the job runner mounts them from.
    same_tree(
        &src,
        &w.server
            .container_dir(ACCOUNT, CONTAINER)
            .join("LocalUpload/abc/src"),
    );
    let big = files.iter().find(|f| f.rel == "big.bin").unwrap();
    assert_eq!(
        w.server
            .metadata(ACCOUNT, CONTAINER, "LocalUpload/abc/src/big.bin")
            .unwrap()
            .get("envbuild_sha256"),
        Some(&big.sha256.hex())
    );

    // Again: one listing, nothing else.
    let (req0, bytes0) = w.server.counters();
    let second = s
        .upload_files("LocalUpload/abc/src", &files, &Hidden)
        .unwrap();
    assert_eq!(
        second,
        UploadReport {
            bytes_sent: 0,
            requests: 1,
            blobs_skipped: files.len(),
            blobs_uploaded: 0,
            blocks_reused: 0,
        }
    );
    let (req1, bytes1) = w.server.counters();
    assert_eq!((req1 - req0, bytes1 - bytes0), (1, 0));

    // And back, verified.
    let out = w.dir.join("out/model");
    let got = s
        .download_prefix("LocalUpload/abc/src", &out, &Hidden)
        .unwrap();
    assert_eq!(got.files, files.len());
    assert_eq!(got.bytes, total(&files));
    assert_eq!(got.verified, files.len());
    same_tree(&src, &out);
    // Nothing else beside it (the temporary directory is gone).
    let beside: Vec<_> = std::fs::read_dir(w.dir.join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("model")]);
}

#[test]
fn listings_follow_next_markers_page_after_page() {
    let w = world();
    w.server.page_cap(7);
    let src = w.dir.join("src");
    let files = folder(&src, 20, 0);
    let s = store(&w);
    s.upload_files("p", &files, &Hidden).unwrap();
    // 20 blobs in pages of 7: three pages, and every blob recognised as already there.
    let again = s.upload_files("p", &files, &Hidden).unwrap();
    assert_eq!(
        (again.requests, again.blobs_skipped, again.bytes_sent),
        (3, 20, 0)
    );
    let lists: Vec<_> = w
        .server
        .log()
        .into_iter()
        .filter(|l| l.op == Op::List)
        .collect();
    assert_eq!(lists.len(), 4, "{lists:?}");
    let out = w.dir.join("back");
    assert_eq!(s.download_prefix("p", &out, &Hidden).unwrap().files, 20);
    same_tree(&src, &out);
}

#[test]
fn resets_500s_and_503s_with_retry_after_are_survived_with_identical_content() {
    let w = world();
    let src = w.dir.join("src");
    let files = folder(&src, 6, 4 * MIB);
    for (op, fault) in [
        (Op::List, Fault::Internal),
        (Op::GetBlockList, Fault::Reset),
        (Op::PutBlock, Fault::Reset),
        (Op::PutBlock, Fault::Busy(1)),
        (Op::PutBlock, Fault::Internal),
        (Op::PutBlockList, Fault::Busy(1)),
        (Op::PutBlob, Fault::Reset),
        (Op::PutBlob, Fault::Internal),
    ] {
        w.server.fault(op, fault);
    }
    let s = store(&w);
    let r = s.upload_files("faults", &files, &Hidden).unwrap();
    assert_eq!(r.blobs_uploaded, files.len());
    // Every fault was met (and answered as planned).
    let statuses: Vec<u16> = w.server.log().iter().map(|l| l.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 0).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "{statuses:?}"
    );
    // More bytes than the files hold went out (the broken and refused attempts), yet what is
    // stored is exactly the files.
    assert!(r.bytes_sent > total(&files), "{r:?}");
    same_tree(
        &src,
        &w.server.container_dir(ACCOUNT, CONTAINER).join("faults"),
    );
    // The same faults on the way back.
    w.server.fault(Op::GetBlob, Fault::Internal);
    w.server.fault(Op::GetBlob, Fault::Busy(1));
    let out = w.dir.join("back");
    s.download_prefix("faults", &out, &Hidden).unwrap();
    same_tree(&src, &out);
}

#[test]
fn an_interrupted_upload_run_again_sends_only_the_missing_blocks() {
    let w = world();
    let src = w.dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), bytes(42, 8 * MIB)).unwrap();
    let files = files_of(&src);
    // The server dies after 3 blocks are stored; two attempts per request, so the client gives up.
    w.server.kill_after_blocks(3);
    let e = store_with(&w, storage_token(&w), 2)
        .upload_files("resume", &files, &Hidden)
        .unwrap_err();
    assert!(matches!(e, BlobError::Transport { .. }), "{e}");
    assert_eq!(
        w.server
            .staged_blocks(ACCOUNT, CONTAINER, "resume/big.bin")
            .len(),
        3
    );
    assert!(!w
        .server
        .container_dir(ACCOUNT, CONTAINER)
        .join("resume/big.bin")
        .exists());

    w.server.revive();
    let (_, bytes0) = w.server.counters();
    let r = store(&w).upload_files("resume", &files, &Hidden).unwrap();
    assert_eq!(r.blocks_reused, 3, "{r:?}");
    assert_eq!(r.bytes_sent, 5 * MIB, "{r:?}");
    // A listing, the block list, 5 blocks, the commit.
    assert_eq!(r.requests, 1 + 1 + 5 + 1, "{r:?}");
    // What reached the server: the 5 blocks and the block list's few hundred bytes of XML.
    let received = w.server.counters().1 - bytes0;
    assert!((5 * MIB..5 * MIB + 2048).contains(&received), "{received}");
    same_tree(
        &src,
        &w.server.container_dir(ACCOUNT, CONTAINER).join("resume"),
    );
    assert!(w
        .server
        .staged_blocks(ACCOUNT, CONTAINER, "resume/big.bin")
        .is_empty());
}

/// The error as envbuild prints it, hints included.
fn printed(e: &BlobError) -> String {
    envbuild::error::report(envbuild::error::chain(e), envbuild::hint_of, None)
}

#[test]
fn an_identity_without_the_data_role_is_told_which_role_to_get() {
    let w = world();
    let files = folder(&w.dir.join("src"), 2, 0);
    w.server.deny(&w.entra.client_id);
    let token = token_for(&w.entra, STORAGE_SCOPE);
    let s = store_with(&w, Arc::new(StaticToken(Secret::new(token.clone()))), 5);
    let e = s.upload_files("denied", &files, &Hidden).unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(403), Some("AuthorizationPermissionMismatch"))
    );
    let text = printed(&e);
    assert!(
        text.contains("\"Storage Blob Data Contributor\"")
            && text.contains(ACCOUNT)
            && text.contains(CONTAINER),
        "{text}"
    );
    assert!(!text.contains(&token) && !format!("{s:?} {e:?}").contains(&token));
    // Refused at once: a 403 is not retried.
    assert_eq!(w.server.counters().0, 1);
}

#[test]
fn a_token_for_another_audience_or_none_is_refused_as_the_service_does() {
    let w = world();
    let files = folder(&w.dir.join("src"), 1, 0);
    let arm = token_for(&w.entra, envbuild::auth::entra::ARM_SCOPE);
    let e = store_with(&w, Arc::new(StaticToken(Secret::new(arm.clone()))), 5)
        .upload_files("x", &files, &Hidden)
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(401), Some("InvalidAuthenticationInfo"))
    );
    let text = printed(&e);
    assert!(
        text.contains("Audience validation failed") && text.contains("https://storage.azure.com"),
        "{text}"
    );
    assert!(!text.contains(&arm));
    let e = store_with(&w, Arc::new(StaticToken(Secret::new("forged"))), 5)
        .upload_files("x", &files, &Hidden)
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidAuthenticationInfo"));
    // No blob was written.
    assert!(!w
        .server
        .container_dir(ACCOUNT, CONTAINER)
        .join("x")
        .exists());
    // A missing container is named.
    let s = BlobStore::new(
        &w.server.account_url(ACCOUNT),
        "nosuch",
        storage_token(&w),
        &settings(5),
    )
    .unwrap();
    let e = s.upload_files("x", &files, &Hidden).unwrap_err();
    assert_eq!(e.code(), Some("ContainerNotFound"));
    assert!(printed(&e).contains("container nosuch"), "{}", printed(&e));
}

#[test]
fn a_corrupted_blob_fails_the_download_and_leaves_nothing_behind() {
    let w = world();
    let src = w.dir.join("src");
    let files = folder(&src, 5, 2 * MIB);
    let s = store(&w);
    s.upload_files("out", &files, &Hidden).unwrap();
    // One byte of the stored blob changes; its size and metadata do not.
    let stored = w
        .server
        .container_dir(ACCOUNT, CONTAINER)
        .join("out/big.bin");
    let mut data = std::fs::read(&stored).unwrap();
    data[MIB as usize + 5] ^= 0xff;
    std::fs::write(&stored, data).unwrap();
    let to = w.dir.join("dl/model");
    let e = s.download_prefix("out", &to, &Hidden).unwrap_err();
    assert!(
        matches!(&e, BlobError::Corrupt { name, .. } if name == "out/big.bin"),
        "{e}"
    );
    assert!(printed(&e).contains("metadata says"), "{}", printed(&e));
    assert!(!to.exists());
    assert_eq!(
        std::fs::read_dir(w.dir.join("dl")).unwrap().count(),
        0,
        "a temporary directory was left"
    );
    // A prefix with nothing under it is an error, not an empty directory.
    let e = s
        .download_prefix("nothing", &w.dir.join("dl/none"), &Hidden)
        .unwrap_err();
    assert!(matches!(e, BlobError::NothingThere { .. }), "{e}");
    assert!(!w.dir.join("dl/none").exists());
}

#[test]
fn a_file_that_changed_since_it_was_hashed_is_never_committed() {
    let w = world();
    let src = w.dir.join("src");
    let mut files = folder(&src, 1, 3 * MIB);
    // The sizes stay, the bytes change after hashing.
    for f in &mut files {
        let mut d = std::fs::read(&f.path).unwrap();
        if let Some(b) = d.last_mut() {
            *b ^= 1;
            std::fs::write(&f.path, d).unwrap();
        }
    }
    let e = store(&w)
        .upload_files("changed", &files, &Hidden)
        .unwrap_err();
    assert!(matches!(e, BlobError::Changed { .. }), "{e}");
    assert!(!w
        .server
        .container_dir(ACCOUNT, CONTAINER)
        .join("changed/big.bin")
        .exists());
}

/// One raw request to the stand-in: status, headers, body as text.
fn raw(
    w: &World,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tls::ca().pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let mut rb = http
        .request(
            method.parse().unwrap(),
            format!("{}/{ACCOUNT}/{CONTAINER}{path_and_query}", w.server.url()),
        )
        .body(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.text().unwrap())
}

fn xml_code(body: &str) -> &str {
    body.split("<Code>")
        .nth(1)
        .and_then(|r| r.split("</Code>").next())
        .unwrap_or("")
}

#[test]
fn the_stand_in_answers_as_the_service_does() {
    let w = world();
    let token = token_for(&w.entra, STORAGE_SCOPE);
    let bearer = format!("Bearer {token}");
    let auth = [
        ("authorization", bearer.as_str()),
        ("x-ms-version", "2025-01-05"),
    ];
    // A bearer token needs x-ms-version 2017-11-09 or later.
    let (s, h, b) = raw(
        &w,
        "GET",
        "?restype=container&comp=list",
        &[("authorization", &bearer)],
        vec![],
    );
    assert_eq!((s, xml_code(&b)), (403, "AuthenticationFailed"), "{b}");
    assert_eq!(h["x-ms-error-code"], "AuthenticationFailed");
    assert!(
        b.contains("Authentication scheme Bearer is not supported in this version."),
        "{b}"
    );
    let (s, _, b) = raw(&w, "GET", "?restype=container&comp=list", &[], vec![]);
    assert_eq!((s, xml_code(&b)), (401, "NoAuthenticationInformation"));
    // Put Blob needs its blob type; then it is a plain file with its metadata.
    let (s, _, b) = raw(&w, "PUT", "/a/b.txt", &auth, b"hello".to_vec());
    assert_eq!((s, xml_code(&b)), (400, "MissingRequiredHeader"));
    let mut put = auth.to_vec();
    put.extend([
        ("x-ms-blob-type", "BlockBlob"),
        ("x-ms-meta-envbuild_sha256", "abc"),
    ]);
    assert_eq!(raw(&w, "PUT", "/a/b.txt", &put, b"hello".to_vec()).0, 201);
    assert_eq!(
        std::fs::read(w.server.container_dir(ACCOUNT, CONTAINER).join("a/b.txt")).unwrap(),
        b"hello"
    );
    // Properties: metadata as x-ms-meta-*; a missing blob is a bodiless 404 with its code.
    let (s, h, _) = raw(&w, "HEAD", "/a/b.txt", &auth, vec![]);
    assert_eq!(
        (s, &h["x-ms-meta-envbuild_sha256"], &h["content-length"]),
        (200, &"abc".parse().unwrap(), &"5".parse().unwrap())
    );
    let (s, h, b) = raw(&w, "HEAD", "/a/none", &auth, vec![]);
    assert_eq!(
        (s, &h["x-ms-error-code"], b.as_str()),
        (404, &"BlobNotFound".parse().unwrap(), "")
    );
    // Ranges: 206 with Content-Range; past the end, 416 InvalidRange.
    let mut range = auth.to_vec();
    range.push(("x-ms-range", "bytes=1-3"));
    let (s, h, b) = raw(&w, "GET", "/a/b.txt", &range, vec![]);
    assert_eq!(
        (s, h["content-range"].to_str().unwrap(), b.as_str()),
        (206, "bytes 1-3/5", "ell")
    );
    range[2] = ("x-ms-range", "bytes=9-");
    let (s, _, b) = raw(&w, "GET", "/a/b.txt", &range, vec![]);
    assert_eq!((s, xml_code(&b)), (416, "InvalidRange"));
    // Blocks: ids of one length, a block list naming only blocks that exist.
    assert_eq!(
        raw(
            &w,
            "PUT",
            "/c?comp=block&blockid=QUFB",
            &auth,
            b"xy".to_vec()
        )
        .0,
        201
    );
    let (s, _, b) = raw(
        &w,
        "PUT",
        "/c?comp=block&blockid=QkJCQg%3D%3D",
        &auth,
        b"z".to_vec(),
    );
    assert_eq!((s, xml_code(&b)), (400, "InvalidBlockId"));
    let (s, _, b) = raw(
        &w,
        "GET",
        "/c?comp=blocklist&blocklisttype=uncommitted",
        &auth,
        vec![],
    );
    assert_eq!(s, 200);
    assert!(
        b.contains(
            "<UncommittedBlocks><Block><Name>QUFB</Name><Size>2</Size></Block></UncommittedBlocks>"
        ),
        "{b}"
    );
    let list = |ids: &str| {
        format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>{ids}</BlockList>")
            .into_bytes()
    };
    let (s, _, b) = raw(
        &w,
        "PUT",
        "/c?comp=blocklist",
        &auth,
        list("<Latest>QUFB</Latest><Latest>Q0ND</Latest>"),
    );
    assert_eq!((s, xml_code(&b)), (400, "InvalidBlockList"));
    assert_eq!(
        raw(
            &w,
            "PUT",
            "/c?comp=blocklist",
            &auth,
            list("<Uncommitted>QUFB</Uncommitted>")
        )
        .0,
        201
    );
    // Committed now; the block can be named again as Committed.
    assert_eq!(
        raw(
            &w,
            "PUT",
            "/c?comp=blocklist",
            &auth,
            list("<Committed>QUFB</Committed><Latest>QUFB</Latest>")
        )
        .0,
        201
    );
    assert_eq!(
        std::fs::read(w.server.container_dir(ACCOUNT, CONTAINER).join("c")).unwrap(),
        b"xyxy"
    );
    let (s, _, b) = raw(
        &w,
        "GET",
        "/none?comp=blocklist&blocklisttype=all",
        &auth,
        vec![],
    );
    assert_eq!((s, xml_code(&b)), (404, "BlobNotFound"));
    // Listing: names in order, metadata when asked, paging by an opaque marker.
    let (s, _, b) = raw(
        &w,
        "GET",
        "?restype=container&comp=list&maxresults=1&include=metadata",
        &auth,
        vec![],
    );
    assert_eq!(s, 200);
    assert!(
        b.contains("<Name>a/b.txt</Name>")
            && b.contains("<Metadata><envbuild_sha256>abc</envbuild_sha256></Metadata>"),
        "{b}"
    );
    let marker = b
        .split("<NextMarker>")
        .nth(1)
        .unwrap()
        .split("</NextMarker>")
        .next()
        .unwrap()
        .to_owned();
    let (_, _, b) = raw(
        &w,
        "GET",
        &format!(
            "?restype=container&comp=list&maxresults=1&marker={}",
            envbuild::http::percent_encode(&marker)
        ),
        &auth,
        vec![],
    );
    assert!(
        b.contains("<Name>c</Name>") && b.contains("<NextMarker />") && !b.contains("<Metadata>"),
        "{b}"
    );
    let (s, _, b) = raw(
        &w,
        "GET",
        "?restype=container&comp=list&maxresults=0",
        &auth,
        vec![],
    );
    assert_eq!((s, xml_code(&b)), (400, "OutOfRangeQueryParameterValue"));
}

/// Records what the upload reports.
#[derive(Default)]
struct Seen(std::sync::Mutex<Vec<String>>);

impl envbuild::progress::TaskSink for Seen {
    fn set(&self, b: u64) {
        self.0.lock().unwrap().push(format!("set {b}"));
    }
    fn note(&self, t: &str) {
        self.0.lock().unwrap().push(format!("note {t}"));
    }
    fn finish(&self, o: &str) {
        self.0.lock().unwrap().push(format!("finish {o}"));
    }
}

struct Shown(Arc<Seen>, std::sync::Mutex<Vec<String>>);

impl envbuild::progress::Progress for Shown {
    fn task(
        &self,
        kind: envbuild::progress::Kind,
        label: &str,
        total: Option<u64>,
    ) -> envbuild::progress::Task {
        self.1
            .lock()
            .unwrap()
            .push(format!("{kind:?} {label} {total:?}"));
        envbuild::progress::Task::new(self.0.clone())
    }
}

#[test]
fn an_upload_reports_its_bytes_and_what_it_sent() {
    let w = world();
    let files = folder(&w.dir.join("src"), 4, 2 * MIB);
    let seen = Arc::new(Seen::default());
    let shown = Shown(seen.clone(), Default::default());
    store(&w)
        .upload_files("LocalUpload/h/src", &files, &shown)
        .unwrap();
    let tasks = shown.1.lock().unwrap().clone();
    assert_eq!(
        tasks,
        vec![format!(
            "Upload LocalUpload/h/src (5 files) Some({})",
            total(&files)
        )]
    );
    let events = seen.0.lock().unwrap().clone();
    assert!(
        events.contains(&format!("set {}", total(&files))),
        "{events:?}"
    );
    assert!(
        events
            .last()
            .unwrap()
            .starts_with("finish sent 2.0 MiB in 9 requests; 5 blobs written, 0 already there"),
        "{events:?}"
    );
}
