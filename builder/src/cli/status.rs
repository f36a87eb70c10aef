//! `envbuild status`: one screen with the workspace's jobs that have not ended and the computes
//! that bill now, with their hourly cost — the forgotten-instance check in one command.

use std::process::ExitCode;

use clap::Args;

use envbuild::azureml::status;

use super::args::{print_json, FormatArgs, WorkspaceArgs};
use super::ui::{table, ui};

#[derive(Debug, Args)]
pub struct StatusArgs {
    // With --json: {jobs: [{name, status, type, compute, created}], billing: [{name, type, …,
    // vms, price, per_hour}], unknown: [NAME], prices_note}
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = a.ws.client()?;
    let s = status::status(&client)?;
    if let Some(note) = &s.prices_note {
        ui().message(&format!("warning: prices unknown: {note}"));
    }
    if a.format.json() {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    let unknown = || "unknown".to_owned();
    println!("workspace {}", client.workspace.name);
    if s.jobs.is_empty() {
        println!("\njobs: none running or queued");
    } else {
        println!("\njobs ({} not ended):", s.jobs.len());
        let mut rows = vec![["NAME", "STATUS", "TYPE", "COMPUTE", "CREATED"]
            .map(str::to_owned)
            .to_vec()];
        rows.extend(s.jobs.iter().map(|j| {
            vec![
                j.name.clone(),
                j.status.clone(),
                j.kind.clone(),
                j.compute.clone().unwrap_or_else(|| "serverless".into()),
                j.created.clone().unwrap_or_else(|| "-".into()),
            ]
        }));
        print!("{}", table(&rows));
    }
    if s.billing.is_empty() {
        println!("\nbilling now: nothing");
    } else {
        println!("\nbilling now:");
        let mut rows = vec![[
            "NAME", "TYPE", "VM SIZE", "STATE", "VMS", "PRICE/VM", "COST/H",
        ]
        .map(str::to_owned)
        .to_vec()];
        rows.extend(s.billing.iter().map(|b| {
            vec![
                b.compute.name.clone(),
                b.compute.kind.clone(),
                b.compute.vm_size.clone().unwrap_or_else(|| "-".into()),
                b.compute.state.clone(),
                b.vms.to_string(),
                b.price.as_ref().map_or_else(unknown, ToString::to_string),
                b.per_hour
                    .as_ref()
                    .map_or_else(unknown, ToString::to_string),
            ]
        }));
        print!("{}", table(&rows));
        let (sum, some_unknown) = s.total();
        let total = match (sum, some_unknown) {
            (Some(p), false) => p.to_string(),
            (Some(p), true) => format!("{p} + unknown"),
            (None, _) => unknown(),
        };
        println!("total: {total}");
    }
    if !s.unknown.is_empty() {
        println!(
            "\nnot billed through Azure ML or state unknown: {}",
            s.unknown.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
