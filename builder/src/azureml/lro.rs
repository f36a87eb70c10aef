//! ARM long-running operations answered `202 Accepted` with `Location` and `Retry-After`
//! (`final-state-via: location`, as the 2025-12-01 Jobs_Cancel declares): GET the Location,
//! waiting Retry-After between polls, until it answers anything but 202.

use std::time::{Duration, Instant};

use super::{AzureError, Client, Response};

/// How a follower paces itself: Retry-After (the spec allows 10–600 s) is honoured but capped at
/// `max`, and `min` is waited when the service gives none.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub min: Duration,
    pub max: Duration,
    /// Give up (an error naming the operation) after this long.
    pub deadline: Duration,
}

impl Default for Pacing {
    fn default() -> Pacing {
        Pacing {
            min: Duration::from_secs(2),
            max: Duration::from_secs(60),
            deadline: Duration::from_secs(30 * 60),
        }
    }
}

/// Follows `accepted` (the 202) to the operation's end: the final answer (200 or 204). A 202
/// without Location is the end of what can be followed and is returned as it is.
pub fn follow(client: &Client, accepted: Response, pacing: Pacing) -> Result<Response, AzureError> {
    let started = Instant::now();
    let mut last = accepted;
    while last.status == 202 {
        let Some(location) = last.location.clone() else {
            return Ok(last);
        };
        if started.elapsed() > pacing.deadline {
            return Err(AzureError::OperationTimedOut {
                location,
                waited: started.elapsed(),
            });
        }
        let wait = last.retry_after.unwrap_or(pacing.min).min(pacing.max);
        std::thread::sleep(wait);
        let next = client.get_location(&location)?;
        // A poll that names no new Location keeps the one it was reached by.
        last = Response {
            location: next.location.clone().or(Some(location)),
            ..next
        };
    }
    Ok(last)
}
