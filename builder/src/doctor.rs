//! `envbuild doctor`: what this machine can do, one check a line — the Docker engine and its
//! nvidia runtime, GPUs and their driver against the CUDA 13 runtime of the default image, the
//! project venv's libtorch against the tch it pairs with, registry credentials by source (never
//! a secret), the Azure ML workspace and identity, the cache — each problem with the one command
//! that fixes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::auth::docker_config;
use crate::azureml::workspace;
use crate::engine::Blocking;

/// The lowest NVIDIA Linux driver that runs CUDA 13.0 (NVIDIA's CUDA 13.0 release notes,
/// "CUDA Toolkit and Corresponding Driver Versions": >= 580.65.06).
pub const CUDA13_DRIVER: (u32, u32) = (580, 65);
/// The libtorch the trainer's tch (0.24.0) is made for.
pub const TORCH_FOR_TCH: &str = "2.11.0";

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, with less (no GPU, nothing configured yet).
    Note,
    /// Something the user most likely wants fixed.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// The one command (or step) that fixes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(
    name: &'static str,
    status: Status,
    detail: impl Into<String>,
    fix: Option<&str>,
) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        fix: fix.map(str::to_owned),
    }
}

/// Every check, in order. `venv` is the project venv to look at, `cache` the cache root.
pub fn run(venv: &Path, cache: &Path) -> Vec<Check> {
    let mut out = engine();
    out.push(gpus());
    out.push(libtorch(venv));
    out.extend(credentials());
    out.push(azure());
    out.push(cache_size(cache));
    out
}

fn engine() -> Vec<Check> {
    let address = crate::engine::address();
    let engine = match Blocking::connect() {
        Ok(e) => e,
        Err(e) => {
            return vec![check(
            "engine",
            Status::Fail,
            e.to_string(),
            Some("start it (`sudo systemctl start docker`) or point DOCKER_HOST at a running one"),
        )]
        }
    };
    match engine.summary() {
        Ok(s) => {
            let nvidia = s.has_nvidia();
            vec![
                check(
                    "engine",
                    Status::Ok,
                    format!(
                        "Docker {} at {address}, storage driver {}, runtimes {}",
                        s.version,
                        s.storage_driver,
                        s.runtimes.join(", ")
                    ),
                    None,
                ),
                if nvidia {
                    check(
                        "nvidia runtime",
                        Status::Ok,
                        "the engine can give containers GPUs",
                        None,
                    )
                } else {
                    check(
                        "nvidia runtime",
                        Status::Note,
                        "none: run --local runs on the CPU",
                        Some("on a GPU machine: install nvidia-container-toolkit, then `sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`"),
                    )
                },
            ]
        }
        Err(e) => vec![check("engine", Status::Fail, e.to_string(), None)],
    }
}

/// `major.minor` of a driver version such as `580.65.06`.
pub fn driver_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn gpus() -> Check {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name,driver_version", "--format=csv,noheader"])
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        return check(
            "gpus",
            Status::Note,
            "no NVIDIA GPU found (no working nvidia-smi): images run on the CPU",
            None,
        );
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut gpus = Vec::new();
    let mut old = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (name, driver) = line.rsplit_once(',').unwrap_or((line, ""));
        let driver = driver.trim();
        if driver_version(driver).is_none_or(|v| v < CUDA13_DRIVER) {
            old = Some(driver.to_owned());
        }
        gpus.push(format!("{} (driver {driver})", name.trim()));
    }
    match old {
        None => check(
            "gpus",
            Status::Ok,
            format!("{}; the CUDA 13 runtime needs driver >= 580.65", gpus.join(", ")),
            None,
        ),
        Some(d) => check(
            "gpus",
            Status::Fail,
            format!("{}: driver {d} is older than the 580.65 the CUDA 13 runtime of the default image needs", gpus.join(", ")),
            Some("update the NVIDIA driver to 580 or newer (e.g. `sudo apt install nvidia-driver` from a current repository)"),
        ),
    }
}

/// The torch version of the venv at `venv` (from `torch/version.py`).
fn torch_version(venv: &Path) -> Option<(PathBuf, String)> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    for e in lib.flatten() {
        let p = e.path().join("site-packages/torch/version.py");
        if let Ok(text) = std::fs::read_to_string(&p) {
            let v = text.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|v| v.trim().trim_matches(['\'', '"']).to_owned())
            })?;
            return Some((p, v));
        }
    }
    None
}

fn libtorch(venv: &Path) -> Check {
    match torch_version(venv) {
        Some((_, v)) if v.split('+').next() == Some(TORCH_FOR_TCH) => check(
            "libtorch",
            Status::Ok,
            format!(
                "torch {v} in {}: pairs with the trainer's tch 0.24.0",
                venv.display()
            ),
            None,
        ),
        Some((_, v)) => check(
            "libtorch",
            Status::Fail,
            format!(
                "torch {v} in {}, but tch 0.24.0 needs libtorch {TORCH_FOR_TCH}",
                venv.display()
            ),
            Some("scripts/setup.sh (installs torch==2.11.0 into .venv)"),
        ),
        None => check(
            "libtorch",
            Status::Note,
            format!(
                "no torch in {} (needed to build the trainer, not to use envbuild)",
                venv.display()
            ),
            Some("scripts/setup.sh"),
        ),
    }
}

fn credentials() -> Vec<Check> {
    let mut out = Vec::new();
    match docker_config::sources() {
        Ok((path, sources)) if sources.is_empty() => out.push(check(
            "registry credentials",
            Status::Note,
            format!("none in {}", path.display()),
            Some("envbuild login REGISTRY --username U --password-stdin (or --auth entra for ACR)"),
        )),
        Ok((path, sources)) => {
            let list: Vec<String> = sources.iter().map(|(h, k)| format!("{h} ({k})")).collect();
            out.push(check(
                "registry credentials",
                Status::Ok,
                format!("{}: {}", path.display(), list.join(", ")),
                None,
            ));
        }
        Err(e) => out.push(check(
            "registry credentials",
            Status::Fail,
            e.to_string(),
            Some("fix or remove Docker's config.json"),
        )),
    }
    if set("ENVBUILD_REGISTRY_USERNAME") {
        out.push(check(
            "registry credentials",
            Status::Ok,
            format!(
                "ENVBUILD_REGISTRY_USERNAME is set{}",
                if set("ENVBUILD_REGISTRY_PASSWORD") {
                    ", with ENVBUILD_REGISTRY_PASSWORD"
                } else {
                    ", without ENVBUILD_REGISTRY_PASSWORD"
                }
            ),
            None,
        ));
    }
    out
}

/// Whether the environment variable `k` is set and not empty (its value is never read out).
fn set(k: &str) -> bool {
    std::env::var_os(k).is_some_and(|v| !v.is_empty())
}

/// Which Microsoft Entra ID credential the chain would try first, from the environment alone.
fn identity() -> String {
    if set("AZURE_CLIENT_ID") && set("AZURE_TENANT_ID") && set("AZURE_CLIENT_SECRET") {
        "identity: a service principal (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_CLIENT_SECRET set)"
            .into()
    } else if set("AZURE_FEDERATED_TOKEN_FILE") {
        "identity: workload identity (AZURE_FEDERATED_TOKEN_FILE)".into()
    } else if Command::new("az")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "identity: managed identity where there is one, else `az login`".into()
    } else {
        "identity: managed identity where there is one (no service principal variables, no az CLI)"
            .into()
    }
}

fn azure() -> Check {
    let config = std::env::current_dir()
        .ok()
        .and_then(|d| workspace::find_config(&d));
    let env = workspace::from_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    match workspace::resolve(workspace::Partial::default(), env, config.as_deref()) {
        Ok(ws) => check(
            "azure ml",
            Status::Ok,
            format!(
                "workspace {} (resource group {}, subscription {}); {}",
                ws.name,
                ws.resource_group,
                ws.subscription_id,
                identity()
            ),
            None,
        ),
        Err(_) => check(
            "azure ml",
            Status::Note,
            format!("no workspace configured; {}", identity()),
            Some("set AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME (or put Azure ML's config.json here)"),
        ),
    }
}

/// Bytes and files under `dir` (not following links).
fn du(dir: &Path) -> (u64, u64) {
    let mut total = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    total.0 += m.len();
                    total.1 += 1;
                }
                Err(_) => {}
            }
        }
    }
    total
}

fn cache_size(cache: &Path) -> Check {
    if !cache.exists() {
        return check(
            "cache",
            Status::Note,
            format!("{} (empty: nothing built yet)", cache.display()),
            None,
        );
    }
    let (bytes, files) = du(cache);
    // A fix only for a cache that has grown large.
    let fix = (bytes > 20_000_000_000).then(|| {
        format!(
            "envbuild cache prune --cache {} --keep-storage 10GB  (least recently used first)",
            cache.display()
        )
    });
    Check {
        fix,
        ..check(
            "cache",
            Status::Ok,
            format!(
                "{}: {:.1} GB in {files} files",
                cache.display(),
                bytes as f64 / 1e9
            ),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_are_judged_by_major_and_minor() {
        assert_eq!(driver_version("580.65.06"), Some((580, 65)));
        assert!(driver_version("575.57.08").unwrap() < CUDA13_DRIVER);
        assert!(driver_version("580.82.07").unwrap() >= CUDA13_DRIVER);
        assert_eq!(driver_version("n/a"), None);
    }

    #[test]
    fn the_venvs_torch_is_read_and_paired() {
        let d = tempfile::tempdir().unwrap();
        let c = libtorch(d.path());
        assert_eq!(c.status, Status::Note, "{c:?}");
        let t = d.path().join("lib/python3.11/site-packages/torch");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("version.py"), "__version__ = '2.10.0+cpu'\n").unwrap();
        let c = libtorch(d.path());
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("2.10.0+cpu") && c.fix.is_some(), "{c:?}");
        std::fs::write(t.join("version.py"), "__version__ = '2.11.0+cu130'\n").unwrap();
        assert_eq!(libtorch(d.path()).status, Status::Ok);
    }
}
