//! The workspace's storage as the stand-in serves it: job logs under
//! `/artifacts/ExperimentRun/dcid.ID/user_logs/std_log.txt`, behind a storage-scoped bearer
//! token and `x-ms-version` (an ARM token is refused, as Azure Storage refuses it), with the
//! Blob service's XML errors.

use axum::http::{HeaderMap, Method, StatusCode};

use super::arm::{valid_name, Reply};
use super::Shared;

/// A Blob service error: its XML body.
fn storage_error(status: u16, code: &str, message: &str) -> Reply {
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        body: None,
        error: false,
        gateway: false,
        location: None,
        text: Some(format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        )),
        headers: Vec::new(),
    }
}

/// `GET /artifacts/ExperimentRun/dcid.ID/user_logs/std_log.txt`, the workspace's storage: a
/// storage-scoped bearer token (an ARM token is refused, as Azure Storage refuses it) and
/// `x-ms-version`.
pub(super) fn artifact(sh: &Shared, method: &Method, rest: &str, headers: &HeaderMap) -> Reply {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer "));
    if let Some(t) = token {
        sh.state.lock().unwrap().tokens_seen.insert(t.to_owned());
    }
    let storage_ok = token.is_some_and(|t| {
        sh.storage_check
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|check| check(t))
    });
    if !storage_ok {
        return storage_error(
            401,
            "InvalidAuthenticationInfo",
            "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
        );
    }
    if headers.get("x-ms-version").is_none() {
        return storage_error(
            400,
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified.",
        );
    }
    let not_found = || storage_error(404, "BlobNotFound", "The specified blob does not exist.");
    let Some(r) = rest.strip_prefix("ExperimentRun/dcid.") else {
        return not_found();
    };
    let Some((id, file)) = r.split_once('/') else {
        return not_found();
    };
    if method != Method::GET || file != "user_logs/std_log.txt" || !valid_name(id) {
        return not_found();
    }
    match std::fs::read_to_string(sh.job_dir(id).join("user_logs/std_log.txt")) {
        Ok(t) => Reply {
            status: StatusCode::OK,
            body: None,
            error: false,
            gateway: false,
            location: None,
            text: Some(t),
            headers: Vec::new(),
        },
        Err(_) => not_found(),
    }
}
