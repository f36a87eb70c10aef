//! The flags, in groups that commands share by `#[command(flatten)]` (cache, transport,
//! credentials, transfer, workspace, job pacing), and the one place each group turns into the
//! library's settings.

pub mod azure;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use envbuild::auth::entra::{EntraChain, EntraError};
use envbuild::auth::{self, AuthMode, Given, Secret};
use envbuild::cache::Cache;
use envbuild::engine::run::{parse_size, Gpus};
use envbuild::http::{RetryPolicy, Timeouts};
use envbuild::{azureml, build, registry};

/// `--cache`.
#[derive(Debug, Clone, Default, Args)]
pub struct CacheArgs {
    /// Cache directory for blobs and built layers [default: $ENVBUILD_CACHE or ~/.cache/envbuild]
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

impl CacheArgs {
    pub fn root(&self) -> PathBuf {
        self.cache.clone().unwrap_or_else(Cache::default_root)
    }

    pub fn open(&self) -> anyhow::Result<Cache> {
        let root = self.root();
        Cache::open(&root).with_context(|| format!("cache {}", root.display()))
    }
}

/// How registries are reached: plain HTTP hosts, extra CAs.
#[derive(Debug, Clone, Default, Args)]
pub struct TransportArgs {
    /// Registry host reached over plain HTTP (loopback registries always are); repeatable
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// PEM file with CA certificates to trust besides the system's
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait for a connection to a registry [default: 10]
    #[arg(long, value_name = "SECS", env = "ENVBUILD_CONNECT_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout: Option<u64>,
    /// Seconds a registry may stay silent (no byte sent or received) before the request fails;
    /// a transfer that moves bytes never times out [default: 30]
    #[arg(long, value_name = "SECS", env = "ENVBUILD_IDLE_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout: Option<u64>,
}

/// How blobs move: parallel transfers and chunk size.
#[derive(Debug, Clone, Args)]
pub struct TransferArgs {
    /// Parallel blob transfers
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// Blobs larger than this many MiB are sent in chunks of that size [default: 16 for ACR, 4 for GHCR, 128 elsewhere]
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub chunk_mib: Option<u64>,
}

impl Default for TransferArgs {
    fn default() -> TransferArgs {
        TransferArgs {
            parallel: 4,
            chunk_mib: None,
        }
    }
}

impl TransportArgs {
    /// Registry settings: these hosts and CAs, `transfer`'s parallelism and chunks, five
    /// attempts per request.
    pub fn registry(&self, transfer: &TransferArgs) -> registry::Settings {
        registry::Settings {
            insecure: self.insecure_registry.clone(),
            ca_file: self.ca_file.clone(),
            chunk: transfer.chunk_mib.map_or(0, |m| m << 20),
            parallel: transfer.parallel as usize,
            retry: RetryPolicy::default(),
            timeouts: self.timeouts(),
        }
    }

    /// The timeouts of these flags, the defaults where none is given.
    pub fn timeouts(&self) -> Timeouts {
        let d = Timeouts::default();
        Timeouts {
            connect: self.connect_timeout.map_or(d.connect, Duration::from_secs),
            idle: self.idle_timeout.map_or(d.idle, Duration::from_secs),
        }
    }

    /// Build settings for builds that pull base images through these hosts and CAs.
    pub fn build(
        &self,
        threads: Option<u32>,
        skip_link_check: bool,
    ) -> anyhow::Result<build::Settings> {
        let threads = threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |t| t as usize,
        );
        Ok(build::Settings {
            threads,
            source_date_epoch: source_date_epoch()?,
            skip_link_check,
            registry: self.registry(&TransferArgs::default()),
            sbom_format: envbuild::sbom::Format::default(),
        })
    }
}

/// Who we are to the registry.
#[derive(Debug, Clone, Default, Args)]
pub struct CredentialArgs {
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
}

impl CredentialArgs {
    /// What the flags give, the password read from stdin when asked for.
    pub fn given(&self) -> anyhow::Result<Given> {
        let password = if self.password_stdin {
            Some(password_from(std::io::stdin().lock())?)
        } else {
            None
        };
        Ok(Given {
            username: self.username.clone(),
            password,
            mode: self.auth,
        })
    }

    /// The credentials for `registry` by the one policy ([`auth::resolve`]).
    pub fn resolve(&self, registry: &str) -> anyhow::Result<Option<auth::Credentials>> {
        Ok(auth::resolve(&self.given()?, registry)?)
    }
}

/// The password or token on `input` (`--password-stdin`): one line, its line end dropped. Empty
/// input is refused, not stored or sent as an empty password; more than 64 KiB is no password.
fn password_from(input: impl std::io::Read) -> anyhow::Result<Secret> {
    let bytes = envbuild::http::read_capped(input, 64 << 10).map_err(|e| match e {
        Some(e) => anyhow::Error::new(e).context("reading the password from stdin"),
        None => anyhow::anyhow!("--password-stdin: standard input holds more than 64 KiB, which is no password or token"),
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("--password-stdin: standard input is not UTF-8 text"))?;
    let password = text.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(
        !password.is_empty(),
        "--password-stdin: standard input was empty; pipe the password or token in, e.g. `echo \"$TOKEN\" | envbuild login --username U --password-stdin REGISTRY`"
    );
    Ok(Secret::new(password))
}

/// Everything a command that talks to a registry needs.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    #[command(flatten)]
    pub transport: TransportArgs,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

impl RegistryArgs {
    /// A client for `reference` with these settings and credentials.
    pub fn client(&self, reference: &registry::Reference) -> anyhow::Result<registry::Client> {
        Ok(registry::Client::new(
            reference,
            self.credentials.resolve(&reference.registry)?,
            &self.transport.registry(&self.transfer),
        )?)
    }

    /// Build settings for builds done on the way (push, register of a file).
    pub fn build(&self) -> anyhow::Result<build::Settings> {
        let mut s = self.transport.build(None, false)?;
        s.registry = self.transport.registry(&self.transfer);
        Ok(s)
    }
}

/// Where an image goes and what it comes from: the registry, and the cache a file is built in.
#[derive(Debug, Clone, Default, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

impl PublishArgs {
    /// Pushes `source` (an environment file, built first, or `oci:DIR`) to `dest`, with per-blob
    /// progress on the display.
    pub fn push(&self, source: &str, dest: &str) -> anyhow::Result<registry::PushReport> {
        let dest: registry::Reference = dest.parse()?;
        Ok(envbuild::publish::push_source(
            source,
            &dest,
            self.registry.credentials.resolve(&dest.registry)?,
            &self.cache.root(),
            &self.registry.build()?,
            &mut super::Stderr,
        )?)
    }
}

/// `SOURCE_DATE_EPOCH`, the time every timestamp of the image gets (0 when unset).
pub fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.is_empty() => s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH=`{s}` is not a number of seconds")),
        _ => Ok(0),
    }
}

/// `--json`, or `-o json` as az users type it: one JSON document on stdout, messages on stderr.
#[derive(Debug, Clone, Default, Args)]
pub struct FormatArgs {
    /// One JSON document on stdout, messages stay on stderr (the shapes are in the README)
    #[arg(long)]
    pub json: bool,
    /// Output format, as the az CLI spells it: `-o json` is --json
    #[arg(short = 'o', long = "output-format", value_name = "FORMAT", value_parser = ["json", "text"], conflicts_with = "json")]
    pub format: Option<String>,
}

impl FormatArgs {
    pub fn json(&self) -> bool {
        self.json || self.format.as_deref() == Some("json")
    }
}

/// Writes `bytes` to `path` through a temporary file beside it, renamed into place (nothing
/// half-written), readable by all as other outputs are; `what` names the flag in errors.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8], what: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| {
        format!(
            "{what} {}: cannot write in {}",
            path.display(),
            dir.display()
        )
    })?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("{what} {}", path.display()))?;
    Ok(())
}

/// Prints `doc` as the command's one JSON document on stdout.
pub fn print_json(doc: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(doc)?);
    Ok(())
}

/// Where a build goes, or what inspect and diff read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Oci(PathBuf),
    DockerArchive(PathBuf),
}

impl Output {
    /// `oci:DIR` or `docker-archive:FILE`, as the library's readers take it.
    pub fn spec(&self) -> String {
        match self {
            Output::Oci(p) => format!("oci:{}", p.display()),
            Output::DockerArchive(p) => format!("docker-archive:{}", p.display()),
        }
    }
}

pub fn parse_output(s: &str) -> Result<Output, String> {
    match s.split_once(':') {
        Some(("oci", p)) if !p.is_empty() => Ok(Output::Oci(p.into())),
        Some(("docker-archive", p)) if !p.is_empty() => Ok(Output::DockerArchive(p.into())),
        _ => Err(format!(
            "`{s}` is not an output (use oci:DIR or docker-archive:FILE)"
        )),
    }
}

pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

/// `KEY=VALUE`, or `KEY` with this process's value (as `docker run -e KEY`).
pub fn env_pair(kv: &str) -> anyhow::Result<(String, String)> {
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
    Ok((key.to_owned(), value))
}

/// Which workspace, and how to reach Azure.
#[derive(Debug, Clone, Args)]
pub struct WorkspaceArgs {
    /// Azure subscription id [default: $AZURE_SUBSCRIPTION_ID, else config.json]
    #[arg(long, value_name = "ID")]
    pub subscription: Option<String>,
    /// Resource group [default: $AZURE_RESOURCE_GROUP, else config.json]
    #[arg(long, value_name = "NAME")]
    pub resource_group: Option<String>,
    /// Azure ML workspace [default: $AZUREML_WORKSPACE_NAME, else config.json]
    #[arg(long, value_name = "NAME")]
    pub workspace: Option<String>,
    /// Azure ML config.json [default: ./config.json or ./.azureml/config.json, here or in a parent]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Azure Resource Manager endpoint
    #[arg(long, value_name = "URL", env = "ENVBUILD_ARM_ENDPOINT", default_value = azureml::DEFAULT_ENDPOINT)]
    pub arm_endpoint: String,
    /// Microsoft.MachineLearningServices api-version
    #[arg(long, value_name = "VERSION", env = "ENVBUILD_AZUREML_API_VERSION", default_value = azureml::DEFAULT_API_VERSION)]
    pub api_version: String,
    /// PEM bundle of extra CA certificates for ARM and Entra ID
    #[arg(long, value_name = "FILE", env = "ENVBUILD_CA_FILE")]
    pub azure_ca_file: Option<PathBuf>,
    /// Artifact-store endpoint that serves job logs (ExperimentRun/dcid.ID/user_logs/std_log.txt)
    #[arg(long, value_name = "URL", env = "ENVBUILD_AZUREML_LOGS_ENDPOINT")]
    pub logs_endpoint: Option<String>,
    /// Backoff before the first retry of a failed ARM request, in milliseconds
    #[arg(
        long,
        value_name = "MS",
        env = "ENVBUILD_AZURE_RETRY_MS",
        default_value_t = 500,
        hide = true
    )]
    pub retry_ms: u64,
}

impl WorkspaceArgs {
    /// The workspace (flags, environment, config.json) and an ARM client for it, with tokens
    /// from the credential chain (workload identity or client secret, managed identity,
    /// developer tools).
    pub fn client(&self) -> anyhow::Result<azureml::Client> {
        let cwd = std::env::current_dir().context("current directory")?;
        let config = self
            .config
            .clone()
            .or_else(|| azureml::workspace::find_config(&cwd));
        let workspace = azureml::workspace::resolve(
            azureml::workspace::Partial {
                subscription_id: self.subscription.clone(),
                resource_group: self.resource_group.clone(),
                workspace_name: self.workspace.clone(),
            },
            azureml::workspace::from_env(|k| std::env::var(k).ok()),
            config.as_deref(),
        )?;
        let tokens = ChainTokens(EntraChain::from_env(self.azure_ca_file.as_deref())?);
        Ok(azureml::Client::new(
            workspace,
            self.settings()?,
            Box::new(tokens),
        )?)
    }

    /// ARM settings: endpoint (https only), api-version, CA bundle, retries.
    pub fn settings(&self) -> anyhow::Result<azureml::Settings> {
        anyhow::ensure!(
            self.arm_endpoint.starts_with("https://"),
            "ARM endpoint {} is not https:// (tokens are only sent over TLS)",
            self.arm_endpoint
        );
        Ok(azureml::Settings {
            endpoint: self.arm_endpoint.trim_end_matches('/').to_owned(),
            api_version: self.api_version.clone(),
            ca_file: self.azure_ca_file.clone(),
            retry: RetryPolicy {
                attempts: 5,
                base: Duration::from_millis(self.retry_ms),
            },
        })
    }
}

/// ARM tokens from the Entra ID credential chain.
struct ChainTokens(EntraChain);

impl azureml::TokenSource for ChainTokens {
    fn token(&self, scope: &str) -> Result<Secret, EntraError> {
        self.0.token(scope).map(|t| t.secret)
    }
}

/// Poll pacing of anything followed until it ends (a job, a long-running operation).
#[derive(Debug, Clone, Args)]
pub struct PollArgs {
    /// First poll interval in milliseconds (grows by half each poll)
    #[arg(
        long,
        value_name = "MS",
        env = "ENVBUILD_AZURE_POLL_MIN_MS",
        default_value_t = 2000,
        hide = true
    )]
    pub poll_min_ms: u64,
    /// Longest poll interval in milliseconds
    #[arg(
        long,
        value_name = "MS",
        env = "ENVBUILD_AZURE_POLL_MAX_MS",
        default_value_t = 60000,
        hide = true
    )]
    pub poll_max_ms: u64,
}

impl PollArgs {
    /// The first and the longest interval (at least 1 ms; the longest never below the first).
    pub fn bounds(&self) -> (Duration, Duration) {
        let min = self.poll_min_ms.max(1);
        (
            Duration::from_millis(min),
            Duration::from_millis(self.poll_max_ms.max(min)),
        )
    }
}

/// Poll pacing of a followed job, and how much log to show when it fails.
#[derive(Debug, Clone, Args)]
pub struct FollowArgs {
    #[command(flatten)]
    pub poll: PollArgs,
    /// Lines of the job's log to show when it fails
    #[arg(long, value_name = "N", default_value_t = 40)]
    pub log_lines: usize,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// An environment file (built, and loaded into the engine when it is not there), an image
    /// `build` wrote (oci:DIR, docker-archive:FILE; loaded when not there), or an image reference
    /// REGISTRY/REPOSITORY@sha256:… or :TAG (pulled by digest when not there)
    pub source: String,
    /// Run on this machine's Docker engine (DOCKER_HOST or the default socket)
    #[arg(long, conflicts_with = "azure")]
    pub local: bool,
    /// Run as an Azure ML command job in the workspace (see the Azure options below)
    #[arg(long)]
    pub azure: bool,
    /// Host directory with the data set, mounted read-only at /data (not with --code: use --input)
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/usr/share/datasets/fashion-mnist"
    )]
    pub data: PathBuf,
    /// Host directory for checkpoints, metrics and the model, mounted read-write at /outputs
    /// (with --code, each --output NAME is DIR/NAME)
    #[arg(long, value_name = "DIR", default_value = "outputs")]
    pub outputs: PathBuf,
    /// Environment variable for the trainer (both modes): KEY=VALUE, or KEY to pass this shell's value; repeatable
    #[arg(long = "env", short = 'e', value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Size of /dev/shm (e.g. 2g; Azure ML's default is 2g); with --azure, resources.shmSize
    #[arg(long, value_name = "SIZE", default_value = "2g", value_parser = parse_size)]
    pub shm_size: i64,
    /// Memory limit (e.g. 16g) [default: none]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<i64>,
    /// GPUs: auto (all, when the engine has the nvidia runtime), all, a count, or none
    #[arg(long, value_name = "WHICH", default_value = "auto")]
    pub gpus: Gpus,
    /// UID:GID the trainer runs as [default: yours, so the outputs belong to you]
    #[arg(long, value_name = "UID:GID")]
    pub user: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when the run is interrupted
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub stop_timeout: u32,
    /// Keep the container after it exits (it is removed by default)
    #[arg(long)]
    pub keep: bool,
    /// Run your own command (after `--`) in DIR's snapshot: DIR's files minus its .amlignore
    /// (else .gitignore) rules, read-only at /mnt/azureml/code, the working directory
    #[arg(long, value_name = "DIR")]
    pub code: Option<PathBuf>,
    /// An input: NAME=DIR or NAME=FILE (read-only at /mnt/azureml/inputs/NAME), NAME=URI
    /// (azureml://, https://; --azure), or NAME=VALUE (a literal); the command names it
    /// ${{inputs.NAME}}; repeatable. Without --code, --azure's `data` is the trainer's --data
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_input_arg)]
    pub input: Vec<String>,
    /// An output: read-write at /mnt/azureml/outputs/NAME (--local: --outputs DIR/NAME), named
    /// ${{outputs.NAME}} in the command; repeatable [default without --code: model, the
    /// trainer's --output]
    #[arg(long, value_name = "NAME")]
    pub output: Vec<String>,
    /// Data-parallel ranks (--local): N containers on one engine network, each given the
    /// variables Azure ML sets (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK,
    /// NODE_RANK) and its share of the cores; rank R takes GPU R
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub ranks: u16,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    #[command(flatten, next_help_heading = "Azure ML (--azure)")]
    pub azure_args: AzureRunArgs,
    #[command(flatten, next_help_heading = "Azure ML workspace (--azure)")]
    pub ws: WorkspaceArgs,
    /// After `--`: the trainer's arguments (e.g. -- --epochs 1 --resume); with --code, the
    /// command (e.g. -- python train.py --data ${{inputs.data}})
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

impl RunArgs {
    /// The outputs: those given; without any and without --code, `model` (the trainer's).
    pub fn outputs(&self) -> Vec<String> {
        if self.output.is_empty() && self.code.is_none() {
            vec!["model".to_owned()]
        } else {
            self.output.clone()
        }
    }

    /// The inputs, each value told apart (folder, file, URI, literal; a path that is not there
    /// is an error naming it).
    pub fn inputs(&self) -> anyhow::Result<Vec<(String, envbuild::jobio::InputValue)>> {
        Ok(self
            .input
            .iter()
            .map(|a| envbuild::jobio::parse_input(a))
            .collect::<Result<_, _>>()?)
    }
}

/// `--input NAME=VALUE`, its shape only: paths are looked at by [`RunArgs::inputs`], whose errors
/// carry their hints.
fn parse_input_arg(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

/// `envbuild run --azure`: the command job's settings.
#[derive(Debug, Clone, Args)]
pub struct AzureRunArgs {
    // With --json (run --azure only): {id, status, studio[, detached]}
    #[command(flatten)]
    pub format: FormatArgs,
    /// Compute cluster name [default: serverless, with --instance-type]
    #[arg(long, value_name = "NAME")]
    pub compute: Option<String>,
    /// Experiment name [default: the environment name]
    #[arg(long, value_name = "NAME")]
    pub experiment: Option<String>,
    /// Display name in Azure ML studio
    #[arg(long, value_name = "TEXT")]
    pub display_name: Option<String>,
    /// Job name (unique in the workspace) [default: ENV-TIME-XXXX]
    #[arg(long, value_name = "NAME")]
    pub job_name: Option<String>,
    /// Environment variables for the job (from `envbuild run --env`)
    #[arg(skip)]
    pub env_vars: Vec<(String, String)>,
    /// Stop the job after this long (2h, 90m, PT2H …), so a forgotten GPU job does not run up costs
    #[arg(long, value_name = "DURATION", default_value = "2h")]
    pub timeout: String,
    /// VM size (e.g. Standard_NC24ads_A100_v4)
    #[arg(long, value_name = "SIZE")]
    pub instance_type: Option<String>,
    /// Nodes (resources.instanceCount); above 1 the job is data-parallel: a PyTorch
    /// distribution with --processes-per-instance processes on each
    #[arg(long = "instances", visible_alias = "instance-count", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub instance_count: u32,
    /// Processes per node of the PyTorch distribution (one per GPU, typically) [default: 1
    /// with --instances above 1]; the service sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE,
    /// NODE_RANK, RANK and LOCAL_RANK for each
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub processes_per_instance: Option<u32>,
    /// Environment name, when the source is an image reference
    #[arg(long, value_name = "NAME")]
    pub environment_name: Option<String>,
    /// Job tier (queueSettings.jobTier): Spot (cheapest, may be preempted), Basic, Standard, Premium
    #[arg(long, value_name = "TIER", value_parser = clap::value_parser!(azureml::options::Tier))]
    pub tier: Option<azureml::options::Tier>,
    /// Identity the job's code uses for data access: aml (the default), managed (the compute's),
    /// user-identity (yours)
    #[arg(long, value_name = "KIND", value_parser = ["aml", "managed", "user-identity"])]
    pub identity: Option<String>,
    /// Client id of a user-assigned managed identity (with --identity managed)
    #[arg(long, value_name = "ID", requires = "identity")]
    pub identity_client_id: Option<String>,
    /// Email Azure ML notifies when the job ends; repeatable
    #[arg(long, value_name = "ADDRESS")]
    pub notify_email: Vec<String>,
    /// When to email: any of completed, failed, canceled, comma-separated [default: all three]
    #[arg(long, value_name = "WHEN", requires = "notify_email")]
    pub notify_on: Option<String>,
    /// Submit and return without following the job
    #[arg(long, alias = "no-wait")]
    pub detach: bool,
    #[command(flatten)]
    pub follow: FollowArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_endless_password_on_stdin_is_refused() {
        assert_eq!(password_from(&b"s3cret\n"[..]).unwrap().expose(), "s3cret");
        for empty in [&b""[..], b"\n", b"\r\n"] {
            let e = password_from(empty).unwrap_err().to_string();
            assert!(e.contains("--password-stdin") && e.contains("empty"), "{e}");
        }
        let e = password_from(std::io::repeat(b'x'))
            .unwrap_err()
            .to_string();
        assert!(e.contains("64 KiB"), "{e}");
    }
}
