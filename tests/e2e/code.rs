//! `envbuild run --local --code DIR -- COMMAND`: the user's own command runs in the code's
//! snapshot, with inputs and outputs where Azure ML mounts them, as the caller; and every bad
//! input is one clear error before any engine is reached.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use envbuild_e2e::{base_layout, engine_lock, envbuild_as_uid_4321, run};

use super::build::envbuild;
use super::run::{cpu_env, note_env};

/// The user's script: only dash builtins, as the base image has nothing but /bin/sh. It writes
/// what it sees into the output, one file per fact.
const SCRIPT: &str = r#"set -e
data=$1 greeting=$2 out=$3 conf=$4
pwd > "$out/pwd"
read -r line < "$data/hello.txt"
echo "$line" > "$out/line"
printf '%s\n' "$greeting" > "$out/greeting"
read -r c < "$conf"
echo "$c" > "$out/conf"
echo "$conf" > "$out/conf_path"
if [ -e secret.txt ]; then echo present; else echo absent; fi > "$out/secret"
if [ -e .amlignore ]; then echo present; else echo absent; fi > "$out/amlignore"
if (echo x > "$data/new") 2>/dev/null; then echo writable; else echo read-only; fi > "$out/input"
if (echo x > new.py) 2>/dev/null; then echo writable; else echo read-only; fi > "$out/code"
echo "script done"
"#;

#[test]
fn a_command_runs_in_the_code_snapshot_with_azure_mls_inputs_and_outputs_as_the_caller() {
    let _engine = engine_lock();
    let t = tempfile::tempdir().unwrap();
    // A caller who is not root: uid 4321, in the docker group for the socket.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let code = t.path().join("code");
    fs::create_dir(&code).unwrap();
    fs::write(code.join("run.sh"), SCRIPT).unwrap();
    fs::write(code.join(".amlignore"), "secret.txt\n").unwrap();
    fs::write(code.join("secret.txt"), "not for the job\n").unwrap();
    let data = t.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("hello.txt"), "hello from the data\n").unwrap();
    // Writable by anyone here: only a read-only mount keeps the command from writing into it.
    fs::set_permissions(&data, fs::Permissions::from_mode(0o777)).unwrap();
    fs::create_dir(t.path().join("conf")).unwrap();
    let conf = t.path().join("conf/settings.txt");
    fs::write(&conf, "lr=0.5\n").unwrap();
    // An entrypoint that cannot run: the command must take its place.
    let env = note_env(t.path(), "codejob", "", r#"["/note.txt"]"#);
    let outputs = t.path().join("outputs");
    let cache = t.path().join("cache");
    let mut c = envbuild_as_uid_4321();
    c.args(["run", "--local"])
        .arg(&env)
        .arg("--cache")
        .arg(&cache)
        .arg("--outputs")
        .arg(&outputs)
        .arg("--code")
        .arg(&code)
        .arg("--input")
        .arg(format!("data={}", data.display()))
        .arg("--input")
        .arg(format!("conf={}", conf.display()))
        .args(["--input", "greeting=hello-world", "--output", "result"])
        .args([
            "--",
            "/bin/sh",
            "run.sh",
            "${{inputs.data}}",
            "${{ inputs.greeting }}",
            "${{outputs.result}}",
            "${{inputs.conf}}",
        ])
        .env("HOME", t.path())
        .env("ENVBUILD_BASE", base_layout());
    let o = run(&mut c);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("script done"), "{stdout}");
    let result = outputs.canonicalize().unwrap().join("result");
    assert!(
        stdout.contains(&format!("output result: {}", result.display())),
        "{stdout}"
    );
    // The snapshot holds run.sh and .amlignore: the ignored file is not counted.
    assert!(stderr.contains("(2 files, "), "{stderr}");
    let fact = |name: &str| {
        fs::read_to_string(result.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}\nstderr:\n{stderr}"))
            .trim_end()
            .to_owned()
    };
    assert_eq!(fact("pwd"), "/mnt/azureml/code", "the working directory");
    assert_eq!(fact("line"), "hello from the data", "the folder input");
    // A literal goes into the command as it is, as Azure ML puts it (jobio's unit tests show a
    // value with a space becoming two words, there as here).
    assert_eq!(fact("greeting"), "hello-world", "the literal");
    assert_eq!(fact("conf"), "lr=0.5", "the file input");
    assert_eq!(fact("conf_path"), "/mnt/azureml/inputs/conf/settings.txt");
    assert_eq!(fact("secret"), "absent", "ignored by .amlignore");
    assert_eq!(fact("amlignore"), "present", "the ignore file stays");
    assert_eq!(fact("input"), "read-only");
    assert_eq!(fact("code"), "read-only");
    assert!(!data.join("new").exists() && !code.join("new.py").exists());
    for f in ["", "pwd", "line"] {
        let m = fs::metadata(result.join(f)).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (4321, 4321),
            "outputs/result/{f} belongs to the caller"
        );
    }
    // The code's copy is gone with the run.
    let left: Vec<_> = fs::read_dir(cache.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("code-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // The command's exit code is the run's.
    let o = run(envbuild()
        .args(["run", "--local"])
        .arg(&env)
        .arg("--cache")
        .arg(&cache)
        .arg("--outputs")
        .arg(t.path().join("out2"))
        .arg("--code")
        .arg(&code)
        .args(["--", "/bin/sh", "-c", "exit 7"]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("the command exited with code 7"),
        "{stderr}"
    );
}

/// `envbuild run --local` with `args`, on an engine that cannot be there: an error about our
/// input proves it came before any engine (or container) was reached.
fn refused(t: &Path, args: &[&str]) -> String {
    let outputs = t.join("outputs");
    let o = run(envbuild()
        .args(["run", "--local"])
        .arg(cpu_env())
        .arg("--cache")
        .arg(t.join("cache"))
        .arg("--outputs")
        .arg(&outputs)
        .args(args)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock"));
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("Docker engine"), "{stderr}");
    assert!(!outputs.exists(), "nothing made before the checks");
    assert_eq!(stderr.matches("error:").count(), 1, "one message: {stderr}");
    stderr
}

#[test]
fn bad_code_inputs_outputs_and_references_are_refused_before_the_engine() {
    let t = tempfile::tempdir().unwrap();
    let code = t.path().join("code");
    fs::create_dir(&code).unwrap();
    fs::write(code.join("train.py"), "print(1)\n").unwrap();
    let data = t.path().join("data");
    fs::create_dir(&data).unwrap();
    let (code_s, data_s) = (code.to_str().unwrap(), data.to_str().unwrap());
    let data_arg = format!("data={data_s}");

    let missing = t.path().join("no-code");
    let e = refused(
        t.path(),
        &[
            "--code",
            missing.to_str().unwrap(),
            "--",
            "python",
            "train.py",
        ],
    );
    assert!(
        e.contains(&format!(
            "code directory {}: no such directory",
            missing.display()
        )),
        "{e}"
    );

    let gone = t.path().join("no-data");
    let e = refused(
        t.path(),
        &[
            "--code",
            code_s,
            "--input",
            &format!("data={}", gone.display()),
            "--",
            "python",
            "train.py",
        ],
    );
    assert!(
        e.contains(&format!(
            "--input data={0}: {0} does not exist",
            gone.display()
        )),
        "{e}"
    );

    let e = refused(
        t.path(),
        &[
            "--code",
            code_s,
            "--input",
            &data_arg,
            "--",
            "python",
            "train.py",
            "--lr",
            "${{inputs.lr}}",
        ],
    );
    assert!(
        e.contains("${{inputs.lr}} in the command: there is no input `lr` (the inputs are: data)"),
        "{e}"
    );
    assert!(e.contains("hint: add --input lr=VALUE"), "{e}");

    let e = refused(
        t.path(),
        &[
            "--code",
            code_s,
            "--output",
            "model",
            "--",
            "python",
            "train.py",
            "--out=${{ outputs.ckpt }}",
        ],
    );
    assert!(
        e.contains(
            "${{outputs.ckpt}} in the command: there is no output `ckpt` (the outputs are: model)"
        ),
        "{e}"
    );

    // Without --code the trainer runs; an --input it would never read is refused, not dropped.
    let e = refused(t.path(), &["--input", &data_arg]);
    assert!(
        e.contains("--input and --output name what your own command reads and writes"),
        "{e}"
    );

    let e = refused(t.path(), &["--code", code_s]);
    assert!(
        e.contains("--code needs the command to run after `--`"),
        "{e}"
    );

    let e = refused(
        t.path(),
        &[
            "--code",
            code_s,
            "--input",
            "data=azureml://datastores/workspaceblobstore/paths/mnist",
            "--",
            "python",
            "train.py",
        ],
    );
    assert!(e.contains("a URI input is for --azure"), "{e}");

    let e = refused(
        t.path(),
        &[
            "--code",
            code_s,
            "--input",
            "my-lr=0.1",
            "--",
            "python",
            "train.py",
        ],
    );
    assert!(e.contains("--input my-lr: the name is not valid"), "{e}");

    // Emptied by its ignore file: the error names it, the hint says how to bring a file back.
    fs::write(code.join(".amlignore"), "*\n").unwrap();
    let e = refused(
        t.path(),
        &[
            "--code", code_s, "--input", &data_arg, "--", "python", "train.py",
        ],
    );
    assert!(
        e.contains(&format!(
            "no files left after the rules of {}",
            code.canonicalize().unwrap().join(".amlignore").display()
        )),
        "{e}"
    );
    assert!(e.contains("hint:") && e.contains("!NAME"), "{e}");
}
