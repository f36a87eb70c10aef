//! What is inside an image, from what the build knows (no scan): the base's Debian packages
//! (`dpkg`), the Python distributions whose files went into a layer (`python`), the crates of
//! the binary built from the workspace (`cargo`), every layer and the image itself — written
//! as SPDX 2.3 (`spdx`) or CycloneDX 1.6 (`cyclonedx`) JSON, with an in-toto SLSA provenance
//! statement (`provenance`). Same inputs, same bytes: sorted, stable ids, no time but
//! `SOURCE_DATE_EPOCH`.

pub mod cargo;
pub mod cyclonedx;
pub mod dpkg;
pub mod provenance;
pub mod python;
pub mod spdx;

use std::collections::BTreeMap;

use crate::digest::Digest;

/// Media types of the documents, as artifact types of their OCI artifacts.
pub const SPDX_JSON: &str = "application/spdx+json";
pub const CYCLONEDX_JSON: &str = "application/vnd.cyclonedx+json";
pub const IN_TOTO_JSON: &str = "application/vnd.in-toto+json";

/// The document formats `build --sbom-format` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Spdx,
    CycloneDx,
}

impl Format {
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Spdx => SPDX_JSON,
            Format::CycloneDx => CYCLONEDX_JSON,
        }
    }
}

/// One layer of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// The environment file's layer name, or `base-N`.
    pub name: String,
    pub digest: Digest,
    pub size: u64,
}

/// The binary built from the workspace, and its crates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    /// Its path in the image.
    pub path: String,
    /// The digest of its bytes.
    pub digest: Digest,
    /// The layer that holds it.
    pub layer: String,
    /// Its crate first, then every locked dependency.
    pub crates: Vec<cargo::Crate>,
}

/// Everything an SBOM says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The environment's name.
    pub name: String,
    /// The image manifest's digest.
    pub image: Digest,
    /// SOURCE_DATE_EPOCH.
    pub created: u64,
    /// The base's name and manifest digest.
    pub base: Option<(String, Option<Digest>)>,
    pub layers: Vec<LayerEntry>,
    /// The base's Debian packages; `None` when it has no dpkg status (unknown, not none).
    pub debs: Option<Vec<dpkg::DebPackage>>,
    pub python: Vec<python::Distribution>,
    pub binary: Option<Binary>,
}

/// Counts per kind and the most frequent licenses of an SPDX document: what `inspect` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// purl type (`deb`, `pypi`, `cargo`, `oci`) or `other` → packages.
    pub kinds: BTreeMap<String, usize>,
    /// Declared license → packages, most frequent first (ties by name), at most ten.
    pub top_licenses: Vec<(String, usize)>,
    pub packages: usize,
}

/// Summarises an SPDX 2.3 JSON document (any tool's).
pub fn summarize(doc: &serde_json::Value) -> Summary {
    let mut s = Summary::default();
    let mut licenses: BTreeMap<String, usize> = BTreeMap::new();
    for p in doc["packages"].as_array().into_iter().flatten() {
        s.packages += 1;
        let kind = p["externalRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["referenceType"] == "purl")
            .and_then(|r| r["referenceLocator"].as_str())
            .and_then(|l| l.strip_prefix("pkg:"))
            .and_then(|l| l.split('/').next())
            .unwrap_or("other")
            .to_owned();
        *s.kinds.entry(kind).or_default() += 1;
        if let Some(l) = p["licenseDeclared"].as_str() {
            if l != "NOASSERTION" && l != "NONE" {
                *licenses.entry(l.to_owned()).or_default() += 1;
            }
        }
    }
    let mut top: Vec<(String, usize)> = licenses.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(10);
    s.top_licenses = top;
    s
}

/// A package URL component, percent-encoded as the purl spec asks (`+` and `:` included).
pub(crate) fn purl_escape(s: &str) -> String {
    crate::http::percent_encode(s)
}

impl Inventory {
    /// `pkg:oci/NAME@sha256%3A…`: the image's package URL.
    pub(crate) fn image_purl(&self) -> String {
        format!(
            "pkg:oci/{}@{}",
            purl_escape(&self.name.to_lowercase()),
            purl_escape(&self.image.to_string())
        )
    }
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH[&upstream=SOURCE]`.
pub(crate) fn deb_purl(p: &dpkg::DebPackage) -> String {
    let mut locator = format!(
        "pkg:deb/debian/{}@{}?arch={}",
        purl_escape(&p.name),
        purl_escape(&p.version),
        purl_escape(&p.architecture)
    );
    if let Some(s) = &p.source {
        locator.push_str(&format!("&upstream={}", purl_escape(s)));
    }
    locator
}

/// `pkg:pypi/NAME@VERSION`, the name normalised.
pub(crate) fn pypi_purl(d: &python::Distribution) -> String {
    format!(
        "pkg:pypi/{}@{}",
        purl_escape(&pypi_name(&d.name)),
        purl_escape(&d.version)
    )
}

/// `pkg:cargo/NAME@VERSION`.
pub(crate) fn cargo_purl(c: &cargo::Crate) -> String {
    format!(
        "pkg:cargo/{}@{}",
        purl_escape(&c.name),
        purl_escape(&c.version)
    )
}

/// A Python distribution's name as PyPI normalises it (PEP 503).
pub(crate) fn pypi_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls_are_escaped_and_pypi_names_normalised() {
        assert_eq!(purl_escape("2.36-9+deb12u10"), "2.36-9%2Bdeb12u10");
        assert_eq!(purl_escape("1:2.3"), "1%3A2.3");
        assert_eq!(pypi_name("Typing_Extensions"), "typing-extensions");
        assert_eq!(pypi_name("a.-_b"), "a-b");
    }

    #[test]
    fn the_summary_counts_kinds_and_licenses() {
        let doc = serde_json::json!({"packages": [
            {"licenseDeclared": "MIT", "externalRefs": [{"referenceType": "purl", "referenceLocator": "pkg:cargo/a@1"}]},
            {"licenseDeclared": "MIT", "externalRefs": [{"referenceType": "purl", "referenceLocator": "pkg:pypi/b@1"}]},
            {"licenseDeclared": "NOASSERTION", "externalRefs": [{"referenceType": "purl", "referenceLocator": "pkg:deb/debian/c@1"}]},
            {"licenseDeclared": "GPL-2.0-only"}
        ]});
        let s = summarize(&doc);
        assert_eq!(s.packages, 4);
        assert_eq!(
            s.kinds,
            [("cargo", 1), ("deb", 1), ("other", 1), ("pypi", 1)]
                .map(|(k, v)| (k.to_owned(), v))
                .into()
        );
        assert_eq!(
            s.top_licenses,
            vec![("MIT".to_owned(), 2), ("GPL-2.0-only".to_owned(), 1)]
        );
    }
}
