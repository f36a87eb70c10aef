//! Several containers as one run: `run --local --ranks N` starts N ranks of a data-parallel job
//! on one engine network, each a "node" with the variables Azure ML's PyTorch distribution sets
//! (`MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `NODE_RANK`), and drives
//! them together: output streamed (ranks after 0 prefixed `[rank R]`), the first rank that fails
//! stops the others, Ctrl-C stops all (a second one kills), containers and network removed.
//! A single run is the one-container case of the same driver ([`Engine::run`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bollard::models::{
    ContainerCreateBody, EndpointSettings, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, RemoveContainerOptions, StopContainerOptions,
    WaitContainerOptions,
};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

use super::run::{container_body, Outcome, RunSpec, Sink, Stream};
use super::{Engine, EngineError};

/// The port rank 0's rendezvous listens on inside the run's network: Azure ML's for the PyTorch
/// distribution (its docs' MASTER_PORT, 6105).
pub const MASTER_PORT: u16 = 6105;

/// The name rank `r` answers to on the run's network.
pub fn rank_host(r: usize) -> String {
    format!("rank{r}")
}

/// The launch variables of rank `rank` of `world`, one process per container ("node"), rank 0
/// at [`rank_host`]`(0)`; and each rank's share of `cores` as OMP_NUM_THREADS (PyTorch's
/// thread default, which the trainer reads), so N ranks on one machine do not each take all.
pub fn rank_env(world: usize, rank: usize, cores: usize) -> Vec<String> {
    vec![
        format!("MASTER_ADDR={}", rank_host(0)),
        format!("MASTER_PORT={MASTER_PORT}"),
        format!("WORLD_SIZE={world}"),
        format!("RANK={rank}"),
        "LOCAL_RANK=0".to_owned(),
        format!("NODE_RANK={rank}"),
        format!("OMP_NUM_THREADS={}", (cores / world).max(1)),
    ]
}

/// The process's SIGTERM and SIGINT listeners while containers run. Made before the first
/// container exists: a Ctrl-C sent as soon as one prints is never met by the default
/// disposition (which would kill us and leave the containers running), and a second one sent
/// before the stop's `select!` is polled is still seen.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install(engine: &Engine) -> Result<Signals, EngineError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())
                .map_err(|e| engine.fail("installing a SIGTERM handler", e))?,
            int: signal(SignalKind::interrupt())
                .map_err(|e| engine.fail("installing a SIGINT handler", e))?,
        })
    }

    /// The next signal: 2 (SIGINT) or 15 (SIGTERM).
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => 2,
            _ = self.term.recv() => 15,
        }
    }
}

/// Copies one container's output to the sink, prefixing each line with `prefix` (kept across
/// chunks that split a line).
struct Prefixed {
    sink: Arc<dyn Sink>,
    prefix: String,
    partial: Mutex<[bool; 2]>,
}

impl Prefixed {
    fn output(&self, stream: Stream, bytes: &[u8]) {
        if self.prefix.is_empty() {
            return self.sink.output(stream, bytes);
        }
        let i = usize::from(stream == Stream::Stderr);
        let mut mid_line = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(bytes.len() + 16);
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            if !mid_line[i] {
                out.extend_from_slice(self.prefix.as_bytes());
            }
            out.extend_from_slice(piece);
            mid_line[i] = !piece.ends_with(b"\n");
        }
        self.sink.output(stream, &out);
    }
}

impl Engine {
    /// Runs the container to its end, streaming its output to ours; on Ctrl-C or SIGTERM, stops
    /// it (SIGTERM, SIGKILL after `spec.stop_timeout` s). Removes it unless `spec.keep`.
    pub async fn run(
        &self,
        spec: &RunSpec,
        sink: Arc<dyn Sink>,
    ) -> Result<(Outcome, String), EngineError> {
        let (outcome, mut ids) = self.run_ranks(std::slice::from_ref(spec), sink).await?;
        Ok((outcome, ids.pop().unwrap_or_default()))
    }

    /// Runs every spec as one job: with several, on a network of their own where rank `r`
    /// answers to [`rank_host`]`(r)` (give each its [`rank_env`]). Ends when all exit 0, when the
    /// first one fails (the others are stopped; its code is the outcome), or on a signal.
    pub async fn run_ranks(
        &self,
        specs: &[RunSpec],
        sink: Arc<dyn Sink>,
    ) -> Result<(Outcome, Vec<String>), EngineError> {
        let signals = Signals::install(self)?;
        let network = (specs.len() > 1).then(|| {
            format!(
                "envbuild-ranks-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
            )
        });
        let mut ids = Vec::with_capacity(specs.len());
        let result = match self
            .create_all(specs, network.as_deref(), &mut ids, &*sink)
            .await
        {
            Ok(()) => self.drive(&ids, specs, &sink, signals).await,
            Err(e) => Err(e),
        };
        let keep = specs.iter().any(|s| s.keep);
        let mut cleanup = Ok(());
        if !keep {
            for id in &ids {
                let removed = self
                    .docker
                    .remove_container(
                        id,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
                if let Err(e) = removed {
                    cleanup = Err(self.fail(format!("removing container {id}"), e));
                }
            }
            if let Some(n) = &network {
                if let Err(e) = self.docker.remove_network(n).await {
                    cleanup = Err(self.fail(format!("removing network {n}"), e));
                }
            }
        }
        let outcome = result?;
        cleanup?;
        Ok((outcome, ids))
    }

    async fn create_all(
        &self,
        specs: &[RunSpec],
        network: Option<&str>,
        ids: &mut Vec<String>,
        sink: &dyn Sink,
    ) -> Result<(), EngineError> {
        if let Some(n) = network {
            self.docker
                .create_network(NetworkCreateRequest {
                    name: n.to_owned(),
                    driver: Some("bridge".into()),
                    labels: Some(HashMap::from([(
                        "org.envbuild.run".to_owned(),
                        "local".to_owned(),
                    )])),
                    ..Default::default()
                })
                .await
                .map_err(|e| self.fail(format!("creating network {n}"), e))?;
        }
        for (r, spec) in specs.iter().enumerate() {
            let mut body: ContainerCreateBody = container_body(spec);
            if let Some(n) = network {
                body.hostname = Some(rank_host(r));
                if let Some(h) = body.host_config.as_mut() {
                    h.network_mode = Some(n.to_owned());
                }
                body.networking_config = Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(
                        n.to_owned(),
                        EndpointSettings {
                            aliases: Some(vec![rank_host(r)]),
                            ..Default::default()
                        },
                    )])),
                });
            }
            let created = self
                .docker
                .create_container(None::<CreateContainerOptions>, body)
                .await
                .map_err(|e| self.fail(format!("creating a container from {}", spec.image), e))?;
            let short = &created.id[..created.id.len().min(12)];
            sink.message(&match network {
                Some(n) => format!("rank {r}: container {short} on network {n}"),
                None => format!("container {short}"),
            });
            ids.push(created.id);
        }
        Ok(())
    }

    async fn drive(
        &self,
        ids: &[String],
        specs: &[RunSpec],
        sink: &Arc<dyn Sink>,
        mut signals: Signals,
    ) -> Result<Outcome, EngineError> {
        let several = ids.len() > 1;
        let mut copiers = Vec::with_capacity(ids.len());
        for (r, id) in ids.iter().enumerate() {
            let attached = self
                .docker
                .attach_container(
                    id,
                    Some(AttachContainerOptions {
                        stream: true,
                        stdout: true,
                        stderr: true,
                        logs: true,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|e| self.fail("attaching to the container", e))?;
            let mut output = attached.output;
            let out = Prefixed {
                sink: sink.clone(),
                prefix: if several && r > 0 {
                    format!("[rank {r}] ")
                } else {
                    String::new()
                },
                partial: Mutex::new([false; 2]),
            };
            copiers.push(tokio::spawn(async move {
                while let Some(Ok(chunk)) = output.next().await {
                    use bollard::container::LogOutput;
                    match chunk {
                        LogOutput::StdErr { message } => out.output(Stream::Stderr, &message),
                        LogOutput::StdOut { message } | LogOutput::Console { message } => {
                            out.output(Stream::Stdout, &message)
                        }
                        LogOutput::StdIn { .. } => {}
                    }
                }
            }));
        }
        for id in ids {
            self.docker
                .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
                .await
                .map_err(|e| self.fail("starting the container", e))?;
        }

        let mut waits: FuturesUnordered<_> = ids
            .iter()
            .enumerate()
            .map(|(r, id)| {
                let mut w = self.docker.wait_container(id, None::<WaitContainerOptions>);
                async move { (r, w.next().await) }
            })
            .collect();
        let mut running: Vec<bool> = vec![true; ids.len()];
        // (rank, code) of the first failure, or the signal.
        enum End {
            AllDone,
            Failed(usize, i64),
            Signal(i32),
        }
        let end = loop {
            tokio::select! {
                next = waits.next() => {
                    let Some((r, w)) = next else { break End::AllDone };
                    running[r] = false;
                    let code = match w {
                        Some(Ok(x)) => x.status_code,
                        // bollard reports a non-zero exit as an error carrying the code.
                        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                        Some(Err(e)) => return Err(self.fail("waiting for the container", e)),
                        None => return Err(self.fail("waiting for the container", "no answer")),
                    };
                    if code != 0 {
                        break End::Failed(r, code);
                    }
                }
                s = signals.next() => break End::Signal(s),
            }
        };
        let left: Vec<&String> = ids
            .iter()
            .zip(&running)
            .filter_map(|(id, &run)| run.then_some(id))
            .collect();
        let stop_timeout = specs.iter().map(|s| s.stop_timeout).max().unwrap_or(10);
        let outcome = match end {
            End::AllDone => Outcome::Exited {
                code: 0,
                oom_killed: false,
            },
            End::Failed(r, code) => {
                if !left.is_empty() {
                    sink.message(&format!(
                        "envbuild: rank {r} exited with code {code}: stopping the other {} rank(s)",
                        left.len()
                    ));
                    self.stop_all(&left, stop_timeout, sink, &mut signals)
                        .await?;
                }
                let oom_killed = self
                    .docker
                    .inspect_container(
                        &ids[r],
                        None::<bollard::query_parameters::InspectContainerOptions>,
                    )
                    .await
                    .ok()
                    .and_then(|c| c.state)
                    .and_then(|s| s.oom_killed)
                    .unwrap_or(false);
                Outcome::Exited { code, oom_killed }
            }
            End::Signal(signal) => {
                sink.message(&format!(
                    "envbuild: stopping the container{} (SIGTERM, then SIGKILL after {stop_timeout} s; interrupt again to kill it now)",
                    if several { "s" } else { "" }
                ));
                self.stop_all(&left, stop_timeout, sink, &mut signals)
                    .await?;
                Outcome::Interrupted { signal }
            }
        };
        for c in copiers {
            let _ = c.await;
        }
        Ok(outcome)
    }

    /// Stops `ids` together (SIGTERM, SIGKILL after `timeout` s); a signal meanwhile kills them.
    async fn stop_all(
        &self,
        ids: &[&String],
        timeout: u32,
        sink: &Arc<dyn Sink>,
        signals: &mut Signals,
    ) -> Result<(), EngineError> {
        let stops = futures_util::future::join_all(ids.iter().map(|id| {
            self.docker.stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(timeout as i32),
                    signal: None,
                }),
            )
        }));
        tokio::select! {
            results = stops => {
                for r in results {
                    // 304: it had stopped by itself meanwhile.
                    match r {
                        Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => {}
                        Err(e) => return Err(self.fail("stopping the container", e)),
                    }
                }
            }
            // A second Ctrl-C (or SIGTERM) does not wait out the stop timeout.
            _ = signals.next() => {
                sink.message("envbuild: interrupted again: killing the container (SIGKILL)");
                for id in ids {
                    self.docker
                        .kill_container(id, None::<bollard::query_parameters::KillContainerOptions>)
                        .await
                        .map_err(|e| self.fail("killing the container", e))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_variables_are_azure_mls_and_split_the_cores() {
        let e = rank_env(2, 1, 8);
        assert_eq!(
            e,
            [
                "MASTER_ADDR=rank0",
                "MASTER_PORT=6105",
                "WORLD_SIZE=2",
                "RANK=1",
                "LOCAL_RANK=0",
                "NODE_RANK=1",
                "OMP_NUM_THREADS=4"
            ]
        );
        assert!(rank_env(4, 0, 2).contains(&"OMP_NUM_THREADS=1".to_owned()));
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<u8>>);
    impl Sink for Collect {
        fn output(&self, _: Stream, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
        fn message(&self, _: &str) {}
    }

    #[test]
    fn prefixes_survive_lines_split_across_chunks() {
        let sink = Arc::new(Collect::default());
        let p = Prefixed {
            sink: sink.clone(),
            prefix: "[rank 1] ".into(),
            partial: Mutex::new([false; 2]),
        };
        p.output(Stream::Stdout, b"one\ntw");
        p.output(Stream::Stdout, b"o\nthree\n");
        assert_eq!(
            String::from_utf8(sink.0.lock().unwrap().clone()).unwrap(),
            "[rank 1] one\n[rank 1] two\n[rank 1] three\n"
        );
    }
}
