//! The compute and cost guard end to end against the stand-in: `compute list`/`show` with the
//! billing and price columns (all pages), `status` (jobs not ended, computes billing now, the
//! total), instances stopped and started by following the long-running operation, the idle
//! shutdown body sent, refusals before any request, and the warnings of `run --azure`.

use envbuild_e2e::azure::AzureStandIn;
use envbuild_e2e::entra::Entra;
use serde_json::{json, Value};

use super::azure::{az_cmd, go, Cred};

/// `envbuild ARGS` against the stand-in with a client secret: (exit code, stdout, stderr).
fn cli(entra: &Entra, arm: &AzureStandIn, args: &[&str]) -> (i32, String, String) {
    let secret = entra.client_secret.clone();
    go(entra, arm, az_cmd(entra, arm, Cred::Secret(&secret), args))
}

/// The table line that starts with `name`, split on runs of two or more spaces.
fn cells(table: &str, name: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.split("  ").next() == Some(name))
        .unwrap_or_else(|| panic!("no line for {name} in\n{table}"));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

fn count(arm: &AzureStandIn, method: &str, needle: &str) -> usize {
    arm.requests()
        .iter()
        .filter(|(m, p, _)| m == method && p.contains(needle))
        .count()
}

/// Five computes (three pages of two): what bills, at which price, and "unknown" where the
/// location's list has no price.
fn workspace_with_computes(arm: &AzureStandIn) {
    arm.add_cluster(
        "gpu-cluster",
        "Standard_NC24ads_A100_v4",
        "Dedicated",
        1,
        4,
        2,
    );
    arm.set_nodes(
        "gpu-cluster",
        &[
            ("tvm-1_1-20260101t000000z", "running", Some("job-a")),
            ("tvm-1_2-20260101t000000z", "idle", None),
        ],
    );
    arm.add_cluster(
        "nd-cluster",
        "Standard_ND96amsr_A100_v4",
        "Dedicated",
        0,
        2,
        1,
    );
    arm.add_instance("ci-forgotten", "Standard_DS11_v2", "Running", None);
    arm.add_instance("ci-stopped", "Standard_DS3_v2", "Stopped", Some("PT30M"));
}

#[test]
fn compute_list_show_and_status_say_what_bills_and_at_what_price() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    workspace_with_computes(&arm);

    let (code, out, err) = cli(&entra, &arm, &["compute", "list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        cells(&out, "NAME"),
        [
            "NAME",
            "TYPE",
            "VM SIZE",
            "STATE",
            "NODES",
            "IDLE SHUTDOWN",
            "BILLS NOW",
            "GPUS",
            "PRICE/VM"
        ]
    );
    assert_eq!(
        cells(&out, "gpu-cluster"),
        [
            "gpu-cluster",
            "AmlCompute",
            "Standard_NC24ads_A100_v4",
            "Steady",
            "2/1/4",
            "scale-down 2m",
            "yes (2 VMs)",
            "1",
            "$3.67/h"
        ]
    );
    assert_eq!(
        cells(&out, "nd-cluster"),
        [
            "nd-cluster",
            "AmlCompute",
            "Standard_ND96amsr_A100_v4",
            "Steady",
            "1/0/2",
            "scale-down 2m",
            "yes",
            "8",
            "unknown"
        ]
    );
    assert_eq!(
        cells(&out, "ci-forgotten"),
        [
            "ci-forgotten",
            "ComputeInstance",
            "Standard_DS11_v2",
            "Running",
            "-",
            "none",
            "yes",
            "0",
            "$0.18/h"
        ]
    );
    assert_eq!(
        cells(&out, "ci-stopped"),
        [
            "ci-stopped",
            "ComputeInstance",
            "Standard_DS3_v2",
            "Stopped",
            "-",
            "30m",
            "no",
            "0",
            "$0.29/h"
        ]
    );
    assert_eq!(cells(&out, "cpu-cluster")[6], "no");
    // Three pages of computes, the location from the workspace, its sizes once.
    assert_eq!(count(&arm, "GET", "/computes"), 3);
    assert_eq!(count(&arm, "GET", "/locations/eastus/vmSizes"), 1);

    let (code, out, err) = cli(&entra, &arm, &["compute", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let by = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(v.as_array().unwrap().len(), 5);
    assert_eq!(
        by("gpu-cluster")["nodes"],
        json!({"current": 2, "min": 1, "max": 4})
    );
    assert_eq!(
        by("gpu-cluster")["price"],
        json!({"per_hour": 3.67, "currency": "USD"})
    );
    assert_eq!(
        (
            by("gpu-cluster")["bills"].clone(),
            by("gpu-cluster")["vms"].clone()
        ),
        (json!(true), json!(2))
    );
    assert_eq!(by("nd-cluster")["price"], Value::Null);
    assert_eq!(by("ci-stopped")["bills"], json!(false));
    assert_eq!(by("ci-stopped")["idle"], "PT30M");
    insta::assert_snapshot!("compute_list_json", envbuild_e2e::json_shape(&v));

    let (code, out, err) = cli(&entra, &arm, &["compute", "show", "gpu-cluster"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        cells(&out, "tvm-1_1-20260101t000000z"),
        ["tvm-1_1-20260101t000000z", "running", "job-a"]
    );
    assert_eq!(
        cells(&out, "tvm-1_2-20260101t000000z"),
        ["tvm-1_2-20260101t000000z", "idle", "-"]
    );
    assert!(out.contains("bills now:     yes (2 VMs)"), "{out}");
    assert_eq!(count(&arm, "POST", "/computes/gpu-cluster/listNodes"), 1);
    let (code, out, err) = cli(&entra, &arm, &["compute", "show", "gpu-cluster", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["nodes"], json!({"current": 2, "min": 1, "max": 4}));
    assert_eq!(
        v["node_states"][0],
        json!({"id": "tvm-1_1-20260101t000000z", "state": "running", "run": "job-a"})
    );
    insta::assert_snapshot!("compute_show_json", envbuild_e2e::json_shape(&v));

    // Five jobs, three pages; the ended ones are not listed.
    arm.seed_job("job-a", "Running", Some("gpu-cluster"));
    arm.seed_job("job-b", "Queued", None);
    arm.seed_job("job-c", "Completed", Some("gpu-cluster"));
    arm.seed_job("job-d", "NotResponding", Some("cpu-cluster"));
    arm.seed_job("job-e", "Failed", None);
    let (code, out, err) = cli(&entra, &arm, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        cells(&out, "job-a")[..4],
        ["job-a", "Running", "Command", "gpu-cluster"]
    );
    assert_eq!(
        cells(&out, "job-b")[..4],
        ["job-b", "Queued", "Command", "serverless"]
    );
    assert_eq!(cells(&out, "job-d")[1], "NotResponding");
    assert!(!out.contains("job-c") && !out.contains("job-e"), "{out}");
    assert!(out.contains("jobs (3 not ended):"), "{out}");
    assert_eq!(
        cells(&out, "gpu-cluster"),
        [
            "gpu-cluster",
            "AmlCompute",
            "Standard_NC24ads_A100_v4",
            "Steady",
            "2",
            "$3.67/h",
            "$7.34/h"
        ]
    );
    assert_eq!(
        cells(&out, "ci-forgotten")[4..],
        ["1", "$0.18/h", "$0.18/h"]
    );
    assert_eq!(cells(&out, "nd-cluster")[4..], ["1", "unknown", "unknown"]);
    assert!(
        !out.lines()
            .any(|l| l.starts_with("ci-stopped") || l.starts_with("cpu-cluster")),
        "not billing: {out}"
    );
    assert!(out.contains("total: $7.52/h + unknown"), "{out}");
    assert_eq!(
        count(&arm, "GET", "/jobs"),
        3,
        "every page of the jobs list"
    );

    let (code, out, err) = cli(&entra, &arm, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["job-a", "job-b", "job-d"]);
    let billed: Vec<&str> = v["billing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(billed, ["ci-forgotten", "gpu-cluster", "nd-cluster"]);
    insta::assert_snapshot!("status_json", envbuild_e2e::json_shape(&v));
}

#[test]
fn instances_stop_and_start_to_the_end_of_the_operation_and_refusals_come_first() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    arm.add_instance("ci-dev", "Standard_DS11_v2", "Running", None);

    let (code, out, err) = cli(&entra, &arm, &["compute", "stop", "ci-dev"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Stopped");
    assert!(
        err.contains("stop ci-dev: InProgress (instance Stopping)"),
        "{err}"
    );
    assert!(
        err.contains("stop ci-dev: Succeeded (instance Stopped)"),
        "{err}"
    );
    assert_eq!(
        arm.compute_properties("ci-dev").unwrap()["state"],
        "Stopped"
    );
    let stops: Vec<u16> = arm
        .requests()
        .iter()
        .filter(|(m, p, _)| m == "POST" && p.ends_with("/computes/ci-dev/stop"))
        .map(|r| r.2)
        .collect();
    assert_eq!(stops, [202]);
    assert!(count(&arm, "GET", "/locations/eastus/computeOperationsStatus/") >= 1);

    let (code, out, err) = cli(&entra, &arm, &["compute", "start", "ci-dev", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["state"].clone(), v["bills"].clone()),
        (json!("Running"), json!(true))
    );
    assert!(
        err.contains("start ci-dev: InProgress (instance Starting)"),
        "{err}"
    );

    let (code, out, err) = cli(&entra, &arm, &["compute", "idle-shutdown", "ci-dev", "45m"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "PT45M");
    assert_eq!(
        arm.idle_requests(),
        [(
            "ci-dev".to_owned(),
            json!({"idleTimeBeforeShutdown": "PT45M"})
        )]
    );
    let (_, out, _) = cli(&entra, &arm, &["compute", "list"]);
    assert_eq!(cells(&out, "ci-dev")[5], "45m");

    // An operation that fails: its error, a non-zero exit, the instance as it stands.
    arm.fail_next_operation("ci-dev");
    let (code, _, err) = cli(&entra, &arm, &["compute", "stop", "ci-dev"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("stop of compute ci-dev ended Failed: UserError: Failed to stop compute instance ci-dev"),
        "{err}"
    );
    assert_eq!(
        arm.compute_properties("ci-dev").unwrap()["state"],
        "Running"
    );
    // Starting what runs asks nothing of the service.
    let posts = count(&arm, "POST", "/computes/ci-dev/start");
    let (code, out, err) = cli(&entra, &arm, &["compute", "start", "ci-dev"]);
    assert_eq!((code, out.trim()), (0, "Running"), "{err}");
    assert!(err.contains("start ci-dev: already Running"), "{err}");
    assert_eq!(count(&arm, "POST", "/computes/ci-dev/start"), posts);

    // Refused before any request that would change something.
    let before = arm.requests().len();
    let (code, _, err) = cli(&entra, &arm, &["compute", "idle-shutdown", "ci-dev", "10m"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("idle time `10m` is outside the range Azure ML takes: 15 minutes to 3 days"),
        "{err}"
    );
    assert_eq!(arm.requests().len(), before, "a bad duration sends nothing");
    let (code, _, err) = cli(&entra, &arm, &["compute", "stop", "cpu-cluster"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("compute cpu-cluster is a cluster (AmlCompute), not a compute instance: stop applies to compute instances only")
            && err.contains("hint: a cluster (AmlCompute) scales down to its minNodeCount by itself"),
        "{err}"
    );
    assert_eq!(count(&arm, "POST", "/computes/cpu-cluster/"), 0);
    let (code, _, err) = cli(&entra, &arm, &["compute", "start", "nope"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no compute nope in workspace mlw-envbuild")
            && err.contains("`envbuild compute list`"),
        "{err}"
    );
    assert_eq!(arm.idle_requests().len(), 1);
}

#[test]
fn run_azure_warns_of_idle_costs_and_stops_at_an_unknown_compute_before_the_put() {
    let entra = Entra::start();
    let arm = AzureStandIn::with_entra(&entra);
    arm.add_cluster("warm-cluster", "Standard_DS3_v2", "Dedicated", 2, 4, 0);
    arm.add_instance("ci-no-idle", "Standard_DS11_v2", "Running", None);
    // The environment is not registered: the stand-in refuses the PUT, after the warnings.
    let run = |compute: &str| {
        cli(
            &entra,
            &arm,
            &[
                "run",
                "--azure",
                "azureml:missing:1",
                "--compute",
                compute,
                "--detach",
            ],
        )
    };
    let (code, _, err) = run("warm-cluster");
    assert_eq!(code, 1);
    let warn = err.find("warning: cluster warm-cluster keeps 2 node(s) up (minNodeCount 2): it bills 2 × $0.29/h = $0.58/h while idle").unwrap_or_else(|| panic!("{err}"));
    let refused = err.find("Environment").unwrap_or_else(|| panic!("{err}"));
    assert!(warn < refused, "{err}");
    assert_eq!(count(&arm, "PUT", "/jobs/"), 1);

    let (_, _, err) = run("ci-no-idle");
    assert!(err.contains("warning: compute instance ci-no-idle has no idle shutdown: it bills $0.18/h until someone stops it (`envbuild compute idle-shutdown ci-no-idle 30m`)"), "{err}");
    let (_, _, err) = run("cpu-cluster");
    assert!(!err.contains("warning:"), "{err}");
    assert_eq!(count(&arm, "PUT", "/jobs/"), 3);

    let (code, _, err) = run("no-such-cluster");
    assert_eq!(code, 1);
    assert!(
        err.contains("no compute no-such-cluster in workspace mlw-envbuild"),
        "{err}"
    );
    assert!(err.contains("hint: `envbuild compute list`"), "{err}");
    assert_eq!(
        count(&arm, "PUT", "/jobs/"),
        3,
        "no PUT for an unknown compute"
    );
}
