//! The inventory as a CycloneDX 1.6 JSON BOM (cyclonedx.org/docs/1.6/json): the image as
//! `metadata.component` (type container), every package a component with its purl, hashes,
//! licenses and the layer that holds it (`envbuild:layer` property), `dependencies` from the
//! image to its components and from the binary to its crates.

use serde_json::{json, Value};

use super::{cargo_purl, deb_purl, pypi_purl, Inventory};

fn licenses(expr: Option<String>) -> Value {
    match expr {
        Some(e) if !e.is_empty() && e != "NOASSERTION" => json!([{ "expression": e }]),
        _ => json!([]),
    }
}

/// A version-4-shaped UUID from the image digest: the same image, the same serial number.
fn serial(d: &crate::digest::Digest) -> String {
    let h = d.hex();
    format!(
        "urn:uuid:{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The CycloneDX 1.6 JSON document of `inv`, canonical bytes.
pub fn document(inv: &Inventory) -> Vec<u8> {
    let mut components: Vec<Value> = Vec::new();
    let image_ref = inv.image_purl();
    let layer = |name: &str| json!([{ "name": "envbuild:layer", "value": name }]);
    for l in &inv.layers {
        components.push(json!({
            "type": "file",
            "bom-ref": format!("layer:{}", l.digest),
            "name": format!("layer {}", l.name),
            "version": l.digest.to_string(),
            "hashes": [{ "alg": "SHA-256", "content": l.digest.hex() }],
        }));
    }
    for p in inv.debs.iter().flatten() {
        let purl = deb_purl(p);
        components.push(json!({
            "type": "library",
            "bom-ref": purl,
            "name": p.name,
            "version": p.version,
            "purl": purl,
            "licenses": p.licenses.iter().map(|l| json!({ "license": { "name": l } })).collect::<Vec<_>>(),
            "properties": layer("base"),
        }));
    }
    for d in &inv.python {
        let purl = pypi_purl(d);
        let lic = match (&d.license_expression, &d.license_text) {
            (Some(e), _) => licenses(Some(e.clone())),
            (None, Some(t)) if !t.trim().is_empty() => json!([{ "license": { "name": t } }]),
            _ => json!([]),
        };
        components.push(json!({
            "type": "library",
            "bom-ref": purl,
            "name": d.name,
            "version": d.version,
            "purl": purl,
            "licenses": lic,
            "properties": d.layers.keys().map(|l| json!({ "name": "envbuild:layer", "value": l })).collect::<Vec<_>>(),
        }));
    }
    let mut dependencies = Vec::new();
    if let Some(b) = &inv.binary {
        let bin_ref = format!("binary:{}", b.path.trim_start_matches('/'));
        let own = b.crates.first();
        components.push(json!({
            "type": "application",
            "bom-ref": bin_ref,
            "name": own.map_or_else(|| b.path.clone(), |c| c.name.clone()),
            "version": own.map_or_else(String::new, |c| c.version.clone()),
            "hashes": [{ "alg": "SHA-256", "content": b.digest.hex() }],
            "properties": layer(&b.layer),
        }));
        let mut crates = Vec::new();
        for c in b.crates.iter().skip(1) {
            let purl = cargo_purl(c);
            let mut v = json!({ "type": "library", "bom-ref": purl, "name": c.name, "version": c.version, "purl": purl });
            if let Some(sum) = c.checksum.as_ref().filter(|s| s.len() == 64) {
                v["hashes"] = json!([{ "alg": "SHA-256", "content": sum }]);
            }
            crates.push(purl);
            components.push(v);
        }
        crates.sort();
        crates.dedup();
        dependencies.push(json!({ "ref": bin_ref, "dependsOn": crates }));
    }
    components.sort_by(|a, b| a["bom-ref"].as_str().cmp(&b["bom-ref"].as_str()));
    components.dedup_by(|a, b| a["bom-ref"] == b["bom-ref"]);
    let all: Vec<Value> = components.iter().map(|c| c["bom-ref"].clone()).collect();
    dependencies.push(json!({ "ref": image_ref, "dependsOn": all }));
    dependencies.sort_by(|a, b| a["ref"].as_str().cmp(&b["ref"].as_str()));
    let doc = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial(&inv.image),
        "version": 1,
        "metadata": {
            "timestamp": crate::image::rfc3339(inv.created),
            "tools": { "components": [{ "type": "application", "name": "envbuild", "version": env!("CARGO_PKG_VERSION") }] },
            "component": { "type": "container", "bom-ref": image_ref, "name": inv.name, "version": inv.image.to_string(), "purl": image_ref },
        },
        "components": components,
        "dependencies": dependencies,
    });
    crate::image::canonical_json(&doc)
}
