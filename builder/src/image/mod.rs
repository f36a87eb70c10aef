//! Images: the types every stage shares (a finished [`Image`], its layers' descriptors, the
//! blobs a push sends), media types, and canonical JSON. Reading bases ([`base`]), assembling
//! config and manifest ([`assemble`]), writing layouts and archives ([`write`]), the link
//! check ([`linkcheck`]) and reading images back ([`inspect`]) have a file each.

pub mod assemble;
pub mod attach;
pub mod base;
pub mod inspect;
pub mod linkcheck;
pub mod media;
pub mod write;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, MediaType};
use serde_json::Value;
use thiserror::Error;

use crate::digest::Digest;

pub use assemble::{assemble, Additions};
pub use base::{base_from_pulled, load_docker_archive, load_oci, BaseImage};
pub use write::{
    docker_archive_from_pushable, pushable_from_cache, pushable_from_oci, write_docker_archive,
    write_oci,
};

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

pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn invalid(path: &Path, message: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Parses a JSON document (an OCI index, manifest or config, typed or as a value), naming
/// `path` when it is not one.
pub fn parse<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| invalid(path, format!("not JSON: {e}")))
}

/// A descriptor's digest (envbuild's type: sha256 only) and size.
pub fn descriptor(path: &Path, d: &Descriptor) -> Result<(Digest, u64), ImageError> {
    let digest = d
        .digest()
        .to_string()
        .parse::<Digest>()
        .map_err(|e| invalid(path, e.to_string()))?;
    if d.size() > MAX_BLOB {
        return Err(invalid(
            path,
            format!(
                "the descriptor of {digest} gives size {}, beyond any blob (over 1 TiB)",
                d.size()
            ),
        ));
    }
    Ok((digest, d.size()))
}

/// The largest blob size a descriptor may give.
pub const MAX_BLOB: u64 = 1 << 40;

/// Checks that the blob file at `path` has the descriptor's `size` and `digest` (streamed, not
/// read whole); the error names the file and both sizes or both digests.
pub fn verify_blob(path: &Path, digest: &Digest, size: u64) -> Result<(), ImageError> {
    check_blob_size(path, digest, size)?;
    let mut h = sha2::Sha256::default();
    let mut f = std::fs::File::open(path).map_err(io_at(path))?;
    io::copy(&mut f, &mut h).map_err(io_at(path))?;
    check_blob_digest(path, digest, Digest::from_sha256(h))
}

/// The file at `path` is a regular file of the descriptor's `size` (from its metadata).
pub(crate) fn check_blob_size(path: &Path, digest: &Digest, size: u64) -> Result<(), ImageError> {
    let meta = std::fs::metadata(path).map_err(io_at(path))?;
    if !meta.is_file() || meta.len() != size {
        return Err(invalid(
            path,
            format!(
                "blob {digest} is {} bytes, its descriptor says {size}",
                meta.len()
            ),
        ));
    }
    Ok(())
}

/// The bytes at `path` hashed to `found`, which must be the descriptor's `digest`.
pub(crate) fn check_blob_digest(
    path: &Path,
    digest: &Digest,
    found: Digest,
) -> Result<(), ImageError> {
    if found != *digest {
        return Err(invalid(
            path,
            format!("blob bytes hash to {found}, not to the descriptor's {digest}"),
        ));
    }
    Ok(())
}

/// A descriptor as oci-spec types it, from envbuild's media type string and digest.
pub fn oci_descriptor(media_type: &str, d: &Digest, size: u64) -> Descriptor {
    let digest = d
        .to_string()
        .parse::<oci_spec::image::Digest>()
        .expect("a sha256 digest is an OCI digest");
    Descriptor::new(MediaType::from(media_type), size, digest)
}

/// The `os` and `architecture` of a descriptor's platform.
pub fn platform_of(d: &Descriptor) -> Option<(String, String)> {
    d.platform()
        .as_ref()
        .map(|p| (p.os().to_string(), p.architecture().to_string()))
}

/// The diff IDs of an image config (`rootfs.diff_ids`), read through oci-spec's type. The
/// config itself stays a value: the merge keeps every key of the base, which the type would
/// drop.
pub fn diff_ids(path: &Path, config: &Value) -> Result<Vec<Digest>, ImageError> {
    let typed = typed_config(path, config)?;
    typed
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| {
            d.parse::<Digest>()
                .map_err(|e| invalid(path, e.to_string()))
        })
        .collect()
}

/// An image config read through oci-spec's type (unknown keys dropped: for reading only).
pub fn typed_config(path: &Path, config: &Value) -> Result<ImageConfiguration, ImageError> {
    serde_json::from_value(config.clone())
        .map_err(|e| invalid(path, format!("not an image config: {e}")))
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

/// A finished image: canonical config and manifest bytes, and the layers they list.
#[derive(Debug, Clone)]
pub struct Image {
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub manifest: Vec<u8>,
    pub digest: Digest,
    pub layers: Vec<LayerDesc>,
}

/// One entry of a `docker save` archive's `manifest.json` (Docker's format, not OCI's).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ArchiveEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Vec<String>,
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

/// A manifest and its blobs, ready to push: (digest, size, file) for config and layers.
#[derive(Debug, Clone)]
pub struct Pushable {
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub blobs: Vec<(Digest, u64, PathBuf)>,
    /// Artifacts whose `subject` is this manifest (SBOM, provenance), pushed after it.
    pub referrers: Vec<Pushable>,
    /// Whether each blob's digest is still to be checked, just before its bytes go out (an
    /// OCI layout's: their sizes were checked when it was read, their contents are hashed only
    /// when the registry lacks them). Blobs from the cache were hashed as they were written.
    pub verify: bool,
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
}
