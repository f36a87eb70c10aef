//! `blob-upload ACCOUNT_URL CONTAINER PREFIX DIR`: uploads the files under DIR to
//! `PREFIX/<path>` with `envbuild::blob` — the same library call `run --azure` makes, with the
//! default settings (8 MiB blocks, 8 requests at once) — for scripts/bench-upload.sh. The token
//! comes from `ENVBUILD_STORAGE_TOKEN`, the CA bundle from `ENVBUILD_CA_FILE`. Prints one JSON
//! line: the time spent hashing (envbuild's content addressing; a plain PUT does not hash), the
//! time spent uploading, and the report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use envbuild::auth::{Secret, StaticToken};
use envbuild::blob::{BlobSettings, BlobStore, UploadFile};
use envbuild::digest::Digest;
use sha2::Digest as _;

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(root, &p, out)?;
        } else {
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            out.push((rel, p));
        }
    }
    Ok(())
}

/// The file's sha256, read in 1 MiB pieces (never the whole file in memory).
fn hash(path: &Path) -> std::io::Result<(u64, Digest)> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok((n, Digest::from_sha256(h)));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, container, prefix, dir] = args.as_slice() else {
        eprintln!(
            "usage: blob-upload ACCOUNT_URL CONTAINER PREFIX DIR (token in ENVBUILD_STORAGE_TOKEN)"
        );
        return ExitCode::from(2);
    };
    let token = std::env::var("ENVBUILD_STORAGE_TOKEN").unwrap_or_default();
    let t0 = Instant::now();
    let mut found = Vec::new();
    if let Err(e) = walk(Path::new(dir), Path::new(dir), &mut found) {
        eprintln!("blob-upload: {dir}: {e}");
        return ExitCode::FAILURE;
    }
    let mut files = Vec::with_capacity(found.len());
    for (rel, path) in found {
        match hash(&path) {
            Ok((size, sha256)) => files.push(UploadFile {
                rel,
                path,
                size,
                sha256,
            }),
            Err(e) => {
                eprintln!("blob-upload: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let hashed = t0.elapsed();
    let settings = BlobSettings {
        ca_file: std::env::var_os("ENVBUILD_CA_FILE").map(PathBuf::from),
        ..BlobSettings::default()
    };
    let store = match BlobStore::new(
        url,
        container,
        Arc::new(StaticToken(Secret::new(token))),
        &settings,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "blob-upload: {}",
                envbuild::error::report(envbuild::error::chain(&e), envbuild::hint_of, None)
            );
            return ExitCode::FAILURE;
        }
    };
    let t1 = Instant::now();
    match store.upload_files(prefix, &files, &envbuild::progress::Hidden) {
        Ok(r) => {
            println!(
                "{{\"files\":{},\"hash_s\":{:.3},\"upload_s\":{:.3},\"bytes_sent\":{},\"requests\":{},\"uploaded\":{},\"skipped\":{}}}",
                files.len(),
                hashed.as_secs_f64(),
                t1.elapsed().as_secs_f64(),
                r.bytes_sent,
                r.requests,
                r.blobs_uploaded,
                r.blobs_skipped
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "blob-upload: {}",
                envbuild::error::report(envbuild::error::chain(&e), envbuild::hint_of, None)
            );
            ExitCode::FAILURE
        }
    }
}
