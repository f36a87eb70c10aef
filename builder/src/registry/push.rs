//! Pushing a whole image with as few round trips one after another as the protocol allows:
//! every blob checked at once (the referrers' with the image's), what is missing uploaded
//! largest first (mounted where the push ledger knows another repository of the registry holds
//! it), and each manifest as soon as what it needs is there — the image's only after every
//! blob is confirmed, under the tag (or its digest) — with one update of the referrers tag
//! where it is needed.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
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

/// What the requests after the checks wait on: which blobs the registry has, whether it listed
/// each referrer itself (answered `OCI-Subject`), and the first failure.
struct Tail {
    present: Vec<bool>,
    processed: Vec<Option<bool>>,
    error: Option<RegistryError>,
}

/// At most this many existence checks (HEADs) at once.
const CHECKS: usize = 16;

/// Pushes every blob (in parallel, bounded), then the manifest under the tag (or its digest).
/// Each blob is an upload task of `progress`, finished `pushed`, `exists` or `mounted`.
///
/// Over a distant link a push is counted in round trips, so no request waits for more than it
/// needs: the ping and every blob's HEAD at once, with the upload session of each blob the push
/// ledger expects to be new opened beside its HEAD, and the referrers tag's index fetched in
/// the same round trip; then the uploads of what is missing, each referrer's manifest as soon as
/// its blobs are in, and the image's manifest and (where the registry did not list the
/// referrers itself) the referrers tag once every blob is.
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
    // Then each request goes as soon as what it needs is there: what is missing goes up,
    // largest first (taken from the end), so the big layers' streams start at once and the
    // small ones fill in beside them; the image's manifest once every blob is confirmed; each
    // referrer's manifest once its own blobs are (the distribution spec does not ask that a
    // subject exist first; a push that fails later leaves it untagged, as it leaves blobs);
    // the referrers tag beside the image's manifest, once the registry has answered for every
    // referrer whether it lists them itself.
    let checks = checks.into_inner().expect("lock");
    let results: Mutex<Vec<(u64, Sent)>> = Mutex::new(Vec::new());
    let mut queue = Vec::new();
    let mut present = vec![false; blobs.len()];
    for (i, (b, check)) in blobs.iter().zip(checks).enumerate() {
        match check {
            Some(Check::Missing(session)) => queue.push((i, session)),
            _ => {
                present[i] = true;
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
    let index_of = |d: &Digest| blobs.iter().position(|b| b.digest == *d).expect("listed");
    let referrer_needs: Vec<Vec<usize>> = image
        .referrers
        .iter()
        .map(|a| a.blobs.iter().map(|(d, ..)| index_of(d)).collect())
        .collect();
    let state = Mutex::new(Tail {
        present,
        processed: vec![None; image.referrers.len()],
        error: None,
    });
    let changed = Condvar::new();
    // Marks an outcome in the state and wakes the waiting.
    let record = |f: &dyn Fn(&mut Tail)| {
        f(&mut state.lock().expect("lock"));
        changed.notify_all();
    };
    let fail = |e: RegistryError| {
        state.lock().expect("lock").error.get_or_insert(e);
        changed.notify_all();
    };
    // Waits until `ready`; false when the push failed meanwhile.
    let wait_for = |ready: &dyn Fn(&Tail) -> bool| -> bool {
        let mut t = state.lock().expect("lock");
        loop {
            if t.error.is_some() {
                return false;
            }
            if ready(&t) {
                return true;
            }
            t = changed.wait(t).expect("lock");
        }
    };
    let tag = client
        .reference
        .tag
        .clone()
        .unwrap_or_else(|| digest.to_string());
    std::thread::scope(|s| {
        let n = queue.lock().expect("lock").len();
        for _ in 0..client.settings.parallel.min(n) {
            s.spawn(|| loop {
                if state.lock().expect("lock").error.is_some() {
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
                        record(&|tail: &mut Tail| tail.present[i] = true);
                    }
                    Err(e) => return fail(e),
                }
            });
        }
        s.spawn(|| {
            if wait_for(&|t: &Tail| t.present.iter().all(|&p| p)) {
                if let Err(e) = client.push_manifest(&tag, &image.media_type, &image.manifest) {
                    fail(e);
                }
            }
        });
        for (j, a) in image.referrers.iter().enumerate() {
            let needs = &referrer_needs[j];
            s.spawn(move || {
                if wait_for(&|t: &Tail| needs.iter().all(|&i| t.present[i])) {
                    match super::referrers::put_referrer(client, a) {
                        Ok(p) => record(&|t: &mut Tail| t.processed[j] = Some(p)),
                        Err(e) => fail(e),
                    }
                }
            });
        }
        if let Some(index) = tag_index {
            s.spawn(|| {
                let done = |t: &Tail| {
                    t.present.iter().all(|&p| p) && t.processed.iter().all(Option::is_some)
                };
                if !wait_for(&done) {
                    return;
                }
                let processed = state.lock().expect("lock").processed.clone();
                let unlisted: Vec<&Pushable> = image
                    .referrers
                    .iter()
                    .zip(&processed)
                    .filter(|(_, p)| **p == Some(false))
                    .map(|(a, _)| a)
                    .collect();
                if unlisted.is_empty() {
                    return;
                }
                let added = index.and_then(|index| {
                    super::referrers::add_to_tag_index(client, &digest, index, &unlisted)
                });
                if let Err(e) = added {
                    fail(e);
                }
            });
        }
    });
    let tail = state.into_inner().expect("lock");
    if let Some(e) = tail.error {
        return Err(e);
    }
    let results = results.into_inner().expect("lock");
    let processed: Vec<bool> = tail
        .processed
        .into_iter()
        .map(|p| p == Some(true))
        .collect();
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
