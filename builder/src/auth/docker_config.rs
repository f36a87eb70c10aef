//! Docker's credential store, read and written the way `docker login` does: `config.json` in
//! `$DOCKER_CONFIG` (default `~/.docker`) with `auths` (`auth`, `identitytoken`), and
//! `credHelpers` / `credsStore`, which hand credentials to `docker-credential-<name>` programs
//! (`get`/`store`/`erase`, server URL or JSON on stdin, JSON on stdout).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{json, Map, Value};
use thiserror::Error;

use super::{Credentials, Secret, ACR_TOKEN_USERNAME};

/// Why the credential store could not be read or written.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a Docker config file: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("credential helper docker-credential-{helper} {action} for {registry}: {message}")]
    Helper {
        helper: String,
        action: &'static str,
        registry: String,
        message: String,
        config: PathBuf,
    },
    #[error("no home directory: set DOCKER_CONFIG or HOME")]
    NoHome,
}

impl crate::error::Hint for ConfigError {
    fn hint(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            ConfigError::Helper { helper, config, .. } => Some(format!("is docker-credential-{helper} installed and on PATH? (named by credHelpers/credsStore in {})", config.display()).into()),
            _ => None,
        }
    }
}

/// The directory of Docker's `config.json`: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn config_dir() -> Result<PathBuf, ConfigError> {
    std::env::var_os("DOCKER_CONFIG")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
        .ok_or(ConfigError::NoHome)
}

/// Where Docker's config gives credentials, by registry host, never the secrets: `auths` keys
/// (with what kind of secret each holds), `credHelpers` entries, and the `credsStore` for the
/// rest. Returns the config file and the sources.
pub fn sources() -> Result<(PathBuf, Vec<(String, String)>), ConfigError> {
    let path = config_dir()?.join("config.json");
    let config = read_config(&path)?;
    let mut out = Vec::new();
    if let Some(Value::Object(auths)) = config.get("auths") {
        for (host, entry) in auths {
            let kind = if entry
                .get("identitytoken")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty())
            {
                "auths: identity token"
            } else if entry
                .get("auth")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty())
            {
                "auths: user and password"
            } else {
                "auths: empty entry"
            };
            out.push((host.clone(), kind.to_owned()));
        }
    }
    if let Some(Value::Object(helpers)) = config.get("credHelpers") {
        for (host, helper) in helpers {
            out.push((
                host.clone(),
                format!(
                    "credHelpers: docker-credential-{}",
                    helper.as_str().unwrap_or("?")
                ),
            ));
        }
    }
    if let Some(store) = config.get("credsStore").and_then(Value::as_str) {
        out.push(("*".into(), format!("credsStore: docker-credential-{store}")));
    }
    Ok((path, out))
}

fn read_config(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Map::new()),
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: "the top level is not an object".into(),
            }),
            Err(e) => Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(source) => Err(ConfigError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `auths` keys may be URLs (`https://host/v1/`); this compares their host part.
fn same_host(key: &str, registry: &str) -> bool {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    k.split('/').next() == Some(registry)
}

/// The credential helper for `registry`: `credHelpers[registry]`, else `credsStore`.
fn helper_for(config: &Map<String, Value>, registry: &str) -> Option<String> {
    config
        .get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| same_host(k, registry))
                .and_then(|(_, v)| v.as_str())
        })
        .or_else(|| config.get("credsStore").and_then(Value::as_str))
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

fn from_user_secret(username: &str, secret: String) -> Credentials {
    if username == "<token>" || (username == ACR_TOKEN_USERNAME && secret.contains('.')) {
        // Docker's helpers mark identity tokens with `<token>`; ACR's refresh tokens (JWTs)
        // come with the all-zero user name.
        Credentials::IdentityToken(Secret::new(secret))
    } else {
        Credentials::Basic {
            username: username.to_owned(),
            password: Secret::new(secret),
        }
    }
}

fn run_helper(
    helper: &str,
    action: &'static str,
    registry: &str,
    input: &[u8],
) -> Result<std::process::Output, ConfigError> {
    let err = |message: String| ConfigError::Helper {
        helper: helper.to_owned(),
        action,
        registry: registry.to_owned(),
        message,
        config: config_dir().unwrap_or_default().join("config.json"),
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .map_err(|e| err(e.to_string()))?;
    child.wait_with_output().map_err(|e| err(e.to_string()))
}

/// Credentials for `registry` from Docker's config: through its credential helper when one is
/// configured, else `auths.<host>` (`identitytoken`, or `auth` = base64 `user:password`).
pub fn credentials(registry: &str) -> Result<Option<Credentials>, ConfigError> {
    let path = config_dir()?.join("config.json");
    let config = read_config(&path)?;
    if let Some(helper) = helper_for(&config, registry) {
        let out = run_helper(&helper, "get", registry, registry.as_bytes())?;
        if !out.status.success() {
            // "credentials not found in native keychain": nothing stored for this registry.
            return Ok(None);
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| ConfigError::Helper {
            helper: helper.clone(),
            action: "get",
            registry: registry.to_owned(),
            message: format!("answered non-JSON: {e}"),
            config: path.clone(),
        })?;
        let user = v["Username"].as_str().unwrap_or_default();
        let secret = v["Secret"].as_str().unwrap_or_default();
        if secret.is_empty() {
            return Ok(None);
        }
        return Ok(Some(from_user_secret(user, secret.to_owned())));
    }
    let Some(entry) = config
        .get("auths")
        .and_then(Value::as_object)
        .and_then(|a| a.iter().find(|(k, _)| same_host(k, registry)))
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    if let Some(t) = entry["identitytoken"].as_str().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken(Secret::new(t))));
    }
    let Some(text) = entry["auth"]
        .as_str()
        .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
        .and_then(|d| String::from_utf8(d).ok())
    else {
        return Ok(None);
    };
    Ok(text
        .split_once(':')
        .filter(|(_, p)| !p.is_empty())
        .map(|(u, p)| from_user_secret(u, p.to_owned())))
}

/// Where [`store`] put the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// In `config.json` itself.
    File(PathBuf),
    /// With `docker-credential-<helper>`.
    Helper(String),
}

/// Stores `creds` for `registry` as `docker login` does: through the configured credential
/// helper, else in `config.json` (identity tokens as `identitytoken` with the all-zero user
/// name, passwords as `auth`). The file is replaced atomically, keeps its other keys, and is
/// readable by its owner only.
pub fn store(registry: &str, creds: &Credentials) -> Result<Stored, ConfigError> {
    let dir = config_dir()?;
    let path = dir.join("config.json");
    let mut config = read_config(&path)?;
    let (user, secret) = match creds {
        Credentials::Basic { username, password } => (username.as_str(), password.expose()),
        Credentials::IdentityToken(t) => (ACR_TOKEN_USERNAME, t.expose()),
        Credentials::Entra => return Ok(Stored::File(path)),
    };
    let stored = if let Some(helper) = helper_for(&config, registry) {
        let input = json!({"ServerURL": registry, "Username": user, "Secret": secret}).to_string();
        let out = run_helper(&helper, "store", registry, input.as_bytes())?;
        if !out.status.success() {
            return Err(ConfigError::Helper {
                helper,
                action: "store",
                registry: registry.to_owned(),
                message: String::from_utf8_lossy(&out.stdout).trim().to_owned()
                    + String::from_utf8_lossy(&out.stderr).trim(),
                config: path,
            });
        }
        // Docker keeps an empty entry in `auths` for registries whose secret a helper holds.
        auths(&mut config).insert(registry.to_owned(), json!({}));
        Stored::Helper(helper)
    } else {
        let entry = match creds {
            Credentials::IdentityToken(t) => json!({
                "auth": base64::engine::general_purpose::STANDARD.encode(format!("{ACR_TOKEN_USERNAME}:")),
                "identitytoken": t.expose(),
            }),
            _ => json!({
                "auth": base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}")),
            }),
        };
        let auths = auths(&mut config);
        auths.retain(|k, _| !same_host(k, registry));
        auths.insert(registry.to_owned(), entry);
        Stored::File(path.clone())
    };
    write_atomically(&dir, &path, &Value::Object(config))?;
    Ok(stored)
}

fn auths(config: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let a = config
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !a.is_object() {
        *a = Value::Object(Map::new());
    }
    a.as_object_mut().expect("object")
}

fn write_atomically(dir: &Path, path: &Path, v: &Value) -> Result<(), ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".config.json.")
        .tempfile_in(dir)
        .map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    let mut text = serde_json::to_string_pretty(v).expect("JSON");
    text.push('\n');
    tmp.write_all(text.as_bytes()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_helpers() {
        assert!(same_host("https://index.docker.io/v1/", "index.docker.io"));
        assert!(same_host("myacr.azurecr.io", "myacr.azurecr.io"));
        assert!(!same_host("myacr.azurecr.io.evil", "myacr.azurecr.io"));
        let c: Map<String, Value> = serde_json::from_str(
            r#"{"credsStore":"desktop","credHelpers":{"myacr.azurecr.io":"acr-env"}}"#,
        )
        .unwrap();
        assert_eq!(
            helper_for(&c, "myacr.azurecr.io").as_deref(),
            Some("acr-env")
        );
        assert_eq!(helper_for(&c, "ghcr.io").as_deref(), Some("desktop"));
        assert!(matches!(
            from_user_secret("<token>", "t".into()),
            Credentials::IdentityToken(_)
        ));
        assert!(matches!(
            from_user_secret("alice", "pw".into()),
            Credentials::Basic { .. }
        ));
    }
}
