//! The new image's config and manifest: the base's config (every key kept but a fixed list of
//! host-specific ones, so that the merge never depends on which keys envbuild knows — hence a
//! JSON value, not oci-spec's type, which drops unknown keys) with the environment's entrypoint,
//! env, labels and layers added; the manifest typed; both serialised as canonical JSON.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use oci_spec::image::{ImageManifestBuilder, MediaType, SCHEMA_VERSION};

use super::{canonical_json, media, oci_descriptor, rfc3339, BaseImage, Image, LayerDesc};
use crate::digest::Digest;

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
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(oci_descriptor(
            media::CONFIG,
            &config_digest,
            config_bytes.len() as u64,
        ))
        .layers(
            layers
                .iter()
                .map(|l| oci_descriptor(&l.media_type, &l.digest, l.size))
                .collect::<Vec<_>>(),
        )
        .annotations(
            annotations
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .expect("every field of the manifest is set");
    let manifest_bytes = canonical_json(&serde_json::to_value(&manifest).expect("JSON"));
    Image {
        digest: Digest::of(&manifest_bytes),
        manifest: manifest_bytes,
        config_digest,
        config: config_bytes,
        layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // The typed manifest has exactly the bytes of the document as the OCI spec spells it
        // (what envbuild wrote by hand before oci-spec's types, so digests did not move).
        let spelled = json!({
            "schemaVersion": 2,
            "mediaType": media::MANIFEST,
            "config": {"mediaType": media::CONFIG, "digest": img.config_digest.to_string(), "size": img.config.len()},
            "layers": img.layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size})).collect::<Vec<_>>(),
            "annotations": {
                "org.opencontainers.image.created": "1970-01-01T00:00:00Z",
                "org.opencontainers.image.base.name": "b",
            },
        });
        assert_eq!(
            String::from_utf8(img.manifest.clone()).unwrap(),
            String::from_utf8(canonical_json(&spelled)).unwrap()
        );
    }
}
