//! Your own code and data on Azure ML, end to end against the stand-ins: the ARM stand-in's
//! datastores and code versions answering as the REST definitions say, `run --azure --code DIR
//! --input …` uploading through the Blob Storage stand-in (nothing twice), the job running in the
//! uploaded code with the uploaded data, `job download` bringing its outputs back, and every bad
//! input refused with nothing registered; examples/mnist.py gives the same model bytes locally
//! and on Azure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use envbuild_e2e::azure::AzureStandIn;
use envbuild_e2e::blob::{Access, BlobServer};
use envbuild_e2e::entra::Entra;
use envbuild_e2e::registry::Registry;
use envbuild_e2e::{last_line, root};

use super::azure::{arm_raw, arm_token, az_cmd, go, ws_id, Cred};

#[test]
fn datastores_and_code_versions_answer_as_the_service() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    let tok = arm_token(&entra);
    let ws = ws_id();
    let v = |p: &str| format!("{ws}/{p}?api-version=2025-12-01");
    let root = tempfile::tempdir().unwrap();
    arm.use_blob_root(root.path());
    let (account, container) = arm.blob_location("workspaceblobstore").unwrap();

    // The default datastore, filtered by isDefault; the artifact store is not the default.
    let (s, _, b) = arm_raw(
        &arm,
        "GET",
        &format!("{ws}/datastores?api-version=2025-12-01&isDefault=true"),
        Some(&tok),
        None,
    );
    assert_eq!(s, 200, "{b}");
    let list = b["value"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{b}");
    let d = &list[0];
    assert_eq!(d["name"], "workspaceblobstore");
    assert_eq!(d["id"], format!("{ws}/datastores/workspaceblobstore"));
    let p = &d["properties"];
    assert_eq!(
        (
            p["datastoreType"].as_str(),
            p["isDefault"].as_bool(),
            p["accountName"].as_str(),
            p["containerName"].as_str(),
            p["endpoint"].as_str(),
            p["protocol"].as_str(),
        ),
        (
            Some("AzureBlob"),
            Some(true),
            Some(account.as_str()),
            Some(container.as_str()),
            Some("core.windows.net"),
            Some("https")
        )
    );
    let (s, _, b) = arm_raw(&arm, "GET", &v("datastores"), Some(&tok), None);
    assert_eq!(s, 200);
    let names: Vec<&str> = b["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["workspaceartifactstore", "workspaceblobstore"]);
    // A key-based datastore: its secret is never read back, only its kind.
    arm.blob_datastore("keyed", "stkeyonly01", "data", "AccountKey", false);
    let (s, _, b) = arm_raw(&arm, "GET", &v("datastores/keyed"), Some(&tok), None);
    assert_eq!(s, 200);
    assert_eq!(
        b["properties"]["credentials"],
        json!({"credentialsType": "AccountKey", "secrets": {"secretsType": "AccountKey"}})
    );
    let (s, _, b) = arm_raw(&arm, "GET", &v("datastores/nope"), Some(&tok), None);
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("UserError")));

    // A code version: its codeUri must be a folder with files in one of the workspace's Blob
    // datastores.
    let folder = "LocalUpload/0123456789abcdef0123456789abcdef/src";
    let uri = format!("https://{account}.blob.core.windows.net/{container}/{folder}");
    let code = |uri: &str| json!({"properties": {"codeUri": uri, "description": "d", "tags": {}}});
    let put = |path: &str, body: Value| arm_raw(&arm, "PUT", &v(path), Some(&tok), Some(body));
    let version = "codes/src/versions/0123456789abcdef0123456789abcdef";
    let (s, _, b) = put(version, code(&uri));
    assert_eq!(s, 400, "nothing uploaded yet: {b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No files found"),
        "{b}"
    );
    let dir = root.path().join(&account).join(&container).join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.py"), "print('hi')\n").unwrap();
    for elsewhere in [
        format!("https://other.blob.core.windows.net/{container}/{folder}"),
        format!("https://{account}.blob.core.windows.net/nope/{folder}"),
        format!("http://{account}.blob.core.windows.net/{container}/{folder}"),
        format!("https://{account}.blob.core.windows.net/{container}/../x"),
    ] {
        let (s, _, b) = put(version, code(&elsewhere));
        assert_eq!(s, 400, "{elsewhere}: {b}");
    }
    assert_eq!(arm.code_versions(), Vec::<String>::new());
    let (s, _, b) = put(version, code(&uri));
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["properties"]["codeUri"], uri.as_str());
    assert!(b["properties"].get("stage").is_none(), "{b}");
    // The same again: 200; description and tags may change; another codeUri may not.
    let (s, _, _) = put(version, code(&uri));
    assert_eq!(s, 200);
    let mut retag = code(&uri);
    retag["properties"]["tags"] = json!({"a": "b"});
    assert_eq!(put(version, retag).0, 200);
    let other = format!("https://{account}.blob.core.windows.net/{container}/LocalUpload/x/src");
    std::fs::create_dir_all(
        root.path()
            .join(&account)
            .join(&container)
            .join("LocalUpload/x/src"),
    )
    .unwrap();
    std::fs::write(
        root.path()
            .join(&account)
            .join(&container)
            .join("LocalUpload/x/src/a"),
        "a",
    )
    .unwrap();
    let (s, _, b) = put(version, code(&other));
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be changed"),
        "{b}"
    );
    // A body the definitions refuse: 400 naming the field.
    let (s, _, b) = put(
        "codes/src/versions/2",
        json!({"properties": {"codeUri": uri, "codeHash": "x"}}),
    );
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CodeVersionResource"),
        "{b}"
    );
    let (s, _, b) = arm_raw(&arm, "GET", &v(version), Some(&tok), None);
    assert_eq!((s, b["properties"]["tags"]["a"].as_str()), (200, Some("b")));
    let (s, _, b) = arm_raw(&arm, "GET", &v("codes/src"), Some(&tok), None);
    assert_eq!(s, 200);
    assert_eq!(
        b["properties"]["latestVersion"],
        "0123456789abcdef0123456789abcdef"
    );
    assert_eq!(
        arm.code_versions(),
        ["src:0123456789abcdef0123456789abcdef"]
    );

    // A job's codeId must be a code version of the workspace; literal and uri_file inputs.
    put(
        "environments/env/versions/1",
        json!({"properties": {"image": "r.io/a@sha256:1111111111111111111111111111111111111111111111111111111111111111"}}),
    );
    let job = |code_id: &str, inputs: Value| {
        json!({"properties": {"jobType": "Command", "command": "python train.py ${{inputs.lr}}",
            "environmentId": format!("{ws}/environments/env/versions/1"),
            "codeId": code_id, "inputs": inputs}})
    };
    let lr = json!({"lr": {"jobInputType": "literal", "value": "0.01"}});
    let (s, _, b) = put(
        "jobs/code-missing",
        job(&format!("{ws}/codes/src/versions/9"), lr.clone()),
    );
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("src:9"),
        "{b}"
    );
    let (s, _, b) = put(
        "jobs/bad-literal",
        job(
            &format!("{ws}/{version}"),
            json!({"lr": {"jobInputType": "literal", "value": "-"}}),
        ),
    );
    assert_eq!(s, 400, "LiteralJobInput.value's pattern: {b}");
    let (s, _, b) = put(
        "jobs/no-file",
        job(
            &format!("{ws}/{version}"),
            json!({"lr": {"jobInputType": "literal", "value": "0.01"},
                   "f": {"jobInputType": "uri_file", "uri": "azureml://datastores/nope/paths/a.csv"}}),
        ),
    );
    assert_eq!(s, 400, "{b}");
    assert!(arm.spec_violations().is_empty());
}

/// The stand-ins a code run needs: Entra, ARM (its datastores in the Blob stand-in's files), the
/// Blob stand-in with the workspace's containers, a registry with the mnist-cpu image deployed.
struct World {
    entra: Entra,
    arm: AzureStandIn,
    blob: BlobServer,
    _registry: Registry,
    t: tempfile::TempDir,
    env_id: String,
    /// The environment deployed and run, and the build cache both use.
    env_file: PathBuf,
    cache: PathBuf,
    /// ENVBUILD_PYTHON_BASE for the Python environments.
    python_base: Option<PathBuf>,
}

impl World {
    fn start() -> World {
        World::deploying(root().join("environments/mnist-cpu.toml"), None, None)
    }

    /// The stand-ins with `env_file` deployed (built with `cache`, or a fresh one, and
    /// `python_base` as ENVBUILD_PYTHON_BASE) to the registry as envbuild/NAME:latest.
    fn deploying(env_file: PathBuf, cache: Option<PathBuf>, python_base: Option<PathBuf>) -> World {
        let entra = Entra::start();
        let arm = AzureStandIn::with_entra(&entra);
        let t = tempfile::tempdir().unwrap();
        let blob = BlobServer::with_entra(&entra, t.path().join("storage"));
        arm.use_blob_root(blob.root());
        for ds in ["workspaceblobstore", "workspaceartifactstore"] {
            let (account, container) = arm.blob_location(ds).unwrap();
            blob.create_container(&account, &container);
        }
        let registry = Registry::start(None);
        let cache = cache.unwrap_or_else(|| t.path().join("cache"));
        let mut w = World {
            entra,
            arm,
            blob,
            _registry: registry,
            t,
            env_id: String::new(),
            env_file,
            cache,
            python_base,
        };
        let name = w.env_file.file_stem().unwrap().to_string_lossy();
        let dest = format!("{}/envbuild/{name}:latest", w._registry.addr);
        let cache = w.cache();
        let (code, out, err) = w.cmd(&[
            "deploy",
            w.env_file.to_str().unwrap(),
            "--dest",
            &dest,
            "--cache",
            &cache,
        ]);
        assert_eq!(code, 0, "{err}");
        w.env_id = last_line(&out);
        w
    }

    fn cache(&self) -> String {
        self.cache.display().to_string()
    }

    /// `envbuild ARGS` with a client secret, the Blob stand-in as the storage endpoint.
    fn cmd(&self, args: &[&str]) -> (i32, String, String) {
        let secret = self.entra.client_secret.clone();
        let mut c = az_cmd(&self.entra, &self.arm, Cred::Secret(&secret), args);
        c.env("ENVBUILD_STORAGE_ENDPOINT", self.blob.endpoint_template());
        if let Some(base) = &self.python_base {
            c.env("ENVBUILD_PYTHON_BASE", base);
        }
        go(&self.entra, &self.arm, c)
    }

    /// `run --azure` of the deployed environment with `args` before `--` and `command` after.
    fn run(&self, job: &str, args: &[&str], command: &[&str]) -> (i32, String, String) {
        let cache = self.cache();
        let mut a = vec![
            "run",
            "--azure",
            self.env_file.to_str().unwrap(),
            "--cache",
            &cache,
            "--compute",
            "cpu-cluster",
            "--job-name",
            job,
        ];
        a.extend_from_slice(args);
        a.push("--");
        a.extend_from_slice(command);
        self.cmd(&a)
    }

    fn jobs_put(&self) -> usize {
        self.arm
            .requests()
            .iter()
            .filter(|(m, p, _)| m == "PUT" && p.contains("/jobs/"))
            .count()
    }
}

/// Every file under `dir`: relative path → bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let r = format!("{rel}{}", e.file_name().to_string_lossy());
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &format!("{r}/"), out);
            } else {
                out.insert(r, std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out);
    out
}

/// The code folder: a script that checks where it runs and what it was given (shell builtins
/// only: the image has no coreutils), writes two files of its own into its output, then runs the
/// image's trainer on its data input.
fn code_dir(at: &Path) -> PathBuf {
    let code = at.join("src");
    std::fs::create_dir_all(code.join("lib")).unwrap();
    std::fs::write(
        code.join("train.sh"),
        r#"set -eu
data=$1; lr=$2; labels=$3; out=$4
[ "$(pwd)" = /mnt/azureml/code ] || { echo "not in the code folder: $(pwd)"; exit 3; }
if ( : > ./probe ) 2>/dev/null; then echo "the code folder is writable"; exit 4; fi
[ -f lib/helper.txt ] || { echo "no lib/helper.txt"; exit 5; }
[ ! -e notes.log ] || { echo "an ignored file was uploaded"; exit 6; }
read -r first < "$labels"
echo "$first" > "$out/labels-first.txt"
echo "lr=$lr" > "$out/params.txt"
echo "training with lr $lr"
exec /opt/envbuild/bin/trainer --data "$data" --output "$out" --lr "$lr" --epochs 1 \
  --limit-train 2000 --limit-test 500 --seed 7 --threads 1 --device cpu
"#,
    )
    .unwrap();
    std::fs::write(code.join("lib/helper.txt"), "helper\n").unwrap();
    std::fs::write(code.join(".amlignore"), "*.log\n").unwrap();
    std::fs::write(code.join("notes.log"), "not uploaded\n").unwrap();
    code
}

/// The data folder: a copy of Fashion-MNIST (the four IDX files, 30 MB).
fn data_dir(at: &Path) -> PathBuf {
    let data = at.join("fashion-data");
    std::fs::create_dir_all(&data).unwrap();
    for e in std::fs::read_dir(DATASET).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), data.join(e.file_name())).unwrap();
    }
    data
}

const DATASET: &str = "/usr/share/datasets/fashion-mnist";

const COMMAND: [&str; 6] = [
    "sh",
    "train.sh",
    "${{inputs.data}}",
    "${{inputs.lr}}",
    "${{inputs.labels}}",
    "${{outputs.model}}",
];

#[test]
fn run_azure_uploads_code_and_data_once_and_job_download_brings_the_outputs_back() {
    let _engine = envbuild_e2e::engine_lock();
    let w = World::start();
    let here = w.t.path();
    let (code, data) = (code_dir(here), data_dir(here));
    let labels = here.join("labels.csv");
    std::fs::write(&labels, "0,t-shirt\n1,trouser\n").unwrap();
    let data_arg = format!("data={}", data.display());
    let labels_arg = format!("labels={}", labels.display());
    let args = [
        "--code",
        code.to_str().unwrap(),
        "--input",
        &data_arg,
        "--input",
        "lr=0.01",
        "--input",
        &labels_arg,
        "--output",
        "model",
    ];
    let (before_requests, before_bytes) = w.blob.counters();
    let (c, out, err) = w.run("code-1", &args, &COMMAND);
    assert_eq!(c, 0, "{err}");
    assert_eq!(last_line(&out), "code-1");
    let (_, sent) = w.blob.counters();
    let data_bytes: u64 = files(&data).values().map(|b| b.len() as u64).sum();
    assert!(
        sent - before_bytes >= data_bytes,
        "the data went up: {} bytes of {data_bytes}",
        sent - before_bytes
    );
    let _ = before_requests;
    // What was uploaded is where the job's inputs and code say, byte for byte.
    let job = w.arm.shared.job("code-1").unwrap();
    let p = &job["properties"];
    let (account, container) = w.arm.blob_location("workspaceblobstore").unwrap();
    let store = w.blob.container_dir(&account, &container);
    let data_uri = p["inputs"]["data"]["uri"].as_str().unwrap();
    let rel = data_uri
        .strip_prefix("azureml://datastores/workspaceblobstore/paths/")
        .unwrap();
    assert!(
        rel.starts_with("LocalUpload/") && rel.ends_with("/fashion-data/"),
        "{rel}"
    );
    assert_eq!(files(&store.join(rel)), files(&data));
    assert_eq!(p["inputs"]["data"]["jobInputType"], "uri_folder");
    assert_eq!(
        p["inputs"]["lr"],
        json!({"jobInputType": "literal", "value": "0.01"})
    );
    assert_eq!(p["inputs"]["labels"]["jobInputType"], "uri_file");
    assert!(
        p["inputs"]["labels"]["uri"]
            .as_str()
            .unwrap()
            .ends_with("/labels.csv"),
        "{job}"
    );
    assert_eq!(
        p["command"],
        "sh train.sh ${{inputs.data}} ${{inputs.lr}} ${{inputs.labels}} ${{outputs.model}}"
    );
    let code_id = p["codeId"].as_str().unwrap();
    assert!(
        code_id.starts_with(&format!("{}/codes/src/versions/", ws_id())),
        "{code_id}"
    );
    let versions = w.arm.code_versions();
    assert_eq!(versions.len(), 1, "{versions:?}");
    let (s, _, cv) = arm_raw(
        &w.arm,
        "GET",
        &format!("{code_id}?api-version=2025-12-01"),
        Some(&arm_token(&w.entra)),
        None,
    );
    assert_eq!(s, 200);
    let code_uri = cv["properties"]["codeUri"].as_str().unwrap();
    let prefix = format!("https://{account}.blob.core.windows.net/{container}/");
    let code_rel = code_uri.strip_prefix(&prefix).unwrap();
    assert!(
        code_rel.starts_with("LocalUpload/") && code_rel.ends_with("/src"),
        "{code_uri}"
    );
    let uploaded = files(&store.join(code_rel));
    assert_eq!(
        uploaded.keys().collect::<Vec<_>>(),
        [".amlignore", "lib/helper.txt", "train.sh"],
        "the snapshot, the ignored file left out"
    );
    assert!(err.contains("uploaded"), "{err}");

    // A second run of the same code and data sends nothing, and says so.
    let (_, before_bytes) = w.blob.counters();
    let (c, _, err2) = w.run("code-2", &args, &COMMAND);
    assert_eq!(c, 0, "{err2}");
    let (_, after_bytes) = w.blob.counters();
    assert_eq!(
        after_bytes, before_bytes,
        "a second run uploads 0 bytes:\n{err2}"
    );
    assert!(err2.contains("0 bytes sent"), "{err2}");
    assert_eq!(w.arm.code_versions(), versions, "the same code version");
    let j2 = w.arm.shared.job("code-2").unwrap();
    assert_eq!(j2["properties"]["codeId"], code_id);

    // job download: the output as the job wrote it, in az ml's layout.
    let to = here.join("download");
    let got = download_model(&w, "code-1", &to);
    let written = w.arm.shared.job_dir("code-1").join("outputs/model");
    assert_eq!(
        files(&got),
        files(&written),
        "what the job wrote, byte for byte"
    );
    assert_eq!(
        std::fs::read_to_string(got.join("params.txt")).unwrap(),
        "lr=0.01\n"
    );
    assert_eq!(
        std::fs::read_to_string(got.join("labels-first.txt")).unwrap(),
        "0,t-shirt\n"
    );
    // The model loads (its tensors parse) and is the job's.
    assert_eq!(envbuild_e2e::max_weight_difference(&got, &written), 0.0);
    let (c, _, err) = w.cmd(&["model", "register", "mnist-code", "--job", "code-1"]);
    assert_eq!(c, 0, "{err}");
    // Every output: the default artifacts (the log) beside the named ones.
    let all = here.join("all");
    let (c, _, err) = w.cmd(&["job", "download", "code-1", "--to", all.to_str().unwrap()]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(files(&all.join("named-outputs/model")), files(&written));
    let log = std::fs::read_to_string(all.join("artifacts/user_logs/std_log.txt")).unwrap();
    assert!(log.contains("training with lr 0.01"), "{log}");
    // Again into the same place: refused, nothing changed.
    let (c, _, err) = w.cmd(&[
        "job",
        "download",
        "code-1",
        "--output",
        "model",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("exists"), "{err}");
    assert_eq!(files(&got), files(&written));
    // An output the job lacks; a job that does not exist.
    let (c, _, err) = w.cmd(&[
        "job",
        "download",
        "code-1",
        "--output",
        "weights",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(c, 1);
    assert!(
        err.contains("no output `weights`") && err.contains("model"),
        "{err}"
    );
    let (c, _, err) = w.cmd(&["job", "download", "nope", "--to", to.to_str().unwrap()]);
    assert_eq!(c, 1);
    assert!(err.contains("job nope does not exist"), "{err}");
    assert!(w.arm.spec_violations().is_empty());
}

#[test]
fn bad_code_inputs_and_storage_refusals_register_nothing() {
    let _engine = envbuild_e2e::engine_lock();
    let w = World::start();
    let here = w.t.path();
    let (code, data) = (code_dir(here), data_dir(here));
    let data_arg = format!("data={}", data.display());
    let ok_args = |code: &str| -> Vec<String> {
        [
            "--code", code, "--input", &data_arg, "--input", "lr=0.01", "--input", "labels=x",
            "--output", "model",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |job: &str, args: &[String], command: &[&str]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        w.run(job, &a, command)
    };
    let nothing_registered = |what: &str| {
        assert_eq!(w.arm.code_versions(), Vec::<String>::new(), "{what}");
        assert_eq!(w.jobs_put(), 0, "{what}");
    };
    let (_, bytes0) = w.blob.counters();
    // A code folder that does not exist.
    let missing = here.join("no-such-code");
    let (c, _, err) = run("bad-1", &ok_args(missing.to_str().unwrap()), &COMMAND);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    nothing_registered("missing code folder");
    // An input path that does not exist.
    let mut a = ok_args(code.to_str().unwrap());
    a[3] = format!("data={}", here.join("no-such-data").display());
    let (c, _, err) = run("bad-2", &a, &COMMAND);
    assert_eq!(c, 1, "{err}");
    assert!(
        err.contains("no-such-data") && err.contains("does not exist"),
        "{err}"
    );
    nothing_registered("missing input");
    // A reference to an input that is not given.
    let (c, _, err) = run(
        "bad-3",
        &ok_args(code.to_str().unwrap()),
        &["sh", "train.sh", "${{inputs.dataset}}"],
    );
    assert_eq!(c, 1, "{err}");
    assert!(
        err.contains("inputs.dataset") && err.contains("data, labels, lr"),
        "{err}"
    );
    nothing_registered("unknown ${{inputs.X}}");
    assert_eq!(
        w.blob.counters().1,
        bytes0,
        "nothing was uploaded for bad input"
    );

    // The identity may not write blobs: 403, the role named with the account.
    let (account, _) = w.arm.blob_location("workspaceblobstore").unwrap();
    w.blob.deny(&w.entra.client_id);
    let (c, _, err) = run("bad-4", &ok_args(code.to_str().unwrap()), &COMMAND);
    assert_eq!(c, 1, "{err}");
    assert!(
        err.contains("Storage Blob Data Contributor") && err.contains(&account),
        "{err}"
    );
    nothing_registered("403 from storage");

    // A datastore registered with an account key, on storage that takes no Entra token of
    // ours: one message naming the datastore and what to do.
    let refusing = BlobServer::with_auth(
        std::sync::Arc::new(|_: &str| Access::Unknown),
        here.join("keyonly"),
    );
    w.arm
        .blob_datastore("keystore", "stkeyonly01", "data", "AccountKey", true);
    refusing.create_container("stkeyonly01", "data");
    let secret = w.entra.client_secret.clone();
    let cache = w.cache();
    let mut args = vec![
        "run".to_string(),
        "--azure".into(),
        w.env_file.display().to_string(),
        "--cache".into(),
        cache,
        "--compute".into(),
        "cpu-cluster".into(),
        "--job-name".into(),
        "bad-5".into(),
    ];
    args.extend(ok_args(code.to_str().unwrap()));
    args.push("--".into());
    args.extend(COMMAND.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = az_cmd(&w.entra, &w.arm, Cred::Secret(&secret), &a);
    c.env("ENVBUILD_STORAGE_ENDPOINT", refusing.endpoint_template());
    let (c, _, err) = go(&w.entra, &w.arm, c);
    assert_eq!(c, 1, "{err}");
    assert!(
        err.contains("datastore keystore")
            && err.contains("AccountKey")
            && err.contains("stkeyonly01")
            && err.contains("hint:")
            && err.contains("identity-based"),
        "{err}"
    );
    assert_eq!(
        err.matches("datastore keystore").count(),
        1,
        "one message: {err}"
    );
    nothing_registered("key-only storage");
    assert!(w.arm.spec_violations().is_empty());
}

/// `job download JOB --output model --to TO`: where the model came back.
fn download_model(w: &World, job: &str, to: &Path) -> PathBuf {
    let (c, out, err) = w.cmd(&[
        "job",
        "download",
        job,
        "--output",
        "model",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{err}");
    let got = to.join("named-outputs/model");
    assert_eq!(last_line(&out), got.display().to_string());
    got
}

#[test]
fn the_example_script_gives_the_same_model_locally_and_on_azure() {
    use super::python::{cache, image, model_of, python_cpu};
    let _engine = envbuild_e2e::engine_lock();
    let (layout, digest, _) = image();
    // Deployed from the cache the layout was built with: the same image, pushed (1.8 GB).
    let w = World::deploying(
        python_cpu(),
        Some(cache()),
        Some(envbuild_e2e::python_base_layout().to_path_buf()),
    );
    let version = format!("/versions/{}", &digest["sha256:".len()..][..12]);
    assert!(w.env_id.ends_with(&version), "{} is not {digest}", w.env_id);
    let here = w.t.path();
    let data = data_dir(here);
    let examples = root().join("examples");
    let data_arg = format!("data={}", data.display());
    let args = [
        "--code",
        examples.to_str().unwrap(),
        "--input",
        &data_arg,
        "--output",
        "model",
    ];
    let command = [
        &super::python::EXAMPLE[..],
        &["--seed", "3", "--threads", "1", "--device", "cpu"],
    ]
    .concat();

    // Locally: the layout on the engine.
    let local = here.join("local");
    let source = format!("oci:{}", layout.display());
    let o = envbuild_e2e::run(&mut super::run::run_local(&source, &local, &args, &command));
    assert!(
        o.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let (summary, model) = model_of(&local);
    let accuracy = summary["test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.5, "test accuracy {accuracy} after 5000 images");

    // On Azure: the code and data uploaded, the job run by the stand-in from the registry.
    let (c, out, err) = w.run("example-1", &args, &command);
    assert_eq!(c, 0, "{err}");
    assert_eq!(last_line(&out), "example-1");
    let job = w.arm.shared.job("example-1").unwrap();
    assert_eq!(job["properties"]["environmentId"], w.env_id.as_str());
    let written = w.arm.shared.job_dir("example-1").join("outputs");
    let (on_azure, azure_model) = model_of(&written);
    assert_eq!(summary["test_accuracy"], on_azure["test_accuracy"]);
    assert_eq!(on_azure["train_images"], 5000);
    assert!(
        azure_model == model,
        "the seeded example wrote different model.pt bytes locally and on Azure"
    );

    // Again, with the same code and data: nothing uploaded. (A command that trains nothing: what
    // is asserted here happens before the job starts.)
    let (_, before) = w.blob.counters();
    let (c, _, err) = w.run("example-2", &args, &["python3", "-c", "import mnist"]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(
        w.blob.counters().1,
        before,
        "a second run uploads 0 bytes:\n{err}"
    );
    assert!(err.contains("0 bytes sent"), "{err}");

    // job download: the model comes back, loads in torch, and is the local one.
    let got = download_model(&w, "example-1", &here.join("download"));
    let pt = got.join("model.pt");
    assert!(
        std::fs::read(&pt).unwrap() == model,
        "the downloaded model.pt"
    );
    let o = envbuild_e2e::run(
        std::process::Command::new(root().join(".venv/bin/python"))
            .arg("-c")
            .arg(
                "import sys, torch\n\
                 sd = torch.load(sys.argv[1], weights_only=True)\n\
                 print(len(sd), sum(t.numel() for t in sd.values()))",
            )
            .arg(&pt),
    );
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && said.split_whitespace().count() == 2,
        "torch.load of the downloaded model:\n{said}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // And it becomes a model version, from the job's output, as the tutorials end.
    let (c, out, err) = w.cmd(&["model", "register", "mnist-example", "--job", "example-1"]);
    assert_eq!(c, 0, "{err}");
    assert!(
        format!("{out}{err}").contains("mnist-example"),
        "{out}\n{err}"
    );
    assert!(w.arm.spec_violations().is_empty());
}
