//! Reading images back: `envbuild inspect` (layers, config, annotations) and `envbuild diff`
//! (why two digests differ: which layer, which file, which header field or config key).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageIndex, ImageManifest};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::image::ImageError;

/// An image opened from an OCI layout or a docker archive.
#[derive(Debug, Clone)]
pub struct Opened {
    pub digest: Option<Digest>,
    /// The manifest (none for a docker archive, which has only `manifest.json`).
    pub manifest: Option<ImageManifest>,
    pub config: Value,
    pub layers: Vec<OpenedLayer>,
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    Layout(PathBuf),
    Archive(PathBuf),
}

impl Opened {
    /// The manifest as JSON, for the field-by-field diff (null for a docker archive).
    fn manifest_value(&self) -> Value {
        self.manifest
            .as_ref()
            .and_then(|m| serde_json::to_value(m).ok())
            .unwrap_or(Value::Null)
    }
}

/// A layer and where to read it.
#[derive(Debug, Clone)]
pub struct OpenedLayer {
    pub digest: Digest,
    pub diff_id: Option<Digest>,
    pub size: u64,
    pub media_type: String,
    /// Member name inside a docker archive.
    member: Option<String>,
}

fn bad(path: &Path, m: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        path: path.to_path_buf(),
        message: m.into(),
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn json(path: &Path, bytes: &[u8]) -> Result<Value, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| bad(path, format!("not JSON: {e}")))
}

/// Opens an OCI image layout (its first manifest).
pub fn open_oci(dir: &Path) -> Result<Opened, ImageError> {
    let index_path = dir.join("index.json");
    let index: ImageIndex = super::parse(
        &index_path,
        &fs::read(&index_path).map_err(io_at(&index_path))?,
    )?;
    let (d, size) = super::descriptor(
        &index_path,
        index
            .manifests()
            .first()
            .ok_or_else(|| bad(&index_path, "no manifest"))?,
    )?;
    let blob = |d: &Digest, size| super::base::layout_blob(dir, d, Some(size)).map(|(_, b)| b);
    let manifest: ImageManifest = super::parse(dir, &blob(&d, size)?)?;
    let (cd, csize) = super::descriptor(dir, manifest.config())?;
    let config = json(dir, &blob(&cd, csize)?)?;
    let diff_ids = super::diff_ids(dir, &config).unwrap_or_default();
    let mut layers = Vec::new();
    for (i, l) in manifest.layers().iter().enumerate() {
        let (digest, size) = super::descriptor(dir, l)?;
        layers.push(OpenedLayer {
            digest,
            diff_id: diff_ids.get(i).copied(),
            size,
            media_type: l.media_type().to_string(),
            member: None,
        });
    }
    Ok(Opened {
        digest: Some(d),
        manifest: Some(manifest),
        config,
        layers,
        source: Source::Layout(dir.to_path_buf()),
    })
}

/// Calls `f` with the archive member `name`, streamed from the tar; `None` when it is absent.
fn with_member<T>(
    file: &Path,
    name: &str,
    f: impl FnOnce(&mut dyn Read) -> io::Result<T>,
) -> Result<Option<T>, ImageError> {
    let not_tar = |e: io::Error| {
        bad(
            file,
            format!("not a tar archive (a docker archive is a tar with manifest.json): {e}"),
        )
    };
    let mut a = tar::Archive::new(fs::File::open(file).map_err(io_at(file))?);
    for e in a.entries().map_err(not_tar)? {
        let mut e = e.map_err(not_tar)?;
        if e.path().map_err(not_tar)?.as_os_str() == name {
            return f(&mut e).map(Some).map_err(io_at(file));
        }
    }
    Ok(None)
}

/// The bytes of archive member `name`; its absence is an error naming it.
fn member_bytes(file: &Path, name: &str) -> Result<Vec<u8>, ImageError> {
    with_member(file, name, |r| {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    })?
    .ok_or_else(|| bad(file, format!("no {name} in the archive")))
}

fn member_json<T: serde::de::DeserializeOwned>(file: &Path, name: &str) -> Result<T, ImageError> {
    super::parse(file, &member_bytes(file, name)?)
}

/// The first image of a docker archive's manifest.json.
fn first_image(file: &Path) -> Result<super::ArchiveEntry, ImageError> {
    let entries: Vec<super::ArchiveEntry> = member_json(file, "manifest.json")?;
    entries
        .into_iter()
        .next()
        .ok_or_else(|| bad(file, "manifest.json lists no image"))
}

/// The image ID (its config's digest) of a docker archive's first image, as the engine names
/// it after `docker load`.
pub fn archive_image_id(file: &Path) -> Result<Digest, ImageError> {
    Ok(Digest::of(&member_bytes(file, &first_image(file)?.config)?))
}

/// Opens a docker archive (manifest.json's single image).
pub fn open_docker_archive(file: &Path) -> Result<Opened, ImageError> {
    let img = first_image(file)?;
    let config: Value = member_json(file, &img.config)?;
    let diff_ids = super::diff_ids(file, &config).unwrap_or_default();
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    let mut a = tar::Archive::new(fs::File::open(file).map_err(io_at(file))?);
    for e in a.entries().map_err(io_at(file))? {
        let e = e.map_err(io_at(file))?;
        sizes.insert(
            e.path().map_err(io_at(file))?.display().to_string(),
            e.size(),
        );
    }
    let layer_names = img.layers;
    let layers = layer_names
        .iter()
        .enumerate()
        .map(|(i, name)| OpenedLayer {
            digest: name
                .trim_start_matches("blobs/sha256/")
                .parse()
                .unwrap_or_else(|_| Digest::of(name.as_bytes())),
            diff_id: diff_ids.get(i).copied(),
            size: sizes.get(name).copied().unwrap_or(0),
            media_type: "docker-archive member".into(),
            member: Some(name.clone()),
        })
        .collect();
    Ok(Opened {
        digest: None,
        manifest: None,
        config,
        layers,
        source: Source::Archive(file.to_path_buf()),
    })
}

/// One entry of a layer tar, as far as a digest can see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub fields: BTreeMap<&'static str, String>,
    pub content: Option<Digest>,
}

impl Opened {
    fn layer_reader(&self, l: &OpenedLayer) -> Result<Box<dyn Read>, ImageError> {
        let raw: Box<dyn Read> = match &self.source {
            Source::Layout(dir) => {
                // Checked whole first: a corrupt layer is named with both digests, not met as
                // a decompression error halfway through.
                let p = dir.join("blobs/sha256").join(l.digest.hex());
                super::verify_blob(&p, &l.digest, l.size)?;
                Box::new(io::BufReader::new(fs::File::open(&p).map_err(io_at(&p))?))
            }
            Source::Archive(file) => {
                // Layers can be gigabytes: stream the member into a temporary file.
                let name = l.member.clone().unwrap_or_default();
                let mut tmp = tempfile::tempfile().map_err(io_at(file))?;
                with_member(file, &name, |r| io::copy(r, &mut tmp))?
                    .ok_or_else(|| bad(file, format!("no member {name}")))?;
                io::Seek::rewind(&mut tmp).map_err(io_at(file))?;
                Box::new(tmp)
            }
        };
        crate::layer::compress::decoder(raw).map_err(io_at(Path::new("<layer>")))
    }

    /// Every entry of layer `i`: header fields and content digest, by path.
    pub fn entries(&self, i: usize) -> Result<BTreeMap<String, EntryInfo>, ImageError> {
        let here = Path::new("<layer>");
        let mut a = tar::Archive::new(self.layer_reader(&self.layers[i])?);
        let mut out = BTreeMap::new();
        for e in a.entries().map_err(io_at(here))? {
            let mut e = e.map_err(io_at(here))?;
            let h = e.header().clone();
            let path = e.path().map_err(io_at(here))?.display().to_string();
            let mut fields = BTreeMap::new();
            fields.insert("type", format!("{:?}", h.entry_type()));
            fields.insert("mode", format!("{:o}", h.mode().unwrap_or(0)));
            fields.insert("uid", h.uid().unwrap_or(0).to_string());
            fields.insert("gid", h.gid().unwrap_or(0).to_string());
            fields.insert(
                "uname",
                h.username().ok().flatten().unwrap_or("").to_owned(),
            );
            fields.insert(
                "gname",
                h.groupname().ok().flatten().unwrap_or("").to_owned(),
            );
            fields.insert("mtime", h.mtime().unwrap_or(0).to_string());
            fields.insert("size", e.size().to_string());
            fields.insert(
                "linkname",
                e.link_name()
                    .ok()
                    .flatten()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default(),
            );
            let content = if h.entry_type().is_file() {
                let mut s = Sha256::new();
                io::copy(&mut e, &mut s).map_err(io_at(here))?;
                Some(Digest::from_sha256(s))
            } else {
                None
            };
            out.insert(path, EntryInfo { fields, content });
        }
        Ok(out)
    }
}

/// The image as `inspect --json` prints it: digest, platform, the config as it is, layers.
pub fn as_json(img: &Opened) -> Value {
    let layers: Vec<Value> = img
        .layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "digest": l.digest.to_string(),
                "size": l.size,
                "media_type": l.media_type,
                "diff_id": l.diff_id.map(|d| d.to_string()),
            })
        })
        .collect();
    serde_json::json!({
        "digest": img.digest.map(|d| d.to_string()),
        "platform": super::typed_config(Path::new("config"), &img.config).ok().map(|c| {
            serde_json::json!({"os": c.os().to_string(), "architecture": c.architecture().to_string()})
        }),
        "config": img.config,
        "layers": layers,
    })
}

/// Opens `oci:DIR` or `docker-archive:FILE`.
pub fn open(spec: &str) -> Result<Opened, ImageError> {
    match spec.split_once(':') {
        Some(("oci", p)) => open_oci(Path::new(p)),
        Some(("docker-archive", p)) => open_docker_archive(Path::new(p)),
        _ => Err(bad(
            Path::new(spec),
            "not an image (use oci:DIR or docker-archive:FILE)",
        )),
    }
}

/// The human-readable description `envbuild inspect` prints.
pub fn describe(img: &Opened) -> Result<String, ImageError> {
    let mut s = String::new();
    if let Some(d) = img.digest {
        s.push_str(&format!("image        {d}\n"));
    }
    let c = super::typed_config(Path::new("config"), &img.config)?;
    let cfg = c.config().clone().unwrap_or_default();
    let json = |v: &Option<Vec<String>>| serde_json::to_string(v).unwrap_or_default();
    s.push_str(&format!("platform     {}/{}\n", c.os(), c.architecture()));
    s.push_str(&format!(
        "created      {}\n",
        c.created().as_deref().unwrap_or("")
    ));
    s.push_str(&format!("entrypoint   {}\n", json(cfg.entrypoint())));
    s.push_str(&format!("cmd          {}\n", json(cfg.cmd())));
    s.push_str(&format!(
        "workdir      {}\n",
        cfg.working_dir().as_deref().unwrap_or("")
    ));
    s.push_str(&format!(
        "user         {}\n",
        cfg.user().as_deref().unwrap_or("")
    ));
    for e in cfg.env().iter().flatten() {
        s.push_str(&format!("env          {e}\n"));
    }
    let sorted = |m: &Option<std::collections::HashMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    for (k, v) in sorted(cfg.labels()) {
        s.push_str(&format!("label        {k}={v}\n"));
    }
    let annotations = img.manifest.as_ref().and_then(|m| m.annotations().clone());
    for (k, v) in sorted(&annotations) {
        s.push_str(&format!("annotation   {k}={v}\n"));
    }
    let history: Vec<String> = c
        .history()
        .iter()
        .flatten()
        .filter(|h| h.empty_layer() != Some(true))
        .map(|h| h.created_by().clone().unwrap_or_default())
        .collect();
    for (i, l) in img.layers.iter().enumerate() {
        let entries = img.entries(i)?;
        let mut top: Vec<String> = entries
            .keys()
            .filter_map(|p| p.trim_end_matches('/').split('/').next().map(str::to_owned))
            .collect();
        top.dedup();
        s.push_str(&format!(
            "layer {i}      {}\n  diffID     {}\n  size       {} bytes ({} entries, {})\n  made by    {}\n  top level  {}\n",
            l.digest,
            l.diff_id.map(|d| d.to_string()).unwrap_or_default(),
            l.size,
            entries.len(),
            l.media_type,
            history.get(i).map(String::as_str).unwrap_or(""),
            top.join(" ")
        ));
    }
    Ok(s)
}

/// Flattens JSON into `path = value` lines for key-by-key comparison.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| flatten(&format!("{prefix}.{k}"), v, out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| flatten(&format!("{prefix}[{i}]"), v, out)),
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

fn json_diff(what: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten(what, a, &mut fa);
    flatten(what, b, &mut fb);
    for k in fa
        .keys()
        .chain(fb.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (fa.get(k), fb.get(k)) {
            (Some(x), Some(y)) if x != y => out.push(format!("{k}: {x} ≠ {y}")),
            (Some(x), None) => out.push(format!("{k}: {x} only in A")),
            (None, Some(y)) => out.push(format!("{k}: {y} only in B")),
            _ => {}
        }
    }
}

/// Explains how `b` differs from `a`; empty when they are the same image.
pub fn diff(a: &Opened, b: &Opened) -> Result<Vec<String>, ImageError> {
    let mut out = Vec::new();
    if a.digest.is_some() && a.digest == b.digest {
        return Ok(out);
    }
    if a.layers.len() != b.layers.len() {
        out.push(format!(
            "layer count: {} ≠ {}",
            a.layers.len(),
            b.layers.len()
        ));
    }
    for (i, (la, lb)) in a.layers.iter().zip(&b.layers).enumerate() {
        if la.digest == lb.digest {
            continue;
        }
        if let Some(same) = la.diff_id.filter(|d| Some(*d) == lb.diff_id) {
            out.push(format!(
                "layer {i}: same content (diffID {}), different compression: {} ≠ {}",
                same, la.digest, lb.digest
            ));
            continue;
        }
        out.push(format!(
            "layer {i}: content differs ({} ≠ {})",
            la.digest, lb.digest
        ));
        let (ea, eb) = (a.entries(i)?, b.entries(i)?);
        let (oa, ob): (Vec<&String>, Vec<&String>) = (ea.keys().collect(), eb.keys().collect());
        if oa != ob {
            for p in oa.iter().filter(|p| !eb.contains_key(**p)) {
                out.push(format!("layer {i}: {p}: only in A"));
            }
            for p in ob.iter().filter(|p| !ea.contains_key(**p)) {
                out.push(format!("layer {i}: {p}: only in B"));
            }
        }
        for (p, x) in &ea {
            let Some(y) = eb.get(p) else { continue };
            for (field, va) in &x.fields {
                if y.fields.get(field) != Some(va) {
                    out.push(format!(
                        "layer {i}: {p}: header {field} {va} ≠ {}",
                        y.fields.get(field).map(String::as_str).unwrap_or("")
                    ));
                }
            }
            if x.content != y.content {
                out.push(format!("layer {i}: {p}: content differs"));
            }
        }
    }
    json_diff("config", &a.config, &b.config, &mut out);
    let (ma, mb) = (a.manifest_value(), b.manifest_value());
    json_diff(
        "manifest.annotations",
        &ma["annotations"],
        &mb["annotations"],
        &mut out,
    );
    if out.is_empty() && a.digest != b.digest {
        json_diff("manifest", &ma, &mb, &mut out);
    }
    Ok(out)
}
