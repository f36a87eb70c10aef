//! Pushing a whole image: every blob, the referrers' with them (in parallel, largest first,
//! mounted where the push ledger knows another repository of the registry holds it), then —
//! only after every blob is confirmed — the manifest under the tag (or its digest), then the
//! referrers' manifests side by side and one update of the referrers tag where it is needed.

use std::sync::Mutex;
use std::time::Instant;

use super::{Client, RegistryError, Sent};
use crate::digest::Digest;
use crate::image::Pushable;
use crate::progress::{Kind, Progress};

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

/// Pushes every blob (in parallel, bounded), then the manifest under the tag (or its digest).
/// Each blob is an upload task of `progress`, finished `pushed`, `exists` or `mounted`.
pub fn push(
    client: &Client,
    image: &Pushable,
    progress: &dyn Progress,
) -> Result<PushReport, RegistryError> {
    let start = Instant::now();
    let r = &client.reference;
    // The registry must answer as one (and authentication is settled) before any blob moves.
    client.ping("GET /v2/")?;
    // Blobs known in other repositories of this registry: mount candidates, whose pull scope
    // the token must include.
    let known = client
        .ledger
        .as_ref()
        .map(|l| l.sources(&r.registry))
        .unwrap_or_default();
    let sources = |d: &Digest| -> Vec<String> {
        known
            .get(&d.to_string())
            .map(|v| v.iter().filter(|s| **s != r.repository).cloned().collect())
            .unwrap_or_default()
    };
    {
        let mut m = client.mount_sources.lock().expect("lock");
        for (d, _, _) in &image.blobs {
            for s in sources(d) {
                if !m.contains(&s) {
                    m.push(s);
                }
            }
        }
    }
    // Largest first (taken from the end): the big layers' streams start at once and the small
    // ones fill in beside them, instead of one big layer going up alone at the end.
    let mut queue = image.blobs.clone();
    queue.sort_by_key(|(d, size, _)| (*size, *d));
    // The tasks are made here, largest first, so the display lists blobs in a stable order.
    let mut queue: Vec<_> = queue
        .into_iter()
        .rev()
        .map(|(d, size, path)| {
            let t = progress.task(Kind::Upload, &d.to_string(), Some(size));
            (d, size, path, image.verify, Some(t))
        })
        .collect();
    // The referrers' blobs (small, and one empty config they share) go in the same waves, not
    // in round trips of their own after the manifest; they are not the image's, so no task.
    for a in &image.referrers {
        for (d, size, path) in &a.blobs {
            if !queue.iter().any(|q| q.0 == *d) {
                queue.push((*d, *size, path.clone(), a.verify, None));
            }
        }
    }
    queue.reverse();
    let queue = Mutex::new(queue);
    let results: Mutex<Vec<(u64, Sent)>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<RegistryError>> = Mutex::new(None);
    std::thread::scope(|s| {
        let n = queue.lock().expect("lock").len();
        for _ in 0..client.settings.parallel.min(n.max(1)) {
            s.spawn(|| loop {
                if first_error.lock().expect("lock").is_some() {
                    return;
                }
                let Some((d, size, path, verify, task)) = queue.lock().expect("lock").pop() else {
                    return;
                };
                let hidden = crate::progress::Task::hidden();
                let t = task.as_ref().unwrap_or(&hidden);
                match client.push_blob_from(&d, size, &path, &sources(&d), verify, t) {
                    Ok(sent) => {
                        // Counted for the image's blobs only, as the report describes them.
                        if task.is_some() {
                            t.finish(match sent {
                                Sent::Uploaded => "pushed",
                                Sent::Skipped => "exists",
                                Sent::Mounted => "mounted",
                            });
                            results.lock().expect("lock").push((size, sent));
                        }
                    }
                    Err(e) => {
                        first_error.lock().expect("lock").get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("lock") {
        return Err(e);
    }
    // Only after every blob is confirmed present does the manifest go up.
    let results = results.into_inner().expect("lock");
    let digest = Digest::of(&image.manifest);
    let tag = client
        .reference
        .tag
        .clone()
        .unwrap_or_else(|| digest.to_string());
    client.push_manifest(&tag, &image.media_type, &image.manifest)?;
    // Then what refers to it (SBOM, provenance), once their subject is there: their manifests
    // side by side, then one update of the referrers tag for those the registry did not list.
    let processed: Vec<Result<bool, RegistryError>> = std::thread::scope(|s| {
        let handles: Vec<_> = image
            .referrers
            .iter()
            .map(|a| s.spawn(|| super::referrers::put_referrer(client, a)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("referrer thread"))
            .collect()
    });
    let processed: Vec<bool> = processed.into_iter().collect::<Result<_, _>>()?;
    let unlisted: Vec<&Pushable> = image
        .referrers
        .iter()
        .zip(&processed)
        .filter(|(_, p)| !**p)
        .map(|(a, _)| a)
        .collect();
    super::referrers::list_in_tag_schema(client, &digest, &unlisted)?;
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
        let digests: Vec<Digest> = image.blobs.iter().map(|(d, _, _)| *d).collect();
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
