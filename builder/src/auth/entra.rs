//! Microsoft Entra ID tokens through `azure_identity` 1.x: a credential chain for a CLI
//! (environment → managed identity → developer tools), behind a blocking API.
//!
//! The chain, in order (azure_identity 1.x has no `DefaultAzureCredential`):
//! 1. **Environment**: `WorkloadIdentityCredential` when `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
//!    `AZURE_FEDERATED_TOKEN_FILE` are set, else `ClientSecretCredential` when `AZURE_TENANT_ID`,
//!    `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` are set.
//! 2. **Managed identity**: `ManagedIdentityCredential` when `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`
//!    are set (App Service, Container Apps, Arc), or when the VM metadata endpoint (IMDS) answers a
//!    quick connect. Azure ML jobs' `MSI_ENDPOINT` + `MSI_SECRET` source is refused by
//!    azure_identity, and says so in the error.
//! 3. **Developer tools**: `DeveloperToolsCredential` (`az account get-access-token`, then `azd`).
//!
//! The first credential that gives a token is used for every later request. When none does,
//! [`EntraError::Exhausted`] lists each credential and why it failed (never a secret).
//! Endpoints are configuration: `AZURE_AUTHORITY_HOST` (https only) and a CA bundle
//! (`ENVBUILD_CA_FILE` or [`Settings::ca_file`]) let tests point the chain at a local stand-in.

use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{
    ClientSecretCredential, ClientSecretCredentialOptions, DeveloperToolsCredential,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use thiserror::Error;

use super::Secret;

/// Scope of Azure Resource Manager tokens.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// Scope of Azure Container Registry tokens (the ACR audience, not ARM's).
pub const ACR_SCOPE: &str = "https://containerregistry.azure.net/.default";
const IMDS: &str = "169.254.169.254:80";

/// An Entra access token and when it expires. Prints as `<redacted>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub secret: Secret,
    pub expires_on: SystemTime,
}

/// One credential of the chain that did not give a token, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub credential: &'static str,
    pub why: String,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.credential, self.why)
    }
}

/// Why no token could be had.
#[derive(Debug, Error)]
pub enum EntraError {
    #[error(transparent)]
    CaFile(#[from] crate::http::HttpError),
    #[error("CA bundle {}: {message}", path.display())]
    CaParse { path: PathBuf, message: String },
    #[error("cannot set up the Entra ID client ({what}): {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "no Azure credential gave a token for {scope}; tried:\n{}",
        tried.iter().map(|a| format!("  - {a}")).collect::<Vec<_>>().join("\n")
    )]
    Exhausted { scope: String, tried: Vec<Attempt> },
}

impl crate::error::Hint for EntraError {
    fn hint(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            EntraError::Exhausted { .. } => Some("run `az login`, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or AZURE_FEDERATED_TOKEN_FILE)".into()),
            _ => None,
        }
    }
}

/// Where the chain's endpoints are and which environment it reads; [`Settings::from_env`]
/// fills it from the process environment.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Entra authority, e.g. `https://login.microsoftonline.com` (`AZURE_AUTHORITY_HOST`).
    pub authority_host: Option<String>,
    /// Extra CA certificates (PEM) to trust for Entra and managed-identity endpoints
    /// (`ENVBUILD_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// The variables the chain decides on (`AZURE_*`, `IDENTITY_*`, `MSI_*`).
    pub env: Vec<(String, String)>,
    /// Probe the VM metadata endpoint (IMDS) when no other managed-identity source is set.
    pub probe_imds: bool,
}

const ENV_KEYS: &[&str] = &[
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "MSI_SECRET",
];

impl Settings {
    /// Reads `AZURE_AUTHORITY_HOST`, `ENVBUILD_CA_FILE` (unless `ca_file` is given) and the
    /// credential variables from the process environment.
    pub fn from_env(ca_file: Option<&Path>) -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Settings {
            authority_host: var("AZURE_AUTHORITY_HOST"),
            ca_file: ca_file
                .map(Path::to_path_buf)
                .or_else(|| var("ENVBUILD_CA_FILE").map(PathBuf::from)),
            env: ENV_KEYS
                .iter()
                .filter_map(|k| var(k).map(|v| ((*k).to_owned(), v)))
                .collect(),
            probe_imds: var("ENVBUILD_NO_IMDS").is_none(),
        }
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// What the chain will try, decided from the settings alone (no I/O): a pure core, tested below.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Workload,
    ClientSecret,
    ManagedIdentity,
    Imds,
    DeveloperTools,
    Skip(Attempt),
}

fn plan(s: &Settings) -> Vec<Step> {
    let mut steps = Vec::new();
    let has = |k| s.var(k).is_some();
    let ids = has("AZURE_TENANT_ID") && has("AZURE_CLIENT_ID");
    if ids && has("AZURE_FEDERATED_TOKEN_FILE") {
        steps.push(Step::Workload);
    } else if ids && has("AZURE_CLIENT_SECRET") {
        steps.push(Step::ClientSecret);
    } else {
        let missing: Vec<&str> = ["AZURE_TENANT_ID", "AZURE_CLIENT_ID"]
            .into_iter()
            .filter(|k| !has(k))
            .chain(
                (!has("AZURE_CLIENT_SECRET") && !has("AZURE_FEDERATED_TOKEN_FILE"))
                    .then_some("AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE"),
            )
            .collect();
        steps.push(Step::Skip(Attempt {
            credential: "EnvironmentCredential",
            why: format!("not configured ({} not set)", missing.join(", ")),
        }));
    }
    if has("IDENTITY_ENDPOINT") && has("IDENTITY_HEADER") {
        steps.push(Step::ManagedIdentity);
    } else if has("MSI_ENDPOINT") && has("MSI_SECRET") {
        steps.push(Step::Skip(Attempt {
            credential: "ManagedIdentityCredential",
            why: "MSI_ENDPOINT/MSI_SECRET (the Azure ML job source) is not supported by azure_identity".into(),
        }));
    } else if s.probe_imds {
        steps.push(Step::Imds);
    } else {
        steps.push(Step::Skip(Attempt {
            credential: "ManagedIdentityCredential",
            why: "IDENTITY_ENDPOINT/IDENTITY_HEADER not set and the IMDS probe is off".into(),
        }));
    }
    steps.push(Step::DeveloperTools);
    steps
}

/// The chain: built once, asked for tokens many times (credentials cache their tokens).
pub struct EntraChain {
    runtime: tokio::runtime::Runtime,
    sources: Vec<Source>,
    /// Index of the source that gave the last token: asked first from then on.
    chosen: Mutex<Option<usize>>,
}

enum Source {
    Ready(&'static str, Arc<dyn TokenCredential>),
    Imds(&'static str, Arc<dyn TokenCredential>),
    Failed(Attempt),
}

impl fmt::Debug for EntraChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .sources
            .iter()
            .map(|s| match s {
                Source::Ready(n, _) | Source::Imds(n, _) => *n,
                Source::Failed(a) => a.credential,
            })
            .collect();
        f.debug_struct("EntraChain").field("chain", &names).finish()
    }
}

/// Installs the one rustls crypto provider of this process: ring, which the registry client's
/// reqwest compiles in. azure_core's reqwest is built without a provider of its own (its default,
/// aws-lc, was a second crypto library: over a minute of every cold build).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn azure_error(e: &azure_core::Error) -> String {
    // The chain of causes, on one line; azure_identity's messages carry no secrets.
    crate::error::report(crate::error::chain(e), |_| None, None).replace('\n', " ")
}

impl EntraChain {
    /// The chain configured from the process environment (see [`Settings::from_env`]).
    pub fn from_env(ca_file: Option<&Path>) -> Result<EntraChain, EntraError> {
        EntraChain::new(&Settings::from_env(ca_file))
    }

    /// The chain for `settings`. Builds credentials only; no request is made until [`Self::token`].
    pub fn new(settings: &Settings) -> Result<EntraChain, EntraError> {
        install_crypto_provider();
        let mut http = reqwest_azure::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60));
        if let Some(path) = &settings.ca_file {
            // An empty bundle adds nothing here: the chain then reports each credential's TLS
            // failure, which names the endpoint.
            let pem = crate::http::read_ca_bundle(path)?;
            let certs = reqwest_azure::Certificate::from_pem_bundle(&pem).map_err(|e| {
                EntraError::CaParse {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        let http = http.build().map_err(|e| EntraError::Setup {
            what: "HTTP client",
            source: e.into(),
        })?;
        let client_options = || {
            let mut o = ClientOptions {
                transport: Some(Transport::new(Arc::new(http.clone()))),
                // The chain moves on to the next credential instead of retrying a dead one.
                retry: RetryOptions::none(),
                ..ClientOptions::default()
            };
            if let Some(host) = &settings.authority_host {
                let mut c = CustomConfiguration::default();
                c.authority_host = host.clone();
                o.cloud = Some(Arc::new(CloudConfiguration::from(c)));
            }
            o
        };
        let var = |k: &str| settings.var(k).unwrap_or_default().to_owned();
        let built = |name: &'static str, r: azure_core::Result<Arc<dyn TokenCredential>>| match r {
            Ok(c) => Source::Ready(name, c),
            Err(e) => Source::Failed(Attempt {
                credential: name,
                why: azure_error(&e),
            }),
        };
        let managed = || {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: settings
                    .var("AZURE_CLIENT_ID")
                    .map(|id| UserAssignedId::ClientId(id.to_owned())),
                client_options: client_options(),
            }))
            .map(|c| c as Arc<dyn TokenCredential>)
        };
        let sources = plan(settings)
            .into_iter()
            .map(|step| match step {
                Step::Workload => built(
                    "WorkloadIdentityCredential",
                    WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                        credential_options: azure_identity::ClientAssertionCredentialOptions {
                            client_options: client_options(),
                        },
                        client_id: Some(var("AZURE_CLIENT_ID")),
                        tenant_id: Some(var("AZURE_TENANT_ID")),
                        token_file_path: Some(var("AZURE_FEDERATED_TOKEN_FILE").into()),
                    }))
                    .map(|c| c as Arc<dyn TokenCredential>),
                ),
                Step::ClientSecret => built(
                    "ClientSecretCredential",
                    ClientSecretCredential::new(
                        &var("AZURE_TENANT_ID"),
                        var("AZURE_CLIENT_ID"),
                        var("AZURE_CLIENT_SECRET").into(),
                        Some(ClientSecretCredentialOptions {
                            client_options: client_options(),
                        }),
                    )
                    .map(|c| c as Arc<dyn TokenCredential>),
                ),
                Step::ManagedIdentity => built("ManagedIdentityCredential", managed()),
                Step::Imds => match managed() {
                    Ok(c) => Source::Imds("ManagedIdentityCredential", c),
                    Err(e) => Source::Failed(Attempt {
                        credential: "ManagedIdentityCredential",
                        why: azure_error(&e),
                    }),
                },
                Step::DeveloperTools => built(
                    "DeveloperToolsCredential",
                    DeveloperToolsCredential::new(None).map(|c| c as Arc<dyn TokenCredential>),
                ),
                Step::Skip(a) => Source::Failed(a),
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EntraError::Setup {
                what: "tokio runtime",
                source: e.into(),
            })?;
        Ok(EntraChain {
            runtime,
            sources,
            chosen: Mutex::new(None),
        })
    }

    /// A token for `scope` (e.g. [`ARM_SCOPE`], [`ACR_SCOPE`]), from the first credential of the
    /// chain that gives one. Blocking: call it from plain threads, not from inside a tokio
    /// runtime (use [`Self::token_async`] there).
    pub fn token(&self, scope: &str) -> Result<Token, EntraError> {
        self.runtime.block_on(self.token_async(scope))
    }

    /// [`Self::token`] for async callers.
    pub async fn token_async(&self, scope: &str) -> Result<Token, EntraError> {
        let chosen = *self.chosen.lock().expect("lock");
        let order: Vec<usize> = chosen
            .into_iter()
            .chain((0..self.sources.len()).filter(|i| Some(*i) != chosen))
            .collect();
        let mut tried = Vec::new();
        for i in order {
            let (name, cred) = match &self.sources[i] {
                Source::Failed(a) => {
                    tried.push(a.clone());
                    continue;
                }
                Source::Ready(n, c) => (*n, c),
                Source::Imds(n, c) => {
                    let addr: SocketAddr = IMDS.parse().expect("IMDS address");
                    if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
                        tried.push(Attempt {
                            credential: n,
                            why: "no managed identity here (IDENTITY_ENDPOINT not set, IMDS at 169.254.169.254 unreachable)".into(),
                        });
                        continue;
                    }
                    (*n, c)
                }
            };
            match cred.get_token(&[scope], None).await {
                Ok(t) => {
                    *self.chosen.lock().expect("lock") = Some(i);
                    return Ok(Token {
                        secret: Secret::new(t.token.secret()),
                        expires_on: SystemTime::from(t.expires_on),
                    });
                }
                Err(e) => tried.push(Attempt {
                    credential: name,
                    why: azure_error(&e),
                }),
            }
        }
        Err(EntraError::Exhausted {
            scope: scope.to_owned(),
            tried,
        })
    }

    /// The name of the credential that gave the last token, if any (for messages like
    /// "authenticated with AzureCliCredential").
    pub fn source(&self) -> Option<&'static str> {
        let i = (*self.chosen.lock().expect("lock"))?;
        match &self.sources[i] {
            Source::Ready(n, _) | Source::Imds(n, _) => Some(n),
            Source::Failed(_) => None,
        }
    }

    /// `AZURE_TENANT_ID` if set (ACR's `/oauth2/exchange` takes it; ACR infers it otherwise).
    pub fn tenant(settings: &Settings) -> Option<String> {
        settings.var("AZURE_TENANT_ID").map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        Settings {
            env: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            probe_imds: true,
            ..Settings::default()
        }
    }

    #[test]
    fn chain_order_follows_the_environment() {
        let full = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
        ];
        assert_eq!(
            plan(&settings(&full))[..2],
            [Step::ClientSecret, Step::Imds]
        );
        let mut wl = full.to_vec();
        wl.push(("AZURE_FEDERATED_TOKEN_FILE", "/f"));
        wl.push(("IDENTITY_ENDPOINT", "http://127.0.0.1:1"));
        wl.push(("IDENTITY_HEADER", "h"));
        assert_eq!(
            plan(&settings(&wl)),
            [Step::Workload, Step::ManagedIdentity, Step::DeveloperTools]
        );
        let ml = plan(&settings(&[("MSI_ENDPOINT", "x"), ("MSI_SECRET", "y")]));
        let Step::Skip(env) = &ml[0] else {
            panic!("{ml:?}")
        };
        assert!(env
            .why
            .contains("AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET"));
        assert!(matches!(&ml[1], Step::Skip(a) if a.why.contains("Azure ML")));
        assert_eq!(ml[2], Step::DeveloperTools);
    }

    #[test]
    fn exhausted_error_lists_every_credential() {
        let e = EntraError::Exhausted {
            scope: ARM_SCOPE.into(),
            tried: vec![
                Attempt {
                    credential: "EnvironmentCredential",
                    why: "not configured".into(),
                },
                Attempt {
                    credential: "DeveloperToolsCredential",
                    why: "az not found".into(),
                },
            ],
        };
        let s = e.to_string();
        assert!(s.contains("  - EnvironmentCredential: not configured\n  - DeveloperToolsCredential: az not found"), "{s}");
        assert!(crate::error::Hint::hint(&e)
            .unwrap()
            .contains("run `az login`"));
    }
}
