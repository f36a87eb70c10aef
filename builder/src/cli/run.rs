//! `envbuild run --local`: flags into an [`envbuild::engine::local::LocalRun`] (with `--code`, a
//! [`CodeRun`]), the run, and its end as our exit code. (`run --azure` is in `azure.rs`: the same flags, another place.)

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use envbuild::engine::local::{run_local, CodeRun, LocalRun};
use envbuild::engine::run::{Outcome, Sink, Stream};

use super::args::{env_pair, RunArgs};

/// The container's streams to ours, messages to stderr.
struct Terminal;

impl Sink for Terminal {
    fn output(&self, stream: Stream, bytes: &[u8]) {
        let _ = match stream {
            Stream::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(bytes).and_then(|()| o.flush())
            }
            Stream::Stderr => {
                let mut e = std::io::stderr().lock();
                e.write_all(bytes).and_then(|()| e.flush())
            }
        };
    }

    fn message(&self, text: &str) {
        super::ui::ui().message(text);
    }

    fn progress(&self) -> &dyn envbuild::progress::Progress {
        super::ui::ui()
    }
}

/// `envbuild run --local`: the image by digest on the local engine, the trainer's exit code as
/// ours.
pub fn local(a: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.local,
        "say where to run: `envbuild run --local …` (this machine's Docker engine) or \
         `envbuild run --azure … --compute NAME` (an Azure ML command job)"
    );
    anyhow::ensure!(
        !a.azure_args.format.json(),
        "--json is for `run --azure`: the trainer's own output is run --local's stdout"
    );
    let env = a
        .env
        .iter()
        .map(|kv| env_pair(kv).map(|(k, v)| format!("{k}={v}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Without --code the trainer runs: it reads --data and writes --outputs, so an --input or
    // --output would be silently unused.
    anyhow::ensure!(
        a.code.is_some() || (a.input.is_empty() && a.output.is_empty()),
        "--input and --output name what your own command reads and writes: add `--code DIR -- COMMAND` \
         (the trainer of `run --local` without --code reads --data DIR and writes --outputs DIR)"
    );
    let code = match &a.code {
        Some(dir) => Some(CodeRun {
            dir: dir.clone(),
            inputs: a.inputs()?,
            outputs: a.outputs(),
            command: a.args.clone(),
        }),
        None => None,
    };
    let what = if code.is_some() {
        "the command"
    } else {
        "the trainer"
    };
    let run = LocalRun {
        source: a.source.clone(),
        data: a.data.clone(),
        outputs: a.outputs.clone(),
        args: a.args.clone(),
        env,
        shm_size: Some(a.shm_size),
        memory: a.memory,
        gpus: a.gpus,
        user: a.user.clone(),
        stop_timeout: a.stop_timeout,
        keep: a.keep,
        ranks: usize::from(a.ranks),
        code,
    };
    let settings = a.transport.build(None, false)?;
    let finished = run_local(&run, &a.cache.open()?, &settings, Arc::new(Terminal))?;
    Ok(match finished.outcome {
        Outcome::Exited { code: 0, .. } if run.code.is_some() => {
            for o in a.outputs() {
                println!("output {o}: {}", finished.outputs.join(&o).display());
            }
            ExitCode::SUCCESS
        }
        Outcome::Exited { code: 0, .. } => {
            if let Some(acc) = finished.test_accuracy() {
                println!(
                    "test accuracy {:.2} %; model: {}",
                    acc * 100.0,
                    finished.outputs.join("model.safetensors").display()
                );
            }
            ExitCode::SUCCESS
        }
        Outcome::Exited { code, oom_killed } => {
            eprintln!("envbuild: {what} exited with code {code}");
            if oom_killed {
                eprintln!("envbuild: the container ran out of memory; raise --memory");
            }
            ExitCode::from(u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1))
        }
        Outcome::Interrupted { signal } if run.code.is_some() => {
            eprintln!("envbuild: stopped");
            ExitCode::from(128 + signal as u8)
        }
        Outcome::Interrupted { signal } => {
            eprintln!(
                "envbuild: stopped; the last checkpoint is in {} — add `-- --resume` to continue",
                finished.outputs.display()
            );
            ExitCode::from(128 + signal as u8)
        }
    })
}
