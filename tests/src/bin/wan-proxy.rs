//! `wan-proxy UPSTREAM RTT_MS [MB_PER_S]`: a shaping proxy in front of UPSTREAM (host:port) for
//! the WAN benchmarks. Prints the address to connect to on the first line of stdout, then runs
//! until killed. MB_PER_S (10^6 bytes per second) caps each connection, each way.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: wan-proxy UPSTREAM RTT_MS [MB_PER_S]";
    let (Some(upstream), Some(rtt)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let Ok(rtt) = rtt.parse::<u64>() else {
        eprintln!("wan-proxy: RTT_MS {rtt:?} is not a whole number of milliseconds\n{usage}");
        return ExitCode::from(2);
    };
    let rate = match args.get(2).map(|r| r.parse::<f64>()) {
        None => None,
        Some(Ok(r)) if r > 0.0 => Some((r * 1e6) as u64),
        Some(_) => {
            eprintln!(
                "wan-proxy: MB_PER_S {:?} is not a positive number\n{usage}",
                args[2]
            );
            return ExitCode::from(2);
        }
    };
    let shaping = envbuild_e2e::Shaping {
        rtt: Duration::from_millis(rtt),
        rate,
    };
    let proxy = envbuild_e2e::ShapingProxy::start(upstream, shaping);
    println!("{}", proxy.addr);
    loop {
        std::thread::park();
    }
}
