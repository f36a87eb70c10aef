//! Pushing a whole image in waves of parallel requests, since over a distant link a push is
//! counted in round trips: every blob checked at once (the referrers' with the image's), what
//! is missing uploaded largest first (mounted where the push ledger knows another repository
//! of the registry holds it), then — only after every blob is confirmed — the manifest under
//! the tag (or its digest) with the referrers' manifests beside it, and one update of the
//! referrers tag where it is needed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use super::{Check, Client, RegistryError, Sent};
use crate::digest::Digest;
use crate::image::Pushable;
use crate::progress::{Kind, Progress, Task};

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PushReport {
    pub reference: String,
    pub uploaded: usize,
    pub skipped: usize,
    /// Blobs mounted from another repository of the registry.
    pub mounted: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// The artifacts attached to the image (SBOM, provenance).
    pub referrers: Vec<Referrer>,
}

/// One artifact attached by a push.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Referrer {
    /// The artifact manifest's digest.
    pub digest: String,
    pub artifact_type: String,
    /// The document's digest (the SBOM's bytes).
    pub document: String,
    /// Through the registry's referrers API, or the tag schema.
    pub listed: super::referrers::Listed,
}

/// One blob of a push: the image's own have a task of the display; the referrers' do not.
struct Blob {
    digest: Digest,
    size: u64,
    path: PathBuf,
    verify: bool,
    task: Option<Task>,
}

impl Blob {
    fn new(digest: Digest, size: u64, path: &Path, verify: bool, image: bool) -> Blob {
        Blob {
            digest,
            size,
            path: path.to_path_buf(),
            verify,
            // A placeholder until the tasks are made in display order.
            task: image.then(Task::hidden),
        }
    }
}

/// At most this many existence checks (HEADs) at once, and connections opened for them.
const CHECKS: usize = 16;

/// Pushes every blob (in parallel, bounded), then the manifest under the tag (or its digest).
/// Each blob is an upload task of `progress`, finished `pushed`, `exists` or `mounted`.
///
/// Over a distant link a push is counted in round trips, so the requests go in waves: the ping
/// and every blob's HEAD at once, with the upload session of each blob the push ledger expects
/// to be new opened beside its HEAD, and the referrers tag's index fetched in the same wave;
/// the uploads of what is missing; the image's manifest and its referrers' side by side; last,
/// the referrers tag where the registry did not list them itself.
pub fn push(
    client: &Client,
    image: &Pushable,
    progress: &dyn Progress,
) -> Result<PushReport, RegistryError> {
    let start = Instant::now();
    let r = &client.reference;
    // Every blob, the image's then the referrers' (small, and one empty config they share),
    // each once.
    let mut blobs: Vec<Blob> = image
        .blobs
        .iter()
        .map(|(d, size, path)| Blob::new(*d, *size, path, image.verify, true))
        .collect();
    for a in &image.referrers {
        for (d, size, path) in &a.blobs {
            if !blobs.iter().any(|b| b.digest == *d) {
                blobs.push(Blob::new(*d, *size, path, a.verify, false));
            }
        }
    }
    // Largest first; the image's get their tasks in that order, so the display lists them in
    // a stable one.
    blobs.sort_by_key(|b| std::cmp::Reverse((b.size, b.digest)));
    for b in blobs.iter_mut().filter(|b| b.task.is_some()) {
        b.task = Some(progress.task(Kind::Upload, &b.digest.to_string(), Some(b.size)));
    }
    // Blobs known in other repositories of this registry: mount candidates, whose pull scope
    // the token must include.
    let known = client
        .ledger
        .as_ref()
        .map(|l| l.sources(&r.registry))
        .unwrap_or_default();
    let holders = |d: &Digest| known.get(&d.to_string()).cloned().unwrap_or_default();
    let sources = |d: &Digest| -> Vec<String> {
        holders(d)
            .into_iter()
            .filter(|s| *s != r.repository)
            .collect()
    };
    // Where this repository is known to hold some of the image's blobs (a push after a
    // change), a blob it is not known to hold is most likely new.
    let here = |d: &Digest| holders(d).contains(&r.repository);
    let pushed_here_before = image.blobs.iter().any(|(d, _, _)| here(d));
    let likely_new = |d: &Digest| pushed_here_before && !here(d) && sources(d).is_empty();
    {
        let mut m = client.mount_sources.lock().expect("lock");
        for b in &blobs {
            for s in sources(&b.digest) {
                if !m.contains(&s) {
                    m.push(s);
                }
            }
        }
    }
    let digest = Digest::of(&image.manifest);
    // Wave 1: the ping, the checks, and the referrers tag's index.
    let next = Mutex::new(0usize);
    let checks: Mutex<Vec<Option<Check>>> = Mutex::new(vec![None; blobs.len()]);
    let first_error: Mutex<Option<RegistryError>> = Mutex::new(None);
    let fail = |e| {
        first_error.lock().expect("lock").get_or_insert(e);
    };
    let (pinged, tag_index) = std::thread::scope(|s| {
        // The registry must answer as one before any blob moves: the ping goes with the checks
        // (whose requests move nothing), and what they found is used only if it passes. The
        // first to meet a challenge answers it; the others retry with its token.
        let ping = s.spawn(|| client.ping("GET /v2/"));
        let index = (!image.referrers.is_empty())
            .then(|| s.spawn(|| super::referrers::tag_index(client, &digest)));
        for _ in 0..blobs.len().min(CHECKS) {
            s.spawn(|| loop {
                if first_error.lock().expect("lock").is_some() {
                    return;
                }
                let i = {
                    let mut n = next.lock().expect("lock");
                    *n += 1;
                    *n - 1
                };
                let Some(b) = blobs.get(i) else {
                    return;
                };
                match client.check_blob(&b.digest, b.size, likely_new(&b.digest)) {
                    Ok(c) => checks.lock().expect("lock")[i] = Some(c),
                    Err(e) => return fail(e),
                }
            });
        }
        (
            ping.join().expect("ping thread"),
            index.map(|h| h.join().expect("referrers tag thread")),
        )
    });
    pinged?;
    if let Some(e) = first_error.lock().expect("lock").take() {
        return Err(e);
    }
    // Wave 2: what is missing goes up, largest first (taken from the end): the big layers'
    // streams start at once and the small ones fill in beside them.
    let checks = checks.into_inner().expect("lock");
    let results: Mutex<Vec<(u64, Sent)>> = Mutex::new(Vec::new());
    let mut queue = Vec::new();
    for (i, (b, check)) in blobs.iter().zip(checks).enumerate() {
        match check {
            Some(Check::Missing(session)) => queue.push((i, session)),
            _ => {
                // Counted for the image's blobs only, as the report describes them.
                if let Some(t) = &b.task {
                    t.finish("exists");
                    results.lock().expect("lock").push((b.size, Sent::Skipped));
                }
            }
        }
    }
    queue.reverse();
    let queue = Mutex::new(queue);
    std::thread::scope(|s| {
        let n = queue.lock().expect("lock").len();
        for _ in 0..client.settings.parallel.min(n) {
            s.spawn(|| loop {
                if first_error.lock().expect("lock").is_some() {
                    return;
                }
                let Some((i, session)) = queue.lock().expect("lock").pop() else {
                    return;
                };
                let b = &blobs[i];
                let hidden = Task::hidden();
                let t = b.task.as_ref().unwrap_or(&hidden);
                let sent = client.send_blob(
                    &b.digest,
                    b.size,
                    &b.path,
                    &sources(&b.digest),
                    b.verify,
                    session,
                    t,
                );
                match sent {
                    Ok(sent) => {
                        if b.task.is_some() {
                            t.finish(match sent {
                                Sent::Uploaded => "pushed",
                                Sent::Skipped => "exists",
                                Sent::Mounted => "mounted",
                            });
                            results.lock().expect("lock").push((b.size, sent));
                        }
                    }
                    Err(e) => return fail(e),
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("lock") {
        return Err(e);
    }
    // Wave 3: only after every blob is confirmed present does the manifest go up; its
    // referrers' (SBOM, provenance) go beside it: the distribution spec does not ask that a
    // subject exist before what refers to it.
    let results = results.into_inner().expect("lock");
    let tag = client
        .reference
        .tag
        .clone()
        .unwrap_or_else(|| digest.to_string());
    let (pushed, processed) = std::thread::scope(|s| {
        let handles: Vec<_> = image
            .referrers
            .iter()
            .map(|a| s.spawn(|| super::referrers::put_referrer(client, a)))
            .collect();
        let pushed = client.push_manifest(&tag, &image.media_type, &image.manifest);
        let processed: Vec<Result<bool, RegistryError>> = handles
            .into_iter()
            .map(|h| h.join().expect("referrer thread"))
            .collect();
        (pushed, processed)
    });
    pushed?;
    let processed: Vec<bool> = processed.into_iter().collect::<Result<_, _>>()?;
    // Wave 4: one update of the referrers tag for those the registry did not list.
    let unlisted: Vec<&Pushable> = image
        .referrers
        .iter()
        .zip(&processed)
        .filter(|(_, p)| !**p)
        .map(|(a, _)| a)
        .collect();
    if !unlisted.is_empty() {
        let index = tag_index.expect("fetched when there are referrers")?;
        super::referrers::add_to_tag_index(client, &digest, index, &unlisted)?;
    }
    let mut referrers = Vec::new();
    for (artifact, processed) in image.referrers.iter().zip(&processed) {
        let how = if *processed {
            super::referrers::Listed::ReferrersApi
        } else {
            super::referrers::Listed::TagSchema
        };
        let v: serde_json::Value = serde_json::from_slice(&artifact.manifest).unwrap_or_default();
        referrers.push(Referrer {
            digest: Digest::of(&artifact.manifest).to_string(),
            artifact_type: v["artifactType"].as_str().unwrap_or_default().to_owned(),
            document: v["layers"][0]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            listed: how,
        });
    }
    if let Some(ledger) = &client.ledger {
        let digests: Vec<Digest> = blobs.iter().map(|b| b.digest).collect();
        ledger.record(&r.registry, &r.repository, &digests);
    }
    let count = |k: Sent| results.iter().filter(|(_, s)| *s == k).count();
    Ok(PushReport {
        reference: format!("{}/{}@{digest}", r.registry, r.repository),
        uploaded: count(Sent::Uploaded),
        skipped: count(Sent::Skipped),
        mounted: count(Sent::Mounted),
        bytes: results
            .iter()
            .filter(|(_, s)| *s == Sent::Uploaded)
            .map(|(n, _)| n)
            .sum(),
        seconds: start.elapsed().as_secs_f64(),
        referrers,
    })
}
