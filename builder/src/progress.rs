//! How far long work got, for whoever shows it: the library reports tasks (a layer being
//! compressed, a blob going up or coming down, a wait on the engine or a job) and bytes; the
//! command line draws bars, plain lines or nothing. The library never prints.

use std::sync::Arc;

/// What kind of work a task is: the command line picks its bar's look and its line's verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A layer tarred, compressed and hashed (bytes of content).
    Compress,
    /// A blob sent to a registry.
    Upload,
    /// A blob fetched from a registry.
    Download,
    /// A wait with no byte count: an engine loading an image, a job changing state.
    Wait,
}

/// Where tasks are shown. Implemented by the command line; [`Hidden`] shows nothing.
pub trait Progress: Send + Sync {
    /// A task begins: `label` names it (a layer, a digest), `total` is its size when known.
    fn task(&self, kind: Kind, label: &str, total: Option<u64>) -> Task;
}

/// What one task's display does with its news.
pub trait TaskSink: Send + Sync {
    /// The position is now `bytes` (of `total`); it may go back, when a transfer restarts.
    fn set(&self, bytes: u64);
    /// A short word on the task's state (a job's status).
    fn note(&self, text: &str);
    /// The task ended; `outcome` says how ("pushed", "exists", "built 12 MB").
    fn finish(&self, outcome: &str);
}

/// One task's handle: cheap to clone, sendable to the threads that do the work. A task
/// dropped unfinished (an error) leaves its display without an outcome.
#[derive(Clone, Default)]
pub struct Task(Option<Arc<dyn TaskSink>>);

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Task"
        } else {
            "Task(hidden)"
        })
    }
}

impl Task {
    pub fn new(sink: Arc<dyn TaskSink>) -> Task {
        Task(Some(sink))
    }

    /// A task nobody watches.
    pub fn hidden() -> Task {
        Task(None)
    }

    pub fn set(&self, bytes: u64) {
        if let Some(s) = &self.0 {
            s.set(bytes);
        }
    }

    pub fn note(&self, text: &str) {
        if let Some(s) = &self.0 {
            s.note(text);
        }
    }

    pub fn finish(&self, outcome: &str) {
        if let Some(s) = &self.0 {
            s.finish(outcome);
        }
    }
}

/// Shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hidden;

impl Progress for Hidden {
    fn task(&self, _: Kind, _: &str, _: Option<u64>) -> Task {
        Task::hidden()
    }
}

/// A writer that reports the bytes written through it as the position of `task`.
#[derive(Debug)]
pub struct Counting<W> {
    pub inner: W,
    task: Task,
    n: u64,
    reported: u64,
}

impl<W> Counting<W> {
    pub fn new(inner: W, task: Task) -> Counting<W> {
        Counting {
            inner,
            task,
            n: 0,
            reported: 0,
        }
    }
}

impl<W: std::io::Write> std::io::Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        // Every 256 KiB: a tar of small files writes in 512-byte pieces.
        if self.n - self.reported >= 1 << 18 {
            self.reported = self.n;
            self.task.set(self.n);
        }
        Ok(k)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.task.set(self.n);
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);
    impl TaskSink for Seen {
        fn set(&self, b: u64) {
            self.0.lock().unwrap().push(format!("set {b}"));
        }
        fn note(&self, t: &str) {
            self.0.lock().unwrap().push(format!("note {t}"));
        }
        fn finish(&self, o: &str) {
            self.0.lock().unwrap().push(format!("finish {o}"));
        }
    }

    #[test]
    fn a_counting_writer_reports_its_bytes_in_steps_and_at_flush() {
        let seen = Arc::new(Seen::default());
        let mut w = Counting::new(Vec::new(), Task::new(seen.clone()));
        for _ in 0..3 {
            w.write_all(&vec![0u8; 200 << 10]).unwrap();
        }
        w.flush().unwrap();
        Task::new(seen.clone()).finish("done");
        let got = seen.0.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                format!("set {}", 400 << 10),
                format!("set {}", 600 << 10),
                "finish done".to_owned()
            ]
        );
        assert_eq!(w.inner.len(), 600 << 10);
        // A hidden task takes the same calls and does nothing.
        Task::hidden().set(1);
        Task::hidden().finish("x");
    }
}
