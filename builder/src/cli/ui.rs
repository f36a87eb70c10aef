//! What the user sees on stderr: messages, progress bars (indicatif) on a terminal, plain lines
//! in logs and pipes, nothing but warnings with `-q`; colour by `--color` and `NO_COLOR`; the
//! requests of `-v` through `tracing`, printed above the bars. One [`Ui`] per process, set from
//! the global flags before a command runs.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use console::style;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use envbuild::progress::{Kind, Progress, Task, TaskSink};

/// The flags every command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// No progress and no status messages (warnings, errors and the result still print)
    #[arg(short, long, global = true, display_order = 1000)]
    pub quiet: bool,
    /// Also log each request (method, URL without its query, status, time); -vv for the libraries' own logs
    #[arg(short, long, global = true, action = clap::ArgAction::Count, display_order = 1001)]
    pub verbose: u8,
    /// Colour on stderr: auto (a terminal, unless NO_COLOR is set), always, never
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value_t = ColorWhen::Auto, display_order = 1002)]
    pub color: ColorWhen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars and spinners (stderr is a terminal).
    Bars,
    /// One line per finished transfer (logs, pipes).
    Lines,
    /// Nothing (`-q`).
    Quiet,
}

/// The process's one display.
#[derive(Debug)]
pub struct Ui {
    pub mode: Mode,
    multi: MultiProgress,
    /// The bar of all bytes of every running transfer, while more than one runs.
    overall: Mutex<Overall>,
}

#[derive(Debug, Default)]
struct Overall {
    bar: Option<ProgressBar>,
    total: u64,
    running: usize,
}

static UI: OnceLock<Ui> = OnceLock::new();

/// Whether colour is on for `when`, given the environment: `always` and `never` win over
/// NO_COLOR (as no-color.org asks of command-line flags); `auto` is a terminal that is not
/// `TERM=dumb`, with NO_COLOR unset or empty.
pub fn colour_on(when: ColorWhen, terminal: bool) -> bool {
    match when {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto => {
            terminal
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::env::var("TERM").map_or(true, |t| t != "dumb")
        }
    }
}

/// The `--color` given on the command line, read before clap parses it (so that clap's own
/// help and usage errors follow it too).
pub fn color_flag(args: &[std::ffi::OsString]) -> ColorWhen {
    let mut when = ColorWhen::Auto;
    let mut it = args.iter().filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        let v = match a.strip_prefix("--color") {
            Some("") => it.next(),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        };
        if let Some(w) = v.and_then(|v| ColorWhen::from_str(v, true).ok()) {
            when = w;
        }
    }
    when
}

/// Sets the display up from the global flags; once, before the command runs.
pub fn init(g: &GlobalArgs) {
    let terminal = std::io::stderr().is_terminal();
    let color = colour_on(g.color, terminal);
    console::set_colors_enabled_stderr(color);
    console::set_colors_enabled(color);
    let mode = if g.quiet {
        Mode::Quiet
    } else if terminal && std::env::var("TERM").map_or(true, |t| t != "dumb") {
        Mode::Bars
    } else {
        Mode::Lines
    };
    let multi = MultiProgress::with_draw_target(match mode {
        Mode::Bars => ProgressDrawTarget::stderr(),
        _ => ProgressDrawTarget::hidden(),
    });
    let _ = UI.set(Ui {
        mode,
        multi,
        overall: Mutex::new(Overall::default()),
    });
    if g.verbose > 0 {
        init_tracing(g.verbose, color);
    }
}

/// The display ([`init`]'s, or plain lines when a test calls before it).
pub fn ui() -> &'static Ui {
    UI.get_or_init(|| Ui {
        mode: Mode::Lines,
        multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
        overall: Mutex::new(Overall::default()),
    })
}

impl Ui {
    /// A status message: above the bars on a terminal, a line elsewhere, nothing with `-q`
    /// unless it is a warning.
    pub fn message(&self, text: &str) {
        let warning = text.starts_with("warning:");
        if self.mode == Mode::Quiet && !warning {
            return;
        }
        let text = match text.strip_prefix("warning:") {
            Some(rest) => format!("{}{rest}", style("warning:").yellow().bold().for_stderr()),
            None => text.to_owned(),
        };
        self.line(&text);
    }

    /// A line on stderr that does not tear the bars.
    pub fn line(&self, text: &str) {
        if self.mode == Mode::Bars {
            self.multi.suspend(|| eprintln!("{text}"));
        } else {
            eprintln!("{text}");
        }
    }

    /// A spinner for a wait (engine load, job state) until the task is finished.
    pub fn spinner(&self, label: &str) -> Task {
        self.task(Kind::Wait, label, None)
    }

    fn bar_for(&self, kind: Kind, label: &str, total: Option<u64>) -> ProgressBar {
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        let template = match (kind, total) {
            (Kind::Wait, _) | (_, None) => "{spinner:.cyan} {prefix} {msg} {elapsed:.dim}",
            (Kind::Compress, _) => {
                "{prefix:<22!} [{bar:20.cyan/blue}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12}"
            }
            _ => {
                "{prefix:<22!} [{bar:20.green/blue}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12}"
            }
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(short_label(kind, label));
        if kind == Kind::Wait {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        self.multi.add(bar)
    }

    /// Joins a transfer to the overall bar (made when a second transfer runs beside the first).
    fn join_overall(&self, size: u64) {
        let mut o = self.overall.lock().expect("lock");
        o.total += size;
        o.running += 1;
        match &o.bar {
            Some(b) => b.set_length(o.total),
            None if o.running > 1 && self.mode == Mode::Bars => {
                let b = ProgressBar::new(o.total);
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:<22!} [{bar:20.white/blue}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix("total");
                o.bar = Some(self.multi.insert(0, b));
            }
            None => {}
        }
    }

    fn advance_overall(&self, by: i64) {
        let o = self.overall.lock().expect("lock");
        if let Some(b) = &o.bar {
            b.set_position(b.position().saturating_add_signed(by));
        }
    }

    fn leave_overall(&self) {
        let mut o = self.overall.lock().expect("lock");
        o.running = o.running.saturating_sub(1);
        if o.running == 0 {
            if let Some(b) = o.bar.take() {
                b.finish_and_clear();
            }
            o.total = 0;
        }
    }
}

/// A digest as `sha256:0123456789ab`, anything else as given.
fn short_label(kind: Kind, label: &str) -> String {
    let short = match label.split_once(':') {
        Some((algo, hex)) if hex.len() == 64 => format!("{algo}:{}", &hex[..12]),
        _ => label.to_owned(),
    };
    match kind {
        Kind::Upload => format!("push {short}"),
        Kind::Download => format!("pull {short}"),
        _ => short,
    }
}

impl Progress for Ui {
    fn task(&self, kind: Kind, label: &str, total: Option<u64>) -> Task {
        if self.mode == Mode::Quiet {
            return Task::hidden();
        }
        let transfer = matches!(kind, Kind::Upload | Kind::Download);
        if transfer {
            self.join_overall(total.unwrap_or(0));
        }
        let bar = (self.mode == Mode::Bars).then(|| self.bar_for(kind, label, total));
        Task::new(Arc::new(Shown {
            ui: ui_ref(self),
            kind,
            label: label.to_owned(),
            total,
            bar,
            pos: AtomicU64::new(0),
            started: Mutex::new(None),
            finished: AtomicUsize::new(0),
        }))
    }
}

/// The `'static` display: tasks outlive the borrow they were made through.
fn ui_ref(u: &Ui) -> &'static Ui {
    let global = ui();
    debug_assert!(std::ptr::eq(u, global), "one Ui per process");
    global
}

/// One task on the display.
struct Shown {
    ui: &'static Ui,
    kind: Kind,
    label: String,
    total: Option<u64>,
    bar: Option<ProgressBar>,
    pos: AtomicU64,
    /// When the first byte moved: a transfer's rate counts from there, not from its queueing.
    started: Mutex<Option<Instant>>,
    finished: AtomicUsize,
}

impl TaskSink for Shown {
    fn set(&self, bytes: u64) {
        self.started
            .lock()
            .expect("lock")
            .get_or_insert_with(Instant::now);
        let before = self.pos.swap(bytes, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            if b.position() == 0 {
                b.reset_elapsed();
            }
            b.set_position(bytes);
        }
        if matches!(self.kind, Kind::Upload | Kind::Download) {
            self.ui.advance_overall(bytes as i64 - before as i64);
        }
    }

    fn note(&self, text: &str) {
        if let Some(b) = &self.bar {
            b.set_message(text.to_owned());
        }
    }

    fn finish(&self, outcome: &str) {
        if self.finished.fetch_add(1, Ordering::Relaxed) > 0 {
            return;
        }
        let transfer = matches!(self.kind, Kind::Upload | Kind::Download);
        if transfer {
            // The bytes the overall bar has not seen (an existing blob moves none) close it out.
            let size = self.total.unwrap_or(0);
            let seen = self.pos.load(Ordering::Relaxed);
            self.ui.advance_overall(size as i64 - seen as i64);
            let line = transfer_line(
                outcome,
                &self.label,
                size,
                self.started.lock().expect("lock").map(|t| t.elapsed()),
            );
            self.ui.line(&line);
            self.ui.leave_overall();
        }
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        // A task ended by an error: its bar goes, its bytes leave the overall bar.
        if self.finished.load(Ordering::Relaxed) == 0 {
            if let Some(b) = &self.bar {
                b.finish_and_clear();
            }
            if matches!(self.kind, Kind::Upload | Kind::Download) {
                self.ui.leave_overall();
            }
        }
    }
}

/// `pushed  sha256:…  12.3 MB in 1.2s (10 MB/s)`, or `exists  sha256:…` when no bytes moved.
pub fn transfer_line(outcome: &str, label: &str, size: u64, took: Option<Duration>) -> String {
    match took {
        Some(t) if outcome == "pushed" || outcome == "pulled" => {
            let secs = t.as_secs_f64();
            format!(
                "{outcome:<7} {label}  {:.1} MB in {secs:.1}s ({:.0} MB/s)",
                size as f64 / 1e6,
                size as f64 / 1e6 / secs.max(1e-6)
            )
        }
        _ => format!("{outcome:<7} {label}"),
    }
}

/// The reporter of a command: messages and progress to the [`Ui`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl envbuild::build::Reporter for Stderr {
    fn message(&mut self, text: &str) {
        ui().message(text);
    }

    fn progress(&self) -> &dyn Progress {
        ui()
    }
}

/// `tracing` to stderr, above the bars: envbuild's requests at -v, every library's debug
/// events at -vv.
fn init_tracing(verbose: u8, color: bool) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let targets = if verbose >= 2 {
        Targets::new().with_default(LevelFilter::DEBUG)
    } else {
        Targets::new()
            .with_default(LevelFilter::WARN)
            .with_target("envbuild", LevelFilter::DEBUG)
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(color)
        .with_target(verbose >= 2)
        .without_time()
        .with_writer(|| UiWriter(Vec::new()));
    let _ = tracing_subscriber::registry()
        .with(targets)
        .with(fmt)
        .try_init();
}

/// Collects one event's text and prints it as a line of the [`Ui`] when dropped.
struct UiWriter(Vec<u8>);

impl std::io::Write for UiWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for UiWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let text = text.trim_end_matches('\n');
        if !text.is_empty() {
            ui().line(text);
        }
    }
}

/// Rows as a table: each column as wide as its widest cell, two spaces between, the last
/// column not padded.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i + 1 == r.len() {
                    s.clone()
                } else {
                    format!("{s:<w$}", w = width[i])
                }
            })
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_color_flag_is_read_before_parsing_and_the_last_one_wins() {
        let a = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(Into::into).collect() };
        assert_eq!(color_flag(&a(&["envbuild", "build", "x"])), ColorWhen::Auto);
        assert_eq!(
            color_flag(&a(&["envbuild", "--color", "never", "build"])),
            ColorWhen::Never
        );
        assert_eq!(
            color_flag(&a(&["envbuild", "--color=never", "push", "--color=always"])),
            ColorWhen::Always
        );
        // After `--` the words are the trainer's.
        assert_eq!(
            color_flag(&a(&[
                "envbuild", "run", "--local", "e", "--", "--color", "never"
            ])),
            ColorWhen::Auto
        );
    }

    #[test]
    fn always_and_never_beat_the_terminal_test() {
        assert!(colour_on(ColorWhen::Always, false));
        assert!(!colour_on(ColorWhen::Never, true));
        assert!(!colour_on(ColorWhen::Auto, false));
    }

    #[test]
    fn transfer_lines_name_the_outcome_and_the_rate_only_when_bytes_moved() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            transfer_line("pushed", &d, 20_000_000, Some(Duration::from_secs(2))),
            format!("pushed  {d}  20.0 MB in 2.0s (10 MB/s)")
        );
        assert_eq!(transfer_line("exists", &d, 5, None), format!("exists  {d}"));
        assert_eq!(short_label(Kind::Upload, &d), "push sha256:aaaaaaaaaaaa");
        assert_eq!(
            short_label(Kind::Compress, "layer trainer"),
            "layer trainer"
        );
    }
}
