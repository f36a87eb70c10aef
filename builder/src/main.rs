use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("envbuild: error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, then what to do next (`hint:` lines): hints of the
/// library's errors along the chain and of the CLI's own ([`envbuild::error::Hinted`], which
/// anyhow keeps as context).
fn message(e: &anyhow::Error) -> String {
    let own = e
        .downcast_ref::<envbuild::error::Hinted>()
        .map(|h| h.hint.to_string());
    envbuild::error::report(e.chain(), envbuild::hint_of, own)
}
