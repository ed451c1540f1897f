"""deploy/kubernetes: every manifest is valid against the Kubernetes API schema and asks for no privileges.

Two independent checks of the schema: ``kubernetes-validate`` (the API's OpenAPI schema as JSON Schema, strict:
unknown fields fail) and the official ``kubernetes`` client's models (deserialised, then serialised back: a field
the model does not know is dropped, so the round trip differs). Then the rules the issue sets for the pod spec,
and what snapfs itself makes of the manifests (its flags, the Dockerfile in the ConfigMap).
"""
from __future__ import annotations

import copy
import glob
import inspect
import json
import os

import pytest

yaml = pytest.importorskip("yaml")
kubernetes = pytest.importorskip("kubernetes")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from kubernetes.client import ApiClient  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFESTS = sorted(glob.glob(os.path.join(REPO, "deploy", "kubernetes", "*.yaml")))
K8S_VERSION = "1.30"  # any supported release: these manifests use only long-stable fields
MODELS = {("batch/v1", "Job"): "V1Job", ("v1", "ConfigMap"): "V1ConfigMap", ("v1", "Secret"): "V1Secret",
          ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim"}
# Capabilities a default container has that snapfs needs: chown files, switch to a step's user, chroot.
NEEDED_CAPS = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "SYS_CHROOT"}


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in MANIFESTS:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    out.append((f"{os.path.basename(path)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


DOCS = documents()
JOBS = [(name, doc) for name, doc in DOCS if doc["kind"] == "Job"]


def test_the_expected_manifests_exist():
    assert [os.path.basename(p) for p in MANIFESTS] == ["job-git-cache.yaml", "job-s3.yaml"]
    assert {name.split(":")[0] for name, _ in JOBS} == {"job-git-cache.yaml", "job-s3.yaml"}


def schema_errors(doc: dict) -> str | None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc)
    return None


def model_round_trip(doc: dict) -> dict:
    """Deserialise into the client's model class (type checks, required fields) and serialise back."""
    api = ApiClient()
    model = MODELS[(doc["apiVersion"], doc["kind"])]
    if "response_text" in inspect.signature(api.deserialize).parameters:  # client 34 and later
        obj = api.deserialize(json.dumps(doc), model, "application/json")
    else:

        class Response:
            data = json.dumps(doc)

        obj = api.deserialize(Response(), model)
    return api.sanitize_for_serialization(obj)


@pytest.mark.parametrize("name, doc", DOCS, ids=[n for n, _ in DOCS])
def test_manifest_matches_the_api_schema(name, doc):
    assert schema_errors(doc) is None


@pytest.mark.parametrize("name, doc", DOCS, ids=[n for n, _ in DOCS])
def test_manifest_round_trips_through_the_client_models(name, doc):
    assert model_round_trip(doc) == doc  # an unknown or misspelt key would be missing here


def test_the_checks_catch_unknown_fields_and_wrong_types():
    _, job = JOBS[0]
    typo = copy.deepcopy(job)
    typo["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalaton"] = False
    assert "allowPrivilegeEscalaton" in schema_errors(typo)
    assert model_round_trip(typo) != typo
    wrong = copy.deepcopy(job)
    wrong["spec"]["backoffLimit"] = "two"
    assert schema_errors(wrong) is not None
    missing = copy.deepcopy(job)
    del missing["spec"]["template"]["spec"]["containers"][0]["name"]
    assert schema_errors(missing) is not None
    with pytest.raises(ValueError, match="name"):
        model_round_trip(missing)


# --- privileges --------------------------------------------------------------------------------------------

def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"], *pod.get("ephemeralContainers", [])]


def privilege_problems(job: dict) -> list[str]:
    """Every way the Job asks for more than a default, unprivileged pod."""
    problems = []
    spec = job["spec"]
    pod = spec["template"]["spec"]
    if pod.get("restartPolicy") != "Never":
        problems.append("restartPolicy is not Never")
    if not isinstance(spec.get("backoffLimit"), int):
        problems.append("no backoffLimit")
    for key in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        if pod.get(key) is (key != "hostUsers"):
            problems.append(f"{key} set")
    for v in pod.get("volumes", []):
        if "hostPath" in v:
            problems.append(f"volume {v['name']} is a hostPath")
    pod_sc = pod.get("securityContext", {})
    for c in containers(pod):
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            problems.append(f"container {c['name']} is privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {c['name']} does not set allowPrivilegeEscalation: false")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"container {c['name']} adds capabilities {sc['capabilities']['add']}")
        dropped = set(sc.get("capabilities", {}).get("drop", []))
        if "ALL" in dropped or dropped & NEEDED_CAPS:
            problems.append(f"container {c['name']} drops capabilities snapfs needs: {sorted(dropped)}")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"container {c['name']} asks for an unmasked /proc")
        for scope in (pod_sc, sc):
            if scope.get("seccompProfile", {}).get("type") == "Unconfined":
                problems.append(f"container {c['name']} runs without seccomp")
            if scope.get("appArmorProfile", {}).get("type") == "Unconfined":
                problems.append(f"container {c['name']} runs without AppArmor")
    return problems


@pytest.mark.parametrize("name, job", JOBS, ids=[n for n, _ in JOBS])
def test_job_asks_for_no_privileges(name, job):
    assert privilege_problems(job) == []
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False


def test_the_privilege_rules_bite():
    _, job = JOBS[0]
    bad = copy.deepcopy(job)
    pod = bad["spec"]["template"]["spec"]
    pod["restartPolicy"] = "OnFailure"
    pod["hostPID"] = True
    pod["volumes"].append({"name": "sock", "hostPath": {"path": "/var/run/docker.sock"}})
    sc = pod["containers"][0]["securityContext"]
    sc.update(privileged=True, allowPrivilegeEscalation=True, capabilities={"add": ["SYS_ADMIN"], "drop": ["ALL"]})
    del bad["spec"]["backoffLimit"]
    assert schema_errors(bad) is None  # all valid Kubernetes: only the rules catch it
    assert privilege_problems(bad) == [
        "restartPolicy is not Never", "no backoffLimit", "hostPID set", "volume sock is a hostPath",
        "container snapfs is privileged", "container snapfs does not set allowPrivilegeEscalation: false",
        "container snapfs adds capabilities ['SYS_ADMIN']",
        "container snapfs drops capabilities snapfs needs: ['ALL']"]


# --- resources -----------------------------------------------------------------------------------------------

_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
          "Ti": 2**40, "m": 10**-3}


def quantity(text) -> float:
    """A Kubernetes resource quantity (``4Gi``, ``500m``, ``2``) as a number."""
    text = str(text)
    digits = text.rstrip("kMGTimn")
    return float(digits) * _UNITS[text[len(digits):]]


def resource_problems(job: dict) -> list[str]:
    """A build container must bound what it takes from the node: memory and the disk of its writable layer."""
    problems = []
    for c in containers(job["spec"]["template"]["spec"]):
        res = c.get("resources", {})
        for kind in ("memory", "ephemeral-storage"):
            req, lim = res.get("requests", {}).get(kind), res.get("limits", {}).get(kind)
            if req is None or lim is None:
                problems.append(f"container {c['name']}: no {kind} request and limit")
            elif quantity(req) > quantity(lim):
                problems.append(f"container {c['name']}: {kind} request {req} above its limit {lim}")
    return problems


@pytest.mark.parametrize("name, job", JOBS, ids=[n for n, _ in JOBS])
def test_job_bounds_memory_and_ephemeral_storage(name, job):
    assert resource_problems(job) == []
    res = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert quantity(res["limits"]["ephemeral-storage"]) >= 8 * 2**30  # a Debian build with gcc fits


def test_the_resource_rules_bite():
    _, job = JOBS[0]
    bad = copy.deepcopy(job)
    res = bad["spec"]["template"]["spec"]["containers"][0]["resources"]
    del res["limits"]["ephemeral-storage"]
    res["requests"]["memory"] = "8Gi"
    assert schema_errors(bad) is None
    assert resource_problems(bad) == ["container snapfs: memory request 8Gi above its limit 4Gi",
                                      "container snapfs: no ephemeral-storage request and limit"]
    assert quantity("500m") == 0.5 and quantity("4Gi") == 4 * 2**30 and quantity(2) == 2


# --- what snapfs makes of them -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, job", JOBS, ids=[n for n, _ in JOBS])
def test_job_arguments_are_snapfs_build_flags(name, job):
    from snapfs.cli.main import make_parser
    from snapfs.cli.build import normalize_booleans

    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["image"].endswith("/snapfs/executor:0.1.0")
    args = make_parser().parse_args(["build", *normalize_booleans(c["args"])])
    assert args.destination and args.context
    env = {e["name"] for e in c.get("env", [])}
    assert "SNAPFS_DOCKER_CONFIG_JSON" in env  # credentials in memory, never a readable file


def test_configmap_dockerfile_plans():
    from snapfs.frontend.plan import plan_build

    (doc,) = [d for _, d in DOCS if d["kind"] == "ConfigMap"]
    plan = plan_build(doc["data"]["Dockerfile"])
    assert [s.name for s in plan.stages] == ["build", None]
    assert list(plan.needed) == [0, 1]


def test_configmap_is_mounted_where_the_job_reads_the_dockerfile():
    name, job = [(n, j) for n, j in JOBS if n.startswith("job-s3")][0]
    c = job["spec"]["template"]["spec"]["containers"][0]
    dockerfile = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--dockerfile=")][0]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    (vol,) = [n for n, v in volumes.items() if "configMap" in v]
    assert dockerfile == os.path.join(mounts[vol], "Dockerfile")
    assert [a for a in c["args"] if a.startswith("--context=s3://")]


# --- deploy/README.md: reusing a kubernetes.io/dockerconfigjson Secret ---------------------------------------

def _readme_secret_snippets() -> list[dict]:
    with open(os.path.join(REPO, "deploy", "README.md")) as f:
        text = f.read()
    part = text[text.index("**Reusing an image pull Secret.**"):]
    part = part[:part.index("\n**", 10)] if "\n**" in part[10:] else part
    blocks = part.split("```yaml\n")[1:]
    return [yaml.safe_load(b.split("```")[0]) for b in blocks]


def test_readme_dockerconfigjson_secret_snippets_fit_the_job():
    env_snippet, volume_snippet = _readme_secret_snippets()
    _, job = [(n, j) for n, j in JOBS if n.startswith("job-s3")][0]
    # As the variable: the Secret's .dockerconfigjson key replaces the Job's registry-credentials reference.
    as_env = copy.deepcopy(job)
    c = as_env["spec"]["template"]["spec"]["containers"][0]
    c["env"] = [e for e in c["env"] if e["name"] != "SNAPFS_DOCKER_CONFIG_JSON"] + env_snippet["env"]
    assert schema_errors(as_env) is None and model_round_trip(as_env) == as_env
    assert env_snippet["env"][0]["valueFrom"]["secretKeyRef"]["key"] == ".dockerconfigjson"
    # As a file: .dockerconfigjson becomes config.json in the directory DOCKER_CONFIG names in the image.
    as_file = copy.deepcopy(job)
    pod = as_file["spec"]["template"]["spec"]
    c = pod["containers"][0]
    c["env"] = [e for e in c["env"] if e["name"] != "SNAPFS_DOCKER_CONFIG_JSON"]
    (snippet_c,) = volume_snippet["containers"]
    assert snippet_c["name"] == c["name"]
    c["volumeMounts"] += snippet_c["volumeMounts"]
    pod["volumes"] += volume_snippet["volumes"]
    assert schema_errors(as_file) is None and model_round_trip(as_file) == as_file
    assert privilege_problems(as_file) == []
    (vol,) = volume_snippet["volumes"]
    (item,) = vol["secret"]["items"]
    (mount,) = [m for m in snippet_c["volumeMounts"] if m["name"] == vol["name"]]
    with open(os.path.join(REPO, "deploy", "Dockerfile")) as f:
        docker_config = [w.split("=", 1)[1] for w in f.read().split() if w.startswith("DOCKER_CONFIG=")]
    assert set(docker_config) == {"/snapfs/.docker/"}
    assert (item["key"], os.path.join(mount["mountPath"], item["path"])) == \
        (".dockerconfigjson", os.path.join(docker_config[0], "config.json"))
