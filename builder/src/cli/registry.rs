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
