//! Images: base images read from OCI layouts and docker archives, config and manifest assembled
//! and serialised canonically, and the image written as an OCI layout or a docker archive.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use thiserror::Error;

use crate::cache::Cache;
use crate::digest::Digest;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What can go wrong reading or writing images.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("base {name}: digest mismatch: the environment pins {expected}, the image is {found}")]
    DigestMismatch {
        name: String,
        expected: Digest,
        found: Digest,
    },
    #[error("{}: no manifest for {platform} (found: {found})", path.display())]
    NoPlatform {
        path: PathBuf,
        platform: String,
        found: String,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// JSON with object keys sorted at every level and no insignificant whitespace.
pub fn canonical_json(v: &Value) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                let mut out = serde_json::Map::new();
                for (k, v) in sorted {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    // serde_json's Map is a BTreeMap unless `preserve_order` is on; sorting first keeps the
    // output canonical either way.
    let mut out = Vec::new();
    write_sorted(&sort(v), &mut out);
    out
}

fn write_sorted(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(serde_json::to_string(k).expect("string").as_bytes());
                out.push(b':');
                write_sorted(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_sorted(x, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(serde_json::to_string(other).expect("json").as_bytes()),
    }
}

/// A layer as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDesc {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
}

/// A base image, its blobs already in the cache.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// Human name for annotations (`org.opencontainers.image.base.name`).
    pub name: String,
    /// Digest of the base's manifest (or, for a docker archive, its config: the image ID).
    pub digest: Option<Digest>,
    pub layers: Vec<LayerDesc>,
    /// The base config as JSON (empty object for scratch).
    pub config: Value,
    /// Where each layer's blob is now (in the source layout, or already in the cache).
    pub blobs: Vec<PathBuf>,
}

impl BaseImage {
    pub fn scratch() -> BaseImage {
        BaseImage {
            name: "scratch".into(),
            digest: None,
            layers: Vec::new(),
            config: json!({}),
            blobs: Vec::new(),
        }
    }

    /// Copies the layer blobs into the cache (verifying each while copying); done after the
    /// link check, so that a refused build leaves the cache untouched.
    pub fn import(&self, cache: &Cache) -> Result<(), ImageError> {
        for (l, path) in self.layers.iter().zip(&self.blobs) {
            if !cache
                .import_file(path, &l.digest, l.size)
                .map_err(io_at(path))?
            {
                return Err(invalid(
                    path,
                    format!(
                        "blob does not match its digest {} and size {}",
                        l.digest, l.size
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn read_json(path: &Path) -> Result<(Vec<u8>, Value), ImageError> {
    let bytes = fs::read(path).map_err(io_at(path))?;
    let v = serde_json::from_slice(&bytes).map_err(|e| invalid(path, format!("not JSON: {e}")))?;
    Ok((bytes, v))
}

fn desc_digest(path: &Path, d: &Value) -> Result<(Digest, u64), ImageError> {
    let digest = d["digest"]
        .as_str()
        .ok_or_else(|| invalid(path, "descriptor without digest"))?;
    let digest = digest
        .parse::<Digest>()
        .map_err(|e| invalid(path, e.to_string()))?;
    let size = d["size"]
        .as_u64()
        .ok_or_else(|| invalid(path, "descriptor without size"))?;
    Ok((digest, size))
}

/// Reads a blob from an OCI layout, checking its size and digest.
fn layout_blob(
    dir: &Path,
    d: &Digest,
    size: Option<u64>,
) -> Result<(PathBuf, Vec<u8>), ImageError> {
    let path = dir.join("blobs/sha256").join(d.hex());
    let bytes = fs::read(&path).map_err(io_at(&path))?;
    if size.is_some_and(|s| s != bytes.len() as u64) || Digest::of(&bytes) != *d {
        return Err(invalid(
            &path,
            format!("blob does not match its digest {d}"),
        ));
    }
    Ok((path, bytes))
}

/// Loads an OCI image layout as a base: picks the manifest (by pinned digest, else the only one,
/// else the one for `os/arch`) and verifies manifest and config; layers are verified when
/// [`BaseImage::import`] copies them into the cache.
pub fn load_oci(
    dir: &Path,
    pinned: Option<Digest>,
    os: &str,
    arch: &str,
) -> Result<BaseImage, ImageError> {
    let index_path = dir.join("index.json");
    if !dir.join("oci-layout").is_file() {
        return Err(invalid(dir, "not an OCI image layout (no oci-layout file)"));
    }
    let (_, index) = read_json(&index_path)?;
    let mut candidates: Vec<(Digest, u64, Value)> = Vec::new();
    let mut stack: Vec<(PathBuf, Value)> = vec![(index_path.clone(), index)];
    while let Some((path, idx)) = stack.pop() {
        for m in idx["manifests"].as_array().cloned().unwrap_or_default() {
            let (d, size) = desc_digest(&path, &m)?;
            let mt = m["mediaType"].as_str().unwrap_or("");
            if mt == INDEX_MEDIA_TYPE || mt == DOCKER_LIST {
                let (p, bytes) = layout_blob(dir, &d, Some(size))?;
                let v = serde_json::from_slice(&bytes).map_err(|e| invalid(&p, e.to_string()))?;
                if pinned == Some(d) {
                    return Err(invalid(
                        &p,
                        format!("{d} is an index; pin the platform manifest's digest"),
                    ));
                }
                stack.push((p, v));
            } else {
                candidates.push((d, size, m));
            }
        }
    }
    let platform = format!("{os}/{arch}");
    let chosen = if let Some(p) = pinned {
        match candidates.iter().find(|c| c.0 == p) {
            Some(c) => c.clone(),
            None => {
                let found = candidates
                    .iter()
                    .map(|c| c.0.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(invalid(
                    dir,
                    format!(
                        "base digest mismatch: the environment pins {p}, the layout holds {found}"
                    ),
                ));
            }
        }
    } else if candidates.len() == 1 {
        candidates[0].clone()
    } else {
        let matching: Vec<_> = candidates
            .iter()
            .filter(|c| c.2["platform"]["os"] == os && c.2["platform"]["architecture"] == arch)
            .collect();
        match matching.as_slice() {
            [one] => (*one).clone(),
            _ => {
                let found = candidates
                    .iter()
                    .map(|c| {
                        format!(
                            "{}/{}",
                            c.2["platform"]["os"].as_str().unwrap_or("?"),
                            c.2["platform"]["architecture"].as_str().unwrap_or("?")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ImageError::NoPlatform {
                    path: dir.to_path_buf(),
                    platform,
                    found,
                });
            }
        }
    };
    let (manifest_path, manifest_bytes) = layout_blob(dir, &chosen.0, Some(chosen.1))?;
    let manifest: Value = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| invalid(&manifest_path, e.to_string()))?;
    let mt = manifest["mediaType"]
        .as_str()
        .unwrap_or(MANIFEST_MEDIA_TYPE);
    if mt != MANIFEST_MEDIA_TYPE && mt != DOCKER_MANIFEST {
        return Err(invalid(
            &manifest_path,
            format!("unsupported manifest media type {mt}"),
        ));
    }
    let (cd, csize) = desc_digest(&manifest_path, &manifest["config"])?;
    let (_, config_bytes) = layout_blob(dir, &cd, Some(csize))?;
    let config: Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| invalid(&manifest_path, e.to_string()))?;
    let layers = layer_descs(&manifest_path, &manifest, &config)?;
    let blobs = layers
        .iter()
        .map(|l| dir.join("blobs/sha256").join(l.digest.hex()))
        .collect();
    Ok(BaseImage {
        name: dir.display().to_string(),
        digest: Some(chosen.0),
        layers,
        config,
        blobs,
    })
}

/// The layers a manifest lists, with the diff IDs its config gives them (docker media types
/// mapped to OCI ones).
fn layer_descs(
    here: &Path,
    manifest: &Value,
    config: &Value,
) -> Result<Vec<LayerDesc>, ImageError> {
    let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| {
            d.as_str()
                .unwrap_or("")
                .parse::<Digest>()
                .map_err(|e| invalid(here, e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let layers_json = manifest["layers"].as_array().cloned().unwrap_or_default();
    if layers_json.len() != diff_ids.len() {
        return Err(invalid(
            here,
            format!(
                "{} layers but {} diff_ids in the config",
                layers_json.len(),
                diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for (l, diff_id) in layers_json.iter().zip(diff_ids) {
        let (d, size) = desc_digest(here, l)?;
        let media_type = l["mediaType"].as_str().unwrap_or("").replace(
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        );
        layers.push(LayerDesc {
            media_type,
            digest: d,
            size,
            diff_id,
        });
    }
    Ok(layers)
}

/// A base image pulled from a registry into the cache.
pub fn base_from_pulled(
    name: &str,
    digest: Digest,
    manifest: &Value,
    config: Value,
    cache: &Cache,
) -> Result<BaseImage, ImageError> {
    let layers = layer_descs(Path::new(name), manifest, &config)?;
    let blobs = layers.iter().map(|l| cache.blob_path(&l.digest)).collect();
    Ok(BaseImage {
        name: name.to_owned(),
        digest: Some(digest),
        layers,
        config,
        blobs,
    })
}

/// Loads a `docker save` archive as a base; its layer tars are reused byte for byte (they stay
/// uncompressed, media type `…layer.v1.tar`). The pin is the config digest (the image ID).
pub fn load_docker_archive(
    file: &Path,
    pinned: Option<Digest>,
    cache: &Cache,
) -> Result<BaseImage, ImageError> {
    let f = fs::File::open(file).map_err(io_at(file))?;
    let mut members: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    let mut manifest = None;
    let mut archive = tar::Archive::new(f);
    for entry in archive.entries().map_err(io_at(file))? {
        let mut e = entry.map_err(io_at(file))?;
        let name = e.path().map_err(io_at(file))?.display().to_string();
        if !e.header().entry_type().is_file() {
            continue;
        }
        if name == "manifest.json" {
            let mut s = Vec::new();
            e.read_to_end(&mut s).map_err(io_at(file))?;
            manifest = Some(s);
            continue;
        }
        let mut tmp = cache.temp_file().map_err(io_at(file))?;
        let mut h = HashTee {
            inner: tmp.as_file_mut(),
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
            n: 0,
        };
        io::copy(&mut e, &mut h).map_err(io_at(file))?;
        let (d, n) = (Digest::from_sha256(h.hasher), h.n);
        if !cache.has_blob(&d) {
            cache.commit_blob(tmp, &d).map_err(io_at(file))?;
        }
        members.insert(name, (d, n));
    }
    let manifest =
        manifest.ok_or_else(|| invalid(file, "not a docker archive (no manifest.json)"))?;
    let m: Value = serde_json::from_slice(&manifest)
        .map_err(|e| invalid(file, format!("manifest.json: {e}")))?;
    let img = m
        .as_array()
        .and_then(|a| (a.len() == 1).then(|| a[0].clone()))
        .ok_or_else(|| invalid(file, "manifest.json must describe exactly one image"))?;
    let member = |name: &str| {
        members.get(name).copied().ok_or_else(|| {
            invalid(
                file,
                format!("manifest.json names {name}, which the archive lacks"),
            )
        })
    };
    let (cd, _) = member(img["Config"].as_str().unwrap_or(""))?;
    if let Some(p) = pinned {
        if p != cd {
            return Err(ImageError::DigestMismatch {
                name: file.display().to_string(),
                expected: p,
                found: cd,
            });
        }
    }
    let config: Value =
        serde_json::from_slice(&fs::read(cache.blob_path(&cd)).map_err(io_at(file))?)
            .map_err(|e| invalid(file, e.to_string()))?;
    let mut layers = Vec::new();
    for l in img["Layers"].as_array().cloned().unwrap_or_default() {
        let (d, size) = member(l.as_str().unwrap_or(""))?;
        let mut magic = [0u8; 2];
        let _ = fs::File::open(cache.blob_path(&d)).and_then(|mut f| f.read_exact(&mut magic));
        let (media_type, diff_id) = if magic == [0x1f, 0x8b] {
            let mut gz = flate2::read::GzDecoder::new(
                fs::File::open(cache.blob_path(&d)).map_err(io_at(file))?,
            );
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            io::copy(&mut gz, &mut h).map_err(io_at(file))?;
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Digest::from_sha256(h),
            )
        } else {
            ("application/vnd.oci.image.layer.v1.tar", d)
        };
        layers.push(LayerDesc {
            media_type: media_type.into(),
            digest: d,
            size,
            diff_id,
        });
    }
    let blobs = layers.iter().map(|l| cache.blob_path(&l.digest)).collect();
    Ok(BaseImage {
        name: file.display().to_string(),
        digest: Some(cd),
        layers,
        config,
        blobs,
    })
}

struct HashTee<'a, W> {
    inner: &'a mut W,
    hasher: sha2::Sha256,
    n: u64,
}

impl<W: io::Write> io::Write for HashTee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A finished image: canonical config and manifest bytes, and the layers they list.
#[derive(Debug, Clone)]
pub struct Image {
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub manifest: Vec<u8>,
    pub digest: Digest,
    pub layers: Vec<LayerDesc>,
}

/// A Unix-epoch second count as RFC 3339 UTC.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What the new image adds to its base.
#[derive(Debug, Clone)]
pub struct Additions {
    pub os: String,
    pub architecture: String,
    pub created: u64,
    pub layers: Vec<(String, LayerDesc)>,
    /// Entrypoint, env, labels, annotations… as the environment file gives them.
    pub config: crate::spec::Config,
}

/// Builds the config and manifest for `base` plus `add`.
pub fn assemble(base: &BaseImage, add: &Additions) -> Image {
    let ours = &add.config;
    let created = rfc3339(add.created);
    let mut config = if base.config.is_object() {
        base.config.clone()
    } else {
        json!({})
    };
    let obj = config.as_object_mut().expect("object");
    for k in [
        "container",
        "container_config",
        "docker_version",
        "hostname",
        "author",
        "id",
        "parent",
        "comment",
    ] {
        obj.remove(k);
    }
    obj.insert("architecture".into(), json!(add.architecture));
    obj.insert("os".into(), json!(add.os));
    obj.insert("created".into(), json!(created));

    let mut cfg = obj
        .get("config")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let c = cfg.as_object_mut().expect("object");
    // Env: the base's entries in order, overridden by ours, then ours that are new, sorted.
    let mut env: Vec<(String, String)> = c
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    e.as_str()?
                        .split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in &ours.env {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    c.insert(
        "Env".into(),
        json!(env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()),
    );
    if !ours.entrypoint.is_empty() {
        c.insert("Entrypoint".into(), json!(ours.entrypoint));
        c.insert("Cmd".into(), json!(ours.cmd));
    } else if !ours.cmd.is_empty() {
        c.insert("Cmd".into(), json!(ours.cmd));
    }
    if let Some(w) = &ours.workdir {
        c.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = &ours.user {
        c.insert("User".into(), json!(u));
    }
    let mut labels: BTreeMap<String, Value> = c
        .get("Labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    for (k, v) in &ours.labels {
        labels.insert(k.clone(), json!(v));
    }
    if !labels.is_empty() {
        c.insert("Labels".into(), json!(labels));
    }
    obj.insert("config".into(), cfg);

    let mut diff_ids: Vec<String> = base.layers.iter().map(|l| l.diff_id.to_string()).collect();
    diff_ids.extend(add.layers.iter().map(|(_, l)| l.diff_id.to_string()));
    obj.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );

    // History must line up with layers: keep the base's, or make one entry per base layer.
    let mut history: Vec<Value> = obj
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let base_non_empty = history
        .iter()
        .filter(|h| h["empty_layer"] != json!(true))
        .count();
    if base_non_empty != base.layers.len() {
        history = base
            .layers
            .iter()
            .map(|_| json!({"created": created, "created_by": "base layer"}))
            .collect();
    }
    for (name, _) in &add.layers {
        history.push(json!({"created": created, "created_by": format!("envbuild layer {name}")}));
    }
    obj.insert("history".into(), json!(history));

    let config_bytes = canonical_json(&config);
    let config_digest = Digest::of(&config_bytes);
    let mut layers = base.layers.clone();
    layers.extend(add.layers.iter().map(|(_, l)| l.clone()));
    let mut annotations = ours.annotations.clone();
    annotations.insert("org.opencontainers.image.created".into(), created);
    annotations.insert(
        "org.opencontainers.image.base.name".into(),
        base.name.clone(),
    );
    if let Some(d) = base.digest {
        annotations.insert("org.opencontainers.image.base.digest".into(), d.to_string());
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest.to_string(), "size": config_bytes.len()},
        "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size})).collect::<Vec<_>>(),
        "annotations": annotations,
    });
    let manifest_bytes = canonical_json(&manifest);
    Image {
        digest: Digest::of(&manifest_bytes),
        manifest: manifest_bytes,
        config_digest,
        config: config_bytes,
        layers,
    }
}

/// The image in an OCI layout, as the registry client pushes it.
pub fn pushable_from_oci(dir: &Path) -> Result<crate::registry::Pushable, ImageError> {
    let (_, index) = read_json(&dir.join("index.json"))?;
    let m = index["manifests"]
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .ok_or_else(|| invalid(dir, "index.json lists no manifest"))?;
    let (d, size) = desc_digest(&dir.join("index.json"), &m)?;
    let (path, manifest) = layout_blob(dir, &d, Some(size))?;
    let v: Value = serde_json::from_slice(&manifest).map_err(|e| invalid(&path, e.to_string()))?;
    let mut blobs = Vec::new();
    for desc in std::iter::once(&v["config"]).chain(v["layers"].as_array().into_iter().flatten()) {
        let (d, size) = desc_digest(&path, desc)?;
        blobs.push((d, size, dir.join("blobs/sha256").join(d.hex())));
    }
    let media_type = v["mediaType"]
        .as_str()
        .unwrap_or(MANIFEST_MEDIA_TYPE)
        .to_owned();
    Ok(crate::registry::Pushable {
        manifest,
        media_type,
        blobs,
    })
}

/// A built image whose blobs are in the cache, as the registry client pushes it.
pub fn pushable_from_cache(img: &Image, cache: &Cache) -> crate::registry::Pushable {
    let mut blobs = vec![(
        img.config_digest,
        img.config.len() as u64,
        cache.blob_path(&img.config_digest),
    )];
    blobs.extend(
        img.layers
            .iter()
            .map(|l| (l.digest, l.size, cache.blob_path(&l.digest))),
    );
    crate::registry::Pushable {
        manifest: img.manifest.clone(),
        media_type: MANIFEST_MEDIA_TYPE.into(),
        blobs,
    }
}

/// A sibling temporary path for atomic replacement of `target`.
fn sibling_temp(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    target.with_file_name(format!(".{name}.envbuild-tmp-{}", std::process::id()))
}

fn link_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    fs::hard_link(src, dst).or_else(|_| fs::copy(src, dst).map(|_| ()))
}

/// Writes the image as an OCI image layout at `dir`, replacing an earlier layout atomically.
/// The index names the image `tag` (`org.opencontainers.image.ref.name`).
pub fn write_oci(img: &Image, cache: &Cache, dir: &Path, tag: &str) -> Result<(), ImageError> {
    if dir.exists()
        && !dir.join("oci-layout").is_file()
        && fs::read_dir(dir).map_err(io_at(dir))?.next().is_some()
    {
        return Err(invalid(
            dir,
            "exists, is not empty and is not an OCI layout; refusing to replace it",
        ));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    let tmp = sibling_temp(dir);
    let _ = fs::remove_dir_all(&tmp);
    let result = (|| {
        let blobs = tmp.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
        fs::write(tmp.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io_at(&tmp))?;
        for l in &img.layers {
            link_or_copy(&cache.blob_path(&l.digest), &blobs.join(l.digest.hex()))
                .map_err(io_at(&blobs))?;
        }
        fs::write(blobs.join(img.config_digest.hex()), &img.config).map_err(io_at(&blobs))?;
        fs::write(blobs.join(img.digest.hex()), &img.manifest).map_err(io_at(&blobs))?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [{
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": img.digest.to_string(),
                "size": img.manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        fs::write(tmp.join("index.json"), canonical_json(&index)).map_err(io_at(&tmp))?;
        replace_dir(&tmp, dir)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn replace_dir(new: &Path, target: &Path) -> Result<(), ImageError> {
    if target.exists() {
        let old = target.with_file_name(format!(
            ".{}.envbuild-old-{}",
            target.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        fs::rename(target, &old).map_err(io_at(target))?;
        fs::rename(new, target).map_err(io_at(target))?;
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(new, target).map_err(io_at(target))?;
    }
    Ok(())
}

/// Writes the image as a `docker load` archive at `file` (written to a temporary name first).
pub fn write_docker_archive(
    img: &Image,
    cache: &Cache,
    file: &Path,
    repo_tag: &str,
    mtime: u64,
) -> Result<(), ImageError> {
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    let tmp = sibling_temp(file);
    let result = (|| {
        let f = fs::File::create(&tmp).map_err(io_at(&tmp))?;
        let mut b = tar::Builder::new(io::BufWriter::new(f));
        let mut add = |name: &str, size: u64, r: &mut dyn Read| -> io::Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_path(name)?;
            h.set_size(size);
            h.set_mode(0o644);
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, r)
        };
        let config_name = format!("blobs/sha256/{}", img.config_digest.hex());
        let layer_names: Vec<String> = img
            .layers
            .iter()
            .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
            .collect();
        let manifest =
            json!([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]);
        let manifest = canonical_json(&manifest);
        add("manifest.json", manifest.len() as u64, &mut &manifest[..]).map_err(io_at(&tmp))?;
        add(&config_name, img.config.len() as u64, &mut &img.config[..]).map_err(io_at(&tmp))?;
        let mut seen = std::collections::BTreeSet::new();
        for (l, name) in img.layers.iter().zip(&layer_names) {
            if seen.insert(l.digest) {
                let p = cache.blob_path(&l.digest);
                let mut f = fs::File::open(&p).map_err(io_at(&p))?;
                add(name, l.size, &mut f).map_err(io_at(&p))?;
            }
        }
        let w = b.into_inner().map_err(io_at(&tmp))?;
        w.into_inner()
            .map_err(|e| ImageError::Io {
                path: tmp.clone(),
                source: e.into_error(),
            })?
            .sync_all()
            .map_err(io_at(&tmp))?;
        fs::rename(&tmp, file).map_err(io_at(file))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":1,"x":2}],"c":"é"}}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":{"c":"é","z":[{"x":2,"y":1}]},"b":1}"#
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn config_merges_env_and_history_lines_up() {
        let base = BaseImage {
            name: "b".into(),
            digest: None,
            layers: vec![LayerDesc {
                media_type: "m".into(),
                digest: Digest::of(b"l"),
                size: 1,
                diff_id: Digest::of(b"d"),
            }],
            blobs: vec![],
            config: json!({"hostname": "h", "config": {"Env": ["PATH=/bin", "A=1"]}, "history": []}),
        };
        let add = Additions {
            os: "linux".into(),
            architecture: "amd64".into(),
            created: 0,
            layers: vec![(
                "app".into(),
                LayerDesc {
                    media_type: "m".into(),
                    digest: Digest::of(b"x"),
                    size: 2,
                    diff_id: Digest::of(b"y"),
                },
            )],
            config: crate::spec::Config {
                entrypoint: vec!["/t".into()],
                env: [
                    ("A".to_string(), "2".to_string()),
                    ("B".to_string(), "3".to_string()),
                ]
                .into(),
                ..Default::default()
            },
        };
        let img = assemble(&base, &add);
        let c: Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(c["config"]["Env"], json!(["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(c["history"].as_array().unwrap().len(), 2);
        assert!(c.get("hostname").is_none());
        assert_eq!(c["created"], "1970-01-01T00:00:00Z");
        assert_eq!(img.digest, Digest::of(&img.manifest));
        assert_eq!(img.layers.len(), 2);
    }
}
