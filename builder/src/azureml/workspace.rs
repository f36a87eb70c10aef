//! Which Azure ML workspace: flags, then environment variables, then an Azure ML `config.json`
//! found the way the SDK finds it (the directory and its parents, `config.json` or `.azureml/config.json`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{AzureError, NameRule};

/// An Azure ML workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub subscription_id: String,
    pub resource_group: String,
    pub name: String,
}

impl Workspace {
    /// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices/workspaces/{ws}`.
    pub fn arm_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.MachineLearningServices/workspaces/{}",
            self.subscription_id, self.resource_group, self.name
        )
    }
}

/// Whether `s` is a valid workspace name: `^[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}$` (the 2025-12-01
/// WorkspaceNameParameter), 3 to 33 characters — stricter than asset names.
pub fn valid_workspace_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && (3..=33).contains(&s.len())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The three values, each possibly missing, from one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Partial {
    pub subscription_id: Option<String>,
    pub resource_group: Option<String>,
    pub workspace_name: Option<String>,
}

impl Partial {
    fn or(self, other: Partial) -> Partial {
        Partial {
            subscription_id: self.subscription_id.or(other.subscription_id),
            resource_group: self.resource_group.or(other.resource_group),
            workspace_name: self.workspace_name.or(other.workspace_name),
        }
    }
    fn complete(&self) -> bool {
        self.subscription_id.is_some()
            && self.resource_group.is_some()
            && self.workspace_name.is_some()
    }
}

/// From AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME (empty = unset).
pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Partial {
    let v = |k: &str| get(k).filter(|s| !s.trim().is_empty());
    Partial {
        subscription_id: v("AZURE_SUBSCRIPTION_ID"),
        resource_group: v("AZURE_RESOURCE_GROUP"),
        workspace_name: v("AZUREML_WORKSPACE_NAME"),
    }
}

/// The first `config.json` or `.azureml/config.json` in `start` or its parents.
pub fn find_config(start: &Path) -> Option<PathBuf> {
    let mut dir = Some(start);
    while let Some(d) = dir {
        for c in [d.join("config.json"), d.join(".azureml/config.json")] {
            if c.is_file() && looks_like_workspace_config(&c) {
                return Some(c);
            }
        }
        dir = d.parent();
    }
    None
}

/// A `config.json` that is not an Azure ML one (a tool's own config) is passed over.
fn looks_like_workspace_config(p: &Path) -> bool {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("subscription_id").is_some() || v.get("workspace_name").is_some())
}

/// Reads an Azure ML `config.json`.
pub fn read_config(p: &Path) -> Result<Partial, AzureError> {
    let bytes = std::fs::read(p).map_err(|source| AzureError::Io {
        what: format!("workspace config {}", p.display()),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| AzureError::BadConfig {
        path: p.to_path_buf(),
        source,
    })
}

/// Flags first, then the environment, then `config` (when given or found); all three names checked.
pub fn resolve(
    flags: Partial,
    env: Partial,
    config: Option<&Path>,
) -> Result<Workspace, AzureError> {
    let mut p = flags.or(env);
    let mut from = None;
    if !p.complete() {
        if let Some(c) = config {
            p = p.or(read_config(c)?);
            from = Some(c.to_path_buf());
        }
    }
    let missing: Vec<&str> = [
        (
            "subscription (--subscription, AZURE_SUBSCRIPTION_ID)",
            &p.subscription_id,
        ),
        (
            "resource group (--resource-group, AZURE_RESOURCE_GROUP)",
            &p.resource_group,
        ),
        (
            "workspace (--workspace, AZUREML_WORKSPACE_NAME)",
            &p.workspace_name,
        ),
    ]
    .iter()
    .filter(|(_, v)| v.is_none())
    .map(|(k, _)| *k)
    .collect();
    if !missing.is_empty() {
        return Err(AzureError::NoWorkspace {
            missing,
            config: from,
        });
    }
    let (s, r, w) = (
        p.subscription_id.unwrap_or_default(),
        p.resource_group.unwrap_or_default(),
        p.workspace_name.unwrap_or_default(),
    );
    let ok_part = |v: &str| {
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.()".contains(c))
    };
    if !ok_part(&s) || !ok_part(&r) {
        return Err(AzureError::BadWorkspacePath {
            subscription: s,
            resource_group: r,
        });
    }
    if !valid_workspace_name(&w) {
        return Err(AzureError::BadName {
            what: "workspace name",
            name: w,
            rule: NameRule::Workspace,
        });
    }
    Ok(Workspace {
        subscription_id: s,
        resource_group: r,
        name: w,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(s: Option<&str>, r: Option<&str>, w: Option<&str>) -> Partial {
        Partial {
            subscription_id: s.map(Into::into),
            resource_group: r.map(Into::into),
            workspace_name: w.map(Into::into),
        }
    }

    #[test]
    fn flags_beat_env_beat_config_found_in_a_parent() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::create_dir_all(t.path().join("a/.azureml")).unwrap();
        std::fs::write(
            t.path().join("a/.azureml/config.json"),
            r#"{"subscription_id":"sub-c","resource_group":"rg-c","workspace_name":"ws-c"}"#,
        )
        .unwrap();
        // A config.json that is not Azure ML's is passed over.
        std::fs::write(deep.join("config.json"), r#"{"other":"tool"}"#).unwrap();
        let found = find_config(&deep).unwrap();
        assert_eq!(found, t.path().join("a/.azureml/config.json"));
        let ws = resolve(
            part(None, None, Some("ws-flag")),
            part(Some("sub-env"), None, None),
            Some(&found),
        )
        .unwrap();
        assert_eq!(
            ws,
            Workspace {
                subscription_id: "sub-env".into(),
                resource_group: "rg-c".into(),
                name: "ws-flag".into()
            }
        );
        assert_eq!(
            ws.arm_id(),
            "/subscriptions/sub-env/resourceGroups/rg-c/providers/Microsoft.MachineLearningServices/workspaces/ws-flag"
        );
    }

    #[test]
    fn missing_parts_are_named() {
        let e = resolve(part(Some("s"), None, None), Partial::default(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("resource group (--resource-group"), "{e}");
        assert!(e.contains("workspace (--workspace"), "{e}");
        assert!(!e.contains("subscription ("), "{e}");
        let e = resolve(
            part(Some("s"), Some("r"), Some("bad/ws")),
            Partial::default(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("workspace name `bad/ws`"), "{e}");
        for ok in ["abc", "mlw-envbuild", "A_1", &"w".repeat(33)] {
            assert!(valid_workspace_name(ok), "{ok}");
        }
        for bad in ["ab", "-abc", "_abc", "a.bc", &"w".repeat(34), "wé1"] {
            assert!(!valid_workspace_name(bad), "{bad}");
            let e = resolve(
                part(Some("s"), Some("r"), Some(bad)),
                Partial::default(),
                None,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("3 to 33 letters"), "{e}");
        }
        let env = from_env(|k| (k == "AZURE_RESOURCE_GROUP").then(|| "rg".to_owned()));
        assert_eq!(env, part(None, Some("rg"), None));
    }
}
