use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = trainer::cli::Args::parse();
    match trainer::run(&args, |line| println!("{line}")) {
        Ok(s) => {
            println!(
                "done: test_accuracy {:.2}% after {} epochs; model at {}",
                s.test_accuracy * 100.0,
                s.epochs,
                s.model
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trainer: error: {e}");
            if let Some(h) = e.hint() {
                eprintln!("hint: {h}");
            }
            ExitCode::FAILURE
        }
    }
}
