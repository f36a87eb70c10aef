use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cli_azure;

fn main() -> ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("envbuild: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
