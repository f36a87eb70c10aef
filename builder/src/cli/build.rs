//! `envbuild build`, `inspect`, `diff`: images on this machine.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use envbuild::engine::image::{load, repo_tag};
use envbuild::engine::Blocking;
use envbuild::image::inspect;

use super::args::{parse_output, print_json, CacheArgs, FormatArgs, Output, TransportArgs};
use super::ui::ui;
use super::Stderr;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Environment file (see environments/README.md)
    pub env: PathBuf,
    /// Where to write the image: oci:DIR (OCI image layout) or docker-archive:FILE (`docker load`); repeatable. `-o json` is --json, as az users type it
    #[arg(long, short, value_parser = parse_build_output)]
    pub output: Vec<BuildOutput>,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Compression threads (the output does not depend on it) [default: all cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Load the image into the local Docker engine (DOCKER_HOST or the default socket)
    #[arg(long)]
    pub load: bool,
    /// Do not check that the entrypoint's shared libraries and symbol versions resolve in the image
    #[arg(long)]
    pub skip_link_check: bool,
    /// The SBOM's format: spdx (SPDX 2.3 JSON) or cyclonedx (CycloneDX 1.6 JSON)
    #[arg(long, value_name = "FORMAT", value_parser = ["spdx", "cyclonedx"], default_value = "spdx")]
    pub sbom_format: String,
    /// Also write the SBOM to FILE (it is always attached to oci: outputs and pushes)
    #[arg(long, value_name = "FILE")]
    pub sbom: Option<PathBuf>,
    /// One JSON document on stdout: {digest, config, layers: [{digest, size, media_type,
    /// diff_id, from, cached}], outputs, loaded} (messages stay on stderr)
    #[arg(long)]
    pub json: bool,
}

/// A value of build's `-o`: where the image goes, or (as az users type it) the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutput {
    Image(Output),
    Json,
    Text,
}

fn parse_build_output(s: &str) -> Result<BuildOutput, String> {
    match s {
        "json" => Ok(BuildOutput::Json),
        "text" => Ok(BuildOutput::Text),
        _ => parse_output(s).map(BuildOutput::Image),
    }
}

impl BuildArgs {
    fn outputs(&self) -> impl Iterator<Item = &Output> {
        self.output.iter().filter_map(|o| match o {
            BuildOutput::Image(i) => Some(i),
            _ => None,
        })
    }

    fn json(&self) -> bool {
        self.json || self.output.contains(&BuildOutput::Json)
    }
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// oci:DIR or docker-archive:FILE
    #[arg(value_parser = parse_output)]
    pub image: Output,
    // With --json: {digest, platform: {os, architecture}, config, layers: [{digest, size,
    // media_type, diff_id}]}
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// oci:DIR or docker-archive:FILE
    #[arg(value_parser = parse_output)]
    pub a: Output,
    /// oci:DIR or docker-archive:FILE
    #[arg(value_parser = parse_output)]
    pub b: Output,
    // With --json: {identical, a, b, differences: [...]} (the exit status is the same)
    #[command(flatten)]
    pub format: FormatArgs,
}

/// Fails early, before any work, when an output cannot be written: the nearest existing
/// ancestor of its path must be a writable directory.
fn check_writable(out: &Output) -> anyhow::Result<()> {
    let (Output::Oci(p) | Output::DockerArchive(p)) = out;
    let mut dir = p.parent().map(|d| {
        if d.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            d
        }
    });
    while let Some(d) = dir {
        if d.exists() {
            anyhow::ensure!(
                d.is_dir(),
                "output {}: {} is not a directory",
                p.display(),
                d.display()
            );
            tempfile::tempfile_in(d).with_context(|| {
                format!("output {}: cannot write in {}", p.display(), d.display())
            })?;
            return Ok(());
        }
        dir = d.parent();
    }
    Ok(())
}

pub fn build(a: BuildArgs) -> anyhow::Result<ExitCode> {
    let env = envbuild::spec::load_file(&a.env)?;
    for out in a.outputs() {
        check_writable(out)?;
    }
    // With --load, an engine that does not answer fails the build before any work.
    let engine = if a.load {
        Some(Blocking::connect()?)
    } else {
        None
    };
    let mut settings = a.transport.build(a.threads, a.skip_link_check)?;
    if a.sbom_format == "cyclonedx" {
        settings.sbom_format = envbuild::sbom::Format::CycloneDx;
    }
    let cache = a.cache.open()?;
    let built = envbuild::build::build(&env, &cache, &settings, &mut Stderr)?;
    let sbom = &built.attachments[0];
    let sbom_bytes = std::fs::read(cache.blob_path(&sbom.payload.0))?;
    let summary = (settings.sbom_format == envbuild::sbom::Format::Spdx)
        .then(|| serde_json::from_slice(&sbom_bytes).ok())
        .flatten()
        .map(|v: serde_json::Value| envbuild::sbom::summarize(&v));
    if let Some(s) = &summary {
        ui().message(&format!("sbom {}: {}", sbom.payload.0, summary_line(s)));
    }
    if let Some(p) = &a.sbom {
        super::args::write_atomically(p, &sbom_bytes, "--sbom")?;
        ui().message(&format!("wrote {}", p.display()));
    }
    let tag = env.publish.tag.clone().unwrap_or_else(|| "latest".into());
    let mut written = Vec::new();
    for out in a.outputs() {
        match out {
            Output::Oci(dir) => {
                envbuild::image::write_oci(&built.image, &cache, dir, &tag, &built.attachments)?;
                ui().message(&format!("wrote oci:{}", dir.display()));
                written.push(format!("oci:{}", dir.display()));
            }
            Output::DockerArchive(file) => {
                let repo_tag = repo_tag(&env);
                envbuild::image::write_docker_archive(
                    &built.image,
                    &cache,
                    file,
                    &repo_tag,
                    settings.source_date_epoch,
                )?;
                ui().message(&format!(
                    "wrote docker-archive:{} ({repo_tag})",
                    file.display()
                ));
                written.push(format!("docker-archive:{}", file.display()));
            }
        }
    }
    if let Some(engine) = &engine {
        load(
            engine,
            &env,
            &built.image,
            &cache,
            settings.source_date_epoch,
            &mut Stderr,
        )?;
    }
    if a.json() {
        // The new layers are the last ones; those before them come from the base.
        let base_count = built.image.layers.len() - built.layers.len();
        let layers: Vec<serde_json::Value> = built
            .image
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let new = i.checked_sub(base_count).map(|k| &built.layers[k]);
                serde_json::json!({
                    "digest": l.digest.to_string(),
                    "size": l.size,
                    "media_type": l.media_type,
                    "diff_id": l.diff_id.to_string(),
                    "from": new.map_or("base".to_owned(), |n| n.name.clone()),
                    "cached": new.is_none_or(|n| n.cached),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "digest": built.image.digest.to_string(),
            "config": built.image.config_digest.to_string(),
            "layers": layers,
            "outputs": written,
            "loaded": engine.is_some(),
            "sbom": {
                "digest": sbom.payload.0.to_string(),
                "artifact": sbom.digest.to_string(),
                "media_type": sbom.artifact_type,
                "packages": summary.as_ref().map(|s| s.packages),
            },
            "provenance": built.attachments.get(1).map(|p| p.digest.to_string()),
        });
        print_json(&doc)?;
    } else {
        println!("{}", built.image.digest);
    }
    Ok(ExitCode::SUCCESS)
}

/// `12 packages: 5 deb, 3 pypi, …; licenses: MIT 4, …`
fn summary_line(s: &envbuild::sbom::Summary) -> String {
    let kinds: Vec<String> = s.kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let lic: Vec<String> = s
        .top_licenses
        .iter()
        .take(5)
        .map(|(l, n)| format!("{l} {n}"))
        .collect();
    format!(
        "{} packages ({}); top licenses: {}",
        s.packages,
        kinds.join(", "),
        if lic.is_empty() {
            "none declared".to_owned()
        } else {
            lic.join(", ")
        }
    )
}

pub fn inspect(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let img = inspect::open(&a.image.spec())?;
    // The SBOM an OCI layout carries (a docker archive has no place for one).
    let summary = match &a.image {
        Output::Oci(dir) => envbuild::image::attach::layout_referrers(dir)?
            .into_iter()
            .find(|r| r.artifact_type == envbuild::sbom::SPDX_JSON)
            .and_then(|r| serde_json::from_slice(&r.document).ok())
            .map(|v: serde_json::Value| envbuild::sbom::summarize(&v)),
        Output::DockerArchive(_) => None,
    };
    if a.format.json() {
        let mut doc = inspect::as_json(&img);
        doc["sbom"] = serde_json::to_value(&summary)?;
        print_json(&doc)?;
    } else {
        print!("{}", inspect::describe(&img)?);
        match &summary {
            Some(s) => println!("sbom: {}", summary_line(s)),
            None => println!("sbom: none attached"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 when the images are the same, 1 when they differ (like `diff`), with the reasons.
pub fn diff(a: DiffArgs) -> anyhow::Result<ExitCode> {
    let (x, y) = (inspect::open(&a.a.spec())?, inspect::open(&a.b.spec())?);
    let lines = inspect::diff(&x, &y)?;
    if a.format.json() {
        print_json(&serde_json::json!({
            "identical": lines.is_empty(),
            "a": x.digest.map(|d| d.to_string()),
            "b": y.digest.map(|d| d.to_string()),
            "differences": lines,
        }))?;
        return Ok(if lines.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    if lines.is_empty() {
        println!(
            "identical: {}",
            x.digest.map(|d| d.to_string()).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for l in &lines {
        println!("{l}");
    }
    Ok(ExitCode::from(1))
}
