//! Tests of the link check on small ELF trees built in code.

use super::*;

fn fs_with(entries: &[(&str, Entry)]) -> ImageFs {
    ImageFs {
        entries: entries
            .iter()
            .map(|(p, e)| (p.to_string(), e.clone()))
            .collect(),
        escapes: Vec::new(),
    }
}

#[test]
fn base_entries_that_reach_out_of_the_root_are_noted() {
    let mut b = tar::Builder::new(Vec::new());
    let mut link = |path: &str, target: &str, kind: tar::EntryType| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o777);
        // Raw names: the tar crate's setters refuse `..`, as a hostile layer would not.
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    };
    link("usr/lib/ok", "../../bin/sh", tar::EntryType::Symlink);
    link("usr/lib/abs", "/etc/passwd", tar::EntryType::Symlink);
    link("usr/up", "../../../etc/shadow", tar::EntryType::Symlink);
    link("usr/../../evil", "", tar::EntryType::Regular);
    link("usr/hard", "../etc/passwd", tar::EntryType::Link);
    let mut fs = ImageFs::default();
    fs.add_layer_tar(&b.into_inner().unwrap()[..]).unwrap();
    assert_eq!(fs.escapes.len(), 3, "{:?}", fs.escapes);
    assert!(
        fs.escapes[0].starts_with("usr/up (a symbolic link"),
        "{:?}",
        fs.escapes
    );
    assert!(
        fs.escapes[1].starts_with("usr/../../evil"),
        "{:?}",
        fs.escapes
    );
    assert!(
        fs.escapes[2].starts_with("usr/hard (a hard link"),
        "{:?}",
        fs.escapes
    );
    assert!(!fs.entries.contains_key("usr/../../evil") && fs.entries.contains_key("usr/lib/ok"));
}

#[test]
fn resolves_relative_and_absolute_symlinks_in_any_component() {
    let f = |b: &str| Entry::File(Content::Bytes(std::sync::Arc::new(b.as_bytes().to_vec())));
    let fs = fs_with(&[
        ("lib", Entry::Dir),
        ("lib/x86_64-linux-gnu", Entry::Dir),
        ("lib/x86_64-linux-gnu/libc.so.6", f("c")),
        ("lib64", Entry::Symlink("lib/x86_64-linux-gnu".into())),
        ("usr", Entry::Dir),
        ("usr/lib", Entry::Symlink("/lib".into())),
        ("opt", Entry::Dir),
        ("opt/loop", Entry::Symlink("loop".into())),
    ]);
    assert_eq!(
        fs.resolve("/lib64/libc.so.6").unwrap().0,
        "/lib/x86_64-linux-gnu/libc.so.6"
    );
    assert_eq!(
        fs.resolve("usr/lib/x86_64-linux-gnu/../x86_64-linux-gnu/libc.so.6")
            .unwrap()
            .0,
        "/lib/x86_64-linux-gnu/libc.so.6"
    );
    assert!(fs.resolve("/opt/loop").is_none(), "symlink loops end");
    assert!(fs.resolve("/lib/nope").is_none());
}

#[test]
fn versions_sort_numerically() {
    let d: BTreeSet<String> = ["GLIBC_2.9", "GLIBC_2.34", "GLIBC_2.2.5", "GLIBCXX_3.4.30"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(newest(&d, "GLIBC").unwrap(), "GLIBC_2.34");
    assert_eq!(newest(&d, "GLIBCXX").unwrap(), "GLIBCXX_3.4.30");
    assert!(newest(&d, "CXXABI").is_none());
}

#[test]
fn real_host_binary_links_on_the_host_file_system() {
    // /bin/ls and exactly the libraries ldd names, as regular files at the paths ldd prints.
    let out = std::process::Command::new("ldd")
        .arg("/bin/ls")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut paths: Vec<String> = vec!["/bin/ls".into(), "/bin/sh".into()];
    for l in text.lines() {
        let p = l
            .split("=>")
            .last()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if p.starts_with('/') {
            paths.push(p.to_owned());
        }
    }
    let build = |skip: Option<&str>| {
        let mut tree = Tree::default();
        for p in paths.iter().filter(|p| skip != Some(p.as_str())) {
            let src = std::fs::canonicalize(p).unwrap();
            tree.add(&crate::layer::Mapping {
                src,
                dest: p.clone(),
                ..Default::default()
            })
            .unwrap();
        }
        let mut fs = ImageFs::default();
        fs.add_tree(&tree);
        fs
    };
    let r = check(&build(None), "/bin/ls", "", "amd64").unwrap();
    assert!(r.objects.iter().any(|o| o.ends_with("/libc.so.6")), "{r:?}");
    assert!(r.warnings.is_empty(), "{r:?}");
    let e = check(&build(None), "/bin/ls", "", "arm64").unwrap_err();
    assert!(e.to_string().contains("platform is linux/arm64"), "{e}");
    // Without /bin/sh the image still links, with a warning for Azure ML.
    let r = check(&build(Some("/bin/sh")), "/bin/ls", "", "amd64").unwrap();
    assert!(r.warnings.iter().any(|w| w.contains("no /bin/sh")), "{r:?}");
    // Without libc: named, with the object that needs it.
    let libc = paths
        .iter()
        .find(|p| p.ends_with("/libc.so.6"))
        .unwrap()
        .clone();
    let e = check(&build(Some(&libc)), "/bin/ls", "", "amd64").unwrap_err();
    assert!(
        e.to_string()
            .contains("ls needs libc.so.6, which is not in the image"),
        "{e}"
    );
}
