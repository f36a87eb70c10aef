//! Data-parallel training across processes and nodes on libtorch's own distributed engine:
//! c10d's TCPStore rendezvous and its Gloo process group, reached through `csrc/dist.cpp`.
//!
//! The launch contract is torch.distributed's and Azure ML's (`distribution: PyTorch`):
//! `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `NODE_RANK`, `MASTER_ADDR`, `MASTER_PORT` in the
//! environment. With `WORLD_SIZE` unset or 1 the trainer runs alone and nothing here is touched.

use std::ffi::{c_char, c_int, c_void, CString};
use std::time::Duration;

use tch::{Device, Tensor};

use crate::cli::BackendArg;
use crate::Error;

/// How this process was launched: alone, or as one rank of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub world: usize,
    pub rank: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl Launch {
    /// One process, rank 0 of 1.
    pub fn single() -> Launch {
        Launch {
            world: 1,
            rank: 0,
            local_rank: 0,
            master_addr: String::new(),
            master_port: 0,
        }
    }

    /// Reads the launch variables through `var` (the environment in the binary); every bad or
    /// missing one is an error that names it.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Launch, Error> {
        let bad = |name: &str, problem: String| Error::Launch(format!("{name}: {problem}"));
        let number = |name: &str| -> Result<Option<usize>, Error> {
            match var(name) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    bad(
                        name,
                        format!("`{}` is not a whole number", v.escape_default()),
                    )
                }),
            }
        };
        let world = number("WORLD_SIZE")?.unwrap_or(1);
        if world == 0 {
            return Err(bad("WORLD_SIZE", "must be at least 1".into()));
        }
        if world == 1 {
            return Ok(Launch::single());
        }
        let rank = number("RANK")?.ok_or_else(|| {
            bad(
                "RANK",
                format!("not set, but WORLD_SIZE is {world}: every process needs its rank"),
            )
        })?;
        if rank >= world {
            return Err(bad(
                "RANK",
                format!("{rank} is not below WORLD_SIZE {world} (ranks are 0..{world})"),
            ));
        }
        let local_rank = number("LOCAL_RANK")?.unwrap_or(0);
        let master_addr = var("MASTER_ADDR")
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| {
                bad(
                    "MASTER_ADDR",
                    format!("not set, but WORLD_SIZE is {world}: the address of rank 0"),
                )
            })?;
        let port = var("MASTER_PORT").ok_or_else(|| {
            bad(
                "MASTER_PORT",
                format!("not set, but WORLD_SIZE is {world}: the port rank 0 listens on"),
            )
        })?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                bad(
                    "MASTER_PORT",
                    format!("`{}` is not a port (1-65535)", port.escape_default()),
                )
            })?;
        Ok(Launch {
            world,
            rank,
            local_rank,
            master_addr: master_addr.trim().to_owned(),
            master_port,
        })
    }

    pub fn is_distributed(&self) -> bool {
        self.world > 1
    }
}

/// The backend a run uses, after `--backend auto` is resolved for the device.
pub fn check_backend(backend: BackendArg, device: Device) -> Result<(), Error> {
    match (backend, device) {
        (BackendArg::Nccl, Device::Cpu) => Err(Error::Launch(
            "--backend nccl: NCCL runs on CUDA devices, and this run trains on the CPU; use --backend gloo (or auto)".into(),
        )),
        (BackendArg::Nccl, _) => Err(Error::Launch(
            "--backend nccl: this trainer reaches c10d through its Gloo process group only; use --backend gloo (or auto), which stages CUDA gradients through host memory".into(),
        )),
        _ => Ok(()),
    }
}

#[repr(C)]
struct RawGroup {
    _opaque: [u8; 0],
}

extern "C" {
    fn envbuild_pg_new(
        host: *const c_char,
        port: u16,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut RawGroup;
    fn envbuild_pg_connect(g: *mut RawGroup, err: *mut c_char, err_len: usize) -> c_int;
    fn envbuild_pg_free(g: *mut RawGroup);
    fn envbuild_pg_set(
        g: *mut RawGroup,
        key: *const c_char,
        value: *const u8,
        len: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn envbuild_pg_get(
        g: *mut RawGroup,
        key: *const c_char,
        value: *mut u8,
        cap: usize,
        len: *mut usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn envbuild_pg_check(
        g: *mut RawGroup,
        key: *const c_char,
        present: *mut c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn envbuild_pg_disconnect(g: *mut RawGroup);
    fn envbuild_pg_add(
        g: *mut RawGroup,
        key: *const c_char,
        delta: i64,
        value: *mut i64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn envbuild_pg_allreduce_sum(
        g: *mut RawGroup,
        t: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn envbuild_pg_broadcast(
        g: *mut RawGroup,
        t: *mut c_void,
        root: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// A buffer libtorch's message is copied into.
struct ErrBuf([u8; 1024]);

impl ErrBuf {
    fn new() -> ErrBuf {
        ErrBuf([0; 1024])
    }
    fn ptr(&mut self) -> (*mut c_char, usize) {
        (self.0.as_mut_ptr().cast(), self.0.len())
    }
    fn text(&self) -> String {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end]).into_owned()
    }
}

/// This process's place in a training run: alone, or one rank of a c10d Gloo group.
#[derive(Debug)]
pub struct Group {
    pub launch: Launch,
    /// Beats this rank's counter in the store, so that when a collective breaks the survivors
    /// can tell which rank stopped beating. Declared before `raw`: fields drop in order, and the
    /// thread must be joined before the handle it uses is freed.
    heartbeat: Option<Heartbeat>,
    raw: Option<GroupHandle>,
    timeout: Duration,
}

/// How often each rank's heartbeat counter moves, and how long a survivor watches the counters
/// before it names the ranks whose counters stood still.
const BEAT: Duration = Duration::from_millis(300);
const WATCH: Duration = Duration::from_millis(1200);

#[derive(Debug)]
struct Heartbeat {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The group handle, for the heartbeat thread (the TCPStore client serialises its requests).
struct SendPtr(*mut RawGroup);
// SAFETY: the pointer is only used for store requests, which libtorch's TCPStore makes under its
// own lock; the Group joins the thread before the handle is freed.
unsafe impl Send for SendPtr {}

struct GroupHandle(*mut RawGroup);

impl std::fmt::Debug for GroupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("c10d::ProcessGroupGloo")
    }
}

impl Drop for GroupHandle {
    fn drop(&mut self) {
        // SAFETY: made by envbuild_pg_new, freed once here.
        unsafe { envbuild_pg_free(self.0) }
    }
}

impl Group {
    /// Alone: every collective is a no-op.
    pub fn single() -> Group {
        Group {
            launch: Launch::single(),
            raw: None,
            timeout: Duration::from_secs(0),
            heartbeat: None,
        }
    }

    /// Joins the group `launch` describes: the TCPStore at MASTER_ADDR:MASTER_PORT (rank 0
    /// serves it), a check that every rank was given the same WORLD_SIZE, then Gloo's pairs.
    /// Fails after `timeout` when a rank cannot be reached.
    pub fn join(launch: Launch, timeout: Duration) -> Result<Group, Error> {
        if !launch.is_distributed() {
            return Ok(Group::single());
        }
        let host = CString::new(launch.master_addr.clone())
            .map_err(|_| Error::Launch("MASTER_ADDR: contains a NUL byte".into()))?;
        let mut err = ErrBuf::new();
        let (e, n) = err.ptr();
        // SAFETY: valid C string and buffer; the shim catches every C++ exception.
        let raw = unsafe {
            envbuild_pg_new(
                host.as_ptr(),
                launch.master_port,
                launch.rank as c_int,
                launch.world as c_int,
                timeout.as_millis() as i64,
                e,
                n,
            )
        };
        let where_ = format!("{}:{}", launch.master_addr, launch.master_port);
        if raw.is_null() {
            return Err(Error::Group {
                rank: launch.rank,
                problem: format!(
                    "could not reach the rendezvous (TCPStore) at MASTER_ADDR:MASTER_PORT {where_} within {} s: {}",
                    timeout.as_secs(),
                    err.text()
                ),
            });
        }
        let mut g = Group {
            launch,
            raw: Some(GroupHandle(raw)),
            timeout,
            heartbeat: None,
        };
        g.check_world_sizes()?;
        g.heartbeat = Some(g.start_heartbeat());
        let mut err = ErrBuf::new();
        let (e, n) = err.ptr();
        // SAFETY: a live group handle.
        if unsafe { envbuild_pg_connect(raw, e, n) } != 0 {
            return Err(g.failed("connecting to every other rank (Gloo)", &err.text()));
        }
        Ok(g)
    }

    pub fn rank(&self) -> usize {
        self.launch.rank
    }

    pub fn world(&self) -> usize {
        self.launch.world
    }

    /// Whether this process writes checkpoints, metrics and the model.
    pub fn is_leader(&self) -> bool {
        self.launch.rank == 0
    }

    /// Every rank publishes its WORLD_SIZE in the store; rank 0 reads all of them, the others
    /// read rank 0's. A mismatch is an error on each side that sees it, before Gloo waits for
    /// ranks that will never come.
    fn check_world_sizes(&self) -> Result<(), Error> {
        let me = self.rank();
        let world = self.world();
        self.store_set(
            &format!("envbuild/world_size/{me}"),
            world.to_string().as_bytes(),
        )?;
        let others: Vec<usize> = if me == 0 {
            (1..world).collect()
        } else {
            vec![0]
        };
        for r in others {
            let theirs = self.store_get(&format!("envbuild/world_size/{r}"))?;
            let theirs = String::from_utf8_lossy(&theirs).into_owned();
            if me != 0 {
                // Rank 0 serves the store: it waits for this before it exits on a mismatch,
                // so that this rank reads the verdict rather than a closed connection.
                self.store_set(&format!("envbuild/world_size_read/{me}"), b"1")?;
            }
            if theirs != world.to_string() {
                if me == 0 {
                    let _ = self.store_get(&format!("envbuild/world_size_read/{r}"));
                }
                return Err(Error::Group {
                    rank: me,
                    problem: format!(
                        "WORLD_SIZE is {world} here but {theirs} at rank {r}: every process of a run must be given the same WORLD_SIZE"
                    ),
                });
            }
        }
        Ok(())
    }

    fn handle(&self) -> *mut RawGroup {
        self.raw.as_ref().map_or(std::ptr::null_mut(), |h| h.0)
    }

    fn store_set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        let k = CString::new(key).expect("store keys have no NUL");
        let mut err = ErrBuf::new();
        let (e, n) = err.ptr();
        // SAFETY: live handle, valid key and value.
        let rc = unsafe {
            envbuild_pg_set(self.handle(), k.as_ptr(), value.as_ptr(), value.len(), e, n)
        };
        if rc != 0 {
            return Err(self.failed(&format!("writing `{key}` to the store"), &err.text()));
        }
        Ok(())
    }

    fn store_get(&self, key: &str) -> Result<Vec<u8>, Error> {
        let k = CString::new(key).expect("store keys have no NUL");
        let mut buf = vec![0u8; 256];
        let mut len = 0usize;
        let mut err = ErrBuf::new();
        let (e, n) = err.ptr();
        // SAFETY: live handle, valid key, buffer of `buf.len()` bytes.
        let rc = unsafe {
            envbuild_pg_get(
                self.handle(),
                k.as_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut len,
                e,
                n,
            )
        };
        if rc != 0 {
            return Err(self.failed(
                &format!(
                    "waiting {} s for `{key}` in the store",
                    self.timeout.as_secs()
                ),
                &err.text(),
            ));
        }
        buf.truncate(len.min(256));
        Ok(buf)
    }

    fn start_heartbeat(&self) -> Heartbeat {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, ptr) = (stop.clone(), SendPtr(self.handle()));
        let key = CString::new(format!("envbuild/beat/{}", self.rank())).expect("no NUL");
        let thread = std::thread::spawn(move || {
            let ptr = ptr;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let (mut value, mut err) = (0i64, ErrBuf::new());
                let (e, n) = err.ptr();
                // SAFETY: the handle outlives this thread (joined in Heartbeat's drop, which
                // runs before GroupHandle's). A failure (the store gone) is left to the
                // collective that will fail with it.
                unsafe { envbuild_pg_add(ptr.0, key.as_ptr(), 1, &mut value, e, n) };
                std::thread::sleep(BEAT);
            }
        });
        Heartbeat {
            stop,
            thread: Some(thread),
        }
    }

    /// Each other rank's heartbeat counter, or `None` when the store cannot be asked (rank 0,
    /// which serves it, is gone).
    fn beats(&self) -> Option<Vec<(usize, i64)>> {
        (0..self.world())
            .filter(|&r| r != self.rank())
            .map(|r| {
                let key = CString::new(format!("envbuild/beat/{r}")).expect("no NUL");
                let (mut value, mut err) = (0i64, ErrBuf::new());
                let (e, n) = err.ptr();
                // SAFETY: a live handle; delta 0 reads the counter without waiting.
                let rc =
                    unsafe { envbuild_pg_add(self.handle(), key.as_ptr(), 0, &mut value, e, n) };
                (rc == 0).then_some((r, value))
            })
            .collect()
    }

    /// Which ranks stopped: those whose heartbeat counters stand still while we watch; rank 0
    /// when the store it serves no longer answers.
    fn stopped_ranks(&self) -> String {
        let Some(before) = self.beats() else {
            return "rank 0 (which serves the rendezvous) stopped or cannot be reached".into();
        };
        std::thread::sleep(WATCH);
        let Some(after) = self.beats() else {
            return "rank 0 (which serves the rendezvous) stopped or cannot be reached".into();
        };
        let still: Vec<String> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b.1 == a.1)
            .map(|(b, _)| b.0.to_string())
            .collect();
        match still.len() {
            0 => "another rank stopped or cannot be reached".into(),
            1 => format!("rank {} stopped or cannot be reached", still[0]),
            _ => format!("ranks {} stopped or cannot be reached", still.join(", ")),
        }
    }

    /// Who is gone, as the first survivor to look saw it. A rank whose collective broke only
    /// because a survivor gave up (a cascade) finds that verdict in the store instead of
    /// guessing. Rank 0 then closes its Gloo connections, so that no one waits on it, and keeps
    /// the store up for a moment for the others to read the verdict.
    fn verdict(&self) -> String {
        const KEY: &str = "envbuild/verdict";
        let k = CString::new(KEY).expect("no NUL");
        let (mut present, mut err) = (0 as c_int, ErrBuf::new());
        let (e, n) = err.ptr();
        // SAFETY: a live handle; check does not wait.
        let asked = unsafe { envbuild_pg_check(self.handle(), k.as_ptr(), &mut present, e, n) };
        let gone = match (asked, present) {
            (0, 1) => self
                .store_get(KEY)
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_else(|_| self.stopped_ranks()),
            _ => {
                let gone = self.stopped_ranks();
                let _ = self.store_set(KEY, gone.as_bytes());
                gone
            }
        };
        if self.is_leader() {
            // SAFETY: a live handle; the group is not used after a failed collective.
            unsafe { envbuild_pg_disconnect(self.handle()) };
            std::thread::sleep(2 * WATCH);
        }
        gone
    }

    /// The error of a failed collective: which rank saw it, during what, and who is gone.
    fn failed(&self, what: &str, message: &str) -> Error {
        let gone = if self.heartbeat.is_some() {
            self.verdict()
        } else if self.world() == 2 {
            format!("rank {} stopped or cannot be reached", 1 - self.rank())
        } else {
            "another rank stopped or cannot be reached".to_owned()
        };
        Error::Group {
            rank: self.rank(),
            problem: format!("{what} failed: {gone} ({})", message.trim()),
        }
    }

    /// Sums `t` over all ranks, in place. CUDA tensors go through host memory (Gloo works on
    /// host buffers). `what` names the step for the error.
    pub fn all_reduce_sum(&self, t: &mut Tensor, what: &str) -> Result<(), Error> {
        if !self.launch.is_distributed() {
            return Ok(());
        }
        self.on_host(t, what, |g, host, e, n| {
            // SAFETY: live handle; `host` is a live at::Tensor.
            unsafe { envbuild_pg_allreduce_sum(g, host, e, n) }
        })
    }

    /// Copies rank 0's `t` into every rank's `t`.
    pub fn broadcast_from_leader(&self, t: &mut Tensor, what: &str) -> Result<(), Error> {
        if !self.launch.is_distributed() {
            return Ok(());
        }
        self.on_host(t, what, |g, host, e, n| {
            // SAFETY: live handle; `host` is a live at::Tensor.
            unsafe { envbuild_pg_broadcast(g, host, 0, e, n) }
        })
    }

    fn on_host(
        &self,
        t: &mut Tensor,
        what: &str,
        op: impl FnOnce(*mut RawGroup, *mut c_void, *mut c_char, usize) -> c_int,
    ) -> Result<(), Error> {
        let staged = t.device() != Device::Cpu || !t.is_contiguous();
        let mut host = if staged {
            t.to_device(Device::Cpu).contiguous()
        } else {
            t.shallow_clone()
        };
        let mut err = ErrBuf::new();
        let (e, n) = err.ptr();
        if op(self.handle(), host.as_mut_ptr().cast(), e, n) != 0 {
            return Err(self.failed(what, &err.text()));
        }
        if staged {
            tch::no_grad(|| t.copy_(&host));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn no_variables_or_a_world_of_one_is_a_single_process() {
        assert_eq!(Launch::from_vars(vars(&[])).unwrap(), Launch::single());
        assert_eq!(
            Launch::from_vars(vars(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(),
            Launch::single()
        );
    }

    #[test]
    fn a_full_set_of_variables_is_read() {
        let l = Launch::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("NODE_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.4"),
            ("MASTER_PORT", "6105"),
        ]))
        .unwrap();
        assert_eq!(
            (
                l.world,
                l.rank,
                l.local_rank,
                l.master_addr.as_str(),
                l.master_port
            ),
            (4, 3, 1, "10.0.0.4", 6105)
        );
    }

    #[test]
    fn each_bad_variable_is_named() {
        let full = [
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "29500"),
        ];
        for (name, value, needle) in [
            (
                "WORLD_SIZE",
                Some("two"),
                "WORLD_SIZE: `two` is not a whole number",
            ),
            ("WORLD_SIZE", Some("0"), "WORLD_SIZE: must be at least 1"),
            ("RANK", None, "RANK: not set"),
            ("RANK", Some("2"), "RANK: 2 is not below WORLD_SIZE 2"),
            ("MASTER_ADDR", None, "MASTER_ADDR: not set"),
            ("MASTER_PORT", None, "MASTER_PORT: not set"),
            (
                "MASTER_PORT",
                Some("70000"),
                "MASTER_PORT: `70000` is not a port",
            ),
        ] {
            let pairs: Vec<(&str, &str)> = full
                .iter()
                .copied()
                .filter(|(k, _)| *k != name)
                .chain(value.map(|v| (name, v)))
                .collect();
            let err = Launch::from_vars(vars(&pairs)).unwrap_err().to_string();
            assert!(err.contains(needle), "{name}={value:?}: {err}");
        }
    }

    #[test]
    fn nccl_is_refused_on_the_cpu_with_the_way_out() {
        let e = check_backend(BackendArg::Nccl, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("NCCL runs on CUDA devices") && e.contains("--backend gloo"),
            "{e}"
        );
        assert!(check_backend(BackendArg::Gloo, Device::Cpu).is_ok());
        assert!(check_backend(BackendArg::Auto, Device::Cpu).is_ok());
    }
}
