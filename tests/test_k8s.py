"""The Kubernetes manifests in k8s/: valid offline, and consistent with the app and the load table.

Schemas come bundled with kubernetes-validate (no cluster, no network). Besides shape,
the tests check what a schema cannot: probes hit endpoints the app really serves, the
resources are those benchmarks/load.json derives from measurements (its soak and the
worst case in benchmarks/memory.json), every SSM_* variable is one the service reads, and
the grace period covers gunicorn's graceful timeout.
"""

from __future__ import annotations

import json
import re
import runpy

import kubernetes_validate
import pytest
import yaml

from benchmarks import load
from front.serve import SHUTDOWN_MARGIN_SECONDS, TEMPLATE
from supersizeme.service.config import MAX_BODY_BYTES, MULTIPART_OVERHEAD_BYTES, REPO_ROOT

K8S = REPO_ROOT / "k8s"
# The oldest release the manifests claim (preStop "sleep" is on by default from 1.30)
# and the newest the package knows.
VERSIONS = ["1.30", "1.37"]


def documents() -> list[dict]:
    return [
        doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
    ]


def of_kind(kind: str) -> dict:
    (found,) = [doc for doc in documents() if doc["kind"] == kind]
    return found


def container() -> dict:
    (found,) = of_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return found


def env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in container()["env"]}


def load_report() -> dict:
    return json.loads((REPO_ROOT / "benchmarks" / "load.json").read_text())


def load_sizing() -> dict:
    return load_report()["sizing"]


def mebibytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


def test_the_manifests_hold_the_resources_we_deploy():
    kinds = sorted(doc["kind"] for doc in documents())
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_strict_schema(version):
    for doc in documents():
        # Strict: an unknown (misspelt) field is an error, not silently dropped.
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = "/".join(str(part) for part in error.path)
            pytest.fail(f"{doc['kind']} at {where}: {error.message}", pytrace=False)


def test_probes_hit_endpoints_the_app_serves(client):
    spec = container()
    port_names = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert env()["SSM_BIND"].rsplit(":", 1)[1] == str(port_names["http"])
    probes = {name: spec[name] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    for name, probe in probes.items():
        assert probe["httpGet"]["port"] in port_names, name
        response = client.get(probe["httpGet"]["path"])
        assert response.status_code == 200, (name, response.get_data(as_text=True))
    # Liveness must not depend on the model: a worker busy loading is alive.
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_resources_follow_the_load_table():
    sizing = load_sizing()
    resources = container()["resources"]
    assert int(env()["SSM_WORKERS"]) == sizing["workers"]
    assert mebibytes(resources["requests"]["memory"]) == sizing["memory_request_mib"]
    assert mebibytes(resources["limits"]["memory"]) == sizing["memory_limit_mib"]
    assert float(resources["requests"]["cpu"]) == sizing["cpu_request"]
    assert float(resources["limits"]["cpu"]) == sizing["cpu_limit"]
    # One inference thread per core a worker owns.
    assert int(env()["SSM_THREADS"]) * sizing["workers"] == sizing["cpu_limit"]


def test_the_worst_cases_were_measured_with_at_least_the_pods_memory_budget():
    """The worker budgets its images from the pod's memory limit (its cgroup's), and
    benchmarks/memory.py ran, in each precision, with at least that replica memory: what a
    pod admits, it admitted too, so the worst case measured bounds the pod's."""
    assert "SSM_MEMORY_BYTES" not in env()
    limit = mebibytes(container()["resources"]["limits"]["memory"])
    precisions = set()
    for path in load.MEMORY_WORST_CASES:
        measured = json.loads(path.read_text())["settings"]
        precisions.add(measured["precision"])
        assert measured["memory_mib"] >= limit, f"rerun {path.name} with --memory-mib {limit}"
    assert precisions == {"bfloat16", "float32"}


def test_the_sizing_is_the_rule_on_the_soak_and_the_measured_worst_case():
    """load.json's sizing is what load.py's rule gives from the soak it records and from
    benchmarks/memory.json as it stands: a worst case measured anew without
    `load.py --resize` fails here, not only once a pod runs out of memory."""
    report = load_report()
    sizing = report["sizing"]
    assert load.sizing(report["runs"], sizing["workers"], sizing["threads"]) == sizing
    assert sizing["worst_case_measured"] is not None, "run python -m benchmarks.memory"


def test_every_setting_is_one_the_service_reads():
    # The app's settings, gunicorn's, and the front's (nginx and gunicorn's header budget).
    readers = ["supersizeme/service/config.py", "gunicorn.conf.py", "front/serve.py"]
    readers.append("supersizeme/service/worker.py")
    sources = "".join((REPO_ROOT / reader).read_text() for reader in readers)
    for name in env():
        assert name.startswith("SSM_"), name
        assert f'"{name}"' in sources, f"{name} is read by none of {readers}"


def test_grace_period_covers_the_graceful_timeout(monkeypatch):
    for name, value in env().items():
        monkeypatch.setenv(name, value)
    server = runpy.run_path(str(REPO_ROOT / "gunicorn.conf.py"))
    pod = of_kind("Deployment")["spec"]["template"]["spec"]
    pause = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    # nginx relays the answers gunicorn finishes for a little longer than gunicorn takes.
    stopping = server["graceful_timeout"] + SHUTDOWN_MARGIN_SECONDS
    assert pod["terminationGracePeriodSeconds"] >= stopping + pause


def test_the_front_buffers_on_a_disk_volume_that_holds_its_uploads():
    """nginx writes buffered bodies and answers to SSM_FRONT_TEMP_DIR: a writable volume (the
    root file system is read-only), on disk rather than in the pod's memory, and large
    enough for every upload slot to hold a whole body and the largest answer nginx keeps."""
    spec = container()
    mounts = {mount["mountPath"]: mount["name"] for mount in spec["volumeMounts"]}
    pod = of_kind("Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    buffers = volumes[mounts[env()["SSM_FRONT_TEMP_DIR"]]]["emptyDir"]
    assert buffers.get("medium") != "Memory"
    answer_mib = int(re.search(r"proxy_max_temp_file_size (\d+)m;", TEMPLATE.read_text())[1])
    body_mib = (MAX_BODY_BYTES + MULTIPART_OVERHEAD_BYTES) / 2**20
    slots = int(env()["SSM_FRONT_MAX_UPLOADS"])
    assert mebibytes(buffers["sizeLimit"]) >= slots * (body_mib + answer_mib)
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True


def test_service_autoscaler_and_budget_point_at_the_deployment():
    deployment = of_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = of_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    target = of_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert of_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
        labels.items()
    )
