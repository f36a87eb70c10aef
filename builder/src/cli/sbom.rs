//! `envbuild sbom SOURCE`: the SBOM (or provenance statement) attached to an image, printed or
//! written — from `oci:DIR` (the layout's referrers), a registry reference (the referrers API,
//! else the tag schema), or an environment file (built from the cache).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use envbuild::image::attach;
use envbuild::registry::{referrers, Reference};
use envbuild::sbom;

use super::args::PublishArgs;
use super::ui::ui;
use super::Stderr;

#[derive(Debug, Args)]
pub struct SbomArgs {
    /// oci:DIR, REGISTRY/REPOSITORY[:TAG|@DIGEST], or an environment file
    pub source: String,
    /// Write the document to FILE (atomically) instead of stdout
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The provenance statement (in-toto, SLSA v1) instead of the SBOM
    #[arg(long)]
    pub provenance: bool,
    #[command(flatten)]
    pub publish: PublishArgs,
}

fn wanted(t: &str, provenance: bool) -> bool {
    if provenance {
        t == sbom::IN_TOTO_JSON
    } else {
        t == sbom::SPDX_JSON || t == sbom::CYCLONEDX_JSON
    }
}

pub fn sbom(a: SbomArgs) -> anyhow::Result<ExitCode> {
    let what = if a.provenance {
        "provenance statement"
    } else {
        "SBOM"
    };
    if let Some(file) = a.source.strip_prefix("docker-archive:") {
        anyhow::bail!(
            "docker-archive:{file}: a docker archive has no place for an SBOM; use the oci: output of the same build, or the pushed image"
        );
    }
    let doc: Vec<u8> = if let Some(dir) = a.source.strip_prefix("oci:") {
        attach::layout_referrers(std::path::Path::new(dir))?
            .into_iter()
            .find(|r| wanted(&r.artifact_type, a.provenance))
            .map(|r| r.document)
            .with_context(|| format!("oci:{dir} has no {what} (it was written by another tool, or before envbuild attached one)"))?
    } else if a.source.ends_with(".toml") || std::path::Path::new(&a.source).is_file() {
        let cache = a.publish.cache.open()?;
        let (_, built) = envbuild::build::build_file(
            std::path::Path::new(&a.source),
            &cache,
            &a.publish.registry.build()?,
            &mut Stderr,
        )?;
        let att = built
            .attachments
            .iter()
            .find(|x| wanted(&x.artifact_type, a.provenance))
            .context("the build attached no such document")?;
        std::fs::read(cache.blob_path(&att.payload.0))?
    } else {
        let r: Reference = a.source.parse()?;
        let client = a.publish.registry.client(&r)?;
        let subject = match &r.digest {
            Some(d) => *d,
            None => {
                let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
                client.get_manifest(&tag)?.2
            }
        };
        let (found, how) = referrers::list(&client, &subject, None)?;
        let m = found
            .iter()
            .find(|m| {
                m["artifactType"]
                    .as_str()
                    .is_some_and(|t| wanted(t, a.provenance))
            })
            .with_context(|| {
                format!(
                    "{}/{}@{subject} has no {what} attached",
                    r.registry, r.repository
                )
            })?;
        let d: envbuild::digest::Digest = m["digest"].as_str().unwrap_or("").parse()?;
        ui().message(&format!(
            "{what} {d} of {subject}, found through the {}",
            match how {
                referrers::Listed::ReferrersApi => "referrers API",
                referrers::Listed::TagSchema => "referrers tag schema",
            }
        ));
        referrers::document(&client, &d)?.1
    };
    match &a.output {
        Some(p) => {
            super::args::write_atomically(p, &doc, "--output")?;
            ui().message(&format!("wrote {}", p.display()));
        }
        None => {
            use std::io::Write as _;
            let mut o = std::io::stdout().lock();
            o.write_all(&doc)?;
            o.write_all(b"\n")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
