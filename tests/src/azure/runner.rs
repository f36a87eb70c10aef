//! Runs a command job for real: pulls the environment's image from its registry into the Docker
//! engine, runs `command` with `/bin/sh -c` (inputs mounted read-only, outputs read-write),
//! writes the container's output to `user_logs/std_log.txt`, and moves the status through
//! Starting → Preparing → Queued → Running → Finalizing → Completed/Failed (or Canceled).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use bollard::models::{ContainerCreateBody, HostConfig};
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

/// azureml://datastores/<ds>/paths/<p> → the test's directory for <ds>, joined with <p>.
fn datastore_path(sh: &Shared, uri: &str) -> Result<PathBuf, String> {
    let rest = uri
        .strip_prefix("azureml://datastores/")
        .ok_or_else(|| format!("unsupported input URI {uri}"))?;
    let (ds, p) = rest
        .split_once("/paths/")
        .ok_or_else(|| format!("input URI {uri} has no /paths/"))?;
    let root = sh
        .state
        .lock()
        .unwrap()
        .datastores
        .get(ds)
        .cloned()
        .ok_or_else(|| format!("datastore {ds} not found"))?;
    let p = p.trim_matches('/');
    if p.split('/').any(|s| s == "..") {
        return Err(format!("input URI {uri} escapes the datastore"));
    }
    let full = root.join(p);
    if !full.is_dir() {
        return Err(format!("{uri}: no such folder in datastore {ds}"));
    }
    Ok(full)
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
    for (name, i) in p["inputs"].as_object().cloned().unwrap_or_default() {
        match datastore_path(&sh, i["uri"].as_str().unwrap_or("")) {
            Ok(host) => {
                let c = format!("/mnt/azureml/inputs/{name}");
                binds.push(format!("{}:{c}:ro", host.display()));
                command = replace_ref(&command, &format!("inputs.{name}"), &c);
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
    let env: Vec<String> = p["environmentVariables"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    tokio::time::sleep(step).await;
    if canceled(&sh, &key) {
        return end("Canceled");
    }
    set_status(&sh, &key, "Queued");
    let name = format!("{CONTAINER_PREFIX}{id}");
    let config = ContainerCreateBody {
        image: Some(image.clone()),
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec![command]),
        env: Some(env),
        working_dir: Some("/".into()),
        host_config: Some(HostConfig {
            binds: Some(binds),
            shm_size: Some(2 << 30),
            network_mode: Some("none".into()),
            ..Default::default()
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
        log_line(
            &dir,
            &format!("AzureMLCompute job failed.\nJobContainerConfigFailed: {e}"),
        );
        return end("Failed");
    }
    tokio::time::sleep(step).await;
    set_status(&sh, &key, "Running");
    let code = match docker
        .start_container(
            &name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
    {
        Err(e) => {
            log_line(
                &dir,
                &format!("AzureMLCompute job failed.\nJobContainerConfigFailed: {e}"),
            );
            None
        }
        Ok(()) => Some(watch(&docker, &sh, &key, &name, &dir).await),
    };
    let _ = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    if canceled(&sh, &key) {
        return end("Canceled");
    }
    set_status(&sh, &key, "Finalizing");
    tokio::time::sleep(step).await;
    end(if code == Some(0) {
        "Completed"
    } else {
        "Failed"
    });
}

/// Streams the logs into std_log.txt and waits for the exit code; a cancel kills the container.
async fn watch(
    docker: &Docker,
    sh: &Arc<Shared>,
    key: &str,
    name: &str,
    dir: &std::path::Path,
) -> i64 {
    let log_path = dir.join("user_logs/std_log.txt");
    let docker2 = docker.clone();
    let name2 = name.to_owned();
    let logs = tokio::spawn(async move {
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
    });
    let sh2 = sh.clone();
    let (docker3, name3, key3) = (docker.clone(), name.to_owned(), key.to_owned());
    let killer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if canceled(&sh2, &key3) {
                let _ = docker3
                    .kill_container(&name3, None::<KillContainerOptions>)
                    .await;
                return;
            }
        }
    });
    let mut code = -1;
    let mut w = docker.wait_container(name, None::<WaitContainerOptions>);
    while let Some(r) = w.next().await {
        match r {
            Ok(x) => code = x.status_code,
            // bollard reports a non-zero exit as an error carrying the code.
            Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => code = c,
            Err(_) => {}
        }
    }
    killer.abort();
    let _ = logs.await;
    code
}

fn replace_ref(command: &str, name: &str, with: &str) -> String {
    let mut out = command.replace(&format!("${{{{{name}}}}}"), with);
    out = out.replace(&format!("${{{{ {name} }}}}"), with);
    out
}
