//! Sweep search spaces: `--param NAME=EXPR` (choice, randint, uniform, loguniform, quniform,
//! qloguniform, normal, lognormal, qnormal, qlognormal) parsed and checked against the trainer's
//! flags, then written as the REST body's `searchSpace` and as the CLI v2 YAML's `search_space`.
//!
//! The REST form is the Azure ML SDK's (`azure/ai/ml/entities/_job/sweep/search_space.py`,
//! `_to_rest_object`): `["choice", [[64, 128]]]`, `["uniform", [min, max]]`, `["randint", [upper]]`.
//! Azure ML's loguniform and qloguniform take the bounds of the value's *logarithm*
//! (`exp(uniform(min, max))`); envbuild takes the values' own range — `loguniform(1e-4,1e-1)`
//! draws between 0.0001 and 0.1 — and sends their natural logs. Bounds ≤ 0 are refused, so
//! Azure-style log bounds such as `loguniform(-9,-2)` cannot be misread.

use serde_json::{json, Value};
use thiserror::Error;

/// A `--param` that does not parse or does not fit the trainer flag it names.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("--param {param}: {message} (at character {column})")]
pub struct ParamError {
    /// The whole `NAME=EXPR` text.
    pub param: String,
    /// 1-based character position of the fault in `param`.
    pub column: usize,
    pub message: String,
}

/// What a trainer flag takes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FlagKind {
    /// A real number strictly between the bounds.
    Real(f64, f64),
    /// A whole number of at least this.
    Whole(i64),
}

/// The trainer's flags a sweep may vary, and what each takes (`trainer --help`).
const FLAGS: &[(&str, FlagKind)] = &[
    ("lr", FlagKind::Real(0.0, 10.0)),
    ("batch-size", FlagKind::Whole(1)),
    ("epochs", FlagKind::Whole(1)),
    ("seed", FlagKind::Whole(0)),
    ("limit-train", FlagKind::Whole(1)),
    ("limit-test", FlagKind::Whole(1)),
    ("threads", FlagKind::Whole(1)),
];

/// A distribution, as Azure ML names it.
#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    /// Numbers or words.
    Choice(Vec<Value>),
    /// 0, 1, …, upper − 1.
    Randint(i64),
    Uniform(f64, f64),
    /// The values' own bounds (the REST body gets their logs).
    LogUniform(f64, f64),
    QUniform(f64, f64, f64),
    QLogUniform(f64, f64, f64),
    Normal(f64, f64),
    LogNormal(f64, f64),
    QNormal(f64, f64, f64),
    QLogNormal(f64, f64, f64),
}

impl Distribution {
    /// Azure ML's name of the distribution.
    pub fn name(&self) -> &'static str {
        match self {
            Distribution::Choice(_) => "choice",
            Distribution::Randint(_) => "randint",
            Distribution::Uniform(..) => "uniform",
            Distribution::LogUniform(..) => "loguniform",
            Distribution::QUniform(..) => "quniform",
            Distribution::QLogUniform(..) => "qloguniform",
            Distribution::Normal(..) => "normal",
            Distribution::LogNormal(..) => "lognormal",
            Distribution::QNormal(..) => "qnormal",
            Distribution::QLogNormal(..) => "qlognormal",
        }
    }

    /// The REST body's form: `[name, [args]]`, a choice's values in one more list.
    pub fn rest(&self) -> Value {
        let args: Vec<Value> = match self {
            Distribution::Choice(v) => return json!(["choice", [v]]),
            Distribution::Randint(u) => vec![json!(u)],
            Distribution::LogUniform(a, b) => vec![json!(a.ln()), json!(b.ln())],
            Distribution::QLogUniform(a, b, q) => vec![json!(a.ln()), json!(b.ln()), json!(q)],
            Distribution::Uniform(a, b)
            | Distribution::Normal(a, b)
            | Distribution::LogNormal(a, b) => {
                vec![json!(a), json!(b)]
            }
            Distribution::QUniform(a, b, q)
            | Distribution::QNormal(a, b, q)
            | Distribution::QLogNormal(a, b, q) => vec![json!(a), json!(b), json!(q)],
        };
        json!([self.name(), args])
    }

    /// The CLI v2 YAML's form (`{type: uniform, min_value: …, max_value: …}`), as JSON.
    pub fn yaml(&self) -> Value {
        let r = self.rest();
        let a = &r[1];
        let mut m = json!({ "type": self.name() });
        match self {
            Distribution::Choice(v) => m["values"] = json!(v),
            Distribution::Randint(u) => m["upper"] = json!(u),
            Distribution::Uniform(..)
            | Distribution::LogUniform(..)
            | Distribution::QUniform(..)
            | Distribution::QLogUniform(..) => {
                (m["min_value"], m["max_value"]) = (a[0].clone(), a[1].clone());
            }
            _ => (m["mu"], m["sigma"]) = (a[0].clone(), a[1].clone()),
        }
        if let Some(q) = a.get(2) {
            m["q"] = q.clone();
        }
        m
    }

    /// How many values grid sampling takes from it; None for a continuous distribution.
    pub fn grid_size(&self) -> Option<usize> {
        match self {
            Distribution::Choice(v) => Some(v.len()),
            _ => None,
        }
    }
}

/// One swept trainer flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The trainer flag without `--` (`batch-size`).
    pub flag: String,
    pub distribution: Distribution,
}

impl Param {
    /// The search-space key: the flag with `_` for `-` (`batch_size`), as `${{search_space.KEY}}`.
    pub fn key(&self) -> String {
        self.flag.replace('-', "_")
    }

    /// Parses `NAME=EXPR` and checks it against the trainer flag NAME.
    pub fn parse(text: &str) -> Result<Param, ParamError> {
        let err = |column: usize, message: String| ParamError {
            param: text.to_owned(),
            column,
            message,
        };
        let Some((flag, expr)) = text.split_once('=') else {
            return Err(err(
                text.chars().count() + 1,
                "expected NAME=DISTRIBUTION(…), e.g. lr=loguniform(1e-4,1e-1)".into(),
            ));
        };
        let flag = flag.trim().trim_start_matches("--");
        let Some(&(_, kind)) = FLAGS.iter().find(|(f, _)| *f == flag) else {
            let names: Vec<&str> = FLAGS.iter().map(|(f, _)| *f).collect();
            return Err(err(
                1,
                format!(
                    "`{flag}` is not a trainer flag a sweep can vary (one of {})",
                    names.join(", ")
                ),
            ));
        };
        let base = text.chars().count() - expr.chars().count(); // characters before EXPR
        let (name, items) = split_call(expr).map_err(|(c, m)| err(base + c, m))?;
        let number = |(col, s): &(usize, String)| -> Result<f64, ParamError> {
            s.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| err(base + col, format!("`{s}` is not a number")))
        };
        let arity = |n: usize| -> Result<Vec<f64>, ParamError> {
            if items.len() != n {
                return Err(err(
                    base + 1,
                    format!("{name} takes {n} argument(s), not {}", items.len()),
                ));
            }
            items.iter().map(number).collect()
        };
        let end = base + expr.chars().count();
        let d = match name.as_str() {
            "choice" => {
                if items.is_empty() {
                    return Err(err(end, "choice needs at least one value".into()));
                }
                let mut values = Vec::new();
                for (col, s) in &items {
                    values.push(match s.parse::<i64>() {
                        Ok(i) => json!(i),
                        Err(_) => match s.parse::<f64>() {
                            Ok(f) if f.is_finite() => json!(f),
                            _ if s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) => {
                                json!(s)
                            }
                            _ => {
                                return Err(err(
                                    base + col,
                                    format!("`{s}` is neither a number nor a plain word"),
                                ))
                            }
                        },
                    });
                }
                Distribution::Choice(values)
            }
            "randint" => {
                let v = arity(1)?;
                if v[0] < 1.0 || v[0].fract() != 0.0 {
                    return Err(err(base + items[0].0, "randint's upper bound must be a whole number ≥ 1".into()));
                }
                Distribution::Randint(v[0] as i64)
            }
            "uniform" | "loguniform" | "normal" | "lognormal" => {
                let v = arity(2)?;
                match name.as_str() {
                    "uniform" => Distribution::Uniform(v[0], v[1]),
                    "loguniform" => Distribution::LogUniform(v[0], v[1]),
                    "normal" => Distribution::Normal(v[0], v[1]),
                    _ => Distribution::LogNormal(v[0], v[1]),
                }
            }
            "quniform" | "qloguniform" | "qnormal" | "qlognormal" => {
                let v = arity(3)?;
                if v[2] <= 0.0 {
                    return Err(err(base + items[2].0, "q must be above 0".into()));
                }
                match name.as_str() {
                    "quniform" => Distribution::QUniform(v[0], v[1], v[2]),
                    "qloguniform" => Distribution::QLogUniform(v[0], v[1], v[2]),
                    "qnormal" => Distribution::QNormal(v[0], v[1], v[2]),
                    _ => Distribution::QLogNormal(v[0], v[1], v[2]),
                }
            }
            other => {
                return Err(err(
                    base + 1,
                    format!("`{other}` is not a distribution (choice, randint, uniform, loguniform, quniform, qloguniform, normal, lognormal, qnormal, qlognormal)"),
                ))
            }
        };
        check_bounds(&d, kind, flag).map_err(|m| err(base + 1, m))?;
        Ok(Param {
            flag: flag.to_owned(),
            distribution: d,
        })
    }
}

/// `name(a, b, …)` → the name and each argument with its 1-based column within `expr`.
#[allow(clippy::type_complexity)]
fn split_call(expr: &str) -> Result<(String, Vec<(usize, String)>), (usize, String)> {
    let chars: Vec<char> = expr.chars().collect();
    let open = chars.iter().position(|&c| c == '(').ok_or((
        chars.len() + 1,
        "expected `(` after the distribution's name".to_owned(),
    ))?;
    let name: String = chars[..open]
        .iter()
        .collect::<String>()
        .trim()
        .to_ascii_lowercase();
    if name.is_empty() {
        return Err((1, "expected a distribution's name, e.g. choice(…)".into()));
    }
    let close = match chars.iter().rposition(|&c| c == ')') {
        Some(c) if c > open => c,
        _ => return Err((chars.len() + 1, "missing `)`".into())),
    };
    if close + 1 != chars.len() {
        return Err((close + 2, "unexpected text after `)`".into()));
    }
    let mut items = Vec::new();
    if chars[open + 1..close].iter().all(|c| c.is_whitespace()) {
        return Ok((name, items));
    }
    let mut start = open + 1;
    for i in open + 1..=close {
        if i == close || chars[i] == ',' {
            let raw: String = chars[start..i].iter().collect();
            let lead = raw.len() - raw.trim_start().len();
            let item = raw.trim().to_owned();
            if item.is_empty() {
                return Err((start + 1, "expected a value".into()));
            }
            items.push((start + 1 + lead, item));
            start = i + 1;
        }
    }
    Ok((name, items))
}

/// Refuses what the trainer flag would refuse, or a range that is empty.
fn check_bounds(d: &Distribution, kind: FlagKind, flag: &str) -> Result<(), String> {
    let ordered = |a: f64, b: f64| {
        if a < b {
            Ok(())
        } else {
            Err(format!(
                "the lower bound {a} must be below the upper bound {b}"
            ))
        }
    };
    match d {
        Distribution::Uniform(a, b) | Distribution::QUniform(a, b, _) => ordered(*a, *b)?,
        Distribution::LogUniform(a, b) | Distribution::QLogUniform(a, b, _) => {
            if *a <= 0.0 || *b <= 0.0 {
                return Err(format!(
                    "{}'s bounds are the values' own range and must be above 0 (envbuild sends their logs; Azure's log-space bounds ({a}, {b}) are {}({:e},{:e}) here)",
                    d.name(),
                    d.name(),
                    a.exp(),
                    b.exp()
                ));
            }
            ordered(*a, *b)?
        }
        Distribution::Normal(_, s)
        | Distribution::LogNormal(_, s)
        | Distribution::QNormal(_, s, _)
        | Distribution::QLogNormal(_, s, _) => {
            if *s <= 0.0 {
                return Err(format!("sigma {s} must be above 0"));
            }
        }
        Distribution::Choice(_) | Distribution::Randint(_) => {}
    }
    match kind {
        FlagKind::Whole(min) => match d {
            Distribution::Choice(v) => {
                for x in v {
                    if x.as_i64().is_none_or(|i| i < min) {
                        return Err(format!(
                            "--{flag} takes whole numbers ≥ {min}; {x} is not one"
                        ));
                    }
                }
            }
            Distribution::Randint(_) if min == 0 => {}
            _ => {
                return Err(format!(
                    "--{flag} takes whole numbers ≥ {min}; {} gives {}: use choice(…){}",
                    d.name(),
                    if matches!(d, Distribution::Randint(_)) {
                        "0"
                    } else {
                        "fractions"
                    },
                    if min == 0 { " or randint(…)" } else { "" }
                ))
            }
        },
        FlagKind::Real(lo, hi) => {
            let inside = |x: f64| x > lo && x < hi;
            let ok = match d {
                Distribution::Choice(v) => v.iter().all(|x| x.as_f64().is_some_and(inside)),
                Distribution::Uniform(a, b)
                | Distribution::LogUniform(a, b)
                | Distribution::QUniform(a, b, _)
                | Distribution::QLogUniform(a, b, _) => inside(*a) && inside(*b),
                Distribution::LogNormal(..) | Distribution::QLogNormal(..) => true,
                Distribution::Randint(_) | Distribution::Normal(..) | Distribution::QNormal(..) => {
                    false
                }
            };
            if !ok {
                return Err(format!(
                    "--{flag} takes numbers between {lo} and {hi} (exclusive); {} can give others",
                    d.name()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_become_the_sdk_rest_form() {
        let p = Param::parse("batch-size=choice(64, 128,256)").unwrap();
        assert_eq!(p.key(), "batch_size");
        assert_eq!(p.distribution.rest(), json!(["choice", [[64, 128, 256]]]));
        assert_eq!(
            p.distribution.yaml(),
            json!({"type": "choice", "values": [64, 128, 256]})
        );
        assert_eq!(p.distribution.grid_size(), Some(3));
        let lr = Param::parse("lr=loguniform(1e-4,1e-1)").unwrap();
        let r = lr.distribution.rest();
        assert_eq!(r[0], "loguniform");
        // Log-space bounds, as Azure ML's loguniform takes them.
        assert!(
            (r[1][0].as_f64().unwrap() - 1e-4f64.ln()).abs() < 1e-12,
            "{r}"
        );
        assert!(
            (r[1][1].as_f64().unwrap() - 0.1f64.ln()).abs() < 1e-12,
            "{r}"
        );
        assert_eq!(lr.distribution.grid_size(), None);
        let y = lr.distribution.yaml();
        assert_eq!(y["type"], "loguniform");
        assert_eq!(y["min_value"], r[1][0]);
        let u = Param::parse("lr=quniform(0.01,0.5,0.01)").unwrap();
        assert_eq!(
            u.distribution.rest(),
            json!(["quniform", [0.01, 0.5, 0.01]])
        );
        assert_eq!(
            u.distribution.yaml(),
            json!({"type": "quniform", "min_value": 0.01, "max_value": 0.5, "q": 0.01})
        );
        assert_eq!(
            Param::parse("seed=randint(1000)")
                .unwrap()
                .distribution
                .rest(),
            json!(["randint", [1000]])
        );
        let n = Param::parse("lr=lognormal(-7,1)").unwrap();
        assert_eq!(n.distribution.rest(), json!(["lognormal", [-7.0, 1.0]]));
        assert_eq!(
            n.distribution.yaml(),
            json!({"type": "lognormal", "mu": -7.0, "sigma": 1.0})
        );
    }

    #[test]
    fn bad_expressions_name_the_param_and_the_position() {
        let e = Param::parse("lr=loguniform(1e-4,,1e-1)").unwrap_err();
        assert_eq!(e.column, 20, "{e}");
        assert_eq!(
            e.to_string(),
            "--param lr=loguniform(1e-4,,1e-1): expected a value (at character 20)"
        );
        let e = Param::parse("lr=uniform(0.1,abc)").unwrap_err();
        assert_eq!(
            (e.column, e.message.as_str()),
            (16, "`abc` is not a number")
        );
        let e = Param::parse("lr=loguniform(1e-4,1e-1").unwrap_err();
        assert!(e.message.contains("missing `)`"), "{e}");
        let e = Param::parse("lr=logunifrom(1e-4,1e-1)").unwrap_err();
        assert!(
            e.message.contains("`logunifrom` is not a distribution"),
            "{e}"
        );
        assert_eq!(e.column, 4);
        let e = Param::parse("lr").unwrap_err();
        assert!(e.message.contains("NAME=DISTRIBUTION"), "{e}");
        let e = Param::parse("momentum=uniform(0,1)").unwrap_err();
        assert!(
            e.message.contains("`momentum` is not a trainer flag"),
            "{e}"
        );
        let e = Param::parse("lr=uniform(0.1,0.01)").unwrap_err();
        assert!(e.message.contains("must be below"), "{e}");
        let e = Param::parse("lr=uniform(0.1,0.2)x").unwrap_err();
        assert!(e.message.contains("after `)`"), "{e}");
        let e = Param::parse("lr=quniform(0.1,0.2,0)").unwrap_err();
        assert!(e.message.contains("q must be above 0"), "{e}");
        let e = Param::parse("lr=uniform(0.1)").unwrap_err();
        assert!(e.message.contains("takes 2 argument(s), not 1"), "{e}");
    }

    #[test]
    fn values_the_trainer_would_refuse_are_refused() {
        // Azure-style log bounds would be silently wrong: refused with their meaning spelled out.
        let e = Param::parse("lr=loguniform(-9,-2)").unwrap_err();
        assert!(
            e.message.contains("above 0") && e.message.contains("1.2340980408667956e-4"),
            "{e}"
        );
        for bad in [
            "batch-size=uniform(16,256)",
            "batch-size=choice(64,0)",
            "batch-size=choice(64,12.5)",
            "batch-size=randint(256)",
            "epochs=choice(a,b)",
            "lr=normal(0.01,0.1)",
            "lr=uniform(0.001,20)",
            "lr=choice(0.1,fast)",
        ] {
            let e = Param::parse(bad).unwrap_err();
            assert!(e.message.contains("takes"), "{bad}: {e}");
        }
        Param::parse("seed=randint(100)").unwrap();
        Param::parse("--epochs=choice(1,2)").unwrap();
    }
}
