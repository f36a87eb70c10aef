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

/// What envbuild does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an environment file into a reproducible OCI image, without a Docker daemon
    Build(BuildArgs),
    /// Show an image's layers, config and annotations
    Inspect(InspectArgs),
    /// Explain why two images' digests differ: which layer, which file, which field
    Diff(DiffArgs),
    /// Push an image (an environment file, built first, or oci:DIR) to a registry
    Push(PushArgs),
    /// Check registry credentials and store them the way `docker login` does
    Login(LoginArgs),
    /// Run the image on the local Docker engine (--local) or as an Azure ML command job (--azure)
    Run(Box<RunArgs>),
    /// Register the pushed image as an Azure ML environment version
    Register(crate::cli_azure::RegisterArgs),
    /// Build, push and register in one idempotent step; prints the environment version's ARM id
    Deploy(crate::cli_azure::DeployArgs),
    /// Follow or cancel Azure ML jobs
    #[command(subcommand)]
    Job(crate::cli_azure::JobCommand),
    /// Register Azure ML models from job outputs
    #[command(subcommand)]
    Model(crate::cli_azure::ModelCommand),
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
    /// Registry host of a base image reached over plain HTTP (loopback ones always are); repeatable
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// PEM file with a CA certificate to trust when pulling a base image
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Load the image into the local Docker engine (DOCKER_HOST or the default socket)
    #[arg(long)]
    pub load: bool,
    /// Do not check that the entrypoint's shared libraries and symbol versions resolve in the image
    #[arg(long)]
    pub skip_link_check: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Registry host reached over plain HTTP (loopback registries always are); repeatable
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// PEM file with a CA certificate to trust besides the system's
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// User name (with --password-stdin); else $ENVBUILD_REGISTRY_USERNAME, else Docker's config.json
    #[arg(long, short)]
    pub username: Option<String>,
    /// Read the password or token from standard input
    #[arg(long)]
    pub password_stdin: bool,
    /// How to authenticate: `entra` (Microsoft Entra ID, the default for *.azurecr.io), `docker`
    /// (Docker's config.json and credential helpers), `anonymous` [env: ENVBUILD_REGISTRY_AUTH]
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,
    /// Parallel blob transfers
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// Blobs larger than this many MiB are sent in chunks of that size [default: 16 for ACR, 4 for GHCR, 128 elsewhere]
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub chunk_mib: Option<u64>,
}

/// How a registry is authenticated to, besides --username/--password-stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Microsoft Entra ID through the Azure credential chain (ACR's token exchange)
    Entra,
    /// Docker's config.json: auths, credHelpers, credsStore
    Docker,
    /// No credentials
    Anonymous,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry host, e.g. myacr.azurecr.io
    pub registry: String,
    /// User name (with --password-stdin) for a password login; else Microsoft Entra ID for
    /// *.azurecr.io or with --auth entra
    #[arg(long, short)]
    pub username: Option<String>,
    /// Read the password or token from standard input
    #[arg(long)]
    pub password_stdin: bool,
    /// `entra` to log in with Microsoft Entra ID whatever the host [env: ENVBUILD_REGISTRY_AUTH]
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,
    /// Registry host reached over plain HTTP (loopback registries always are); repeatable
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// PEM file with a CA certificate to trust besides the system's (registry and Entra ID)
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// An environment file (built first, with the cache) or oci:DIR
    pub source: String,
    /// REGISTRY/REPOSITORY[:TAG]
    pub dest: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Cache directory [default: $ENVBUILD_CACHE or ~/.cache/envbuild]
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Print a JSON summary (reference, blobs uploaded and skipped, bytes, seconds)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// An environment file (built, and loaded into the engine when it is not there) or an image
    /// reference REGISTRY/REPOSITORY@sha256:… or :TAG (pulled by digest when not there)
    pub source: String,
    /// Run on this machine's Docker engine (DOCKER_HOST or the default socket)
    #[arg(long, conflicts_with = "azure")]
    pub local: bool,
    /// Run as an Azure ML command job in the workspace (see the Azure options below)
    #[arg(long)]
    pub azure: bool,
    /// Host directory with the data set, mounted read-only at /data
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/usr/share/datasets/fashion-mnist"
    )]
    pub data: PathBuf,
    /// Host directory for checkpoints, metrics and the model, mounted read-write at /outputs
    #[arg(long, value_name = "DIR", default_value = "outputs")]
    pub outputs: PathBuf,
    /// Environment variable for the trainer (both modes): KEY=VALUE, or KEY to pass this shell's value; repeatable
    #[arg(long = "env", short = 'e', value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Size of /dev/shm (e.g. 2g; Azure ML's default is 2g)
    #[arg(long, value_name = "SIZE", default_value = "2g", value_parser = envbuild::run::parse_size)]
    pub shm_size: i64,
    /// Memory limit (e.g. 16g) [default: none]
    #[arg(long, value_name = "SIZE", value_parser = envbuild::run::parse_size)]
    pub memory: Option<i64>,
    /// GPUs: auto (all, when the engine has the nvidia runtime), all, a count, or none
    #[arg(long, value_name = "WHICH", default_value = "auto")]
    pub gpus: envbuild::run::Gpus,
    /// UID:GID the trainer runs as [default: yours, so the outputs belong to you]
    #[arg(long, value_name = "UID:GID")]
    pub user: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when the run is interrupted
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub stop_timeout: u32,
    /// Keep the container after it exits (it is removed by default)
    #[arg(long)]
    pub keep: bool,
    /// Cache directory for builds [default: $ENVBUILD_CACHE or ~/.cache/envbuild]
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Registry host reached over plain HTTP when resolving a tag (loopback ones always are); repeatable
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// PEM file with a CA certificate to trust when resolving a tag
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Azure ML (--azure)")]
    pub azure_args: crate::cli_azure::AzureRunArgs,
    #[command(flatten, next_help_heading = "Azure ML workspace (--azure)")]
    pub ws: crate::cli_azure::WorkspaceArgs,
    /// Arguments for the trainer, after `--` (e.g. -- --epochs 1 --resume)
    #[arg(last = true, value_name = "TRAINER ARGS")]
    pub args: Vec<String>,
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
    // Two rustls providers are compiled in (reqwest 0.12's ring, azure_core's aws-lc-rs): name one.
    envbuild::credential::install_crypto_provider();
    match cli.command {
        Command::Build(a) => build_cmd(a),
        Command::Inspect(a) => inspect_cmd(a),
        Command::Diff(a) => diff_cmd(a),
        Command::Push(a) => push_cmd(a),
        Command::Login(a) => login_cmd(a),
        Command::Run(a) => run_cmd(*a),
        Command::Register(a) => crate::cli_azure::register_cmd(a),
        Command::Deploy(a) => crate::cli_azure::deploy_cmd(a),
        Command::Job(a) => crate::cli_azure::job_cmd(a),
        Command::Model(a) => crate::cli_azure::model_cmd(a),
    }
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

/// Build options from the flags build, push and run share.
fn build_options(
    threads: Option<u32>,
    insecure: &[String],
    ca_file: &Option<PathBuf>,
    skip_link_check: bool,
) -> anyhow::Result<BuildOptions> {
    let threads = threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |t| t as usize,
    );
    Ok(BuildOptions {
        threads,
        source_date_epoch: source_date_epoch()?,
        skip_link_check,
        registry: registry_options(insecure, ca_file, 0, 4),
    })
}

/// Opens the cache (`--cache`, else the default) and builds `env` with it.
fn build_with_cache(
    env: &spec::Environment,
    cache: Option<PathBuf>,
    opts: &BuildOptions,
) -> anyhow::Result<(Cache, build::Built)> {
    let root = cache.unwrap_or_else(Cache::default_root);
    let cache = Cache::open(&root).with_context(|| format!("cache {}", root.display()))?;
    let built = build::build(env, &cache, opts, &mut Stderr)?;
    Ok((cache, built))
}

/// Loads an environment file with its variables.
fn load_env(path: &std::path::Path) -> anyhow::Result<spec::Environment> {
    Ok(spec::load(path, &spec::Vars::for_file(path))?)
}

fn build_cmd(a: BuildArgs) -> anyhow::Result<ExitCode> {
    let env = load_env(&a.env)?;
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
    let opts = build_options(
        a.threads,
        &a.insecure_registry,
        &a.ca_file,
        a.skip_link_check,
    )?;
    let (cache, built) = build_with_cache(&env, a.cache, &opts)?;
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
        load(
            rt,
            engine,
            &env,
            &built.image,
            &cache,
            opts.source_date_epoch,
        )?;
    }
    println!("{}", built.image.digest);
    Ok(ExitCode::SUCCESS)
}

/// Streams the image as a docker archive into the engine (through a temporary file in the
/// cache), tagged `envbuild/NAME:TAG`.
fn load(
    rt: &tokio::runtime::Runtime,
    engine: &envbuild::engine::Engine,
    env: &spec::Environment,
    image: &envbuild::image::Image,
    cache: &Cache,
    mtime: u64,
) -> anyhow::Result<()> {
    let tag = env.publish.tag.as_deref().unwrap_or("latest");
    let repo_tag = &format!("envbuild/{}:{tag}", env.name);
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

/// How to reach registries; five attempts per request.
fn registry_options(
    insecure: &[String],
    ca_file: &Option<PathBuf>,
    chunk: u64,
    parallel: usize,
) -> envbuild::registry::Options {
    envbuild::registry::Options {
        insecure: insecure.to_vec(),
        ca_file: ca_file.clone(),
        chunk,
        parallel,
        attempts: 5,
    }
}

fn auth_mode(flag: Option<AuthMode>) -> anyhow::Result<Option<AuthMode>> {
    if flag.is_some() {
        return Ok(flag);
    }
    match std::env::var("ENVBUILD_REGISTRY_AUTH") {
        Ok(v) if !v.is_empty() => <AuthMode as clap::ValueEnum>::from_str(&v, true)
            .map(Some)
            .map_err(|_| {
                anyhow::anyhow!(
                    "ENVBUILD_REGISTRY_AUTH=`{v}` is not one of entra, docker, anonymous"
                )
            }),
        _ => Ok(None),
    }
}

/// Credentials from flags, then the environment, then the auth mode: Entra when asked for,
/// Docker's config.json (and its credential helpers), Entra by default for *.azurecr.io.
fn credentials(
    username: Option<&str>,
    password_stdin: bool,
    auth: Option<AuthMode>,
    registry: &str,
) -> anyhow::Result<Option<envbuild::registry::Credentials>> {
    use envbuild::registry::{Credentials, Secret};
    let password = if password_stdin {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the password from stdin")?;
        Some(s.trim_end_matches(['\n', '\r']).to_owned())
    } else {
        std::env::var("ENVBUILD_REGISTRY_PASSWORD")
            .ok()
            .filter(|s| !s.is_empty())
    };
    let username = username
        .map(str::to_owned)
        .or_else(|| std::env::var("ENVBUILD_REGISTRY_USERNAME").ok())
        .filter(|u| !u.is_empty());
    Ok(match (username, password) {
        (Some(u), Some(p)) if u == envbuild::registry::ACR_TOKEN_USERNAME => {
            Some(Credentials::IdentityToken(Secret::new(p)))
        }
        (Some(u), Some(p)) => Some(Credentials::Basic {
            username: u,
            password: Secret::new(p),
        }),
        (None, Some(p)) => Some(Credentials::IdentityToken(Secret::new(p))),
        (Some(u), None) => {
            anyhow::bail!("--username {u} needs --password-stdin (or ENVBUILD_REGISTRY_PASSWORD)")
        }
        (None, None) => match auth_mode(auth)? {
            Some(AuthMode::Entra) => Some(Credentials::Entra),
            Some(AuthMode::Anonymous) => None,
            Some(AuthMode::Docker) => {
                envbuild::docker_config::credentials(registry).context("Docker's config.json")?
            }
            None => envbuild::docker_config::credentials(registry)
                .context("Docker's config.json")?
                .or_else(|| envbuild::registry::is_acr(registry).then_some(Credentials::Entra)),
        },
    })
}

pub(crate) fn registry_client(
    a: &RegistryArgs,
    reference: &envbuild::registry::Reference,
) -> anyhow::Result<envbuild::registry::Client> {
    let opts = registry_options(
        &a.insecure_registry,
        &a.ca_file,
        a.chunk_mib.map_or(0, |m| m << 20),
        a.parallel as usize,
    );
    Ok(envbuild::registry::Client::new(
        reference,
        credentials(
            a.username.as_deref(),
            a.password_stdin,
            a.auth,
            &reference.registry,
        )?,
        &opts,
    )?)
}

fn push_cmd(a: PushArgs) -> anyhow::Result<ExitCode> {
    let report = push_source(&a)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    println!("{}", report.reference);
    Ok(ExitCode::SUCCESS)
}

/// Builds an environment file with the cache, as push does: the image and the checked spec.
pub(crate) fn build_env(
    path: &std::path::Path,
    registry: &RegistryArgs,
    cache: &Cache,
) -> anyhow::Result<(spec::Environment, build::Built)> {
    let env = load_env(path)?;
    let opts = build_options(None, &registry.insecure_registry, &registry.ca_file, false)?;
    let built = build::build(&env, cache, &opts, &mut Stderr)?;
    Ok((env, built))
}

/// `envbuild push` without the printing (deploy pushes too).
pub(crate) fn push_source(a: &PushArgs) -> anyhow::Result<envbuild::registry::PushReport> {
    let dest: envbuild::registry::Reference = a.dest.parse().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        dest.digest.is_none(),
        "push destination {} names a digest; give REGISTRY/REPOSITORY[:TAG]",
        a.dest
    );
    let root = a.cache.clone().unwrap_or_else(Cache::default_root);
    let client =
        registry_client(&a.registry, &dest)?.with_push_record(envbuild::registry::PushRecord {
            dir: root.join("pushed"),
        });
    let image = if let Some(dir) = a.source.strip_prefix("oci:") {
        envbuild::image::pushable_from_oci(std::path::Path::new(dir))?
    } else {
        let cache = Cache::open(&root).with_context(|| format!("cache {}", root.display()))?;
        let (_, built) = build_env(std::path::Path::new(&a.source), &a.registry, &cache)?;
        envbuild::image::pushable_from_cache(&built.image, &cache)
    };
    // Per-blob progress on a terminal; quiet in logs and pipes (--json gives the summary).
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = |d: &envbuild::digest::Digest, size: u64, sent: bool, secs: f64| {
        if !tty {
            return;
        }
        if sent {
            eprintln!(
                "pushed  {d}  {:.1} MB in {secs:.1}s ({:.0} MB/s)",
                size as f64 / 1e6,
                size as f64 / 1e6 / secs.max(1e-6)
            );
        } else {
            eprintln!("exists  {d}");
        }
    };
    Ok(envbuild::registry::push(&client, &image, &progress)?)
}

/// `envbuild login REGISTRY`: checks the credentials against the registry (for Entra, the
/// token exchange gives an ACR refresh token), then stores them as `docker login` does.
fn login_cmd(a: LoginArgs) -> anyhow::Result<ExitCode> {
    use envbuild::registry::{Client, Credentials, Reference};
    let host = a
        .registry
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    anyhow::ensure!(
        !host.is_empty() && !host.contains('/'),
        "`{}` is not a registry host (expected e.g. myacr.azurecr.io or 127.0.0.1:5000)",
        a.registry
    );
    let creds = match (a.username.is_some() || a.password_stdin, auth_mode(a.auth)?) {
        (false, Some(AuthMode::Anonymous)) => {
            anyhow::bail!("`--auth anonymous` has nothing to log in with")
        }
        (false, Some(AuthMode::Entra)) => Some(Credentials::Entra),
        (false, _) if envbuild::registry::is_acr(host) => Some(Credentials::Entra),
        _ => credentials(a.username.as_deref(), a.password_stdin, None, host)?,
    };
    let Some(creds) = creds else {
        anyhow::bail!("no credentials for {host}: give --username and --password-stdin, or --auth entra for Microsoft Entra ID");
    };
    let reference = Reference {
        registry: host.to_owned(),
        repository: String::new(),
        tag: None,
        digest: None,
    };
    let opts = registry_options(&a.insecure_registry, &a.ca_file, 0, 1);
    let client = Client::new(&reference, Some(creds), &opts)?;
    let Some(store) = client.login()? else {
        anyhow::bail!("{host}: the registry accepted the request without asking for credentials; nothing to store");
    };
    let entra = matches!(store, Credentials::IdentityToken(_));
    match envbuild::docker_config::store(host, &store)? {
        envbuild::docker_config::Stored::File(p) => eprintln!(
            "stored {} for {host} in {}",
            if entra {
                "an identity token"
            } else {
                "the password"
            },
            p.display()
        ),
        envbuild::docker_config::Stored::Helper(h) => {
            eprintln!("stored the credentials for {host} with docker-credential-{h}")
        }
    }
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

/// `envbuild run --local`: the image by digest on the local engine, the trainer's exit code as
/// ours.
fn run_cmd(a: RunArgs) -> anyhow::Result<ExitCode> {
    use envbuild::run::{Gpus, Outcome, RunSpec};
    anyhow::ensure!(
        a.local || a.azure,
        "say where to run: `envbuild run --local …` (this machine's Docker engine) or \
         `envbuild run --azure … --compute NAME` (an Azure ML command job)"
    );
    if a.azure {
        let mut azure_args = a.azure_args.clone();
        for kv in &a.env {
            let kv = env_pair(kv)?;
            let (k, v) = kv.split_once('=').expect("env_pair gives KEY=VALUE");
            azure_args.env_vars.push((k.to_owned(), v.to_owned()));
        }
        return crate::cli_azure::run_azure(&a.source, &a.args, &azure_args, &a.ws, &a.cache);
    }
    anyhow::ensure!(
        a.data.is_dir(),
        "--data {}: not a directory (the data set is mounted read-only at /data)",
        a.data.display()
    );
    let data = a
        .data
        .canonicalize()
        .with_context(|| format!("--data {}", a.data.display()))?;
    let env = a
        .env
        .iter()
        .map(|kv| env_pair(kv))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let user = match &a.user {
        Some(u) => {
            anyhow::ensure!(
                u.split_once(':')
                    .is_some_and(|(x, y)| x.parse::<u32>().is_ok() && y.parse::<u32>().is_ok()),
                "--user {u}: expected UID:GID (numbers), e.g. 1000:1000"
            );
            u.clone()
        }
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        None => unsafe { format!("{}:{}", libc::getuid(), libc::getgid()) },
    };

    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let engine = rt.block_on(envbuild::engine::connect())?;
    // Made by us, as the caller, before the engine would make it as root.
    std::fs::create_dir_all(&a.outputs)
        .with_context(|| format!("--outputs {}: cannot create it", a.outputs.display()))?;
    let outputs = a
        .outputs
        .canonicalize()
        .with_context(|| format!("--outputs {}", a.outputs.display()))?;
    let image = local_image(&a, &rt, &engine)?;
    let nvidia = rt.block_on(engine.has_nvidia_runtime())?;
    let gpus = envbuild::run::device_request(a.gpus, nvidia);
    match (&gpus, a.gpus) {
        (None, Gpus::Auto) => {
            eprintln!("no nvidia runtime in the Docker engine: running on the CPU")
        }
        (None, _) => eprintln!("--gpus none: running on the CPU"),
        (Some(_), g) => eprintln!("requesting GPUs: {g} (nvidia)"),
    }
    let spec = RunSpec {
        image: image.clone(),
        args: a.args.clone(),
        data: data.clone(),
        outputs: outputs.clone(),
        env,
        shm_size: Some(a.shm_size),
        memory: a.memory,
        gpus,
        user,
        stop_timeout: a.stop_timeout,
        keep: a.keep,
    };
    eprintln!(
        "running {image}: {} → /data (read-only), {} → /outputs",
        data.display(),
        outputs.display()
    );
    let (outcome, id) = rt.block_on(engine.run(&spec))?;
    if a.keep {
        eprintln!("kept container {id}");
    }
    Ok(match outcome {
        Outcome::Exited { code: 0, .. } => {
            let summary = outputs.join("summary.json");
            let accuracy = std::fs::read(&summary)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["test_accuracy"].as_f64());
            if let Some(acc) = accuracy {
                println!(
                    "test accuracy {:.2} %; model: {}",
                    acc * 100.0,
                    outputs.join("model.safetensors").display()
                );
            }
            ExitCode::SUCCESS
        }
        Outcome::Exited { code, oom_killed } => {
            eprintln!("envbuild: the trainer exited with code {code}");
            if oom_killed {
                eprintln!("envbuild: the container ran out of memory; raise --memory");
            }
            ExitCode::from(u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1))
        }
        Outcome::Interrupted { signal } => {
            eprintln!(
                "envbuild: stopped; the last checkpoint is in {} — add `-- --resume` to continue",
                outputs.display()
            );
            ExitCode::from(128 + signal as u8)
        }
    })
}

/// `KEY=VALUE`, or `KEY` with this process's value (as `docker run -e KEY`).
fn env_pair(kv: &str) -> anyhow::Result<String> {
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (kv, None),
    };
    anyhow::ensure!(
        !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "--env {kv}: `{key}` is not a variable name"
    );
    let value = match value {
        Some(v) => v,
        None => std::env::var(key)
            .with_context(|| format!("--env {key}: not set in this shell (give {key}=VALUE)"))?,
    };
    Ok(format!("{key}={value}"))
}

/// Makes sure the engine has the image and returns the name to run it by: for an environment
/// file, the built config's ID (loaded when missing); for a reference, REPO@DIGEST (a tag is
/// resolved to its digest first; pulled when missing).
fn local_image(
    a: &RunArgs,
    rt: &tokio::runtime::Runtime,
    engine: &envbuild::engine::Engine,
) -> anyhow::Result<String> {
    let path = std::path::Path::new(&a.source);
    if path.is_file() || a.source.ends_with(".toml") {
        let env = load_env(path)?;
        let opts = build_options(None, &a.insecure_registry, &a.ca_file, false)?;
        let (cache, built) = build_with_cache(&env, a.cache.clone(), &opts)?;
        let id = built.image.config_digest.to_string();
        if rt.block_on(engine.has_image(&id))? {
            eprintln!("the engine has {id} already");
        } else {
            load(
                rt,
                engine,
                &env,
                &built.image,
                &cache,
                opts.source_date_epoch,
            )?;
        }
        return Ok(id);
    }
    let reference: envbuild::registry::Reference = a.source.parse().map_err(|e: String| {
        anyhow::anyhow!(
            "{}: neither an environment file nor an image reference: {e}",
            a.source
        )
    })?;
    use envbuild::registry::{Client, Credentials};
    let opts = registry_options(&a.insecure_registry, &a.ca_file, 0, 1);
    // Docker's config, else Entra ID for ACR; an Entra identity is exchanged for the ACR
    // refresh token that the engine can use.
    let creds = match envbuild::registry::default_credentials(&reference.registry) {
        Some(Credentials::Entra) => {
            Client::new(&reference, Some(Credentials::Entra), &opts)?.login()?
        }
        c => c,
    };
    let digest = match &reference.digest {
        Some(d) => d.to_string(),
        None => {
            let client = Client::new(&reference, creds.clone(), &opts)?;
            let tag = reference.tag.clone().unwrap_or_else(|| "latest".into());
            let (_, _, d) = client.get_manifest(&tag)?;
            eprintln!("{reference} is {d}");
            d.to_string()
        }
    };
    let name = format!("{}/{}@{digest}", reference.registry, reference.repository);
    if !rt.block_on(engine.has_image(&name))? {
        eprintln!("pulling {name} into the Docker engine");
        let creds = creds.map(|c| envbuild::run::engine_credentials(&c, &reference.registry));
        rt.block_on(engine.pull(&name, creds))?;
    }
    Ok(name)
}
