//! Unit tests of `sweep`: the body as the REST definitions name each field, the YAML, and every
//! refusal before a request.

use super::*;

const WS: &str =
    "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w";

fn sweep() -> SweepJob {
    SweepJob {
        id: "mnist-sweep-1".into(),
        compute_id: format!("{WS}/computes/cpu-cluster"),
        display_name: None,
        experiment_name: "mnist".into(),
        environment_id: format!("{WS}/environments/mnist/versions/0123456789ab"),
        base_command: crate::azureml::job::trainer_command(
            true,
            "model",
            &["--epochs".into(), "1".into()],
        ),
        fixed_args: vec!["--epochs".into(), "1".into()],
        environment_variables: BTreeMap::new(),
        inputs: [(
            "data".to_owned(),
            "azureml://datastores/workspaceblobstore/paths/mnist/".to_owned(),
        )]
        .into(),
        outputs: vec!["model".into()],
        params: vec![
            Param::parse("lr=loguniform(1e-4,1e-1)").unwrap(),
            Param::parse("batch-size=choice(64,128,256)").unwrap(),
        ],
        sampling: Sampling::Random { seed: Some(7) },
        objective: Objective::parse("test_accuracy:maximize").unwrap(),
        limits: Limits {
            max_total_trials: 4,
            max_concurrent_trials: 2,
            timeout: "PT2H".into(),
            trial_timeout: Some("PT30M".into()),
        },
        early_termination: Some(
            EarlyTermination::parse(
                "bandit:slack_factor=0.1,evaluation_interval=1,delay_evaluation=2",
            )
            .unwrap(),
        ),
        tags: BTreeMap::new(),
    }
}

#[test]
fn sweep_body_names_each_field_as_the_rest_definitions_do() {
    let s = sweep();
    s.check().unwrap();
    let b = s.body();
    let p = &b["properties"];
    assert_eq!(p["jobType"], "Sweep");
    assert_eq!(p["computeId"], s.compute_id.as_str());
    assert_eq!(
        p["trial"],
        json!({
            "command": "/opt/envbuild/bin/trainer --data ${{inputs.data}} --output ${{outputs.model}} --epochs 1 --lr ${{search_space.lr}} --batch-size ${{search_space.batch_size}}",
            "environmentId": s.environment_id,
            "environmentVariables": {},
            "resources": {"instanceCount": 1},
        })
    );
    assert_eq!(
        p["samplingAlgorithm"],
        json!({"samplingAlgorithmType": "Random", "rule": "Random", "seed": 7})
    );
    assert_eq!(
        p["searchSpace"]["batch_size"],
        json!(["choice", [[64, 128, 256]]])
    );
    assert_eq!(p["searchSpace"]["lr"][0], "loguniform");
    assert_eq!(
        p["objective"],
        json!({"goal": "Maximize", "primaryMetric": "test_accuracy"})
    );
    assert_eq!(
        p["limits"],
        json!({"jobLimitsType": "Sweep", "maxTotalTrials": 4, "maxConcurrentTrials": 2, "timeout": "PT2H", "trialTimeout": "PT30M"})
    );
    assert_eq!(
        p["earlyTermination"],
        json!({"policyType": "Bandit", "slackFactor": 0.1, "evaluationInterval": 1, "delayEvaluation": 2})
    );
    // Inputs and outputs sit on the sweep, not the trial (TrialComponent has neither).
    assert!(p["trial"].get("inputs").is_none());
    assert_eq!(p["inputs"]["data"]["jobInputType"], "uri_folder");
    // SweepJob's own properties plus JobBase's: nothing the closed schema lacks.
    let allowed = [
        "jobType",
        "computeId",
        "displayName",
        "experimentName",
        "inputs",
        "outputs",
        "tags",
        "samplingAlgorithm",
        "searchSpace",
        "objective",
        "limits",
        "earlyTermination",
        "trial",
    ];
    for k in p.as_object().unwrap().keys() {
        assert!(allowed.contains(&k.as_str()), "{k}");
    }
    let mut grid = s.clone();
    (grid.sampling, grid.early_termination) = (Sampling::Grid, None);
    grid.params.remove(0);
    grid.check().unwrap();
    assert_eq!(
        grid.body()["properties"]["samplingAlgorithm"],
        json!({"samplingAlgorithmType": "Grid"})
    );
    assert!(grid.body()["properties"].get("earlyTermination").is_none());
    assert_eq!(grid.grid_size(), Some(3));
}

#[test]
fn yaml_is_the_cli_v2_sweep_of_the_same_body() {
    let s = sweep();
    let y = s.yaml();
    assert!(y.starts_with("$schema: https://azuremlschemas.azureedge.net/latest/sweepJob.schema.json\ntype: sweep\n"), "{y}");
    assert!(y.contains("compute: \"azureml:cpu-cluster\"\n"), "{y}");
    assert!(
        y.contains("  environment: \"azureml:mnist:0123456789ab\"\n"),
        "{y}"
    );
    assert!(
        y.contains("  batch_size: {\"type\":\"choice\",\"values\":[64,128,256]}\n"),
        "{y}"
    );
    assert!(
        y.contains("sampling_algorithm: {\"seed\":7,\"type\":\"random\"}\n"),
        "{y}"
    );
    assert!(
        y.contains("objective: {\"goal\":\"maximize\",\"primary_metric\":\"test_accuracy\"}\n"),
        "{y}"
    );
    assert!(y.contains("limits: {\"max_concurrent_trials\":2,\"max_total_trials\":4,\"timeout\":7200,\"trial_timeout\":1800}\n"), "{y}");
    assert!(y.contains("early_termination: {\"delay_evaluation\":2,\"evaluation_interval\":1,\"slack_factor\":0.1,\"type\":\"bandit\"}\n"), "{y}");
    assert!(
        y.contains(&format!(
            "  command: {}\n",
            serde_json::to_string(&s.command()).unwrap()
        )),
        "{y}"
    );
    assert_eq!(iso_seconds("PT1H30M15S"), 5415);
}

#[test]
fn refusals_come_before_any_request() {
    let e = Objective::parse("accuracy:maximize")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "--objective accuracy: the trainer never logs `accuracy` (it logs train_loss, test_loss, test_accuracy, images_per_second)");
    assert!(Objective::parse("test_loss")
        .unwrap_err()
        .to_string()
        .contains("METRIC:maximize"));
    assert!(!Objective::parse("test_loss:min").unwrap().maximize);

    let mut s = sweep();
    s.limits.max_concurrent_trials = 5;
    assert_eq!(
        s.check().unwrap_err().to_string(),
        "--max-concurrent 5 is above --max-trials 4"
    );

    let mut s = sweep();
    (s.sampling, s.early_termination) = (Sampling::Grid, None);
    let e = s.check().unwrap_err().to_string();
    assert!(
        e.contains("grid sampling") && e.contains("--param lr is loguniform"),
        "{e}"
    );

    let mut s = sweep();
    s.sampling = Sampling::Bayesian;
    s.params.remove(0);
    assert!(s
        .check()
        .unwrap_err()
        .to_string()
        .contains("early-termination"));

    let mut s = sweep();
    s.params.push(Param::parse("lr=uniform(0.01,0.1)").unwrap());
    assert_eq!(
        s.check().unwrap_err().to_string(),
        "--param lr is given twice"
    );

    let mut s = sweep();
    s.fixed_args = vec!["--batch-size".into(), "32".into()];
    assert!(s
        .check()
        .unwrap_err()
        .to_string()
        .contains("--param batch-size is also among the fixed"));

    let mut s = sweep();
    s.params.clear();
    assert!(s.check().unwrap_err().to_string().contains("no --param"));

    for (bad, why) in [
        ("bandit", "exactly one of slack_factor and slack_amount"),
        ("bandit:slack_factor=0.1,slack_amount=0.2", "exactly one"),
        ("bandit:slack_factor=-1", "not a number above 0"),
        (
            "bandit:slack_factor=0.1,delay=2",
            "`delay` is not a bandit setting",
        ),
        ("hyperband:x=1", "`hyperband` is not a policy"),
        ("truncation_selection:truncation_percentage=120", "not 1–99"),
        (
            "bandit:slack_factor=0.1,evaluation_interval=-1",
            "not a whole number",
        ),
    ] {
        let e = EarlyTermination::parse(bad).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--early-termination {bad}: ")) && e.contains(why),
            "{e}"
        );
    }
    assert_eq!(
        EarlyTermination::parse("median_stopping:delay_evaluation=5")
            .unwrap()
            .rest(),
        json!({"policyType": "MedianStopping", "evaluationInterval": 1, "delayEvaluation": 5})
    );
    assert!(Sampling::parse("sobol", None).is_err());
    assert!(is_serverless_name("serverless") && is_serverless_name("Standard_NC6s_v3"));
    assert!(!is_serverless_name("cpu-cluster"));
}

#[test]
fn every_sweep_body_is_valid_by_the_rest_definitions() {
    use crate::azureml::spec_check::{assert_valid, violations};
    let mut bodies = Vec::new();
    for sampling in ["random", "grid", "bayesian"] {
        let mut s = sweep();
        s.params = vec![Param::parse("batch-size=choice(64,128)").unwrap()];
        s.sampling = Sampling::parse(sampling, Some(3)).unwrap();
        if sampling == "bayesian" {
            s.early_termination = None;
        }
        bodies.push(s.body());
    }
    let mut s = sweep();
    s.early_termination = None;
    s.limits.trial_timeout = None;
    s.display_name = Some("lr search".into());
    bodies.push(s.body());
    bodies.push(sweep().body());
    for b in &bodies {
        assert_valid("JobBaseResource", b);
    }
    // And the definitions do bite on a sweep: a sampling type the service does not know.
    let mut bad = sweep().body();
    bad["properties"]["samplingAlgorithm"]["samplingAlgorithmType"] = "Exhaustive".into();
    assert!(!violations("JobBaseResource", &bad).is_empty());
}
