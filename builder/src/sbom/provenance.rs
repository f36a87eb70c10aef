//! Build provenance as an in-toto Statement v1 with the SLSA Provenance v1 predicate
//! (slsa.dev/spec/v1.0/provenance): the image is the subject; the environment file's digest is
//! the external parameter; the base image and each layer's input key are the resolved
//! dependencies; envbuild and its version the builder. No timestamps and no host names: the
//! same build gives the same statement.

use serde_json::{json, Value};

use crate::digest::Digest;

/// What the statement records.
#[derive(Debug, Clone)]
pub struct Provenance<'a> {
    pub name: &'a str,
    pub image: Digest,
    /// The environment file as given, and the digest of its bytes.
    pub env_file: &'a str,
    pub env_digest: Digest,
    pub base: Option<(String, Option<Digest>)>,
    /// Layer name → the key over its inputs (file paths, modes and content digests).
    pub layer_inputs: Vec<(String, Digest)>,
    pub source_date_epoch: u64,
    pub compression: String,
}

/// The statement's canonical JSON bytes.
pub fn statement(p: &Provenance) -> Vec<u8> {
    let mut deps: Vec<Value> = Vec::new();
    if let Some((name, digest)) = &p.base {
        let mut d = json!({ "uri": name, "name": "base" });
        if let Some(digest) = digest {
            d["digest"] = json!({ "sha256": digest.hex() });
        }
        deps.push(d);
    }
    for (name, key) in &p.layer_inputs {
        deps.push(json!({ "name": format!("layer:{name}"), "digest": { "sha256": key.hex() } }));
    }
    let doc = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{ "name": p.name, "digest": { "sha256": p.image.hex() } }],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": "https://github.com/envbuild/envbuild/buildtypes/environment-file/v1",
                "externalParameters": {
                    "environment": { "path": p.env_file, "digest": { "sha256": p.env_digest.hex() } },
                },
                "internalParameters": {
                    "SOURCE_DATE_EPOCH": p.source_date_epoch,
                    "compression": p.compression,
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {
                    "id": "https://github.com/envbuild/envbuild",
                    "version": { "envbuild": env!("CARGO_PKG_VERSION") },
                },
                "metadata": {},
            },
        },
    });
    crate::image::canonical_json(&doc)
}
