//! Why an Azure ML call failed: [`AzureError`], one variant per failure carrying what explains it,
//! and [`ArmFailure`], ARM's own error answer. What to do next comes from [`Hint`], never Display.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use thiserror::Error;

use crate::auth::entra::EntraError;
use crate::error::Hint;
use crate::http::HttpError;
use crate::registry::BadReference;

/// Why an Azure ML request failed, or was refused before it was sent. Every variant names the
/// request or the value at fault; none carries a token.
#[derive(Debug, Error)]
pub enum AzureError {
    #[error("{0}")]
    Arm(Box<ArmFailure>),
    #[error("{method} {url}: {source}")]
    Connect {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A success status whose body does not parse.
    #[error("{method} {path}: HTTP {status} with a body that is not JSON ({source}) (x-ms-request-id: {request_id})")]
    NotJson {
        method: String,
        path: String,
        status: StatusCode,
        request_id: String,
        #[source]
        source: serde_json::Error,
    },
    /// An answer longer than any the service gives (read no further).
    #[error("{method} {url}: the answer is larger than {} MiB; not read further", cap >> 20)]
    TooLarge {
        method: String,
        url: String,
        cap: u64,
    },
    /// A GET outside ARM (a log endpoint) that did not succeed.
    #[error("GET {url}: HTTP {status}")]
    GetFailed { url: String, status: StatusCode },
    #[error("no access token for {scope}: {source}")]
    Token {
        scope: String,
        #[source]
        source: EntraError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] HttpError),

    /// A long-running operation's `Location` outside the ARM endpoint (no token goes there).
    #[error(
        "the service's Location {location} is not on the ARM endpoint {endpoint}; not followed"
    )]
    ForeignLocation { location: String, endpoint: String },
    /// A long-running operation still running after envbuild stopped waiting.
    #[error("the operation at {location} was still running after {}s; envbuild stopped waiting", waited.as_secs())]
    OperationTimedOut {
        location: String,
        waited: std::time::Duration,
    },
    /// A job option the service would refuse (tier, identity, shm size, notifications).
    #[error(transparent)]
    BadOption(#[from] super::options::BadOption),

    /// Several instances without a distribution: each node would run its own copy, billed.
    #[error("{instances} instances without a distribution would run {instances} unrelated copies of the command, each billed; add --processes-per-instance K for a PyTorch data-parallel job")]
    Undistributed { instances: u32 },

    /// A name Azure ML would refuse: `what` (`job name`, `model version`, …), then the rule.
    #[error("{what} `{name}` {rule}")]
    BadName {
        what: &'static str,
        name: String,
        rule: NameRule,
    },
    #[error("environment name `{name}` is reserved: names starting with AzureML or Microsoft belong to curated environments; choose another (publish.azureml_environment or --name)")]
    ReservedName { name: String },
    #[error("subscription `{subscription}` / resource group `{resource_group}`: only letters, digits and -_.() are allowed")]
    BadWorkspacePath {
        subscription: String,
        resource_group: String,
    },
    #[error(transparent)]
    BadImage(#[from] BadReference),
    #[error("image `{image}` has no digest: Azure ML would resolve a tag at run time, so a job could run another image than the one registered")]
    NoDigest { image: String },

    #[error("workspace config {}: {source} (expected {{\"subscription_id\", \"resource_group\", \"workspace_name\"}})", path.display())]
    BadConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Flags, environment and `config` (the file read, if any) left these parts unset.
    #[error("no Azure ML workspace: missing {}{}", missing.join(", "), looked_in(config.as_deref()))]
    NoWorkspace {
        missing: Vec<&'static str>,
        config: Option<PathBuf>,
    },

    /// The environment version is registered with another image (a 12-digit collision).
    #[error("environment {name} version {version} exists with image {existing}, not {image}; versions are immutable")]
    VersionTaken {
        name: String,
        version: String,
        existing: String,
        image: String,
    },
    /// ARM's 409 on PUT of a version: ARM's message and request id.
    #[error("{kind} {name} version {version}: {message} (x-ms-request-id: {request_id})")]
    Conflict {
        kind: AssetKind,
        name: String,
        version: String,
        message: String,
        request_id: String,
    },
    #[error("job {job} does not exist in workspace {workspace}")]
    NoJob { job: String, workspace: String },
    #[error("job {job} is {status}, not Completed: its output {output} may be missing or partial")]
    NotCompleted {
        job: String,
        status: String,
        output: String,
    },
    #[error("job {job} has no output `{output}` (it has: {})", outputs.join(", "))]
    NoOutput {
        job: String,
        output: String,
        outputs: Vec<String>,
    },
    /// A sweep refused before any request (search space, objective, limits, policy).
    #[error(transparent)]
    Sweep(#[from] super::sweep_settings::SweepError),

    /// The workspace names no default datastore (`Datastores_List` with `isDefault=true`).
    #[error("workspace {workspace} has no default datastore")]
    NoDefaultDatastore { workspace: String },
    #[error("datastore {name} does not exist in workspace {workspace}")]
    NoDatastore { name: String, workspace: String },
    /// Code and data go to Azure Blob datastores only.
    #[error("datastore {name} is {kind}, not AzureBlob: envbuild uploads to and downloads from Azure Blob datastores only")]
    NotBlobDatastore { name: String, kind: String },
    /// A field of a datastore that is missing, or that no storage account could have.
    #[error("datastore {name}: its {field} is missing or not valid")]
    DatastoreField { name: String, field: &'static str },
    /// The code version exists with other files (another upload under the same version).
    #[error("code {name} version {version} exists with codeUri {existing}, not {uri}; versions are immutable")]
    CodeVersionTaken {
        name: String,
        version: String,
        existing: String,
        uri: String,
    },
    /// A literal input the service refuses (LiteralJobInput.value: a letter, digit or `_`).
    #[error("input {name}: the literal value `{value}` has no letter, digit or _, which Azure ML requires of a literal input")]
    BadLiteral { name: String, value: String },
    /// An output whose URI names no datastore path (nothing envbuild can fetch).
    #[error(
        "job {job}'s output {output} is at {uri}, not on a datastore (azureml://datastores/…)"
    )]
    OutputNotOnDatastore {
        job: String,
        output: String,
        uri: String,
    },
    /// A job whose outputs were asked for before it ended.
    #[error("job {job} is {status}: its outputs are complete only once it has ended")]
    NotEnded { job: String, status: String },
}

fn looked_in(config: Option<&Path>) -> String {
    match config {
        Some(f) => format!(" (also not in {})", f.display()),
        None => " (no config.json or .azureml/config.json here or in a parent directory)".into(),
    }
}

/// The rule a name broke; prints what follows the name in [`AzureError::BadName`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A job's name.
    Job,
    /// An environment's name (also at most 255 characters).
    Environment,
    /// A job's input or output: no `-`, since it appears in `${{inputs.NAME}}`.
    InputOutput,
    /// A workspace's name.
    Workspace,
    /// A model version's name, job or output.
    Asset,
    /// A model version's version.
    Version,
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameRule::Job => {
                "is not valid: letters, digits, - and _, starting with a letter or digit"
            }
            NameRule::Environment => {
                "is not valid: letters, digits, - and _, starting with a letter or digit, at most 255"
            }
            NameRule::InputOutput => "is not valid: letters, digits and _",
            NameRule::Workspace => {
                "is not valid: 3 to 33 letters, digits, - and _, starting with a letter or digit"
            }
            NameRule::Asset => "is not a valid name",
            NameRule::Version => "is not valid",
        })
    }
}

/// What kind of versioned asset a [`AzureError::Conflict`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetKind {
    Environment,
    Model,
    Code,
}

impl fmt::Display for AssetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AssetKind::Environment => "environment",
            AssetKind::Model => "model",
            AssetKind::Code => "code",
        })
    }
}

impl AzureError {
    /// The HTTP status of an ARM error.
    pub fn status(&self) -> Option<u16> {
        match self {
            AzureError::Arm(a) => Some(a.status),
            _ => None,
        }
    }
}

impl Hint for AzureError {
    fn hint(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(match self {
            AzureError::Arm(a) => return a.hint(),
            AzureError::NoDigest { .. } => "pass the REGISTRY/REPOSITORY@sha256:… that `envbuild push` prints, or use `envbuild deploy ENV`",
            AzureError::NoWorkspace { .. } => "download config.json from the workspace's page in Azure ML studio into this directory, or pass the flags",
            AzureError::VersionTaken { .. } => "register under another name (--name)",
            AzureError::Conflict { kind: AssetKind::Environment, .. } => "Azure ML versions are immutable — only description and tags can change. envbuild derives the version from the image digest, so a new image gets a new version; this version was made by something else with other settings",
            AzureError::Conflict { kind: AssetKind::Model, .. } => "versions are immutable; leave out --version to take the next one",
            AzureError::Conflict { kind: AssetKind::Code, .. } | AzureError::CodeVersionTaken { .. } => "the version is the code's content hash; this one was registered by something else with other files: rename the code folder (the code asset's name) and run again",
            AzureError::NoDefaultDatastore { .. } => "every Azure ML workspace has one (workspaceblobstore); check the workspace, or set one with `az ml datastore update --set is_default=true`",
            AzureError::NotEnded { job, .. } => return Some(Cow::Owned(format!("wait for it: `envbuild job show {job} --follow`"))),
            _ => return None,
        }))
    }
}

/// An ARM error answer: the request, the service's code and message, its request id.
#[derive(Debug)]
pub struct ArmFailure {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub code: String,
    pub message: String,
    pub request_id: String,
    pub hint: Option<String>,
}

impl Hint for ArmFailure {
    fn hint(&self) -> Option<Cow<'_, str>> {
        self.hint.as_deref().map(Cow::Borrowed)
    }
}

impl std::error::Error for ArmFailure {}

impl fmt::Display for ArmFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: HTTP {} {}: {} (x-ms-request-id: {})",
            self.method, self.path, self.status, self.code, self.message, self.request_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(e: &AzureError) -> String {
        crate::error::report(crate::error::chain(e), crate::hint_of, None)
    }

    #[test]
    fn name_rules_read_as_before() {
        let bad = |what, rule| {
            AzureError::BadName {
                what,
                name: "a.b".into(),
                rule,
            }
            .to_string()
        };
        for (got, want) in [
            (bad("job name", NameRule::Job), "job name `a.b` is not valid: letters, digits, - and _, starting with a letter or digit"),
            (bad("environment name", NameRule::Environment), "environment name `a.b` is not valid: letters, digits, - and _, starting with a letter or digit, at most 255"),
            (bad("input/output name", NameRule::InputOutput), "input/output name `a.b` is not valid: letters, digits and _"),
            (bad("workspace name", NameRule::Workspace), "workspace name `a.b` is not valid: 3 to 33 letters, digits, - and _, starting with a letter or digit"),
            (bad("output", NameRule::Asset), "output `a.b` is not a valid name"),
            (bad("model version", NameRule::Version), "model version `a.b` is not valid"),
        ] {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn hints_follow_the_message_not_inside_it() {
        let e = AzureError::NoDigest {
            image: "r.io/x:v1".into(),
        };
        assert_eq!(e.to_string(), "image `r.io/x:v1` has no digest: Azure ML would resolve a tag at run time, so a job could run another image than the one registered");
        assert!(report(&e).ends_with("\nhint: pass the REGISTRY/REPOSITORY@sha256:… that `envbuild push` prints, or use `envbuild deploy ENV`"));
        let e = AzureError::NoWorkspace {
            missing: vec!["a", "b"],
            config: Some("c.json".into()),
        };
        assert_eq!(
            e.to_string(),
            "no Azure ML workspace: missing a, b (also not in c.json)"
        );
        assert!(report(&e).contains("\nhint: download config.json"));
        let e = AzureError::Conflict {
            kind: AssetKind::Model,
            name: "m".into(),
            version: "2".into(),
            message: "exists".into(),
            request_id: "r1".into(),
        };
        assert_eq!(
            report(&e),
            "model m version 2: exists (x-ms-request-id: r1)\nhint: versions are immutable; leave out --version to take the next one"
        );
        for e in [
            AzureError::NoJob {
                job: "j".into(),
                workspace: "w".into(),
            },
            AzureError::BadName {
                what: "job",
                name: "a.b".into(),
                rule: NameRule::Asset,
            },
        ] {
            assert!(!e.to_string().contains("hint"), "{e}");
            assert!(crate::error::Hint::hint(&e).is_none(), "{e}");
        }
    }
}
