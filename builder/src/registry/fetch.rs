//! Fetching an image's missing blobs into the cache over three connections per `--parallel`
//! transfer, the largest first, and each blob over [`PART`] bytes in parts of that size fetched
//! side by side as HTTP range requests, where the registry answers them (distribution's blob
//! GET does, and the storage ACR redirects to). Over a link that caps each connection, one
//! large layer on one stream would bound the whole pull.
//!
//! A blob's parts land at their offsets in one temporary file and are hashed in order as they
//! land, so it is verified when its last part arrives, and committed to the cache only then. A
//! registry that answers the first range with the whole blob (200) has it streamed as one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use reqwest::header::CONTENT_RANGE;
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

use super::{Client, RegistryError};
use crate::cache::Cache;
use crate::digest::Digest;
use crate::progress::Task;

/// Blobs larger than this are fetched in parts of this size.
pub const PART: u64 = 32 << 20;

/// Connections per parallel transfer (`--parallel`): a large layer's parts share them, since a
/// link that caps each connection caps each part (measured through the shaping proxy, 40 ms and
/// 50 MB/s: the CUDA image in 17.3 s over 4 connections, 8.5 s over 8, 6.8 s over 12).
const CONNECTIONS_PER_TRANSFER: usize = 3;

/// One blob to fetch.
#[derive(Debug)]
pub struct Wanted {
    pub digest: Digest,
    pub size: u64,
    /// Hears the bytes received; finished `pulled`.
    pub task: Task,
}

/// A unit of work: a blob's first request (which may split it into parts), or one part.
enum Work {
    Blob(usize),
    Part(Arc<Parts>, u64, u64),
}

/// A blob being fetched in parts.
struct Parts {
    blob: usize,
    file: File,
    tmp: Mutex<Option<tempfile::NamedTempFile>>,
    hashing: Mutex<Hashing>,
}

/// The hash of a blob's first `hashed` bytes, and the parts landed beyond them (start → end,
/// exclusive).
struct Hashing {
    hasher: Sha256,
    hashed: u64,
    landed: BTreeMap<u64, u64>,
}

/// The queue, and how many blobs' first requests are in flight (each may add parts): a worker
/// that finds the queue empty waits while any is, and leaves when none is.
struct Queue {
    work: Vec<Work>,
    starting: usize,
}

/// Fetches `wanted` into the cache; returns the first error, after which no new request
/// starts.
pub fn fetch(client: &Client, wanted: Vec<Wanted>, cache: &Cache) -> Result<(), RegistryError> {
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    // Popped from the end: the largest first.
    order.sort_by_key(|&i| (wanted[i].size, wanted[i].digest));
    let queue = Mutex::new(Queue {
        work: order.into_iter().map(Work::Blob).collect(),
        starting: 0,
    });
    let ready = Condvar::new();
    let received: Vec<AtomicU64> = wanted.iter().map(|_| AtomicU64::new(0)).collect();
    let failed: Mutex<Option<RegistryError>> = Mutex::new(None);
    let f = Fetcher {
        client,
        cache,
        wanted: &wanted,
        received: &received,
        queue: &queue,
        ready: &ready,
    };
    std::thread::scope(|s| {
        for _ in 0..client.settings.parallel.max(1) * CONNECTIONS_PER_TRANSFER {
            s.spawn(|| loop {
                let work = {
                    let mut q = queue.lock().expect("lock");
                    loop {
                        if failed.lock().expect("lock").is_some() {
                            return;
                        }
                        if let Some(w) = q.work.pop() {
                            if let Work::Blob(i) = w {
                                q.starting += usize::from(wanted[i].size > PART);
                            }
                            break w;
                        }
                        if q.starting == 0 {
                            return;
                        }
                        q = ready.wait(q).expect("lock");
                    }
                };
                let done = match work {
                    Work::Blob(i) => f.blob(i),
                    Work::Part(parts, start, end) => f.part(&parts, start, end),
                };
                if let Err(e) = done {
                    failed.lock().expect("lock").get_or_insert(e);
                    // Wake the waiting, so they see the failure and leave.
                    let _q = queue.lock().expect("lock");
                    ready.notify_all();
                    return;
                }
            });
        }
    });
    match failed.into_inner().expect("lock") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What the workers share.
struct Fetcher<'a> {
    client: &'a Client,
    cache: &'a Cache,
    wanted: &'a [Wanted],
    received: &'a [AtomicU64],
    queue: &'a Mutex<Queue>,
    ready: &'a Condvar,
}

impl Fetcher<'_> {
    fn io(&self, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            path: self.cache.root.clone(),
            source,
        }
    }

    /// A blob's first request: small blobs whole; a large one's first part, which (answered
    /// 206) queues the other parts, or (answered 200) falls back to one stream.
    fn blob(&self, i: usize) -> Result<(), RegistryError> {
        let w = &self.wanted[i];
        if w.size <= PART {
            self.client
                .pull_blob(&w.digest, w.size, self.cache, &w.task)?;
            w.task.finish("pulled");
            return Ok(());
        }
        let mut started = Started {
            queue: self.queue,
            ready: self.ready,
            done: false,
        };
        let first = PART - 1;
        let resp = self.client.get_blob_range(&w.digest, 0, first)?;
        if resp.status() == StatusCode::OK {
            // The registry ignores ranges: one stream (a new request, read from its start).
            drop(resp);
            started.finish(Vec::new());
            self.client
                .pull_blob(&w.digest, w.size, self.cache, &w.task)?;
            w.task.finish("pulled");
            return Ok(());
        }
        let resp = self.checked(i, resp, 0, first)?;
        let tmp = self.cache.temp_file().map_err(|e| self.io(e))?;
        tmp.as_file().set_len(w.size).map_err(|e| self.io(e))?;
        let file = tmp.as_file().try_clone().map_err(|e| self.io(e))?;
        let parts = Arc::new(Parts {
            blob: i,
            file,
            tmp: Mutex::new(Some(tmp)),
            hashing: Mutex::new(Hashing {
                hasher: Sha256::new(),
                hashed: 0,
                landed: BTreeMap::new(),
            }),
        });
        // The rest, queued so that the next part is taken first.
        let rest: Vec<Work> = (1..w.size.div_ceil(PART))
            .rev()
            .map(|k| {
                let start = k * PART;
                Work::Part(parts.clone(), start, (start + PART).min(w.size) - 1)
            })
            .collect();
        started.finish(rest);
        match self.copy(i, &parts, resp, 0, first) {
            Ok(()) => self.landed(&parts, 0, first),
            Err(_) => self.part(&parts, 0, first),
        }
    }

    /// One part (bytes `start..=end`), retried by the client's policy when its stream breaks.
    fn part(&self, parts: &Parts, start: u64, end: u64) -> Result<(), RegistryError> {
        let i = parts.blob;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self
                .client
                .get_blob_range(&self.wanted[i].digest, start, end)?;
            let resp = self.checked(i, resp, start, end)?;
            match self.copy(i, parts, resp, start, end) {
                Ok(()) => return self.landed(parts, start, end),
                Err(e) if attempt >= self.client.settings.retry.attempts => return Err(e),
                Err(_) => self.client.settings.retry.wait(attempt, None),
            }
        }
    }

    /// `resp` if it is the `206` of bytes `start..=end` of the blob, as `Content-Range` says.
    fn checked(
        &self,
        i: usize,
        resp: reqwest::blocking::Response,
        start: u64,
        end: u64,
    ) -> Result<reqwest::blocking::Response, RegistryError> {
        let w = &self.wanted[i];
        let what = format!("GET blob {} (bytes {start}-{end})", w.digest);
        let resp = self
            .client
            .expect(&what, resp, &[StatusCode::PARTIAL_CONTENT])?;
        let range = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)");
        if range != format!("bytes {start}-{end}/{}", w.size) {
            return Err(self.client.protocol(
                &what,
                format!(
                    "the registry answered Content-Range {} for a blob of {} bytes",
                    crate::error::printable(range, 80),
                    w.size
                ),
            ));
        }
        Ok(resp)
    }

    /// Writes the body of a part's answer at its offset; an error if the stream breaks or
    /// brings more or fewer bytes (the progress it showed is taken back).
    fn copy(
        &self,
        i: usize,
        parts: &Parts,
        mut resp: reqwest::blocking::Response,
        start: u64,
        end: u64,
    ) -> Result<(), RegistryError> {
        let w = &self.wanted[i];
        let what = format!("GET blob {} (bytes {start}-{end})", w.digest);
        let len = end - start + 1;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        let read = loop {
            let k = match resp.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(k) => k,
                Err(e) => break Err(e.to_string()),
            };
            if at + k as u64 > len {
                break Err("more bytes than the range".into());
            }
            parts
                .file
                .write_all_at(&buf[..k], start + at)
                .map_err(|e| self.io(e))?;
            at += k as u64;
            let n = self.received[i].fetch_add(k as u64, Ordering::Relaxed) + k as u64;
            w.task.set(n);
        };
        match read {
            Ok(()) if at == len => Ok(()),
            other => {
                self.received[i].fetch_sub(at, Ordering::Relaxed);
                Err(self.client.protocol(
                    &what,
                    format!(
                        "received {at} of {len} bytes ({})",
                        other.err().unwrap_or_else(|| "the stream ended".into())
                    ),
                ))
            }
        }
    }

    /// Notes that bytes `start..=end` landed and hashes what is now contiguous; when the whole
    /// blob is hashed, checks its digest and commits it to the cache.
    fn landed(&self, parts: &Parts, start: u64, end: u64) -> Result<(), RegistryError> {
        let w = &self.wanted[parts.blob];
        let mut guard = parts.hashing.lock().expect("lock");
        let h = &mut *guard;
        h.landed.insert(start, end + 1);
        let mut buf = vec![0u8; 1 << 20];
        while let Some(stop) = h.landed.remove(&h.hashed) {
            let mut at = h.hashed;
            while at < stop {
                let k = (stop - at).min(buf.len() as u64) as usize;
                parts
                    .file
                    .read_exact_at(&mut buf[..k], at)
                    .map_err(|e| self.io(e))?;
                h.hasher.update(&buf[..k]);
                at += k as u64;
            }
            h.hashed = stop;
        }
        if h.hashed < w.size {
            return Ok(());
        }
        let got = Digest::from_sha256(std::mem::take(&mut h.hasher));
        if got != w.digest {
            return Err(self.client.protocol(
                &format!("GET blob {}", w.digest),
                format!("its {} bytes, fetched in parts, have digest {got}", w.size),
            ));
        }
        let tmp = parts
            .tmp
            .lock()
            .expect("lock")
            .take()
            .expect("committed once");
        self.cache
            .commit_blob(tmp, &w.digest)
            .map_err(|e| self.io(e))?;
        w.task.finish("pulled");
        Ok(())
    }
}

/// A large blob's first request in flight: finished (its parts queued, or none) once.
struct Started<'a> {
    queue: &'a Mutex<Queue>,
    ready: &'a Condvar,
    done: bool,
}

impl Started<'_> {
    fn finish(&mut self, parts: Vec<Work>) {
        if self.done {
            return;
        }
        self.done = true;
        let mut q = self.queue.lock().expect("lock");
        q.work.extend(parts);
        q.starting -= 1;
        self.ready.notify_all();
    }
}

impl Drop for Started<'_> {
    /// A first request that failed adds nothing, but must not leave the others waiting.
    fn drop(&mut self) {
        self.finish(Vec::new());
    }
}
