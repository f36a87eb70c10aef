//! Test driver for `envbuild::auth::entra`: asks the chain, configured from this process's
//! environment, for a token for the scope in argv[1]. Prints `{"source","token","expires_in"}`
//! (it exists to show the token to the test), or the error and exits 1. A second argument
//! asks again, to show which source the chain kept.

use std::process::ExitCode;
use std::time::SystemTime;

/// The error with its causes and hints, as envbuild prints it.
fn report(e: &envbuild::auth::entra::EntraError) -> String {
    envbuild::error::report(envbuild::error::chain(e), envbuild::hint_of, None)
}

fn main() -> ExitCode {
    let scope = std::env::args().nth(1).unwrap_or_default();
    let auth = match envbuild::auth::entra::EntraChain::from_env(None) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            return ExitCode::FAILURE;
        }
    };
    for _ in 0..std::env::args().len().saturating_sub(1) {
        match auth.token(&scope) {
            Ok(t) => {
                let left = t
                    .expires_on
                    .duration_since(SystemTime::now())
                    .map_or(0, |d| d.as_secs());
                println!(
                    "{}",
                    serde_json::json!({
                        "source": auth.source(),
                        "token": t.secret.expose(),
                        "expires_in": left,
                    })
                );
            }
            Err(e) => {
                eprintln!("error: {}", report(&e));
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
