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
use crate::jobio::CODE_MOUNT;

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
    /// `run --code`: a command job's container instead of the trainer's (`data` and `outputs`
    /// are then not mounted).
    pub job: Option<JobLayout>,
}

/// A command job's container, laid out as Azure ML lays it out: the code snapshot read-only at
/// [`CODE_MOUNT`] and the working directory, each input read-only and each output read-write
/// at its path under `/mnt/azureml`, and the command run by `/bin/sh -c` in place of the
/// image's entrypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLayout {
    /// Host directory holding the code snapshot (its files only).
    pub code: PathBuf,
    /// Host path (a folder or a file) and where it appears in the container, read-only.
    pub inputs: Vec<(PathBuf, String)>,
    /// Host folder and where it appears in the container, read-write.
    pub outputs: Vec<(PathBuf, String)>,
    /// The command line, references expanded.
    pub command: String,
}

/// The container as the engine API receives it.
pub fn container_body(spec: &RunSpec) -> ContainerCreateBody {
    let mut env = match spec.job {
        None => vec![
            format!("TRAINER_DATA={DATA_MOUNT}"),
            format!("TRAINER_OUTPUT={OUTPUTS_MOUNT}"),
        ],
        Some(_) => vec![],
    };
    // An arbitrary uid has no home in the image; libraries that write caches want one.
    env.push("HOME=/tmp".to_owned());
    env.extend(spec.env.iter().cloned());
    let bind = |source: &PathBuf, target: &str, read_only: bool| Mount {
        target: Some(target.into()),
        source: Some(source.display().to_string()),
        typ: Some(MountTypeEnum::BIND),
        read_only: Some(read_only),
        ..Default::default()
    };
    let (mounts, entrypoint, cmd, working_dir) = match &spec.job {
        None => (
            vec![
                bind(&spec.data, DATA_MOUNT, true),
                bind(&spec.outputs, OUTPUTS_MOUNT, false),
            ],
            None,
            spec.args.clone(),
            None,
        ),
        Some(job) => {
            let mut mounts = vec![bind(&job.code, CODE_MOUNT, true)];
            mounts.extend(job.inputs.iter().map(|(h, c)| bind(h, c, true)));
            mounts.extend(job.outputs.iter().map(|(h, c)| bind(h, c, false)));
            (
                mounts,
                Some(vec!["/bin/sh".to_owned(), "-c".to_owned()]),
                vec![job.command.clone()],
                Some(CODE_MOUNT.to_owned()),
            )
        }
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint,
        cmd: Some(cmd),
        working_dir,
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
            mounts: Some(mounts),
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
            job: None,
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
    fn a_command_job_gets_azure_mls_layout_and_its_command_in_place_of_the_entrypoint() {
        let mut s = spec(None);
        s.job = Some(JobLayout {
            code: "/cache/tmp/code-1".into(),
            inputs: vec![
                ("/srv/data".into(), "/mnt/azureml/inputs/data".into()),
                (
                    "/srv/c/conf.yaml".into(),
                    "/mnt/azureml/inputs/cfg/conf.yaml".into(),
                ),
            ],
            outputs: vec![(
                "/home/u/outputs/model".into(),
                "/mnt/azureml/outputs/model".into(),
            )],
            command: "python train.py --data /mnt/azureml/inputs/data".into(),
        });
        let json = serde_json::to_value(container_body(&s)).unwrap();
        assert_eq!(
            json["HostConfig"]["Mounts"],
            serde_json::json!([
                {"Target": "/mnt/azureml/code", "Source": "/cache/tmp/code-1", "Type": "bind", "ReadOnly": true},
                {"Target": "/mnt/azureml/inputs/data", "Source": "/srv/data", "Type": "bind", "ReadOnly": true},
                {"Target": "/mnt/azureml/inputs/cfg/conf.yaml", "Source": "/srv/c/conf.yaml", "Type": "bind", "ReadOnly": true},
                {"Target": "/mnt/azureml/outputs/model", "Source": "/home/u/outputs/model", "Type": "bind", "ReadOnly": false}
            ])
        );
        assert_eq!(json["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
        assert_eq!(
            json["Cmd"],
            serde_json::json!(["python train.py --data /mnt/azureml/inputs/data"])
        );
        assert_eq!(json["WorkingDir"], "/mnt/azureml/code");
        assert_eq!(json["User"], "1000:1000");
        assert_eq!(json["HostConfig"]["Init"], true);
        let env = json["Env"].as_array().unwrap();
        assert!(
            !env.iter()
                .any(|v| v.as_str().unwrap().starts_with("TRAINER_")),
            "{env:?}"
        );
        // The trainer's container keeps the image's entrypoint and working directory.
        let trainer = serde_json::to_value(container_body(&spec(None))).unwrap();
        assert!(trainer.get("Entrypoint").is_none() && trainer.get("WorkingDir").is_none());
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
