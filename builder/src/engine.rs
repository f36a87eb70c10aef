//! The local Docker engine, through bollard: connecting (DOCKER_HOST or the default socket, with
//! one clear error when nothing answers) and loading a docker archive.

use std::path::Path;

use bollard::query_parameters::ImportImageOptions;
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
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
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
