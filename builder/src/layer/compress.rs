//! Layer compression whose bytes depend only on the input: gzip made of independently deflated
//! 1 MiB blocks (the pigz/pgzip scheme: output is the same for any thread count), header mtime 0,
//! OS byte 255, one pinned deflate implementation (zlib-rs, pinned by Cargo.lock); or zstd with
//! pinned parameters. The uncompressed digest (diffID) and the compressed digest are computed in
//! the same pass.

use std::io::{self, Write};

use flate2::{Compress, FlushCompress, Status};
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
            Compression::Gzip(l) => format!("gzip/zlib-rs/blocks-1MiB/v1/level-{l}"),
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
                let l = level.map_or(Ok(6), |l| l.parse().map_err(|_| bad()))?;
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
    out: HashingWriter<W>,
    diff_id: Sha256,
    crc: crc32fast::Hasher,
    uncompressed: u64,
    current: Vec<u8>,
    /// Blocks being compressed, oldest first; their results are written in this order.
    inflight: std::collections::VecDeque<std::sync::mpsc::Receiver<(Vec<u8>, crc32fast::Hasher)>>,
    max_inflight: usize,
    pool: Option<rayon::ThreadPool>,
    zstd: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
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
        let mut out = HashingWriter {
            inner: out,
            hasher: Sha256::new(),
            n: 0,
            header: None,
        };
        let threads = threads.max(1);
        let zstd = match compression {
            Compression::Gzip(level) => {
                let xfl = match level {
                    9 => 2,
                    1 => 4,
                    _ => 0,
                };
                // The gzip header: magic, deflate, no flags, mtime 0, XFL, OS 255 (unknown).
                out.header = Some([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]);
                None
            }
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
        Encoder {
            compression,
            out,
            diff_id: Sha256::new(),
            crc: crc32fast::Hasher::new(),
            uncompressed: 0,
            current: Vec::with_capacity(BLOCK),
            inflight: std::collections::VecDeque::new(),
            max_inflight: threads * 2,
            pool: zstd.is_none().then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("thread pool")
            }),
            zstd,
        }
    }

    /// Hands a block to the pool: compression overlaps with reading and hashing the next
    /// blocks; at most `max_inflight` blocks wait, which bounds memory.
    fn submit(&mut self, block: Vec<u8>, last: bool) -> io::Result<()> {
        let Compression::Gzip(level) = self.compression else {
            return Ok(());
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.pool.as_ref().expect("gzip has a pool").spawn(move || {
            let mut crc = crc32fast::Hasher::new();
            crc.update(&block);
            let _ = tx.send((deflate_block(&block, level, last), crc));
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
        let (bytes, crc) = rx
            .recv()
            .map_err(|_| io::Error::other("a compression worker failed"))?;
        self.crc.combine(&crc);
        self.out.write_header()?;
        self.out.write_all(&bytes)
    }

    /// Ends the stream and returns the digests and sizes.
    pub fn finish(mut self) -> io::Result<Finished> {
        match self.zstd.take() {
            None => {
                let last = std::mem::take(&mut self.current);
                self.submit(last, true)?;
                while !self.inflight.is_empty() {
                    self.write_oldest()?;
                }
                self.out
                    .write_all(&self.crc.clone().finalize().to_le_bytes())?;
                self.out
                    .write_all(&(self.uncompressed as u32).to_le_bytes())?;
            }
            Some(z) => {
                let bytes = z.finish()?;
                self.out.write_all(&bytes)?;
            }
        }
        self.out.inner.flush()?;
        Ok(Finished {
            digest: Digest::from_sha256(self.out.hasher),
            size: self.out.n,
            diff_id: Digest::from_sha256(self.diff_id),
            uncompressed_size: self.uncompressed,
        })
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.diff_id.update(buf);
        self.uncompressed += buf.len() as u64;
        if let Some(z) = self.zstd.as_mut() {
            z.write_all(buf)?;
            let out = std::mem::take(z.get_mut());
            self.out.write_all(&out)?;
            return Ok(buf.len());
        }
        let mut rest = buf;
        while !rest.is_empty() {
            let take = (BLOCK - self.current.len()).min(rest.len());
            self.current.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.current.len() == BLOCK {
                let full = std::mem::replace(&mut self.current, Vec::with_capacity(BLOCK));
                self.submit(full, false)?;
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

/// Raw deflate of one block with a fresh compressor: ends with a sync flush (byte-aligned, not
/// final) unless it is the last block, which ends the deflate stream.
fn deflate_block(data: &[u8], level: u32, last: bool) -> Vec<u8> {
    let mut c = Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .expect("deflate cannot fail on memory input");
        let done_input = c.total_in() as usize == data.len();
        if status == Status::StreamEnd || (!last && done_input && out.len() < out.capacity()) {
            return out;
        }
        out.reserve(out.capacity().max(64 * 1024));
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    n: u64,
    header: Option<[u8; 10]>,
}

impl<W: Write> HashingWriter<W> {
    fn write_header(&mut self) -> io::Result<()> {
        if let Some(h) = self.header.take() {
            self.write_all(&h)?;
        }
        Ok(())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(n: usize) -> Vec<u8> {
        let mut x = 12345u64;
        (0..n)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
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

    #[test]
    fn gzip_output_is_standard_gzip() {
        for len in [0, 10, BLOCK, 2 * BLOCK + 1] {
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
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&buf[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
        }
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

    #[test]
    fn parse_compression() {
        assert_eq!("gzip".parse(), Ok(Compression::Gzip(6)));
        assert_eq!("zstd:9".parse(), Ok(Compression::Zstd(9)));
        assert!("gzip:0".parse::<Compression>().is_err());
        assert!("xz".parse::<Compression>().is_err());
    }
}
