//! What the Azure ML commands share: the workspace client (credential chain, config.json), the
//! environment version a run or sweep source names (built, checked to be registered), and
//! detaching on Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;

use envbuild::azureml::{environment, Client};
use envbuild::error::Hinted;

use super::{CacheArgs, TransportArgs, WorkspaceArgs};
use crate::cli::Stderr;

/// The workspace and a client for it.
pub fn client(ws: &WorkspaceArgs) -> anyhow::Result<Client> {
    ws.client()
}

/// What a source names: an image by digest, or an environment file.
pub enum Source {
    Image(String),
    File(PathBuf),
}

pub fn source(s: &str) -> Source {
    if Path::new(s).is_file() || s.ends_with(".toml") {
        Source::File(s.into())
    } else {
        Source::Image(s.to_owned())
    }
}

pub fn env_name(
    flag: &Option<String>,
    env: Option<&envbuild::spec::Environment>,
) -> anyhow::Result<String> {
    flag.clone()
        .or_else(|| env.and_then(|e| e.publish.azureml_environment.clone()))
        .or_else(|| env.map(|e| e.name.clone()))
        .context("no environment name: pass --name")
}

/// The environment version's ARM id and name for a run source.
pub fn environment_for_run(
    client: &Client,
    src: &str,
    environment_name: &Option<String>,
    cache: &CacheArgs,
    transport: &TransportArgs,
) -> anyhow::Result<(String, String)> {
    let ws = client.workspace.arm_id();
    if let Some(rest) = src.strip_prefix("azureml:") {
        let (name, version) = rest
            .split_once(':')
            .with_context(|| format!("`{src}`: give azureml:NAME:VERSION (ARM has no @latest)"))?;
        return Ok((
            format!("{ws}/environments/{name}/versions/{version}"),
            name.to_owned(),
        ));
    }
    let (name, version) = match source(src) {
        Source::File(f) => {
            let (env, built) = envbuild::build::build_file(
                &f,
                &cache.open()?,
                &transport.build(None, false)?,
                &mut Stderr,
            )?;
            (
                env_name(environment_name, Some(&env))?,
                environment::version_for(&built.image.digest),
            )
        }
        Source::Image(i) => {
            let name = environment_name
                .clone()
                .context("an image source needs --environment-name (the registered environment)")?;
            let v = environment::EnvironmentVersion::new(&name, &i, None, None)?;
            (name, v.version)
        }
    };
    let path = format!("environments/{name}/versions/{version}");
    if client.get_opt(&path)?.is_none() {
        return Err(Hinted::new(
            format!(
                "environment {name} version {version} is not registered in workspace {}",
                client.workspace.name
            ),
            format!("`envbuild deploy {src}` builds, pushes and registers it"),
        )
        .into());
    }
    Ok((format!("{ws}/{path}"), name))
}

/// How the workspace's storage is reached: the CA bundle of ARM's (`ENVBUILD_CA_FILE`), the
/// Blob client's defaults otherwise.
pub fn blob_settings(ws: &WorkspaceArgs) -> envbuild::blob::BlobSettings {
    envbuild::blob::BlobSettings {
        ca_file: ws.azure_ca_file.clone(),
        ..Default::default()
    }
}

/// Sets the flag on the first Ctrl-C (the job keeps running; we only stop following).
pub fn detach_on_ctrl_c() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
            f.store(true, Ordering::SeqCst);
        }
    });
    flag
}
