//! The Azure ML commands: `register`, `deploy`, `run --azure`, `job`, `model` — clap structs and
//! one small function each, turning arguments into calls of `envbuild::azureml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use envbuild::azureml::{self, environment, job, model, Client};
use envbuild::error::Hinted;
use envbuild::registry::Reference;

use super::args::azure::{
    blob_settings, client, detach_on_ctrl_c, env_name, environment_for_run, source, Source,
};
use super::args::{print_json, FollowArgs, FormatArgs, PublishArgs, RunArgs, WorkspaceArgs};
use super::ui::ui;
use super::Stderr;

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// REGISTRY/REPOSITORY@sha256:… as `envbuild push` printed it, or an environment file
    /// (built from the cache to learn its digest; it must have been pushed)
    pub source: String,
    /// Environment name [default: the file's publish.azureml_environment]
    #[arg(long)]
    pub name: Option<String>,
    /// Description [default: the file's description, or the image reference]
    #[arg(long)]
    pub description: Option<String>,
    /// Source revision for the tags [default: the image's org.opencontainers.image.revision]
    #[arg(long)]
    pub revision: Option<String>,
    /// Also write the Azure ML CLI v2 environment YAML here (for `az ml environment create -f`)
    #[arg(long, value_name = "FILE")]
    pub emit_yaml: Option<PathBuf>,
    /// REGISTRY/REPOSITORY the environment file's image was pushed to [default: its publish section]
    #[arg(long, value_name = "REF")]
    pub image_repository: Option<String>,
    // With --json: {id, name, version, image, registered, yaml}
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Environment file
    pub env: PathBuf,
    /// REGISTRY/REPOSITORY[:TAG] to push to [default: the file's publish section]
    #[arg(long, value_name = "REF")]
    pub dest: Option<String>,
    /// Environment name [default: the file's publish.azureml_environment]
    #[arg(long)]
    pub name: Option<String>,
    /// Also write the Azure ML CLI v2 environment YAML here
    #[arg(long, value_name = "FILE")]
    pub emit_yaml: Option<PathBuf>,
    // With --json: register's document and the push's, as `push`
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Show a job's status (and follow it to the end with --follow)
    Show(JobArgs),
    /// Cancel a job
    Cancel(JobArgs),
    /// Fetch a job's outputs from its datastore, verified, as `az ml job download` lays them
    /// out: DIR/named-outputs/NAME/ for a named output, DIR/artifacts/ for the default one
    Download(JobDownloadArgs),
}

#[derive(Debug, Args)]
pub struct JobDownloadArgs {
    /// Job name
    pub id: String,
    /// Only this output (`default` is the job's artifacts) [default: every output]
    #[arg(long, value_name = "NAME")]
    pub output: Option<String>,
    /// The folder the outputs go into; each output's folder must not exist yet or be empty
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub to: PathBuf,
    // With --json: {id, outputs: [{name, path, files, bytes}]}
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// Job name
    pub id: String,
    /// Follow until the job ends; exit 0 only if it Completed
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub pacing: FollowArgs,
    // With --json: {id, status, studio}
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Register a job's output as a model version
    Register(ModelArgs),
}

#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct ModelArgs {
    /// Model name
    pub name: String,
    /// The job whose output holds the model
    #[arg(long, value_name = "ID")]
    pub job: String,
    /// The job's output
    #[arg(long, value_name = "NAME", default_value = "model")]
    pub output: String,
    /// Version [default: the next one]
    #[arg(long)]
    pub version: Option<String>,
    /// Description
    #[arg(long)]
    pub description: Option<String>,
    // With --json: {id, name, version, uri}
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

/// An environment file's image: built from the cache, at `repository` (or its publish section),
/// checked to be in the registry. Returns the pinned reference and the file's metadata.
fn pushed_image_of(
    file: &Path,
    repository: Option<&str>,
    publish: &PublishArgs,
) -> anyhow::Result<(String, envbuild::spec::Environment, Option<String>)> {
    let registry = &publish.registry;
    let (env, built) = envbuild::build::build_file(
        file,
        &publish.cache.open()?,
        &registry.build()?,
        &mut Stderr,
    )?;
    let repo = match repository {
        Some(r) => r.to_owned(),
        None => match (&env.publish.registry, &env.publish.repository) {
            (Some(reg), Some(repo)) => format!("{reg}/{repo}"),
            _ => return Err(Hinted::new(
                format!("{}: no publish.registry/publish.repository, so the pushed image is unknown", file.display()),
                "pass --image-repository REGISTRY/REPOSITORY, or register the REGISTRY/REPOSITORY@sha256:… that `envbuild push` printed",
            ).into()),
        },
    };
    let reference: Reference = format!("{repo}@{}", built.image.digest).parse()?;
    let client = registry.client(&reference)?;
    client
        .get_manifest(&built.image.digest.to_string())
        .map_err(anyhow::Error::new)
        .with_context(|| {
            Hinted::new(
                format!(
                    "image {reference} (built from {}) is not in the registry",
                    file.display()
                ),
                format!(
                    "`envbuild push {} {repo}` first, or use `envbuild deploy`",
                    file.display()
                ),
            )
        })?;
    let sbom = built
        .attachments
        .iter()
        .find(|a| a.artifact_type != envbuild::sbom::IN_TOTO_JSON)
        .map(|a| a.payload.0.to_string());
    Ok((reference.to_string(), env, sbom))
}

/// The environment version's tag naming the SBOM document's digest (what `envbuild sbom`
/// prints for its image).
const SBOM_TAG: &str = "envbuild.sbom.digest";

fn register_version(
    client: &Client,
    version: &environment::EnvironmentVersion,
    emit_yaml: &Option<PathBuf>,
) -> anyhow::Result<serde_json::Value> {
    if let Some(p) = emit_yaml {
        environment::write_yaml(version, p)?;
        ui().message(&format!("wrote {}", p.display()));
    }
    let outcome = environment::register(client, version)?;
    let created = outcome == environment::Outcome::Created;
    ui().message(&format!(
        "environment {}:{} {} (image {})",
        version.name,
        version.version,
        if created {
            "registered"
        } else {
            "already registered with this image; nothing to do"
        },
        version.image
    ));
    Ok(serde_json::json!({
        "id": version.arm_id(&client.workspace),
        "name": version.name,
        "version": version.version,
        "image": version.image,
        "registered": created,
        "yaml": emit_yaml.as_ref().map(|p| p.display().to_string()),
    }))
}

/// The command's result: the document with --json, else its `id` (an ARM id or job name)
/// alone on stdout.
fn print_result(format: &FormatArgs, doc: &serde_json::Value) -> anyhow::Result<ExitCode> {
    if format.json() {
        print_json(doc)?;
    } else if let Some(id) = doc["id"].as_str() {
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn register(a: RegisterArgs) -> anyhow::Result<ExitCode> {
    let (image, env, sbom) = match source(&a.source) {
        Source::Image(i) => (i, None, None),
        Source::File(f) => {
            let (i, e, s) = pushed_image_of(&f, a.image_repository.as_deref(), &a.publish)?;
            (i, Some(e), s)
        }
    };
    let name = env_name(&a.name, env.as_ref())?;
    let revision = a.revision.clone().or_else(|| {
        env.as_ref().and_then(|e| {
            e.config
                .annotations
                .get("org.opencontainers.image.revision")
                .cloned()
        })
    });
    let description = a
        .description
        .clone()
        .or_else(|| env.as_ref().and_then(|e| e.description.clone()));
    // Name and digest are checked before any request.
    let mut version = environment::EnvironmentVersion::new(&name, &image, description, revision)?;
    if let Some(d) = sbom {
        version.tags.insert(SBOM_TAG.to_owned(), d);
    }
    let client = client(&a.ws)?;
    let doc = register_version(&client, &version, &a.emit_yaml)?;
    print_result(&a.format, &doc)
}

pub fn deploy(a: DeployArgs) -> anyhow::Result<ExitCode> {
    let env = envbuild::spec::load_file(&a.env)?;
    let name = env_name(&a.name, Some(&env))?;
    environment::check_name(&name)?;
    let dest = match &a.dest {
        Some(d) => d.clone(),
        None => match (&env.publish.registry, &env.publish.repository) {
            (Some(reg), Some(repo)) => format!(
                "{reg}/{repo}{}",
                env.publish
                    .tag
                    .as_ref()
                    .map(|t| format!(":{t}"))
                    .unwrap_or_default()
            ),
            _ => anyhow::bail!(
                "{}: no publish.registry/publish.repository; pass --dest REGISTRY/REPOSITORY[:TAG]",
                a.env.display()
            ),
        },
    };
    // The workspace is checked before the push, so a typo does not cost an upload.
    let client = client(&a.ws)?;
    let report = a.publish.push(&a.env.display().to_string(), &dest)?;
    ui().message(&format!(
        "pushed {} ({} blobs uploaded, {} already there)",
        report.reference, report.uploaded, report.skipped
    ));
    let mut version = environment::EnvironmentVersion::new(
        &name,
        &report.reference,
        env.description.clone(),
        env.config
            .annotations
            .get("org.opencontainers.image.revision")
            .cloned(),
    )?;
    if let Some(r) = report
        .referrers
        .iter()
        .find(|r| r.artifact_type != envbuild::sbom::IN_TOTO_JSON)
    {
        version.tags.insert(SBOM_TAG.to_owned(), r.document.clone());
    }
    let mut doc = register_version(&client, &version, &a.emit_yaml)?;
    doc["push"] = serde_json::to_value(&report)?;
    print_result(&a.format, &doc)
}

/// A job's document for --json: {id, status, studio}.
fn job_doc(id: &str, status: &str, studio: Option<&str>) -> serde_json::Value {
    serde_json::json!({ "id": id, "status": status, "studio": studio })
}

/// Follows a job to its end: status changes and the Studio link on stderr, a spinner while it
/// waits; exit 0 only for Completed; otherwise the status and the log's tail. The job's
/// document (--json) or its name is printed on stdout whatever the end.
fn follow_job(
    client: &Client,
    id: &str,
    f: &FollowArgs,
    logs: &Option<String>,
    format: &FormatArgs,
) -> anyhow::Result<ExitCode> {
    let stop = detach_on_ctrl_c();
    let (min, max) = f.poll.bounds();
    let poll = job::Poll { min, max };
    let mut studio: Option<String> = None;
    let mut last = serde_json::Value::Null;
    let wait = ui().spinner(&format!("job {id}"));
    let end = job::follow(client, id, poll, &stop, &mut |s, j| {
        last = j.clone();
        if studio.is_none() {
            if let Some(link) = job::studio_link(j) {
                ui().message(&format!("job {id}: {link}"));
                studio = Some(link.to_owned());
            }
        }
        ui().message(&format!("job {id}: {s}"));
        if s == "NotResponding" {
            ui().message(&format!(
                "warning: job {id}: Azure ML has not heard from the job for a while; a job can come back from NotResponding, so envbuild keeps following (Ctrl-C detaches; `envbuild job cancel {id}` stops it)"
            ));
        }
        wait.note(s);
    });
    wait.finish("");
    let end = end?;
    let (status, detached) = match &end {
        job::Followed::Done(s) => (s.as_str(), false),
        job::Followed::Detached(s) => (s.as_str(), true),
    };
    let mut doc = job_doc(id, status, studio.as_deref());
    if detached {
        doc["detached"] = true.into();
    }
    print_result(format, &doc)?;
    match end {
        job::Followed::Done(s) if s == "Completed" => Ok(ExitCode::SUCCESS),
        job::Followed::Done(s) => {
            let timed_out = azureml::timeout::timeout_reached(&last);
            match &timed_out {
                Some(t) => ui().message(&format!(
                    "job {id} ended {s}: timeout reached (limits.timeout {t})"
                )),
                None => ui().message(&format!("job {id} ended {s}")),
            }
            match logs {
                Some(endpoint) => match job::log_tail(client, endpoint, id, f.log_lines) {
                    Ok(t) if !t.is_empty() => {
                        eprintln!("--- last lines of user_logs/std_log.txt ---\n{t}\n---")
                    }
                    Ok(_) => ui().message("(the job's log is empty)"),
                    Err(e) => ui().message(&format!("(no log: {e})")),
                },
                None => ui().message(
                    "the log is in Azure ML studio: the job's Outputs + logs, user_logs/std_log.txt",
                ),
            }
            if let Some(t) = timed_out {
                return Err(Hinted::new(
                    format!("Azure ML job {id} ended {s}: timeout reached (limits.timeout {t})"),
                    "the service cancels a job that runs longer than its timeout; give more with --timeout (e.g. --timeout 6h)",
                )
                .into());
            }
            let message = format!("Azure ML job {id} ended with status {s}");
            if s == "Failed" {
                return Err(Hinted::new(message, "if it failed in Preparing with `unauthorized: authentication required`, the compute's identity needs AcrPull on the image's registry").into());
            }
            anyhow::bail!(message)
        }
        job::Followed::Detached(s) => {
            eprintln!(
                "detached; job {id} is {s} and goes on.\n  follow: envbuild job show {id} --follow\n  cancel: envbuild job cancel {id}"
            );
            Ok(ExitCode::from(130))
        }
    }
}

/// The job options of `run --azure`'s flags, checked before any request.
fn job_options(
    a: &super::args::AzureRunArgs,
    shm_bytes: i64,
) -> anyhow::Result<azureml::options::JobOptions> {
    use azureml::options::{Identity, JobOptions, NotifyOn};
    let o = JobOptions {
        tier: a.tier,
        identity: a
            .identity
            .as_deref()
            .map(|k| Identity::parse(k, a.identity_client_id.as_deref()))
            .transpose()?,
        shm_size: Some(azureml::options::shm_size(shm_bytes.max(1) as u64)),
        emails: a.notify_email.clone(),
        email_on: a
            .notify_on
            .as_deref()
            .map(NotifyOn::parse_list)
            .transpose()?
            .unwrap_or_default(),
    };
    o.check()?;
    Ok(o)
}

/// `envbuild run --azure`: with `--code` or local inputs, the snapshot and the files uploaded to
/// the default datastore (what is there already is not sent again), verified, the code version
/// registered; then PUT the command job and follow it unless detached. Every local check (code,
/// inputs, the command's references) comes before any request.
pub fn run(r: RunArgs) -> anyhow::Result<ExitCode> {
    let mut a = r.azure_args.clone();
    for kv in &r.env {
        a.env_vars.push(super::args::env_pair(kv)?);
    }
    let (env_or_image, ws) = (&r.source, &r.ws);
    let outputs = envbuild::jobio::outputs_checked(&r.outputs())?;
    let inputs = envbuild::jobio::inputs_by_name(&r.inputs()?)?;
    let code = match &r.code {
        Some(dir) => {
            anyhow::ensure!(
                !r.args.is_empty(),
                "--code {}: give the command to run after `--` (e.g. -- python train.py --data ${{{{inputs.data}}}})",
                dir.display()
            );
            let snap = envbuild::snapshot::Snapshot::of(dir)?;
            for w in snap.warnings() {
                ui().message(&format!("warning: {w}"));
            }
            let name = snap
                .root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "code".into());
            Some((snap, name))
        }
        None => {
            anyhow::ensure!(
                outputs.len() == 1,
                "without --code, --azure takes one --output: the trainer's --output (given: {})",
                outputs.join(", ")
            );
            None
        }
    };
    let command = if code.is_some() {
        // The user's words; the service replaces the references, which must name what is given.
        let line = envbuild::jobio::command_line(&r.args);
        let names = |it: Vec<&String>| -> BTreeMap<String, String> {
            it.into_iter().map(|n| (n.clone(), n.clone())).collect()
        };
        envbuild::jobio::expand(
            &line,
            &names(inputs.keys().collect()),
            &names(outputs.iter().collect()),
        )?;
        line
    } else {
        job::trainer_command(inputs.contains_key("data"), &outputs[0], &r.args)
    };
    let timeout = job::parse_timeout(&a.timeout)?;
    let options = job_options(&a, r.shm_size)?;
    let client = client(ws)?;
    // An unknown compute stops here, before anything is built, uploaded or submitted.
    if let Some(c) = &a.compute {
        for w in azureml::compute::cost_warnings(&client, c)? {
            ui().message(&format!("warning: {w}"));
        }
    }
    let (environment_id, env_name) = environment_for_run(
        &client,
        env_or_image,
        &a.environment_name,
        &r.cache,
        &r.transport,
    )?;
    let local = azureml::stage::Local {
        code: code.as_ref().map(|(s, n)| (s, n.clone())),
        inputs: &inputs,
    };
    let staged = azureml::stage::stage(&client, &local, &blob_settings(ws), ui())?;
    for u in &staged.uploads {
        let ds = staged.datastore.as_ref().map_or("", |d| d.name.as_str());
        ui().message(&format!(
            "{}: {} files, {} bytes in {ds}/{}: {} bytes sent, {} files uploaded, {} already there",
            u.what,
            u.files,
            u.bytes,
            u.prefix,
            u.report.bytes_sent,
            u.report.blobs_uploaded,
            u.report.blobs_skipped
        ));
    }
    if let Some((c, outcome)) = &staged.code {
        ui().message(&format!(
            "code {}:{} {}",
            c.name,
            c.version,
            match outcome {
                azureml::code::Outcome::Created => "registered",
                azureml::code::Outcome::Unchanged => "already registered with these files",
            }
        ));
    }
    let id = a
        .job_name
        .clone()
        .unwrap_or_else(|| job::new_job_id(&env_name));
    let spec = job::CommandJob {
        command,
        environment_id,
        compute_id: a
            .compute
            .as_ref()
            .map(|c| format!("{}/computes/{c}", client.workspace.arm_id())),
        display_name: a.display_name.clone(),
        experiment_name: a.experiment.clone().unwrap_or_else(|| env_name.clone()),
        environment_variables: a.env_vars.iter().cloned().collect(),
        code_id: staged
            .code
            .as_ref()
            .map(|(c, _)| c.arm_id(&client.workspace)),
        inputs: staged.inputs,
        outputs,
        instance_type: a.instance_type.clone(),
        instance_count: a.instance_count,
        processes_per_instance: a
            .processes_per_instance
            .or((a.instance_count > 1).then_some(1)),
        timeout,
        tags: [("envbuild.environment".to_owned(), env_name)].into(),
        id: id.clone(),
        options,
    };
    let submitted = job::submit(&client, &spec)?;
    ui().message(&format!("submitted job {id} ({})", job::status(&submitted)));
    if let Some(link) = job::studio_link(&submitted) {
        ui().message(&format!("studio: {link}"));
    }
    if a.detach {
        ui().message(&format!(
            "follow: envbuild job show {id} --follow\ncancel: envbuild job cancel {id}"
        ));
        let doc = job_doc(&id, job::status(&submitted), job::studio_link(&submitted));
        return print_result(&a.format, &doc);
    }
    follow_job(&client, &id, &a.follow, &ws.logs_endpoint, &a.format)
}

pub fn job(c: JobCommand) -> anyhow::Result<ExitCode> {
    match c {
        JobCommand::Show(a) => {
            let client = client(&a.ws)?;
            if a.follow {
                return follow_job(&client, &a.id, &a.pacing, &a.ws.logs_endpoint, &a.format);
            }
            let j = job::get(&client, &a.id)?;
            if a.format.json() {
                print_json(&job_doc(&a.id, job::status(&j), job::studio_link(&j)))?;
                return Ok(ExitCode::SUCCESS);
            }
            println!("{}", job::status(&j));
            if let Some(link) = job::studio_link(&j) {
                ui().message(&format!("studio: {link}"));
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Download(a) => download(a),
        JobCommand::Cancel(a) => {
            let client = client(&a.ws)?;
            let (min, max) = a.pacing.poll.bounds();
            let pacing = azureml::lro::Pacing {
                min,
                max,
                ..Default::default()
            };
            if job::cancel_with(&client, &a.id, pacing)? {
                ui().message(&format!("job {} canceled", a.id));
            } else {
                ui().message(&format!("cancel requested for job {}", a.id));
            }
            if a.format.json() {
                print_json(&serde_json::json!({ "id": a.id, "cancel_requested": true }))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `envbuild job download`: each output into its folder, complete or not at all.
fn download(a: JobDownloadArgs) -> anyhow::Result<ExitCode> {
    let client = client(&a.ws)?;
    let fetched = azureml::outputs::download(
        &client,
        &a.id,
        a.output.as_deref(),
        &a.to,
        &blob_settings(&a.ws),
        ui(),
    )?;
    let mut docs = Vec::new();
    for f in &fetched {
        let path = a.to.join(&f.fetch.local);
        match &f.report {
            Some(r) => {
                ui().message(&format!(
                    "output {}: {} files, {} bytes into {} ({} checked against their sha256, the others by size)",
                    f.fetch.name,
                    r.files,
                    r.bytes,
                    path.display(),
                    r.verified
                ));
                docs.push(serde_json::json!({
                    "name": f.fetch.name, "path": path.display().to_string(),
                    "files": r.files, "bytes": r.bytes,
                }));
                if !a.format.json() {
                    println!("{}", path.display());
                }
            }
            None => ui().message(&format!("output {}: nothing there", f.fetch.name)),
        }
    }
    if a.format.json() {
        print_json(&serde_json::json!({ "id": a.id, "outputs": docs }))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn model(c: ModelCommand) -> anyhow::Result<ExitCode> {
    let ModelCommand::Register(a) = c;
    let client = client(&a.ws)?;
    let m = model::ModelVersion {
        name: a.name.clone(),
        version: a.version.clone(),
        job: a.job.clone(),
        output: a.output.clone(),
        description: a.description.clone(),
    };
    let (version, id) = model::register(&client, &m)?;
    ui().message(&format!(
        "model {}:{version} registered from {}",
        a.name,
        m.uri()
    ));
    print_result(
        &a.format,
        &serde_json::json!({ "id": id, "name": a.name, "version": version, "uri": m.uri() }),
    )
}
