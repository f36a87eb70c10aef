//! The `envbuild` command line: clap structs in one place, one small function per command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Build an environment file into a reproducible OCI image, without a Docker daemon (coming: issue #3)
    Build,
    /// Show an image's layers, config and annotations (coming: issue #3)
    Inspect,
    /// Explain why two images' digests differ (coming: issue #3)
    Diff,
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

impl Command {
    fn issue(&self) -> u32 {
        match self {
            Command::Build | Command::Inspect | Command::Diff => 3,
            Command::Push | Command::Login => 4,
            Command::Run => 5,
            Command::Register | Command::Deploy => 6,
        }
    }
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let issue = cli.command.issue();
    anyhow::bail!(
        "`{:?}` is not available yet; it is planned in issue #{issue}",
        cli.command
    )
}
