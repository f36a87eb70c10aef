//! Helpers for the end-to-end tests: the release binaries (built once), the project's libtorch,
//! the locally made base image, and running commands with their output captured.

pub mod acr;
pub mod azure;
pub mod entra;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The project venv's site-packages (made by scripts/setup.sh).
pub fn site_packages() -> PathBuf {
    let lib = root().join(".venv/lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup.sh", lib.display()))
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.join("torch").is_dir())
        .collect();
    found.pop().expect("torch in .venv; run scripts/setup.sh")
}

/// Paths of the release binaries, built once per test process (a no-op when scripts/test.sh
/// has built them already). Release, because that is what goes into images.
#[derive(Debug)]
pub struct Bins {
    pub envbuild: PathBuf,
    pub trainer: PathBuf,
}

pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        // Separately: built together, Cargo would unify dependency features and change the trainer.
        for package in ["trainer", "envbuild"] {
            let out = release_build(&root(), &["-p", package], None);
            assert!(
                out.status.success(),
                "release build of {package} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target"));
        Bins {
            envbuild: target.join("release/envbuild"),
            trainer: target.join("release/trainer"),
        }
    })
}

/// `cargo build --release --locked ARGS` in the checkout at `dir`, with that checkout's
/// scripts/env.sh (the same flags scripts/test.sh uses, so this is a no-op after it).
pub fn release_build(dir: &Path, args: &[&str], target_dir: Option<&Path>) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(format!(
            ". scripts/env.sh && exec \"{cargo}\" build --release --locked {}",
            args.join(" ")
        ))
        .current_dir(dir);
    if let Some(t) = target_dir {
        c.env("CARGO_TARGET_DIR", t);
    }
    c.output().expect("bash runs cargo")
}

/// The debug `envbuild` binary, built once per test process: for tests of the registry and
/// authentication paths, which need no release image contents.
pub fn envbuild_debug() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". scripts/env.sh && exec \"{cargo}\" build --locked -p envbuild"
            ))
            .current_dir(root())
            .output()
            .expect("bash runs cargo");
        assert!(
            out.status.success(),
            "debug build of envbuild failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target"))
            .join("debug/envbuild")
    })
}

/// The locally made Debian runtime base image (docker/base/make-base.sh), made once.
pub fn base_layout() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = root().join("target/e2e/base");
        let out = Command::new(root().join("docker/base/make-base.sh"))
            .arg(&dir)
            .env("ENVBUILD", &bins().envbuild)
            .env("ENVBUILD_CACHE", root().join("target/e2e/base-cache"))
            .output()
            .expect("make-base runs");
        assert!(
            out.status.success(),
            "make-base failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// Tests that load the CPU image into the engine and remove it again hold this, one at a time.
pub fn engine_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a command, returning its output (never panics on a non-zero exit).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What `skopeo inspect` (containers/image, another client than ours) reads of the image at
/// `reference` in a loopback registry, with `auth` (e.g. `--creds`, `U:P`); it must succeed.
pub fn skopeo_inspect(reference: &str, auth: &[&str]) -> serde_json::Value {
    let out = ok(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .args(auth)
        .arg(format!("docker://{reference}")));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("skopeo inspect {reference}: {e}"))
}

/// The last line of a command's stdout (envbuild prints the digest there).
pub fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or_default().trim().to_owned()
}

/// A real registry (Debian's docker-registry, distribution 2.8) on a free loopback port with a
/// temporary storage directory; stopped on drop.
#[derive(Debug)]
pub struct Registry {
    pub addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

/// distribution's token authentication (`auth.token`): the registry sends clients to `realm`
/// and accepts JWTs from `issuer` signed by a key whose certificate chains to a root in
/// `rootcertbundle`, for the service named by the registry's own address.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub realm: String,
    pub issuer: String,
    pub rootcertbundle: PathBuf,
}

impl Registry {
    /// Starts an open registry, or one with htpasswd Basic auth for `user`/`password`.
    pub fn start(basic: Option<(&str, &str)>) -> Registry {
        Registry::launch(basic, None)
    }

    /// Starts a registry in token-auth mode (see [`TokenAuth`]).
    pub fn start_token(token: &TokenAuth) -> Registry {
        Registry::launch(None, Some(token))
    }

    fn launch(basic: Option<(&str, &str)>, token: Option<&TokenAuth>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = basic {
            let hash = bcrypt::hash(password, 5).unwrap();
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: envbuild-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        if let Some(t) = token {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {addr}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm,
                t.issuer,
                t.rootcertbundle.display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "registry did not start on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Registry {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Registry {
    /// What the registry logged (errors only), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The registry's storage directory (every blob and manifest it holds).
    pub fn storage(&self) -> PathBuf {
        self._dir.path().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fault-injecting HTTP proxy in front of a registry: every third request is hit by the next
/// fault of a fixed cycle (5xx, 429 with Retry-After, a reset in the middle of the request body,
/// a response lost after the registry acted on the request, a stall), or by every fault when
/// `always` is set. One request per connection (`Connection: close`).
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: String,
    pub faults: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultProxy {
    pub fn start(upstream: &str, always: bool) -> FaultProxy {
        Self::spawn(upstream, if always { Mode::Always } else { Mode::Cycle })
    }

    /// A proxy that passes everything through, except that the authenticated requests number
    /// `from` to `from + count - 1` (counting from 0) reach the registry without their
    /// Authorization header, as if their token had been revoked: the registry itself answers
    /// them with 401 and its Bearer challenge. `faults` counts the requests so stripped.
    pub fn revoking(upstream: &str, from: usize, count: usize) -> FaultProxy {
        Self::spawn(upstream, Mode::Revoke(from, count))
    }

    /// A proxy that passes everything through until request `n` that carries a body (counting
    /// from 0), which it reads and then holds without an answer; `faults` becomes 1 then.
    pub fn hanging_at(upstream: &str, n: usize) -> FaultProxy {
        Self::spawn(upstream, Mode::HangAt(n))
    }

    fn spawn(upstream: &str, mode: Mode) -> FaultProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upstream = upstream.to_owned();
        let faults = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = std::sync::Arc::new(AtomicUsize::new(0));
        let authenticated = std::sync::Arc::new(AtomicUsize::new(0));
        let with_body = std::sync::Arc::new(AtomicUsize::new(0));
        let f2 = faults.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let (upstream, counter, faults) = (upstream.clone(), counter.clone(), f2.clone());
                let (authenticated, with_body) = (authenticated.clone(), with_body.clone());
                std::thread::spawn(move || {
                    // Read the head, then the body by Content-Length.
                    let mut buf = Vec::new();
                    let mut byte = [0u8; 1];
                    while !buf.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        buf.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let mut head = head;
                    if let Mode::Revoke(from, count) = mode {
                        let auth = head
                            .split_inclusive("\r\n")
                            .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                            .map(str::to_owned);
                        if let Some(line) = auth {
                            let k = authenticated.fetch_add(1, Ordering::SeqCst);
                            if (from..from + count).contains(&k) {
                                faults.fetch_add(1, Ordering::SeqCst);
                                head = head.replacen(&line, "", 1);
                            }
                        }
                    }
                    if let Mode::HangAt(hang) = mode {
                        if len > 0 && with_body.fetch_add(1, Ordering::SeqCst) == hang {
                            let mut body = vec![0u8; len];
                            let _ = client.read_exact(&mut body);
                            faults.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_secs(3600));
                            return;
                        }
                    }
                    let fault = if matches!(mode, Mode::Revoke(..) | Mode::HangAt(_)) {
                        None
                    } else if mode == Mode::Always {
                        Some(n % 3)
                    } else if n % 2 == 1 {
                        Some((n / 2) % 6)
                    } else {
                        None
                    };
                    let respond = |c: &mut std::net::TcpStream, status: &str, extra: &str| {
                        let _ = write!(c, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n");
                    };
                    // A lost answer to a PATCH kills a distribution upload session for good (its
                    // state token no longer matches), so PATCHes get resets instead.
                    let fault = if fault == Some(3) && head.starts_with("PATCH ") {
                        Some(2)
                    } else {
                        fault
                    };
                    let mut body = vec![0u8; len];
                    if let Some(2) = fault {
                        // Reset part-way through the request body: the registry never sees it.
                        if len > 0 {
                            let _ = client.read(&mut body[..len / 2 + 1]);
                        }
                        faults.fetch_add(1, Ordering::SeqCst);
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    if client.read_exact(&mut body).is_err() {
                        return;
                    }
                    match fault {
                        Some(0) => {
                            faults.fetch_add(1, Ordering::SeqCst);
                            return respond(
                                &mut client,
                                "503 Service Unavailable",
                                "Retry-After: 0\r\n",
                            );
                        }
                        Some(1) => {
                            faults.fetch_add(1, Ordering::SeqCst);
                            return respond(
                                &mut client,
                                "429 Too Many Requests",
                                "Retry-After: 1\r\n",
                            );
                        }
                        Some(4) => {
                            faults.fetch_add(1, Ordering::SeqCst);
                            return respond(&mut client, "502 Bad Gateway", "");
                        }
                        Some(5) => std::thread::sleep(std::time::Duration::from_millis(1500)),
                        _ => {}
                    }
                    let head = head
                        .replace("Connection: keep-alive", "Connection: close")
                        .replace("connection: keep-alive", "connection: close");
                    let Ok(mut up) = std::net::TcpStream::connect(&upstream) else {
                        return;
                    };
                    let _ = up.write_all(head.as_bytes());
                    let _ = up.write_all(&body);
                    let mut response = Vec::new();
                    let _ = read_response(&mut up, &mut response, head.starts_with("HEAD "));
                    if let Some(3) = fault {
                        // The registry acted on the request, but the answer is lost.
                        faults.fetch_add(1, Ordering::SeqCst);
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    let _ = client.write_all(&response);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        FaultProxy { addr, faults }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Cycle,
    Always,
    Revoke(usize, usize),
    HangAt(usize),
}

/// Reads one HTTP response (head and Content-Length body; none for HEAD) from `up`.
fn read_response(
    up: &mut std::net::TcpStream,
    out: &mut Vec<u8>,
    head_request: bool,
) -> std::io::Result<()> {
    use std::io::Read;
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        if up.read(&mut byte)? == 0 {
            return Ok(());
        }
        out.push(byte[0]);
    }
    let head = String::from_utf8_lossy(out).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    if !head_request && len > 0 {
        let mut body = vec![0u8; len];
        up.read_exact(&mut body)?;
        out.extend_from_slice(&body);
    }
    Ok(())
}
