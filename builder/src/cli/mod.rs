//! The `envbuild` command line: the flag groups in [`args`], one file per command family, each
//! command a short function (flags → settings → one library call → print). Command files never
//! import each other; what they share is here or in `args`.

pub mod args;
mod azure;
mod build;
mod cache;
mod compute;
mod doctor;
mod registry;
mod run;
mod sbom;
mod shell;
mod status;
mod sweep;
pub mod ui;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Reproducible, daemonless CUDA trainer images for Azure ML: build, push, register, run.
#[derive(Debug, Parser)]
#[command(
    name = "envbuild",
    version,
    about,
    propagate_version = true,
    after_help = EXIT_STATUS,
    after_long_help = EXIT_STATUS
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: ui::GlobalArgs,
}

/// The exit statuses, as `--help` documents them.
const EXIT_STATUS: &str =
    "Exit status: 0 success; 1 failure (one error on stderr, then a hint where one helps); \
2 usage error (a bad flag or value); 130 interrupted by Ctrl-C, 143 by SIGTERM; `run --local` \
exits with the trainer's own status (128 + N when a signal N ended it).";

/// What envbuild does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an environment file into a reproducible OCI image, without a Docker daemon
    Build(build::BuildArgs),
    /// Show an image's layers, config and annotations
    Inspect(build::InspectArgs),
    /// Explain why two images' digests differ: which layer, which file, which field
    Diff(build::DiffArgs),
    /// Push an image (an environment file, built first, or oci:DIR) to a registry
    Push(registry::PushArgs),
    /// Pull an image from a registry into the cache, and out as an OCI layout with --output oci:DIR
    Pull(registry::PullArgs),
    /// Check registry credentials and store them the way `docker login` does
    Login(registry::LoginArgs),
    /// Run the image on the local Docker engine (--local) or as an Azure ML command job (--azure)
    Run(Box<args::RunArgs>),
    /// Print (or write) the SBOM or provenance attached to an image: oci:DIR, a registry reference, an environment file
    Sbom(sbom::SbomArgs),
    /// Register the pushed image as an Azure ML environment version
    Register(azure::RegisterArgs),
    /// Build, push and register in one idempotent step; prints the environment version's ARM id
    Deploy(azure::DeployArgs),
    /// Follow or cancel Azure ML jobs
    #[command(subcommand)]
    Job(azure::JobCommand),
    /// The workspace's computes and what they cost; start, stop and idle shutdown of instances
    #[command(subcommand)]
    Compute(compute::ComputeCommand),
    /// Jobs not ended and computes billing now in the workspace, with their hourly cost
    Status(status::StatusArgs),
    /// Search the trainer's hyperparameters with an Azure ML sweep job, trial by trial
    Sweep(Box<sweep::SweepArgs>),
    /// Register Azure ML models from job outputs
    #[command(subcommand)]
    Model(azure::ModelCommand),
    /// What this machine can do: engine, GPUs and driver, libtorch, credentials, Azure ML, cache
    Doctor(doctor::DoctorArgs),
    /// Manage the build cache (blobs, layers, file digests)
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish)
    Completions(shell::CompletionsArgs),
    /// Print the man page (or write every command's page with --dir)
    Man(shell::ManArgs),
}

pub use ui::Stderr;

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // azure_core's reqwest has no rustls provider of its own: it takes the process's.
    envbuild::auth::entra::install_crypto_provider();
    ui::init(&cli.global);
    match cli.command {
        Command::Build(a) => build::build(a),
        Command::Inspect(a) => build::inspect(a),
        Command::Diff(a) => build::diff(a),
        Command::Push(a) => registry::push(a),
        Command::Pull(a) => registry::pull(a),
        Command::Login(a) => registry::login(a),
        Command::Run(a) if a.azure => azure::run(*a),
        Command::Run(a) => run::local(*a),
        Command::Sbom(a) => sbom::sbom(a),
        Command::Register(a) => azure::register(a),
        Command::Deploy(a) => azure::deploy(a),
        Command::Job(a) => azure::job(a),
        Command::Model(a) => azure::model(a),
        Command::Compute(c) => compute::compute(c),
        Command::Status(a) => status::status(a),
        Command::Sweep(a) => sweep::sweep(*a),
        Command::Doctor(a) => doctor::doctor(a),
        Command::Cache(c) => cache::cache(c),
        Command::Completions(a) => shell::completions(a),
        Command::Man(a) => shell::man(a),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::{Cli, Command};

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command's `--help`, as a snapshot (`cargo insta review` after a deliberate
    /// change): a flag renamed, dropped or reworded shows in review, not in a user's script.
    #[test]
    fn help_of_every_command_is_as_recorded() {
        fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
            let mut c = cmd
                .clone()
                .term_width(100)
                .max_term_width(100)
                // The values of environment variables of the machine running the test.
                .mut_args(|a| a.hide_env_values(true));
            out.push((path.to_owned(), c.render_long_help().to_string()));
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &format!("{path}-{}", sub.get_name()), out);
                }
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut all = Vec::new();
        walk(&cmd, "envbuild", &mut all);
        assert!(all.len() > 15, "{}", all.len());
        for (name, help) in all {
            insta::assert_snapshot!(name, help);
        }
    }

    #[test]
    fn run_azure_arguments_parse() {
        let cli = Cli::try_parse_from([
            "envbuild",
            "run",
            "--azure",
            "environments/mnist-cpu.toml",
            "--compute",
            "gpu",
            "--input",
            "data=azureml://datastores/workspaceblobstore/paths/mnist",
            "--env",
            "A=1",
            "--timeout",
            "30m",
            "--",
            "--epochs",
            "3",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert!(r.azure);
        assert_eq!(r.azure_args.compute.as_deref(), Some("gpu"));
        assert_eq!(
            r.input,
            vec!["data=azureml://datastores/workspaceblobstore/paths/mnist"]
        );
        assert_eq!(r.env, vec!["A=1"]);
        assert_eq!(r.args, vec!["--epochs", "3"]);
        let both = Cli::try_parse_from(["envbuild", "run", "--azure", "--local", "e"]);
        assert!(both
            .unwrap_err()
            .to_string()
            .contains("cannot be used with"));
        assert_eq!(r.outputs(), vec!["model"]);
        let bad = Cli::try_parse_from(["envbuild", "run", "--azure", "e", "--input", "novalue"]);
        assert!(bad.unwrap_err().to_string().contains("is not NAME=VALUE"));
    }

    #[test]
    fn run_code_arguments_parse() {
        let cli = Cli::try_parse_from([
            "envbuild",
            "run",
            "--local",
            "environments/python-cpu.toml",
            "--code",
            "src",
            "--input",
            "lr=0.01",
            "--output",
            "model",
            "--output",
            "logs",
            "--",
            "python",
            "train.py",
            "--lr",
            "${{inputs.lr}}",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.code.as_deref(), Some(std::path::Path::new("src")));
        assert_eq!(r.outputs(), vec!["model", "logs"]);
        assert_eq!(
            r.inputs().unwrap(),
            vec![(
                "lr".to_owned(),
                envbuild::jobio::InputValue::Literal("0.01".into())
            )]
        );
        assert_eq!(r.args, vec!["python", "train.py", "--lr", "${{inputs.lr}}"]);
        // With --code and no --output there is none: `model` is the trainer's.
        let cli =
            Cli::try_parse_from(["envbuild", "run", "--local", "e", "--code", "src"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert!(r.outputs().is_empty());
        let missing = Cli::try_parse_from([
            "envbuild",
            "run",
            "--local",
            "e",
            "--input",
            "data=./surely/not/here",
        ])
        .unwrap();
        let Command::Run(r) = missing.command else {
            panic!("not run")
        };
        let e = r.inputs().unwrap_err().to_string();
        assert!(
            e.contains("./surely/not/here") && e.contains("does not exist"),
            "{e}"
        );
    }
}
