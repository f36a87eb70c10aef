//! Starting and stopping compute instances, followed to the end of the long-running operation
//! (202 with `Azure-AsyncOperation`, else `Location`), and their idle shutdown
//! (`updateIdleShutdownSetting`, IdleShutdownSetting: 15 minutes to 3 days). Clusters are
//! refused before any request: they scale down by themselves. Also the ISO 8601 durations
//! these settings use, read and printed (`PT1H30M` ↔ `1h30m`).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::compute::{self, link_path, Compute, ComputeError};
use super::job::{parse_timeout, Poll};
use super::Client;

/// What to do to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
        }
    }
}

/// The shortest and longest idle times the service takes (IdleShutdownSetting).
const IDLE_MIN: u64 = 15 * 60;
const IDLE_MAX: u64 = 3 * 86_400;

/// `30m`, `2h`, `1h30m`, `PT45M` → ISO 8601 (`PT30M`), within 15 minutes and 3 days.
pub fn parse_idle(text: &str) -> Result<String, ComputeError> {
    let bad = |reason| ComputeError::BadIdleTime {
        text: text.to_owned(),
        reason,
    };
    let iso =
        parse_timeout(text).map_err(|_| bad("is not a duration (use e.g. 30m, 2h or PT45M)"))?;
    let secs = iso_seconds(&iso).ok_or_else(|| bad("is not a duration"))?;
    if !(IDLE_MIN..=IDLE_MAX).contains(&secs) {
        return Err(bad(
            "is outside the range Azure ML takes: 15 minutes to 3 days",
        ));
    }
    Ok(iso)
}

/// The instance `name`, or why the action does not apply to it.
fn instance(client: &Client, name: &str, action: &'static str) -> Result<Compute, ComputeError> {
    let c = compute::get(client, name)?;
    if !c.is_instance() {
        return Err(ComputeError::NotAnInstance {
            name: c.name,
            kind: if c.kind == "AmlCompute" {
                "a cluster (AmlCompute)".into()
            } else {
                c.kind
            },
            action,
        });
    }
    Ok(c)
}

/// Starts or stops instance `name` and follows the operation to its end, calling `progress`
/// with each new operation status and instance state; returns the instance as it ends.
pub fn power(
    client: &Client,
    name: &str,
    action: Action,
    poll: Poll,
    progress: &mut dyn FnMut(&str),
) -> Result<Compute, ComputeError> {
    let c = instance(client, name, action.verb())?;
    let already = match action {
        Action::Start => ["Running", "JobRunning"].contains(&c.state.as_str()),
        Action::Stop => c.state == "Stopped",
    };
    if already {
        progress(&format!("already {}", c.state));
        return Ok(c);
    }
    let r = client.ws(
        Method::POST,
        &format!("computes/{name}/{}", action.verb()),
        None,
    )?;
    let header = |h: &str| {
        r.headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (async_op, location) = (header("azure-asyncoperation"), header("location"));
    if r.status == 202 || async_op.is_some() {
        let mut wait = retry_after(&r.headers, poll);
        let mut last = String::new();
        loop {
            let (status, failure) = match (&async_op, &location) {
                (Some(op), _) => {
                    let body = client
                        .request(Method::GET, &link_path(client, op)?, None)?
                        .body;
                    let s = body["status"].as_str().unwrap_or("InProgress").to_owned();
                    let m = body["error"]["message"].as_str().map(str::to_owned);
                    let code = body["error"]["code"].as_str().unwrap_or_default();
                    (
                        s,
                        m.map(|m| {
                            if code.is_empty() {
                                m
                            } else {
                                format!("{code}: {m}")
                            }
                        }),
                    )
                }
                (None, Some(loc)) => {
                    let a = client.request(Method::GET, &link_path(client, loc)?, None)?;
                    let s = if a.status == 202 {
                        "InProgress"
                    } else {
                        "Succeeded"
                    };
                    wait = retry_after(&a.headers, poll).max(wait);
                    (s.to_owned(), None)
                }
                (None, None) => {
                    return Err(ComputeError::NoOperation {
                        action: action.verb(),
                        name: name.to_owned(),
                        status: r.status,
                    })
                }
            };
            // The instance after the operation's answer, so a finished one reads its end state.
            let c = compute::get(client, name)?;
            let line = format!("{status} (instance {})", c.state);
            if line != last {
                progress(&line);
                last = line;
            }
            match status.as_str() {
                "Succeeded" => return compute::get(client, name),
                "Failed" | "Canceled" => {
                    return Err(ComputeError::OperationFailed {
                        action: action.verb(),
                        name: name.to_owned(),
                        status,
                        message: failure.unwrap_or_else(|| format!("the instance is {}", c.state)),
                    })
                }
                _ => {}
            }
            sleep(wait);
            wait = (wait + wait / 2).min(poll.max);
        }
    }
    compute::get(client, name)
}

/// `Retry-After` (seconds), within the caller's pacing: never under `poll.min`, never over
/// `poll.max`.
fn retry_after(h: &reqwest::header::HeaderMap, poll: Poll) -> Duration {
    crate::http::retry_after(h)
        .unwrap_or(poll.min)
        .clamp(poll.min, poll.max.max(poll.min))
}

fn sleep(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
}

/// Sets instance `name`'s idle shutdown (`iso` from [`parse_idle`]):
/// `POST …/computes/{name}/updateIdleShutdownSetting` with `{"idleTimeBeforeShutdown": iso}`.
pub fn set_idle_shutdown(client: &Client, name: &str, iso: &str) -> Result<(), ComputeError> {
    instance(client, name, "idle shutdown")?;
    client.ws(
        Method::POST,
        &format!("computes/{name}/updateIdleShutdownSetting"),
        Some(&idle_body(iso)),
    )?;
    Ok(())
}

/// The IdleShutdownSetting body of updateIdleShutdownSetting.
pub(crate) fn idle_body(iso: &str) -> Value {
    json!({ "idleTimeBeforeShutdown": iso })
}

/// `PT1H30M` → `1h30m`; `P1DT2H` → `26h`; what does not parse stays as it is.
pub fn human(iso: &str) -> String {
    let Some(secs) = iso_seconds(iso) else {
        return iso.to_owned();
    };
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (v, u) in [(h, 'h'), (m, 'm'), (s, 's')] {
        if v > 0 {
            out += &format!("{v}{u}");
        }
    }
    if out.is_empty() {
        "0s".into()
    } else {
        out
    }
}

/// Seconds of an ISO 8601 duration of days, hours, minutes and whole seconds (`P1DT2H`, `PT30M`).
pub fn iso_seconds(iso: &str) -> Option<u64> {
    let body = iso.strip_prefix('P')?;
    let (days, time) = match body.split_once('T') {
        Some((d, t)) => (d, t),
        None => (body, ""),
    };
    let mut total: u64 = 0;
    for (part, units) in [
        (days, &[('D', 86_400)][..]),
        (time, &[('H', 3600), ('M', 60), ('S', 1)][..]),
    ] {
        let mut num = String::new();
        for ch in part.chars() {
            if ch.is_ascii_digit() {
                num.push(ch);
                continue;
            }
            let unit = units.iter().find(|(u, _)| *u == ch)?.1;
            total = total.checked_add(num.parse::<u64>().ok()?.checked_mul(unit)?)?;
            num.clear();
        }
        if !num.is_empty() {
            return None;
        }
    }
    (body != "T" && !body.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_times_are_iso_and_within_the_services_range() {
        assert_eq!(parse_idle("30m").unwrap(), "PT30M");
        assert_eq!(parse_idle("15m").unwrap(), "PT15M");
        assert_eq!(parse_idle("PT120M").unwrap(), "PT2H");
        assert_eq!(parse_idle("72h").unwrap(), "PT72H");
        for (bad, why) in [
            ("14m", "15 minutes to 3 days"),
            ("73h", "15 minutes to 3 days"),
            ("soon", "is not a duration"),
            ("30", "is not a duration"),
        ] {
            let e = parse_idle(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("idle time `{bad}` ")) && e.contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn durations_read_and_print() {
        assert_eq!(iso_seconds("PT30M"), Some(1800));
        assert_eq!(iso_seconds("P3D"), Some(259_200));
        assert_eq!(iso_seconds("P1DT2H"), Some(93_600));
        assert_eq!(iso_seconds("PT120M"), Some(7200));
        for bad in ["", "P", "PT", "30M", "PT5X", "PT5"] {
            assert_eq!(iso_seconds(bad), None, "{bad}");
        }
        assert_eq!(human("PT120M"), "2h");
        assert_eq!(human("PT1H30M"), "1h30m");
        assert_eq!(human("odd"), "odd");
    }
}
