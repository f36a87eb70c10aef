use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};
use console::style;

mod cli;

fn main() -> ExitCode {
    // `--color` is read first, so that clap's own help and usage errors follow it too.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let when = cli::ui::color_flag(&args);
    let color = match when {
        cli::ui::ColorWhen::Always => clap::ColorChoice::Always,
        cli::ui::ColorWhen::Never => clap::ColorChoice::Never,
        cli::ui::ColorWhen::Auto if cli::ui::colour_on(when, true) => clap::ColorChoice::Auto,
        cli::ui::ColorWhen::Auto => clap::ColorChoice::Never,
    };
    let parsed = cli::Cli::command()
        .color(color)
        .try_get_matches_from(&args)
        .and_then(|m| cli::Cli::from_arg_matches(&m));
    let parsed = match parsed {
        Ok(c) => c,
        Err(e) => e.with_cmd(&cli::Cli::command().color(color)).exit(),
    };
    match cli::run(parsed) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "envbuild: {} {}",
                style("error:").red().bold().for_stderr(),
                colour_hints(&message(&e))
            );
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

/// `hint:` at the start of a line, in colour when colour is on.
fn colour_hints(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("hint:") {
            Some(rest) => format!("{}{rest}", style("hint:").cyan().bold().for_stderr()),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
