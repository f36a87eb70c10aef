//! `blob-server ROOT ACCOUNT CONTAINER`: the Blob Storage stand-in (tests/src/blob.rs) from a
//! shell, for scripts/bench-upload.sh. Prints one JSON line — `url`, `account_url`, `ca` (the
//! test CA's PEM file), `token` (the one bearer token it accepts) — then serves until killed.
//! `GET {url}/__envbuild/stats` answers `{"requests":N,"bytes":N}` (no token needed).

use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, account, container] = args.as_slice() else {
        eprintln!("usage: blob-server ROOT ACCOUNT CONTAINER");
        return ExitCode::from(2);
    };
    let token = format!("bench.{}", envbuild_e2e::tls::random(24));
    let accepted = token.clone();
    let server =
        envbuild_e2e::blob::BlobServer::start(Arc::new(move |t: &str| t == accepted), root.into());
    server.create_container(account, container);
    println!(
        "{}",
        serde_json::json!({
            "url": server.url(),
            "account_url": server.account_url(account),
            "ca": envbuild_e2e::tls::ca().pem_file(),
            "token": token,
        })
    );
    loop {
        std::thread::park();
    }
}
