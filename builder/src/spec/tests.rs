//! Unit tests of environment-file parsing and checking (`spec/mod.rs`).
use super::*;

fn vars() -> Vars {
    let mut v = Vars::default();
    v.values.insert("SITE".into(), "/venv/site".into());
    v
}

fn check(text: &str) -> Result<Environment, SpecError> {
    parse(Path::new("/p/environments/t.toml"), text, &vars())
}

const GOOD: &str = r#"
name = "t"
[base]
scratch = true

[[layer]]
name = "libs"
[[layer.files]]
src = "${SITE}/torch/lib"
dest = "/opt/torch/lib"
include = ["libc10.so"]

[[layer]]
name = "app"
[[layer.files]]
src = "bin/trainer"
dest = "/usr/local/bin/trainer"
mode = 0o755

[config]
entrypoint = ["/usr/local/bin/trainer"]
env = { LD_LIBRARY_PATH = "/opt/torch/lib", HOME = "${NOPE:-/root}" }
"#;

#[test]
fn good_file_resolves_vars_and_relative_paths() {
    let e = check(GOOD).unwrap();
    assert_eq!(e.base, Base::Scratch);
    assert_eq!(
        e.layers[0].files[0].src,
        PathBuf::from("/venv/site/torch/lib")
    );
    assert_eq!(
        e.layers[1].files[0].src,
        PathBuf::from("/p/environments/bin/trainer")
    );
    assert_eq!(e.layers[1].files[0].mode, Some(0o755));
    assert_eq!(e.config.env["HOME"], "/root");
    assert_eq!(e.compression, "gzip".parse().unwrap());
    assert_eq!(e.layers[1].line, 14);
}

#[test]
fn a_type_error_names_the_field_and_its_table() {
    let e = check(&GOOD.replace("mode = 0o755", "mode = \"rwx\"")).unwrap_err();
    assert_eq!(e.field, "layer.files.mode", "{e}");
    assert!(
        e.to_string().contains(":18: field `layer.files.mode`"),
        "{e}"
    );
    assert_eq!(key_at("a = 1\n[x]\nb = 2\n", 13), Some("x.b".into()));
    assert_eq!(key_at("[x]\n", 1), None);
}

#[test]
fn only_regular_files_of_a_sane_size_are_read() {
    let e = load(Path::new("/dev/zero"), &Vars::default()).unwrap_err();
    assert!(e.message.contains("not a regular file"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = load(&fifo, &Vars::default()).unwrap_err();
    assert!(
        e.message.contains("not a regular file") && e.to_string().contains("fifo.toml"),
        "{e}"
    );
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "# x\n".repeat(300_000)).unwrap();
    let e = load(&big, &Vars::default()).unwrap_err();
    assert!(e.message.contains("larger than 1024 KiB"), "{e}");
}

#[test]
fn errors_name_file_line_and_field() {
    let e = check(&GOOD.replace("include = [", "inclde = [")).unwrap_err();
    assert_eq!(e.line, Some(11), "{e}");
    assert!(
        e.to_string().starts_with("/p/environments/t.toml:11"),
        "{e}"
    );
    assert!(
        e.message.contains("unknown field `inclde`") && e.message.contains("include"),
        "{e}"
    );

    let e = check(&GOOD.replace(
        "/usr/local/bin/trainer\"\nmode",
        "/usr/../bin/trainer\"\nmode",
    ))
    .unwrap_err();
    assert_eq!(
        (e.line, e.field.as_str()),
        (Some(17), "layer[1].files[0].dest"),
        "{e}"
    );
    assert!(e.message.contains("without `..`"), "{e}");

    let e = check(&GOOD.replace("${SITE}", "${MISSING}")).unwrap_err();
    assert!(
        e.to_string()
            .contains(":9: field `layer[0].files[0].src`: variable MISSING is not set"),
        "{e}"
    );

    let e = check(&GOOD.replace("scratch = true", "image = \"reg.io/cuda:12\"")).unwrap_err();
    assert!(e.message.contains("not pinned"), "{e}");
    let e = check(&GOOD.replace("scratch = true", "scratch = true\noci = \"x\"")).unwrap_err();
    assert!(e.message.contains("exactly one"), "{e}");
    let e =
        check(&GOOD.replace("scratch = true", "oci = \"x\"\ndigest = \"sha256:12\"")).unwrap_err();
    assert_eq!(e.field, "base.digest");
    let e = check(&GOOD.replace("0o755", "755")).unwrap_err();
    assert!(e.message.contains("octal"), "{e}");
}

#[test]
fn shipped_environment_files_parse() {
    let mut v = vars();
    for k in [
        "ENVBUILD_SITE",
        "CARGO_TARGET_DIR",
        "PROJECT_ROOT",
        "ROOTFS",
    ] {
        v.values.insert(k.into(), format!("/x/{k}"));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut n = 0;
    for dir in ["environments", "environments/examples", "docker/base"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let text = std::fs::read_to_string(&p).unwrap();
                parse(&p, &text, &v).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
    }
    assert!(n >= 4, "{n} files");
}

#[test]
fn expansion_rules() {
    let v = vars();
    assert_eq!(v.expand("a$${SITE}").unwrap(), "a${SITE}");
    assert_eq!(v.expand("${X:-d}/${SITE}").unwrap(), "d//venv/site");
    assert_eq!(v.expand("${X:-${SITE}/b}").unwrap(), "/venv/site/b");
    assert!(v.expand("$SITE").is_err());
    assert!(v.expand("${SITE").is_err());
}

#[test]
fn python_extension_directories_are_absolute_image_paths() {
    let e = check(&format!(
        "{GOOD}\n[link-check]\npython-extensions = [\"/usr/lib/python3.11/lib-dynload\", \"${{SITE}}\"]\n"
    ))
    .unwrap();
    assert_eq!(
        e.python_extensions,
        ["/usr/lib/python3.11/lib-dynload", "/venv/site"]
    );
    assert!(e.dlopen.is_empty());
    let e = check(&format!(
        "{GOOD}\n[link-check]\npython-extensions = [\"site-packages\"]\n"
    ))
    .unwrap_err();
    assert_eq!(e.field, "link-check.python-extensions", "{e}");
    assert!(
        e.message
            .contains("`site-packages` is not an absolute path in the image"),
        "{e}"
    );
}
