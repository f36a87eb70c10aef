//! Helpers for the end-to-end tests: the release binaries (built once), the project's libtorch,
//! the locally made base image, and running commands with their output captured.

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

impl Registry {
    /// Starts an open registry, or one with htpasswd Basic auth for `user`/`password`.
    pub fn start(basic: Option<(&str, &str)>) -> Registry {
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
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
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

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
