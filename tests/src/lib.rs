//! Helpers for the end-to-end tests: the release binaries (built once), the project's libtorch,
//! the locally made base image, and running commands with their output captured.

pub mod acr;
pub mod azure;
pub mod blob;
pub mod entra;
pub mod hostile;
pub mod mlflow;
pub mod proxy;
pub mod referrers;
pub mod registry;
pub mod shaping;
pub mod tls;

pub use mlflow::MlflowServer;
pub use proxy::FaultProxy;
pub use referrers::ReferrersRegistry;
pub use registry::{Registry, TokenAuth};
pub use shaping::{Shaping, ShapingProxy};

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

/// Paths of the release binaries, built once per test process (no-ops after scripts/test.sh,
/// which built both before the tests ran).
#[derive(Debug)]
pub struct Bins {
    /// The envbuild of the test build itself: `cargo build --release` with the targets and the
    /// environment `cargo test --release --workspace` has (its features, and scripts/test.sh's
    /// clippy wrapper when it is set), so that nothing is compiled a second time.
    pub envbuild: PathBuf,
    /// The trainer as images carry it: `-p trainer` alone, without the clippy wrapper.
    pub trainer: PathBuf,
}

/// The variables that make scripts/test.sh's build lint as it compiles (see there). The test
/// build's crates carry them; the trainer that goes into images must not.
pub const CLIPPY_WRAPPER_VARS: [&str; 2] = ["RUSTC_WORKSPACE_WRAPPER", "CLIPPY_ARGS"];

pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        // The trainer first and on its own: built together, Cargo would unify dependency
        // features and change its bytes.
        let out = release_build(&root(), &["-p", "trainer"], None);
        assert!(
            out.status.success(),
            "release build of the trainer failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `--bin envbuild`, not `--bins`: that would build the trainer's binary with the
        // workspace's features over target/release/trainer.
        let out = cargo(
            &root(),
            "build --release --locked --workspace --lib --tests --examples --bin envbuild",
        )
        .output()
        .expect("bash runs cargo");
        assert!(
            out.status.success(),
            "release build of envbuild failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let release = target_dir().join("release");
        Bins {
            envbuild: release.join("envbuild"),
            trainer: release.join("trainer"),
        }
    })
}

/// `CARGO_TARGET_DIR`, else the workspace's `target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// `cargo ARGS` in the checkout at `dir`, after that checkout's scripts/env.sh, without the
/// variables cargo sets for a test process (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, …): build
/// scripts that watch one (ring's does, `rerun-if-env-changed`) would otherwise run again and
/// recompile everything above them, here several minutes of what scripts/test.sh built. Nor
/// `RUSTC_BOOTSTRAP`, which a run of the test binary may set for libtest's per-test times
/// (`-Z unstable-options --report-time`, see the README) and which cargo hashes into every unit.
fn cargo(dir: &Path, args: &str) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(format!(". scripts/env.sh && exec \"{cargo}\" {args}"))
        .current_dir(dir);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "RUSTC_BOOTSTRAP",
            ]
            .contains(&k.as_ref())
        {
            c.env_remove(k.as_ref());
        }
    }
    c
}

/// The standard output of `cargo ARGS` in the checkout at `dir`, which must succeed.
pub fn cargo_stdout(dir: &Path, args: &str) -> String {
    ok(&mut cargo(dir, args))
}

/// `cargo build --release --locked ARGS` in the checkout at `dir`, with that checkout's
/// scripts/env.sh and without the clippy wrapper: how scripts/build-release.sh builds what goes
/// into images (a no-op for the trainer after scripts/test.sh).
pub fn release_build(dir: &Path, args: &[&str], target_dir: Option<&Path>) -> Output {
    let mut c = cargo(dir, &format!("build --release --locked {}", args.join(" ")));
    for v in CLIPPY_WRAPPER_VARS {
        c.env_remove(v);
    }
    if let Some(t) = target_dir {
        c.env("CARGO_TARGET_DIR", t);
    }
    c.output().expect("bash runs cargo")
}

/// An IDX file (the MNIST format): magic for unsigned bytes, the dimensions, the payload.
/// Written here, not with the trainer's own encoder, so the trainer's reader is checked against
/// the format rather than against itself.
pub fn idx_file(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// `docker/base/make-base.sh DIR [VARIANT]` into `target/e2e/DIR`, with the release envbuild and
/// a cache shared by both bases.
fn make_base(dir: &str, variant: Option<&str>) -> PathBuf {
    let dir = root().join("target/e2e").join(dir);
    let out = Command::new(root().join("docker/base/make-base.sh"))
        .arg(&dir)
        .args(variant)
        .env("ENVBUILD", &bins().envbuild)
        .env("ENVBUILD_CACHE", root().join("target/e2e/base-cache"))
        .output()
        .expect("make-base runs");
    assert!(
        out.status.success(),
        "make-base {} failed:\n{}",
        variant.unwrap_or(""),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The locally made Debian runtime base image (docker/base/make-base.sh), made once.
pub fn base_layout() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| make_base("base", None))
}

/// The locally made Python base image (docker/base/make-base.sh DIR debian-python): the
/// runtime base's packages plus Debian's python3.11, made once.
pub fn python_base_layout() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| make_base("base-python", Some("debian-python")))
}

/// The release envbuild run as uid:gid 4321:4321, a caller who is not root and has no name in
/// any image, in the docker socket's group so it reaches the engine.
pub fn envbuild_as_uid_4321() -> Command {
    let docker_gid = std::os::unix::fs::MetadataExt::gid(
        &std::fs::metadata("/var/run/docker.sock").expect("the Docker socket"),
    );
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=4321",
        "--regid=4321",
        &format!("--groups={docker_gid}"),
    ])
    .arg(&bins().envbuild);
    c
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

/// The shape of a JSON document — every key with its value's type, arrays by their first
/// element — for snapshot tests of the documented `--json` output (values change run to run,
/// shapes must not).
pub fn json_shape(v: &serde_json::Value) -> String {
    fn walk(v: &serde_json::Value, indent: usize, out: &mut String) {
        use serde_json::Value::*;
        match v {
            Null => out.push_str("null"),
            Bool(_) => out.push_str("bool"),
            Number(_) => out.push_str("number"),
            String(_) => out.push_str("string"),
            Array(a) => match a.first() {
                None => out.push_str("[]"),
                Some(first) => {
                    out.push('[');
                    walk(first, indent, out);
                    out.push(']');
                }
            },
            Object(o) => {
                out.push_str("{\n");
                for (k, v) in o {
                    out.push_str(&"  ".repeat(indent + 1));
                    out.push_str(k);
                    out.push_str(": ");
                    walk(v, indent + 1, out);
                    out.push('\n');
                }
                out.push_str(&"  ".repeat(indent));
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    walk(v, 0, &mut out);
    out
}

/// The SPDX document at `path`, after the SPDX project's own validator (`pyspdxtools`, in the
/// project venv) accepted it.
pub fn valid_spdx(path: &Path) -> serde_json::Value {
    let o = run(Command::new(root().join(".venv/bin/pyspdxtools"))
        .arg("-i")
        .arg(path));
    assert!(
        o.status.success(),
        "pyspdxtools {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The package called `name` in an SPDX document.
pub fn spdx_package<'a>(doc: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    doc["packages"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

/// Asserts that two trainer output directories hold the same training: model.safetensors
/// bit for bit, and each epoch's metrics alike but for the timings. train_loss (an f32 sum of the
/// batches' mean losses) gets a relative tolerance of 1e-5: it was seen one ulp apart between two
/// processes with bit-identical weights — the rounding of a parallel reduction that the gradients
/// do not depend on.
pub fn assert_same_training(a: &Path, b: &Path) {
    let epochs = |d: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (ea, eb) = (epochs(a), epochs(b));
    assert_eq!(ea.len(), eb.len(), "{ea:?}\n{eb:?}");
    for (x, y) in ea.iter().zip(&eb) {
        let (lx, ly) = (
            x["train_loss"].as_f64().unwrap(),
            y["train_loss"].as_f64().unwrap(),
        );
        assert!(
            (lx - ly).abs() <= 1e-5 * lx.abs().max(ly.abs()),
            "epoch {}: train_loss {lx} vs {ly}",
            x["epoch"]
        );
        for k in ["epoch", "test_loss", "test_accuracy", "device"] {
            assert_eq!(x[k], y[k], "epoch {}: {k}", x["epoch"]);
        }
    }
    assert!(
        std::fs::read(a.join("model.safetensors")).unwrap()
            == std::fs::read(b.join("model.safetensors")).unwrap(),
        "{} and {} trained different weights",
        a.display(),
        b.display()
    );
}

/// Runs the release trainer as `world` data-parallel ranks on loopback, with the variables
/// torch.distributed and Azure ML set (rank 0 at 127.0.0.1 on a free port), every rank given
/// `args` and `--output out` (rank 0 alone writes there); panics with each rank's output unless
/// all succeed.
pub fn trainer_ranks(world: usize, args: &[&str], out: &Path) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let children: Vec<_> = (0..world)
        .map(|r| {
            Command::new(&bins().trainer)
                .args(args)
                .arg("--output")
                .arg(out)
                .envs([
                    ("WORLD_SIZE", world.to_string()),
                    ("RANK", r.to_string()),
                    ("LOCAL_RANK", r.to_string()),
                    ("NODE_RANK", "0".to_owned()),
                    ("MASTER_ADDR", "127.0.0.1".to_owned()),
                    ("MASTER_PORT", port.to_string()),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (r, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "rank {r}:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The largest difference between two trainers' model.safetensors, tensor by tensor (the same
/// names and shapes are asserted).
pub fn max_weight_difference(a: &Path, b: &Path) -> f32 {
    fn tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        let mut v: Vec<(String, Vec<f32>)> = header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, t)| {
                let at = |i: usize| t["data_offsets"][i].as_u64().unwrap() as usize;
                let f = data[at(0)..at(1)]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                (k.clone(), f)
            })
            .collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    }
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(
        ta.iter().map(|t| (&t.0, t.1.len())).collect::<Vec<_>>(),
        tb.iter().map(|t| (&t.0, t.1.len())).collect::<Vec<_>>()
    );
    ta.iter()
        .zip(&tb)
        .flat_map(|(x, y)| x.1.iter().zip(&y.1).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}
