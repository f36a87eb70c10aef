//! `envbuild completions SHELL` and `envbuild man`: the shell completion scripts (clap_complete)
//! and man pages (clap_mangen), both made from the one clap definition of the command line.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};

use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write envbuild.1 and one page per command (envbuild-build.1, …) into DIR, instead of
    /// envbuild.1 to stdout
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script for the shell to stdout.
pub fn completions(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "envbuild", &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// The man page of `cmd` (named `name`) as roff.
fn page(cmd: clap::Command, name: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .title(name)
        .render(&mut out)
        .with_context(|| format!("rendering the man page {name}"))?;
    Ok(out)
}

/// Prints envbuild.1, or writes every page into `--dir` (each through a temporary name).
pub fn man(a: ManArgs) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    let Some(dir) = a.dir else {
        std::io::stdout().write_all(&page(cmd, "envbuild")?)?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut pages = vec![("envbuild".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        pages.push((format!("envbuild-{}", sub.get_name()), sub.clone()));
    }
    for (name, c) in pages {
        let target = dir.join(format!("{name}.1"));
        let tmp = dir.join(format!(".{name}.1.envbuild-tmp-{}", std::process::id()));
        std::fs::write(&tmp, page(c, &name)?)
            .and_then(|()| std::fs::rename(&tmp, &target))
            .with_context(|| format!("writing {}", target.display()))?;
        println!("{}", target.display());
    }
    Ok(ExitCode::SUCCESS)
}
