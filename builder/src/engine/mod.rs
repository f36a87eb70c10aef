//! The local Docker engine, through bollard: connecting (DOCKER_HOST or the default socket, with
//! one clear error when nothing answers), images (load, pull, ask), making sure an image is
//! there ([`image`]), running a container ([`run`]), and `run --local` as a whole ([`local`]).

pub mod image;
pub mod local;
pub mod ranks;
pub mod run;

use std::path::Path;

use std::fmt;

use bollard::query_parameters::{CreateImageOptions, ImportImageOptions};
use bollard::Docker;
use futures_util::StreamExt;
use thiserror::Error;

/// What can go wrong talking to the engine.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("no Docker engine at {address} — is the daemon running? ({source})")]
    Unreachable {
        address: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker engine at {address}: {what}: {message}")]
    Failed {
        address: String,
        what: String,
        message: String,
    },
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The engine as `doctor` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub version: String,
    pub storage_driver: String,
    pub runtimes: Vec<String>,
}

impl Summary {
    /// An nvidia runtime is among the engine's runtimes.
    pub fn has_nvidia(&self) -> bool {
        self.runtimes.iter().any(|r| r.contains("nvidia"))
    }
}

/// A connected engine and the address it was reached at (for messages).
#[derive(Debug, Clone)]
pub struct Engine {
    pub docker: Docker,
    pub address: String,
}

/// The engine's address: `DOCKER_HOST`, else the default Unix socket.
pub fn address() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// Connects and pings, so that a missing daemon is one clear error here and not a confusing
/// one later.
pub async fn connect() -> Result<Engine, EngineError> {
    let address = address();
    let unreachable = |source| EngineError::Unreachable {
        address: address.clone(),
        source,
    };
    let docker = Docker::connect_with_defaults().map_err(unreachable)?;
    docker.ping().await.map_err(unreachable)?;
    Ok(Engine { docker, address })
}

impl Engine {
    pub(super) fn fail(&self, what: impl Into<String>, e: impl fmt::Display) -> EngineError {
        EngineError::Failed {
            address: self.address.clone(),
            what: what.into(),
            message: e.to_string(),
        }
    }

    /// Whether the engine reports an nvidia runtime (installed by nvidia-container-toolkit).
    pub async fn has_nvidia_runtime(&self) -> Result<bool, EngineError> {
        Ok(self.summary().await?.has_nvidia())
    }

    /// What the engine is: version, storage driver, runtimes (for `doctor`).
    pub async fn summary(&self) -> Result<Summary, EngineError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| self.fail("reading engine info", e))?;
        let mut runtimes: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        runtimes.sort();
        Ok(Summary {
            version: info.server_version.unwrap_or_default(),
            storage_driver: info.driver.unwrap_or_default(),
            runtimes,
        })
    }

    /// Whether the engine has an image by this name or ID.
    pub async fn has_image(&self, name: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(name).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.fail(format!("inspecting image {name}"), e)),
        }
    }

    /// Pulls `reference` (`registry/repo@sha256:…`) through the engine, with credentials if any.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<bollard::auth::DockerCredentials>,
    ) -> Result<(), EngineError> {
        let mut stream = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(reference.to_owned()),
                ..Default::default()
            }),
            None,
            credentials,
        );
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.fail(format!("pulling {reference}"), e))?;
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(self.fail(format!("pulling {reference}"), e));
            }
        }
        Ok(())
    }

    /// Loads a docker archive (as `docker load` does), streaming the file; returns the engine's
    /// messages ("Loaded image: …").
    pub async fn load_archive(&self, path: &Path) -> Result<Vec<String>, EngineError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| EngineError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let body = tokio_util::codec::FramedRead::new(file, tokio_util::codec::BytesCodec::new())
            .filter_map(|r| async move { r.ok().map(|b| b.freeze()) });
        let mut stream = self.docker.import_image_stream(
            ImportImageOptions {
                quiet: true,
                platform: None,
            },
            body,
            None,
        );
        let mut lines = Vec::new();
        while let Some(item) = stream.next().await {
            let fail = |message: String| EngineError::Failed {
                address: self.address.clone(),
                what: format!("loading {}", path.display()),
                message,
            };
            let info = item.map_err(|e| fail(e.to_string()))?;
            if let Some(e) = info.error.or(info.error_detail.and_then(|d| d.message)) {
                return Err(fail(e));
            }
            if let Some(s) = info.stream.or(info.status) {
                let s = s.trim().to_owned();
                if !s.is_empty() {
                    lines.push(s);
                }
            }
        }
        Ok(lines)
    }
}

/// The engine behind a runtime of its own, for blocking callers (the build, the registry client
/// and the CLI are blocking; bollard is async).
#[derive(Debug)]
pub struct Blocking {
    rt: tokio::runtime::Runtime,
    engine: Engine,
}

impl Blocking {
    /// Connects and pings ([`connect`]).
    pub fn connect() -> Result<Blocking, EngineError> {
        let rt = tokio::runtime::Runtime::new().map_err(EngineError::Runtime)?;
        let engine = rt.block_on(connect())?;
        Ok(Blocking { rt, engine })
    }

    /// Where the engine was reached (for messages).
    pub fn address(&self) -> &str {
        &self.engine.address
    }

    pub fn has_image(&self, name: &str) -> Result<bool, EngineError> {
        self.rt.block_on(self.engine.has_image(name))
    }

    pub fn has_nvidia_runtime(&self) -> Result<bool, EngineError> {
        self.rt.block_on(self.engine.has_nvidia_runtime())
    }

    pub fn summary(&self) -> Result<Summary, EngineError> {
        self.rt.block_on(self.engine.summary())
    }

    pub fn pull(
        &self,
        reference: &str,
        credentials: Option<bollard::auth::DockerCredentials>,
    ) -> Result<(), EngineError> {
        self.rt.block_on(self.engine.pull(reference, credentials))
    }

    pub fn load_archive(&self, path: &Path) -> Result<Vec<String>, EngineError> {
        self.rt.block_on(self.engine.load_archive(path))
    }

    pub fn run(
        &self,
        spec: &run::RunSpec,
        sink: std::sync::Arc<dyn run::Sink>,
    ) -> Result<(run::Outcome, String), EngineError> {
        self.rt.block_on(self.engine.run(spec, sink))
    }

    /// [`Engine::run_ranks`]: several containers as one data-parallel job.
    pub fn run_ranks(
        &self,
        specs: &[run::RunSpec],
        sink: std::sync::Arc<dyn run::Sink>,
    ) -> Result<(run::Outcome, Vec<String>), EngineError> {
        self.rt.block_on(self.engine.run_ranks(specs, sink))
    }
}
