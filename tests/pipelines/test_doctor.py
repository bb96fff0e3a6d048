"""``pcam doctor`` against a Kubernetes + KFP + GCS stand-in started on 127.0.0.1 by each test
(tests/pipelines/fake_cluster_server.py): the healthy cluster, then every failing case,
each with its one FAIL line and the fix, and a non-zero exit.
"""

import socket

import pytest

from pcam import cluster
from pcam.cli import main
from pcam.doctor import REQUIRED_ACCESS
from pipelines.pcam_training import compile_pipeline
from tests.pipelines.fake_cluster_server import FakeCluster, gpu_taint, node, pcam_role_rules


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The pipeline as `make compile` writes it (default GPU pool: GKE's nvidia-l4)."""
    return compile_pipeline(tmp_path_factory.mktemp("compiled") / "pcam_training.yaml", image="r/pcam-gpu:1")


@pytest.fixture
def fake():
    server = FakeCluster().start()
    yield server
    server.stop()


def doctor(fake, tmp_path, capsys, *extra, pipeline=None, root=None, kubeconfig_server=None, kfp=None):
    """Run `pcam doctor` in-process; (exit code, {check name: line})."""
    kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig", kubeconfig_server)
    root = str(tmp_path / "pipeline-root") if root is None else root
    code = main(
        [
            "doctor",
            "--pipeline",
            str(pipeline),
            "--kubeconfig",
            str(kubeconfig),
            "--kfp-host",
            kfp or fake.url,
            "--pipeline-root",
            root,
            *extra,
        ]
    )
    out = capsys.readouterr().out.splitlines()
    lines = {line[6:].split(": ", 1)[0]: line for line in out[:-1]}
    assert all(line.startswith(("ok    ", "FAIL  ")) for line in out[:-1]), out
    return code, lines, out[-1]


def failed(lines):
    return {name: line for name, line in lines.items() if line.startswith("FAIL")}


def test_a_healthy_cluster_passes_every_check(fake, tmp_path, capsys, compiled):
    code, lines, summary = doctor(fake, tmp_path, capsys, pipeline=compiled)
    assert code == 0 and not failed(lines), lines
    assert summary.endswith("ready to submit")
    gpu = f"gpu nodes {cluster.GPU_NODE_LABEL_KEY}={cluster.GPU_NODE_LABEL_VALUE}"
    assert set(lines) == {
        "kube context",
        f"service account {cluster.SERVICE_ACCOUNT}",
        f"pvc {cluster.PVC_NAME}",
        gpu,
        "kfp",
        f"pipeline root {tmp_path / 'pipeline-root'}",
    }
    assert "gpu-pool-1 (1)" in lines[gpu] and "version 2.5.0" in lines["kfp"]
    # One review per permission, each decided by the rules of manifests/base/rbac.yaml.
    reviews = [r for r in fake.requests if r[1].endswith("/subjectaccessreviews")]
    assert len(reviews) == len(REQUIRED_ACCESS)


def test_required_access_is_exactly_what_the_role_grants():
    granted = set()
    for rule in pcam_role_rules():
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames", [""]):
                        granted.add((verb, group, resource, name))
    assert set(REQUIRED_ACCESS) == granted


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_api_server(fake, tmp_path, capsys, compiled):
    code, lines, _ = doctor(
        fake, tmp_path, capsys, pipeline=compiled, kubeconfig_server=f"http://127.0.0.1:{_unused_port()}"
    )
    assert code == 1
    assert "fix: check the cluster is up" in lines["kube context"]
    assert "not checked" in lines["cluster checks"] and lines["kfp"].startswith("ok")


def test_missing_kubeconfig(fake, tmp_path, capsys, compiled):
    code = main(
        [
            "doctor",
            "--pipeline",
            str(compiled),
            "--kubeconfig",
            str(tmp_path / "nope"),
            "--kfp-host",
            fake.url,
            "--pipeline-root",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "FAIL  kube context: cannot load kubeconfig" in out and "fix: kubectl config" in out


def test_missing_namespace(fake, tmp_path, capsys, compiled):
    code, lines, _ = doctor(fake, tmp_path, capsys, "--namespace", "team-a", pipeline=compiled)
    assert code == 1 and "has no namespace 'team-a'" in lines["kube context"] and "--namespace" in lines["kube context"]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "not found in kubeflow; fix: kubectl apply -k manifests/overlays"),
        ("no-log-access", "RBAC denies get pods/log"),
        ("sar-forbidden", "cannot review its RBAC: HTTP 403"),
    ],
)
def test_service_account_and_rbac_failures(fake, tmp_path, capsys, compiled, case, expected):
    if case == "missing":
        fake.service_accounts.clear()
    elif case == "no-log-access":
        fake.role_rules = [r for r in fake.role_rules if r["resources"] != ["pods/log"]]
    else:
        fake.sar_forbidden = True
    code, lines, _ = doctor(fake, tmp_path, capsys, pipeline=compiled)
    assert code == 1 and list(failed(lines)) == [f"service account {cluster.SERVICE_ACCOUNT}"]
    assert expected in lines[f"service account {cluster.SERVICE_ACCOUNT}"]


@pytest.mark.parametrize(
    "pvc, ok, expected",
    [
        (None, False, "not found in kubeflow"),
        (
            {"phase": "Pending", "class": "standard-rwx"},
            False,
            "Pending (storage class standard-rwx); fix: kubectl describe",
        ),
        ({"phase": "Pending", "class": "missing-class"}, False, "storage class missing-class: HTTP 404"),
        ({"phase": "Pending", "class": "standard"}, True, "Pending until the first pod mounts it"),
    ],
)
def test_pvc_states(fake, tmp_path, capsys, compiled, pvc, ok, expected):
    if pvc is None:
        fake.pvcs.clear()
    else:
        fake.pvcs[cluster.PVC_NAME] = pvc
    code, lines, _ = doctor(fake, tmp_path, capsys, pipeline=compiled)
    assert code == (0 if ok else 1) and expected in lines[f"pvc {cluster.PVC_NAME}"]


def test_no_node_of_the_compiled_gpu_type_names_the_types_there_are(fake, tmp_path, capsys, compiled):
    fake.nodes = [
        node("t4-1", {cluster.GPU_NODE_LABEL_KEY: "nvidia-tesla-t4"}, 1, [gpu_taint()]),
        node("a100-1", {cluster.GPU_NODE_LABEL_KEY: "nvidia-tesla-a100"}, 1, [gpu_taint()]),
    ]
    code, lines, _ = doctor(fake, tmp_path, capsys, pipeline=compiled)
    (line,) = failed(lines).values()
    assert code == 1 and "Pending forever" in line
    assert "fix: make compile GPU=<one of nvidia-tesla-a100, nvidia-tesla-t4>" in line


def test_compiled_for_the_pool_that_exists_passes(fake, tmp_path, capsys):
    fake.nodes = [node("a100-1", {cluster.GPU_NODE_LABEL_KEY: "nvidia-tesla-a100"}, 8, [gpu_taint()])]
    a100 = compile_pipeline(tmp_path / "a100.yaml", image="r/pcam-gpu:1", gpu=cluster.gpu_pool("nvidia-tesla-a100"))
    code, lines, _ = doctor(fake, tmp_path, capsys, pipeline=a100)
    assert code == 0 and "a100-1 (8)" in lines[f"gpu nodes {cluster.GPU_NODE_LABEL_KEY}=nvidia-tesla-a100"]


@pytest.mark.parametrize(
    "gpu_node, expected",
    [
        (
            node(
                "gpu-1",
                {cluster.GPU_NODE_LABEL_KEY: "nvidia-l4"},
                1,
                [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}],
            ),
            "taint dedicated=ml:NoSchedule not tolerated; fix: compile with the pool's taint",
        ),
        (
            node("gpu-1", {cluster.GPU_NODE_LABEL_KEY: "nvidia-l4"}, 0, [gpu_taint()]),
            "no allocatable nvidia.com/gpu; fix: install the NVIDIA device plugin",
        ),
    ],
)
def test_gpu_nodes_that_would_not_take_the_pod(fake, tmp_path, capsys, compiled, gpu_node, expected):
    fake.nodes = [gpu_node]
    code, lines, _ = doctor(fake, tmp_path, capsys, pipeline=compiled)
    (line,) = failed(lines).values()
    assert code == 1 and expected in line


@pytest.mark.parametrize(
    "health, expected",
    [
        ((200, {"commit_sha": "x", "tag_name": "2.3.0", "multi_user": False}), "version 2.3.0, older than 2.4.0"),
        ((200, {"commit_sha": "x", "tag_name": "2.5.0", "multi_user": True}), "multi-user: runs go to profile"),
        ((503, {"error": "unavailable"}), "HTTP 503"),
    ],
)
def test_kfp_failures(fake, tmp_path, capsys, compiled, health, expected):
    fake.healthz = health
    code, lines, _ = doctor(fake, tmp_path, capsys, pipeline=compiled)
    assert code == 1 and list(failed(lines)) == ["kfp"] and expected in lines["kfp"]


def test_kfp_unreachable(fake, tmp_path, capsys, compiled):
    code, lines, _ = doctor(fake, tmp_path, capsys, pipeline=compiled, kfp=f"http://127.0.0.1:{_unused_port()}")
    assert code == 1 and "Connection refused" in lines["kfp"] and "port-forward" in lines["kfp"]


def test_pipeline_root_not_writable(fake, tmp_path, capsys, compiled):
    (tmp_path / "a-file").write_text("not a directory")
    code, lines, _ = doctor(fake, tmp_path, capsys, pipeline=compiled, root=str(tmp_path / "a-file" / "root"))
    (line,) = failed(lines).values()
    assert code == 1 and "not writable" in line and "uid 1000" in line


@pytest.mark.parametrize(
    "bucket, ok, expected",
    [
        ("pcam-artifacts", True, "writable (wrote and deleted a probe object)"),
        ("no-such-bucket", False, "bucket no-such-bucket does not exist; fix: gcloud storage buckets create"),
        ("locked", False, "no write access"),
    ],
)
def test_gcs_pipeline_root(fake, tmp_path, capsys, compiled, monkeypatch, bucket, ok, expected):
    fake.forbidden_buckets = {"locked"}
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.url)
    root = f"gs://{bucket}/v2/artifacts"
    code, lines, _ = doctor(fake, tmp_path, capsys, pipeline=compiled, root=root)
    assert code == (0 if ok else 1) and expected in lines[f"pipeline root {root}"]
    assert not fake.objects  # the probe object was deleted (or never written)


@pytest.mark.parametrize("secrets, ok", [({"mlpipeline-minio-artifact"}, True), (set(), False)])
def test_minio_pipeline_root_from_kfp_launcher(fake, tmp_path, capsys, compiled, secrets, ok):
    fake.secrets = secrets
    fake.configmaps["kfp-launcher"] = {"defaultPipelineRoot": "minio://mlpipeline/v2/artifacts"}
    code, lines, _ = doctor(fake, tmp_path, capsys, pipeline=compiled, root="")
    line = lines["pipeline root minio://mlpipeline/v2/artifacts"]
    assert code == (0 if ok else 1) and (
        ("secret mlpipeline-minio-artifact present" in line) if ok else "reinstall KFP" in line
    )


def test_not_a_compiled_pipeline_is_exit_2_naming_the_file(fake, tmp_path, capsys):
    bad = tmp_path / "pipeline.yaml"
    bad.write_text("just: yaml\n")
    code = main(["doctor", "--pipeline", str(bad), "--kfp-host", fake.url])
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.strip()
        == f"pcam doctor: error: {bad}: not a compiled KFP pipeline (no deploymentSpec); run make compile"
    )
