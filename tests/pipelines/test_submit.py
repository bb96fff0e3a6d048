"""Submission and scheduling with the real kfp.Client against a local fake KFP API server."""

import json

import pytest
import yaml

from pcam import cluster
from pipelines import submit
from pipelines.pcam_training import compile_pipeline
from tests.conftest import REPO
from tests.pipelines.fake_kfp_server import FakeKfpServer

IMAGE = "registry.example/pcam/pcam-gpu:feedbeef"
GRID = [{"model": "cnn", "policy": "onecycle"}, {"model": "mobilenetv2", "policy": "plateau"}]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compile_pipeline(tmp_path_factory.mktemp("pkg") / "pcam_training.yaml", IMAGE)


@pytest.fixture
def server():
    fake = FakeKfpServer().start()
    yield fake
    fake.stop()


def _common(server, package):
    return [
        "--host",
        server.url,
        "--experiment",
        "pcam-test",
        "--package",
        str(package),
        "--param",
        "seed=7",
        "--param",
        f"grid={json.dumps(GRID)}",
        "--param",
        "source=gs://bucket/pcam",
        "--param",
        "learning_rate=0.0005",
    ]


def test_run_sends_the_compiled_spec_platform_spec_and_parameters(server, package, capsys):
    assert (
        submit.main(
            [
                "run",
                *_common(server, package),
                "--run-name",
                "nightly-1",
                "--config",
                str(REPO / "configs" / "demo.yaml"),
            ]
        )
        == 0
    )
    (run,) = server.posted("/runs")
    experiment = server.posted("/experiments")[0]
    assert experiment["display_name"] == "pcam-test"
    assert run["experiment_id"] in server.experiments
    assert run["display_name"] == "nightly-1"
    assert run["service_account"] == cluster.SERVICE_ACCOUNT
    compiled_spec, compiled_platform = yaml.safe_load_all(package.read_text())
    assert run["pipeline_spec"]["pipeline_spec"]["root"] == compiled_spec["root"]
    assert run["pipeline_spec"]["pipeline_spec"]["deploymentSpec"] == compiled_spec["deploymentSpec"]
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors == compiled_platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-train"]["nodeSelector"]["labels"] == cluster.gpu_node_selector()
    params = run["runtime_config"]["parameters"]
    assert params["seed"] == 7 and params["grid"] == GRID and params["source"] == "gs://bucket/pcam"
    assert params["learning_rate"] == 0.0005
    assert yaml.safe_load(params["config_yaml"])["name"] == "pcam-demo"


def test_schedule_creates_a_recurring_run_with_cron_one_at_a_time_and_no_catchup(server, package):
    assert submit.main(["schedule", *_common(server, package), "--cron", "0 0 3 * * 0"]) == 0
    (recurring,) = server.posted("/recurringruns")
    assert recurring["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0"
    assert recurring["max_concurrency"] in (1, "1")
    assert recurring["no_catchup"] is True
    assert recurring["mode"] == "ENABLE"
    assert recurring["experiment_id"] in server.experiments
    assert recurring["runtime_config"]["parameters"]["grid"] == GRID
    assert "platform_spec" in recurring["pipeline_spec"]
    # scheduled retraining re-reads the source: every task's cache is switched off
    tasks = recurring["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]
    assert {
        name: t.get("cachingOptions", {}).get("enableCache", False)
        for name, t in tasks.items()
        if "cachingOptions" in t
    } == {name: False for name, t in tasks.items() if "cachingOptions" in t}
    assert any("cachingOptions" in t for t in tasks.values())


def test_unknown_or_badly_typed_parameter_fails_before_contacting_the_server(server, package, capsys):
    assert submit.main(["run", "--host", server.url, "--package", str(package), "--param", "epoch=3"]) == 2
    assert "'epoch': not a pipeline parameter" in capsys.readouterr().err
    assert submit.main(["run", "--host", server.url, "--package", str(package), "--param", "seed=seven"]) == 2
    assert "'seven' is not a valid NUMBER_INTEGER" in capsys.readouterr().err
    assert server.requests == []


def test_help_shows_the_raw_kfp_cli_equivalents(capsys):
    with pytest.raises(SystemExit):
        submit.main(["--help"])
    out = capsys.readouterr().out
    assert "kfp --endpoint URL run create" in out and "recurring-run create" in out
