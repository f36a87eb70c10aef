//! Media types of the documents and blobs envbuild reads and writes (OCI image spec, and the
//! Docker v2 schema 2 types that registries and `docker save` still use).

/// OCI image manifest.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI layers as envbuild compresses them (defined beside the compressor).
pub use crate::layer::compress::{LAYER_GZIP, LAYER_ZSTD};
/// OCI layer, uncompressed (the layers of a `docker save` archive).
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (the index's Docker counterpart).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker layer, gzip.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Whether a document of this media type lists manifests (an index or a manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == INDEX || media_type == DOCKER_LIST
}

/// The `mediaType` a JSON document declares about itself, if any.
pub fn declared(document: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Declared {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Declared>(document)
        .ok()?
        .media_type
}

/// The OCI counterpart of a Docker layer media type (others unchanged).
pub fn oci_layer(media_type: &str) -> &str {
    if media_type == DOCKER_LAYER_GZIP {
        LAYER_GZIP
    } else {
        media_type
    }
}
