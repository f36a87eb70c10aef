//! What a job with local code or data needs in the workspace before it is submitted: the code
//! snapshot and each local input folder or file uploaded to the workspace's default datastore
//! under `LocalUpload/{content hash}/{name}` (content-addressed: what is there already is not
//! sent again), each upload checked blob by blob against the local files, and only then the
//! code version registered — a code version never points at a partial upload, and a failed
//! upload registers nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::code::{self, CodeVersion};
use super::datastore::{self, Datastore};
use super::job::Input;
use super::{AzureError, Client};
use crate::blob::{self, BlobError, BlobSettings, BlobStore, UploadFile, UploadReport};
use crate::digest::Digest;
use crate::error::Hint;
use crate::jobio::InputValue;
use crate::progress::Progress;
use crate::snapshot::{Snapshot, SnapshotError};

/// Where local uploads go in the datastore (as `az ml` puts them).
pub const UPLOAD_ROOT: &str = "LocalUpload";

/// What to put in the workspace: the code snapshot (and its folder's name), the inputs.
#[derive(Debug)]
pub struct Local<'a> {
    pub code: Option<(&'a Snapshot, String)>,
    /// Local folders and files are uploaded; URIs and literals pass as they are.
    pub inputs: &'a BTreeMap<String, InputValue>,
}

/// One upload: what, where, and what it took.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// `code src`, `input data`.
    pub what: String,
    /// The folder in the datastore: `LocalUpload/{hash}/{name}`.
    pub prefix: String,
    pub files: usize,
    pub bytes: u64,
    pub report: UploadReport,
}

/// What the job is given.
#[derive(Debug)]
pub struct Staged {
    pub datastore: Option<Datastore>,
    /// The code version (registered, or found registered) and what happened.
    pub code: Option<(CodeVersion, code::Outcome)>,
    pub inputs: BTreeMap<String, Input>,
    pub uploads: Vec<Uploaded>,
}

/// Why putting local code or data in the workspace failed. Nothing was registered.
#[derive(Debug, Error)]
pub enum StageError {
    #[error(transparent)]
    Azure(#[from] AzureError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The identity signs in but may not write blobs (403 on the data plane).
    #[error("uploading {what} to datastore {datastore}: storage account {account} refused to let the identity write blobs ({code})")]
    Denied {
        what: String,
        datastore: String,
        account: String,
        container: String,
        code: String,
    },
    /// A datastore set up with a key or SAS, whose storage does not take the identity's Entra
    /// ID token at all.
    #[error("uploading {what} to datastore {datastore}: it is registered with {credentials} credentials, and storage account {account} refused envbuild's Entra ID token ({code}); envbuild uploads with Entra ID only and never reads the workspace's keys")]
    KeyOnly {
        what: String,
        datastore: String,
        account: String,
        credentials: String,
        code: String,
    },
    #[error(transparent)]
    Upload(Box<UploadFailure>),
    /// After the upload, the datastore does not hold exactly the local files.
    #[error("after the upload of {what}, blob {blob} in datastore {datastore} {found}; nothing was registered")]
    Unverified {
        what: String,
        datastore: String,
        blob: String,
        found: String,
    },
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An upload the storage refused for another reason, or that could not be made.
#[derive(Debug, Error)]
#[error("uploading {what} to datastore {datastore}")]
pub struct UploadFailure {
    pub what: String,
    pub datastore: String,
    #[source]
    pub source: BlobError,
}

fn upload_failure(what: &str, datastore: &str, source: BlobError) -> StageError {
    StageError::Upload(Box::new(UploadFailure {
        what: what.to_owned(),
        datastore: datastore.to_owned(),
        source,
    }))
}

impl Hint for StageError {
    fn hint(&self) -> Option<Cow<'_, str>> {
        match self {
            StageError::Denied { account, container, .. } => Some(format!(
                "grant the identity the \"Storage Blob Data Contributor\" role on storage account {account} (or its container {container}): `az role assignment create --role \"Storage Blob Data Contributor\" --assignee <your id> --scope <the account's resource id>`; role assignments take a few minutes to apply"
            ).into()),
            StageError::KeyOnly { datastore, account, .. } => Some(format!(
                "give the identity you sign in with the \"Storage Blob Data Contributor\" role on storage account {account}, in the account's own tenant, or make the workspace's default datastore identity-based (a datastore without credentials: `az ml datastore create` with no `credentials:`, then `az ml datastore update --name … --set is_default=true`) instead of {datastore}"
            ).into()),
            StageError::Unverified { .. } => Some("run the same command again: what arrived whole is kept and not sent twice".into()),
            // Transparent: the wrapped error is not in the chain, so its hint is passed on.
            StageError::Azure(e) => e.hint(),
            StageError::Snapshot(e) => e.hint(),
            _ => None,
        }
    }
}

/// A file's sha256, read once.
fn sha256_of(path: &Path) -> Result<(Digest, u64), StageError> {
    let err = |source| StageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((Digest::from_sha256(h), size))
}

/// The datastore's client, and what a refused upload means for this datastore.
struct Target<'a> {
    datastore: &'a Datastore,
    store: BlobStore,
}

/// What a refused upload to `ds` means: no data role (403 AuthorizationPermissionMismatch), a
/// key-based datastore whose storage refuses the Entra token itself, or another failure.
fn classify(ds: &Datastore, what: &str, e: BlobError) -> StageError {
    {
        match (e.status(), e.code()) {
            (
                Some(403),
                Some(code @ ("AuthorizationPermissionMismatch" | "AuthorizationFailure")),
            ) => StageError::Denied {
                what: what.to_owned(),
                datastore: ds.name.clone(),
                account: ds.account.clone(),
                container: ds.container.clone(),
                code: code.to_owned(),
            },
            (
                Some(401 | 403),
                Some(
                    code @ ("InvalidAuthenticationInfo"
                    | "AuthenticationFailed"
                    | "NoAuthenticationInformation"),
                ),
            ) if ds.credentials.is_key_based() => StageError::KeyOnly {
                what: what.to_owned(),
                datastore: ds.name.clone(),
                account: ds.account.clone(),
                credentials: ds.credentials.as_str().to_owned(),
                code: code.to_owned(),
            },
            _ => upload_failure(what, &ds.name, e),
        }
    }
}

impl Target<'_> {
    fn classify(&self, what: &str, e: BlobError) -> StageError {
        classify(self.datastore, what, e)
    }

    /// Uploads `files` under `prefix`, then checks that every blob is there with the size (and,
    /// where it says, the sha256) of its file.
    fn upload(
        &self,
        what: &str,
        prefix: &str,
        files: &[UploadFile],
        progress: &dyn Progress,
    ) -> Result<Uploaded, StageError> {
        let report = self
            .store
            .upload_files(prefix, files, progress)
            .map_err(|e| self.classify(what, e))?;
        let there = self
            .store
            .list(&format!("{prefix}/"))
            .map_err(|e| self.classify(what, e))?;
        for f in files {
            let name = format!("{prefix}/{}", f.rel);
            let unverified = |found: String| StageError::Unverified {
                what: what.to_owned(),
                datastore: self.datastore.name.clone(),
                blob: name.clone(),
                found,
            };
            match there.get(&name) {
                None => return Err(unverified("is missing".into())),
                Some(p) if p.size != f.size => {
                    return Err(unverified(format!(
                        "holds {} bytes, not the {} of {}",
                        p.size,
                        f.size,
                        f.path.display()
                    )))
                }
                Some(p) if p.sha256.as_ref().is_some_and(|d| *d != f.sha256) => {
                    return Err(unverified(format!(
                        "holds other bytes than {}",
                        f.path.display()
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(Uploaded {
            what: what.to_owned(),
            prefix: prefix.to_owned(),
            files: files.len(),
            bytes: files.iter().map(|f| f.size).sum(),
            report,
        })
    }

    fn folder(
        &self,
        what: &str,
        snap: &Snapshot,
        name: &str,
        progress: &dyn Progress,
    ) -> Result<Uploaded, StageError> {
        let prefix = format!("{UPLOAD_ROOT}/{}/{name}", snap.short_hash());
        let files: Vec<UploadFile> = snap
            .files
            .iter()
            .map(|f| UploadFile {
                rel: f.rel.clone(),
                path: f.path.clone(),
                size: f.size,
                sha256: f.sha256,
            })
            .collect();
        self.upload(what, &prefix, &files, progress)
    }
}

/// The name a local folder or file goes by in the datastore: its own (or `data`).
fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty() && blob::safe_relative(n))
        .unwrap_or_else(|| "data".into())
}

/// Uploads what `local` names to the workspace's default datastore, verifies it, registers the
/// code version (`codes/{name}/versions/{snapshot hash}`) and returns the job's code and inputs.
/// Inputs that are URIs or literals need nothing uploaded; without code or a local input no
/// request is made at all.
pub fn stage(
    client: &Client,
    local: &Local<'_>,
    settings: &BlobSettings,
    progress: &dyn Progress,
) -> Result<Staged, StageError> {
    let mut inputs = BTreeMap::new();
    let needs_upload = local.code.is_some()
        || local
            .inputs
            .values()
            .any(|v| matches!(v, InputValue::Folder(_) | InputValue::File(_)));
    if !needs_upload {
        for (name, v) in local.inputs {
            inputs.insert(name.clone(), passed(v));
        }
        return Ok(Staged {
            datastore: None,
            code: None,
            inputs,
            uploads: Vec::new(),
        });
    }
    let ds = datastore::default(client)?;
    let store = blob::account_url_from_env(&ds.account, &ds.endpoint)
        .and_then(|url| BlobStore::new(&url, &ds.container, client.tokens(), settings))
        .map_err(|e| upload_failure("local files", &ds.name, e))?;
    let target = Target {
        datastore: &ds,
        store,
    };
    // Every local input read and hashed before anything is sent.
    enum Read {
        Folder(Snapshot, String),
        File(UploadFile),
        Passed(Input),
    }
    let mut read = Vec::new();
    for (name, v) in local.inputs {
        read.push((
            name,
            match v {
                InputValue::Folder(dir) => Read::Folder(Snapshot::of(dir)?, file_name(dir)),
                InputValue::File(path) => {
                    let (sha256, size) = sha256_of(path)?;
                    Read::File(UploadFile {
                        rel: file_name(path),
                        path: path.clone(),
                        size,
                        sha256,
                    })
                }
                other => Read::Passed(passed(other)),
            },
        ));
    }
    let mut uploads = Vec::new();
    for (name, r) in read {
        let what = format!("input {name}");
        let input = match r {
            Read::Folder(snap, dir_name) => {
                let up = target.folder(&what, &snap, &dir_name, progress)?;
                let uri = ds.azureml_uri(&format!("{}/", up.prefix));
                uploads.push(up);
                Input::Folder(uri)
            }
            Read::File(f) => {
                let prefix = format!("{UPLOAD_ROOT}/{}", &f.sha256.hex()[..32]);
                let rel = f.rel.clone();
                let up = target.upload(&what, &prefix, &[f], progress)?;
                let uri = ds.azureml_uri(&format!("{}/{rel}", up.prefix));
                uploads.push(up);
                Input::File(uri)
            }
            Read::Passed(i) => i,
        };
        inputs.insert(name.clone(), input);
    }
    let mut code = None;
    if let Some((snap, dir_name)) = &local.code {
        let up = target.folder(&format!("code {dir_name}"), snap, dir_name, progress)?;
        let version = CodeVersion {
            name: code::name_for(dir_name),
            version: snap.short_hash(),
            uri: ds.url_of(&up.prefix),
            description: format!(
                "envbuild code snapshot of {dir_name} ({} files, {} bytes)",
                snap.files.len(),
                snap.total_bytes
            ),
            tags: [(
                "envbuild.snapshot.digest".to_owned(),
                snap.digest.to_string(),
            )]
            .into(),
        };
        uploads.push(up);
        // Uploaded and verified: now, and only now, the version that points at it.
        let outcome = code::register(client, &version)?;
        code = Some((version, outcome));
    }
    Ok(Staged {
        datastore: Some(ds),
        code,
        inputs,
        uploads,
    })
}

/// An input that needs no upload: a URI (a folder the service mounts) or a literal.
fn passed(v: &InputValue) -> Input {
    match v {
        InputValue::Literal(s) => Input::Literal(s.clone()),
        InputValue::Uri(u) => Input::Folder(u.clone()),
        InputValue::Folder(p) | InputValue::File(p) => Input::Folder(p.display().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azureml::datastore::Credentials;

    #[test]
    fn local_names_and_hashes() {
        assert_eq!(file_name(Path::new("/a/b/mnist")), "mnist");
        assert_eq!(file_name(Path::new("/")), "data");
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("x.csv");
        std::fs::write(&f, b"a,b\n").unwrap();
        let (d, n) = sha256_of(&f).unwrap();
        assert_eq!((d, n), (Digest::of(b"a,b\n"), 4));
        let e = sha256_of(&t.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn refusals_are_told_apart_by_code_and_datastore() {
        let ds = |creds: Credentials| Datastore {
            name: "workspaceblobstore".into(),
            account: "stenvbuild01".into(),
            container: "azureml-blobstore-1".into(),
            endpoint: "core.windows.net".into(),
            protocol: "https".into(),
            credentials: creds,
            is_default: true,
        };
        let refused = |status: u16, code: &str| {
            BlobError::Service(Box::new(crate::blob::ServiceFailure {
                op: "Put Block",
                what: "azureml-blobstore-1/LocalUpload/x/src/a".into(),
                account: "stenvbuild01".into(),
                container: "azureml-blobstore-1".into(),
                status,
                code: code.into(),
                message: "refused".into(),
                detail: None,
            }))
        };
        let report =
            |e: &StageError| crate::error::report(crate::error::chain(e), crate::hint_of, None);
        // No data role: the role and the account, whatever the datastore's credentials.
        for creds in [Credentials::None, Credentials::AccountKey] {
            let e = classify(
                &ds(creds),
                "code src",
                refused(403, "AuthorizationPermissionMismatch"),
            );
            assert!(matches!(e, StageError::Denied { .. }), "{e:?}");
            let r = report(&e);
            assert!(
                r.contains("Storage Blob Data Contributor") && r.contains("stenvbuild01"),
                "{r}"
            );
        }
        // A key-based datastore whose storage takes no token of ours: one message, its fix.
        let e = classify(
            &ds(Credentials::AccountKey),
            "code src",
            refused(401, "InvalidAuthenticationInfo"),
        );
        let r = report(&e);
        assert!(
            matches!(e, StageError::KeyOnly { .. })
                && r.contains("datastore workspaceblobstore")
                && r.contains("AccountKey")
                && r.contains("identity-based"),
            "{r}"
        );
        // The same on an identity-based datastore is the storage error itself, with its hint.
        let e = classify(
            &ds(Credentials::None),
            "code src",
            refused(401, "InvalidAuthenticationInfo"),
        );
        assert!(matches!(e, StageError::Upload(_)), "{e:?}");
        assert!(report(&e).contains("sign in again"), "{}", report(&e));
    }

    #[test]
    fn literals_and_uris_pass_as_they_are() {
        assert_eq!(
            passed(&InputValue::Literal("0.01".into())),
            Input::Literal("0.01".into())
        );
        assert_eq!(
            passed(&InputValue::Uri("azureml://datastores/d/paths/p/".into())),
            Input::Folder("azureml://datastores/d/paths/p/".into())
        );
    }
}
