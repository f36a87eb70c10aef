//! The Python environments: python-cpu is the same image twice, its link check covers every
//! Python extension module (a CUDA library that torch/_C links, or a wheel's bundled library,
//! missing is named with the module), and the image runs python3 with torch and numpy on the
//! Docker engine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use envbuild_e2e::{engine_lock, last_line, python_base_layout, root, run, site_packages};

use super::build::{envbuild, manifest};
use super::run::{run_local, DATA};

fn python_cpu() -> PathBuf {
    root().join("environments/python-cpu.toml")
}

/// The cache `run.rs` uses too: python-cpu's cuda-runtime and libtorch layers are mnist-cpu's.
fn cache() -> PathBuf {
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

#[test]
fn python_cpu_is_the_same_image_twice_and_imports_torch_in_the_engine() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let (first, said) = build(&python_cpu(), &a);
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
    let (second, _) = build(&python_cpu(), &b);
    assert_eq!(first, second, "two builds of python-cpu gave two digests");
    let m = manifest(&a);
    assert_eq!(
        m["layers"].as_array().unwrap().len(),
        10,
        "the debian-python base and nine layers: {m}"
    );

    let _engine = engine_lock();
    let outputs = t.path().join("outputs");
    let mut c = run_local(
        &format!("oci:{}", a.display()),
        &outputs,
        &["--data", DATA],
        &[
            "python3",
            "-c",
            "import sys, torch, numpy; x = torch.arange(6.0).reshape(2, 3); \
             print('torch', torch.__version__, 'numpy', numpy.__version__, 'sum', float(x.sum()), \
             'cuda', torch.cuda.is_available(), sys.executable)",
        ],
    );
    let o = run(&mut c);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("torch 2.11.0") && stdout.contains("sum 15.0 cuda False /usr/bin/python3"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
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
