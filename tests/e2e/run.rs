//! `envbuild run --local` on the real Docker engine: the CPU image trains on a Fashion-MNIST
//! subset, as the caller, with the trainer's exit code; an interrupted run leaves a checkpoint
//! that `--resume` finishes; the image pulled back from a registry behaves the same.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envbuild_e2e::{base_layout, engine_lock, envbuild_as_uid_4321, ok, root, run, Registry};
use serde_json::Value;

use super::build::envbuild;

pub(crate) const DATA: &str = "/usr/share/datasets/fashion-mnist";
const SHORT: [&str; 6] = [
    "--limit-train",
    "2000",
    "--limit-test",
    "500",
    "--threads",
    "2",
];

pub(crate) fn cpu_env() -> PathBuf {
    root().join("environments/mnist-cpu.toml")
}

/// A cache shared by these tests, inside the project (kept between test runs).
fn cache() -> PathBuf {
    root().join("target/e2e/run-cache")
}

/// `envbuild run --local SOURCE --outputs OUT [extra] -- ARGS`.
pub(crate) fn run_local(source: &str, outputs: &Path, extra: &[&str], args: &[&str]) -> Command {
    let mut c = envbuild();
    c.args(["run", "--local", source, "--cache"])
        .arg(cache())
        .arg("--outputs")
        .arg(outputs)
        .args(extra)
        .arg("--")
        .args(args);
    c
}

/// The container ID envbuild announces on stderr.
fn container_id(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("container "))
        .unwrap_or_else(|| panic!("no container line in:\n{stderr}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn container_exists(id: &str) -> bool {
    run(Command::new("docker").args(["container", "inspect", id]))
        .status
        .success()
}

/// Per-epoch results without the timings: what must match between two identical runs.
fn results(outputs: &Path) -> Vec<Value> {
    fs::read_to_string(outputs.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            serde_json::json!([
                v["epoch"],
                v["train_loss"],
                v["test_loss"],
                v["test_accuracy"]
            ])
        })
        .collect()
}

#[test]
fn trains_in_the_engine_as_the_caller_and_returns_the_trainers_exit_code() {
    let _engine = engine_lock();
    let t = tempfile::tempdir().unwrap();
    // A caller who is not root: uid 4321, in the docker group for the socket.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let outputs = t.path().join("outputs");
    let mut c = envbuild_as_uid_4321();
    c.args(["run", "--local"])
        .arg(cpu_env())
        .arg("--cache")
        .arg(t.path().join("cache"))
        .arg("--outputs")
        .arg(&outputs)
        .args(["--data", DATA, "--", "--epochs", "1"])
        .args(SHORT)
        .env("HOME", t.path())
        .env("ENVBUILD_BASE", base_layout());
    let o = run(&mut c);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("no nvidia runtime in the Docker engine: running on the CPU"),
        "{stderr}"
    );
    // The trainer's own log lines come through, and envbuild sums up.
    assert!(stdout.contains("epoch 1/1"), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("test accuracy ") && last.ends_with("/outputs/model.safetensors"),
        "{last}"
    );
    for f in [
        "model.safetensors",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "summary.json",
    ] {
        let m = fs::metadata(outputs.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(
            (m.uid(), m.gid()),
            (4321, 4321),
            "{f} belongs to the caller"
        );
    }
    assert_eq!(results(&outputs).len(), 1);
    assert!(
        !container_exists(&container_id(&stderr)),
        "the container is removed"
    );

    // Bad data: the trainer's message and a non-zero exit come through; --keep keeps the container.
    let bad = t.path().join("bad");
    fs::create_dir(&bad).unwrap();
    for f in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        fs::write(bad.join(f), b"not an IDX file").unwrap();
    }
    let mut c = run_local(
        cpu_env().to_str().unwrap(),
        &t.path().join("out-bad"),
        &["--keep", "--data", bad.to_str().unwrap()],
        &["--epochs", "1"],
    );
    let o = run(&mut c);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("train-images-idx3-ubyte") && stderr.contains("magic"),
        "the trainer's message: {stderr}"
    );
    assert!(stderr.contains("envbuild: the trainer exited with code 1"));
    let id = container_id(&stderr);
    assert!(container_exists(&id), "--keep keeps it");
    ok(Command::new("docker").args(["rm", "-f", &id]));
}

#[test]
fn an_interrupted_run_stops_the_container_and_resume_finishes_it() {
    let _engine = engine_lock();
    let t = tempfile::tempdir().unwrap();
    let outputs = t.path().join("outputs");
    let mut c = run_local(
        cpu_env().to_str().unwrap(),
        &outputs,
        &["--data", DATA, "--stop-timeout", "20"],
        &["--epochs", "50"],
    );
    c.args(SHORT).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // Stop it once the first epoch's checkpoint is there.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !outputs.join("checkpoint.safetensors").exists() {
        assert!(Instant::now() < deadline, "no checkpoint after 300 s");
        assert!(child.try_wait().unwrap().is_none(), "envbuild ended early");
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("add `-- --resume` to continue"), "{stderr}");
    assert!(
        !container_exists(&container_id(&stderr)),
        "the container is gone"
    );
    assert!(
        !outputs.join("model.safetensors").exists(),
        "it was stopped"
    );
    let done = results(&outputs).len();
    assert!((1..50).contains(&done), "{done} epochs");

    let epochs = (done + 1).to_string();
    let mut c = run_local(
        cpu_env().to_str().unwrap(),
        &outputs,
        &["--data", DATA],
        &["--epochs", &epochs, "--resume"],
    );
    c.args(SHORT);
    let out = ok(&mut c);
    assert!(out.contains("test accuracy"), "{out}");
    assert_eq!(results(&outputs).len(), done + 1, "one more epoch, resumed");
    assert!(outputs.join("model.safetensors").exists());
}

/// The CPU environment with one more variable in its config, written under `dir`: the same
/// layers (cached) in an image of its own ID. A test that removes its image from the engine
/// removes this one: the CPU image itself may be running in another test's container (the Azure
/// stand-in runs jobs on the engine), and the engine refuses to remove an image in use.
fn own_cpu_image(dir: &Path) -> PathBuf {
    let root = root();
    let text = fs::read_to_string(cpu_env())
        .unwrap()
        .replace("${PROJECT_ROOT}", root.to_str().unwrap())
        .replace(
            "${CARGO_TARGET_DIR}",
            envbuild_e2e::target_dir().to_str().unwrap(),
        )
        .replacen("name = \"mnist-cpu\"", "name = \"mnist-cpu-own\"", 1)
        .replacen(
            "[config.env]\n",
            "[config.env]\nENVBUILD_TEST_IMAGE = \"its own\"\n",
            1,
        );
    assert!(text.contains("ENVBUILD_TEST_IMAGE"), "{text}");
    let dir = dir.join("environments");
    fs::create_dir_all(&dir).unwrap();
    // ENVBUILD_SITE defaults to the site-packages of PROJECT_ROOT/.venv, here the file's parent.
    std::os::unix::fs::symlink(root.join(".venv"), dir.parent().unwrap().join(".venv")).unwrap();
    let path = dir.join("mnist-cpu-own.toml");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_image_pulled_from_a_registry_by_tag_runs_the_same() {
    let _engine = engine_lock();
    let t = tempfile::tempdir().unwrap();
    let env = own_cpu_image(t.path());
    let args = ["--epochs", "1", "--seed", "7"];
    let local = t.path().join("local");
    let mut c = run_local(env.to_str().unwrap(), &local, &["--data", DATA], &args);
    let o = run(c.args(SHORT));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("running sha256:"))
        .and_then(|l| l.split(':').next())
        .map(|hex| format!("sha256:{hex}"))
        .unwrap_or_else(|| panic!("run by image ID: {stderr}"));

    let reg = Registry::start(None);
    let dest = format!("{}/envbuild/mnist-cpu:run", reg.addr);
    let mut c = envbuild();
    c.arg("push")
        .arg(&env)
        .arg(&dest)
        .arg("--cache")
        .arg(cache());
    let pushed = envbuild_e2e::last_line(&ok(&mut c));
    // Out of the engine (every tag of it), so that the run must pull it.
    ok(Command::new("docker").args(["rmi", "-f", &id]));

    let remote = t.path().join("remote");
    let mut c = run_local(&dest, &remote, &["--data", DATA], &args);
    let o = run(c.args(SHORT));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let digest = pushed.rsplit_once('@').unwrap().1;
    assert!(
        stderr.contains(&format!("{dest} is {digest}"))
            && stderr.contains(&format!("pulling {}/envbuild/mnist-cpu@{digest}", reg.addr)),
        "resolved by digest and pulled: {stderr}"
    );
    // Same image, same seed: the same training.
    envbuild_e2e::assert_same_training(&remote, &local);
}

#[test]
fn no_engine_and_bad_flags_are_one_clear_error_each() {
    let t = tempfile::tempdir().unwrap();
    let env = cpu_env();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--data", DATA],
            "no Docker engine at unix:///nonexistent/docker.sock — is the daemon running?",
        ),
        (
            &["--data", "/nonexistent/data"],
            "--data /nonexistent/data: not a directory",
        ),
        (
            &["--data", DATA, "-e", "1X=2"],
            "--env 1X=2: `1X` is not a variable name",
        ),
        (
            &["--data", DATA, "--user", "bob"],
            "--user bob: expected UID:GID",
        ),
    ];
    for (extra, expect) in cases {
        let mut c = run_local(env.to_str().unwrap(), &t.path().join("out"), extra, &[]);
        c.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
        let o = run(&mut c);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expect), "{expect}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    let o = run(envbuild().args(["run", "--data", DATA]).arg(&env));
    assert!(String::from_utf8_lossy(&o.stderr).contains("say where to run: `envbuild run --local"));
}

/// A sink that keeps what the run said, for the library-level test.
#[derive(Default)]
struct Collected {
    stdout: std::sync::Mutex<Vec<u8>>,
    messages: std::sync::Mutex<Vec<String>>,
}

impl envbuild::engine::run::Sink for Collected {
    fn output(&self, stream: envbuild::engine::run::Stream, bytes: &[u8]) {
        if stream == envbuild::engine::run::Stream::Stdout {
            self.stdout.lock().unwrap().extend_from_slice(bytes);
        }
    }
    fn message(&self, text: &str) {
        self.messages.lock().unwrap().push(text.to_owned());
    }
}

#[test]
fn run_local_is_a_library_call_whose_output_goes_to_the_callers_sink() {
    use envbuild::engine::local::{run_local, LocalRun};
    use envbuild::engine::run::{Gpus, Outcome};
    let _engine = engine_lock();
    let t = tempfile::tempdir().unwrap();
    // The environment file names its base through this variable, as the CLI tests pass it.
    std::env::set_var("ENVBUILD_BASE", base_layout());
    let run = LocalRun {
        source: cpu_env().display().to_string(),
        data: DATA.into(),
        outputs: t.path().join("outputs"),
        args: ["--epochs", "1"]
            .iter()
            .chain(SHORT.iter())
            .map(|s| s.to_string())
            .collect(),
        env: vec![],
        shm_size: Some(1 << 30),
        memory: None,
        gpus: Gpus::None,
        user: None,
        stop_timeout: 10,
        keep: false,
        ranks: 1,
        code: None,
    };
    let cache = envbuild::cache::Cache::open(&cache()).unwrap();
    let settings = envbuild::build::Settings {
        threads: 2,
        source_date_epoch: 0,
        skip_link_check: false,
        registry: envbuild::registry::Settings::default(),
        sbom_format: envbuild::sbom::Format::default(),
    };
    let sink = std::sync::Arc::new(Collected::default());
    let finished = run_local(&run, &cache, &settings, sink.clone()).expect("the run starts");
    assert_eq!(
        finished.outcome,
        Outcome::Exited {
            code: 0,
            oom_killed: false
        }
    );
    assert!(finished.test_accuracy().is_some_and(|a| a > 0.3));
    assert!(finished.outputs.join("model.safetensors").is_file());
    let stdout = String::from_utf8_lossy(&sink.stdout.lock().unwrap()).into_owned();
    assert!(
        stdout.contains("epoch 1/1"),
        "the trainer's output reached the sink: {stdout}"
    );
    let messages = sink.messages.lock().unwrap().join("\n");
    assert!(
        messages.contains("--gpus none: running on the CPU") && messages.contains("container "),
        "{messages}"
    );
    assert!(!container_exists(&finished.container), "removed");
    // Bad input is one typed error before anything starts.
    let bad = LocalRun {
        data: t.path().join("missing"),
        ..run
    };
    let e = run_local(&bad, &cache, &settings, sink).unwrap_err();
    assert!(
        e.to_string().contains("--data") && e.to_string().contains("not a directory"),
        "{e}"
    );
}

/// An environment file in `dir` on the local base: a layer with `dir/note.txt` (written unless
/// there) at /note.txt plus `more_files` (TOML `[[layer.files]]` entries), and `entrypoint`.
pub(crate) fn note_env(dir: &Path, name: &str, more_files: &str, entrypoint: &str) -> PathBuf {
    if !dir.join("note.txt").exists() {
        fs::write(dir.join("note.txt"), format!("{name}\n")).unwrap();
    }
    let env = dir.join(format!("{name}.toml"));
    fs::write(
        &env,
        format!(
            "name = \"{name}\"\n[base]\noci = \"{}\"\n\n[[layer]]\nname = \"note\"\n[[layer.files]]\nsrc = \"note.txt\"\ndest = \"/note.txt\"\n{more_files}\n[config]\nentrypoint = {entrypoint}\n",
            base_layout().display()
        ),
    )
    .unwrap();
    env
}

/// A container that ignores SIGTERM would hold `run --local` for the whole stop timeout after
/// Ctrl-C; a second Ctrl-C kills it at once, as docker's second interrupt does.
#[test]
fn a_second_interrupt_kills_the_container_at_once() {
    use std::io::BufRead as _;
    let _engine = engine_lock();
    let t = tempfile::tempdir().unwrap();
    // The base has only dash; the host's sleep needs nothing but its libc (Debian 12 as well).
    let env = note_env(
        t.path(),
        "stubborn",
        "[[layer.files]]\nsrc = \"/bin/sleep\"\ndest = \"/bin/sleep\"\nmode = 0o755\n",
        r#"["/bin/sh", "-c", "trap '' TERM INT; echo stubborn-ready; while :; do sleep 1; done"]"#,
    );
    let outputs = t.path().join("outputs");
    let mut c = run_local(
        env.to_str().unwrap(),
        &outputs,
        &["--stop-timeout", "120"],
        &[],
    );
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx2.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let mut seen = Vec::new();
    let wait_for = |needle: &str, seen: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(240);
        while !seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("no `{needle}` in:\n{}", seen.join("\n")),
            }
        }
    };
    wait_for("stubborn-ready", &mut seen);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    wait_for("interrupt again", &mut seen);
    let second = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let took = second.elapsed();
    wait_for("killing the container", &mut seen);
    assert!(
        took < Duration::from_secs(30),
        "took {took:?} of a 120 s stop timeout"
    );
    assert_eq!(status.code(), Some(130), "{}", seen.join("\n"));
    assert!(
        !container_exists(&container_id(&seen.join("\n"))),
        "the container is gone"
    );
}

/// `run --local` takes what `build --output` writes, as `push` does: an OCI layout and a
/// docker archive are loaded (the engine's image ID is the config digest) and run.
#[test]
fn run_local_takes_the_layouts_and_archives_build_writes() {
    let _engine = engine_lock();
    let t = tempfile::tempdir().unwrap();
    // A note unique to this run: a new image, which the engine cannot have yet.
    let token = format!(
        "note-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    fs::write(t.path().join("note.txt"), format!("{token}\n")).unwrap();
    let env = note_env(
        t.path(),
        "note",
        "",
        r#"["/bin/sh", "-c", "read l < /note.txt; echo \"$l\"; exit 3"]"#,
    );
    let layout = t.path().join("layout");
    let archive = t.path().join("image.tar");
    for out in [
        format!("oci:{}", layout.display()),
        format!("docker-archive:{}", archive.display()),
    ] {
        ok(envbuild()
            .arg("build")
            .arg(&env)
            .arg("--cache")
            .arg(cache())
            .args(["--output", &out]));
    }
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .replace("sha256:", "");
    let manifest: Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(m)).unwrap()).unwrap();
    let id = manifest["config"]["digest"].as_str().unwrap().to_owned();
    for source in [
        format!("oci:{}", layout.display()),
        format!("docker-archive:{}", archive.display()),
    ] {
        let _ = run(Command::new("docker").args(["image", "rm", "-f", &id]));
        let outputs = t.path().join("outputs");
        let o = run(&mut run_local(&source, &outputs, &[], &[]));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert_eq!(
            o.status.code(),
            Some(3),
            "{source}: the trainer's own status\n{stderr}"
        );
        assert!(stdout.contains(&token), "{source}: {stdout}\n{stderr}");
        assert!(stderr.contains("loaded"), "{source}: not loaded: {stderr}");
        ok(Command::new("docker").args(["image", "inspect", &id]));
    }
    let _ = run(Command::new("docker").args(["image", "rm", "-f", &id]));
}
