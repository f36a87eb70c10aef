//! What goes into `runs/log-batch`: metrics and parameters, split within MLflow's batch limits,
//! as JSON bodies (non-finite values spelled the way MLflow's protobuf JSON reads them).

use serde_json::{json, Value};

use crate::output::EpochMetrics;

/// MLflow's limits on one `runs/log-batch` request (mlflow 3.17, `utils/validation.py`):
/// `MAX_METRICS_PER_BATCH`, `MAX_PARAMS_TAGS_PER_BATCH`, `MAX_ENTITIES_PER_BATCH`,
/// `MAX_BATCH_LOG_REQUEST_SIZE` (bytes), `MAX_PARAM_VAL_LENGTH`.
pub const MAX_METRICS: usize = 1000;
pub const MAX_PARAMS: usize = 100;
pub const MAX_ENTITIES: usize = 1000;
pub const MAX_REQUEST_BYTES: usize = 1_000_000;
pub const MAX_PARAM_VALUE: usize = 6000;

/// The metrics each epoch logs, in this order.
pub const EPOCH_KEYS: [&str; 4] = [
    "train_loss",
    "test_loss",
    "test_accuracy",
    "images_per_second",
];

/// One metric value at a step (the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub key: &'static str,
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub step: i64,
}

/// One run parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: String,
}

impl Param {
    /// A parameter, its value cut to MLflow's limit (on a character boundary).
    pub fn new(key: &str, value: impl ToString) -> Param {
        let mut value = value.to_string();
        if value.len() > MAX_PARAM_VALUE {
            let mut end = MAX_PARAM_VALUE;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
        }
        Param {
            key: key.to_owned(),
            value,
        }
    }
}

/// One `runs/log-batch` request's content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub params: Vec<Param>,
    pub metrics: Vec<Metric>,
}

impl Batch {
    /// The request body for run `run_id`.
    pub fn body(&self, run_id: &str) -> Value {
        json!({
            "run_id": run_id,
            "params": self.params.iter().map(param_json).collect::<Vec<_>>(),
            "metrics": self.metrics.iter().map(metric_json).collect::<Vec<_>>(),
        })
    }
}

/// An epoch's metrics, stamped `timestamp` (ms), at step = the epoch.
pub fn epoch_metrics(m: &EpochMetrics, timestamp: i64) -> Vec<Metric> {
    let values = [
        m.train_loss,
        m.test_loss,
        m.test_accuracy,
        m.images_per_second,
    ];
    EPOCH_KEYS
        .iter()
        .zip(values)
        .map(|(key, value)| Metric {
            key,
            value,
            timestamp,
            step: i64::from(m.epoch),
        })
        .collect()
}

/// Splits `params` and `metrics` into as few batches as MLflow's limits allow, in order:
/// parameters first, then metrics, each batch under every limit (count and bytes).
pub fn split(params: &[Param], metrics: &[Metric]) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut cur = Batch::default();
    let mut bytes = 0;
    // Room for `{"run_id":"…","params":[],"metrics":[]}` and a run id of up to 64 bytes.
    const FRAME: usize = 128;
    let full = |cur: &Batch, bytes: usize, extra: usize, is_param: bool| {
        let n = cur.params.len() + cur.metrics.len();
        n + 1 > MAX_ENTITIES
            || (is_param && cur.params.len() + 1 > MAX_PARAMS)
            || (!is_param && cur.metrics.len() + 1 > MAX_METRICS)
            || FRAME + bytes + extra > MAX_REQUEST_BYTES
    };
    for p in params {
        let size = param_json(p).to_string().len() + 1;
        if full(&cur, bytes, size, true) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        cur.params.push(p.clone());
        bytes += size;
    }
    for m in metrics {
        let size = metric_json(m).to_string().len() + 1;
        if full(&cur, bytes, size, false) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        cur.metrics.push(m.clone());
        bytes += size;
    }
    if !cur.params.is_empty() || !cur.metrics.is_empty() {
        out.push(cur);
    }
    out
}

fn param_json(p: &Param) -> Value {
    json!({ "key": p.key, "value": p.value })
}

fn metric_json(m: &Metric) -> Value {
    json!({ "key": m.key, "value": number(m.value), "timestamp": m.timestamp, "step": m.step })
}

/// A double in protobuf's JSON mapping: a number, or "NaN", "Infinity", "-Infinity" (JSON has
/// no literal for them; MLflow's server parses these strings and answers them back).
fn number(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(epochs: u32) -> Vec<Metric> {
        (1..=epochs)
            .flat_map(|epoch| {
                epoch_metrics(
                    &EpochMetrics {
                        epoch,
                        train_loss: 0.5,
                        test_loss: f64::NAN,
                        test_accuracy: 0.9,
                        seconds: 1.0,
                        train_seconds: 0.9,
                        images_per_second: f64::INFINITY,
                        device: "cpu".into(),
                    },
                    1_700_000_000_000 + i64::from(epoch),
                )
            })
            .collect()
    }

    #[test]
    fn an_epoch_is_four_metrics_at_its_step_and_one_request() {
        let m = metrics(1);
        assert_eq!(m.iter().map(|m| m.key).collect::<Vec<_>>(), EPOCH_KEYS);
        assert!(m.iter().all(|m| m.step == 1));
        let batches = split(&[Param::new("lr", 0.001)], &m);
        assert_eq!(batches.len(), 1);
        let body = batches[0].body("abc");
        assert_eq!(body["run_id"], "abc");
        assert_eq!(body["params"][0], json!({"key": "lr", "value": "0.001"}));
        assert_eq!(body["metrics"][0]["value"], json!(0.5));
        assert_eq!(body["metrics"][1]["value"], json!("NaN"));
        assert_eq!(body["metrics"][3]["value"], json!("Infinity"));
        assert_eq!(body["metrics"][0]["timestamp"], json!(1_700_000_000_001i64));
    }

    #[test]
    fn a_backlog_is_split_within_every_limit_and_keeps_its_order() {
        let params: Vec<Param> = (0..250).map(|i| Param::new(&format!("p{i}"), i)).collect();
        let m = metrics(600); // 2400 values
        let batches = split(&params, &m);
        for b in &batches {
            assert!(b.params.len() <= MAX_PARAMS);
            assert!(b.metrics.len() <= MAX_METRICS);
            assert!(b.params.len() + b.metrics.len() <= MAX_ENTITIES);
            let run_id = "f".repeat(64);
            assert!(b.body(&run_id).to_string().len() <= MAX_REQUEST_BYTES);
        }
        let all_params: Vec<Param> = batches.iter().flat_map(|b| b.params.clone()).collect();
        let all_metrics: Vec<Metric> = batches.iter().flat_map(|b| b.metrics.clone()).collect();
        assert_eq!(all_params, params);
        assert_eq!(all_metrics.len(), m.len());
        assert!(all_metrics
            .iter()
            .zip(&m)
            .all(|(a, b)| a.key == b.key && a.step == b.step));
        // 250 params: 100 + 100 + 50 (with 950 metrics) + 1000 + 450.
        assert_eq!(
            batches.len(),
            5,
            "{:?}",
            batches
                .iter()
                .map(|b| (b.params.len(), b.metrics.len()))
                .collect::<Vec<_>>()
        );
        assert!(split(&[], &[]).is_empty());
    }

    #[test]
    fn long_values_are_cut_to_the_limit_and_requests_stay_under_a_megabyte() {
        let long = "é".repeat(MAX_PARAM_VALUE);
        let p = Param::new("note", &long);
        assert!(p.value.len() <= MAX_PARAM_VALUE && long.starts_with(&p.value));
        // 200 params of 6000 bytes: two requests of 600 kB, under the byte limit too.
        let params: Vec<Param> = (0..200)
            .map(|i| Param::new(&format!("k{i}"), "x".repeat(MAX_PARAM_VALUE + 5)))
            .collect();
        let batches = split(&params, &[]);
        assert_eq!(batches.len(), 2);
        assert!(batches
            .iter()
            .all(|b| b.body("r").to_string().len() <= MAX_REQUEST_BYTES));
    }
}
