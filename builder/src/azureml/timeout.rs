//! Whether a job ended because it reached `limits.timeout`: the 2025-12-01 JobLimits says the
//! job "will be cancelled" after that run duration, so it ends `Canceled` like a job a user
//! canceled. A Canceled job whose run (`properties.StartTimeUtc` → `EndTimeUtc`) lasted at least
//! its timeout reached it. Also the ISO 8601 durations and RFC 3339 times this needs.

use serde_json::Value;

/// Seconds of an ISO 8601 duration `P[nD][T[nH][nM][n[.f]S]]` (what `limits.timeout` holds).
pub fn duration_secs(iso: &str) -> Option<f64> {
    let rest = iso.trim().strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    let mut secs = 0.0;
    let mut any = false;
    for (part, units) in [
        (days, &[('D', 86400.0)][..]),
        (time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)][..]),
    ] {
        let mut num = String::new();
        let mut order = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
                continue;
            }
            let i = units
                .iter()
                .position(|(u, _)| *u == c.to_ascii_uppercase())?;
            if i < order || num.is_empty() {
                return None;
            }
            order = i + 1;
            secs += num.parse::<f64>().ok()? * units[i].1;
            num.clear();
            any = true;
        }
        if !num.is_empty() {
            return None;
        }
    }
    (any && secs.is_finite()).then_some(secs)
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time (`2026-12-06T14:01:16.1234567Z`).
pub fn rfc3339_secs(t: &str) -> Option<f64> {
    let t = t
        .trim()
        .strip_suffix('Z')
        .or_else(|| t.trim().strip_suffix("+00:00"))?;
    let (date, time) = t.split_once(['T', 't', ' '])?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let h: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), h.as_slice()) else {
        return None;
    };
    if !(1..=12).contains(m) || !(1..=31).contains(day) || *hh > 23 || *mm > 59 || *ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if *m <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let fraction = if frac.is_empty() {
        0.0
    } else {
        format!("0.{frac}").parse::<f64>().ok()?
    };
    Some((days * 86400 + hh * 3600 + mm * 60 + ss) as f64 + fraction)
}

/// `Some(timeout)` (as the job states it, e.g. `PT30M`) when the job is Canceled after running
/// at least its `limits.timeout`.
pub fn timeout_reached(job: &Value) -> Option<String> {
    let p = &job["properties"];
    if p["status"] != "Canceled" {
        return None;
    }
    let timeout = p["limits"]["timeout"].as_str()?;
    let limit = duration_secs(timeout)?;
    let times = &p["properties"];
    let ran = rfc3339_secs(times["EndTimeUtc"].as_str()?)?
        - rfc3339_secs(times["StartTimeUtc"].as_str()?)?;
    // The service stamps the times itself; a second of slack for its rounding.
    (ran + 1.0 >= limit).then(|| timeout.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_and_times_parse() {
        for (iso, s) in [
            ("PT2H", 7200.0),
            ("PT1H30M15S", 5415.0),
            ("P1DT1M", 86460.0),
            ("PT0.5S", 0.5),
            ("P2D", 172_800.0),
        ] {
            assert_eq!(duration_secs(iso), Some(s), "{iso}");
        }
        for bad in ["", "2h", "P", "PT", "PT1M2H", "PTxS", "PT5"] {
            assert_eq!(duration_secs(bad), None, "{bad}");
        }
        assert_eq!(rfc3339_secs("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(rfc3339_secs("2000-03-01T00:00:01.5Z"), Some(951_868_801.5));
        assert_eq!(
            rfc3339_secs("2026-12-06T14:01:16.1234567Z").map(|s| s.floor()),
            Some(1_796_565_676.0)
        );
        assert_eq!(rfc3339_secs("2026-13-06T14:01:16Z"), None);
    }

    #[test]
    fn a_job_canceled_at_its_timeout_is_told_apart() {
        let job = |status: &str, end: &str| {
            json!({"properties": {"status": status, "limits": {"jobLimitsType": "Command", "timeout": "PT30S"},
                "properties": {"StartTimeUtc": "2026-12-06T14:00:00.0000000Z", "EndTimeUtc": end}}})
        };
        assert_eq!(
            timeout_reached(&job("Canceled", "2026-12-06T14:00:30.2000000Z")).as_deref(),
            Some("PT30S")
        );
        assert_eq!(
            timeout_reached(&job("Canceled", "2026-12-06T14:00:05.0000000Z")),
            None,
            "canceled by hand"
        );
        assert_eq!(
            timeout_reached(&job("Failed", "2026-12-06T14:00:31.0000000Z")),
            None
        );
        assert_eq!(
            timeout_reached(&json!({"properties": {"status": "Canceled"}})),
            None
        );
    }
}
