//! The Python environments and your own script: python-cpu is the same image twice, its link
//! check covers every Python extension module (a CUDA library that torch/_C links, or a wheel's
//! bundled library, missing is named with the module), and examples/mnist.py trains in it with
//! `run --local --code`, as root and as an unnamed uid, writing the same model bytes.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use envbuild_e2e::{
    engine_lock, envbuild_as_uid_4321, last_line, python_base_layout, root, run, site_packages,
};
use serde_json::Value;

use super::build::{envbuild, manifest};
use super::run::{run_local, DATA};

pub(crate) fn python_cpu() -> PathBuf {
    root().join("environments/python-cpu.toml")
}

/// The cache `run.rs` uses too: python-cpu's cuda-runtime and libtorch layers are mnist-cpu's.
pub(crate) fn cache() -> PathBuf {
    root().join("target/e2e/run-cache")
}

fn build_cmd(env: &Path, cache: &Path) -> Command {
    let mut c = envbuild();
    c.env("ENVBUILD_PYTHON_BASE", python_base_layout())
        .arg("build")
        .arg(env)
        .arg("--cache")
        .arg(cache);
    c
}

/// Builds `env` into the OCI layout `out`; returns the digest and what the build said.
fn build(env: &Path, out: &Path) -> (String, String) {
    let mut c = build_cmd(env, &cache());
    c.arg("--output").arg(format!("oci:{}", out.display()));
    let o = run(&mut c);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "{c:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (last_line(&stdout), stderr.into_owned())
}

/// python-cpu, built once for these tests (cold, it compresses 2.9 GB: the CUDA libraries that
/// `import torch` loads; about 90 s on two busy cores): its layout, digest and build messages.
pub(crate) fn image() -> &'static (PathBuf, String, String) {
    static IMAGE: OnceLock<(PathBuf, String, String)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let out = root().join("target/e2e/python-cpu");
        let _ = fs::remove_dir_all(&out);
        let (digest, said) = build(&python_cpu(), &out);
        (out, digest, said)
    })
}

#[test]
fn python_cpu_is_the_same_image_twice_and_its_link_check_covers_python() {
    let (layout, first, said) = image();
    assert!(first.starts_with("sha256:"), "{first}");
    // The link check went through the standard library's and the wheels' extension modules.
    for dir in [
        "/usr/lib/python3.11/lib-dynload",
        "/opt/envbuild/site-packages",
    ] {
        assert!(
            said.contains(&format!(
                "Python extension modules under {dir} resolve with"
            )),
            "{said}"
        );
    }
    // Again, from the files as they are now: the same tree, the same layers, the same digest.
    let t = tempfile::tempdir().unwrap();
    let (second, _) = build(&python_cpu(), &t.path().join("again"));
    assert_eq!(*first, second, "two builds of python-cpu gave two digests");
    let m = manifest(layout);
    assert_eq!(
        m["layers"].as_array().unwrap().len(),
        10,
        "the debian-python base and nine layers: {m}"
    );
}

/// `summary.json` and the `model.pt` bytes of one run's `model` output.
pub(crate) fn model_of(outputs: &Path) -> (Value, Vec<u8>) {
    let dir = outputs.join("model");
    let summary = fs::read(dir.join("summary.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join("summary.json").display()));
    (
        serde_json::from_slice(&summary).unwrap(),
        fs::read(dir.join("model.pt")).unwrap(),
    )
}

/// examples/mnist.py on its data and output, one epoch on 5000 of the training images: the
/// command both the local and the Azure tests run.
pub(crate) const EXAMPLE: [&str; 12] = [
    "python3",
    "mnist.py",
    "--data",
    "${{inputs.data}}",
    "--output",
    "${{outputs.model}}",
    "--epochs",
    "1",
    "--limit-train",
    "5000",
    "--limit-test",
    "1000",
];

#[test]
fn the_example_script_trains_in_python_cpu_the_same_as_root_and_as_an_unnamed_uid() {
    let (layout, _, _) = image();
    let source = format!("oci:{}", layout.display());
    let command = EXAMPLE;
    let examples = root().join("examples");
    let code = [
        "--code",
        examples.to_str().unwrap(),
        "--input",
        &format!("data={DATA}"),
        "--output",
        "model",
    ];
    let _engine = engine_lock();
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o777)).unwrap();

    // As root, the image's user (Azure ML's too).
    let as_root = t.path().join("as-root");
    let o = run(&mut run_local(&source, &as_root, &code, &command));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("torch 2.11.0") && stdout.contains("epoch 1/1  train_loss"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let (summary, model) = model_of(&as_root);
    let accuracy = summary["test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.5, "test accuracy {accuracy} after 5000 images");
    assert_eq!(summary["train_images"], 5000);

    // As a caller with no name in the image's /etc/passwd (uid 4321, in the docker group for
    // the socket): the outputs are theirs, and the model is the same bytes.
    let as_user = t.path().join("as-user");
    let mut c = envbuild_as_uid_4321();
    c.args(["run", "--local", &source, "--cache"])
        .arg(t.path().join("cache"))
        .arg("--outputs")
        .arg(&as_user)
        .args(code)
        .arg("--")
        .args(command)
        .env("HOME", t.path());
    let o = run(&mut c);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let (again, model_again) = model_of(&as_user);
    assert_eq!(
        fs::metadata(as_user.join("model/model.pt")).unwrap().uid(),
        4321
    );
    assert_eq!(again["test_accuracy"], summary["test_accuracy"]);
    assert!(
        model_again == model,
        "two seeded runs of the example wrote different model.pt bytes"
    );
}

/// python-cpu.toml as a file in `dir` with `edit` applied (the variables pointed at the
/// project's venv and base, the .pth file beside it).
fn edited_copy(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = fs::read_to_string(python_cpu()).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    let env = dir.join("environments/python-cpu.toml");
    fs::create_dir_all(dir.join("environments/python")).unwrap();
    fs::copy(
        root().join("environments/python/envbuild.pth"),
        dir.join("environments/python/envbuild.pth"),
    )
    .unwrap();
    fs::write(&env, edited).unwrap();
    env
}

/// The build fails before anything is compressed, with `expect` in its error.
fn link_check_fails(env: &Path, cache: &Path, expect: &[&str]) {
    let mut c = build_cmd(env, cache);
    c.env("ENVBUILD_SITE", site_packages());
    let o = run(&mut c);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the build passed:\n{stderr}");
    for e in expect {
        assert!(stderr.contains(e), "{e:?} not in:\n{stderr}");
    }
    let layers = cache.join("layers");
    assert!(
        !layers.exists() || fs::read_dir(&layers).unwrap().next().is_none(),
        "layers were built before the link check failed"
    );
}

#[test]
fn link_check_names_the_extension_module_and_the_library_it_cannot_load() {
    let t = tempfile::tempdir().unwrap();
    // Without the CUDA libraries libtorch_cuda.so links, torch/_C cannot import: on the CPU too.
    let env = edited_copy(&t.path().join("no-cuda"), |text| {
        let start = text.find("[[layer]]\nname = \"cuda-linked\"").unwrap();
        let end = start + 1 + text[start + 1..].find("[[layer]]").unwrap();
        format!("{}{}", &text[..start], &text[end..])
    });
    link_check_fails(
        &env,
        &t.path().join("cache-1"),
        &[
            "link check failed: Python extension modules under /opt/envbuild/site-packages ([link-check] python-extensions) would not import in this image",
            "/opt/envbuild/site-packages/torch/_C.cpython-311-x86_64-linux-gnu.so needs libcusparse.so.12, which is not in the image (needed by /opt/envbuild/site-packages/torch/lib/libtorch_cuda.so;",
            "libnccl.so.2",
            "hint: ",
        ],
    );
    // Without the libraries numpy's wheel bundles (found through $ORIGIN/../../numpy.libs).
    let env = edited_copy(&t.path().join("no-numpy-libs"), |text| {
        text.replace("\"numpy.libs/**\", ", "")
    });
    link_check_fails(
        &env,
        &t.path().join("cache-2"),
        &[
            "/opt/envbuild/site-packages/numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so needs libscipy_openblas64_",
            "which is not in the image",
        ],
    );
}
