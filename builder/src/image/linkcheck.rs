//! The link check: before anything is written, prove that the entrypoint and every shared
//! library it needs (DT_NEEDED, recursively, through RPATH/RUNPATH with `$ORIGIN`, the image's
//! LD_LIBRARY_PATH and the loader's default directories) resolve inside the image's file system,
//! and that the symbol versions they require (GLIBC_2.34, GLIBCXX_3.4.30, …) are provided there.
//! The same proof covers what the program loads later: `[link-check] dlopen` libraries and the
//! Python extension modules under `[link-check] python-extensions` ([`ImageFs::python_extensions`]).
//! A failure here costs seconds; the same failure on Azure ML costs a queued GPU job.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;

use goblin::elf::Elf;

use crate::layer::{Node, Tree};

/// File bytes: kept base-layer contents, or a host file mapped into memory (only the pages the
/// ELF parser touches are read, so a 450 MB libtorch costs kilobytes of RSS).
type Blob = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Where a file's bytes are, for files the check may need to read.
#[derive(Clone)]
enum Content {
    Host(PathBuf),
    Bytes(Blob),
    /// In a base layer but not kept (not ELF, or too large to hold): present, not inspected.
    Unread,
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Host(p) => write!(f, "Host({})", p.display()),
            Content::Bytes(b) => write!(f, "Bytes({} bytes)", (**b).as_ref().len()),
            Content::Unread => write!(f, "Unread"),
        }
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File(Content),
    Symlink(String),
}

/// The merged file system of an image: base layers, then the new layers.
#[derive(Debug, Default)]
pub struct ImageFs {
    entries: BTreeMap<String, Entry>,
    /// Base-layer entries that reach out of the image root (a `..` in the path, a link whose
    /// target climbs above `/`): engines refuse or rewrite them, so the build warns.
    pub escapes: Vec<String>,
}

/// Whether the relative link `target`, met in directory `dir`, climbs above the root.
fn climbs_out(dir: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth = dir.split('/').filter(|c| !c.is_empty()).count();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if depth == 0 => return true,
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    false
}

/// Base-layer files up to this size that look like ELF are kept in memory for the check.
const KEEP_LIMIT: u64 = 64 << 20;

fn norm(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

impl ImageFs {
    /// Applies one (possibly compressed) base layer tar, honouring whiteouts.
    pub fn add_layer_tar(&mut self, r: impl Read) -> io::Result<()> {
        let mut a = tar::Archive::new(crate::layer::compress::decoder(r)?);
        for e in a.entries()? {
            let mut e = e?;
            let path = norm(&e.path()?.to_string_lossy());
            if crate::layer::apply_whiteout(&mut self.entries, &path) {
                continue;
            }
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            let ty = e.header().entry_type();
            let link = e
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            if path.split('/').any(|c| c == "..") {
                self.escapes.push(format!("{path} (a `..` in its path)"));
                continue;
            }
            if ty.is_hard_link() && (link.split('/').any(|c| c == "..")) {
                self.escapes.push(format!("{path} (a hard link to {link})"));
            } else if ty.is_symlink() && climbs_out(dir, &link) {
                self.escapes.push(format!(
                    "{path} (a symbolic link to {link}, above the root)"
                ));
            }
            let entry = if ty.is_dir() {
                Entry::Dir
            } else if ty.is_symlink() {
                Entry::Symlink(link)
            } else if ty.is_hard_link() {
                let target = norm(&link);
                self.entries
                    .get(&target)
                    .cloned()
                    .unwrap_or(Entry::File(Content::Unread))
            } else if ty.is_file() {
                let mut head = [0u8; 4];
                let n = e.size();
                if (4..=KEEP_LIMIT).contains(&n) {
                    e.read_exact(&mut head)?;
                }
                let keep = head == *b"\x7fELF" || path.starts_with("etc/ld.so.conf");
                if keep && n <= KEEP_LIMIT {
                    let mut bytes = head.to_vec();
                    e.read_to_end(&mut bytes)?;
                    Entry::File(Content::Bytes(std::sync::Arc::new(bytes)))
                } else {
                    Entry::File(Content::Unread)
                }
            } else {
                continue;
            };
            if !path.is_empty() {
                self.entries.insert(path, entry);
            }
        }
        Ok(())
    }

    /// Adds a new layer's tree (files are read from the host when needed).
    pub fn add_tree(&mut self, tree: &Tree) {
        for (path, node) in &tree.nodes {
            let e = match node {
                Node::Dir { .. } => Entry::Dir,
                Node::File { src, .. } => Entry::File(Content::Host(src.clone())),
                Node::Symlink { target } => Entry::Symlink(target.clone()),
            };
            self.entries.insert(path.clone(), e);
        }
    }

    /// Follows symlinks in every component; returns the real path and its entry.
    fn resolve(&self, path: &str) -> Option<(String, &Entry)> {
        let mut pending: VecDeque<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop_front() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
            let joined = cur.join("/");
            if let Entry::Symlink(target) = self.entries.get(&joined)? {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                cur.pop();
                if target.starts_with('/') {
                    cur.clear();
                }
                for (i, t) in target.split('/').filter(|c| !c.is_empty()).enumerate() {
                    pending.insert(i, t.to_owned());
                }
            }
        }
        let joined = cur.join("/");
        let e = self.entries.get(&joined)?;
        Some((format!("/{joined}"), e))
    }

    /// Whether `path` exists in the image (after symlinks).
    pub fn exists(&self, path: &str) -> bool {
        self.resolve(path).is_some()
    }

    /// The Python extension modules under the image directory `dir` (its whole tree), by their
    /// real image paths, sorted: every `NAME….so` file that exports `PyInit_NAME`, the function
    /// Python's import calls (so a plain library such as `libtorch_cpu.so` is not one). `None`
    /// when `dir` is not a directory in the image.
    pub fn python_extensions(&self, dir: &str) -> Option<Vec<String>> {
        let (real, entry) = self.resolve(dir)?;
        if !matches!(entry, Entry::Dir) {
            return None;
        }
        let prefix = match real.trim_start_matches('/') {
            "" => String::new(),
            r => format!("{r}/"),
        };
        let mut found = BTreeSet::new();
        for path in self
            .entries
            .range(prefix.clone()..)
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(&prefix))
        {
            let file = path.rsplit('/').next().unwrap_or(path);
            let module = file.split('.').next().unwrap_or("");
            if !file.ends_with(".so") || module.is_empty() {
                continue;
            }
            let Some((real, Entry::File(_))) = self.resolve(path) else {
                continue;
            };
            if let Some(Ok(bytes)) = self.read(&real) {
                if exports((*bytes).as_ref(), &format!("PyInit_{module}")) {
                    found.insert(real);
                }
            }
        }
        Some(found.into_iter().collect())
    }

    fn read(&self, path: &str) -> Option<io::Result<Blob>> {
        match self.resolve(path)?.1 {
            Entry::File(Content::Host(p)) => Some(map_file(p)),
            Entry::File(Content::Bytes(b)) => Some(Ok(b.clone())),
            _ => None,
        }
    }

    /// Directories the image's ld.so.conf names (`include` lines followed one level).
    fn ld_so_conf_dirs(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut files = vec!["etc/ld.so.conf".to_owned()];
        files.extend(
            self.entries
                .keys()
                .filter(|k| k.starts_with("etc/ld.so.conf.d/") && k.ends_with(".conf"))
                .cloned(),
        );
        for f in files {
            if let Some(Ok(bytes)) = self.read(&f) {
                for line in String::from_utf8_lossy((*bytes).as_ref()).lines() {
                    let l = line.split('#').next().unwrap_or("").trim();
                    if l.starts_with('/') {
                        out.push(l.to_owned());
                    }
                }
            }
        }
        out
    }
}

fn map_file(p: &std::path::Path) -> io::Result<Blob> {
    let f = fs::File::open(p)?;
    if f.metadata()?.len() == 0 {
        return Ok(std::sync::Arc::new(Vec::new()));
    }
    // SAFETY: the mapping is read-only and lives while the check runs; a source file changed
    // meanwhile can only make the check read different bytes (the layer hashes what it tars).
    let m = unsafe { memmap2::Mmap::map(&f)? };
    Ok(std::sync::Arc::new(m))
}

/// What a failed check started from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Root {
    /// The entrypoint (or the first word of `cmd`).
    #[default]
    Entrypoint,
    /// A library the program loads at run time (`[link-check] dlopen`).
    Dlopen(String),
    /// The extension modules under a directory of `[link-check] python-extensions`.
    PythonExtensions(String),
}

/// What the check found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkError {
    pub problems: Vec<String>,
    /// The root itself is not in the image (no library is to blame): the entrypoint, the
    /// dlopen library, or the python-extensions directory.
    pub entrypoint_missing: bool,
    /// What was checked.
    pub root: Root,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            Root::Entrypoint => writeln!(
                f,
                "link check failed: the entrypoint would not start in this image"
            )?,
            Root::Dlopen(lib) => writeln!(
                f,
                "link check failed: {lib}, which the program loads at run time ([link-check] dlopen), would not load in this image"
            )?,
            Root::PythonExtensions(dir) => writeln!(
                f,
                "link check failed: Python extension modules under {dir} ([link-check] python-extensions) would not import in this image"
            )?,
        }
        let n = self.problems.len();
        for (i, p) in self.problems.iter().enumerate() {
            write!(f, "  {p}")?;
            if i + 1 < n {
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

impl crate::error::Hint for LinkError {
    fn hint(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(match (&self.root, self.entrypoint_missing) {
            (Root::Dlopen(_), true) => "check `dlopen` under [link-check] in the environment file: absolute paths in the image that a [[layer]] or the base puts there".into(),
            (Root::PythonExtensions(_), true) => "check `python-extensions` under [link-check] in the environment file: directories in the image (a site-packages, Python's lib-dynload) that a [[layer]] or the base puts there".into(),
            (Root::Entrypoint, true) => "check `entrypoint` in the environment file: an absolute path in the image (or a name on its PATH) that one of the [[layer]] entries or the base puts there".into(),
            (Root::PythonExtensions(_), false) => "add the missing libraries to a layer where the module looks (its RPATH, e.g. `$ORIGIN/../numpy.libs` for a wheel's bundled libraries, LD_LIBRARY_PATH or the base), or leave out the package that needs them".into(),
            _ => "add the missing libraries to a layer (or LD_LIBRARY_PATH), or use a base with a newer glibc/libstdc++".into(),
        })
    }
}

impl std::error::Error for LinkError {}

/// What the check saw, for the build's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkReport {
    /// Image paths of the ELF objects that were resolved and checked.
    pub objects: Vec<String>,
    /// Libraries present in the image that the check could not read (kept only up to 64 MiB).
    pub unchecked: Vec<String>,
    pub warnings: Vec<String>,
}

struct Object {
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
    interp: Option<String>,
    machine: u16,
    /// Versions required, by the file they are required from.
    needs: BTreeMap<String, BTreeSet<String>>,
    /// Versions this object defines.
    defines: BTreeSet<String>,
}

fn parse(bytes: &[u8]) -> Option<Object> {
    let elf = Elf::parse(bytes).ok()?;
    let s = |o: usize| elf.dynstrtab.get_at(o).unwrap_or("").to_owned();
    let mut needs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if let Some(vn) = &elf.verneed {
        for n in vn.iter() {
            let entry = needs.entry(s(n.vn_file)).or_default();
            for a in n.iter() {
                entry.insert(s(a.vna_name));
            }
        }
    }
    let mut defines = BTreeSet::new();
    if let Some(vd) = &elf.verdef {
        for d in vd.iter() {
            for a in d.iter() {
                defines.insert(s(a.vda_name));
            }
        }
    }
    Some(Object {
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        rpath: elf
            .rpaths
            .iter()
            .flat_map(|r| r.split(':'))
            .map(str::to_owned)
            .collect(),
        runpath: elf
            .runpaths
            .iter()
            .flat_map(|r| r.split(':'))
            .map(str::to_owned)
            .collect(),
        interp: elf.interpreter.map(str::to_owned),
        machine: elf.header.e_machine,
        needs,
        defines,
    })
}

/// Whether the ELF object in `bytes` defines the global dynamic symbol `name`.
fn exports(bytes: &[u8], name: &str) -> bool {
    let Ok(elf) = Elf::parse(bytes) else {
        return false;
    };
    elf.dynsyms.iter().any(|s| {
        s.st_shndx != goblin::elf::section_header::SHN_UNDEF as usize
            && s.st_bind() != goblin::elf::sym::STB_LOCAL
            && elf.dynstrtab.get_at(s.st_name) == Some(name)
    })
}

/// Orders versions like `GLIBC_2.9` < `GLIBC_2.34` by their numeric parts.
fn version_key(v: &str) -> (String, Vec<u64>) {
    let (prefix, nums) = v.split_once('_').unwrap_or((v, ""));
    (
        prefix.to_owned(),
        nums.split('.').map(|n| n.parse().unwrap_or(0)).collect(),
    )
}

/// The newest version with `prefix` that `defines` holds, for messages.
fn newest(defines: &BTreeSet<String>, prefix: &str) -> Option<String> {
    defines
        .iter()
        .filter(|d| version_key(d).0 == prefix)
        .max_by_key(|d| version_key(d))
        .cloned()
}

const DEFAULT_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Checks that `entrypoint` starts in `fs` with `ld_library_path` from the image config.
pub fn check(
    fs: &ImageFs,
    entrypoint: &str,
    ld_library_path: &str,
    arch: &str,
) -> Result<LinkReport, LinkError> {
    let short = entrypoint.rsplit('/').next().unwrap_or(entrypoint);
    check_as(fs, entrypoint, short, ld_library_path, arch)
}

/// Checks that every Python extension module under the image directory `dir` would import:
/// each is a root of its own, as Python loads it with `dlopen`, and each problem names the
/// module by its image path. All modules are checked before the error is returned.
pub fn check_python_extensions(
    fs: &ImageFs,
    dir: &str,
    ld_library_path: &str,
    arch: &str,
) -> Result<PythonReport, LinkError> {
    let root = Root::PythonExtensions(dir.to_owned());
    let Some(modules) = fs.python_extensions(dir) else {
        return Err(LinkError {
            problems: vec![format!("{dir} is not a directory in the image")],
            entrypoint_missing: true,
            root,
        });
    };
    let mut report = PythonReport::default();
    let mut problems = Vec::new();
    for m in &modules {
        match check_as(fs, m, m, ld_library_path, arch) {
            Ok(r) => {
                report
                    .objects
                    .extend(r.objects.into_iter().filter(|o| o != m));
                report.unchecked.extend(r.unchecked);
            }
            Err(e) => problems.extend(e.problems),
        }
    }
    report.modules = modules;
    if problems.is_empty() {
        return Ok(report);
    }
    const SHOWN: usize = 20;
    if problems.len() > SHOWN {
        let more = problems.len() - SHOWN;
        problems.truncate(SHOWN);
        problems.push(format!("… and {more} more"));
    }
    Err(LinkError {
        problems,
        entrypoint_missing: false,
        root,
    })
}

/// What [`check_python_extensions`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonReport {
    /// Image paths of the extension modules found and checked.
    pub modules: Vec<String>,
    /// The shared objects they need, directly or not.
    pub objects: BTreeSet<String>,
    /// Libraries present that the check could not read.
    pub unchecked: BTreeSet<String>,
}

/// [`check`], naming the root `label` in the problems it finds.
fn check_as(
    fs: &ImageFs,
    entrypoint: &str,
    label: &str,
    ld_library_path: &str,
    arch: &str,
) -> Result<LinkReport, LinkError> {
    let mut report = LinkReport::default();
    let mut problems = Vec::new();
    if !fs.exists("bin/sh") {
        report.warnings.push("the image has no /bin/sh: Azure ML runs its own set-up inside the container with /bin/sh".into());
    }
    let want_machine = match arch {
        "amd64" => goblin::elf::header::EM_X86_64,
        "arm64" => goblin::elf::header::EM_AARCH64,
        _ => 0,
    };
    let Some((entry_path, _)) = fs.resolve(entrypoint) else {
        return Err(LinkError {
            problems: vec![format!("entrypoint {entrypoint} is not in the image")],
            entrypoint_missing: true,
            root: Root::Entrypoint,
        });
    };
    let bytes = match fs.read(&entry_path) {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            return Err(LinkError {
                problems: vec![format!("cannot read entrypoint {entrypoint}: {e}")],
                entrypoint_missing: false,
                root: Root::Entrypoint,
            })
        }
        None => {
            report.unchecked.push(entry_path);
            return Ok(report);
        }
    };
    let head: &[u8] = (*bytes).as_ref();
    if !head.starts_with(b"\x7fELF") {
        // A script: its interpreter must be there.
        if let Some(line) = head
            .strip_prefix(b"#!")
            .and_then(|b| b.split(|c| *c == b'\n').next())
        {
            let interp = String::from_utf8_lossy(line)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned();
            if !fs.exists(&interp) {
                problems.push(format!(
                    "{entrypoint} is a script for {interp}, which is not in the image"
                ));
            }
        }
        return if problems.is_empty() {
            Ok(report)
        } else {
            Err(LinkError {
                problems,
                entrypoint_missing: false,
                root: Root::Entrypoint,
            })
        };
    }
    let env_dirs: Vec<String> = ld_library_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    let conf_dirs = fs.ld_so_conf_dirs();
    let short = |p: &str| p.rsplit('/').next().unwrap_or(p).to_owned();

    // Breadth-first over the objects, keyed by their real path.
    let mut seen: BTreeMap<String, Object> = BTreeMap::new();
    // soname → real path it resolved to, per loading object (for version checks).
    let mut edges: Vec<(String, String, String)> = Vec::new(); // (object, needed name, resolved path)
    let mut queue: VecDeque<(String, Blob)> = VecDeque::from([(entry_path.clone(), bytes)]);
    let mut exe_rpath: Vec<String> = Vec::new();
    let mut first = true;
    while let Some((path, bytes)) = queue.pop_front() {
        if seen.contains_key(&path) {
            continue;
        }
        let Some(obj) = parse((*bytes).as_ref()) else {
            problems.push(format!("{path} is not a readable ELF file"));
            continue;
        };
        if want_machine != 0 && obj.machine != want_machine {
            problems.push(format!(
                "{path} is built for ELF machine {} but the platform is linux/{arch}",
                obj.machine
            ));
        }
        if let Some(i) = &obj.interp {
            if !fs.exists(i) {
                problems.push(format!(
                    "{path} needs the program loader {i}, which is not in the image"
                ));
            }
        }
        let origin = path.rsplit_once('/').map_or("/".to_owned(), |(d, _)| {
            if d.is_empty() {
                "/".into()
            } else {
                d.to_owned()
            }
        });
        let subst = |d: &str| {
            d.replace("$ORIGIN", &origin)
                .replace("${ORIGIN}", &origin)
                .replace("$LIB", "lib")
                .replace("${LIB}", "lib")
        };
        if first {
            exe_rpath = if obj.runpath.is_empty() {
                obj.rpath.iter().map(|d| subst(d)).collect()
            } else {
                Vec::new()
            };
            first = false;
        }
        let mut dirs: Vec<String> = Vec::new();
        if obj.runpath.is_empty() {
            dirs.extend(obj.rpath.iter().map(|d| subst(d)));
            dirs.extend(exe_rpath.iter().cloned());
        }
        dirs.extend(env_dirs.iter().cloned());
        dirs.extend(obj.runpath.iter().map(|d| subst(d)));
        dirs.extend(conf_dirs.iter().cloned());
        dirs.extend(DEFAULT_DIRS.iter().map(|d| d.to_string()));
        let mut once = BTreeSet::new();
        dirs.retain(|d| once.insert(d.clone()));
        for name in &obj.needed {
            let found = if name.contains('/') {
                fs.resolve(name)
            } else {
                dirs.iter().find_map(|d| {
                    fs.resolve(&format!("{}/{name}", d.trim_end_matches('/')))
                        .filter(|(_, e)| matches!(e, Entry::File(_)))
                })
            };
            match found {
                None => problems.push(format!(
                    "{label} needs {name}, which is not in the image (needed by {path}; searched {})",
                    dirs.join(":")
                )),
                Some((real, _)) => {
                    edges.push((path.clone(), name.clone(), real.clone()));
                    match fs.read(&real) {
                        Some(Ok(b)) => queue.push_back((real, b)),
                        Some(Err(e)) => problems.push(format!("cannot read {real}: {e}")),
                        None => {
                            if !report.unchecked.contains(&real) {
                                report.unchecked.push(real);
                            }
                        }
                    }
                }
            }
        }
        seen.insert(path, obj);
    }
    // Symbol versions: each object's needs against what the library it loaded defines.
    for (from, name, real) in &edges {
        let (Some(obj), Some(lib)) = (seen.get(from), seen.get(real)) else {
            continue;
        };
        let Some(versions) = obj.needs.get(name) else {
            continue;
        };
        for v in versions {
            if !lib.defines.contains(v) {
                let prefix = version_key(v).0;
                let has = newest(&lib.defines, &prefix).map_or_else(
                    || format!("no {prefix} versions"),
                    |n| format!("at most {n}"),
                );
                problems.push(format!(
                    "{} needs {v} from {name}, but the image's {name} ({real}) provides {has}",
                    short(from)
                ));
            }
        }
    }
    report.objects = seen.into_keys().collect();
    if problems.is_empty() {
        Ok(report)
    } else {
        problems.dedup();
        Err(LinkError {
            problems,
            entrypoint_missing: false,
            root: Root::Entrypoint,
        })
    }
}

#[cfg(test)]
#[path = "linkcheck_tests.rs"]
mod tests;
