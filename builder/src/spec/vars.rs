//! `${NAME}` variables of environment files: the built-ins of a file's location (`ENV_DIR`,
//! `PROJECT_ROOT`, `CARGO_TARGET_DIR`, `ENVBUILD_SITE`), then the process environment, and their
//! expansion with `${NAME:-default}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Values for `${NAME}` in an environment file: the built-ins, then the process environment.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub values: BTreeMap<String, String>,
}

impl Vars {
    /// The built-in variables for a file at `path`, then the process environment:
    /// `ENV_DIR` (the file's directory), `PROJECT_ROOT` (its parent, the checkout),
    /// `CARGO_TARGET_DIR` (default `PROJECT_ROOT/target`), `ENVBUILD_SITE` (default the
    /// site-packages of `PROJECT_ROOT/.venv`).
    pub fn for_file(path: &Path) -> Vars {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        let root = dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.clone());
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        values.insert("ENV_DIR".into(), dir.display().to_string());
        values.insert("PROJECT_ROOT".into(), root.display().to_string());
        values.insert(
            "CARGO_TARGET_DIR".into(),
            root.join("target").display().to_string(),
        );
        if let Some(site) = find_site(&root.join(".venv")) {
            values.insert("ENVBUILD_SITE".into(), site.display().to_string());
        }
        for (k, v) in std::env::vars() {
            if k != "ENV_DIR" && k != "PROJECT_ROOT" {
                values.insert(k, v);
            }
        }
        Vars { values }
    }

    /// Expands `${NAME}` and `${NAME:-default}`; `$$` is a literal `$`.
    pub fn expand(&self, s: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('$') {
                out.push('$');
                rest = r;
                continue;
            }
            let Some(r) = rest.strip_prefix('{') else {
                return Err(format!(
                    "`$` must start `${{NAME}}` or be doubled (`$$`) in `{s}`"
                ));
            };
            let mut depth = 1;
            let end = r
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .ok_or_else(|| format!("unclosed `${{` in `{s}`"))?;
            let body = &r[..end];
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            match (self.values.get(name), default) {
                (Some(v), _) if !v.is_empty() => out.push_str(v),
                (_, Some(d)) => out.push_str(&self.expand(d)?),
                _ => {
                    return Err(format!(
                        "variable {name} is not set (set it in the environment; built-ins are ENV_DIR, PROJECT_ROOT, CARGO_TARGET_DIR, ENVBUILD_SITE)"
                    ))
                }
            }
            rest = &r[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn find_site(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    let mut pythons: Vec<PathBuf> = lib
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("site-packages").is_dir())
        .collect();
    pythons.sort();
    pythons.pop().map(|p| p.join("site-packages"))
}
