//! A fault-injecting HTTP proxy for the registry tests: 5xx, 429, resets, lost answers, stalls.

/// A fault-injecting HTTP proxy in front of a registry: every second request is hit by the next
/// fault of a fixed cycle (5xx, 429 with Retry-After, a reset in the middle of the request body,
/// a response lost after the registry acted on the request, a stall), or by every fault when
/// `always` is set. One request per connection (`Connection: close`).
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: String,
    pub faults: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Every request that reached the proxy: `METHOD PATH`, and ` Range: …` where it had one.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FaultProxy {
    pub fn start(upstream: &str, always: bool) -> FaultProxy {
        Self::spawn(upstream, if always { Mode::Always } else { Mode::Cycle })
    }

    /// A proxy that passes everything through, except that the authenticated requests number
    /// `from` to `from + count - 1` (counting from 0) reach the registry without their
    /// Authorization header, as if their token had been revoked: the registry itself answers
    /// them with 401 and its Bearer challenge. `faults` counts the requests so stripped.
    pub fn revoking(upstream: &str, from: usize, count: usize) -> FaultProxy {
        Self::spawn(upstream, Mode::Revoke(from, count))
    }

    /// A proxy that passes everything through until request `n` that carries a body (counting
    /// from 0), which it reads and then holds without an answer; `faults` becomes 1 then.
    pub fn hanging_at(upstream: &str, n: usize) -> FaultProxy {
        Self::spawn(upstream, Mode::HangAt(n))
    }

    /// A proxy that passes everything through, recording the requests.
    pub fn observing(upstream: &str) -> FaultProxy {
        Self::spawn(upstream, Mode::Observe)
    }

    /// A proxy that removes every request's `Range` header, as a server that ignores ranges
    /// would: range requests get the whole blob (200). `faults` counts the headers removed.
    pub fn ignoring_ranges(upstream: &str) -> FaultProxy {
        Self::spawn(upstream, Mode::NoRanges)
    }

    /// A proxy that flips the last byte of every partial answer (206) on its way back.
    pub fn corrupting_ranges(upstream: &str) -> FaultProxy {
        Self::spawn(upstream, Mode::CorruptRanges)
    }

    /// The recorded requests that start with `prefix` (e.g. `"DELETE "`).
    pub fn requests_starting(&self, prefix: &str) -> Vec<String> {
        let all = self.requests.lock().unwrap();
        all.iter()
            .filter(|r| r.starts_with(prefix))
            .cloned()
            .collect()
    }

    fn spawn(upstream: &str, mode: Mode) -> FaultProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upstream = upstream.to_owned();
        let faults = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = std::sync::Arc::new(AtomicUsize::new(0));
        let authenticated = std::sync::Arc::new(AtomicUsize::new(0));
        let with_body = std::sync::Arc::new(AtomicUsize::new(0));
        let f2 = faults.clone();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let r2 = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let (upstream, counter, faults) = (upstream.clone(), counter.clone(), f2.clone());
                let (authenticated, with_body) = (authenticated.clone(), with_body.clone());
                let requests = r2.clone();
                std::thread::spawn(move || {
                    // Read the head, then the body by Content-Length.
                    let mut buf = Vec::new();
                    let mut byte = [0u8; 1];
                    while !buf.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        buf.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let mut head = head;
                    let range = head
                        .split_inclusive("\r\n")
                        .find(|l| l.to_ascii_lowercase().starts_with("range:"))
                        .map(str::to_owned);
                    let line: Vec<&str> = head.split(' ').take(2).collect();
                    requests.lock().unwrap().push(format!(
                        "{}{}",
                        line.join(" "),
                        range.as_deref().map_or(String::new(), |r| format!(
                            " Range: {}",
                            r.split_once(':').map_or("", |(_, v)| v.trim())
                        ))
                    ));
                    if let (Mode::NoRanges, Some(r)) = (mode, &range) {
                        faults.fetch_add(1, Ordering::SeqCst);
                        head = head.replacen(r.as_str(), "", 1);
                    }
                    if let Mode::Revoke(from, count) = mode {
                        let auth = head
                            .split_inclusive("\r\n")
                            .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                            .map(str::to_owned);
                        if let Some(line) = auth {
                            let k = authenticated.fetch_add(1, Ordering::SeqCst);
                            if (from..from + count).contains(&k) {
                                faults.fetch_add(1, Ordering::SeqCst);
                                head = head.replacen(&line, "", 1);
                            }
                        }
                    }
                    if let Mode::HangAt(hang) = mode {
                        if len > 0 && with_body.fetch_add(1, Ordering::SeqCst) == hang {
                            let mut body = vec![0u8; len];
                            let _ = client.read_exact(&mut body);
                            faults.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_secs(3600));
                            return;
                        }
                    }
                    let fault = if !matches!(mode, Mode::Cycle | Mode::Always) {
                        None
                    } else if mode == Mode::Always {
                        Some(n % 3)
                    } else if n % 2 == 1 {
                        Some((n / 2) % 6)
                    } else {
                        None
                    };
                    let respond = |c: &mut std::net::TcpStream, status: &str, extra: &str| {
                        let _ = write!(c, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n");
                    };
                    // A lost answer to a PATCH kills a distribution upload session for good (its
                    // state token no longer matches), so PATCHes get resets instead.
                    let fault = if fault == Some(3) && head.starts_with("PATCH ") {
                        Some(2)
                    } else {
                        fault
                    };
                    let mut body = vec![0u8; len];
                    if let Some(2) = fault {
                        // Reset part-way through the request body: the registry never sees it.
                        if len > 0 {
                            let _ = client.read(&mut body[..len / 2 + 1]);
                        }
                        faults.fetch_add(1, Ordering::SeqCst);
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    if client.read_exact(&mut body).is_err() {
                        return;
                    }
                    match fault {
                        Some(0) => {
                            faults.fetch_add(1, Ordering::SeqCst);
                            return respond(
                                &mut client,
                                "503 Service Unavailable",
                                "Retry-After: 0\r\n",
                            );
                        }
                        Some(1) => {
                            faults.fetch_add(1, Ordering::SeqCst);
                            return respond(
                                &mut client,
                                "429 Too Many Requests",
                                "Retry-After: 1\r\n",
                            );
                        }
                        Some(4) => {
                            faults.fetch_add(1, Ordering::SeqCst);
                            return respond(&mut client, "502 Bad Gateway", "");
                        }
                        Some(5) => std::thread::sleep(std::time::Duration::from_millis(1500)),
                        _ => {}
                    }
                    let head = head
                        .replace("Connection: keep-alive", "Connection: close")
                        .replace("connection: keep-alive", "connection: close");
                    let Ok(mut up) = std::net::TcpStream::connect(&upstream) else {
                        return;
                    };
                    let _ = up.write_all(head.as_bytes());
                    let _ = up.write_all(&body);
                    let mut response = Vec::new();
                    let _ = read_response(&mut up, &mut response, head.starts_with("HEAD "));
                    if let Some(3) = fault {
                        // The registry acted on the request, but the answer is lost.
                        faults.fetch_add(1, Ordering::SeqCst);
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    if mode == Mode::CorruptRanges && response.starts_with(b"HTTP/1.1 206") {
                        if let Some(last) = response.last_mut() {
                            *last ^= 0xff;
                            faults.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    let _ = client.write_all(&response);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        FaultProxy {
            addr,
            faults,
            requests,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Cycle,
    Always,
    Revoke(usize, usize),
    HangAt(usize),
    Observe,
    NoRanges,
    CorruptRanges,
}

/// Reads one HTTP response (head and Content-Length body; none for HEAD) from `up`.
fn read_response(
    up: &mut std::net::TcpStream,
    out: &mut Vec<u8>,
    head_request: bool,
) -> std::io::Result<()> {
    use std::io::Read;
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        if up.read(&mut byte)? == 0 {
            return Ok(());
        }
        out.push(byte[0]);
    }
    let head = String::from_utf8_lossy(out).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    if !head_request && len > 0 {
        let mut body = vec![0u8; len];
        up.read_exact(&mut body)?;
        out.extend_from_slice(&body);
    }
    Ok(())
}
