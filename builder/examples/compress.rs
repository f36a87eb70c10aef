//! `compress ALGO[:LEVEL] THREADS < IN > OUT`: envbuild's layer compressor (with both of its
//! SHA-256s, as a build runs it) over stdin, for `scripts/bench-build.sh` to set beside pigz and
//! zstd on the same bytes. Prints `SECONDS IN_BYTES OUT_BYTES` on stderr.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(algo), Some(threads)) = (args.first(), args.get(1)) else {
        eprintln!("usage: compress ALGO[:LEVEL] THREADS < IN > OUT");
        return ExitCode::from(2);
    };
    let compression: envbuild::layer::compress::Compression = match algo.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("compress: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(threads) = threads.parse::<usize>() else {
        eprintln!("compress: THREADS {threads:?} is not a number");
        return ExitCode::from(2);
    };
    let started = std::time::Instant::now();
    let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut e = envbuild::layer::compress::Encoder::new(compression, threads, out);
    let mut buf = vec![0u8; 1 << 20];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(err) = e.write_all(&buf[..n]) {
                    eprintln!("compress: writing: {err}");
                    return ExitCode::FAILURE;
                }
            }
            Err(err) => {
                eprintln!("compress: reading: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    match e.finish() {
        Ok(f) => {
            eprintln!(
                "{:.3} {} {}",
                started.elapsed().as_secs_f64(),
                f.uncompressed_size,
                f.size
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("compress: {err}");
            ExitCode::FAILURE
        }
    }
}
