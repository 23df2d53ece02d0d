"""The Kubernetes manifests of deploy/k8s: every kustomization renders (``kubectl kustomize``),
its objects are valid for Kubernetes 1.32 (``kubernetes-validate``, strict, offline), and every
workload is hardened, bounded, pinned and gets its secrets as files; the API has its probes,
HPA and PDB; the network is denied by default; each overlay has the database it says.

``kubectl`` or ``kubernetes-validate`` missing: these tests skip, unless
``IMGCLF_REQUIRE_KUBECTL=1`` (then they fail). The checks are plain functions on the rendered
objects, each also tested against a manifest that breaks it."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import PurePosixPath

import pytest
import yaml

from imgclf.config import PROJECT_ROOT
from imgclf.store.database import jobs
from imgclf.store.jobstates import LIVE_SQL

K8S = PROJECT_ROOT / "deploy" / "k8s"
#: The schemas the objects are validated against (kubernetes-validate ships them offline)
KUBERNETES_VERSION = "1.32.0"
REQUIRED = os.environ.get("IMGCLF_REQUIRE_KUBECTL") == "1"
KUSTOMIZATIONS = sorted(
    path.parent.relative_to(K8S).as_posix() for path in K8S.rglob("kustomization.yaml")
)
#: What a cluster applies: the base (rendered to check it, never applied alone) and overlays
DEPLOYABLE = [name for name in KUSTOMIZATIONS if not name.startswith("optional/")]
OVERLAYS = [name for name in DEPLOYABLE if name.startswith("overlays/")]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
#: Custom resources: the standard schemas do not know them (KEDA's CRDs are not part of
#: Kubernetes), so only the fields KEDA requires are checked, by custom_resource_problems
CUSTOM_GROUPS = {"keda.sh"}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|KEY", re.IGNORECASE)
PASSWORD_IN_URL = re.compile(r"://[^/@:]+:[^/@]+@")
ROLES = {"imgclf-api": "api", "imgclf-worker": "worker", "imgclf-dashboard": "dashboard"}
SHARED = "/srv/imgclf/shared"


def _missing(what: str) -> None:
    if REQUIRED:
        pytest.fail(f"{what} is missing, and IMGCLF_REQUIRE_KUBECTL=1 requires it")
    pytest.skip(f"{what} is not installed (IMGCLF_REQUIRE_KUBECTL=1: fail instead)")


@cache
def _render(name: str) -> tuple:
    """The objects of one kustomization, as ``kubectl kustomize`` renders them."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S / name)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"kubectl kustomize {name} failed:\n{done.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def render(name: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        _missing("kubectl")
    return copy.deepcopy(list(_render(name)))


@pytest.fixture(scope="module")
def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate (pip install kubernetes-validate)")
    return kubernetes_validate


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        doc for doc in docs
        if doc["kind"] == kind and name in (None, doc["metadata"]["name"])
    ]  # fmt: skip


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_template(workload: dict) -> dict:
    spec = workload["spec"]
    if workload["kind"] == "Pod":
        return {"metadata": workload["metadata"], "spec": spec}
    if workload["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]
    return spec["template"]


def workloads(docs: list[dict]) -> list[dict]:
    return [doc for doc in docs if doc["kind"] in WORKLOAD_KINDS]


def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def selects(selector: dict | None, labels: dict) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) picks these labels."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        if operator in ("In", "NotIn"):
            inside = key in labels and labels[key] in expression["values"]
            if inside is (operator == "NotIn"):
                return False
        elif (key in labels) is (operator == "DoesNotExist"):
            return False
    return True


def image_problem(image: str | None) -> str | None:
    """Why an image reference is not pinned: no tag, or ``latest`` (a digest pins it)."""
    if not image:
        return "no image"
    if "@sha256:" in image:
        return None
    name = image.rsplit("/", 1)[-1]
    if ":" not in name:
        return f"{image}: no tag"
    if name.rsplit(":", 1)[1] in ("", "latest"):
        return f"{image}: the tag is latest"
    return None


def _effective(container: dict, pod: dict, key: str):
    own = (container.get("securityContext") or {}).get(key)
    return own if own is not None else (pod.get("securityContext") or {}).get(key)


def _secret_files(container: dict, pod: dict) -> dict[str, str]:
    """The secret files a container sees: path -> secret name."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")
        if not secret or mount.get("subPath"):
            continue
        for item in secret.get("items") or []:
            files[str(PurePosixPath(mount["mountPath"]) / item["path"])] = secret["secretName"]
    return files


def container_problems(container: dict, pod: dict) -> list[str]:
    """What is wrong with one container of a pod (``pod`` is the pod's spec)."""
    name, problems = container.get("name", "?"), []
    context = container.get("securityContext") or {}
    if _effective(container, pod, "runAsNonRoot") is not True:
        problems.append(f"{name}: runAsNonRoot is not true")
    if not _effective(container, pod, "runAsUser"):
        problems.append(f"{name}: no runAsUser (or root)")
    if context.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{name}: the root file system is writable")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{name}: allowPrivilegeEscalation is not false")
    if context.get("privileged"):
        problems.append(f"{name}: privileged")
    if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
        problems.append(f"{name}: capabilities do not drop ALL")
    if (context.get("capabilities") or {}).get("add"):
        problems.append(f"{name}: adds capabilities")
    seccomp = _effective(container, pod, "seccompProfile") or {}
    if seccomp.get("type") != "RuntimeDefault":
        problems.append(f"{name}: seccomp profile is not RuntimeDefault")
    resources = container.get("resources") or {}
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(bound) or {}):
                problems.append(f"{name}: no {resource} in {bound}")
    if problem := image_problem(container.get("image")):
        problems.append(f"{name}: {problem}")
    files = _secret_files(container, pod)
    for variable in container.get("env", []):
        key, value = variable["name"], variable.get("value")
        secretish = SECRET_NAME.search(key) and not key.endswith("_FILE")
        if secretish and "value" in variable:
            problems.append(f"{name}: {key} is a secret given as a value")
        if value and PASSWORD_IN_URL.search(value):
            problems.append(f"{name}: {key} holds a password in a URL")
        # the app reads NAME_FILE: a secret never needs to be in the environment at all
        if "secretKeyRef" in (variable.get("valueFrom") or {}):
            problems.append(f"{name}: {key} takes a secret into the environment")
        if key.endswith("_FILE") and value and value not in files:
            problems.append(f"{name}: {key}={value} is no file of a mounted Secret")
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            problems.append(f"{name}: envFrom takes a whole Secret into the environment")
    return problems


def pod_problems(pod: dict) -> list[str]:
    """What is wrong with a pod's spec, its containers included."""
    problems = [problem for c in containers(pod) for problem in container_problems(c, pod)]
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("the service account's token is mounted")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{key} is true")
    mounts = {m["name"]: m for c in containers(pod) for m in c.get("volumeMounts", [])}
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"volume {volume['name']} is a hostPath")
        if secret := volume.get("secret"):
            if secret.get("defaultMode") not in (0o400, 0o440):
                problems.append(f"secret volume {volume['name']}: mode is not 0400 or 0440")
            if volume["name"] in mounts and mounts[volume["name"]].get("readOnly") is not True:
                problems.append(f"secret volume {volume['name']} is mounted writable")
    return problems


def custom_resource_problems(doc: dict) -> list[str]:
    """The fields KEDA requires (its CRDs' schemas are not the standard ones)."""
    spec, name = doc.get("spec") or {}, f"{doc['kind']}/{doc['metadata'].get('name')}"
    if doc["kind"] == "ScaledObject":
        problems = [] if (spec.get("scaleTargetRef") or {}).get("name") else ["no scaleTargetRef"]
        triggers = spec.get("triggers") or []
        problems += [] if triggers else ["no triggers"]
        problems += [
            "a trigger without type or metadata"
            for trigger in triggers if not (trigger.get("type") and trigger.get("metadata"))
        ]  # fmt: skip
    elif doc["kind"] == "TriggerAuthentication":
        sources = ("secretTargetRef", "env", "hashiCorpVault", "podIdentity")
        problems = [] if any(spec.get(key) for key in sources) else ["no credential source"]
    else:
        problems = ["an unknown custom resource"]
    return [f"{name}: {problem}" for problem in problems]


def is_default_deny(policy: dict) -> bool:
    """A NetworkPolicy that selects every pod and allows nothing in or out."""
    spec = policy["spec"]
    return (
        spec.get("podSelector") == {}
        and {"Ingress", "Egress"} <= set(spec.get("policyTypes") or [])
        and not spec.get("ingress")
        and not spec.get("egress")
    )


def allows(policies: list[dict], labels: dict, direction: str, port: int) -> list[dict]:
    """The rules (``ingress`` or ``egress``) of the policies selecting these pod labels that
    let them through on this port."""
    return [
        rule
        for policy in policies
        if selects(policy["spec"]["podSelector"], labels)
        for rule in policy["spec"].get(direction) or []
        if any(entry.get("port") == port for entry in rule.get("ports") or [])
    ]


def policy_problems(policies: list[dict]) -> list[str]:
    """No default deny, or a rule that allows every peer or every port."""
    problems = [] if any(map(is_default_deny, policies)) else ["no default-deny NetworkPolicy"]
    for policy in policies:
        for direction, peers in (("ingress", "from"), ("egress", "to")):
            for rule in policy["spec"].get(direction) or []:
                if not rule.get(peers):
                    problems.append(f"{policy['metadata']['name']}: {direction} from/to anyone")
                if not rule.get("ports"):
                    problems.append(f"{policy['metadata']['name']}: {direction} on every port")
    return problems


def env(container: dict) -> dict:
    return {variable["name"]: variable.get("value") for variable in container.get("env", [])}


def main_container(docs: list[dict], kind: str, name: str) -> dict:
    return pod_template(one(docs, kind, name))["spec"]["containers"][0]


def database_clients(docs: list[dict]) -> list[dict]:
    return [
        doc for doc in workloads(docs)
        if pod_template(doc)["metadata"]["labels"].get("imgclf.io/database-client") == "true"
    ]  # fmt: skip


# -- the checks, each shown to fail on a manifest that breaks it


def good_pod() -> dict:
    hardened = {
        "runAsNonRoot": True, "runAsUser": 10001, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    return {
        "automountServiceAccountToken": False,
        "containers": [
            {
                "name": "api",
                "image": "registry.example.com/imgclf:0.1.0",
                "securityContext": hardened,
                "resources": {
                    "requests": {"cpu": "1", "memory": "2Gi"},
                    "limits": {"cpu": "2", "memory": "3Gi"},
                },
                "env": [{"name": "IMGCLF_ADMIN_TOKEN_FILE", "value": "/run/secrets/x/token"}],
                "volumeMounts": [{"name": "s", "mountPath": "/run/secrets/x", "readOnly": True}],
            }
        ],
        "volumes": [
            {
                "name": "s",
                "secret": {
                    "secretName": "x",
                    "defaultMode": 0o440,
                    "items": [{"key": "token", "path": "token"}],
                },
            }
        ],
    }


def _set(path: str, value):
    def change(pod: dict) -> None:
        *parents, last = path.split(".")
        target = pod
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is KeyError:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return change


C = "containers.0"
FAULTS = {
    "root": _set(f"{C}.securityContext.runAsNonRoot", False),
    "no user": _set(f"{C}.securityContext.runAsUser", KeyError),
    "writable root": _set(f"{C}.securityContext.readOnlyRootFilesystem", False),
    "escalation": _set(f"{C}.securityContext.allowPrivilegeEscalation", KeyError),
    "capabilities": _set(f"{C}.securityContext.capabilities.drop", ["NET_RAW"]),
    "seccomp": _set(f"{C}.securityContext.seccompProfile", {"type": "Unconfined"}),
    "no memory limit": _set(f"{C}.resources.limits.memory", KeyError),
    "no cpu request": _set(f"{C}.resources.requests.cpu", KeyError),
    "latest": _set(f"{C}.image", "imgclf:latest"),
    "untagged": _set(f"{C}.image", "registry.example.com:5000/imgclf"),
    "secret value": _set(f"{C}.env.0", {"name": "IMGCLF_ADMIN_TOKEN", "value": "s3cret"}),
    "password in a URL": _set(
        f"{C}.env.0", {"name": "DATABASE_URL", "value": "postgresql://imgclf:pw@db/imgclf"}
    ),
    "secretKeyRef": _set(
        f"{C}.env.0",
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "x", "key": "token"}}},
    ),
    "envFrom a Secret": _set(f"{C}.envFrom", [{"secretRef": {"name": "x"}}]),
    "a _FILE outside the Secret": _set(f"{C}.env.0.value", "/run/secrets/x/other"),
    "token mounted": _set("automountServiceAccountToken", KeyError),
    "secret readable by all": _set("volumes.0.secret.defaultMode", 0o644),
    "secret mounted writable": _set(f"{C}.volumeMounts.0.readOnly", False),
    "hostPath": _set("volumes.0", {"name": "s", "hostPath": {"path": "/"}}),
}


def test_the_pod_check_passes_a_good_pod():
    assert pod_problems(good_pod()) == []


@pytest.mark.parametrize("fault", FAULTS)
def test_the_pod_check_finds_each_fault(fault):
    pod = good_pod()
    FAULTS[fault](pod)
    assert pod_problems(pod), f"{fault} was not found"


def test_the_pod_check_takes_security_from_the_pod_level_and_init_containers():
    pod = good_pod()
    context = pod["containers"][0]["securityContext"]
    pod["securityContext"] = {
        key: context.pop(key) for key in ("runAsNonRoot", "runAsUser", "seccompProfile")
    }
    assert pod_problems(pod) == []
    pod["initContainers"] = [{"name": "init", "image": "busybox:1.37"}]
    assert any(problem.startswith("init: ") for problem in pod_problems(pod))


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("imgclf:0.1.0", True),
        ("registry.example.com:5000/imgclf:0.1.0", True),
        ("postgres@sha256:" + "0" * 64, True),
        ("imgclf", False),
        ("imgclf:latest", False),
        ("registry.example.com:5000/imgclf", False),
        (None, False),
    ],
)
def test_image_pinning(image, pinned):
    assert (image_problem(image) is None) is pinned


def test_label_selectors():
    labels = {"app.kubernetes.io/component": "api", "tier": "web"}
    assert selects({"matchLabels": {"tier": "web"}}, labels)
    assert not selects({"matchLabels": {"tier": "db"}}, labels)
    expression = {"key": "app.kubernetes.io/component", "operator": "In", "values": ["api"]}
    assert selects({"matchExpressions": [expression]}, labels)
    assert not selects({"matchExpressions": [{**expression, "operator": "NotIn"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, labels)
    assert selects({}, labels) and not selects(None, labels)


def test_the_network_policy_checks_fail_without_a_default_deny_or_with_open_rules():
    deny = {"metadata": {"name": "deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    assert not is_default_deny(deny)
    open_rule = {
        "metadata": {"name": "open"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]},
    }
    assert policy_problems([deny]) == ["no default-deny NetworkPolicy"]
    deny["spec"]["policyTypes"].append("Egress")
    assert is_default_deny(deny) and policy_problems([deny]) == []
    assert len(policy_problems([deny, open_rule])) == 2  # from anyone, on every port


def test_the_custom_resource_check_fails_without_required_fields():
    scaled = {"kind": "ScaledObject", "metadata": {"name": "w"}, "spec": {"triggers": [{}]}}
    assert len(custom_resource_problems(scaled)) == 2  # no target, an empty trigger
    auth = {"kind": "TriggerAuthentication", "metadata": {"name": "a"}, "spec": {}}
    assert custom_resource_problems(auth)


def test_strict_validation_rejects_an_unknown_field_and_a_wrong_type(kubernetes_validate):
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "x", "image": "x:1"}]},
            },
        },
    }
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)


# -- the manifests


def test_the_kustomizations_are_a_base_two_overlays_and_keda_apart():
    assert KUSTOMIZATIONS == [
        "base", "optional/keda", "overlays/production", "overlays/single-node",
    ]  # fmt: skip


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_kustomization_renders_objects_valid_for_kubernetes(name, kubernetes_validate):
    docs = render(name)
    assert docs, f"{name} renders nothing"
    problems = []
    for doc in docs:
        label = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc["apiVersion"].split("/")[0] in CUSTOM_GROUPS:
            problems += custom_resource_problems(doc)
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(map(str, error.path))
            problems.append(f"{label}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{label}: {error.message}")
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "imgclf", f"{label} is not in imgclf"
    assert problems == []


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_custom_resources_stay_out_of_the_base_and_the_overlays(name):
    groups = {doc["apiVersion"].split("/")[0] for doc in render(name)}
    assert not groups & CUSTOM_GROUPS


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_workload_is_hardened_bounded_pinned_and_gets_secrets_as_files(name):
    problems = [
        f"{doc['kind']}/{doc['metadata']['name']}: {problem}"
        for doc in workloads(render(name))
        for problem in pod_problems(pod_template(doc)["spec"])
    ]
    assert problems == []


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_no_secret_value_is_in_the_manifests(name):
    docs = render(name)
    assert not find(docs, "Secret"), "Secrets are created by hand (README.md), not kept here"
    for config in find(docs, "ConfigMap"):
        for key, value in (config.get("data") or {}).items():
            assert not SECRET_NAME.search(key), f"{config['metadata']['name']}: {key}"
            assert not PASSWORD_IN_URL.search(value), f"{config['metadata']['name']}: {key}"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_every_mounted_secret_key_is_one_the_readme_creates(name):
    readme = (K8S / "README.md").read_text()
    created = set(re.findall(r"--from-file=([\w-]+)=", readme))
    secrets = set(re.findall(r"create secret generic ([\w-]+)", readme))
    for doc in workloads(render(name)):
        for volume in pod_template(doc)["spec"].get("volumes", []):
            if secret := volume.get("secret"):
                assert secret["secretName"] in secrets, secret["secretName"]
                assert {item["key"] for item in secret["items"]} <= created, volume


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_each_role_runs_its_command_with_the_shared_settings(name):
    docs = render(name)
    for deployment, role in ROLES.items():
        assert main_container(docs, "Deployment", deployment)["args"] == [role]
    assert main_container(docs, "Job", "imgclf-migrate")["args"] == ["upgrade"]
    for deployment in ("imgclf-api", "imgclf-worker"):
        container = main_container(docs, "Deployment", deployment)
        assert {"name": "shared", "mountPath": SHARED} in container["volumeMounts"]
        variables = env(container)
        for key, folder in (("DATA_DIR", "data"), ("MODELS_DIR", "models")):
            assert variables[key] == f"{SHARED}/{folder}", (deployment, key)
        assert variables["REPORTS_DIR"] == f"{SHARED}/reports"
        assert variables["HOME"] == "/tmp"
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    api = env(main_container(docs, "Deployment", "imgclf-api"))
    assert api["WORKERS"] == "2" and api["TRUSTED_PROXIES"] == "1"
    dashboard = env(main_container(docs, "Deployment", "imgclf-dashboard"))
    assert dashboard["IMGCLF_API_URL"] == "http://imgclf-api:8000"
    assert dashboard["DASHBOARD_PORT"] == "5006" and dashboard["HOST"] == "0.0.0.0"
    for key in ("DASHBOARD_PASSWORD_FILE", "DASHBOARD_COOKIE_SECRET_FILE"):
        assert dashboard[key].startswith("/run/secrets/imgclf/"), key
    service = one(docs, "Service", "imgclf-api")
    assert [port["port"] for port in service["spec"]["ports"]] == [8000]


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_api_has_probes_an_autoscaler_and_a_disruption_budget(name):
    docs = render(name)
    api = one(docs, "Deployment", "imgclf-api")
    labels = pod_template(api)["metadata"]["labels"]
    container = main_container(docs, "Deployment", "imgclf-api")
    commands = {
        probe: container[probe]["exec"]["command"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert commands["readinessProbe"] == ["imgclf-healthcheck", "--ready"]
    assert commands["livenessProbe"] == ["imgclf-healthcheck"]
    assert commands["startupProbe"][0] == "imgclf-healthcheck"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "loading takes long"

    (hpa,) = find(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "imgclf-api")
    assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "cpu" in container["resources"]["requests"]  # what the utilisation is relative to

    (budget,) = find(docs, "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"
    assert selects(budget["spec"]["selector"], labels)
    assert selects({"matchLabels": one(docs, "Service", "imgclf-api")["spec"]["selector"]}, labels)
    for other in ("imgclf-worker", "imgclf-dashboard"):
        other_labels = pod_template(one(docs, "Deployment", other))["metadata"]["labels"]
        assert not selects(budget["spec"]["selector"], other_labels), other

    (ingress,) = find(docs, "Ingress")
    backends = [
        path["backend"]["service"]["name"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert "imgclf-api" in backends


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_network_is_denied_by_default_then_opened_per_role(name):
    docs = render(name)
    policies = find(docs, "NetworkPolicy")
    assert policy_problems(policies) == []
    pods = {
        doc["metadata"]["name"]: pod_template(doc)["metadata"]["labels"] for doc in workloads(docs)
    }
    for workload, labels in pods.items():
        if labels["app.kubernetes.io/component"] != "database":
            assert allows(policies, labels, "egress", 53), f"{workload}: no DNS"
    for client in database_clients(docs):
        labels = pod_template(client)["metadata"]["labels"]
        assert allows(policies, labels, "egress", 5432), client["metadata"]["name"]
    assert allows(policies, pods["imgclf-api"], "ingress", 8000)
    assert allows(policies, pods["imgclf-dashboard"], "egress", 8000)
    assert allows(policies, pods["imgclf-dashboard"], "ingress", 5006)
    assert not allows(policies, pods["imgclf-dashboard"], "egress", 5432), "no database"
    assert not allows(policies, pods["imgclf-worker"], "ingress", 8000), "the worker serves none"
    if "imgclf-db" in pods:
        rules = allows(policies, pods["imgclf-db"], "ingress", 5432)
        assert rules and all(
            peer == {"podSelector": {"matchLabels": {"imgclf.io/database-client": "true"}}}
            for rule in rules
            for peer in rule["from"]
        ), "the database takes its clients only"
        assert not allows(policies, pods["imgclf-db"], "egress", 53)


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_shared_volume_is_read_write_many_but_on_a_single_node(name):
    claim = one(render(name), "PersistentVolumeClaim", "imgclf-shared")
    expected = "ReadWriteOnce" if name == "overlays/single-node" else "ReadWriteMany"
    assert claim["spec"]["accessModes"] == [expected]


def test_production_has_no_database_and_reads_its_url_from_a_file():
    docs = render("overlays/production")
    assert not find(docs, "StatefulSet") and not find(docs, "Service", "imgclf-db")
    clients = database_clients(docs)
    assert {doc["metadata"]["name"] for doc in clients} == {
        "imgclf-api", "imgclf-worker", "imgclf-migrate",
    }  # fmt: skip
    for client in clients:
        pod = pod_template(client)["spec"]
        container = pod["containers"][0]
        variables = env(container)
        assert "DATABASE_URL" not in variables and "DATABASE_PASSWORD_FILE" not in variables
        assert _secret_files(container, pod)[variables["DATABASE_URL_FILE"]] == "imgclf-database"
    egress = one(docs, "NetworkPolicy", "imgclf-database-clients")["spec"]["egress"]
    assert [peer for rule in egress for peer in rule["to"]] == [
        {"ipBlock": {"cidr": "203.0.113.0/24"}}
    ]
    api = one(docs, "HorizontalPodAutoscaler", "imgclf-api")["spec"]
    base = one(render("base"), "HorizontalPodAutoscaler", "imgclf-api")["spec"]
    assert api["minReplicas"] > base["minReplicas"] and api["maxReplicas"] > base["maxReplicas"]
    assert main_container(docs, "Deployment", "imgclf-api")["image"].startswith("registry.")


def test_the_single_node_overlay_runs_postgresql_beside_the_app():
    docs = render("overlays/single-node")
    database = one(docs, "StatefulSet", "imgclf-db")
    pod = pod_template(database)["spec"]
    container = pod["containers"][0]
    assert container["image"].startswith("postgres:15.")
    assert _effective(container, pod, "runAsUser") == 999
    variables = env(container)
    assert _secret_files(container, pod)[variables["POSTGRES_PASSWORD_FILE"]] == "imgclf-secrets"
    data = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}["data"]
    assert variables["PGDATA"].startswith(f"{data}/"), "PGDATA: a subdirectory of the volume"
    assert [claim["metadata"]["name"] for claim in database["spec"]["volumeClaimTemplates"]] == [
        "data"
    ]
    for path in ("/var/run/postgresql", "/tmp"):
        assert path in {mount["mountPath"] for mount in container["volumeMounts"]}, path
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"][0] == "pg_isready", probe
    service = one(docs, "Service", "imgclf-db")
    assert service["spec"]["clusterIP"] == "None"
    assert database["spec"]["serviceName"] == "imgclf-db"
    for client in database_clients(docs):
        pod = pod_template(client)["spec"]
        variables = env(pod["containers"][0])
        assert variables["DATABASE_URL"] == "postgresql+psycopg://imgclf@imgclf-db:5432/imgclf"
        password = variables["DATABASE_PASSWORD_FILE"]
        assert _secret_files(pod["containers"][0], pod)[password] == "imgclf-secrets"


def test_keda_scales_the_worker_on_the_jobs_table():
    docs = render("optional/keda")
    (scaled,) = find(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "imgclf-worker"
    assert one(render("base"), "Deployment", "imgclf-worker")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    query = trigger["metadata"]["query"]
    assert re.search(rf"\bFROM {jobs.name} WHERE state\b", query) and "state" in jobs.c
    # the live jobs: a claimed job is `running`, and counting queued ones alone would let KEDA
    # stop a worker in the middle of its training
    assert LIVE_SQL in query
    (auth,) = find(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
