//! Where MLflow tracking is and how to sign in: `MLFLOW_TRACKING_URI` as an http(s) base URL
//! or Azure ML's `azureml://` form, rewritten the way the azureml-mlflow plugin does, and the
//! credentials MLflow clients read (`MLFLOW_TRACKING_USERNAME`/`PASSWORD`, `MLFLOW_TRACKING_TOKEN`).

use std::fmt;

use base64::Engine;

/// The path Azure ML's plugin puts between the host and the workspace scope for MLflow 2 and 3
/// clients (azureml-mlflow 1.62, `_store/azureml_reststore.py`), whatever version the job's
/// `azureml://` URI names (jobs set `/mlflow/v1.0`).
pub const AZUREML_API: &str = "/mlflow/v2.0";

const PROVIDER: &str = "Microsoft.MachineLearningServices";

/// A tracking server's REST base: requests go to `{base}/api/2.0/mlflow/...`.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port][/path]` without a trailing slash, query or user info.
    pub base: String,
    /// User info of an http(s) URI (`user:password@`), sent as Basic credentials.
    userinfo: Option<Secret>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &self.base)
            .field("userinfo", &self.userinfo)
            .finish()
    }
}

/// What was wrong with `MLFLOW_TRACKING_URI` (shown without user info or query).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MLFLOW_TRACKING_URI {shown}: {problem}")]
pub struct UriError {
    pub shown: String,
    pub problem: String,
}

/// A credential: `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The value, only where it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The `Authorization` header value, as MLflow's `rest_utils.http_request` chooses it: Basic
/// when a user name and a password are set, else Bearer with the token, else none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Header(Secret),
}

impl Auth {
    /// From the variables MLflow clients read; an http(s) URI's user info counts as Basic
    /// credentials when the variables name none.
    pub fn from_env(var: &impl Fn(&str) -> Option<String>, endpoint: &Endpoint) -> Auth {
        let set = |k: &str| var(k).filter(|v| !v.is_empty());
        if let (Some(u), Some(p)) = (
            set("MLFLOW_TRACKING_USERNAME"),
            set("MLFLOW_TRACKING_PASSWORD"),
        ) {
            return Auth::basic(&format!("{u}:{p}"));
        }
        if let Some(t) = set("MLFLOW_TRACKING_TOKEN") {
            return Auth::Header(Secret(format!("Bearer {t}")));
        }
        match &endpoint.userinfo {
            Some(ui) => Auth::basic(ui.expose()),
            None => Auth::None,
        }
    }

    fn basic(user_colon_password: &str) -> Auth {
        let b64 = base64::engine::general_purpose::STANDARD.encode(user_colon_password);
        Auth::Header(Secret(format!("Basic {b64}")))
    }
}

/// `uri` without user info, query or fragment: safe to print.
pub fn shown(uri: &str) -> String {
    let uri = uri.trim();
    let cut = uri.find(['?', '#']).unwrap_or(uri.len());
    let uri = &uri[..cut];
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}{path}")
        }
        None => uri.to_owned(),
    }
}

/// Parses `MLFLOW_TRACKING_URI` into the REST base the trainer calls.
///
/// - `http://HOST[:PORT][/PREFIX]`, `https://…`: the base itself (query and fragment dropped).
/// - `azureml://HOST/mlflow/vX/subscriptions/S/resourceGroups/RG/providers/Microsoft.MachineLearningServices/workspaces/WS[?…]`:
///   `https://HOST/mlflow/v2.0/subscriptions/S/resourceGroups/RG/providers/Microsoft.MachineLearningServices/workspaces/WS`,
///   as azureml-mlflow builds it (`host_url = "https://" + netloc`, then [`AZUREML_API`] and the
///   workspace scope taken apart and put back by its `_WORKSPACE_INFO_REGEX`).
/// - Anything else (a path, `file:`, `sqlite:`, `databricks`, an Azure ML registry URI): an
///   error, since the trainer speaks only the REST API.
pub fn endpoint(uri: &str) -> Result<Endpoint, UriError> {
    let err = |problem: &str| UriError {
        shown: shown(uri),
        problem: problem.to_owned(),
    };
    let trimmed = uri.trim();
    let cut = trimmed.find(['?', '#']).unwrap_or(trimmed.len());
    let Some((scheme, rest)) = trimmed[..cut].split_once("://") else {
        return Err(err(
            "not a URL; the trainer logs through MLflow's REST API (http://, https:// or azureml://), not to local files",
        ));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((ui, h)) => (Some(Secret(ui.to_owned())), h),
        None => (None, authority),
    };
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https" | "azureml") {
        return Err(err(&format!(
            "scheme `{scheme}` is not supported; the trainer logs through MLflow's REST API (http://, https:// or azureml://)"
        )));
    }
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(err("no host"));
    }
    match scheme.as_str() {
        "azureml" => {
            let (sub, rg, ws) = workspace_scope(path).ok_or_else(|| {
                err("not an Azure ML workspace tracking URI (azureml://HOST/mlflow/vX/subscriptions/…/resourceGroups/…/providers/Microsoft.MachineLearningServices/workspaces/…)")
            })?;
            Ok(Endpoint {
                base: format!(
                    "https://{host}{AZUREML_API}/subscriptions/{sub}/resourceGroups/{rg}/providers/{PROVIDER}/workspaces/{ws}"
                ),
                userinfo: None,
            })
        }
        _ => Ok(Endpoint {
            base: format!("{scheme}://{host}{}", path.trim_end_matches('/')),
            userinfo,
        }),
    }
}

/// Subscription, resource group and workspace from an `azureml://` path, as the plugin's
/// `.*/subscriptions/(.+)/resourceGroups/(.+)/providers/Microsoft.MachineLearningServices/workspaces/([^/]+)`
/// reads them (anything after the workspace name is ignored, as its `re.match` does).
fn workspace_scope(path: &str) -> Option<(&str, &str, &str)> {
    let segs: Vec<&str> = path.split('/').collect();
    let i = segs.iter().position(|s| *s == "subscriptions")?;
    match segs.get(i + 1..i + 8)? {
        [sub, "resourceGroups", rg, "providers", PROVIDER, "workspaces", ws]
            if !sub.is_empty() && !rg.is_empty() && !ws.is_empty() =>
        {
            Some((sub, rg, ws))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCOPE: &str = "/subscriptions/0000-11/resourceGroups/rg-ml/providers/Microsoft.MachineLearningServices/workspaces/ws1";

    #[test]
    fn azureml_uri_becomes_the_plugins_https_url() {
        // The form Azure ML jobs set (seen in mlflow/mlflow#7806 and microsoft/MLOps#74).
        let job = format!("azureml://eastus2.api.azureml.ms/mlflow/v1.0{SCOPE}?");
        assert_eq!(
            endpoint(&job).unwrap().base,
            format!("https://eastus2.api.azureml.ms/mlflow/v2.0{SCOPE}")
        );
        // v2.0 stays v2.0; a query (the plugin's `is-remote=True`) and a trailing path go.
        let v2 = format!(
            "azureml://westeurope.api.azureml.ms/mlflow/v2.0{SCOPE}/experiments/x?is-remote=True"
        );
        assert_eq!(
            endpoint(&v2).unwrap().base,
            format!("https://westeurope.api.azureml.ms/mlflow/v2.0{SCOPE}")
        );
        // A private-link host is kept as it is.
        let pl = format!("azureml://abc.workspace.eastus.api.azureml.ms/mlflow/v1.0{SCOPE}");
        assert!(endpoint(&pl)
            .unwrap()
            .base
            .starts_with("https://abc.workspace.eastus.api.azureml.ms/mlflow/v2.0/subscriptions/"));
    }

    #[test]
    fn http_uris_keep_their_prefix_and_lose_query_and_user_info() {
        let e = endpoint("http://127.0.0.1:5000/").unwrap();
        assert_eq!(e.base, "http://127.0.0.1:5000");
        let e = endpoint(" HTTPS://u:p4ss@mlflow.example/prefix/?x=1 ").unwrap();
        assert_eq!(e.base, "https://mlflow.example/prefix");
        assert!(!format!("{e:?}").contains("p4ss"), "{e:?}");
        assert_eq!(
            shown("https://u:p4ss@mlflow.example/p?token=t"),
            "https://mlflow.example/p"
        );
    }

    #[test]
    fn what_the_trainer_cannot_speak_is_refused_with_the_reason() {
        for (uri, says) in [
            ("/tmp/mlruns", "not a URL"),
            ("file:///tmp/mlruns", "scheme `file`"),
            ("sqlite:///mlflow.db", "scheme `sqlite`"),
            ("databricks", "not a URL"),
            ("http://", "no host"),
            ("azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/registries/reg", "not an Azure ML workspace"),
            ("azureml://experiments/e/runs/r/artifacts", "not an Azure ML workspace"),
        ] {
            let e = endpoint(uri).unwrap_err().to_string();
            assert!(e.starts_with("MLFLOW_TRACKING_URI ") && e.contains(says), "{uri}: {e}");
        }
        let e = endpoint("ftp://user:hunter2@h/x").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn credentials_are_chosen_as_mlflow_chooses_them_and_never_print() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let e = endpoint("http://h:1").unwrap();
        // Basic wins over the token when both are there (rest_utils.http_request).
        let both = Auth::from_env(
            &env(&[
                ("MLFLOW_TRACKING_USERNAME", "alice"),
                ("MLFLOW_TRACKING_PASSWORD", "s3cret"),
                ("MLFLOW_TRACKING_TOKEN", "tok"),
            ]),
            &e,
        );
        assert_eq!(both, Auth::Header(Secret::new("Basic YWxpY2U6czNjcmV0")));
        assert!(!format!("{both:?}").contains("YWxp"), "{both:?}");
        let token = Auth::from_env(&env(&[("MLFLOW_TRACKING_TOKEN", "tok")]), &e);
        assert_eq!(token, Auth::Header(Secret::new("Bearer tok")));
        // A user name alone is not Basic; an empty token is no token.
        let none = Auth::from_env(
            &env(&[
                ("MLFLOW_TRACKING_USERNAME", "alice"),
                ("MLFLOW_TRACKING_TOKEN", ""),
            ]),
            &e,
        );
        assert_eq!(none, Auth::None);
        let ui = endpoint("http://bob:pw@h:1").unwrap();
        assert_eq!(
            Auth::from_env(&env(&[]), &ui),
            Auth::Header(Secret::new("Basic Ym9iOnB3"))
        );
    }
}
