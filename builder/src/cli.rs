//! The `envbuild` command line: clap structs in one place, one small function per command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use envbuild::build::{self, BuildOptions, Reporter};
use envbuild::cache::Cache;
use envbuild::spec;

/// Reproducible, daemonless CUDA trainer images for Azure ML: build, push, register, run.
#[derive(Debug, Parser)]
#[command(name = "envbuild", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What envbuild does; commands marked "coming" answer with the issue that delivers them.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an environment file into a reproducible OCI image, without a Docker daemon
    Build(BuildArgs),
    /// Show an image's layers, config and annotations
    Inspect(InspectArgs),
    /// Explain why two images' digests differ: which layer, which file, which field
    Diff(DiffArgs),
    /// Push an image to Azure Container Registry or any OCI registry (coming: issue #4)
    Push,
    /// Store registry credentials the way `docker login` does (coming: issue #4)
    Login,
    /// Run the image on the local Docker engine or as an Azure ML job (coming: issues #5 and #6)
    Run,
    /// Register the pushed image as an Azure ML environment version (coming: issue #6)
    Register,
    /// Build, push and register in one idempotent step (coming: issue #6)
    Deploy,
}

/// Where a build goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Oci(PathBuf),
    DockerArchive(PathBuf),
}

fn parse_output(s: &str) -> Result<Output, String> {
    match s.split_once(':') {
        Some(("oci", p)) if !p.is_empty() => Ok(Output::Oci(p.into())),
        Some(("docker-archive", p)) if !p.is_empty() => Ok(Output::DockerArchive(p.into())),
        _ => Err(format!(
            "`{s}` is not an output (use oci:DIR or docker-archive:FILE)"
        )),
    }
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Environment file (see environments/README.md)
    pub env: PathBuf,
    /// Where to write the image: oci:DIR (OCI image layout) or docker-archive:FILE (`docker load`); repeatable
    #[arg(long, short, value_parser = parse_output)]
    pub output: Vec<Output>,
    /// Cache directory for blobs and built layers [default: $ENVBUILD_CACHE or ~/.cache/envbuild]
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Compression threads (the output does not depend on it) [default: all cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Load the image into the local Docker engine (DOCKER_HOST or the default socket)
    #[arg(long)]
    pub load: bool,
    /// Do not check that the entrypoint's shared libraries and symbol versions resolve in the image
    #[arg(long)]
    pub skip_link_check: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// oci:DIR or docker-archive:FILE
    #[arg(value_parser = parse_output)]
    pub image: Output,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// oci:DIR or docker-archive:FILE
    #[arg(value_parser = parse_output)]
    pub a: Output,
    /// oci:DIR or docker-archive:FILE
    #[arg(value_parser = parse_output)]
    pub b: Output,
}

struct Stderr;

impl Reporter for Stderr {
    fn message(&mut self, text: &str) {
        eprintln!("{text}");
    }
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build(a) => build_cmd(a),
        Command::Inspect(a) => inspect_cmd(a),
        Command::Diff(a) => diff_cmd(a),
        Command::Push | Command::Login => coming("push/login", 4),
        Command::Run => coming("run", 5),
        Command::Register | Command::Deploy => coming("register/deploy", 6),
    }
}

fn coming(what: &str, issue: u32) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`{what}` is not available yet; it is planned in issue #{issue}")
}

fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.is_empty() => s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH=`{s}` is not a number of seconds")),
        _ => Ok(0),
    }
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

fn build_cmd(a: BuildArgs) -> anyhow::Result<ExitCode> {
    let vars = spec::Vars::for_file(&a.env);
    let env = spec::load(&a.env, &vars)?;
    for out in &a.output {
        check_writable(out)?;
    }
    // With --load, an engine that does not answer fails the build before any work.
    let engine = if a.load {
        let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        let engine = rt.block_on(envbuild::engine::connect())?;
        Some((rt, engine))
    } else {
        None
    };
    let threads = a.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |t| t as usize,
    );
    let opts = BuildOptions {
        threads,
        source_date_epoch: source_date_epoch()?,
        skip_link_check: a.skip_link_check,
    };
    let root = a.cache.unwrap_or_else(Cache::default_root);
    let cache = Cache::open(&root).with_context(|| format!("cache {}", root.display()))?;
    let built = build::build(&env, &cache, &opts, &mut Stderr)?;
    let tag = env.publish.tag.clone().unwrap_or_else(|| "latest".into());
    for out in &a.output {
        match out {
            Output::Oci(dir) => {
                envbuild::image::write_oci(&built.image, &cache, dir, &tag)?;
                eprintln!("wrote oci:{}", dir.display());
            }
            Output::DockerArchive(file) => {
                let repo_tag = format!("envbuild/{}:{tag}", env.name);
                envbuild::image::write_docker_archive(
                    &built.image,
                    &cache,
                    file,
                    &repo_tag,
                    opts.source_date_epoch,
                )?;
                eprintln!("wrote docker-archive:{} ({repo_tag})", file.display());
            }
        }
    }
    if let Some((rt, engine)) = &engine {
        let repo_tag = format!("envbuild/{}:{tag}", env.name);
        load(
            rt,
            engine,
            &built.image,
            &cache,
            &repo_tag,
            opts.source_date_epoch,
        )?;
    }
    println!("{}", built.image.digest);
    Ok(ExitCode::SUCCESS)
}

/// Streams the image as a docker archive into the engine (through a temporary file in the cache).
fn load(
    rt: &tokio::runtime::Runtime,
    engine: &envbuild::engine::Engine,
    image: &envbuild::image::Image,
    cache: &Cache,
    repo_tag: &str,
    mtime: u64,
) -> anyhow::Result<()> {
    let dir =
        tempfile::tempdir_in(cache.root.join("tmp")).context("temporary directory in the cache")?;
    let archive = dir.path().join("image.tar");
    envbuild::image::write_docker_archive(image, cache, &archive, repo_tag, mtime)?;
    for l in rt.block_on(engine.load_archive(&archive))? {
        eprintln!("{l}");
    }
    eprintln!(
        "loaded {repo_tag} into the Docker engine at {}",
        engine.address
    );
    Ok(())
}

fn image_spec(o: &Output) -> String {
    match o {
        Output::Oci(p) => format!("oci:{}", p.display()),
        Output::DockerArchive(p) => format!("docker-archive:{}", p.display()),
    }
}

fn inspect_cmd(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let img = envbuild::inspect::open(&image_spec(&a.image))?;
    print!("{}", envbuild::inspect::describe(&img)?);
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 when the images are the same, 1 when they differ (like `diff`), with the reasons.
fn diff_cmd(a: DiffArgs) -> anyhow::Result<ExitCode> {
    let (x, y) = (
        envbuild::inspect::open(&image_spec(&a.a))?,
        envbuild::inspect::open(&image_spec(&a.b))?,
    );
    let lines = envbuild::inspect::diff(&x, &y)?;
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
