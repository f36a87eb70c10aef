//! Layer compression whose bytes depend only on the input: gzip made of independent 1 MiB
//! members (the BGZF scheme of htslib: each block a complete gzip member — header with mtime 0
//! and OS byte 255, one final deflate block, CRC-32 and size — so the output is the same for any
//! thread count), deflated by libdeflate (pinned by Cargo.lock; several times zlib's speed at a
//! slightly smaller size); or zstd with pinned parameters. Every gzip reader takes a multi-member
//! file as the concatenation of its members (RFC 1952 §2.2; Go's compress/gzip, which Docker,
//! containerd and skopeo use, reads them by default). The uncompressed digest (diffID) and the
//! compressed digest are computed in the same pass.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::BadValue;

/// Media type of a gzip-compressed OCI layer.
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of a zstd-compressed OCI layer.
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Size of the independently compressed blocks. Part of the image identity: never change it.
pub const BLOCK: usize = 1 << 20;

/// The level of a bare `gzip` (and of an environment without `compression`): gzip's own
/// default. With incompressible blocks stored (see [`looks_incompressible`]), level 6 is within
/// 0.2 % of `gzip -6`'s size on the CUDA and libtorch layers, and libdeflate alone on one core
/// gets through them at about 130 MB/s instead of 70 MB/s when every block is deflated
/// (`scripts/bench-build.sh` prints the sizes and the whole build's speed).
pub const GZIP_DEFAULT_LEVEL: u32 = 6;

/// A compressor and its level; part of every layer's identity and cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "algorithm", content = "level")]
pub enum Compression {
    Gzip(u32),
    Zstd(i32),
}

impl Compression {
    pub fn media_type(&self) -> &'static str {
        match self {
            Compression::Gzip(_) => LAYER_GZIP,
            Compression::Zstd(_) => LAYER_ZSTD,
        }
    }

    /// A stable description for cache keys: implementation, version of the scheme, level.
    pub fn identity(&self) -> String {
        match self {
            Compression::Gzip(l) => {
                format!("gzip/libdeflate/members-1MiB/v3-stored-h2-7.9/level-{l}")
            }
            Compression::Zstd(l) => format!("zstd/v1/level-{l}"),
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Compression, BadValue> {
        let (alg, level) = s.split_once(':').map_or((s, None), |(a, l)| (a, Some(l)));
        let bad = || BadValue::new(s, "a compression", "gzip, gzip:1..9, zstd or zstd:1..19");
        match alg {
            "gzip" => {
                let l = level.map_or(Ok(GZIP_DEFAULT_LEVEL), |l| l.parse().map_err(|_| bad()))?;
                if (1..=9).contains(&l) {
                    Ok(Compression::Gzip(l))
                } else {
                    Err(bad())
                }
            }
            "zstd" => {
                let l = level.map_or(Ok(3), |l| l.parse().map_err(|_| bad()))?;
                if (1..=19).contains(&l) {
                    Ok(Compression::Zstd(l))
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }
}

/// What a finished stream produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

/// A `Write` that compresses what it is given into `out`, in parallel.
pub struct Encoder<W: Write> {
    compression: Compression,
    out: W,
    size: u64,
    hashes: Hashes,
    uncompressed: u64,
    current: Vec<u8>,
    /// Members being compressed, oldest first; they are written in this order.
    inflight: VecDeque<Receiver<Vec<u8>>>,
    max_inflight: usize,
    pool: Option<rayon::ThreadPool>,
    zstd: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
}

/// The stream's two SHA-256s: of what goes in (the diffID) and of what comes out. For gzip they
/// run on a thread of their own, fed the blocks and the members in order, so that the thread
/// that reads, tars and writes (and hashes each file) does not also hash twice: with the
/// incompressible blocks stored, that thread had become what the build waited on.
enum Hashes {
    Here {
        input: Sha256,
        output: Sha256,
    },
    Apart {
        tx: SyncSender<Hashed>,
        thread: std::thread::JoinHandle<(Sha256, Sha256)>,
    },
}

enum Hashed {
    Input(Arc<Vec<u8>>),
    Output(Vec<u8>),
}

impl Hashes {
    fn apart(depth: usize) -> Hashes {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Hashed>(depth);
        let thread = std::thread::spawn(move || {
            let (mut input, mut output) = (Sha256::new(), Sha256::new());
            for m in rx {
                match m {
                    Hashed::Input(b) => input.update(&b[..]),
                    Hashed::Output(b) => output.update(&b),
                }
            }
            (input, output)
        });
        Hashes::Apart { tx, thread }
    }

    fn send(&mut self, m: Hashed) -> io::Result<()> {
        match self {
            Hashes::Here { input, output } => match m {
                Hashed::Input(b) => input.update(&b[..]),
                Hashed::Output(b) => output.update(&b),
            },
            Hashes::Apart { tx, .. } => tx
                .send(m)
                .map_err(|_| io::Error::other("the hashing thread failed"))?,
        }
        Ok(())
    }

    fn finish(self) -> io::Result<(Digest, Digest)> {
        let (input, output) = match self {
            Hashes::Here { input, output } => (input, output),
            Hashes::Apart { tx, thread } => {
                drop(tx);
                thread
                    .join()
                    .map_err(|_| io::Error::other("the hashing thread failed"))?
            }
        };
        Ok((Digest::from_sha256(input), Digest::from_sha256(output)))
    }
}

impl<W: Write> std::fmt::Debug for Encoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Encoder<W> {
    pub fn new(compression: Compression, threads: usize, out: W) -> Encoder<W> {
        let threads = threads.max(1);
        let zstd = match compression {
            Compression::Gzip(_) => None,
            Compression::Zstd(level) => {
                let mut e =
                    zstd::stream::write::Encoder::new(Vec::new(), level).expect("zstd encoder");
                // Multi-threaded mode with a fixed job size gives the same bytes for any number of
                // workers >= 1; the checksum makes corruption detectable.
                e.multithread(threads.max(1) as u32)
                    .expect("zstd multithread");
                e.set_parameter(zstd::zstd_safe::CParameter::JobSize(4 << 20))
                    .expect("zstd job size");
                e.include_checksum(true).expect("zstd checksum");
                Some(e)
            }
        };
        let max_inflight = threads * 2;
        Encoder {
            compression,
            out,
            size: 0,
            hashes: match zstd {
                Some(_) => Hashes::Here {
                    input: Sha256::new(),
                    output: Sha256::new(),
                },
                None => Hashes::apart(max_inflight * 2),
            },
            uncompressed: 0,
            current: Vec::with_capacity(BLOCK),
            inflight: VecDeque::new(),
            max_inflight,
            pool: zstd.is_none().then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("thread pool")
            }),
            zstd,
        }
    }

    /// Hands a block to the pool and to the hashing thread: compression overlaps with reading
    /// the next blocks; at most `max_inflight` blocks wait, which bounds memory.
    fn submit(&mut self, block: Vec<u8>) -> io::Result<()> {
        let Compression::Gzip(level) = self.compression else {
            return Ok(());
        };
        let block = Arc::new(block);
        self.hashes.send(Hashed::Input(Arc::clone(&block)))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.pool.as_ref().expect("gzip has a pool").spawn(move || {
            let _ = tx.send(gzip_member(&block, level));
        });
        self.inflight.push_back(rx);
        while self.inflight.len() > self.max_inflight {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(rx) = self.inflight.pop_front() else {
            return Ok(());
        };
        let bytes = rx
            .recv()
            .map_err(|_| io::Error::other("a compression worker failed"))?;
        self.emit(bytes)
    }

    /// Writes compressed bytes out, counted and hashed.
    fn emit(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        self.out.write_all(&bytes)?;
        self.size += bytes.len() as u64;
        self.hashes.send(Hashed::Output(bytes))
    }

    /// Ends the stream and returns the digests and sizes.
    pub fn finish(mut self) -> io::Result<Finished> {
        match self.zstd.take() {
            None => {
                // The last, partial block; an empty stream is still one (empty) member, a
                // stream of whole blocks gets no empty member after them.
                let last = std::mem::take(&mut self.current);
                if !last.is_empty() || self.uncompressed == 0 {
                    self.submit(last)?;
                }
                while !self.inflight.is_empty() {
                    self.write_oldest()?;
                }
            }
            Some(z) => {
                let bytes = z.finish()?;
                self.emit(bytes)?;
            }
        }
        self.out.flush()?;
        let (diff_id, digest) = self.hashes.finish()?;
        Ok(Finished {
            digest,
            size: self.size,
            diff_id,
            uncompressed_size: self.uncompressed,
        })
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.uncompressed += buf.len() as u64;
        if let Some(z) = self.zstd.as_mut() {
            z.write_all(buf)?;
            let out = std::mem::take(z.get_mut());
            if let Hashes::Here { input, .. } = &mut self.hashes {
                input.update(buf);
            }
            self.emit(out)?;
            return Ok(buf.len());
        }
        let mut rest = buf;
        while !rest.is_empty() {
            let take = (BLOCK - self.current.len()).min(rest.len());
            self.current.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.current.len() == BLOCK {
                let full = std::mem::replace(&mut self.current, Vec::with_capacity(BLOCK));
                self.submit(full)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that undoes whatever layer compression `r` carries (gzip, zstd or none), told
/// apart by magic bytes.
pub fn decoder<'a, R: io::Read + 'a>(r: R) -> io::Result<Box<dyn io::Read + 'a>> {
    let mut peek = io::BufReader::with_capacity(1 << 20, r);
    let head = io::BufRead::fill_buf(&mut peek)?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(peek))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(peek)?)
    } else {
        Box::new(peek)
    })
}

thread_local! {
    /// One libdeflate compressor per worker thread and level (each holds ~1 MB of tables).
    static DEFLATERS: std::cell::RefCell<Vec<(u32, libdeflater::Compressor)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// One complete gzip member of `data`: the 10-byte header (deflate, no flags, mtime 0, XFL for
/// the level as gzip sets it, OS 255 "unknown"), one raw-deflate stream, CRC-32, size. The
/// stream is libdeflate's at `level`, or stored blocks (libdeflate's level 0) where the block
/// [`looks_incompressible`].
fn gzip_member(data: &[u8], level: u32) -> Vec<u8> {
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    let deflate_level = if looks_incompressible(data) { 0 } else { level };
    DEFLATERS.with(|cell| {
        let mut all = cell.borrow_mut();
        let i = match all.iter().position(|(l, _)| *l == deflate_level) {
            Some(i) => i,
            None => {
                let lvl = libdeflater::CompressionLvl::new(deflate_level as i32)
                    .expect("levels 1..=9 are checked when parsed, 0 is libdeflate's own");
                all.push((deflate_level, libdeflater::Compressor::new(lvl)));
                all.len() - 1
            }
        };
        let c = &mut all[i].1;
        let mut out = vec![0u8; 10 + c.deflate_compress_bound(data.len()) + 8];
        out[..10].copy_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]);
        let n = c
            .deflate_compress(data, &mut out[10..])
            .expect("the bound is always enough");
        out.truncate(10 + n);
        out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    })
}

/// Whether `data`'s bytes are spread so evenly that deflate cannot shrink it: its collision
/// entropy, H2 = log2(n² / Σ count²) over the byte values, is above 7.9 bits per byte. About
/// half of the CUDA libraries' 1 MiB blocks are like that (compressed fatbins): deflating them
/// took more than half the compressor's time and saved under 0.1 % of their size. Integer
/// arithmetic only, so every machine decides alike and the layer's bytes stay the same.
fn looks_incompressible(data: &[u8]) -> bool {
    // Four histograms, so that runs of one byte value do not serialise on one counter.
    let mut counts = [[0u32; 256]; 4];
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        for (h, &b) in counts.iter_mut().zip(q) {
            h[b as usize] += 1;
        }
    }
    for &b in quads.remainder() {
        counts[0][b as usize] += 1;
    }
    let squares: u128 = (0..256)
        .map(|v| {
            let c: u128 = counts.iter().map(|h| u128::from(h[v])).sum();
            c * c
        })
        .sum();
    let n = data.len() as u128;
    // H2 > 7.9  ⟺  n² / Σc² > 2^7.9 = 238.86…  ⟺  100·n² > 23886·Σc²
    100 * n * n > 23886 * squares
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// The states of a 64-bit linear congruential generator (Knuth's MMIX constants) from `seed`.
    fn lcg(mut x: u64) -> impl Iterator<Item = u64> {
        std::iter::repeat_with(move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x
        })
    }

    fn sample(n: usize) -> Vec<u8> {
        lcg(12345)
            .take(n)
            .enumerate()
            .map(|(i, x)| {
                if i % 3 == 0 {
                    (x >> 60) as u8
                } else {
                    b"envbuild layer "[i % 15]
                }
            })
            .collect()
    }

    #[test]
    fn gzip_is_independent_of_threads_and_write_sizes_and_decodes() {
        let data = sample(3 * BLOCK + 12345);
        let mut results = Vec::new();
        for (threads, chunk) in [(1, 4096), (2, 777_777), (8, BLOCK)] {
            let mut e = Encoder::new(Compression::Gzip(6), threads, Vec::new());
            for part in data.chunks(chunk) {
                e.write_all(part).unwrap();
            }
            results.push(e.finish().unwrap());
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        assert_eq!(results[0].diff_id, Digest::of(&data));
    }

    /// How many gzip members `buf` holds, counted by decoding one member at a time.
    fn members(buf: &[u8]) -> usize {
        let mut rest = buf;
        let mut n = 0;
        while !rest.is_empty() {
            let mut d = flate2::bufread::GzDecoder::new(rest);
            io::copy(&mut d, &mut io::sink()).unwrap();
            rest = d.into_inner();
            n += 1;
        }
        n
    }

    #[test]
    fn gzip_output_is_standard_gzip_one_member_per_block() {
        for (len, want) in [(0, 1), (10, 1), (BLOCK, 1), (2 * BLOCK + 1, 3)] {
            let data = sample(len);
            let mut buf = Vec::new();
            let f = {
                let mut e = Encoder::new(Compression::Gzip(6), 2, &mut buf);
                e.write_all(&data).unwrap();
                e.finish().unwrap()
            };
            assert_eq!(&buf[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
            assert_eq!(f.digest, Digest::of(&buf));
            assert_eq!(f.size, buf.len() as u64);
            assert_eq!(members(&buf), want, "len {len}");
            let mut back = Vec::new();
            flate2::read::MultiGzDecoder::new(&buf[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
        }
    }

    #[test]
    fn gzip_members_decode_with_the_system_gzip() {
        let data = sample(2 * BLOCK + 999);
        let mut buf = Vec::new();
        {
            let mut e = Encoder::new(Compression::Gzip(9), 2, &mut buf);
            e.write_all(&data).unwrap();
            e.finish().unwrap();
        }
        assert_eq!(system_gunzip(buf), data);
    }

    /// What `gzip -dc` makes of `buf`; fails the test if gzip refuses it.
    fn system_gunzip(buf: Vec<u8>) -> Vec<u8> {
        let mut child = std::process::Command::new("gzip")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip is on every Debian system");
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&buf).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success(), "gzip -dc refused the members");
        out.stdout
    }

    #[test]
    fn zstd_is_independent_of_threads_and_decodes() {
        let data = sample(9 << 20);
        let mut outs = Vec::new();
        for threads in [1, 3] {
            let mut buf = Vec::new();
            {
                let mut e = Encoder::new(Compression::Zstd(3), threads, &mut buf);
                e.write_all(&data).unwrap();
                e.finish().unwrap();
            }
            outs.push(buf);
        }
        assert_eq!(outs[0], outs[1]);
        assert_eq!(zstd::decode_all(&outs[0][..]).unwrap(), data);
    }

    /// `n` bytes spread evenly over the first `k` byte values (a 64-bit LCG's high bits).
    fn uniform(n: usize, k: u64) -> Vec<u8> {
        lcg(987654321)
            .take(n)
            .map(|x| ((x >> 32) % k) as u8)
            .collect()
    }

    #[test]
    fn the_incompressible_test_is_collision_entropy_above_7_9_bits() {
        // log2(240) = 7.907 and log2(238) = 7.895: the threshold falls between them.
        assert!(looks_incompressible(&uniform(BLOCK, 256)));
        assert!(looks_incompressible(&uniform(BLOCK, 240)));
        assert!(!looks_incompressible(&uniform(BLOCK, 238)));
        assert!(!looks_incompressible(&uniform(BLOCK, 200)));
        assert!(!looks_incompressible(&sample(BLOCK)));
        assert!(!looks_incompressible(&vec![7u8; BLOCK]));
        // n distinct bytes have H2 = log2(n): 239 is above the threshold, 238 below (with the
        // bytes past the last whole group of four counted; without them 238 would pass).
        let distinct = |n: u8| (0..n).collect::<Vec<u8>>();
        assert!(looks_incompressible(&distinct(239)));
        assert!(!looks_incompressible(&distinct(238)));
    }

    /// The deflate block type (BTYPE) of a member's first block.
    fn first_block_type(member: &[u8]) -> u8 {
        (member[10] >> 1) & 3
    }

    #[test]
    fn incompressible_blocks_are_stored_and_the_others_deflated_in_one_valid_stream() {
        // 245 values: H2 = 7.94 bits, so deflate's Huffman codes alone would save about 0.7 %;
        // the member stores it all the same, which is the trade this scheme makes.
        let random = uniform(BLOCK, 245);
        let text = sample(BLOCK);
        let mut plain = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
        let mut out = vec![0; plain.deflate_compress_bound(BLOCK)];
        let deflated_anyway = plain.deflate_compress(&random, &mut out).unwrap();
        assert!(deflated_anyway < BLOCK * 995 / 1000, "{deflated_anyway}");
        for level in [1, 6, 9] {
            let stored = gzip_member(&random, level);
            assert_eq!(first_block_type(&stored), 0, "level {level}: stored block");
            // Header 10, 5 bytes per 64 KiB stored block, CRC-32 and size 8.
            assert_eq!(stored.len(), 10 + BLOCK + 5 * BLOCK.div_ceil(65535) + 8);
            let deflated = gzip_member(&text, level);
            assert_ne!(first_block_type(&deflated), 0, "level {level}: deflated");
            assert!(deflated.len() < BLOCK / 2, "level {level}");
        }
        // One stream with a stored member between deflated ones decodes, with flate2 and with
        // the system's gzip.
        let data = [&text[..], &random[..], &text[..1000]].concat();
        let mut buf = Vec::new();
        {
            let mut e = Encoder::new(Compression::Gzip(6), 2, &mut buf);
            e.write_all(&data).unwrap();
            e.finish().unwrap();
        }
        assert_eq!(members(&buf), 3);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&buf[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data, "flate2 decodes other bytes");
        assert_eq!(system_gunzip(buf), data);
    }

    #[test]
    fn parse_compression() {
        assert_eq!("gzip".parse(), Ok(Compression::Gzip(6)));
        assert_eq!("gzip:6".parse(), Ok(Compression::Gzip(6)));
        assert_eq!("zstd:9".parse(), Ok(Compression::Zstd(9)));
        assert!("gzip:0".parse::<Compression>().is_err());
        assert!("xz".parse::<Compression>().is_err());
    }
}
