//! Environment files (`environments/*.toml`): parsed, variables expanded, every field checked,
//! each error naming the file, line and field and saying what would be valid.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::digest::Digest;
use crate::layer::compress::Compression;

mod vars;
pub use vars::Vars;

/// An error in an environment file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for SpecError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnv {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    platform: Option<Spanned<String>>,
    base: Spanned<RawBase>,
    #[serde(default)]
    compression: Option<Spanned<String>>,
    #[serde(default, rename = "layer")]
    layers: Vec<RawLayer>,
    #[serde(default)]
    config: RawConfig,
    #[serde(default)]
    publish: Publish,
    #[serde(default)]
    sbom: RawSbom,
    #[serde(default, rename = "link-check")]
    link_check: RawLinkCheck,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLinkCheck {
    #[serde(default)]
    dlopen: Vec<Spanned<String>>,
    #[serde(default, rename = "python-extensions")]
    python_extensions: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSbom {
    #[serde(rename = "cargo-lock")]
    cargo_lock: Option<Spanned<String>>,
    #[serde(rename = "cargo-package")]
    cargo_package: Option<String>,
    binary: Option<String>,
}

/// What the SBOM needs beyond the layers: the binary built from a Cargo workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sbom {
    /// The workspace's `Cargo.lock`.
    pub cargo_lock: Option<PathBuf>,
    /// The binary's crate [default: the binary's file name].
    pub cargo_package: Option<String>,
    /// The binary's path in the image [default: the entrypoint].
    pub binary: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBase {
    image: Option<Spanned<String>>,
    oci: Option<Spanned<String>>,
    #[serde(rename = "docker-archive")]
    docker_archive: Option<Spanned<String>>,
    scratch: Option<bool>,
    digest: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayer {
    name: Spanned<String>,
    #[serde(rename = "files")]
    files: Vec<RawFiles>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    src: Spanned<String>,
    dest: Spanned<String>,
    mode: Option<Spanned<u32>>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    workdir: Option<String>,
    user: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    annotations: BTreeMap<String, Spanned<String>>,
}

/// Where later commands send the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// Registry host, e.g. `myregistry.azurecr.io`.
    pub registry: Option<String>,
    /// Repository in the registry, e.g. `envbuild/mnist`.
    pub repository: Option<String>,
    /// Tag pushed beside the digest.
    pub tag: Option<String>,
    /// Azure ML environment name.
    pub azureml_environment: Option<String>,
}

/// The base image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Scratch,
    /// `registry/repo@sha256:…` (pulled by digest).
    Registry {
        reference: String,
        digest: Digest,
    },
    /// An OCI image layout directory, optionally pinned.
    Oci {
        dir: PathBuf,
        digest: Option<Digest>,
    },
    /// A `docker save` archive, optionally pinned (the config digest, i.e. the image ID).
    DockerArchive {
        file: PathBuf,
        digest: Option<Digest>,
    },
}

/// One source mapped into a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMapping {
    pub src: PathBuf,
    pub dest: String,
    pub mode: Option<u32>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub line: usize,
}

/// One layer: a name (history, cache) and its sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub name: String,
    pub files: Vec<FileMapping>,
    pub line: usize,
}

/// The image config envbuild writes (merged over the base's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A checked environment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub file: PathBuf,
    /// The digest of the file's bytes (what the provenance statement names).
    pub digest: Digest,
    pub name: String,
    pub description: Option<String>,
    pub os: String,
    pub architecture: String,
    pub base: Base,
    pub compression: Compression,
    pub layers: Vec<Layer>,
    pub config: Config,
    pub publish: Publish,
    pub sbom: Sbom,
    /// Libraries the program loads at run time (dlopen), absolute image paths: the link check
    /// proves each loads, with all it needs, as it does the entrypoint (`[link-check] dlopen`).
    pub dlopen: Vec<String>,
    /// Image directories (site-packages, Python's lib-dynload) whose Python extension modules
    /// the link check proves importable, each with all it needs (`[link-check] python-extensions`).
    pub python_extensions: Vec<String>,
}

/// Loads an environment file with the variables of its own location ([`Vars::for_file`]).
pub fn load_file(path: &Path) -> Result<Environment, SpecError> {
    load(path, &Vars::for_file(path))
}

pub fn load(path: &Path, vars: &Vars) -> Result<Environment, SpecError> {
    let fail = |message: String| SpecError {
        file: path.to_path_buf(),
        line: None,
        field: String::new(),
        message,
    };
    // A regular file of a sane size: a FIFO, a device (`/dev/zero`) or a runaway file would
    // be read forever or into all memory.
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(fail(
            "not a regular file (an environment file is a TOML file, not a pipe or device)".into(),
        ));
    }
    let f = std::fs::File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let bytes = crate::http::read_capped(f, MAX_FILE).map_err(|e| match e {
        Some(e) => fail(format!("cannot read: {e}")),
        None => fail(format!(
            "larger than {} KiB, which no environment file is",
            MAX_FILE >> 10
        )),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse(path, &text, vars)
}

/// The largest environment file read.
const MAX_FILE: u64 = 1 << 20;

/// The dotted name (`table.key`) of the key whose `key = value` line holds `offset`, with the
/// `[table]` or `[[table]]` header above it; `None` off such a line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].split('\n').next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with(['[', '#']) || key.contains(char::is_whitespace) {
        return None;
    }
    let table = text[..start].lines().rev().find_map(|l| {
        let l = l.trim();
        l.starts_with('[').then(|| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
    });
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

/// Checks environment file text; `path` names it in errors and anchors relative paths.
pub fn parse(path: &Path, text: &str, vars: &Vars) -> Result<Environment, SpecError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let err = |span: Option<std::ops::Range<usize>>, field: &str, message: String| SpecError {
        file: path.to_path_buf(),
        line: span.map(|s| line_of(s.start)),
        field: field.to_owned(),
        message,
    };
    let raw: RawEnv = toml::from_str(text).map_err(|e| {
        let msg = e.message().to_owned();
        let field = e
            .span()
            .filter(|_| msg.starts_with("invalid type") || msg.starts_with("invalid value"))
            .and_then(|s| key_at(text, s.start))
            .unwrap_or_default();
        err(e.span(), &field, msg.replace("\n", " "))
    })?;
    let expand = |s: &Spanned<String>, field: &str| {
        vars.expand(s.get_ref())
            .map_err(|m| err(Some(s.span()), field, m))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let path_of = |s: &Spanned<String>, field: &str| -> Result<PathBuf, SpecError> {
        let p = PathBuf::from(expand(s, field)?);
        Ok(if p.is_absolute() { p } else { dir.join(p) })
    };

    let name = raw.name.get_ref().clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(err(
            Some(raw.name.span()),
            "name",
            format!("`{name}` is not a valid name (letters, digits, `-`, `_`, `.`)"),
        ));
    }
    let (os, architecture) = match raw.platform.as_ref().map(|p| p.get_ref().as_str()) {
        None | Some("linux/amd64") => ("linux", "amd64"),
        Some("linux/arm64") => ("linux", "arm64"),
        Some(other) => {
            let p = raw.platform.as_ref().expect("some");
            return Err(err(
                Some(p.span()),
                "platform",
                format!("`{other}` is not supported (linux/amd64 or linux/arm64)"),
            ));
        }
    };

    let b = raw.base.get_ref();
    let base_span = raw.base.span();
    let digest = match &b.digest {
        None => None,
        Some(d) => Some(
            d.get_ref()
                .parse::<Digest>()
                .map_err(|e| err(Some(d.span()), "base.digest", e.to_string()))?,
        ),
    };
    let chosen = [
        b.image.is_some(),
        b.oci.is_some(),
        b.docker_archive.is_some(),
        b.scratch == Some(true),
    ];
    if chosen.iter().filter(|x| **x).count() != 1 {
        return Err(err(
            Some(base_span),
            "base",
            "give exactly one of image = \"REGISTRY/REPO@sha256:…\", oci = \"DIR\", docker-archive = \"FILE\", scratch = true".into(),
        ));
    }
    let base = if let Some(img) = &b.image {
        let reference = expand(img, "base.image")?;
        let Some((_, d)) = reference.split_once('@') else {
            return Err(err(Some(img.span()), "base.image", format!("`{reference}` is not pinned: add @sha256:<digest> (a tag can move; a digest cannot)")));
        };
        let pinned = d
            .parse::<Digest>()
            .map_err(|e| err(Some(img.span()), "base.image", e.to_string()))?;
        Base::Registry {
            reference,
            digest: pinned,
        }
    } else if let Some(o) = &b.oci {
        Base::Oci {
            dir: path_of(o, "base.oci")?,
            digest,
        }
    } else if let Some(a) = &b.docker_archive {
        Base::DockerArchive {
            file: path_of(a, "base.docker-archive")?,
            digest,
        }
    } else {
        Base::Scratch
    };

    let compression = match &raw.compression {
        None => Compression::Gzip(crate::layer::compress::GZIP_DEFAULT_LEVEL),
        Some(c) => c.get_ref().parse().map_err(|m: crate::error::BadValue| {
            err(Some(c.span()), "compression", m.to_string())
        })?,
    };

    let mut layers = Vec::new();
    for (i, l) in raw.layers.iter().enumerate() {
        let mut files = Vec::new();
        for (j, f) in l.files.iter().enumerate() {
            let field = |k: &str| format!("layer[{i}].files[{j}].{k}");
            let dest = expand(&f.dest, &field("dest"))?;
            crate::layer::image_path(&dest)
                .map_err(|e| err(Some(f.dest.span()), &field("dest"), e.to_string()))?;
            let mode = match &f.mode {
                Some(m) if *m.get_ref() > 0o777 => {
                    return Err(err(Some(m.span()), &field("mode"), format!("{} (octal {:o}) is not a permission mode: write it in octal, e.g. 0o755 (setuid, setgid and sticky bits are not supported)", m.get_ref(), m.get_ref())))
                }
                m => m.as_ref().map(|m| *m.get_ref()),
            };
            files.push(FileMapping {
                src: path_of(&f.src, &field("src"))?,
                dest,
                mode,
                include: f.include.clone(),
                exclude: f.exclude.clone(),
                line: line_of(f.src.span().start),
            });
        }
        layers.push(Layer {
            name: l.name.get_ref().clone(),
            files,
            line: line_of(l.name.span().start),
        });
    }

    let c = raw.config;
    let expand_map = |m: &BTreeMap<String, Spanned<String>>, what: &str| {
        m.iter()
            .map(|(k, v)| Ok((k.clone(), expand(v, &format!("config.{what}.{k}"))?)))
            .collect::<Result<BTreeMap<_, _>, SpecError>>()
    };
    let config = Config {
        entrypoint: c.entrypoint,
        cmd: c.cmd,
        env: expand_map(&c.env, "env")?,
        workdir: c.workdir,
        user: c.user,
        labels: expand_map(&c.labels, "labels")?,
        annotations: expand_map(&c.annotations, "annotations")?,
    };
    let sbom = Sbom {
        cargo_lock: match &raw.sbom.cargo_lock {
            Some(p) => Some(path_of(p, "sbom.cargo-lock")?),
            None => None,
        },
        cargo_package: raw.sbom.cargo_package.clone(),
        binary: raw.sbom.binary.clone(),
    };
    let image_paths = |list: &[Spanned<String>], field: &str| -> Result<Vec<String>, SpecError> {
        let mut out = Vec::new();
        for d in list {
            let p = expand(d, field)?;
            if !p.starts_with('/') {
                return Err(err(
                    Some(d.span()),
                    field,
                    format!("`{p}` is not an absolute path in the image"),
                ));
            }
            out.push(p);
        }
        Ok(out)
    };
    let dlopen = image_paths(&raw.link_check.dlopen, "link-check.dlopen")?;
    let python_extensions = image_paths(
        &raw.link_check.python_extensions,
        "link-check.python-extensions",
    )?;
    Ok(Environment {
        file: path.to_path_buf(),
        // The text is the file's bytes (checked to be UTF-8, not changed).
        digest: Digest::of(text.as_bytes()),
        name,
        description: raw.description,
        os: os.into(),
        architecture: architecture.into(),
        base,
        compression,
        layers,
        config,
        publish: raw.publish,
        sbom,
        dlopen,
        python_extensions,
    })
}

#[cfg(test)]
mod tests;
