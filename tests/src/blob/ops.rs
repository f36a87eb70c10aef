//! The stand-in's HTTP side: its own accept loop (so a fault can drop a connection without an
//! answer, which an axum handler cannot), authentication as the service does it, and the
//! operations. Facts relied on, from the Blob service REST reference and its answers as clients
//! record them:
//! - no `Authorization` → 401 `NoAuthenticationInformation`; a bearer token without
//!   `x-ms-version` ≥ 2017-11-09 → 403 `AuthenticationFailed`, detail "Authentication scheme
//!   Bearer is not supported in this version."; a token for another audience → 401
//!   `InvalidAuthenticationInfo`, detail "Audience validation failed. Audience did not match.",
//!   with `WWW-Authenticate: Bearer authorization_uri=… resource_id=https://storage.azure.com`;
//!   an identity without a data role → 403 `AuthorizationPermissionMismatch`.
//! - errors: `x-ms-error-code` header and `<?xml …?><Error><Code/><Message/></Error>` whose
//!   message ends with `RequestId:` and `Time:` lines; none for HEAD.
//! - Put Blob needs `x-ms-blob-type: BlockBlob`; Put Block's id is base64 of at most 64 bytes,
//!   every id of a blob the same length (else 400 `InvalidBlockId`); Put Block List takes
//!   `<BlockList><Latest|Committed|Uncommitted>id</…>…</BlockList>`, an id not found → 400
//!   `InvalidBlockList`; committing drops the blob's other uncommitted blocks; Get Block List
//!   of no blob and no staged block → 404 `BlobNotFound`.
//! - Get Blob with `Range`/`x-ms-range` → 206 and `Content-Range: bytes a-b/size`; a range past
//!   the end (an empty blob included) → 416 `InvalidRange`.
//! - List Blobs: `EnumerationResults` in name order, `maxresults` ≤ 5000, an opaque
//!   `NextMarker` (empty when done) to pass back as `marker`; `include=metadata`.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, Response};
use base64::Engine as _;
use futures_util::StreamExt as _;

use super::{Access, Fault, Key, Logged, Op, Shared};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Runs the server on a free loopback port; returns its URL and the stop switch.
pub(super) fn serve(shared: Arc<Shared>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let tls = tokio_rustls::TlsAcceptor::from(crate::tls::ca().server_config());
    crate::tls::runtime().spawn(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
        loop {
            let (tcp, _) = tokio::select! {
                _ = &mut stopped => return,
                r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            };
            let tls = tls.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { handle(shared, req).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("https://{addr}"), stop)
}

/// A dropped connection: the service's future fails, hyper closes without answering.
#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the stand-in")
    }
}
impl std::error::Error for Dropped {}

struct Req {
    method: Method,
    account: String,
    container: String,
    /// Percent-decoded blob name ("" for container operations).
    blob: String,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: axum::body::BodyDataStream,
    op: Op,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn op_of(method: &Method, blob: &str, q: &BTreeMap<String, String>) -> Op {
    let comp = q.get("comp").map(String::as_str);
    match (method.as_str(), blob.is_empty(), comp) {
        ("GET", true, Some("list")) => Op::List,
        ("PUT", false, Some("block")) => Op::PutBlock,
        ("PUT", false, Some("blocklist")) => Op::PutBlockList,
        ("GET", false, Some("blocklist")) => Op::GetBlockList,
        ("PUT", false, None) => Op::PutBlob,
        ("GET", false, None) => Op::GetBlob,
        ("HEAD", false, None) => Op::Properties,
        _ => Op::Any,
    }
}

async fn handle(
    sh: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Dropped> {
    sh.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    if path == "/__envbuild/stats" {
        let (r, b) = (
            sh.requests.load(Ordering::SeqCst),
            sh.bytes.load(Ordering::SeqCst),
        );
        return Ok(Response::new(Body::from(format!(
            "{{\"requests\":{r},\"bytes\":{b}}}\n"
        ))));
    }
    let query: BTreeMap<String, String> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let mut segs = path.trim_start_matches('/').splitn(3, '/');
    let account = percent_decode(segs.next().unwrap_or(""));
    let container = percent_decode(segs.next().unwrap_or(""));
    let blob = percent_decode(segs.next().unwrap_or(""));
    let op = op_of(&parts.method, &blob, &query);
    let mut r = Req {
        method: parts.method.clone(),
        account,
        container,
        blob,
        query,
        headers: parts.headers,
        body: Body::new(body).into_data_stream(),
        op,
    };
    let log = |sh: &Shared, status: u16| {
        sh.state.lock().unwrap().log.push(Logged {
            method: parts.method.to_string(),
            op,
            path: path.clone(),
            status,
        })
    };
    // A dead server answers nothing.
    if sh.state.lock().unwrap().dead {
        log(&sh, 0);
        return Err(Dropped);
    }
    let fault = {
        let mut st = sh.state.lock().unwrap();
        // The first fault queued for this kind of request (each kind keeps its own order).
        let at = st
            .faults
            .iter()
            .position(|(want, _)| *want == Op::Any || *want == op);
        at.and_then(|i| st.faults.remove(i)).map(|f| f.1)
    };
    match fault {
        Some(Fault::Reset) => {
            // Half the body (so the client has sent bytes), then nothing.
            let len: u64 = header(&r.headers, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut read = 0u64;
            while read < len / 2 {
                match r.body.next().await {
                    Some(Ok(c)) => {
                        read += c.len() as u64;
                        sh.bytes.fetch_add(c.len() as u64, Ordering::SeqCst);
                    }
                    _ => break,
                }
            }
            log(&sh, 0);
            return Err(Dropped);
        }
        Some(Fault::Internal) => {
            drain(&sh, &mut r.body).await;
            log(&sh, 500);
            return Ok(error(
                &r,
                500,
                "InternalError",
                "The server encountered an internal error. Please retry the request.",
                None,
            ));
        }
        Some(Fault::Busy(secs)) => {
            drain(&sh, &mut r.body).await;
            log(&sh, 503);
            let mut resp = error(
                &r,
                503,
                "ServerBusy",
                "The server is currently unable to receive requests. Please retry your request.",
                None,
            );
            resp.headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
            return Ok(resp);
        }
        None => {}
    }
    let resp = match authorize(&sh, &r) {
        Err(resp) => {
            drain(&sh, &mut r.body).await;
            *resp
        }
        Ok(()) => operation(&sh, &mut r).await?,
    };
    log(&sh, resp.status().as_u16());
    Ok(resp)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn drain(sh: &Shared, body: &mut axum::body::BodyDataStream) {
    while let Some(Ok(c)) = body.next().await {
        sh.bytes.fetch_add(c.len() as u64, Ordering::SeqCst);
    }
}

/// The service's error answer: `x-ms-error-code`, and the XML body (none for HEAD).
fn error(r: &Req, status: u16, code: &str, message: &str, detail: Option<&str>) -> Response<Body> {
    let id = crate::tls::random(12);
    let body = if r.method == Method::HEAD {
        String::new()
    } else {
        format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}\nRequestId:{id}\nTime:2026-01-01T00:00:00.0000000Z</Message>{}</Error>",
            detail.map(|d| format!("<AuthenticationErrorDetail>{d}</AuthenticationErrorDetail>")).unwrap_or_default()
        )
    };
    let mut b = Response::builder()
        .status(status)
        .header("x-ms-error-code", code)
        .header("x-ms-request-id", id)
        .header("x-ms-version", "2025-01-05");
    if r.method != Method::HEAD {
        b = b.header("content-type", "application/xml");
    }
    b.body(Body::from(body)).unwrap()
}

fn authorize(sh: &Shared, r: &Req) -> Result<(), Box<Response<Body>>> {
    let Some(auth) = header(&r.headers, "authorization") else {
        return Err(Box::new(error(r, 401, "NoAuthenticationInformation", "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.", None)));
    };
    let Some(token) = auth.strip_prefix("Bearer ") else {
        return Err(Box::new(error(r, 403, "AuthenticationFailed", "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.", None)));
    };
    if header(&r.headers, "x-ms-version").is_none_or(|v| v < "2017-11-09") {
        return Err(Box::new(error(r, 403, "AuthenticationFailed", "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.", Some("Authentication scheme Bearer is not supported in this version."))));
    }
    let www = |mut resp: Response<Body>| {
        resp.headers_mut().insert(
            "www-authenticate",
            "Bearer authorization_uri=https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/authorize resource_id=https://storage.azure.com".parse().unwrap(),
        );
        resp
    };
    const AUTH: &str = "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.";
    match (sh.auth)(token) {
        Access::Unknown => Err(Box::new(www(error(
            r,
            401,
            "InvalidAuthenticationInfo",
            AUTH,
            Some("Signature validation failed. Signature verification failed."),
        )))),
        Access::WrongAudience => Err(Box::new(www(error(
            r,
            401,
            "InvalidAuthenticationInfo",
            AUTH,
            Some("Audience validation failed. Audience did not match."),
        )))),
        Access::Expired => Err(Box::new(www(error(
            r,
            401,
            "InvalidAuthenticationInfo",
            AUTH,
            Some("Lifetime validation failed. The token is expired."),
        )))),
        Access::Identity(id) => {
            if sh.state.lock().unwrap().denied.contains(&id) {
                return Err(Box::new(error(r, 403, "AuthorizationPermissionMismatch", "This request is not authorized to perform this operation using this permission.", None)));
            }
            Ok(())
        }
    }
}

fn key(r: &Req) -> Key {
    (r.account.clone(), r.container.clone(), r.blob.clone())
}

fn blob_path(sh: &Shared, r: &Req) -> PathBuf {
    sh.root.join(&r.account).join(&r.container).join(&r.blob)
}

/// A new file under `root/.staged` (never inside an account's tree).
fn scratch(sh: &Shared) -> PathBuf {
    let n = {
        let mut st = sh.state.lock().unwrap();
        st.next_file += 1;
        st.next_file
    };
    sh.root.join(".staged").join(format!("{n:012}"))
}

fn ok(status: u16) -> axum::http::response::Builder {
    Response::builder()
        .status(status)
        .header("x-ms-request-id", crate::tls::random(12))
        .header("x-ms-version", "2025-01-05")
        .header("date", http_date(now()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RFC 1123: `Sun, 06 Dec 2026 17:00:00 GMT`.
pub(crate) fn http_date(secs: u64) -> String {
    let iso = envbuild::image::rfc3339(secs); // YYYY-MM-DDTHH:MM:SSZ
    let (y, m, d) = (&iso[0..4], &iso[5..7], &iso[8..10]);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let wd = DAYS[((secs / 86_400) % 7) as usize];
    let mon = MONTHS[m.parse::<usize>().unwrap() - 1];
    format!("{wd}, {d} {mon} {y} {} GMT", &iso[11..19])
}

fn etag(path: &Path) -> String {
    let t = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    format!("\"0x8D{t:X}\"")
}

fn modified(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// The request body into a new scratch file; its size.
async fn body_to_file(sh: &Shared, r: &mut Req, path: &Path) -> Result<u64, Dropped> {
    let mut f = std::fs::File::create(path).expect("scratch file");
    let mut n = 0u64;
    while let Some(c) = r.body.next().await {
        let c = c.map_err(|_| Dropped)?;
        sh.bytes.fetch_add(c.len() as u64, Ordering::SeqCst);
        n += c.len() as u64;
        f.write_all(&c).expect("write scratch");
    }
    Ok(n)
}

async fn body_bytes(sh: &Shared, r: &mut Req, cap: usize) -> Result<Vec<u8>, Dropped> {
    let mut out = Vec::new();
    while let Some(c) = r.body.next().await {
        let c = c.map_err(|_| Dropped)?;
        sh.bytes.fetch_add(c.len() as u64, Ordering::SeqCst);
        if out.len() + c.len() <= cap {
            out.extend_from_slice(&c);
        }
    }
    Ok(out)
}

fn meta_of(h: &HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("x-ms-meta-")?;
            Some((name.to_owned(), v.to_str().ok()?.to_owned()))
        })
        .collect()
}

/// Moves a complete file into the container's tree (the rename makes it appear whole).
fn commit_file(sh: &Shared, r: &Req, from: &Path) {
    let to = blob_path(sh, r);
    std::fs::create_dir_all(to.parent().unwrap()).expect("blob dir");
    std::fs::rename(from, &to).expect("commit blob");
}

async fn operation(sh: &Shared, r: &mut Req) -> Result<Response<Body>, Dropped> {
    let exists = sh
        .state
        .lock()
        .unwrap()
        .containers
        .contains(&(r.account.clone(), r.container.clone()));
    if !exists {
        drain(sh, &mut r.body).await;
        return Ok(error(
            r,
            404,
            "ContainerNotFound",
            "The specified container does not exist.",
            None,
        ));
    }
    match r.op {
        Op::PutBlob => put_blob(sh, r).await,
        Op::PutBlock => put_block(sh, r).await,
        Op::PutBlockList => put_block_list(sh, r).await,
        Op::GetBlockList => Ok(get_block_list(sh, r)),
        Op::Properties => Ok(properties(sh, r)),
        Op::GetBlob => Ok(get_blob(sh, r)),
        Op::List => Ok(list(sh, r)),
        Op::Any => {
            drain(sh, &mut r.body).await;
            Ok(error(
                r,
                400,
                "UnsupportedHttpVerb",
                "The resource doesn't support specified Http Verb.",
                None,
            ))
        }
    }
}

async fn put_blob(sh: &Shared, r: &mut Req) -> Result<Response<Body>, Dropped> {
    if header(&r.headers, "x-ms-blob-type") != Some("BlockBlob") {
        drain(sh, &mut r.body).await;
        return Ok(error(
            r,
            400,
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified.",
            None,
        ));
    }
    let tmp = scratch(sh);
    body_to_file(sh, r, &tmp).await?;
    commit_file(sh, r, &tmp);
    let k = key(r);
    {
        let mut st = sh.state.lock().unwrap();
        st.metadata.insert(k.clone(), meta_of(&r.headers));
        st.committed.remove(&k);
        if let Some(old) = st.staged.remove(&k) {
            for (p, _) in old.into_values() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let p = blob_path(sh, r);
    Ok(ok(201)
        .header("etag", etag(&p))
        .header("last-modified", http_date(modified(&p)))
        .header("x-ms-request-server-encrypted", "true")
        .body(Body::empty())
        .unwrap())
}

async fn put_block(sh: &Shared, r: &mut Req) -> Result<Response<Body>, Dropped> {
    let id = r.query.get("blockid").cloned().unwrap_or_default();
    let decoded = B64
        .decode(&id)
        .ok()
        .filter(|d| !d.is_empty() && d.len() <= 64);
    let k = key(r);
    let same_len = {
        let st = sh.state.lock().unwrap();
        let others = st
            .staged
            .get(&k)
            .and_then(|m| m.keys().next().cloned())
            .or_else(|| {
                st.committed
                    .get(&k)
                    .and_then(|c| c.first().map(|b| b.0.clone()))
            });
        others.is_none_or(|o| B64.decode(o).map(|d| d.len()).ok() == decoded.as_ref().map(Vec::len))
    };
    if decoded.is_none() || !same_len {
        drain(sh, &mut r.body).await;
        return Ok(error(
            r,
            400,
            "InvalidBlockId",
            "The specified block ID is invalid. The block ID must be Base64-encoded.",
            None,
        ));
    }
    let tmp = scratch(sh);
    let n = body_to_file(sh, r, &tmp).await?;
    {
        let mut st = sh.state.lock().unwrap();
        // Died while this block was on its way: it is lost, as on a real crash.
        if st.dead {
            let _ = std::fs::remove_file(&tmp);
            return Err(Dropped);
        }
        if let Some(old) = st.staged.entry(k).or_default().insert(id, (tmp, n)) {
            let _ = std::fs::remove_file(old.0);
        }
        if let Some(left) = st.kill_after {
            if left <= 1 {
                st.kill_after = None;
                st.dead = true;
            } else {
                st.kill_after = Some(left - 1);
            }
        }
    }
    Ok(ok(201)
        .header("x-ms-request-server-encrypted", "true")
        .body(Body::empty())
        .unwrap())
}

/// The ids of a `<BlockList>` body, each with where to find it.
fn parse_block_list(xml: &str) -> Option<Vec<(&'static str, String)>> {
    let start = xml.find("<BlockList>")?;
    let mut rest = &xml[start + "<BlockList>".len()..];
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.starts_with("</BlockList>") {
            return Some(out);
        }
        let tag = ["Latest", "Committed", "Uncommitted"]
            .into_iter()
            .find(|t| rest.starts_with(&format!("<{t}>")))?;
        let open = tag.len() + 2;
        let close = rest.find(&format!("</{tag}>"))?;
        out.push((tag, rest[open..close].trim().to_owned()));
        rest = &rest[close + tag.len() + 3..];
    }
}

async fn put_block_list(sh: &Shared, r: &mut Req) -> Result<Response<Body>, Dropped> {
    let body = body_bytes(sh, r, 4 << 20).await?;
    let text = String::from_utf8_lossy(&body);
    let invalid = |r: &Req| {
        Ok(error(
            r,
            400,
            "InvalidBlockList",
            "The specified block list is invalid.",
            None,
        ))
    };
    let Some(list) = parse_block_list(&text) else {
        return Ok(error(
            r,
            400,
            "InvalidXmlDocument",
            "XML specified is not syntactically valid.",
            None,
        ));
    };
    let k = key(r);
    let path = blob_path(sh, r);
    // Where each block's bytes are: a staged file, or a range of the committed blob.
    enum Src {
        Staged(PathBuf),
        Committed(u64),
    }
    let mut parts: Vec<(String, Src, u64)> = Vec::new();
    {
        let st = sh.state.lock().unwrap();
        let staged = st.staged.get(&k);
        let committed = st.committed.get(&k);
        let in_committed = |id: &str| {
            let mut off = 0;
            for (cid, size) in committed.into_iter().flatten() {
                if cid == id {
                    return Some((off, *size));
                }
                off += size;
            }
            None
        };
        for (tag, id) in &list {
            let from_staged = || {
                staged
                    .and_then(|m| m.get(id))
                    .map(|(p, n)| (Src::Staged(p.clone()), *n))
            };
            let from_committed = || in_committed(id).map(|(o, n)| (Src::Committed(o), n));
            let found = match *tag {
                "Uncommitted" => from_staged(),
                "Committed" => from_committed(),
                _ => from_staged().or_else(from_committed),
            };
            match found {
                Some((src, n)) => parts.push((id.clone(), src, n)),
                None => return invalid(r),
            }
        }
    }
    let tmp = scratch(sh);
    {
        let mut out = std::fs::File::create(&tmp).expect("scratch");
        for (_, src, n) in &parts {
            match src {
                Src::Staged(p) => {
                    std::io::copy(&mut std::fs::File::open(p).expect("staged block"), &mut out)
                        .expect("copy");
                }
                Src::Committed(off) => {
                    let mut f = std::fs::File::open(&path).expect("committed blob");
                    f.seek(SeekFrom::Start(*off)).expect("seek");
                    std::io::copy(&mut f.take(*n), &mut out).expect("copy");
                }
            }
        }
    }
    commit_file(sh, r, &tmp);
    {
        let mut st = sh.state.lock().unwrap();
        st.metadata.insert(k.clone(), meta_of(&r.headers));
        st.committed.insert(
            k.clone(),
            parts.iter().map(|(id, _, n)| (id.clone(), *n)).collect(),
        );
        // Committing drops every uncommitted block of the blob.
        if let Some(old) = st.staged.remove(&k) {
            for (p, _) in old.into_values() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    Ok(ok(201)
        .header("etag", etag(&path))
        .header("last-modified", http_date(modified(&path)))
        .header("x-ms-request-server-encrypted", "true")
        .body(Body::empty())
        .unwrap())
}

fn get_block_list(sh: &Shared, r: &Req) -> Response<Body> {
    let k = key(r);
    let path = blob_path(sh, r);
    let st = sh.state.lock().unwrap();
    let staged = st.staged.get(&k);
    let is_file = path.is_file();
    if !is_file && staged.is_none_or(|m| m.is_empty()) {
        return error(
            r,
            404,
            "BlobNotFound",
            "The specified blob does not exist.",
            None,
        );
    }
    let kind = r
        .query
        .get("blocklisttype")
        .map_or("committed", String::as_str)
        .to_ascii_lowercase();
    let blocks = |items: &mut dyn Iterator<Item = (String, u64)>| {
        items
            .map(|(id, n)| format!("<Block><Name>{id}</Name><Size>{n}</Size></Block>"))
            .collect::<String>()
    };
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
    if kind == "committed" || kind == "all" {
        let mut it = st.committed.get(&k).into_iter().flatten().cloned();
        xml.push_str(&format!(
            "<CommittedBlocks>{}</CommittedBlocks>",
            blocks(&mut it)
        ));
    }
    if kind == "uncommitted" || kind == "all" {
        let mut it = staged
            .into_iter()
            .flatten()
            .map(|(id, (_, n))| (id.clone(), *n));
        xml.push_str(&format!(
            "<UncommittedBlocks>{}</UncommittedBlocks>",
            blocks(&mut it)
        ));
    }
    xml.push_str("</BlockList>");
    let mut b = ok(200).header("content-type", "application/xml");
    if is_file {
        b = b
            .header("etag", etag(&path))
            .header("last-modified", http_date(modified(&path)))
            .header(
                "x-ms-blob-content-length",
                std::fs::metadata(&path).map_or(0, |m| m.len()),
            );
    }
    b.body(Body::from(xml)).unwrap()
}

/// The headers every answer about a committed blob carries.
fn blob_headers(
    sh: &Shared,
    r: &Req,
    path: &Path,
    b: axum::http::response::Builder,
) -> axum::http::response::Builder {
    let mut b = b
        .header("etag", etag(path))
        .header("last-modified", http_date(modified(path)))
        .header("x-ms-creation-time", http_date(modified(path)))
        .header("x-ms-blob-type", "BlockBlob")
        .header("x-ms-lease-state", "available")
        .header("x-ms-lease-status", "unlocked")
        .header("x-ms-server-encrypted", "true")
        .header("accept-ranges", "bytes")
        .header("content-type", "application/octet-stream");
    if let Some(m) = sh.state.lock().unwrap().metadata.get(&key(r)) {
        for (k, v) in m {
            b = b.header(format!("x-ms-meta-{k}"), v);
        }
    }
    b
}

fn properties(sh: &Shared, r: &Req) -> Response<Body> {
    let path = blob_path(sh, r);
    let Ok(meta) = std::fs::metadata(&path).map_err(|_| ()).and_then(|m| {
        if m.is_file() {
            Ok(m)
        } else {
            Err(())
        }
    }) else {
        return error(
            r,
            404,
            "BlobNotFound",
            "The specified blob does not exist.",
            None,
        );
    };
    blob_headers(sh, r, &path, ok(200))
        .header("content-length", meta.len())
        .body(Body::empty())
        .unwrap()
}

/// `bytes=a-b` or `bytes=a-` → (a, Some(b) or None).
fn parse_range(v: &str) -> Option<(u64, Option<u64>)> {
    let (a, b) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
    let a = a.parse().ok()?;
    let b = if b.is_empty() {
        None
    } else {
        Some(b.parse().ok()?)
    };
    Some((a, b))
}

fn get_blob(sh: &Shared, r: &Req) -> Response<Body> {
    let path = blob_path(sh, r);
    let Some(size) = std::fs::metadata(&path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
    else {
        return error(
            r,
            404,
            "BlobNotFound",
            "The specified blob does not exist.",
            None,
        );
    };
    let range = header(&r.headers, "x-ms-range")
        .or_else(|| header(&r.headers, "range"))
        .and_then(parse_range);
    let (status, start, len) = match range {
        None => (200, 0, size),
        Some((a, _)) if a >= size => {
            let mut resp = error(
                r,
                416,
                "InvalidRange",
                "The range specified is invalid for the current size of the resource.",
                None,
            );
            resp.headers_mut()
                .insert("content-range", format!("bytes */{size}").parse().unwrap());
            return resp;
        }
        Some((a, b)) => {
            let end = b.map_or(size - 1, |b| b.min(size - 1));
            (206, a, end + 1 - a)
        }
    };
    let mut f = std::fs::File::open(&path).expect("blob file");
    f.seek(SeekFrom::Start(start)).expect("seek");
    let reader = f.take(len);
    let stream = futures_util::stream::unfold(reader, |mut rd| async move {
        let mut buf = vec![0u8; 256 << 10];
        match rd.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), rd))
            }
            Err(e) => Some((Err(e), rd)),
        }
    });
    let mut b = blob_headers(sh, r, &path, ok(status)).header("content-length", len);
    if status == 206 {
        b = b.header(
            "content-range",
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    b.body(Body::from_stream(stream)).unwrap()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Every committed blob of a container, by name (files under its directory).
fn names(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path(), &r, out),
                Ok(t) if t.is_file() => out.push(r),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.sort();
    out
}

fn list(sh: &Shared, r: &Req) -> Response<Body> {
    if r.query.get("restype").map(String::as_str) != Some("container") {
        return error(
            r,
            400,
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid.",
            None,
        );
    }
    let prefix = r.query.get("prefix").cloned().unwrap_or_default();
    let max: usize = match r.query.get("maxresults").map(|m| m.parse::<usize>()) {
        None => 5000,
        Some(Ok(m)) if (1..=5000).contains(&m) => m,
        Some(_) => return error(r, 400, "OutOfRangeQueryParameterValue", "One of the query parameters specified in the request URI is outside the permissible range.", None),
    };
    let after = match r.query.get("marker").filter(|m| !m.is_empty()) {
        None => None,
        Some(m) => match m
            .strip_prefix("2!")
            .and_then(|b| B64.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
        {
            Some(name) => Some(name),
            None => return error(
                r,
                400,
                "InvalidQueryParameterValue",
                "Value for one of the query parameters specified in the request URI is invalid.",
                None,
            ),
        },
    };
    let max = max.min(sh.state.lock().unwrap().page_cap.unwrap_or(5000));
    let with_meta = r
        .query
        .get("include")
        .is_some_and(|i| i.split(',').any(|x| x == "metadata"));
    let dir = sh.root.join(&r.account).join(&r.container);
    let all: Vec<String> = names(&dir)
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .filter(|n| after.as_ref().is_none_or(|a| n >= a))
        .collect();
    let page = &all[..all.len().min(max)];
    let next = all.get(max).map(|n| format!("2!{}", B64.encode(n)));
    let base = sh.url.lock().unwrap().clone();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"{base}/{}/\" ContainerName=\"{}\">",
        r.account, r.container
    );
    if !prefix.is_empty() {
        xml.push_str(&format!("<Prefix>{}</Prefix>", xml_escape(&prefix)));
    }
    if let Some(m) = r.query.get("marker").filter(|m| !m.is_empty()) {
        xml.push_str(&format!("<Marker>{}</Marker>", xml_escape(m)));
    }
    if r.query.contains_key("maxresults") {
        xml.push_str(&format!("<MaxResults>{max}</MaxResults>"));
    }
    xml.push_str("<Blobs>");
    let st = sh.state.lock().unwrap();
    for name in page {
        let p = dir.join(name);
        let size = std::fs::metadata(&p).map_or(0, |m| m.len());
        let t = http_date(modified(&p));
        xml.push_str(&format!(
            "<Blob><Name>{}</Name><Properties><Creation-Time>{t}</Creation-Time><Last-Modified>{t}</Last-Modified><Etag>{}</Etag><Content-Length>{size}</Content-Length><Content-Type>application/octet-stream</Content-Type><Content-Encoding /><Content-Language /><Content-CRC64 /><Content-MD5 /><Cache-Control /><Content-Disposition /><BlobType>BlockBlob</BlobType><AccessTier>Hot</AccessTier><AccessTierInferred>true</AccessTierInferred><LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState><ServerEncrypted>true</ServerEncrypted></Properties>",
            xml_escape(name),
            xml_escape(&etag(&p))
        ));
        if with_meta {
            xml.push_str("<Metadata>");
            if let Some(m) =
                st.metadata
                    .get(&(r.account.clone(), r.container.clone(), name.clone()))
            {
                for (k, v) in m {
                    xml.push_str(&format!("<{k}>{}</{k}>", xml_escape(v)));
                }
            }
            xml.push_str("</Metadata>");
        }
        xml.push_str("<OrMetadata /></Blob>");
    }
    xml.push_str("</Blobs>");
    match next {
        Some(n) => xml.push_str(&format!("<NextMarker>{n}</NextMarker>")),
        None => xml.push_str("<NextMarker />"),
    }
    xml.push_str("</EnumerationResults>");
    ok(200)
        .header("content-type", "application/xml")
        .body(Body::from(xml))
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_block_lists() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_796_576_400), "Sun, 06 Dec 2026 17:00:00 GMT");
        let l = parse_block_list("<?xml version=\"1.0\"?><BlockList><Latest>QQ==</Latest> <Committed>Qg==</Committed></BlockList>").unwrap();
        assert_eq!(
            l,
            vec![
                ("Latest", "QQ==".to_owned()),
                ("Committed", "Qg==".to_owned())
            ]
        );
        assert!(parse_block_list("<BlockList><Bogus>x</Bogus></BlockList>").is_none());
        assert_eq!(parse_range("bytes=5-"), Some((5, None)));
        assert_eq!(parse_range("bytes=0-9"), Some((0, Some(9))));
    }
}
