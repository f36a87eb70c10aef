//! `envbuild push` and `login`: images and credentials to and from registries.

use std::process::ExitCode;

use clap::Args;

use envbuild::auth::docker_config::{self, Stored};
use envbuild::auth::{self, Credentials};
use envbuild::registry::{Client, Reference};

use super::args::{
    print_json, CredentialArgs, FormatArgs, PublishArgs, TransferArgs, TransportArgs,
};

#[derive(Debug, Args)]
pub struct PushArgs {
    /// An environment file (built first, with the cache) or oci:DIR
    pub source: String,
    /// REGISTRY/REPOSITORY[:TAG]
    pub dest: String,
    #[command(flatten)]
    pub publish: PublishArgs,
    // With --json: {reference, uploaded, skipped, mounted, bytes, seconds}
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// REGISTRY/REPOSITORY[:TAG|@sha256:…]
    pub source: String,
    /// Also write the image as an OCI layout: oci:DIR (else it stays in the cache)
    #[arg(long, value_name = "oci:DIR", value_parser = parse_layout)]
    pub output: Option<std::path::PathBuf>,
    /// The platform to take from an index
    #[arg(long, value_name = "OS/ARCH", default_value = "linux/amd64")]
    pub platform: String,
    #[command(flatten)]
    pub publish: PublishArgs,
    // With --json: {reference, platform, layers, bytes, downloaded, seconds, output}
    #[command(flatten)]
    pub format: FormatArgs,
}

fn parse_layout(s: &str) -> Result<std::path::PathBuf, String> {
    match s.strip_prefix("oci:") {
        Some(d) if !d.is_empty() => Ok(d.into()),
        _ => Err(format!("`{s}` is not oci:DIR")),
    }
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry host, e.g. myacr.azurecr.io
    pub registry: String,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
}

pub fn push(a: PushArgs) -> anyhow::Result<ExitCode> {
    let report = a.publish.push(&a.source, &a.dest)?;
    if a.format.json() {
        print_json(&report)?;
    } else {
        println!("{}", report.reference);
    }
    Ok(ExitCode::SUCCESS)
}

/// `envbuild pull`: an image into the cache (layers in parallel, each verified as it streams)
/// and, with `--output oci:DIR`, out as an OCI layout.
pub fn pull(a: PullArgs) -> anyhow::Result<ExitCode> {
    let r: Reference = a.source.parse()?;
    let (os, arch) = a
        .platform
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--platform `{}` is not OS/ARCH", a.platform))?;
    let reg = &a.publish.registry;
    let report = envbuild::publish::pull_source(
        &r,
        reg.credentials.resolve(&r.registry)?,
        &a.publish.cache.open()?,
        &reg.transport.registry(&reg.transfer),
        (os, arch),
        a.output.as_deref(),
        &mut super::Stderr,
    )?;
    if a.format.json() {
        print_json(&report)?;
    } else {
        super::ui::ui().message(&format!(
            "pulled {} layers, {:.1} MB of {:.1} MB fetched in {:.1}s",
            report.layers,
            report.downloaded as f64 / 1e6,
            report.bytes as f64 / 1e6,
            report.seconds
        ));
        println!("{}", report.reference);
    }
    Ok(ExitCode::SUCCESS)
}

/// `envbuild login REGISTRY`: checks the credentials against the registry (for Entra, the
/// token exchange gives an ACR refresh token), then stores them as `docker login` does.
pub fn login(a: LoginArgs) -> anyhow::Result<ExitCode> {
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
    let creds = auth::for_login(&a.credentials.given()?, host)?;
    let Some(creds) = creds else {
        anyhow::bail!("no credentials for {host}: give --username and --password-stdin, or --auth entra for Microsoft Entra ID");
    };
    let settings = a.transport.registry(&TransferArgs {
        parallel: 1,
        chunk_mib: None,
    });
    let client = Client::new(&Reference::registry_only(host), Some(creds), &settings)?;
    let Some(store) = client.login()? else {
        anyhow::bail!("{host}: the registry accepted the request without asking for credentials; nothing to store");
    };
    let entra = matches!(store, Credentials::IdentityToken(_));
    match docker_config::store(host, &store)? {
        Stored::File(p) => super::ui::ui().message(&format!(
            "stored {} for {host} in {}",
            if entra {
                "an identity token"
            } else {
                "the password"
            },
            p.display()
        )),
        Stored::Helper(h) => super::ui::ui().message(&format!(
            "stored the credentials for {host} with docker-credential-{h}"
        )),
    }
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}
