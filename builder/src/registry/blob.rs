//! Blob transfers: HEAD to skip what the registry has, a cross-repository mount where another
//! repository holds the blob, one PUT for small blobs or PATCH chunks resumed from the registry's
//! `Range` for large ones (bodies streamed from the file by reqwest's async client), and pulls
//! into the cache verified by digest and size.

use std::io::{self, Read, Write};
use std::path::Path;

use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

use super::client::Reply;
use super::{Client, RegistryError};
use crate::cache::Cache;
use crate::digest::Digest;
use crate::progress::Task;

impl Client {
    /// Whether the registry has the blob of `size` bytes. A `200` must be about that blob: its
    /// `Docker-Content-Digest` (which registries send) is the digest, or without one its
    /// `Content-Length` is the size; a web page answering `200` to everything is no registry.
    pub fn has_blob(&self, d: &Digest, size: u64) -> Result<bool, RegistryError> {
        let what = format!("HEAD blob {d}");
        let resp = self.send(&what, &|| {
            Ok(self.http.head(self.url(&format!("blobs/{d}"))))
        })?;
        match resp.status() {
            StatusCode::OK => {
                let header = |name| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                match (header("docker-content-digest"), header("content-length")) {
                    (Some(theirs), _) if theirs == d.to_string() => Ok(true),
                    (Some(theirs), _) => Err(self.protocol(
                        &what,
                        format!(
                            "the registry answered 200 with Docker-Content-Digest {}",
                            crate::error::printable(&theirs, 100)
                        ),
                    )),
                    (None, Some(len)) if len.trim() == size.to_string() => Ok(true),
                    (None, len) => Err(self.protocol(
                        &what,
                        format!(
                            "the registry answered 200 without a Docker-Content-Digest header and with Content-Length {} for a blob of {size} bytes: is this a registry API?",
                            len.as_deref().map_or("(none)".into(), |l| crate::error::printable(l, 40))
                        ),
                    )),
                }
            }
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self
                .expect(&what, resp, &[StatusCode::OK, StatusCode::NOT_FOUND])
                .expect_err("neither 200 nor 404")),
        }
    }

    /// Uploads a blob from `path` unless the registry has it; returns whether bytes were sent.
    /// An upload session that fails for good (the registry lost it, or a lost answer left it
    /// closed) is followed by a HEAD: the blob may be there after all; else a new session starts.
    pub fn push_blob(&self, d: &Digest, size: u64, path: &Path) -> Result<bool, RegistryError> {
        let sent = match self.check_blob(d, size, false)? {
            Check::Present => Sent::Skipped,
            Check::Missing(session) => {
                self.send_blob(d, size, path, &[], false, session, &Task::hidden())?
            }
        };
        Ok(sent == Sent::Uploaded)
    }

    /// The first round trip of a blob's push: whether the registry has it. With `likely_new`
    /// (the caller expects it missing), the upload session is opened in the same round trip,
    /// beside the HEAD, and cancelled if the blob turns out to be there; a session that could
    /// not be opened is left to [`Self::send_blob`], which opens its own and reports why not.
    pub fn check_blob(
        &self,
        d: &Digest,
        size: u64,
        likely_new: bool,
    ) -> Result<Check, RegistryError> {
        if !likely_new {
            return Ok(if self.has_blob(d, size)? {
                Check::Present
            } else {
                Check::Missing(None)
            });
        }
        let (present, session) = std::thread::scope(|s| {
            let opened = s.spawn(|| self.start_upload(&format!("upload of {d}")).ok());
            let present = self.has_blob(d, size);
            (present, opened.join().expect("upload session thread"))
        });
        match (present?, session) {
            (true, Some(location)) => {
                self.cancel_upload(&location);
                Ok(Check::Present)
            }
            (true, None) => Ok(Check::Present),
            (false, session) => Ok(Check::Missing(session)),
        }
    }

    /// Opens an upload session (`POST …/blobs/uploads/`); returns its location.
    fn start_upload(&self, what: &str) -> Result<String, RegistryError> {
        let resp = self.send(what, &|| {
            Ok(self
                .http
                .post(self.url("blobs/uploads/"))
                .header(CONTENT_LENGTH, 0))
        })?;
        let resp = self.expect(what, resp, &[StatusCode::ACCEPTED])?;
        self.location(what, &resp)
    }

    /// Cancels an upload session that is not needed (the distribution spec's `DELETE` of an
    /// upload); best effort: a registry also expires sessions left open.
    fn cancel_upload(&self, location: &str) {
        let _ = self.send("cancel of an upload session", &|| {
            Ok(self.http.delete(location))
        });
    }

    /// [`Self::push_blob`] from a [`Check`] that found the blob missing: first trying a
    /// cross-repository mount from each of `sources` (other repositories of this registry
    /// known to hold the blob), unless `session` is an upload session opened already. A refused
    /// mount (202) becomes the upload session of the fallback. With `verify`, the file is
    /// hashed against `d` before its upload. `task` hears the bytes sent.
    #[allow(clippy::too_many_arguments)]
    pub fn send_blob(
        &self,
        d: &Digest,
        size: u64,
        path: &Path,
        sources: &[String],
        verify: bool,
        session: Option<String>,
        task: &Task,
    ) -> Result<Sent, RegistryError> {
        let mut started = session;
        let mounts = if started.is_none() { sources } else { &[] };
        for from in mounts.iter().filter(|s| **s != self.reference.repository) {
            let what = format!("mount of {d} from {from}");
            let url = format!("{}?mount={d}&from={}", self.url("blobs/uploads/"), from);
            let resp = self.send(&what, &|| {
                Ok(self.http.post(&url).header(CONTENT_LENGTH, 0))
            })?;
            match resp.status() {
                StatusCode::CREATED => return Ok(Sent::Mounted),
                // Not mounted; the registry opened an upload session instead: use it.
                StatusCode::ACCEPTED => {
                    started = self.location(&what, &resp).ok();
                    break;
                }
                // Some registries fail on mount outright: upload as usual.
                _ => {}
            }
        }
        // Hashed only now that its bytes must go: a corrupt file is refused before its upload
        // (and so before any manifest), and a blob the registry has or mounts is never read.
        if verify {
            crate::image::verify_blob(path, d, size)
                .map_err(|e| RegistryError::Blob(Box::new(e)))?;
        }
        let mut session = 0;
        loop {
            session += 1;
            match self.upload(d, size, path, started.take(), task) {
                Ok(()) => return Ok(Sent::Uploaded),
                // A new session is for a session the registry lost or closed (an error
                // status); a broken file, a registry that breaks the protocol, or one that
                // stopped answering through every retry would meet the same again.
                Err(e @ RegistryError::Status { .. }) => {
                    if self.has_blob(d, size)? {
                        return Ok(Sent::Uploaded);
                    }
                    if session >= self.settings.retry.attempts {
                        return Err(e);
                    }
                    self.settings.retry.wait(session, None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One upload session: POST, then one PUT or PATCH chunks (resumed from the registry's
    /// `Range` after a failure) and the closing PUT.
    fn upload(
        &self,
        d: &Digest,
        size: u64,
        path: &Path,
        started: Option<String>,
        task: &Task,
    ) -> Result<(), RegistryError> {
        let what = format!("upload of {d}");
        let io_err = |source| RegistryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut location = match started {
            Some(l) => l,
            None => self.start_upload(&what)?,
        };
        // A small blob goes whole, read into memory, on the connections the HEAD and the POST
        // used: the streaming uploader's own pool would cost a new connection's round trip.
        if size <= SMALL_BLOB.min(self.settings.chunk) {
            let body = read_range(path, 0, size).map_err(io_err)?;
            let url = with_digest(&location, d);
            let resp = self.send(&what, &|| {
                Ok(self
                    .http
                    .put(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(body.clone()))
            })?;
            let resp = self.expect(&what, resp, &[StatusCode::CREATED])?;
            task.set(size);
            return self.committed(&what, &resp, d);
        }
        let up = self.uploader()?;
        let idle = self.settings.timeouts.idle;
        if size <= self.settings.chunk {
            let url = with_digest(&location, d);
            let resp = self.send_with(&what, &|token| {
                let rb = up
                    .http
                    .put(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size);
                let auth = self.authorization_for(&url, token);
                up.send(rb, auth, Some((path, 0, size)), idle, task)
                    .map_err(io_err)
            })?;
            let resp = self.expect(&what, resp, &[StatusCode::CREATED])?;
            return self.committed(&what, &resp, d);
        }
        let mut offset = 0u64;
        let mut failures = 0;
        while offset < size {
            let end = (offset + self.settings.chunk).min(size) - 1;
            let len = end - offset + 1;
            let url = location.clone();
            let sent = self.send_with(&what, &|token| {
                let rb = up
                    .http
                    .request(Method::PATCH, &url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, format!("{offset}-{end}"))
                    .header(CONTENT_LENGTH, len);
                let auth = self.authorization_for(&url, token);
                up.send(rb, auth, Some((path, offset, len)), idle, task)
                    .map_err(io_err)
            });
            match sent {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    location = self.location(&what, &resp)?;
                    offset = end + 1;
                    failures = 0;
                }
                other => {
                    // Ask the registry how much it has and continue from there.
                    failures += 1;
                    if failures > self.settings.retry.attempts {
                        return match other {
                            Ok(resp) => Err(self
                                .expect(&what, resp, &[StatusCode::ACCEPTED])
                                .expect_err("non-202")),
                            Err(e) => Err(e),
                        };
                    }
                    self.settings.retry.wait(failures, None);
                    let url = location.clone();
                    let resp = self.send(&what, &|| Ok(self.http.get(&url)))?;
                    let resp = self.expect(
                        &format!("{what}: status of the upload"),
                        resp,
                        &[StatusCode::NO_CONTENT, StatusCode::ACCEPTED],
                    )?;
                    offset = resp
                        .headers()
                        .get(RANGE)
                        .and_then(|r| r.to_str().ok())
                        .and_then(|r| r.rsplit('-').next()?.parse::<u64>().ok())
                        .map_or(0, |last| last + 1);
                    location = self.location(&what, &resp).unwrap_or(location);
                }
            }
        }
        let url = with_digest(&location, d);
        let resp = self.send(&what, &|| Ok(self.http.put(&url).header(CONTENT_LENGTH, 0)))?;
        let resp = self.expect(&what, resp, &[StatusCode::CREATED])?;
        self.committed(&what, &resp, d)
    }

    /// The checks of a `201` that closes an upload: the `Location` the distribution spec
    /// requires, and the `Docker-Content-Digest` (when sent) equal to the digest pushed.
    fn committed(&self, what: &str, resp: &impl Reply, d: &Digest) -> Result<(), RegistryError> {
        self.location(what, resp)?;
        match resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            Some(theirs) if theirs != d.to_string() => Err(self.protocol(
                what,
                format!(
                    "the registry stored {}, not {d}",
                    crate::error::printable(theirs, 100)
                ),
            )),
            _ => Ok(()),
        }
    }

    /// A small blob's bytes (a document, at most 64 MiB), verified by digest and size.
    pub fn get_blob_bytes(&self, d: &Digest, size: u64) -> Result<Vec<u8>, RegistryError> {
        let what = format!("GET blob {d}");
        if size > 64 << 20 {
            return Err(self.protocol(&what, format!("{size} bytes is too large for a document")));
        }
        let url = self.url(&format!("blobs/{d}"));
        let resp = self.send(&what, &|| Ok(self.http.get(&url)))?;
        let resp = self.expect(&what, resp, &[StatusCode::OK])?;
        let bytes = crate::http::read_capped(resp, size)
            .map_err(|_| self.protocol(&what, "more bytes than the descriptor's size"))?;
        if bytes.len() as u64 != size || Digest::of(&bytes) != *d {
            return Err(self.protocol(&what, "the bytes do not match the digest and size"));
        }
        Ok(bytes)
    }

    /// Asks for bytes `start..=end` of a blob (an HTTP range request); the caller judges the
    /// answer: `206` with its `Content-Range`, or `200` from a registry that ignores ranges.
    pub(super) fn get_blob_range(
        &self,
        d: &Digest,
        start: u64,
        end: u64,
    ) -> Result<reqwest::blocking::Response, RegistryError> {
        let url = self.url(&format!("blobs/{d}"));
        self.send(&format!("GET blob {d} (bytes {start}-{end})"), &|| {
            Ok(self
                .http
                .get(&url)
                .header(RANGE, format!("bytes={start}-{end}")))
        })
    }

    /// Streams a blob into the cache, verifying digest and size; never fetches what the cache
    /// has. `task` hears the bytes received.
    pub fn pull_blob(
        &self,
        d: &Digest,
        size: u64,
        cache: &Cache,
        task: &Task,
    ) -> Result<bool, RegistryError> {
        if cache.has_blob(d) {
            cache.touch(d);
            return Ok(false);
        }
        let what = format!("GET blob {d}");
        let url = self.url(&format!("blobs/{d}"));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self.send(&what, &|| Ok(self.http.get(&url)))?;
            let mut resp = self.expect(&what, resp, &[StatusCode::OK])?;
            let mut tmp = cache.temp_file().map_err(|source| RegistryError::Io {
                path: cache.root.clone(),
                source,
            })?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            let copied: io::Result<()> = (|| loop {
                let k = resp.read(&mut buf)?;
                if k == 0 {
                    return Ok(());
                }
                h.update(&buf[..k]);
                tmp.write_all(&buf[..k])?;
                n += k as u64;
                task.set(n);
                if n > size {
                    return Err(io::Error::other("more bytes than the descriptor's size"));
                }
            })();
            if copied.is_ok() && n == size && Digest::from_sha256(h) == *d {
                cache
                    .commit_blob(tmp, d)
                    .map_err(|source| RegistryError::Io {
                        path: cache.root.clone(),
                        source,
                    })?;
                return Ok(true);
            }
            if attempt == self.settings.retry.attempts {
                return Err(self.protocol(&what, format!("received {n} bytes that do not match the digest and size {size} ({copied:?})")));
            }
            self.settings.retry.wait(attempt, None);
        }
    }
}

/// Blobs up to this size (and the chunk size) are uploaded from memory in one PUT on the
/// blocking client.
const SMALL_BLOB: u64 = 4 << 20;

/// `len` bytes of the file at `path` from `offset`; an error if it is shorter.
fn read_range(path: &Path, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    use std::io::{Seek as _, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    if buf.len() as u64 != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} bytes where {len} were expected", buf.len()),
        ));
    }
    Ok(buf)
}

fn with_digest(location: &str, d: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={d}")
}

/// What [`Client::check_blob`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The registry has the blob.
    Present,
    /// It does not; with the location of an upload session opened beside the HEAD.
    Missing(Option<String>),
}

/// What happened to one blob of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The registry had it.
    Skipped,
    /// Mounted from another repository of the registry.
    Mounted,
    /// Its bytes went up.
    Uploaded,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_joins_the_upload_location() {
        assert_eq!(
            with_digest("http://h/u?x=1", &Digest::of(b"")),
            format!("http://h/u?x=1&digest={}", Digest::of(b""))
        );
        assert_eq!(
            with_digest("http://h/u", &Digest::of(b"")),
            format!("http://h/u?digest={}", Digest::of(b""))
        );
    }
}
