//! Runs a command job for real: pulls the environment's image from its registry into the Docker
//! engine, runs `command` with `/bin/sh -c` (the code version's files read-only as the working
//! directory `/mnt/azureml/code`, folder and file inputs read-only under
//! `/mnt/azureml/inputs/NAME`, literal inputs put into the command, outputs read-write under
//! `/mnt/azureml/outputs/NAME`), writes the container's output to `user_logs/std_log.txt`, and
//! moves the status through Starting → Preparing → Queued → Running → Finalizing →
//! Completed/Failed (or Canceled). Code and inputs are what was really uploaded to the
//! workspace's Blob datastores; when the job ends, its named outputs are put into the datastore
//! their `uri` names (`azureml/{job}/{output}/` of the default one) and its log into the artifact
//! store (`ExperimentRun/dcid.{job}/user_logs/`), where `job download` finds them.
//!
//! A job with `resources.instanceCount` N and a PyTorch `distribution` of K processes per
//! instance runs as N×K containers on a network of its own, each with the variables Azure ML
//! documents for that distribution (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, NODE_RANK, RANK,
//! LOCAL_RANK: learn.microsoft.com, "Distributed GPU training guide (SDK v2)", PyTorch). The
//! documents give MASTER_PORT only as "an available port on the first instance"; the stand-in
//! uses 6105. Rank 0's output goes to user_logs/std_log.txt, rank R's to
//! std_log_process_R.txt.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, LogsOptions, RemoveContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde_json::json;

use super::{now_rfc3339, Shared};

/// Prefix of every container the stand-in creates.
pub const CONTAINER_PREFIX: &str = "envbuild-azsim-";

pub(crate) fn spawn(sh: &Arc<Shared>, key: String, image: String) {
    // The handler runs on a blocking thread of the server's runtime.
    let sh = sh.clone();
    tokio::runtime::Handle::current().spawn(async move {
        run(sh, key, image).await;
    });
}

fn set_status(sh: &Shared, key: &str, status: &str) {
    let mut st = sh.state.lock().unwrap();
    let Some(j) = st.jobs.get_mut(key) else {
        return;
    };
    let p = &mut j.body["properties"];
    p["status"] = json!(status);
    if status == "Running" {
        p["properties"]["StartTimeUtc"] = json!(now_rfc3339());
    }
    if ["Completed", "Failed", "Canceled"].contains(&status) {
        p["properties"]["EndTimeUtc"] = json!(now_rfc3339());
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(j.dir.join("status_history.txt"))
    {
        let _ = writeln!(f, "{status}");
    }
}

fn canceled(sh: &Shared, key: &str) -> bool {
    sh.state
        .lock()
        .unwrap()
        .jobs
        .get(key)
        .is_some_and(|j| j.cancel)
}

fn log_line(dir: &std::path::Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("user_logs/std_log.txt"))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// An input's mount: (host path, container path, what `${{inputs.NAME}}` becomes). A folder
/// is mounted at `/mnt/azureml/inputs/NAME`; a file as `/mnt/azureml/inputs/NAME/<file name>`,
/// which the reference names.
fn input_mount(
    sh: &Shared,
    name: &str,
    i: &serde_json::Value,
) -> Result<(PathBuf, String, String), String> {
    let uri = i["uri"].as_str().unwrap_or("");
    let host = super::data::azureml_path(sh, uri)?;
    let at = format!("/mnt/azureml/inputs/{name}");
    if i["jobInputType"] == "uri_file" {
        if !host.is_file() {
            return Err(format!("{uri}: no such file in the datastore"));
        }
        let file = host
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let c = format!("{at}/{file}");
        return Ok((host, c.clone(), c));
    }
    if !host.is_dir() {
        return Err(format!("{uri}: no such folder in the datastore"));
    }
    Ok((host, at.clone(), at))
}

/// Copies the files under `from` to `to` (made as needed), as the service's output mount
/// leaves them in the datastore.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        } else if t.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Puts a finished job's named outputs into the Blob datastores their `uri` names, and its
/// log into the artifact store, where a client downloads them (only for datastores the Blob
/// stand-in holds).
fn publish_outputs(sh: &Shared, id: &str, p: &serde_json::Value, dir: &std::path::Path) {
    for (name, o) in p["outputs"].as_object().cloned().unwrap_or_default() {
        if name == "default" {
            continue;
        }
        if let Some(to) = o["uri"]
            .as_str()
            .and_then(|u| super::data::blob_path(sh, u))
        {
            let from = dir.join("outputs").join(&name);
            if let Err(e) = copy_tree(&from, &to) {
                log_line(dir, &format!("warning: output {name} not uploaded: {e}"));
            }
        }
    }
    let store =
        format!("azureml://datastores/workspaceartifactstore/paths/ExperimentRun/dcid.{id}");
    if let Some(to) = super::data::blob_path(sh, &store) {
        let _ = copy_tree(&dir.join("user_logs"), &to.join("user_logs"));
    }
}

async fn run(sh: Arc<Shared>, key: String, image: String) {
    let (body, dir, step) = {
        let st = sh.state.lock().unwrap();
        let j = &st.jobs[&key];
        (j.body.clone(), j.dir.clone(), st.step)
    };
    let id = body["name"].as_str().unwrap_or("job").to_owned();
    let end = |status: &str| {
        set_status(&sh, &key, status);
    };
    for s in ["Starting", "Preparing"] {
        tokio::time::sleep(step).await;
        if canceled(&sh, &key) {
            return end("Canceled");
        }
        set_status(&sh, &key, s);
    }
    let engine = match envbuild::engine::connect().await {
        Ok(e) => e,
        Err(e) => {
            log_line(
                &dir,
                &format!("AzureMLCompute job failed: cannot reach Docker: {e}"),
            );
            return end("Failed");
        }
    };
    let docker = engine.docker.clone();
    // Preparing: the image by digest, from its registry, the way the compute pulls it.
    let creds = sh
        .state
        .lock()
        .unwrap()
        .pull_credentials
        .clone()
        .map(|(u, p)| bollard::auth::DockerCredentials {
            username: Some(u),
            password: Some(p),
            serveraddress: image.split('/').next().map(str::to_owned),
            ..Default::default()
        });
    if let Err(e) = engine.pull(&image, creds).await {
        log_line(
            &dir,
            &format!("AzureMLCompute job failed.\nImagePullFailed: Failed to pull Docker image {image}: {e}"),
        );
        return end("Failed");
    }
    sh.state.lock().unwrap().pulled.insert(image.clone());
    // Mounts.
    let p = &body["properties"];
    let mut command = p["command"].as_str().unwrap_or("").to_owned();
    let mut binds = Vec::new();
    let mut working_dir = "/".to_owned();
    if let Some(code) = p["codeId"].as_str() {
        let ws_id = key.split("/jobs/").next().unwrap_or_default();
        match super::data::code_dir_of(&sh, ws_id, code) {
            Ok(host) if host.is_dir() => {
                binds.push(format!("{}:/mnt/azureml/code:ro", host.display()));
                working_dir = "/mnt/azureml/code".into();
            }
            Ok(host) => {
                log_line(
                    &dir,
                    &format!(
                        "AzureMLCompute job failed.\nDataAccessError: code folder {} is gone",
                        host.display()
                    ),
                );
                return end("Failed");
            }
            Err(e) => {
                log_line(
                    &dir,
                    &format!("AzureMLCompute job failed.\nDataAccessError: {e}"),
                );
                return end("Failed");
            }
        }
    }
    for (name, i) in p["inputs"].as_object().cloned().unwrap_or_default() {
        if i["jobInputType"] == "literal" {
            // The service puts the value itself in place of the reference.
            let v = i["value"].as_str().unwrap_or_default();
            command = replace_ref(&command, &format!("inputs.{name}"), v);
            continue;
        }
        match input_mount(&sh, &name, &i) {
            Ok((host, c, reference)) => {
                binds.push(format!("{}:{c}:ro", host.display()));
                command = replace_ref(&command, &format!("inputs.{name}"), &reference);
            }
            Err(e) => {
                log_line(
                    &dir,
                    &format!("AzureMLCompute job failed.\nDataAccessError: {e}"),
                );
                return end("Failed");
            }
        }
    }
    for (name, _) in p["outputs"].as_object().cloned().unwrap_or_default() {
        if name == "default" {
            continue;
        }
        let host = dir.join("outputs").join(&name);
        let _ = std::fs::create_dir_all(&host);
        let c = format!("/mnt/azureml/outputs/{name}");
        binds.push(format!("{}:{c}", host.display()));
        command = replace_ref(&command, &format!("outputs.{name}"), &c);
    }
    let mut env: Vec<String> = p["environmentVariables"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    // The workspace's tracking service: an MLflow run and its variables; the host's network,
    // where the tracking server listens on loopback.
    let mut host_network = false;
    if let Some(base) = super::tracking::server(&sh) {
        let experiment = p["experimentName"].as_str().unwrap_or("Default");
        match super::tracking::start_run(&sh, &base, &id, experiment).await {
            Ok(vars) => (env, host_network) = ([env, vars].concat(), true),
            Err(e) => log_line(&dir, &format!("warning: no MLflow run for the job: {e}")),
        }
    }
    tokio::time::sleep(step).await;
    if canceled(&sh, &key) {
        return end("Canceled");
    }
    set_status(&sh, &key, "Queued");
    // One container per process: resources.instanceCount nodes, distribution.processCountPerInstance
    // processes on each (PyTorch), on a network of the job's own, with the variables the service
    // sets for the PyTorch distribution.
    let (nodes, per_node) = layout(p);
    let world = nodes * per_node;
    let network = (world > 1).then(|| format!("{CONTAINER_PREFIX}{id}"));
    if let Some(n) = &network {
        let made = docker
            .create_network(NetworkCreateRequest {
                name: n.clone(),
                driver: Some("bridge".into()),
                ..Default::default()
            })
            .await;
        if let Err(e) = made {
            log_line(
                &dir,
                &format!("AzureMLCompute job failed.\nJobContainerConfigFailed: {e}"),
            );
            return end("Failed");
        }
    }
    let mut names = Vec::new();
    let mut failed = None;
    for rank in 0..world {
        let name = if world > 1 {
            format!("{CONTAINER_PREFIX}{id}-{rank}")
        } else {
            format!("{CONTAINER_PREFIX}{id}")
        };
        let mut env = env.clone();
        if world > 1 {
            env.extend(distribution_env(world, rank, per_node));
        }
        let config = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec![command.clone()]),
            env: Some(env),
            working_dir: Some(working_dir.clone()),
            hostname: network
                .as_ref()
                .map(|_| node_host(rank / per_node, rank % per_node)),
            host_config: Some(HostConfig {
                binds: Some(binds.clone()),
                shm_size: Some(2 << 30),
                network_mode: Some(
                    network
                        .clone()
                        .unwrap_or_else(|| if host_network { "host" } else { "none" }.into()),
                ),
                ..Default::default()
            }),
            networking_config: network.as_ref().map(|n| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    n.clone(),
                    EndpointSettings {
                        aliases: Some(vec![node_host(rank / per_node, rank % per_node)]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                config,
            )
            .await;
        if let Err(e) = created {
            failed = Some(format!(
                "AzureMLCompute job failed.\nJobContainerConfigFailed: {e}"
            ));
            break;
        }
        names.push(name);
    }
    let code = if let Some(f) = failed {
        log_line(&dir, &f);
        None
    } else {
        tokio::time::sleep(step).await;
        set_status(&sh, &key, "Running");
        // A heartbeat the service lost for a while: NotResponding, then Running again.
        if sh.state.lock().unwrap().not_responding.remove(&id) {
            tokio::time::sleep(step).await;
            set_status(&sh, &key, "NotResponding");
            // Longer than the slowest poll, so a follower sees it.
            tokio::time::sleep(step * 8).await;
            set_status(&sh, &key, "Running");
        }
        let mut started = Ok(());
        for name in &names {
            started = docker
                .start_container(
                    name,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await;
            if started.is_err() {
                break;
            }
        }
        match started {
            Err(e) => {
                log_line(
                    &dir,
                    &format!("AzureMLCompute job failed.\nJobContainerConfigFailed: {e}"),
                );
                None
            }
            Ok(()) => Some(watch(&docker, &sh, &key, &names, &dir, limit(p)).await),
        }
    };
    for name in &names {
        let _ = docker
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
    if let Some(n) = &network {
        let _ = docker.remove_network(n).await;
    }
    if canceled(&sh, &key) {
        return end("Canceled");
    }
    set_status(&sh, &key, "Finalizing");
    publish_outputs(&sh, &id, p, &dir);
    tokio::time::sleep(step).await;
    end(if code == Some(0) {
        "Completed"
    } else {
        "Failed"
    });
}

/// `limits.timeout` (ISO 8601): the service cancels a job that runs longer (JobLimits).
fn limit(p: &serde_json::Value) -> Option<std::time::Duration> {
    p["limits"]["timeout"]
        .as_str()
        .and_then(envbuild::azureml::timeout::duration_secs)
        .map(std::time::Duration::from_secs_f64)
}

/// (nodes, processes per node) of a job: `resources.instanceCount` (default 1) and the PyTorch
/// distribution's `processCountPerInstance` (default 1; no distribution: 1).
fn layout(p: &serde_json::Value) -> (usize, usize) {
    let nodes = p["resources"]["instanceCount"].as_u64().unwrap_or(1).max(1) as usize;
    let per = p["distribution"]["processCountPerInstance"]
        .as_u64()
        .unwrap_or(1)
        .max(1) as usize;
    (nodes, per)
}

/// The name node `node`'s process `local` answers to on the job's network; node 0's first
/// process is MASTER_ADDR.
fn node_host(node: usize, local: usize) -> String {
    format!("node-{node}-{local}")
}

/// The stand-in's port for rank 0's rendezvous (see the module doc).
pub const MASTER_PORT: u16 = 6105;

/// What the service sets for process `rank` of a PyTorch distribution with `per_node`
/// processes per node: MASTER_ADDR/MASTER_PORT (node 0), WORLD_SIZE (all processes),
/// NODE_RANK, RANK (global) and LOCAL_RANK (within the node).
fn distribution_env(world: usize, rank: usize, per_node: usize) -> Vec<String> {
    vec![
        format!("MASTER_ADDR={}", node_host(0, 0)),
        format!("MASTER_PORT={MASTER_PORT}"),
        format!("WORLD_SIZE={world}"),
        format!("NODE_RANK={}", rank / per_node),
        format!("RANK={rank}"),
        format!("LOCAL_RANK={}", rank % per_node),
    ]
}

/// Streams each process's logs (rank 0 into user_logs/std_log.txt, rank R into
/// std_log_process_R.txt) and waits for every exit; the first non-zero code is the job's, and
/// the other processes are killed then (the service fails the whole job). A cancel kills all,
/// and so does reaching `timeout` (the job's limits.timeout), which cancels the job.
async fn watch(
    docker: &Docker,
    sh: &Arc<Shared>,
    key: &str,
    names: &[String],
    dir: &std::path::Path,
    timeout: Option<std::time::Duration>,
) -> i64 {
    let mut logs = Vec::new();
    for (rank, name) in names.iter().enumerate() {
        let log_path = if rank == 0 {
            dir.join("user_logs/std_log.txt")
        } else {
            dir.join(format!("user_logs/std_log_process_{rank}.txt"))
        };
        let docker2 = docker.clone();
        let name2 = name.clone();
        logs.push(tokio::spawn(async move {
            let mut s = docker2.logs(
                &name2,
                Some(LogsOptions {
                    follow: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            );
            let mut f = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
            {
                Ok(f) => f,
                Err(_) => return,
            };
            while let Some(Ok(chunk)) = s.next().await {
                let _ = f.write_all(&chunk.into_bytes());
            }
        }));
    }
    let sh2 = sh.clone();
    let (docker3, names3, key3) = (docker.clone(), names.to_vec(), key.to_owned());
    let (started, dir3) = (std::time::Instant::now(), dir.to_path_buf());
    let killer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if timeout.is_some_and(|t| started.elapsed() >= t) {
                log_line(&dir3, "Job reached its limits.timeout and was canceled.");
                if let Some(j) = sh2.state.lock().unwrap().jobs.get_mut(&key3) {
                    j.cancel = true;
                }
            }
            if canceled(&sh2, &key3) {
                for n in &names3 {
                    let _ = docker3
                        .kill_container(n, None::<KillContainerOptions>)
                        .await;
                }
                return;
            }
        }
    });
    let mut waits: futures_util::stream::FuturesUnordered<_> = names
        .iter()
        .map(|name| {
            let mut w = docker.wait_container(name, None::<WaitContainerOptions>);
            async move {
                let mut code = -1;
                while let Some(r) = w.next().await {
                    match r {
                        Ok(x) => code = x.status_code,
                        // bollard reports a non-zero exit as an error carrying the code.
                        Err(bollard::errors::Error::DockerContainerWaitError {
                            code: c, ..
                        }) => code = c,
                        Err(_) => {}
                    }
                }
                code
            }
        })
        .collect();
    let mut code = 0;
    while let Some(c) = waits.next().await {
        if c != 0 && code == 0 {
            code = c;
            for n in names {
                let _ = docker.kill_container(n, None::<KillContainerOptions>).await;
            }
        }
    }
    killer.abort();
    for l in logs {
        let _ = l.await;
    }
    code
}

fn replace_ref(command: &str, name: &str, with: &str) -> String {
    let mut out = command.replace(&format!("${{{{{name}}}}}"), with);
    out = out.replace(&format!("${{{{ {name} }}}}"), with);
    out
}
