//! A hostile registry for the tests: every request is answered by a script (never, late, with a
//! wrong status, without or with wrong headers, a Location on another host, a redirect loop, a
//! huge body, reading the request body slowly), and everything that reached it is recorded, so
//! a test can assert what a client sent (an Authorization header, a manifest) and what it did not.
//! Plain HTTP/1.1 on loopback, one request per connection (`Connection: close`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Header names in lower case, values as sent.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// How the server treats one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Keep the connection open, answer nothing.
    Never,
    /// This answer after a wait.
    Late(Duration, Box<Answer>),
    /// Read the request body `chunk` bytes at a time with a pause between reads, then answer.
    SlowRead(usize, Duration, Box<Answer>),
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

impl Answer {
    pub fn status(status: u16, headers: &[(&str, &str)]) -> Answer {
        Answer::Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    pub fn with_body(self, body: impl Into<Vec<u8>>) -> Answer {
        match self {
            Answer::Reply {
                status, headers, ..
            } => Answer::Reply {
                status,
                headers,
                body: body.into(),
            },
            other => other,
        }
    }
}

/// A running hostile server.
#[derive(Debug)]
pub struct Hostile {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

type Script = dyn Fn(&Seen, &str) -> Answer + Send + Sync;

impl Hostile {
    /// Starts a server that answers each request by `script(request, own address)`.
    pub fn start(script: impl Fn(&Seen, &str) -> Answer + Send + Sync + 'static) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (s2, a2) = (seen.clone(), addr.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (seen, script, addr) = (s2.clone(), script.clone(), a2.clone());
                std::thread::spawn(move || serve(conn, &seen, &*script, &addr));
            }
        });
        Hostile { addr, seen }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(mut c: TcpStream, seen: &Mutex<Vec<Seen>>, script: &Script, addr: &str) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, target) = (
        first.next().unwrap_or("").to_owned(),
        first.next().unwrap_or("").to_owned(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let req = Seen {
        method,
        target,
        headers,
    };
    seen.lock().unwrap().push(req.clone());
    let len: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut answer = script(&req, addr);
    let mut pace = None;
    loop {
        match answer {
            Answer::Never => {
                std::thread::sleep(Duration::from_secs(600));
                return;
            }
            Answer::Late(d, a) => {
                std::thread::sleep(d);
                answer = *a;
            }
            Answer::SlowRead(chunk, every, a) => {
                pace = Some((chunk.max(1), every));
                answer = *a;
            }
            Answer::Reply {
                status,
                headers,
                body,
            } => {
                let mut left = len;
                let mut buf = vec![0u8; pace.map_or(1 << 16, |(c, _)| c)];
                while left > 0 {
                    let want = left.min(buf.len());
                    match c.read(&mut buf[..want]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => left -= n,
                    }
                    if let Some((_, every)) = pace {
                        std::thread::sleep(every);
                    }
                }
                let mut out = format!("HTTP/1.1 {status} X\r\n");
                for (k, v) in &headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str(&format!(
                    "Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                ));
                let _ = c.write_all(out.as_bytes());
                if req.method != "HEAD" {
                    let _ = c.write_all(&body);
                }
                return;
            }
        }
    }
}

/// The answers of a minimal registry that accepts a push to any repository: `/v2/` 200, blobs
/// absent, one upload session per POST, the closing PUT and the manifest 201 with Location.
pub fn registry_answer(r: &Seen) -> Answer {
    let path = r.path();
    let digest = r
        .target
        .split("digest=")
        .nth(1)
        .map(|d| d.split('&').next().unwrap_or("").replace("%3A", ":"))
        .unwrap_or_default();
    match (r.method.as_str(), path) {
        ("GET", "/v2/") => {
            Answer::status(200, &[("Docker-Distribution-API-Version", "registry/2.0")])
        }
        ("HEAD", p) if p.contains("/blobs/") => Answer::status(404, &[]),
        ("POST", p) if p.ends_with("/blobs/uploads/") => {
            Answer::status(202, &[("Location", &format!("{p}session"))])
        }
        ("PATCH", p) => Answer::status(202, &[("Location", p), ("Range", "0-0")]),
        ("PUT", p) if p.contains("/blobs/uploads/") => Answer::status(
            201,
            &[
                ("Location", &format!("/v2/x/blobs/{digest}")),
                ("Docker-Content-Digest", &digest),
            ],
        ),
        ("PUT", p) if p.contains("/manifests/") => Answer::status(201, &[("Location", p)]),
        _ => Answer::status(404, &[]),
    }
}
