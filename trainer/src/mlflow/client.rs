//! MLflow's tracking REST API (`/api/2.0/mlflow/...`) over a small blocking client: each call
//! bounded in time, retried with backoff on connection errors, 408, 429 and 5xx (as MLflow's
//! own client retries), and its failure sorted into "unreachable" (try again later) or
//! "refused" (the server said no: it will say no again).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::batch::Batch;
use super::uri::{Auth, Endpoint};

/// At most this long to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this long for one request and its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause between tries; it doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The most of a server's answer kept for a message.
const MAX_MESSAGE: usize = 300;

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No answer, or a transient one (408, 429, 5xx), until the call's time ran out.
    #[error("{0}")]
    Unreachable(String),
    /// The server answered no (another 4xx); retrying would not change it.
    #[error("{status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
}

impl Failure {
    /// Whether the server turned the credentials down.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            Failure::Refused {
                status: 401 | 403,
                ..
            }
        )
    }

    /// Whether the server says the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Failure::Refused { status: 404, .. })
            || matches!(self, Failure::Refused { code, .. } if code == "RESOURCE_DOES_NOT_EXIST")
    }
}

/// A tracking server and the credentials for it.
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    endpoint: Endpoint,
    auth: Auth,
    cutoff: Cutoff,
}

/// A time after which every call of a client gives up after its current try, set from another
/// thread (the end of training) while a call may be retrying.
#[derive(Debug, Clone, Default)]
pub struct Cutoff(Arc<Mutex<Option<Instant>>>);

impl Cutoff {
    pub fn set(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    fn limit(&self, deadline: Instant) -> Instant {
        match *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(at) => deadline.min(at),
            None => deadline,
        }
    }
}

impl Client {
    pub fn new(endpoint: Endpoint, auth: Auth, cutoff: Cutoff) -> Client {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            // Statuses are sorted here, not turned into errors.
            .http_status_as_error(false)
            .user_agent(concat!("envbuild-trainer/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            endpoint,
            auth,
            cutoff,
        }
    }

    /// `GET` or `POST` (with `body`) `/api/2.0/mlflow/{path}`, tried until `budget` is spent
    /// or the cutoff passes (at least once).
    pub fn call(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        budget: Duration,
    ) -> Result<Value, Failure> {
        let until = Instant::now() + budget;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let deadline = self.cutoff.limit(until);
            let left = deadline.saturating_duration_since(Instant::now());
            let (failure, retry_after) = match self.once(path, query, body, left) {
                Ok(v) => return Ok(v),
                Err(Attempt::Final(f)) => return Err(f),
                Err(Attempt::Transient(f, after)) => (f, after),
            };
            let pause = retry_after.unwrap_or(backoff).min(MAX_BACKOFF);
            if Instant::now() + pause >= deadline {
                return Err(failure);
            }
            std::thread::sleep(pause);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn once(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        left: Duration,
    ) -> Result<Value, Attempt> {
        let url = format!("{}/api/2.0/mlflow/{path}", self.endpoint.base);
        let timeout = left.clamp(Duration::from_millis(200), REQUEST_TIMEOUT);
        let auth = match &self.auth {
            Auth::Header(h) => Some(h.expose().to_owned()),
            Auth::None => None,
        };
        let result = match body {
            Some(b) => {
                let mut req = self.agent.post(&url).query_pairs(query.iter().copied());
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.config()
                    .timeout_global(Some(timeout))
                    .build()
                    .header("Content-Type", "application/json")
                    .send(b.to_string())
            }
            None => {
                let mut req = self.agent.get(&url).query_pairs(query.iter().copied());
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.config().timeout_global(Some(timeout)).build().call()
            }
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => return Err(Attempt::Transient(Failure::Unreachable(describe(&e)), None)),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_string()
            .unwrap_or_default();
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|e| {
                Attempt::Transient(
                    Failure::Unreachable(format!("{status} with an answer that is not JSON: {e}")),
                    None,
                )
            });
        }
        let (code, message) = error_of(&text);
        let failure = Failure::Refused {
            status,
            code,
            message,
        };
        if matches!(status, 408 | 429) || status >= 500 {
            Err(Attempt::Transient(
                Failure::Unreachable(failure.to_string()),
                retry_after,
            ))
        } else {
            Err(Attempt::Final(failure))
        }
    }

    /// The id of experiment `name`, created when there is none.
    pub fn experiment_id(&self, name: &str, budget: Duration) -> Result<String, Failure> {
        let get = || {
            self.call(
                "experiments/get-by-name",
                &[("experiment_name", name)],
                None,
                budget,
            )
            .map(|v| v["experiment"]["experiment_id"].as_str().map(str::to_owned))
        };
        match get() {
            Ok(Some(id)) => return Ok(id),
            Ok(None) => return Err(malformed("experiments/get-by-name")),
            Err(f) if f.is_not_found() => {}
            Err(f) => return Err(f),
        }
        match self.call(
            "experiments/create",
            &[],
            Some(&json!({ "name": name })),
            budget,
        ) {
            Ok(v) => v["experiment_id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| malformed("experiments/create")),
            // Another process created it in between.
            Err(Failure::Refused { code, .. }) if code == "RESOURCE_ALREADY_EXISTS" => {
                get()?.ok_or_else(|| malformed("experiments/get-by-name"))
            }
            Err(f) => Err(f),
        }
    }

    /// Whether run `run_id` exists.
    pub fn run_exists(&self, run_id: &str, budget: Duration) -> Result<bool, Failure> {
        match self.call("runs/get", &[("run_id", run_id)], None, budget) {
            Ok(_) => Ok(true),
            Err(f) if f.is_not_found() => Ok(false),
            Err(f) => Err(f),
        }
    }

    /// Creates a run in `experiment_id`; returns its id.
    pub fn create_run(
        &self,
        experiment_id: &str,
        start_ms: i64,
        tags: &[(&str, &str)],
        budget: Duration,
    ) -> Result<String, Failure> {
        let tags: Vec<Value> = tags
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect();
        let v = self.call(
            "runs/create",
            &[],
            Some(&json!({ "experiment_id": experiment_id, "start_time": start_ms, "tags": tags })),
            budget,
        )?;
        v["run"]["info"]["run_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| malformed("runs/create"))
    }

    /// One `runs/log-batch` request.
    pub fn log_batch(&self, run_id: &str, batch: &Batch, budget: Duration) -> Result<(), Failure> {
        self.call("runs/log-batch", &[], Some(&batch.body(run_id)), budget)
            .map(|_| ())
    }

    /// Ends run `run_id` with `status` (FINISHED or FAILED).
    pub fn end_run(
        &self,
        run_id: &str,
        status: &str,
        end_ms: i64,
        budget: Duration,
    ) -> Result<(), Failure> {
        self.call(
            "runs/update",
            &[],
            Some(&json!({ "run_id": run_id, "status": status, "end_time": end_ms })),
            budget,
        )
        .map(|_| ())
    }
}

enum Attempt {
    Transient(Failure, Option<Duration>),
    Final(Failure),
}

fn malformed(what: &str) -> Failure {
    Failure::Unreachable(format!("{what}: the answer lacks the id it should carry"))
}

/// A transport error in a few words (no URL: it is printed beside, without credentials).
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => "connection reset".into(),
            std::io::ErrorKind::TimedOut => "timed out".into(),
            _ => format!("{io}"),
        },
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        other => other.to_string(),
    }
}

/// The error code and message of an MLflow answer (`{"error_code","message"}`) or an Azure one
/// (`{"error":{"code","message"}}`); else the text itself, cut short and made printable.
pub fn error_of(text: &str) -> (String, String) {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let (code, message) = if let Some(c) = v["error_code"].as_str() {
        (
            c.to_owned(),
            v["message"].as_str().unwrap_or_default().to_owned(),
        )
    } else if let Some(c) = v["error"]["code"].as_str() {
        (
            c.to_owned(),
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    } else {
        (String::new(), text.to_owned())
    };
    (code, printable(&message))
}

fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE)
        .collect();
    if s.chars().count() > MAX_MESSAGE {
        out.push('…');
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_mlflow_and_azure_are_read_and_kept_short() {
        let (c, m) = error_of(
            r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Changing param values is not allowed."}"#,
        );
        assert_eq!(
            (c.as_str(), m.as_str()),
            (
                "INVALID_PARAMETER_VALUE",
                "Changing param values is not allowed."
            )
        );
        let (c, m) =
            error_of(r#"{"error":{"code":"UserError","message":"Bearer token not provided."}}"#);
        assert_eq!(
            (c.as_str(), m.as_str()),
            ("UserError", "Bearer token not provided.")
        );
        let (c, m) = error_of(&format!("<html>\x1b[31m{}</html>", "x".repeat(1000)));
        assert!(c.is_empty() && m.chars().count() <= MAX_MESSAGE + 1 && !m.contains('\x1b'));
    }

    #[test]
    fn a_server_that_is_not_there_costs_about_the_budget_and_no_more() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Client::new(
            super::super::uri::endpoint(&format!("http://127.0.0.1:{port}")).unwrap(),
            Auth::None,
            Cutoff::default(),
        );
        let t = Instant::now();
        let e = c
            .call(
                "runs/get",
                &[("run_id", "x")],
                None,
                Duration::from_millis(1500),
            )
            .unwrap_err();
        let took = t.elapsed();
        assert!(
            matches!(e, Failure::Unreachable(ref m) if m.contains("refused")),
            "{e:?}"
        );
        // Tries at 0, 0.25, 0.75 s (+0.5) — the next pause (1 s) would pass the budget.
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_millis(1600),
            "{took:?}"
        );
    }
}
