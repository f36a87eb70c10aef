//! `envbuild compute`: list and show the workspace's computes with what they cost, start and
//! stop compute instances (following the operation to its end), set their idle shutdown —
//! one small function each over `envbuild::azureml::{compute, power}`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use envbuild::azureml::compute::{self, Billing, Compute};
use envbuild::azureml::job::Poll;
use envbuild::azureml::power::{self, Action};
use envbuild::azureml::vmsize::VmSizes;

use super::args::{print_json, FormatArgs, PollArgs, WorkspaceArgs};
use super::ui::{table, ui};

#[derive(Debug, Subcommand)]
pub enum ComputeCommand {
    /// The workspace's computes: type, VM size, state, nodes, idle shutdown, whether each bills
    /// now, GPUs and hourly price (from the location's VM sizes; "unknown" when not given)
    List(ListArgs),
    /// One compute, and a cluster's nodes with the run each holds
    Show(ComputeArgs),
    /// Start a compute instance and wait until it runs
    Start(PowerArgs),
    /// Stop a compute instance and wait until it is stopped (a stopped instance does not bill)
    Stop(PowerArgs),
    /// Stop a compute instance after this long without activity (15 minutes to 3 days)
    IdleShutdown(IdleArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    // With --json: [{name, type, vm_size, state, nodes, idle, vm_priority, bills, vms, gpus, price}]
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

#[derive(Debug, Args)]
pub struct ComputeArgs {
    /// Compute name
    pub name: String,
    // With --json: list's document for it, plus node_states: [{id, state, run}]
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

#[derive(Debug, Args)]
pub struct PowerArgs {
    /// Compute instance name
    pub name: String,
    #[command(flatten)]
    pub poll: PollArgs,
    // With --json: list's document for the instance as it ends
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    /// Compute instance name
    pub name: String,
    /// Idle time before shutdown: 30m, 2h, 1h30m or ISO 8601 (PT45M); 15 minutes to 3 days
    pub idle: String,
    // With --json: {name, idle_time_before_shutdown}
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

/// One compute's document for --json.
fn doc(c: &Compute, sizes: &VmSizes) -> serde_json::Value {
    let mut d = serde_json::to_value(c).unwrap_or_default();
    let (bills, vms) = match c.billing() {
        Billing::Yes(n) => (json!(true), n),
        Billing::No => (json!(false), 0),
        Billing::Unknown => (json!(null), 0),
    };
    d["bills"] = bills;
    d["vms"] = json!(vms);
    d["gpus"] = json!(c.gpus(sizes));
    d["price"] = json!(c.price(sizes));
    d
}

/// The table's cells for one compute.
fn row(c: &Compute, sizes: &VmSizes) -> Vec<String> {
    let nodes = c
        .nodes
        .map_or("-".into(), |n| format!("{}/{}/{}", n.current, n.min, n.max));
    let idle = match (&c.idle, c.nodes.is_some()) {
        (Some(i), true) => format!("scale-down {}", power::human(i)),
        (Some(i), false) => power::human(i),
        (None, false) if c.is_instance() => "none".into(),
        (None, _) => "-".into(),
    };
    let bills = match c.billing() {
        Billing::Yes(1) => "yes".into(),
        Billing::Yes(n) => format!("yes ({n} VMs)"),
        Billing::No => "no".into(),
        Billing::Unknown => "unknown".into(),
    };
    let unknown = || "unknown".to_owned();
    vec![
        c.name.clone(),
        c.kind.clone(),
        c.vm_size.clone().unwrap_or_else(|| "-".into()),
        c.state.clone(),
        nodes,
        idle,
        bills,
        c.gpus(sizes).map_or_else(unknown, |g| g.to_string()),
        c.price(sizes).map_or_else(unknown, |p| p.to_string()),
    ]
}

const HEADER: [&str; 9] = [
    "NAME",
    "TYPE",
    "VM SIZE",
    "STATE",
    "NODES",
    "IDLE SHUTDOWN",
    "BILLS NOW",
    "GPUS",
    "PRICE/VM",
];

/// The location's sizes, or none with a note on stderr (prices then read "unknown").
fn sizes(client: &envbuild::azureml::Client) -> VmSizes {
    compute::sizes(client).unwrap_or_else(|e| {
        ui().message(&format!(
            "warning: no VM sizes and prices for the workspace's location: {e}"
        ));
        VmSizes::default()
    })
}

pub fn compute(c: ComputeCommand) -> anyhow::Result<ExitCode> {
    match c {
        ComputeCommand::List(a) => list(a),
        ComputeCommand::Show(a) => show(a),
        ComputeCommand::Start(a) => power(a, Action::Start),
        ComputeCommand::Stop(a) => power(a, Action::Stop),
        ComputeCommand::IdleShutdown(a) => idle_shutdown(a),
    }
}

fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let client = a.ws.client()?;
    let all = compute::list(&client)?;
    let sizes = sizes(&client);
    if a.format.json() {
        print_json(&all.iter().map(|c| doc(c, &sizes)).collect::<Vec<_>>())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![HEADER.map(str::to_owned).to_vec()];
    rows.extend(all.iter().map(|c| row(c, &sizes)));
    print!("{}", table(&rows));
    if all.is_empty() {
        ui().message(&format!(
            "no computes in workspace {}",
            client.workspace.name
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn show(a: ComputeArgs) -> anyhow::Result<ExitCode> {
    let client = a.ws.client()?;
    let c = compute::get(&client, &a.name)?;
    let sizes = sizes(&client);
    let nodes = if c.nodes.is_some() {
        compute::nodes(&client, &c.name)?
    } else {
        Vec::new()
    };
    if a.format.json() {
        let mut d = doc(&c, &sizes);
        d["node_states"] = json!(nodes);
        print_json(&d)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (k, v) in HEADER.iter().zip(row(&c, &sizes)) {
        println!("{:<14} {v}", format!("{}:", k.to_lowercase()));
    }
    if c.nodes.is_some() {
        let mut rows = vec![vec!["NODE".to_owned(), "STATE".into(), "RUN".into()]];
        rows.extend(nodes.iter().map(|n| {
            vec![
                n.id.clone(),
                n.state.clone(),
                n.run.clone().unwrap_or_else(|| "-".into()),
            ]
        }));
        println!();
        print!("{}", table(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

fn power(a: PowerArgs, action: Action) -> anyhow::Result<ExitCode> {
    let client = a.ws.client()?;
    let (min, max) = a.poll.bounds();
    let poll = Poll { min, max };
    let wait = ui().spinner(&format!("{} {}", action.verb(), a.name));
    let name = a.name.clone();
    let end = power::power(&client, &a.name, action, poll, &mut |s| {
        ui().message(&format!("{} {name}: {s}", action.verb()));
        wait.note(s);
    });
    wait.finish("");
    let c = end?;
    ui().message(&format!("compute instance {} is {}", c.name, c.state));
    if a.format.json() {
        print_json(&doc(&c, &sizes(&client)))?;
    } else {
        println!("{}", c.state);
    }
    Ok(ExitCode::SUCCESS)
}

fn idle_shutdown(a: IdleArgs) -> anyhow::Result<ExitCode> {
    // The duration is checked before any request.
    let iso = power::parse_idle(&a.idle)?;
    let client = a.ws.client()?;
    power::set_idle_shutdown(&client, &a.name, &iso)?;
    ui().message(&format!(
        "compute instance {} stops after {} without activity",
        a.name,
        power::human(&iso)
    ));
    if a.format.json() {
        print_json(&json!({"name": a.name, "idle_time_before_shutdown": iso}))?;
    } else {
        println!("{iso}");
    }
    Ok(ExitCode::SUCCESS)
}
