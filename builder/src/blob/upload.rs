//! The upload: list what is already under the prefix (with metadata), skip the blobs whose
//! `envbuild_sha256` and size match; send small files in one Put Blob each; cut larger ones into
//! blocks with deterministic ids, ask Get Block List which of them an interrupted run staged,
//! send only the others, then commit. One driver reads every file once, in order, hashing it
//! (a file that no longer matches its sha256 is never committed), while up to `parallel`
//! requests run on the runtime's threads — so memory stays at `parallel` blocks, whatever the
//! file sizes.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;

use azure_core::http::RequestContent;
use azure_core::Bytes;
use azure_storage_blob::models::{
    BlockBlobClientCommitBlockListOptions, BlockBlobClientUploadOptions, BlockListType,
    BlockLookupList,
};
use azure_storage_blob::BlockBlobClient;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};

use super::blocks::{self, block_id, ranges};
use super::call::Ctx;
use super::{BlobError, BlobStore, UploadFile, UploadReport, SHA256_KEY};
use crate::digest::Digest;
use crate::progress::{Kind, Progress};

/// What to do with one file.
enum Plan {
    Skip,
    /// One Put Blob.
    Put,
    /// Blocks of this size; these (id, size) are staged already.
    Blocks {
        block: u64,
        staged: HashSet<(Vec<u8>, u64)>,
    },
}

/// A request that ended.
enum Done {
    Put,
    Staged { file: usize },
    Committed,
}

/// Tasks in flight, aborted if the upload stops on an error.
struct Inflight(FuturesUnordered<tokio::task::JoinHandle<Result<(Done, u64), BlobError>>>);

impl Drop for Inflight {
    fn drop(&mut self) {
        for t in self.0.iter() {
            t.abort();
        }
    }
}

pub(super) fn upload_files(
    store: &BlobStore,
    prefix: &str,
    files: &[UploadFile],
    progress: &dyn Progress,
) -> Result<UploadReport, BlobError> {
    if let Some(bad) = files.iter().find(|f| !blocks::safe_relative(&f.rel)) {
        return Err(BlobError::BadName(bad.rel.clone()));
    }
    let (req0, bytes0) = store.sent();
    let ctx = store.ctx();
    let container = store.container_client()?;
    let names: Vec<String> = files.iter().map(|f| blocks::join(prefix, &f.rel)).collect();
    // A client (its pipeline) per request site, made when needed: not 10,000 held at once.
    let client_of = |i: usize| store.block_client(&names[i]);
    let total: u64 = files.iter().map(|f| f.size).sum();
    let task = progress.task(
        Kind::Upload,
        &format!("{} ({} files)", prefix.trim_matches('/'), files.len()),
        Some(total),
    );
    let mut report = store.runtime.block_on(async {
        // What is there already: one listing for the whole prefix, not a request per file.
        let p = prefix.trim_matches('/');
        let listed = super::download::list_with(
            &ctx,
            &container,
            &if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            },
        )
        .await?;
        let mut plans = Vec::with_capacity(files.len());
        let mut report = UploadReport::default();
        for (f, name) in files.iter().zip(&names) {
            let there = listed.get(name);
            if there.is_some_and(|b| b.size == f.size && b.sha256 == Some(f.sha256)) {
                report.blobs_skipped += 1;
                plans.push(Plan::Skip);
            } else if f.size <= store.settings.block_size {
                plans.push(Plan::Put);
            } else {
                plans.push(Plan::Blocks {
                    block: blocks::block_size(f.size, store.settings.block_size),
                    staged: HashSet::new(),
                });
            }
        }
        // What interrupted runs staged, for the files sent in blocks (few: the large ones).
        let wanted: Vec<usize> = (0..files.len())
            .filter(|i| matches!(plans[*i], Plan::Blocks { .. }))
            .collect();
        let mut staged = futures_util::stream::iter(wanted.into_iter().map(|i| {
            let ctx = ctx.clone();
            let client = client_of(i);
            let name = names[i].clone();
            async move { staged_blocks(&ctx, &client?, &name).await.map(|s| (i, s)) }
        }))
        .buffer_unordered(store.settings.parallel);
        while let Some(r) = staged.next().await {
            let (i, s) = r?;
            if let Plan::Blocks { staged, .. } = &mut plans[i] {
                *staged = s;
            }
        }
        drop(staged);
        let skipped_bytes: u64 = files
            .iter()
            .zip(&plans)
            .filter(|(_, p)| matches!(p, Plan::Skip))
            .map(|(f, _)| f.size)
            .sum();
        let mut done_bytes = skipped_bytes;
        task.set(done_bytes);

        let parallel = store.settings.parallel;
        let mut inflight = Inflight(FuturesUnordered::new());
        // Blocks of each file still in flight, and whether the file was read and matched.
        let mut pending = vec![0usize; files.len()];
        let mut verified = vec![false; files.len()];
        let commit = |i: usize, block: u64| {
            let ctx = ctx.clone();
            let client = client_of(i);
            let name = names[i].clone();
            let f = files[i].clone();
            tokio::spawn(async move {
                commit_blocks(&ctx, &client?, &name, &f, block).await?;
                Ok((Done::Committed, 0))
            })
        };
        // Handles one ended request: may start the commit of a file whose last block ended.
        let ended = |r: Result<Result<(Done, u64), BlobError>, tokio::task::JoinError>,
                     pending: &mut Vec<usize>,
                     verified: &[bool],
                     report: &mut UploadReport,
                     done_bytes: &mut u64|
         -> Result<Option<usize>, BlobError> {
            let (done, bytes) = r.map_err(|e| BlobError::Setup(format!("upload task: {e}")))??;
            *done_bytes += bytes;
            task.set(*done_bytes);
            Ok(match done {
                Done::Put | Done::Committed => {
                    report.blobs_uploaded += 1;
                    None
                }
                Done::Staged { file } => {
                    pending[file] -= 1;
                    (pending[file] == 0 && verified[file]).then_some(file)
                }
            })
        };
        macro_rules! wait_below {
            ($n:expr) => {
                while inflight.0.len() >= $n {
                    let Some(r) = inflight.0.next().await else {
                        break;
                    };
                    if let Some(i) =
                        ended(r, &mut pending, &verified, &mut report, &mut done_bytes)?
                    {
                        if let Plan::Blocks { block, .. } = plans[i] {
                            inflight.0.push(commit(i, block));
                        }
                    }
                }
            };
        }
        for (i, f) in files.iter().enumerate() {
            match &plans[i] {
                Plan::Skip => {}
                Plan::Put => {
                    wait_below!(parallel);
                    let mut bytes = Vec::with_capacity(f.size as usize);
                    File::open(&f.path)
                        .and_then(|h| h.take(f.size + 1).read_to_end(&mut bytes))
                        .map_err(|source| BlobError::Read {
                            path: f.path.clone(),
                            source,
                        })?;
                    let actual = Digest::of(&bytes);
                    if actual != f.sha256 || bytes.len() as u64 != f.size {
                        return Err(BlobError::Changed {
                            path: f.path.clone(),
                            expected: f.sha256,
                            actual,
                        });
                    }
                    let ctx = ctx.clone();
                    let client = client_of(i)?;
                    let name = names[i].clone();
                    let sha = f.sha256;
                    inflight.0.push(tokio::spawn(async move {
                        let n = bytes.len() as u64;
                        put_blob(&ctx, &client, &name, Bytes::from(bytes), &sha).await?;
                        Ok((Done::Put, n))
                    }));
                }
                Plan::Blocks { block, staged } => {
                    let block = *block;
                    let mut h = File::open(&f.path).map_err(|source| BlobError::Read {
                        path: f.path.clone(),
                        source,
                    })?;
                    let mut hasher = Sha256::new();
                    let missing: HashSet<u64> = blocks::missing(&f.sha256, f.size, block, staged)
                        .into_iter()
                        .collect();
                    for (k, (_, len)) in ranges(f.size, block).enumerate() {
                        let id = block_id(&f.sha256, block, k as u64);
                        let send = missing.contains(&(k as u64));
                        if send {
                            wait_below!(parallel);
                        }
                        let mut buf = vec![0u8; len as usize];
                        h.read_exact(&mut buf).map_err(|source| BlobError::Read {
                            path: f.path.clone(),
                            source,
                        })?;
                        hasher.update(&buf);
                        if !send {
                            report.blocks_reused += 1;
                            done_bytes += len;
                            continue;
                        }
                        pending[i] += 1;
                        let ctx = ctx.clone();
                        let client = client_of(i)?;
                        let name = names[i].clone();
                        inflight.0.push(tokio::spawn(async move {
                            stage(&ctx, &client, &name, &id, Bytes::from(buf)).await?;
                            Ok((Done::Staged { file: i }, len))
                        }));
                    }
                    // Nothing past the size either: the file is what was hashed, or it changed.
                    let mut extra = [0u8; 1];
                    let grew = h.read(&mut extra).map_err(|source| BlobError::Read {
                        path: f.path.clone(),
                        source,
                    })? > 0;
                    let actual = Digest::from_sha256(hasher);
                    if actual != f.sha256 || grew {
                        return Err(BlobError::Changed {
                            path: f.path.clone(),
                            expected: f.sha256,
                            actual,
                        });
                    }
                    verified[i] = true;
                    task.set(done_bytes);
                    if pending[i] == 0 {
                        inflight.0.push(commit(i, block));
                    }
                }
            }
        }
        wait_below!(1);
        Ok::<_, BlobError>(report)
    })?;
    let (req1, bytes1) = store.sent();
    report.requests = req1 - req0;
    report.bytes_sent = bytes1 - bytes0;
    task.finish(&format!(
        "sent {} in {} requests; {} blobs written, {} already there",
        human(report.bytes_sent),
        report.requests,
        report.blobs_uploaded,
        report.blobs_skipped
    ));
    Ok(report)
}

/// `n` bytes for people: "12.3 MB".
fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn metadata(sha: &Digest) -> HashMap<String, String> {
    HashMap::from([(SHA256_KEY.to_owned(), sha.hex())])
}

/// The uncommitted blocks of `name` (none when the blob does not exist).
async fn staged_blocks(
    ctx: &Ctx,
    client: &BlockBlobClient,
    name: &str,
) -> Result<HashSet<(Vec<u8>, u64)>, BlobError> {
    let got = ctx
        .call("Get Block List", name, 0, || {
            client.get_block_list(BlockListType::Uncommitted, None)
        })
        .await;
    let list = match got {
        Ok(r) => r
            .into_model()
            .map_err(|e| BlobError::Setup(format!("Get Block List {name}: {e}")))?,
        Err(e) if e.code() == Some("BlobNotFound") => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    Ok(list
        .uncommitted_blocks
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| Some((b.name?, u64::try_from(b.size?).ok()?)))
        .collect())
}

async fn put_blob(
    ctx: &Ctx,
    client: &BlockBlobClient,
    name: &str,
    bytes: Bytes,
    sha: &Digest,
) -> Result<(), BlobError> {
    let n = bytes.len() as u64;
    // One shot: the crate's managed upload sends content up to `partition_size` in a single
    // Put Blob, which is what it is given here (files above the block size go in blocks).
    let partition = std::num::NonZeroU64::new(n.max(1)).expect("non-zero");
    ctx.call("Put Blob", name, n, || {
        client.upload(
            bytes.clone().into(),
            Some(BlockBlobClientUploadOptions {
                metadata: Some(metadata(sha)),
                parallel: std::num::NonZeroUsize::new(1),
                partition_size: Some(partition),
                ..Default::default()
            }),
        )
    })
    .await
    .map(drop)
}

async fn stage(
    ctx: &Ctx,
    client: &BlockBlobClient,
    name: &str,
    id: &[u8],
    bytes: Bytes,
) -> Result<(), BlobError> {
    let n = bytes.len() as u64;
    ctx.call("Put Block", name, n, || {
        client.stage_block(id, n, bytes.clone().into(), None)
    })
    .await
    .map(drop)
}

async fn commit_blocks(
    ctx: &Ctx,
    client: &BlockBlobClient,
    name: &str,
    f: &UploadFile,
    block: u64,
) -> Result<(), BlobError> {
    let ids: Vec<Vec<u8>> = (0..f.size.div_ceil(block))
        .map(|k| block_id(&f.sha256, block, k))
        .collect();
    ctx.call("Put Block List", name, 0, || {
        let list = BlockLookupList {
            latest: Some(ids.clone()),
            ..Default::default()
        };
        let body = RequestContent::try_from(list);
        async move {
            client
                .commit_block_list(
                    body?,
                    Some(BlockBlobClientCommitBlockListOptions {
                        metadata: Some(metadata(&f.sha256)),
                        ..Default::default()
                    }),
                )
                .await
        }
    })
    .await
    .map(drop)
}
