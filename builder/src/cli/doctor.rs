//! `envbuild doctor`: the library's checks ([`envbuild::doctor`]), one line each, the fix under
//! each problem; `--json` for the same as one document. Exit 1 when a check failed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use envbuild::doctor::{self, Status};

use super::args::{print_json, CacheArgs, FormatArgs};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub cache: CacheArgs,
    /// The project venv whose libtorch to check [default: $VIRTUAL_ENV, else ./.venv]
    #[arg(long, value_name = "DIR")]
    pub venv: Option<PathBuf>,
    // With --json: [{name, status, detail, fix}]
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn doctor(a: DoctorArgs) -> anyhow::Result<ExitCode> {
    let venv = a
        .venv
        .or_else(|| std::env::var_os("VIRTUAL_ENV").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".venv"));
    let checks = doctor::run(&venv, &a.cache.root());
    if a.format.json() {
        print_json(&checks)?;
    } else {
        for c in &checks {
            let status = match c.status {
                Status::Ok => "ok  ",
                Status::Note => "note",
                Status::Fail => "FAIL",
            };
            println!("{status}  {:<21} {}", c.name, c.detail);
            if let Some(f) = &c.fix {
                println!("      {:<21} fix: {f}", "");
            }
        }
    }
    Ok(if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
