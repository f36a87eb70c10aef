//! A TCP proxy that makes loopback look like a WAN link: a fixed round-trip time and a
//! per-connection rate cap, like toxiproxy's latency and bandwidth toxics (no kernel netem here).
//!
//! Each accepted connection gets its own upstream connection and, per direction, a reader thread
//! that stamps each chunk with its arrival time and a writer thread that delivers it when the
//! link would: the chunk starts once the previous one has left (`len / rate` each, the rate cap),
//! then travels half a round trip. The client's first bytes wait one more round trip, the TCP
//! handshake a real link costs before any request. The queue between the two is bounded, so a
//! fast sender is held back as a full window would hold it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the link costs: the round-trip time and, optionally, each connection's rate in bytes
/// per second (the same cap each way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaping {
    pub rtt: Duration,
    pub rate: Option<u64>,
}

impl Shaping {
    /// The time one chunk of `len` bytes occupies the link.
    fn serialization(&self, len: usize) -> Duration {
        self.rate.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(len as f64 / r as f64)
        })
    }
}

/// A running shaping proxy; `addr` is where clients connect instead of the upstream.
#[derive(Debug)]
pub struct ShapingProxy {
    pub addr: String,
}

/// Chunks in flight per direction before the reader stops reading: 64 × 64 KiB, more than a
/// 50 MB/s × 40 ms window.
const QUEUE: usize = 64;
const CHUNK: usize = 64 << 10;

impl ShapingProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream` (host:port).
    pub fn start(upstream: &str, shaping: Shaping) -> ShapingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upstream = upstream.to_owned();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        let _ = client.shutdown(Shutdown::Both);
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let up = std::thread::spawn(move || pipe(client, server, shaping, shaping.rtt));
                    pipe(s2, c2, shaping, Duration::ZERO);
                    let _ = up.join();
                });
            }
        });
        ShapingProxy { addr }
    }
}

/// Moves bytes from `from` to `to` as the link would; the first chunk waits `first` more.
fn pipe(mut from: TcpStream, to: TcpStream, shaping: Shaping, first: Duration) {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(QUEUE);
    let writer = {
        let mut to = to.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut link_free = Instant::now();
            let mut extra = first;
            for (arrived, chunk) in rx {
                let start = arrived.max(link_free);
                link_free = start + shaping.serialization(chunk.len());
                let deliver = link_free + shaping.rtt / 2 + std::mem::take(&mut extra);
                if let Some(wait) = deliver.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if to.write_all(&chunk).is_err() {
                    return false;
                }
            }
            true
        })
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    // Everything read has been delivered: pass the end on, as TCP passes a FIN.
    if writer.join().unwrap_or(false) {
        let _ = to.shutdown(Shutdown::Write);
    } else {
        let _ = from.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: answers each connection with what it reads, until the client's end.
    fn echo() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let mut c = c.unwrap();
                std::thread::spawn(move || {
                    let mut r = c.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut c);
                    let _ = c.shutdown(Shutdown::Write);
                });
            }
        });
        addr
    }

    /// Sends `data` through `c` and closes its sending side, reading the echo meanwhile: what
    /// came back, and how long until the last byte did.
    fn echo_all(mut c: TcpStream, data: &[u8]) -> (Vec<u8>, Duration) {
        let mut r = c.try_clone().unwrap();
        let t = Instant::now();
        let reader = std::thread::spawn(move || {
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            back
        });
        c.write_all(data).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let back = reader.join().unwrap();
        (back, t.elapsed())
    }

    #[test]
    fn round_trips_pay_the_delay_and_a_stream_the_rate() {
        let rtt = Duration::from_millis(60);
        let p = ShapingProxy::start(
            &echo(),
            Shaping {
                rtt,
                rate: Some(8 << 20),
            },
        );
        let mut c = TcpStream::connect(&p.addr).unwrap();
        // First exchange: the handshake's round trip, then the request's.
        let t = Instant::now();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
        let first = t.elapsed();
        assert_eq!(&b, b"ping");
        assert!(first >= 2 * rtt, "{first:?}");
        // Later exchanges on the same connection: one round trip each.
        let t = Instant::now();
        for _ in 0..3 {
            c.write_all(b"pong").unwrap();
            c.read_exact(&mut b).unwrap();
        }
        let three = t.elapsed();
        assert!(three >= 3 * rtt, "{three:?}");
        // 4 MiB there and back at 8 MiB/s each way, pipelined: at least half a second, and
        // every byte comes back in order.
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let (back, bulk) = echo_all(c, &data);
        assert!(back == data, "{} bytes back of {}", back.len(), data.len());
        assert!(bulk >= Duration::from_millis(500), "{bulk:?}");
    }

    #[test]
    fn without_a_rate_cap_only_the_delay_is_added() {
        let rtt = Duration::from_millis(40);
        let p = ShapingProxy::start(&echo(), Shaping { rtt, rate: None });
        let c = TcpStream::connect(&p.addr).unwrap();
        let data = vec![7u8; 16 << 20];
        let (back, took) = echo_all(c, &data);
        assert_eq!(back.len(), data.len());
        assert!(took >= 2 * rtt && took < Duration::from_secs(5), "{took:?}");
    }
}
