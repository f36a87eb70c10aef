//! A job's inputs and outputs as `run --input NAME=VALUE` and `--output NAME` give them, and the
//! `${{inputs.X}}` / `${{outputs.Y}}` references of its command, expanded as Azure ML expands
//! them: the same command line runs locally and as a command job.
//!
//! A command is the words after `--`, each shell-quoted except its references, which stay as
//! Azure ML spells them ([`command_line`]); Azure ML expands them on the node, `run --local` with
//! [`expand`] to the container paths below (the paths Azure ML mounts at, under
//! `/mnt/azureml`), and `/bin/sh -c` runs the result.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where the code snapshot is mounted (read-only) and the command's working directory.
pub const CODE_MOUNT: &str = "/mnt/azureml/code";
/// Inputs are mounted read-only under this directory, one per name.
pub const INPUTS_MOUNT: &str = "/mnt/azureml/inputs";
/// Outputs are mounted read-write under this directory, one per name.
pub const OUTPUTS_MOUNT: &str = "/mnt/azureml/outputs";

/// The value of an `--input NAME=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputValue {
    /// A local directory (absolute, links resolved): a `uri_folder` input.
    Folder(PathBuf),
    /// A local file (absolute, links resolved): a `uri_file` input.
    File(PathBuf),
    /// A URI the service reads: `azureml://…`, `https://…`, `wasbs://…`, `azureml:NAME:VERSION`.
    Uri(String),
    /// Anything else: a literal job input, expanded to its value.
    Literal(String),
}

/// Which side a `${{…}}` reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Inputs,
    Outputs,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Inputs => "inputs",
            Kind::Outputs => "outputs",
        })
    }
}

/// What is wrong with an input, an output or a command's references.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JobIoError {
    #[error("--input `{0}` is not NAME=VALUE")]
    NotNameValue(String),
    #[error("{flag} {name}: the name is not valid: letters, digits and _, not starting with a digit (it appears in ${{{{{kind}.{name}}}}})")]
    BadName {
        flag: &'static str,
        kind: Kind,
        name: String,
    },
    #[error("--input {name}={value}: {} does not exist", path.display())]
    Missing {
        name: String,
        value: String,
        path: PathBuf,
    },
    #[error("--input {name}={value}: {} is neither a file nor a directory", path.display())]
    NotFileOrFolder {
        name: String,
        value: String,
        path: PathBuf,
    },
    #[error("--input {name}={value}: {message}")]
    Unreadable {
        name: String,
        value: String,
        message: String,
    },
    #[error("{flag} {name} is given twice")]
    Duplicate { flag: &'static str, name: String },
    #[error("${{{{{kind}.{name}}}}} in the command: there is no {} `{name}` ({})", singular(*kind), given_list(*kind, given))]
    Unknown {
        kind: Kind,
        name: String,
        given: Vec<String>,
    },
}

fn singular(kind: Kind) -> &'static str {
    match kind {
        Kind::Inputs => "input",
        Kind::Outputs => "output",
    }
}

fn given_list(kind: Kind, given: &[String]) -> String {
    if given.is_empty() {
        return format!(
            "no {kind} given; add --{} {}",
            singular(kind),
            match kind {
                Kind::Inputs => "NAME=VALUE",
                Kind::Outputs => "NAME",
            }
        );
    }
    format!("the {kind} are: {}", given.join(", "))
}

impl crate::error::Hint for JobIoError {
    fn hint(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            JobIoError::Missing { .. } => Some(
                "a value with `/` or starting with `.` or `~` is a path; give one that exists, or a URI (azureml://…, https://…)".into(),
            ),
            JobIoError::Unknown { kind: Kind::Inputs, name, .. } => {
                Some(format!("add --input {name}=VALUE (a folder, a file, a URI or a literal)").into())
            }
            JobIoError::Unknown { kind: Kind::Outputs, name, .. } => {
                Some(format!("add --output {name}").into())
            }
            _ => None,
        }
    }
}

/// An input or output name as Azure ML takes it (azure-ai-ml's `^[a-zA-Z_]+[a-zA-Z0-9_]*$`): it
/// appears in `${{inputs.NAME}}`, so no `-`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 255
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_name(flag: &'static str, kind: Kind, name: &str) -> Result<(), JobIoError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(JobIoError::BadName {
            flag,
            kind,
            name: name.to_owned(),
        })
    }
}

/// A URI scheme the service resolves, or a data asset (`azureml:NAME:VERSION`, `azureml:NAME@latest`).
fn is_uri(value: &str) -> bool {
    if value.starts_with("azureml:") {
        return true;
    }
    value.split_once("://").is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme.len() > 1
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    })
}

/// Looks like a path: has a `/`, or starts with `.` or `~`.
fn looks_like_path(value: &str) -> bool {
    value.contains('/') || value.starts_with('.') || value.starts_with('~')
}

/// `NAME=VALUE` of `--input`: a URI is a [`InputValue::Uri`]; an existing path a
/// [`InputValue::Folder`] or [`InputValue::File`] (absolute, `~/` is the home directory); a value
/// that looks like a path (a `/`, a leading `.` or `~`) but is not there is an error naming it;
/// anything else is a [`InputValue::Literal`].
pub fn parse_input(arg: &str) -> Result<(String, InputValue), JobIoError> {
    let Some((name, value)) = arg.split_once('=').filter(|(n, _)| !n.is_empty()) else {
        return Err(JobIoError::NotNameValue(arg.to_owned()));
    };
    check_name("--input", Kind::Inputs, name)?;
    let owned = |v: InputValue| Ok((name.to_owned(), v));
    if value.is_empty() {
        return Err(JobIoError::NotNameValue(arg.to_owned()));
    }
    if is_uri(value) {
        return owned(InputValue::Uri(value.to_owned()));
    }
    let path = match value.strip_prefix("~/") {
        Some(rest) => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(rest),
            None => PathBuf::from(value),
        },
        None => PathBuf::from(value),
    };
    let err = |e: std::io::Error| JobIoError::Unreadable {
        name: name.to_owned(),
        value: value.to_owned(),
        message: e.to_string(),
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => owned(InputValue::Folder(path.canonicalize().map_err(err)?)),
        // The file keeps its own name (a link's, not its target's): it is mounted by that name.
        Ok(m) if m.is_file() => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let name_of = path.file_name().unwrap_or_default();
            owned(InputValue::File(
                parent.canonicalize().map_err(err)?.join(name_of),
            ))
        }
        Ok(_) => Err(JobIoError::NotFileOrFolder {
            name: name.to_owned(),
            value: value.to_owned(),
            path,
        }),
        Err(_) if !looks_like_path(value) => owned(InputValue::Literal(value.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(JobIoError::Missing {
            name: name.to_owned(),
            value: value.to_owned(),
            path,
        }),
        Err(e) => Err(err(e)),
    }
}

/// The name of an `--output NAME`, checked.
pub fn parse_output(name: &str) -> Result<String, JobIoError> {
    check_name("--output", Kind::Outputs, name)?;
    Ok(name.to_owned())
}

/// The inputs by name; a name given twice is an error.
pub fn inputs_by_name(
    inputs: &[(String, InputValue)],
) -> Result<BTreeMap<String, InputValue>, JobIoError> {
    let mut map = BTreeMap::new();
    for (name, value) in inputs {
        if map.insert(name.clone(), value.clone()).is_some() {
            return Err(JobIoError::Duplicate {
                flag: "--input",
                name: name.clone(),
            });
        }
    }
    Ok(map)
}

/// The outputs, each once; a name given twice is an error.
pub fn outputs_checked(outputs: &[String]) -> Result<Vec<String>, JobIoError> {
    let mut seen = std::collections::BTreeSet::new();
    for name in outputs {
        check_name("--output", Kind::Outputs, name)?;
        if !seen.insert(name) {
            return Err(JobIoError::Duplicate {
                flag: "--output",
                name: name.clone(),
            });
        }
    }
    Ok(outputs.to_vec())
}

/// Where input `name` is in the container: its folder's mount, or for a file the file inside
/// its mount (`/mnt/azureml/inputs/NAME/<file name>`, as Azure ML mounts a `uri_file`); `None`
/// for a literal or a URI, which have no local mount.
pub fn input_path(name: &str, value: &InputValue) -> Option<String> {
    match value {
        InputValue::Folder(_) => Some(format!("{INPUTS_MOUNT}/{name}")),
        InputValue::File(p) => Some(format!(
            "{INPUTS_MOUNT}/{name}/{}",
            p.file_name()
                .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned())
        )),
        InputValue::Uri(_) | InputValue::Literal(_) => None,
    }
}

/// Where output `name` is in the container.
pub fn output_path(name: &str) -> String {
    format!("{OUTPUTS_MOUNT}/{name}")
}

/// A `${{…}}` at the start of `s`: its kind, its name and its length in `s`. Whitespace around
/// the inside is allowed (`${{ inputs.data }}`), as Azure ML allows it.
fn reference_at(s: &str) -> Option<(Kind, &str, usize)> {
    let inner_start = s.strip_prefix("${{")?;
    let end = inner_start.find("}}")?;
    let inner = inner_start[..end].trim();
    let (kind, name) = inner.split_once('.')?;
    let kind = match kind {
        "inputs" => Kind::Inputs,
        "outputs" => Kind::Outputs,
        _ => return None,
    };
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then_some((kind, name, 3 + end + 2))
}

/// Pieces of `s`: text, and references.
enum Piece<'a> {
    Text(&'a str),
    Ref(Kind, &'a str),
}

fn pieces(s: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let (mut i, mut text_start) = (0, 0);
    while let Some(off) = s[i..].find("${{") {
        let at = i + off;
        match reference_at(&s[at..]) {
            Some((kind, name, len)) => {
                if text_start < at {
                    out.push(Piece::Text(&s[text_start..at]));
                }
                out.push(Piece::Ref(kind, name));
                i = at + len;
                text_start = i;
            }
            None => i = at + 3,
        }
    }
    if text_start < s.len() {
        out.push(Piece::Text(&s[text_start..]));
    }
    out
}

/// The `${{inputs.X}}` and `${{outputs.Y}}` references of `command`, in order (repeats kept).
pub fn references(command: &str) -> Vec<(Kind, String)> {
    pieces(command)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(k, n) => Some((k, n.to_owned())),
            Piece::Text(_) => None,
        })
        .collect()
}

/// `command` with each reference replaced by its value as it is, the way Azure ML substitutes
/// them (textually, unquoted: a literal `a b` becomes two words there, so here too — the same
/// command line gives the same argv in both places): `inputs`
/// and `outputs` map names to what they expand to (container paths, a literal's value). A
/// reference to a name in neither map is an error naming it and those given; text outside
/// references is left as it is.
pub fn expand(
    command: &str,
    inputs: &BTreeMap<String, String>,
    outputs: &BTreeMap<String, String>,
) -> Result<String, JobIoError> {
    let mut out = String::with_capacity(command.len());
    for p in pieces(command) {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(kind, name) => {
                let map = match kind {
                    Kind::Inputs => inputs,
                    Kind::Outputs => outputs,
                };
                match map.get(name) {
                    Some(v) => out.push_str(v),
                    None => {
                        return Err(JobIoError::Unknown {
                            kind,
                            name: name.to_owned(),
                            given: map.keys().cloned().collect(),
                        })
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The command line of `words` (what follows `--`): each word shell-quoted where it needs it,
/// except its `${{inputs.X}}` / `${{outputs.Y}}` references, which stay outside the quotes in
/// their plain spelling for [`expand`] or Azure ML to replace. `python train.py --lr
/// ${{inputs.lr}}` stays as it is; a word `a b` becomes `'a b'`; `--data=${{inputs.d}}` stays
/// one word.
pub fn command_line(words: &[String]) -> String {
    let mut line = String::new();
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        if word.is_empty() {
            line.push_str("''");
        }
        for p in pieces(word) {
            match p {
                Piece::Text(t) => line.push_str(&shell_quote(t)),
                Piece::Ref(kind, name) => line.push_str(&format!("${{{{{kind}.{name}}}}}")),
            }
        }
    }
    line
}

/// Quotes one word for `/bin/sh` when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn input_values_are_told_apart() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("labels.csv");
        std::fs::write(&file, "x").unwrap();
        let real = |p: &Path| p.canonicalize().unwrap();
        let arg = |n: &str, p: &Path| format!("{n}={}", p.display());
        assert_eq!(
            parse_input(&arg("data", &dir)),
            Ok(("data".into(), InputValue::Folder(real(&dir))))
        );
        assert_eq!(
            parse_input(&arg("labels", &file)),
            Ok(("labels".into(), InputValue::File(real(&file))))
        );
        // A linked file keeps its own name: it is mounted by that name.
        let link = t.path().join("link.csv");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(
            parse_input(&arg("l", &link)),
            Ok((
                "l".into(),
                InputValue::File(real(t.path()).join("link.csv"))
            ))
        );
        for uri in [
            "azureml://datastores/workspaceblobstore/paths/mnist/",
            "https://acct.blob.core.windows.net/c/x.csv",
            "wasbs://c@acct.blob.core.windows.net/x",
            "azureml:mnist:3",
        ] {
            assert_eq!(
                parse_input(&format!("d={uri}")),
                Ok(("d".into(), InputValue::Uri(uri.into())))
            );
        }
        for lit in ["0.01", "1e-3", "-5", "adam", "a=b", "hello world"] {
            assert_eq!(
                parse_input(&format!("x={lit}")),
                Ok(("x".into(), InputValue::Literal(lit.into()))),
                "{lit}"
            );
        }
    }

    #[test]
    fn a_path_that_is_not_there_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let gone = t.path().join("no-such-data");
        let e = parse_input(&format!("data={}", gone.display())).unwrap_err();
        assert_eq!(
            e,
            JobIoError::Missing {
                name: "data".into(),
                value: gone.display().to_string(),
                path: gone.clone()
            }
        );
        assert!(e.to_string().contains("no-such-data") && e.to_string().contains("does not exist"));
        for v in [
            "./nope",
            "nope/",
            "~/surely-not-here-envbuild",
            ".hidden-nope",
        ] {
            let e = parse_input(&format!("d={v}")).unwrap_err();
            assert!(matches!(e, JobIoError::Missing { .. }), "{v}: {e:?}");
        }
        let e = parse_input("/dev/null").unwrap_err();
        assert_eq!(e, JobIoError::NotNameValue("/dev/null".into()));
        assert!(e.to_string().contains("is not NAME=VALUE"));
        assert_eq!(
            parse_input("d="),
            Err(JobIoError::NotNameValue("d=".into()))
        );
        let e = parse_input("d=/dev/null").unwrap_err();
        assert!(matches!(e, JobIoError::NotFileOrFolder { .. }), "{e:?}");
    }

    #[test]
    fn names_follow_azure_mls_rule() {
        for ok in ["data", "train_data", "_x", "A1", &"x".repeat(255)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "train-data",
            "1data",
            "da.ta",
            "d a",
            "é",
            &"x".repeat(256),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        let e = parse_input("train-data=0.1").unwrap_err();
        assert!(
            e.to_string().contains("train-data")
                && e.to_string().contains("${{inputs.train-data}}"),
            "{e}"
        );
        let e = parse_output("my-model").unwrap_err().to_string();
        assert!(
            e.starts_with("--output my-model") && e.contains("${{outputs.my-model}}"),
            "{e}"
        );
        assert_eq!(parse_output("model").unwrap(), "model");
        let e = outputs_checked(&["a".into(), "b".into(), "a".into()]).unwrap_err();
        assert_eq!(e.to_string(), "--output a is given twice");
        let e = inputs_by_name(&[
            ("lr".into(), InputValue::Literal("1".into())),
            ("lr".into(), InputValue::Literal("2".into())),
        ])
        .unwrap_err();
        assert_eq!(e.to_string(), "--input lr is given twice");
    }

    #[test]
    fn references_are_found_with_or_without_spaces() {
        let c = "python train.py --data ${{inputs.data}} --lr=${{ inputs.lr }} --out ${{outputs.model}} ${{inputs.data}}";
        assert_eq!(
            references(c),
            vec![
                (Kind::Inputs, "data".into()),
                (Kind::Inputs, "lr".into()),
                (Kind::Outputs, "model".into()),
                (Kind::Inputs, "data".into()),
            ]
        );
        // Not references: other namespaces, bad names, unclosed, a plain shell variable.
        for not in [
            "${{search_space.lr}}",
            "${{inputs.}}",
            "${{inputs.a-b}}",
            "${{inputs.x",
            "${x}",
            "$inputs.x",
        ] {
            assert!(references(not).is_empty(), "{not}");
        }
        assert_eq!(
            references("${{${{inputs.a}}"),
            vec![(Kind::Inputs, "a".into())]
        );
    }

    #[test]
    fn expansion_replaces_references_and_names_the_unknown() {
        let inputs = map(&[("data", "/mnt/azureml/inputs/data"), ("msg", "hello world")]);
        let outputs = map(&[("model", "/mnt/azureml/outputs/model")]);
        let got = expand(
            "python t.py --data ${{inputs.data}} --msg ${{ inputs.msg }} -o=${{outputs.model}}",
            &inputs,
            &outputs,
        )
        .unwrap();
        assert_eq!(
            got,
            "python t.py --data /mnt/azureml/inputs/data --msg hello world -o=/mnt/azureml/outputs/model"
        );
        let e = expand("x ${{inputs.lr}}", &inputs, &outputs).unwrap_err();
        assert_eq!(
            e.to_string(),
            "${{inputs.lr}} in the command: there is no input `lr` (the inputs are: data, msg)"
        );
        assert!(crate::error::Hint::hint(&e)
            .unwrap()
            .contains("--input lr="));
        let e = expand("x ${{outputs.ckpt}}", &inputs, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "${{outputs.ckpt}} in the command: there is no output `ckpt` (no outputs given; add --output NAME)"
        );
        // An input name is not an output name.
        assert!(expand("${{outputs.data}}", &inputs, &outputs).is_err());
    }

    #[test]
    fn command_lines_quote_words_but_not_references() {
        let words: Vec<String> = [
            "python",
            "train.py",
            "--data",
            "${{inputs.data}}",
            "--lr=${{ inputs.lr }}",
            "--note",
            "it's $HOME",
            "",
            "--x=${{inputs.x}}/sub dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let line = command_line(&words);
        assert_eq!(
            line,
            r#"python train.py --data ${{inputs.data}} --lr=${{inputs.lr}} --note 'it'\''s $HOME' '' --x=${{inputs.x}}'/sub dir'"#
        );
        let inputs = map(&[("data", "/d"), ("lr", "0.1"), ("x", "/x")]);
        let expanded = expand(&line, &inputs, &BTreeMap::new()).unwrap();
        // What /bin/sh makes of it: the words as given, references replaced.
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf '[%s]' {expanded}"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "[python][train.py][--data][/d][--lr=0.1][--note][it's $HOME][][--x=/x/sub dir]"
        );
    }

    #[test]
    fn container_paths_follow_azure_mls_layout() {
        assert_eq!(
            input_path("data", &InputValue::Folder("/srv/d".into())).as_deref(),
            Some("/mnt/azureml/inputs/data")
        );
        assert_eq!(
            input_path("cfg", &InputValue::File("/srv/c/conf.yaml".into())).as_deref(),
            Some("/mnt/azureml/inputs/cfg/conf.yaml")
        );
        assert_eq!(input_path("lr", &InputValue::Literal("1".into())), None);
        assert_eq!(output_path("model"), "/mnt/azureml/outputs/model");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("a-b_c./=:,+@%9"), "a-b_c./=:,+@%9");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
