//! The inventory as an SPDX 2.3 JSON document (spdx.github.io/spdx-spec/v2.3): the image as the
//! described package, which CONTAINS its layers, which CONTAIN the Python distributions and the
//! binary, which STATIC_LINKs its crates; the base's Debian packages inside the image. Licenses
//! that are not SPDX identifiers become `LicenseRef-` ids with their text in
//! `hasExtractedLicensingInfos`, as the specification requires.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{cargo_purl, deb_purl, pypi_name, pypi_purl, Inventory};

/// SPDX identifiers of licenses this module writes as they are (the SPDX License List).
const KNOWN: &[&str] = &[
    "0BSD",
    "Apache-2.0",
    "Artistic-1.0",
    "Artistic-2.0",
    "BSD-1-Clause",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSD-4-Clause",
    "BSL-1.0",
    "CC-BY-4.0",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
    "CC0-1.0",
    "GFDL-1.2-or-later",
    "GFDL-1.3-or-later",
    "GPL-1.0-or-later",
    "GPL-2.0-only",
    "GPL-2.0-or-later",
    "GPL-3.0-only",
    "GPL-3.0-or-later",
    "ISC",
    "LGPL-2.0-or-later",
    "LGPL-2.1-only",
    "LGPL-2.1-or-later",
    "LGPL-3.0-only",
    "LGPL-3.0-or-later",
    "MIT",
    "MIT-0",
    "MPL-1.1",
    "MPL-2.0",
    "NCSA",
    "OpenSSL",
    "PSF-2.0",
    "Python-2.0",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "Unlicense",
    "W3C",
    "X11",
    "Zlib",
    "curl",
    "bzip2-1.0.6",
];

/// Debian's DEP-5 short names → SPDX identifiers (DEP-5 §7 lists the names).
const DEBIAN: &[(&str, &str)] = &[
    ("GPL-1+", "GPL-1.0-or-later"),
    ("GPL-2", "GPL-2.0-only"),
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-3", "GPL-3.0-only"),
    ("GPL-3+", "GPL-3.0-or-later"),
    ("LGPL-2+", "LGPL-2.0-or-later"),
    ("LGPL-2.1", "LGPL-2.1-only"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-3", "LGPL-3.0-only"),
    ("LGPL-3+", "LGPL-3.0-or-later"),
    ("GFDL-1.2+", "GFDL-1.2-or-later"),
    ("GFDL-1.3+", "GFDL-1.3-or-later"),
    ("Apache-2.0", "Apache-2.0"),
    ("Expat", "MIT"),
    ("MIT", "MIT"),
    ("BSD-2-clause", "BSD-2-Clause"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("BSD-4-clause", "BSD-4-Clause"),
    ("ISC", "ISC"),
    ("Zlib", "Zlib"),
    ("zlib", "Zlib"),
    ("MPL-2.0", "MPL-2.0"),
    ("Artistic", "Artistic-1.0"),
    ("Artistic-2.0", "Artistic-2.0"),
    ("CC0-1.0", "CC0-1.0"),
    ("PSF-2", "PSF-2.0"),
];

/// `s` as an SPDX idstring (letters, digits, `.` and `-`).
pub fn idstring(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out.trim_matches('-').to_owned()
}

/// Licenses met while writing, for `hasExtractedLicensingInfos`.
#[derive(Default)]
struct Refs(BTreeMap<String, (String, String)>);

impl Refs {
    /// A `LicenseRef-` for `name`, with `text` as its extracted text (first one wins).
    fn add(&mut self, name: &str, text: String) -> String {
        let id = format!(
            "LicenseRef-{}",
            idstring(name.strip_prefix("LicenseRef-").unwrap_or(name))
        );
        self.0
            .entry(id.clone())
            .or_insert_with(|| (name.to_owned(), text));
        id
    }
}

/// A PEP 639 `License-Expression`, its `LicenseRef-`s declared (with the wheel's license
/// file as their text); identifiers and operators kept as written.
fn expression(expr: &str, text: Option<&str>, who: &str, refs: &mut Refs) -> String {
    expr.split_whitespace()
        .map(|tok| {
            let (open, rest) = tok.split_at(tok.len() - tok.trim_start_matches('(').len());
            let core = rest.trim_end_matches(')');
            let close = &rest[core.len()..];
            let core = if core.starts_with("LicenseRef-") {
                refs.add(
                    core,
                    text.map(str::to_owned)
                        .unwrap_or_else(|| format!("The license {core} named by {who}")),
                )
            } else {
                core.to_owned()
            };
            format!("{open}{core}{close}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Free-text spellings of SPDX licenses met in wheels' `License:` fields (lower case).
const ALIASES: &[(&str, &str)] = &[
    ("apache 2.0", "Apache-2.0"),
    ("apache license 2.0", "Apache-2.0"),
    ("apache license, version 2.0", "Apache-2.0"),
    ("apache software license", "Apache-2.0"),
    ("mit license", "MIT"),
    ("the mit license", "MIT"),
    ("new bsd license", "BSD-3-Clause"),
    ("3-clause bsd license", "BSD-3-Clause"),
    ("mozilla public license 2.0 (mpl 2.0)", "MPL-2.0"),
];

/// A declared license that is free text: an SPDX identifier when it is one (or a common
/// spelling of one), else a `LicenseRef-` carrying the license file's text (or the words).
fn free_text(t: &str, file: Option<&str>, who: &str, refs: &mut Refs) -> String {
    let t = t.trim();
    if let Some(k) = KNOWN.iter().find(|k| k.eq_ignore_ascii_case(t)) {
        return (*k).to_owned();
    }
    let lower = t.to_ascii_lowercase();
    if let Some((_, id)) = ALIASES.iter().find(|(a, _)| *a == lower) {
        return (*id).to_owned();
    }
    let text = file.map_or_else(
        || format!("{who} declares its license as: {t}"),
        str::to_owned,
    );
    refs.add(t, text)
}

/// A Debian package's copyright `License:` names, joined with AND (each file's license holds).
fn debian(names: &[String], pkg: &str, refs: &mut Refs) -> String {
    if names.is_empty() {
        return "NOASSERTION".into();
    }
    let one = |n: &str, refs: &mut Refs| -> String {
        let n = n.trim();
        DEBIAN
            .iter()
            .find(|(d, _)| *d == n)
            .map(|(_, s)| (*s).to_owned())
            .or_else(|| {
                KNOWN
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(n))
                    .map(|k| (*k).to_owned())
            })
            .unwrap_or_else(|| {
                refs.add(
                    &format!("Debian-{n}"),
                    format!(
                        "The license `{n}` of /usr/share/doc/{pkg}/copyright (a Debian short name)"
                    ),
                )
            })
    };
    let mut parts: Vec<String> = Vec::new();
    for n in names {
        // `A or B` in DEP-5 is a choice; `A and B`, `A with E` kept whole as a LicenseRef.
        let alts: Vec<String> = n.split(" or ").map(|a| one(a, refs)).collect();
        let p = if alts.len() > 1 {
            format!("({})", alts.join(" OR "))
        } else {
            alts.into_iter().next().unwrap_or_default()
        };
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    parts.join(" AND ")
}

fn sha256(d: &crate::digest::Digest) -> Value {
    json!([{ "algorithm": "SHA256", "checksumValue": d.hex() }])
}

fn purl(locator: String) -> Value {
    json!([{ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": locator }])
}

/// The SPDX 2.3 JSON document of `inv`, canonical bytes.
pub fn document(inv: &Inventory) -> Vec<u8> {
    let mut refs = Refs::default();
    let mut packages: Vec<Value> = Vec::new();
    let mut rels: Vec<(String, &str, String)> = Vec::new();
    let image_id = "SPDXRef-Image".to_owned();
    let tool = format!("envbuild-{}", env!("CARGO_PKG_VERSION"));
    packages.push(json!({
        "SPDXID": image_id,
        "name": inv.name,
        "versionInfo": inv.image.to_string(),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": sha256(&inv.image),
        "externalRefs": purl(inv.image_purl()),
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "supplier": "NOASSERTION",
        "comment": match &inv.base {
            Some((name, Some(d))) => format!("Built by {tool} on the base {name}@{d}"),
            Some((name, None)) => format!("Built by {tool} on the base {name}"),
            None => format!("Built by {tool} from scratch"),
        },
    }));
    rels.push(("SPDXRef-DOCUMENT".into(), "DESCRIBES", image_id.clone()));
    let mut layer_ids: BTreeMap<&str, String> = BTreeMap::new();
    for (i, l) in inv.layers.iter().enumerate() {
        let id = format!("SPDXRef-Layer-{i}-{}", idstring(&l.name));
        packages.push(json!({
            "SPDXID": id,
            "name": format!("layer {}", l.name),
            "versionInfo": l.digest.to_string(),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "ARCHIVE",
            "checksums": sha256(&l.digest),
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "comment": format!("{} bytes", l.size),
        }));
        rels.push((image_id.clone(), "CONTAINS", id.clone()));
        layer_ids.insert(&l.name, id);
    }
    for p in inv.debs.iter().flatten() {
        let id = format!(
            "SPDXRef-Deb-{}-{}",
            idstring(&p.name),
            idstring(&p.architecture)
        );
        packages.push(json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": purl(deb_purl(p)),
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": debian(&p.licenses, &p.name, &mut refs),
            "copyrightText": "NOASSERTION",
            "supplier": "Organization: Debian",
            "sourceInfo": format!("Debian package{}", p.source.as_ref().map(|s| format!(" built from source package {s}")).unwrap_or_default()),
        }));
        rels.push((image_id.clone(), "CONTAINS", id));
    }
    for d in &inv.python {
        let id = format!(
            "SPDXRef-Python-{}-{}",
            idstring(&pypi_name(&d.name)),
            idstring(&d.version)
        );
        let who = format!("the Python distribution {} {}", d.name, d.version);
        let license = match (&d.license_expression, &d.license_text) {
            (Some(e), _) => expression(e, d.license_file.as_deref(), &who, &mut refs),
            (None, Some(t)) if !t.trim().is_empty() => {
                free_text(t, d.license_file.as_deref(), &who, &mut refs)
            }
            _ => "NOASSERTION".into(),
        };
        let held: Vec<String> = d
            .layers
            .iter()
            .map(|(l, n)| format!("{n} files in layer {l}"))
            .collect();
        packages.push(json!({
            "SPDXID": id,
            "name": d.name,
            "versionInfo": d.version,
            "downloadLocation": format!("https://pypi.org/project/{}/{}/", pypi_name(&d.name), d.version),
            "filesAnalyzed": false,
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": purl(pypi_purl(d)),
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": license,
            "copyrightText": "NOASSERTION",
            "comment": held.join("; "),
        }));
        for l in d.layers.keys() {
            if let Some(lid) = layer_ids.get(l.as_str()) {
                rels.push((lid.clone(), "CONTAINS", id.clone()));
            }
        }
    }
    if let Some(b) = &inv.binary {
        let own = b.crates.first();
        let id = format!("SPDXRef-Binary-{}", idstring(&b.path));
        packages.push(json!({
            "SPDXID": id,
            "name": own.map_or_else(|| b.path.clone(), |c| c.name.clone()),
            "versionInfo": own.map_or_else(String::new, |c| c.version.clone()),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "APPLICATION",
            "checksums": sha256(&b.digest),
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "comment": format!("/{} in layer {}", b.path.trim_start_matches('/'), b.layer),
        }));
        if let Some(lid) = layer_ids.get(b.layer.as_str()) {
            rels.push((lid.clone(), "CONTAINS", id.clone()));
        }
        for c in b.crates.iter().skip(1) {
            let cid = format!(
                "SPDXRef-Crate-{}-{}",
                idstring(&c.name),
                idstring(&c.version)
            );
            let mut p = json!({
                "SPDXID": cid,
                "name": c.name,
                "versionInfo": c.version,
                "downloadLocation": match &c.source {
                    Some(s) if s.starts_with("registry+https://github.com/rust-lang/crates.io-index") =>
                        format!("https://crates.io/api/v1/crates/{}/{}/download", c.name, c.version),
                    _ => "NOASSERTION".to_owned(),
                },
                "filesAnalyzed": false,
                "primaryPackagePurpose": "LIBRARY",
                "externalRefs": purl(cargo_purl(c)),
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
            });
            if let Some(sum) = c.checksum.as_ref().filter(|s| s.len() == 64) {
                p["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": sum }]);
            }
            packages.push(p);
            rels.push((id.clone(), "STATIC_LINK", cid));
        }
    }
    // Sorted and unique: the same inventory is the same bytes.
    packages.sort_by(|a, b| a["SPDXID"].as_str().cmp(&b["SPDXID"].as_str()));
    packages.dedup_by(|a, b| a["SPDXID"] == b["SPDXID"]);
    rels.sort();
    rels.dedup();
    let relationships: Vec<Value> = rels
        .into_iter()
        .map(
            |(a, t, b)| json!({"spdxElementId": a, "relationshipType": t, "relatedSpdxElement": b}),
        )
        .collect();
    let extracted: Vec<Value> = refs
        .0
        .into_iter()
        .map(|(id, (name, text))| json!({"licenseId": id, "name": name, "extractedText": text}))
        .collect();
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}@{}", inv.name, inv.image),
        "documentNamespace": format!("https://envbuild.dev/spdx/{}/{}", idstring(&inv.name), inv.image.hex()),
        "creationInfo": {
            "created": crate::image::rfc3339(inv.created),
            "creators": [format!("Tool: {tool}")],
            "comment": if inv.debs.is_none() {
                "The base image has no dpkg status database: its Debian packages are unknown, not absent."
            } else {
                "Made from the build's inputs, not from a scan."
            },
        },
        "packages": packages,
        "relationships": relationships,
    });
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = Value::Array(extracted);
    }
    crate::image::canonical_json(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn licenses_become_spdx_ids_or_declared_license_refs() {
        let mut refs = Refs::default();
        assert_eq!(
            free_text("bsd-3-clause", None, "x", &mut refs),
            "BSD-3-Clause"
        );
        assert_eq!(free_text("Apache 2.0", None, "x", &mut refs), "Apache-2.0");
        assert_eq!(
            free_text(
                "NVIDIA Proprietary Software",
                Some("SLA text"),
                "x",
                &mut refs
            ),
            "LicenseRef-NVIDIA-Proprietary-Software"
        );
        assert_eq!(
            expression(
                "(MIT OR LicenseRef-NVIDIA-Proprietary)",
                Some("EULA"),
                "x",
                &mut refs
            ),
            "(MIT OR LicenseRef-NVIDIA-Proprietary)"
        );
        assert_eq!(
            debian(&["GPL-2+".into(), "LGPL-2.1+ or GPL-3+".into(), "public-domain".into()], "p", &mut refs),
            "GPL-2.0-or-later AND (LGPL-2.1-or-later OR GPL-3.0-or-later) AND LicenseRef-Debian-public-domain"
        );
        assert_eq!(debian(&[], "p", &mut refs), "NOASSERTION");
        let ids: Vec<&str> = refs.0.keys().map(String::as_str).collect();
        assert_eq!(
            ids,
            [
                "LicenseRef-Debian-public-domain",
                "LicenseRef-NVIDIA-Proprietary",
                "LicenseRef-NVIDIA-Proprietary-Software"
            ]
        );
        assert_eq!(refs.0["LicenseRef-NVIDIA-Proprietary"].1, "EULA");
        assert_eq!(
            refs.0["LicenseRef-NVIDIA-Proprietary-Software"].1,
            "SLA text"
        );
        assert_eq!(
            idstring("opt/envbuild/bin/trainer"),
            "opt-envbuild-bin-trainer"
        );
    }
}
