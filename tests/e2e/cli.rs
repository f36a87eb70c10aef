//! The command line itself: completion scripts that the shell parses, man pages, and exit
//! statuses as `--help` documents them.

use std::fs;
use std::process::Command;

use envbuild_e2e::{envbuild_debug, ok, run};

#[test]
fn completions_parse_man_pages_render_and_help_documents_exit_statuses() {
    let t = tempfile::tempdir().unwrap();
    let bash = t.path().join("envbuild.bash");
    fs::write(
        &bash,
        ok(Command::new(envbuild_debug()).args(["completions", "bash"])),
    )
    .unwrap();
    ok(Command::new("bash").arg("-n").arg(&bash));
    let script = fs::read_to_string(&bash).unwrap();
    assert!(
        script.contains("complete") && script.contains("push") && script.contains("--idle-timeout")
    );
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let s = ok(Command::new(envbuild_debug()).args(["completions", shell]));
        assert!(s.contains("push") && s.contains("inspect"), "{shell}: {s}");
    }
    let o = run(Command::new(envbuild_debug()).args(["completions", "tcsh"]));
    assert_eq!(o.status.code(), Some(2), "a usage error");

    let page = ok(Command::new(envbuild_debug()).arg("man"));
    assert!(
        page.contains(".TH envbuild 1") && page.contains("push"),
        "{page}"
    );
    let dir = t.path().join("man1");
    let listed = ok(Command::new(envbuild_debug())
        .args(["man", "--dir"])
        .arg(&dir));
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.contains(&"envbuild.1".to_owned()) && names.contains(&"envbuild-push.1".to_owned()),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".1") && !n.starts_with('.')),
        "{names:?}"
    );
    assert_eq!(listed.lines().count(), names.len());
    let push = fs::read_to_string(dir.join("envbuild-push.1")).unwrap();
    assert!(
        push.contains(".TH envbuild-push 1") && push.contains("password\\-stdin"),
        "{push}"
    );

    let help = ok(Command::new(envbuild_debug()).arg("--help"));
    assert!(
        help.contains("Exit status: 0 success; 1 failure") && help.contains("130"),
        "{help}"
    );
    let o = run(Command::new(envbuild_debug()).args(["push"]));
    assert_eq!(
        o.status.code(),
        Some(2),
        "missing arguments are a usage error"
    );
}

#[test]
fn errors_about_broken_files_print_no_raw_bytes() {
    let t = tempfile::tempdir().unwrap();
    let junk = t.path().join("junk.tar");
    // Bytes a tar reader quotes back in its errors (a header of binary garbage).
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 131 % 256) as u8).collect();
    fs::write(&junk, &bytes).unwrap();
    let o = run(Command::new(envbuild_debug())
        .arg("inspect")
        .arg(format!("docker-archive:{}", junk.display())));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("junk.tar") && e.contains("not a tar archive"),
        "{e}"
    );
    let text = String::from_utf8(o.stderr.clone()).expect("stderr is UTF-8 text");
    assert!(
        text.chars().all(|c| c == '\n' || !c.is_control()),
        "raw control bytes on stderr: {text:?}"
    );
}
