//! Listing (List Blobs with a prefix, every page, metadata included) and the verified, atomic
//! download of everything under a prefix: into a temporary directory beside the target, each
//! blob's length and `envbuild_sha256` checked as it streams to disk, then one rename.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobContainerClientListBlobsOptions, ListBlobsIncludeItem,
};
use azure_storage_blob::BlobContainerClient;
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};

use super::call::Ctx;
use super::{blocks, BlobError, BlobProps, BlobStore, DownloadReport, SHA256_KEY};
use crate::digest::Digest;
use crate::progress::{Kind, Progress};

pub(super) async fn list(
    store: &BlobStore,
    client: &BlobContainerClient,
    prefix: &str,
) -> Result<HashMap<String, BlobProps>, BlobError> {
    list_with(&store.ctx(), client, prefix).await
}

/// Every blob whose name starts with `prefix`, page after page (`NextMarker`), each page retried
/// on its own.
pub(super) async fn list_with(
    ctx: &Ctx,
    client: &BlobContainerClient,
    prefix: &str,
) -> Result<HashMap<String, BlobProps>, BlobError> {
    let mut out = HashMap::new();
    let mut marker: Option<String> = None;
    let what = format!("{}/{prefix}", ctx.container);
    loop {
        let page = ctx
            .call("List Blobs", &what, 0, || {
                let options = BlobContainerClientListBlobsOptions {
                    include: Some(vec![ListBlobsIncludeItem::Metadata]),
                    marker: marker.clone(),
                    prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
                    ..Default::default()
                };
                async move {
                    let mut pages = client.list_blobs(Some(options))?.into_pages();
                    match pages.next().await {
                        Some(r) => r,
                        None => Err(azure_core::Error::with_message(
                            azure_core::error::ErrorKind::Other,
                            "List Blobs gave no page",
                        )),
                    }
                }
            })
            .await?
            .into_model()
            .map_err(|e| BlobError::Setup(format!("List Blobs {what}: {e}")))?;
        for item in page.blob_items {
            let Some(name) = item.name else {
                continue;
            };
            let size = item
                .properties
                .and_then(|p| p.content_length)
                .unwrap_or_default();
            let sha256 = item
                .metadata
                .and_then(|m| m.values)
                .and_then(|m| m.get(SHA256_KEY).cloned())
                .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok());
            out.insert(name, BlobProps { size, sha256 });
        }
        match page.next_marker.filter(|m| !m.is_empty()) {
            Some(m) => marker = Some(m),
            None => return Ok(out),
        }
    }
}

pub(super) fn download_prefix(
    store: &BlobStore,
    prefix: &str,
    to: &Path,
    progress: &dyn Progress,
) -> Result<DownloadReport, BlobError> {
    let p = prefix.trim_matches('/');
    let list_prefix = if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    };
    let listed = store.list(&list_prefix)?;
    if listed.is_empty() {
        return Err(BlobError::NothingThere {
            prefix: list_prefix,
            account: store.account.clone(),
            container: store.container.clone(),
        });
    }
    // Every name must be a plain relative path under the prefix before anything is written.
    let mut files: Vec<(String, String, BlobProps)> = Vec::new();
    for (name, props) in listed {
        let rel = name[list_prefix.len()..].to_owned();
        if !blocks::safe_relative(&rel) {
            return Err(BlobError::BadName(name));
        }
        files.push((name, rel, props));
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    if to.exists() {
        let empty = std::fs::read_dir(to)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(BlobError::TargetExists(to.to_path_buf()));
        }
    }
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|source| BlobError::Write {
        path: parent.clone(),
        source,
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(".envbuild-download-")
        .tempdir_in(&parent)
        .map_err(|source| BlobError::Write {
            path: parent.clone(),
            source,
        })?;
    let total: u64 = files.iter().map(|f| f.2.size).sum();
    let task = progress.task(Kind::Download, p, Some(total));
    let (req0, _) = store.sent();
    let ctx = store.ctx();
    let report = store.runtime.block_on(async {
        let mut report = DownloadReport::default();
        let mut done = 0u64;
        let mut fetches = futures_util::stream::iter(files.iter().map(|(name, rel, props)| {
            let ctx = ctx.clone();
            let dest = tmp.path().join(rel);
            let client = store.blob_client(name);
            async move {
                fetch(&ctx, &client?, name, props, &dest, to).await?;
                Ok::<_, BlobError>(props)
            }
        }))
        .buffer_unordered(store.settings.parallel);
        while let Some(r) = fetches.next().await {
            let props = r?;
            report.files += 1;
            report.bytes += props.size;
            report.verified += usize::from(props.sha256.is_some());
            done += props.size;
            task.set(done);
        }
        Ok::<_, BlobError>(report)
    })?;
    // Complete: into place in one step (an empty directory there is replaced).
    if to.exists() {
        std::fs::remove_dir(to).map_err(|source| BlobError::Write {
            path: to.to_path_buf(),
            source,
        })?;
    }
    let tmp = tmp.keep();
    std::fs::rename(&tmp, to).map_err(|source| {
        let _ = std::fs::remove_dir_all(&tmp);
        BlobError::Write {
            path: to.to_path_buf(),
            source,
        }
    })?;
    let report = DownloadReport {
        requests: store.sent().0 - req0,
        ..report
    };
    task.finish(&format!("{} files, {} bytes", report.files, report.bytes));
    Ok(report)
}

/// Get Blob into `dest`, hashed and counted as it streams; tried again from the start when the
/// answer breaks off.
async fn fetch(
    ctx: &Ctx,
    client: &azure_storage_blob::BlobClient,
    name: &str,
    props: &BlobProps,
    dest: &Path,
    to: &Path,
) -> Result<(), BlobError> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|source| BlobError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let (len, sha) = ctx
        .call("Get Blob", name, 0, || async {
            // One request for the whole blob: the crate's first range is the partition size.
            let partition = std::num::NonZeroUsize::new(usize::MAX >> 2).expect("non-zero");
            let resp = client
                .download(Some(BlobClientDownloadOptions {
                    parallel: std::num::NonZeroUsize::new(1),
                    partition_size: Some(partition),
                    ..Default::default()
                }))
                .await?;
            let mut body = resp.body;
            let mut file = std::fs::File::create(dest)
                .map_err(|e| azure_core::Error::new(azure_core::error::ErrorKind::Other, e))?;
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                len += chunk.len() as u64;
                file.write_all(&chunk)
                    .map_err(|e| azure_core::Error::new(azure_core::error::ErrorKind::Other, e))?;
            }
            file.sync_all()
                .map_err(|e| azure_core::Error::new(azure_core::error::ErrorKind::Other, e))?;
            Ok((len, Digest::from_sha256(hasher)))
        })
        .await?;
    if len != props.size {
        return Err(BlobError::Corrupt {
            name: name.to_owned(),
            what: format!("{len} bytes came, the listing said {}", props.size),
            to: to.to_path_buf(),
        });
    }
    if let Some(want) = props.sha256 {
        if sha != want {
            return Err(BlobError::Corrupt {
                name: name.to_owned(),
                what: format!("its bytes hash to {sha}, its metadata says {want}"),
                to: to.to_path_buf(),
            });
        }
    }
    Ok(())
}
