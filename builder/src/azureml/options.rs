//! What a job asks of the service besides its command — the 2025-12-01 fields
//! `queueSettings.jobTier` (JobTier), `identity` (IdentityConfiguration: AmlToken, Managed,
//! UserIdentity), `resources.shmSize` (pattern `\d+[bBkKmMgG]`) and `notificationSetting`
//! (emails, emailOn: EmailNotificationEnableType) — checked before any request, then written
//! into a job's properties by [`JobOptions::apply`].

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};
use thiserror::Error;

/// A job option the service would refuse: the flag, the value and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{flag} `{value}`: {reason}")]
pub struct BadOption {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

fn bad(flag: &'static str, value: &str, reason: impl Into<String>) -> BadOption {
    BadOption {
        flag,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// `queueSettings.jobTier` (JobTier without `Null`, which means "unset").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Spot,
    Basic,
    Standard,
    Premium,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Spot, Tier::Basic, Tier::Standard, Tier::Premium];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Spot => "Spot",
            Tier::Basic => "Basic",
            Tier::Standard => "Standard",
            Tier::Premium => "Premium",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = BadOption;
    fn from_str(s: &str) -> Result<Tier, BadOption> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| bad("--tier", s, "not one of Spot, Basic, Standard, Premium"))
    }
}

/// `identity`: whose identity the job's code uses to reach data and other resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// `AMLToken` (the service's default when unset).
    AmlToken,
    /// `Managed`: the compute's managed identity; a user-assigned one by client id.
    Managed { client_id: Option<String> },
    /// `UserIdentity`: the submitting user's identity.
    User,
}

impl Identity {
    /// `aml`, `managed` or `user-identity`, with the client id of a user-assigned identity
    /// (`managed` only, a UUID).
    pub fn parse(kind: &str, client_id: Option<&str>) -> Result<Identity, BadOption> {
        let id = match kind.trim().to_ascii_lowercase().as_str() {
            "aml" | "amltoken" | "aml-token" => Identity::AmlToken,
            "managed" => Identity::Managed {
                client_id: client_id.map(str::to_owned),
            },
            "user" | "user-identity" | "useridentity" => Identity::User,
            _ => {
                return Err(bad(
                    "--identity",
                    kind,
                    "not one of aml, managed, user-identity",
                ))
            }
        };
        match (&id, client_id) {
            (Identity::Managed { .. }, Some(c)) if !is_uuid(c) => Err(bad(
                "--identity-client-id",
                c,
                "not a client id (a UUID like 00000000-0000-0000-0000-000000000000)",
            )),
            (Identity::AmlToken | Identity::User, Some(c)) => Err(bad(
                "--identity-client-id",
                c,
                "only a managed identity (--identity managed) has a client id",
            )),
            _ => Ok(id),
        }
    }

    fn body(&self) -> Value {
        match self {
            Identity::AmlToken => json!({"identityType": "AMLToken"}),
            Identity::Managed { client_id: None } => json!({"identityType": "Managed"}),
            Identity::Managed { client_id: Some(c) } => {
                json!({"identityType": "Managed", "clientId": c})
            }
            Identity::User => json!({"identityType": "UserIdentity"}),
        }
    }
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// When a notification email goes out (EmailNotificationEnableType).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotifyOn {
    Completed,
    Failed,
    Canceled,
}

impl NotifyOn {
    pub const ALL: [NotifyOn; 3] = [NotifyOn::Completed, NotifyOn::Failed, NotifyOn::Canceled];

    /// The spec's value (note the service's spelling `JobCancelled`).
    pub fn as_spec(self) -> &'static str {
        match self {
            NotifyOn::Completed => "JobCompleted",
            NotifyOn::Failed => "JobFailed",
            NotifyOn::Canceled => "JobCancelled",
        }
    }

    /// `completed,failed,canceled` (any of them; `cancelled` too).
    pub fn parse_list(s: &str) -> Result<Vec<NotifyOn>, BadOption> {
        let mut out = Vec::new();
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let n = match w.to_ascii_lowercase().as_str() {
                "completed" => NotifyOn::Completed,
                "failed" => NotifyOn::Failed,
                "canceled" | "cancelled" => NotifyOn::Canceled,
                _ => {
                    return Err(bad(
                        "--notify-on",
                        w,
                        "not one of completed, failed, canceled",
                    ))
                }
            };
            if !out.contains(&n) {
                out.push(n);
            }
        }
        if out.is_empty() {
            return Err(bad(
                "--notify-on",
                s,
                "name at least one of completed, failed, canceled",
            ));
        }
        out.sort();
        Ok(out)
    }
}

/// The spec: "the email recipient list which has a limitation of 499 characters in total
/// concat with comma separator".
pub const MAX_EMAILS_CHARS: usize = 499;

/// A job's tier, identity, /dev/shm size and notifications; all unset by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobOptions {
    pub tier: Option<Tier>,
    pub identity: Option<Identity>,
    /// `resources.shmSize`: `<number><unit>`, unit one of b, k, m, g (e.g. `2g`).
    pub shm_size: Option<String>,
    pub emails: Vec<String>,
    /// When to send them; empty with emails: on every end (completed, failed, canceled).
    pub email_on: Vec<NotifyOn>,
}

/// A size in bytes as the shortest exact `shmSize`: `2147483648` → `2g`, `1536m`, `4096k`, `1000b`.
pub fn shm_size(bytes: u64) -> String {
    for (unit, shift) in [('g', 30), ('m', 20), ('k', 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}b")
}

impl JobOptions {
    /// Refuses what the 2025-12-01 definitions (or the service's stated limits) refuse.
    pub fn check(&self) -> Result<(), BadOption> {
        if let Some(s) = &self.shm_size {
            let digits = s.trim_end_matches(['b', 'B', 'k', 'K', 'm', 'M', 'g', 'G']);
            let ok = s.len() == digits.len() + 1
                && !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.bytes().any(|b| b != b'0');
            if !ok {
                return Err(bad(
                    "--shm-size",
                    s,
                    "not <number><unit> with a unit of b, k, m or g (e.g. 2g)",
                ));
            }
        }
        if let Some(Identity::Managed { client_id: Some(c) }) = &self.identity {
            Identity::parse("managed", Some(c))?;
        }
        for e in &self.emails {
            let (user, domain) = e.split_once('@').unwrap_or(("", ""));
            if user.is_empty() || !domain.contains('.') || e.contains([',', ' ', ';']) {
                return Err(bad("--notify-email", e, "not an email address"));
            }
        }
        let total = self.emails.iter().map(String::len).sum::<usize>()
            + self.emails.len().saturating_sub(1);
        if total > MAX_EMAILS_CHARS {
            return Err(bad(
                "--notify-email",
                &self.emails.join(","),
                format!("the recipients come to {total} characters with their commas; Azure ML takes at most {MAX_EMAILS_CHARS}"),
            ));
        }
        if self.emails.is_empty() && !self.email_on.is_empty() {
            let on: Vec<&str> = self.email_on.iter().map(|n| n.as_spec()).collect();
            return Err(bad(
                "--notify-on",
                &on.join(","),
                "nobody to notify: add --notify-email ADDRESS",
            ));
        }
        Ok(())
    }

    /// Writes the set options into a job's `properties` (CommandJob, SweepJob: both have
    /// `queueSettings`, `identity`, `notificationSetting`); `shmSize` into its `resources`.
    pub fn apply(&self, properties: &mut Value) {
        if let Some(t) = self.tier {
            properties["queueSettings"] = json!({"jobTier": t.as_str()});
        }
        if let Some(i) = &self.identity {
            properties["identity"] = i.body();
        }
        if let Some(s) = &self.shm_size {
            if !properties["resources"].is_object() {
                properties["resources"] = json!({});
            }
            properties["resources"]["shmSize"] = json!(s);
        }
        if !self.emails.is_empty() {
            let on: &[NotifyOn] = if self.email_on.is_empty() {
                &NotifyOn::ALL
            } else {
                &self.email_on
            };
            properties["notificationSetting"] = json!({
                "emails": self.emails,
                "emailOn": on.iter().map(|n| n.as_spec()).collect::<Vec<_>>(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_refuse_before_any_request() {
        assert_eq!("spot".parse::<Tier>().unwrap(), Tier::Spot);
        assert_eq!(
            "Cheap".parse::<Tier>().unwrap_err().to_string(),
            "--tier `Cheap`: not one of Spot, Basic, Standard, Premium"
        );
        let uuid = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
        assert_eq!(
            Identity::parse("managed", Some(uuid)).unwrap(),
            Identity::Managed {
                client_id: Some(uuid.into())
            }
        );
        assert!(Identity::parse("managed", Some("my-identity"))
            .unwrap_err()
            .to_string()
            .contains("--identity-client-id `my-identity`: not a client id"));
        assert!(Identity::parse("aml", Some(uuid)).is_err());
        assert!(Identity::parse("root", None)
            .unwrap_err()
            .to_string()
            .contains("--identity `root`"));
        assert_eq!(
            NotifyOn::parse_list("failed, canceled,failed").unwrap(),
            vec![NotifyOn::Failed, NotifyOn::Canceled]
        );
        assert!(NotifyOn::parse_list("done").is_err() && NotifyOn::parse_list(",").is_err());
        for (bytes, s) in [
            (2u64 << 30, "2g"),
            (1536 << 20, "1536m"),
            (4096, "4k"),
            (1000, "1000b"),
        ] {
            assert_eq!(shm_size(bytes), s);
        }
        let with = |f: &dyn Fn(&mut JobOptions)| {
            let mut o = JobOptions::default();
            f(&mut o);
            o.check()
        };
        for s in ["2g", "512M", "1024k", "64b"] {
            with(&|o| o.shm_size = Some(s.into())).unwrap();
        }
        for s in ["2", "2gb", "g", "0g", "-1g", "1.5g"] {
            let e = with(&|o| o.shm_size = Some(s.into())).unwrap_err();
            assert_eq!(e.flag, "--shm-size", "{s}");
        }
        assert!(with(&|o| o.emails = vec!["me@example.com".into()]).is_ok());
        assert!(with(&|o| o.emails = vec!["me".into()]).is_err());
        assert!(with(&|o| o.emails = vec![format!("{}@example.com", "x".repeat(500))]).is_err());
        let e = with(&|o| o.email_on = vec![NotifyOn::Failed]).unwrap_err();
        assert!(e.to_string().contains("nobody to notify"), "{e}");
    }

    #[test]
    fn options_are_written_as_the_spec_spells_them() {
        let mut p = json!({"jobType": "Command", "resources": {"instanceCount": 1}});
        JobOptions {
            tier: Some(Tier::Spot),
            identity: Some(Identity::Managed { client_id: None }),
            shm_size: Some("8g".into()),
            emails: vec!["a@example.com".into(), "b@example.com".into()],
            email_on: vec![],
        }
        .apply(&mut p);
        assert_eq!(
            p,
            json!({
                "jobType": "Command",
                "resources": {"instanceCount": 1, "shmSize": "8g"},
                "queueSettings": {"jobTier": "Spot"},
                "identity": {"identityType": "Managed"},
                "notificationSetting": {
                    "emails": ["a@example.com", "b@example.com"],
                    "emailOn": ["JobCompleted", "JobFailed", "JobCancelled"],
                },
            })
        );
        let mut q = json!({});
        JobOptions::default().apply(&mut q);
        assert_eq!(q, json!({}), "nothing set, nothing sent");
    }
}
