//! `envbuild run --local`: the image, by digest, on the local Docker engine — data mounted
//! read-only, outputs read-write and owned by the caller, GPUs requested when the engine has the
//! nvidia runtime, logs streamed live, the trainer's exit code returned, the container removed.
//!
//! The container is described by [`container_body`] (pure, unit-tested against the engine API's
//! JSON shape); `Engine::run` (in `ranks.rs`, the driver of one container or several) drives it:
//! create, attach, start, wait — or, on Ctrl-C/SIGTERM, stop it gracefully (SIGTERM, then SIGKILL
//! after a timeout) and remove it.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountTypeEnum};

use crate::auth::Credentials;
use crate::error::BadValue;

/// Where the data and the outputs appear inside the container.
pub const DATA_MOUNT: &str = "/data";
pub const OUTPUTS_MOUNT: &str = "/outputs";

/// `--gpus`: `auto` (the default) requests every GPU when the engine has the nvidia runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gpus {
    #[default]
    Auto,
    All,
    Count(u32),
    None,
}

impl FromStr for Gpus {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Gpus, BadValue> {
        match s {
            "auto" => Ok(Gpus::Auto),
            "all" => Ok(Gpus::All),
            "none" | "0" => Ok(Gpus::None),
            n => match n.parse::<u32>() {
                Ok(n) => Ok(Gpus::Count(n)),
                Err(_) => Err(BadValue::new(
                    s,
                    "a GPU request",
                    "auto, all, none or a count such as 2",
                )),
            },
        }
    }
}

impl fmt::Display for Gpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gpus::Auto => f.write_str("auto"),
            Gpus::All => f.write_str("all"),
            Gpus::Count(n) => write!(f, "{n}"),
            Gpus::None => f.write_str("none"),
        }
    }
}

/// The engine's DeviceRequest for `gpus`, given whether it has an nvidia runtime; `None` means
/// the CPU. `--gpus all|N` asks even without the runtime (the engine then says what is missing).
pub fn device_request(gpus: Gpus, nvidia_runtime: bool) -> Option<DeviceRequest> {
    let count = match gpus {
        Gpus::None => return None,
        Gpus::Auto if !nvidia_runtime => return None,
        Gpus::Auto | Gpus::All => -1,
        Gpus::Count(n) => i64::from(n),
    };
    Some(DeviceRequest {
        driver: Some("nvidia".into()),
        count: Some(count),
        device_ids: None,
        capabilities: Some(vec![vec!["gpu".into()]]),
        options: Some(HashMap::new()),
    })
}

/// Parses a size such as `2g`, `512m`, `1.5GiB` or `1073741824` (bytes; k/m/g/t are powers of
/// 1024, as in `docker run --shm-size`).
pub fn parse_size(s: &str) -> Result<i64, BadValue> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * (mult as f64) < 9.0e18 => {
            Ok((v * mult as f64) as i64)
        }
        _ => Err(BadValue::new(
            s,
            "a size",
            "e.g. 2g, 512m or a number of bytes",
        )),
    }
}

/// Everything about one local run except the image's origin.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// What the engine knows the image by: an image ID (`sha256:<config>`) or `repo@sha256:…`.
    pub image: String,
    /// Arguments after the image's entrypoint (the trainer's flags).
    pub args: Vec<String>,
    /// Host directory mounted read-only at [`DATA_MOUNT`].
    pub data: PathBuf,
    /// Host directory mounted read-write at [`OUTPUTS_MOUNT`].
    pub outputs: PathBuf,
    /// `KEY=VALUE` pairs added to the image's environment.
    pub env: Vec<String>,
    pub shm_size: Option<i64>,
    pub memory: Option<i64>,
    pub gpus: Option<DeviceRequest>,
    /// `uid:gid` the trainer runs as (the caller's, so outputs belong to them).
    pub user: String,
    /// Seconds between SIGTERM and SIGKILL when stopping.
    pub stop_timeout: u32,
    /// Keep the container after it exits.
    pub keep: bool,
}

/// The container as the engine API receives it.
pub fn container_body(spec: &RunSpec) -> ContainerCreateBody {
    let mut env = vec![
        format!("TRAINER_DATA={DATA_MOUNT}"),
        format!("TRAINER_OUTPUT={OUTPUTS_MOUNT}"),
        // An arbitrary uid has no home in the image; libraries that write caches want one.
        "HOME=/tmp".to_owned(),
    ];
    env.extend(spec.env.iter().cloned());
    let bind = |source: &PathBuf, target: &str, read_only: bool| Mount {
        target: Some(target.into()),
        source: Some(source.display().to_string()),
        typ: Some(MountTypeEnum::BIND),
        read_only: Some(read_only),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.args.clone()),
        env: Some(env),
        user: Some(spec.user.clone()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        labels: Some(HashMap::from([(
            "org.envbuild.run".to_owned(),
            "local".to_owned(),
        )])),
        stop_timeout: Some(i64::from(spec.stop_timeout)),
        host_config: Some(HostConfig {
            mounts: Some(vec![
                bind(&spec.data, DATA_MOUNT, true),
                bind(&spec.outputs, OUTPUTS_MOUNT, false),
            ]),
            shm_size: spec.shm_size,
            memory: spec.memory,
            device_requests: spec.gpus.clone().map(|g| vec![g]),
            // docker-init as PID 1 forwards SIGTERM to the trainer (PID 1 ignores it otherwise).
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Registry credentials in the form the engine takes for a pull (Entra credentials must have
/// been exchanged for an ACR refresh token first).
pub fn engine_credentials(c: &Credentials, registry: &str) -> bollard::auth::DockerCredentials {
    let mut d = bollard::auth::DockerCredentials {
        serveraddress: Some(registry.to_owned()),
        ..Default::default()
    };
    match c {
        Credentials::Basic { username, password } => {
            d.username = Some(username.clone());
            d.password = Some(password.expose().to_owned());
        }
        Credentials::IdentityToken(t) => d.identitytoken = Some(t.expose().to_owned()),
        // The engine cannot run the Entra chain: exchange it first (`Client::login`).
        Credentials::Entra => {}
    }
    d
}

/// Which of the container's streams a piece of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where a run's output and messages go: the caller decides (the CLI copies the container's
/// streams to its own; a test collects them). The library never prints.
pub trait Sink: Send + Sync {
    /// Bytes the container wrote, as they come.
    fn output(&self, stream: Stream, bytes: &[u8]);
    /// A line about the run (container id, stopping, pulling).
    fn message(&self, text: &str);
    /// Where the build and the image's load show their progress; nowhere by default.
    fn progress(&self) -> &dyn crate::progress::Progress {
        &crate::progress::Hidden
    }
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The trainer exited with this code.
    Exited { code: i64, oom_killed: bool },
    /// A signal (2 = Ctrl-C, 15 = SIGTERM) stopped it.
    Interrupted { signal: i32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(gpus: Option<DeviceRequest>) -> RunSpec {
        RunSpec {
            image: "sha256:abc".into(),
            args: vec!["--epochs".into(), "1".into()],
            data: "/srv/data".into(),
            outputs: "/home/u/outputs".into(),
            env: vec!["A=1".into()],
            shm_size: Some(2 << 30),
            memory: None,
            gpus,
            user: "1000:1000".into(),
            stop_timeout: 10,
            keep: false,
        }
    }

    #[test]
    fn gpu_request_has_the_engine_api_shape() {
        // What `docker run --gpus all` sends (moby api/types/container.DeviceRequest).
        let body = container_body(&spec(device_request(Gpus::All, false)));
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json["HostConfig"]["DeviceRequests"],
            serde_json::json!([{
                "Driver": "nvidia",
                "Count": -1,
                "Capabilities": [["gpu"]],
                "Options": {}
            }])
        );
        let two = serde_json::to_value(device_request(Gpus::Count(2), true)).unwrap();
        assert_eq!(two["Count"], 2);
        assert_eq!(
            device_request(Gpus::Auto, true),
            device_request(Gpus::All, false)
        );
        assert_eq!(device_request(Gpus::Auto, false), None);
        assert_eq!(device_request(Gpus::None, true), None);
        let cpu = serde_json::to_value(container_body(&spec(None))).unwrap();
        assert!(cpu["HostConfig"].get("DeviceRequests").is_none());
    }

    #[test]
    fn mounts_user_and_environment() {
        let json = serde_json::to_value(container_body(&spec(None))).unwrap();
        assert_eq!(
            json["HostConfig"]["Mounts"],
            serde_json::json!([
                {"Target": "/data", "Source": "/srv/data", "Type": "bind", "ReadOnly": true},
                {"Target": "/outputs", "Source": "/home/u/outputs", "Type": "bind", "ReadOnly": false}
            ])
        );
        assert_eq!(json["User"], "1000:1000");
        assert_eq!(json["HostConfig"]["ShmSize"], 2i64 << 30);
        assert_eq!(json["HostConfig"]["Init"], true);
        assert_eq!(json["Cmd"], serde_json::json!(["--epochs", "1"]));
        let env: Vec<&str> = json["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(env.contains(&"TRAINER_DATA=/data") && env.contains(&"A=1"));
        assert_eq!(env.last(), Some(&"A=1"), "user variables come last and win");
    }

    #[test]
    fn gpus_and_sizes_parse() {
        assert_eq!("auto".parse(), Ok(Gpus::Auto));
        assert_eq!("all".parse(), Ok(Gpus::All));
        assert_eq!("3".parse(), Ok(Gpus::Count(3)));
        assert_eq!("none".parse(), Ok(Gpus::None));
        assert!("two"
            .parse::<Gpus>()
            .unwrap_err()
            .to_string()
            .contains("`two`"));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "g", "-1g", "lots", "0"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
