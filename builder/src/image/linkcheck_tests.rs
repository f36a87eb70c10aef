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

/// A minimal x86-64 ELF shared object, made byte by byte: a dynamic section with `needed`
/// (DT_NEEDED), `rpath` (DT_RPATH) or `runpath` (DT_RUNPATH), and the global functions
/// `exports` in its dynamic symbol table (with the hash table that counts them). One PT_LOAD
/// maps the file at address 0, so virtual addresses are file offsets; there are no section
/// headers, as in a stripped library.
fn elf_so(
    needed: &[&str],
    rpath: Option<&str>,
    runpath: Option<&str>,
    exports: &[&str],
) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const SYM: usize = 24;
    let mut strtab = vec![0u8];
    let mut add_str = |s: &str| {
        let at = strtab.len() as u64;
        strtab.extend_from_slice(s.as_bytes());
        strtab.push(0);
        at
    };
    let needed: Vec<u64> = needed.iter().map(|n| add_str(n)).collect();
    let rpath = rpath.map(&mut add_str);
    let runpath = runpath.map(&mut add_str);
    let names: Vec<u64> = exports.iter().map(|n| add_str(n)).collect();
    let symtab_at = EHDR + 2 * PHDR;
    let mut symtab = vec![0u8; SYM]; // symbol 0 is the null symbol
    for n in &names {
        symtab.extend_from_slice(&(*n as u32).to_le_bytes());
        symtab.push(0x12); // STB_GLOBAL, STT_FUNC
        symtab.push(0);
        symtab.extend_from_slice(&1u16.to_le_bytes()); // defined (not SHN_UNDEF)
        symtab.extend_from_slice(&0x1000u64.to_le_bytes());
        symtab.extend_from_slice(&0u64.to_le_bytes());
    }
    // A SysV hash table (DT_HASH): its chain count is how a reader knows the symbol count.
    // One bucket, chained through every symbol.
    let nsyms = (symtab.len() / SYM) as u32;
    let mut hash: Vec<u32> = vec![1, nsyms, nsyms - 1];
    hash.extend((0..nsyms).map(|i| i.saturating_sub(1)));
    let hash_at = symtab_at + symtab.len();
    let strtab_at = hash_at + 4 * hash.len();
    let dynamic_at = (strtab_at + strtab.len()).next_multiple_of(8);
    let mut dynamic: Vec<(u64, u64)> = needed.iter().map(|n| (1, *n)).collect(); // DT_NEEDED
    dynamic.extend(rpath.map(|r| (15, r))); // DT_RPATH
    dynamic.extend(runpath.map(|r| (29, r))); // DT_RUNPATH
    dynamic.extend([
        (5, strtab_at as u64),     // DT_STRTAB
        (10, strtab.len() as u64), // DT_STRSZ
        (6, symtab_at as u64),     // DT_SYMTAB
        (11, SYM as u64),          // DT_SYMENT
        (4, hash_at as u64),       // DT_HASH
        (0, 0),                    // DT_NULL
    ]);
    let end = dynamic_at + 16 * dynamic.len();

    let mut b = Vec::with_capacity(end);
    b.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"); // 64-bit, LSB, version 1
    b.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
    b.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // entry
    b.extend_from_slice(&(EHDR as u64).to_le_bytes()); // program headers
    b.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    b.extend_from_slice(&0u32.to_le_bytes());
    for h in [EHDR as u16, PHDR as u16, 2, 64, 0, 0] {
        b.extend_from_slice(&h.to_le_bytes());
    }
    let mut phdr = |kind: u32, offset: usize, size: usize, align: u64| {
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes()); // PF_R
        for v in [
            offset as u64,
            offset as u64,
            offset as u64,
            size as u64,
            size as u64,
            align,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(1, 0, end, 0x1000); // PT_LOAD
    phdr(2, dynamic_at, end - dynamic_at, 8); // PT_DYNAMIC
    b.extend_from_slice(&symtab);
    for w in hash {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&strtab);
    b.resize(dynamic_at, 0);
    for (tag, val) in dynamic {
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&val.to_le_bytes());
    }
    b
}

fn so(needed: &[&str], rpath: Option<&str>, runpath: Option<&str>, exports: &[&str]) -> Entry {
    Entry::File(Content::Bytes(std::sync::Arc::new(elf_so(
        needed, rpath, runpath, exports,
    ))))
}

/// A site-packages with the shapes of real wheels: an extension module finding its wheel's
/// bundled library through `$ORIGIN` (numpy's `numpy.libs`), one with RUNPATH, a module in a
/// nested package, a plain library without `PyInit_` (libtorch) and files that are not modules.
fn site(without: &[&str]) -> ImageFs {
    let site = "opt/site";
    let mut entries: Vec<(String, Entry)> = vec![
        ("lib".into(), Entry::Dir),
        ("lib/x86_64-linux-gnu".into(), Entry::Dir),
        (
            "lib/x86_64-linux-gnu/libc.so.6".into(),
            so(&[], None, None, &["printf"]),
        ),
        ("opt".into(), Entry::Dir),
        (site.into(), Entry::Dir),
        ("usr".into(), Entry::Dir),
        ("usr/site".into(), Entry::Symlink("/opt/site".into())),
    ];
    let mut add = |path: &str, e: Entry| {
        let full = format!("{site}/{path}");
        if let Some((dir, _)) = full.rsplit_once('/') {
            let mut at = String::new();
            for c in dir.split('/') {
                at = if at.is_empty() {
                    c.to_owned()
                } else {
                    format!("{at}/{c}")
                };
                if !entries.iter().any(|(p, _)| *p == at) {
                    entries.push((at.clone(), Entry::Dir));
                }
            }
        }
        if !without.contains(&path) {
            entries.push((full, e));
        }
    };
    add(
        "num/core/_multiarray.cpython-311-x86_64-linux-gnu.so",
        so(
            &["libopenblas-abc.so", "libc.so.6"],
            Some("$ORIGIN/../../num.libs"),
            None,
            &["PyInit__multiarray"],
        ),
    );
    add(
        "num.libs/libopenblas-abc.so",
        so(
            &["libgfortran-x.so.5", "libc.so.6"],
            Some("$ORIGIN"),
            None,
            &["dgemm_"],
        ),
    );
    add(
        "num.libs/libgfortran-x.so.5",
        so(&["libc.so.6"], None, None, &[]),
    );
    add(
        "tor/_C.abi3.so",
        so(
            &["libtorch_python.so"],
            None,
            Some("${ORIGIN}/lib"),
            &["PyInit__C"],
        ),
    );
    add(
        "tor/lib/libtorch_python.so",
        so(
            &["libtorch_cpu.so", "libc.so.6"],
            None,
            Some("$ORIGIN"),
            &[],
        ),
    );
    add(
        "tor/lib/libtorch_cpu.so",
        so(&["libc.so.6"], None, None, &[]),
    );
    // Not modules: a library that needs what is not there (loaded by nobody here), a module
    // whose init function does not match its file name, an `.so` that is not ELF.
    add(
        "tor/lib/libtorch_cuda.so",
        so(&["libcudart.so.13"], None, None, &["cudaThing"]),
    );
    add(
        "odd/renamed.so",
        so(&["libnothere.so"], None, None, &["PyInit_original"]),
    );
    add(
        "odd/notes.so",
        Entry::File(Content::Bytes(std::sync::Arc::new(b"not ELF".to_vec()))),
    );
    let refs: Vec<(&str, Entry)> = entries
        .iter()
        .map(|(p, e)| (p.as_str(), e.clone()))
        .collect();
    fs_with(&refs)
}

#[test]
fn the_fixture_elf_parses_as_the_check_reads_it() {
    let bytes = elf_so(
        &["libx.so.1"],
        Some("$ORIGIN/a"),
        None,
        &["PyInit_m", "other"],
    );
    let o = parse(&bytes).expect("parses");
    assert_eq!(o.needed, ["libx.so.1"]);
    assert_eq!(o.rpath, ["$ORIGIN/a"]);
    assert!(o.runpath.is_empty());
    assert_eq!(o.machine, goblin::elf::header::EM_X86_64);
    assert!(exports(&bytes, "PyInit_m") && exports(&bytes, "other"));
    assert!(!exports(&bytes, "PyInit_n") && !exports(&bytes, "libx.so.1"));
    let runpath = elf_so(&[], None, Some("$ORIGIN"), &[]);
    assert_eq!(parse(&runpath).unwrap().runpath, ["$ORIGIN"]);
}

#[test]
fn python_extension_modules_are_the_so_files_that_export_their_pyinit() {
    let fs = site(&[]);
    let modules = fs.python_extensions("/opt/site").unwrap();
    assert_eq!(
        modules,
        [
            "/opt/site/num/core/_multiarray.cpython-311-x86_64-linux-gnu.so",
            "/opt/site/tor/_C.abi3.so",
        ]
    );
    // Through a symlink to the directory: the same modules, by their real paths.
    assert_eq!(fs.python_extensions("/usr/site/").unwrap(), modules);
    assert_eq!(
        fs.python_extensions("/opt/site/tor").unwrap(),
        ["/opt/site/tor/_C.abi3.so"]
    );
    assert!(fs.python_extensions("/opt/nope").is_none());
    assert!(
        fs.python_extensions("/lib/x86_64-linux-gnu/libc.so.6")
            .is_none(),
        "a file is not a directory"
    );
}

#[test]
fn every_extension_module_resolves_through_its_rpath_and_runpath() {
    let r = check_python_extensions(&site(&[]), "/opt/site", "", "amd64").unwrap();
    assert_eq!(r.modules.len(), 2, "{r:?}");
    for lib in [
        "/opt/site/num.libs/libopenblas-abc.so",
        "/opt/site/num.libs/libgfortran-x.so.5",
        "/opt/site/tor/lib/libtorch_python.so",
        "/opt/site/tor/lib/libtorch_cpu.so",
        "/lib/x86_64-linux-gnu/libc.so.6",
    ] {
        assert!(r.objects.contains(lib), "{lib} not in {r:?}");
    }
    assert!(
        !r.objects.iter().any(|o| o.contains("libtorch_cuda")),
        "a library no module needs is not checked: {r:?}"
    );
}

#[test]
fn a_missing_library_names_the_module_and_the_library() {
    // The wheel's bundled library is gone: the module that needs it is named with it.
    let e = check_python_extensions(
        &site(&["num.libs/libopenblas-abc.so"]),
        "/opt/site",
        "",
        "amd64",
    )
    .unwrap_err();
    assert_eq!(e.root, Root::PythonExtensions("/opt/site".into()));
    assert!(!e.entrypoint_missing);
    assert_eq!(e.problems.len(), 1, "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with("link check failed: Python extension modules under /opt/site ([link-check] python-extensions) would not import in this image"),
        "{text}"
    );
    assert!(
        text.contains("/opt/site/num/core/_multiarray.cpython-311-x86_64-linux-gnu.so needs libopenblas-abc.so, which is not in the image (needed by /opt/site/num/core/_multiarray.cpython-311-x86_64-linux-gnu.so; searched /opt/site/num/core/../../num.libs:"),
        "{text}"
    );
    // A library two steps down: still named with the module, and with the library that needs it.
    let e = check_python_extensions(
        &site(&["tor/lib/libtorch_cpu.so"]),
        "/opt/site",
        "",
        "amd64",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("/opt/site/tor/_C.abi3.so needs libtorch_cpu.so, which is not in the image (needed by /opt/site/tor/lib/libtorch_python.so; searched /opt/site/tor/lib:"),
        "{e}"
    );
    // Both broken: both reported, in one error.
    let e = check_python_extensions(
        &site(&["tor/lib/libtorch_cpu.so", "num.libs/libgfortran-x.so.5"]),
        "/opt/site",
        "",
        "amd64",
    )
    .unwrap_err();
    assert_eq!(e.problems.len(), 2, "{e}");
    // LD_LIBRARY_PATH is searched as the loader searches it.
    let e = check_python_extensions(
        &site(&["tor/lib/libtorch_python.so"]),
        "/opt/site/tor",
        "/opt/site/num.libs",
        "amd64",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("searched /opt/site/num.libs:/opt/site/tor/lib:"),
        "{e}"
    );
}

#[test]
fn a_python_extensions_directory_that_is_not_there_is_named_with_a_hint() {
    use crate::error::Hint;
    let e = check_python_extensions(&site(&[]), "/opt/site-packages", "", "amd64").unwrap_err();
    assert!(e.entrypoint_missing);
    assert!(
        e.to_string()
            .contains("/opt/site-packages is not a directory in the image"),
        "{e}"
    );
    assert!(
        e.hint().unwrap().contains("python-extensions"),
        "{:?}",
        e.hint()
    );
}
