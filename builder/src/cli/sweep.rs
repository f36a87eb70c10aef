//! `envbuild sweep`: a hyperparameter sweep of the trainer as an Azure ML sweep job — flags
//! checked into a `SweepJob` before any request, the compute and environment looked up, then
//! submitted (or written as `az ml job create` YAML) and followed trial by trial.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use envbuild::azureml::search_space::Param;
use envbuild::azureml::sweep::{self, EarlyTermination, Limits, Objective, Sampling, SweepJob};
use envbuild::azureml::trials::{self, Event};
use envbuild::azureml::{job, Client};

use super::args::azure::{client, detach_on_ctrl_c, environment_for_run};
use super::args::{
    env_pair, parse_kv, print_json, write_atomically, CacheArgs, FollowArgs, FormatArgs,
    TransportArgs, WorkspaceArgs,
};
use super::ui::ui;

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// An environment file (its version must be registered: `envbuild deploy`), an image
    /// reference with --environment-name, or azureml:NAME:VERSION
    pub source: String,
    /// Compute cluster that runs the trials (a sweep is not run on serverless compute here)
    #[arg(long, value_name = "NAME")]
    pub compute: String,
    /// A trainer flag to vary: FLAG=DISTRIBUTION(…), e.g. lr=loguniform(1e-4,1e-1) (the values'
    /// own range), batch-size=choice(64,128,256); also randint, uniform, quniform, qloguniform,
    /// normal, lognormal, qnormal, qlognormal; repeatable
    #[arg(long = "param", value_name = "FLAG=DIST", required = true)]
    pub params: Vec<String>,
    /// What to optimize: METRIC:maximize or METRIC:minimize (train_loss, test_loss,
    /// test_accuracy, images_per_second)
    #[arg(long, value_name = "METRIC:GOAL")]
    pub objective: String,
    /// How trials are drawn: random, grid (every combination; choice only) or bayesian
    #[arg(long, value_name = "ALGORITHM", default_value = "random")]
    pub sampling: String,
    /// Seed of random sampling
    #[arg(long, value_name = "N")]
    pub seed: Option<i32>,
    /// Trials in all [default: the grid's size with --sampling grid, else 20]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_trials: Option<u32>,
    /// Trials at once [default: 4, or --max-trials when fewer]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_concurrent: Option<u32>,
    /// Cancel poor trials early: bandit:slack_factor=0.1,evaluation_interval=1,delay_evaluation=2
    /// (or slack_amount=…), median_stopping:…, truncation_selection:truncation_percentage=20,…
    #[arg(long, value_name = "POLICY")]
    pub early_termination: Option<String>,
    /// Stop the whole sweep after this long (2h, 90m, PT2H …)
    #[arg(long, value_name = "DURATION", default_value = "2h")]
    pub timeout: String,
    /// Stop any one trial after this long
    #[arg(long, value_name = "DURATION")]
    pub trial_timeout: Option<String>,
    /// Write the `az ml job create -f` YAML of this sweep here and submit nothing
    #[arg(long, value_name = "FILE")]
    pub emit_yaml: Option<PathBuf>,
    /// A folder input: NAME=URI (azureml://datastores/…/paths/…); `data` becomes the trainer's --data
    #[arg(long, value_name = "NAME=URI", value_parser = parse_kv)]
    pub input: Vec<(String, String)>,
    /// Name of the output that receives each trial's model (the trainer's --output)
    #[arg(long, value_name = "NAME", default_value = "model")]
    pub output: String,
    /// Environment variable for every trial: KEY=VALUE, or KEY to pass this shell's value
    #[arg(long = "env", short = 'e', value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Experiment name [default: the environment name]
    #[arg(long, value_name = "NAME")]
    pub experiment: Option<String>,
    /// Display name in Azure ML studio
    #[arg(long, value_name = "TEXT")]
    pub display_name: Option<String>,
    /// Job name (unique in the workspace) [default: ENV-sweep-TIME-XXXX]
    #[arg(long, value_name = "NAME")]
    pub job_name: Option<String>,
    /// Environment name, when the source is an image reference
    #[arg(long, value_name = "NAME")]
    pub environment_name: Option<String>,
    /// Submit and return without following the sweep
    #[arg(long, alias = "no-wait")]
    pub detach: bool,
    #[command(flatten)]
    pub follow: FollowArgs,
    // With --json: {id, status, studio, best: {trial, params, metric}, trials: [{id, status, params, metric}]}
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    #[command(flatten, next_help_heading = "Azure ML workspace")]
    pub ws: WorkspaceArgs,
    /// Fixed trainer arguments, after `--` (e.g. -- --epochs 2)
    #[arg(last = true, value_name = "TRAINER ARGS")]
    pub args: Vec<String>,
}

/// Every flag checked into a sweep (environment still unknown) before any request.
fn checked(a: &SweepArgs) -> anyhow::Result<SweepJob> {
    let params = a
        .params
        .iter()
        .map(|p| Param::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let objective = Objective::parse(&a.objective)?;
    let sampling = Sampling::parse(&a.sampling, a.seed)?;
    let early_termination = a
        .early_termination
        .as_deref()
        .map(EarlyTermination::parse)
        .transpose()?;
    if sweep::is_serverless_name(&a.compute) {
        return Err(sweep::SweepError::ServerlessCompute(a.compute.clone()).into());
    }
    let inputs: BTreeMap<String, String> = a.input.iter().cloned().collect();
    let mut s = SweepJob {
        id: a.job_name.clone().unwrap_or_default(),
        compute_id: String::new(),
        display_name: a.display_name.clone(),
        experiment_name: a.experiment.clone().unwrap_or_default(),
        environment_id: String::new(),
        base_command: job::trainer_command(inputs.contains_key("data"), &a.output, &a.args),
        fixed_args: a.args.clone(),
        environment_variables: a
            .env
            .iter()
            .map(|kv| env_pair(kv))
            .collect::<Result<_, _>>()?,
        inputs,
        outputs: vec![a.output.clone()],
        params,
        sampling,
        objective,
        limits: Limits {
            max_total_trials: 0,
            max_concurrent_trials: 0,
            timeout: job::parse_timeout(&a.timeout)?,
            trial_timeout: a
                .trial_timeout
                .as_deref()
                .map(job::parse_timeout)
                .transpose()?,
        },
        early_termination,
        tags: BTreeMap::new(),
    };
    let grid = s.grid_size().map(|n| n.min(10_000) as u32);
    let total = a.max_trials.unwrap_or(match (sampling, grid) {
        (Sampling::Grid, Some(n)) => n,
        _ => 20,
    });
    s.limits.max_total_trials = total;
    s.limits.max_concurrent_trials = a.max_concurrent.unwrap_or(total.min(4));
    s.validate()?;
    Ok(s)
}

/// The compute's ARM id after the same cost check as `run --azure`: a cluster that keeps nodes
/// up or an instance without idle shutdown is a warning, a name the workspace lacks is one clear
/// error before any job request.
fn compute_id(client: &Client, name: &str) -> anyhow::Result<String> {
    for w in envbuild::azureml::compute::cost_warnings(client, name)? {
        ui().message(&format!("warning: {w}"));
    }
    Ok(format!("{}/computes/{name}", client.workspace.arm_id()))
}

pub fn sweep(a: SweepArgs) -> anyhow::Result<ExitCode> {
    let mut s = checked(&a)?;
    let client = client(&a.ws)?;
    s.compute_id = compute_id(&client, &a.compute)?;
    let (environment_id, env_name) = environment_for_run(
        &client,
        &a.source,
        &a.environment_name,
        &a.cache,
        &a.transport,
    )?;
    s.environment_id = environment_id;
    if s.id.is_empty() {
        s.id = job::new_job_id(&format!("{env_name}-sweep"));
    }
    if s.experiment_name.is_empty() {
        s.experiment_name.clone_from(&env_name);
    }
    s.tags.insert("envbuild.environment".into(), env_name);
    if let Some(path) = &a.emit_yaml {
        write_atomically(path, s.yaml().as_bytes(), "--emit-yaml")?;
        ui().message(&format!("wrote {} (nothing submitted)", path.display()));
        return Ok(ExitCode::SUCCESS);
    }
    let submitted = job::submit(&client, &s)?;
    let id = s.id.clone();
    ui().message(&format!(
        "submitted sweep {id}: {} trials, {} at once, {} over {}",
        s.limits.max_total_trials,
        s.limits.max_concurrent_trials,
        s.objective.goal().to_ascii_lowercase(),
        s.objective.metric
    ));
    if let Some(link) = job::studio_link(&submitted) {
        ui().message(&format!("studio: {link}"));
    }
    if a.detach {
        if a.format.json() {
            print_json(&serde_json::json!({"id": id, "status": job::status(&submitted)}))?;
        } else {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow(&client, &s, &a)
}

/// Follows the sweep: its status, each trial's status and metric, then the best trial.
fn follow(client: &Client, s: &SweepJob, a: &SweepArgs) -> anyhow::Result<ExitCode> {
    let (min, max) = a.follow.poll.bounds();
    let poll = job::Poll { min, max };
    let stop = detach_on_ctrl_c();
    let metric = &s.objective.metric;
    let end = trials::follow(client, &s.id, metric, poll, &stop, &mut |e| match e {
        Event::Sweep(st) => ui().message(&format!("sweep {}: {st}", s.id)),
        Event::Trial(t) => ui().message(&format!(
            "trial {}: {} {}",
            t.id,
            t.status,
            serde_json::to_string(&t.params).unwrap_or_default()
        )),
        Event::Metric(t, v, step) => {
            ui().message(&format!("trial {t}: {metric} {v:.4} (step {step})"))
        }
        Event::Unreadable(why) => ui().message(&format!(
            "(trials not readable, following the sweep only: {why})"
        )),
    })?;
    let status = job::status(&end.sweep).to_owned();
    let best = trials::best(&end.sweep);
    let best_doc = best.as_ref().map(|(id, score)| {
        let t = end.trials.iter().find(|t| &t.id == id);
        let value = end.metrics.get(id).copied().or(*score);
        ui().message(&format!(
            "best trial {id}: {metric} {} with {}",
            value.map_or("unknown".into(), |v| format!("{v:.4}")),
            t.map_or("unknown parameters".into(), |t| serde_json::to_string(
                &t.params
            )
            .unwrap_or_default())
        ));
        serde_json::json!({"trial": id, "params": t.map(|t| &t.params), "metric": value})
    });
    if a.format.json() {
        let trials: Vec<_> = end
            .trials
            .iter()
            .map(|t| serde_json::json!({"id": t.id, "status": t.status, "params": t.params, "metric": end.metrics.get(&t.id)}))
            .collect();
        print_json(&serde_json::json!({
            "id": s.id, "status": status, "studio": job::studio_link(&end.sweep),
            "best": best_doc, "trials": trials, "detached": end.detached,
        }))?;
    } else {
        println!("{}", best.map_or(s.id.clone(), |(id, _)| id));
    }
    if end.detached {
        eprintln!("detached; sweep {} is {status} and goes on.\n  follow: envbuild job show {} --follow\n  cancel: envbuild job cancel {}", s.id, s.id, s.id);
        return Ok(ExitCode::from(130));
    }
    if status != "Completed" {
        anyhow::bail!("Azure ML sweep {} ended with status {status}", s.id);
    }
    Ok(ExitCode::SUCCESS)
}
