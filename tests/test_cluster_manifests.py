"""Checks of the deployment files under cluster/, without a Kubernetes cluster.

1. Every RayCluster/RayJob document under cluster/ validates against the openAPIV3Schema of
   its CRD version, from the KubeRay CRDs in $RLHF_KUBERAY_CRDS (default <repo>/../shared/kuberay).
   The CRD schema is turned into JSON Schema (Draft 7) the way the API server reads it:
   - `x-kubernetes-int-or-string: true` accepts an integer or a string;
   - `nullable: true` also accepts null;
   - objects with `properties` reject unknown fields (what `kubectl apply` does with its
     default --validate=strict), unless `x-kubernetes-preserve-unknown-fields` is set;
   - `x-kubernetes-list-type: set` items are unique, `map` items are unique by their keys;
   - `format: int32/int64` values must fit.
   Not checked: CEL rules (`x-kubernetes-validations`), and the API server's defaulting, so a
   required field that has a default (a worker group's minReplicas/maxReplicas) must be written.
2. The image of every Ray container is the one cluster/docker/Dockerfile documents building
   (same repository), and rayVersion is the Dockerfile's RAY_VERSION.
3. Every RayJob entrypoint runs `python -m rlhf.run CONFIG ...` with a CONFIG that is an
   absolute path into the image's configs/ and exists in the repo, loads with rlhf.config (so
   the override keys are real), resumes (`checkpoint.resume=auto`) and writes to a volume
   shared across retries; and the cluster the RayJob creates holds the plan rlhf makes from
   that config, without a spare GPU pod.
4. Locked-down clusters: every Ray pod and the submitter pass the "restricted" pod-security
   level and mount no service-account token; images are immutable references (per-build tag
   or digest); the wandb key is on the head only; the head exposes only the ports it uses;
   RayJobs have a config-derived activeDeadlineSeconds and delete their workers when done.
5. The Dockerfile installs the locked dependencies before it copies the source, from a base
   pinned by digest, with an allow-list build context; the Slurm script keeps its dashboard
   on the head's address and deletes its token.
Negative tests break a real manifest on purpose and expect validation to fail.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
CRD_DIR = Path(os.environ.get("RLHF_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay"))
RAY_KINDS = ("RayCluster", "RayJob")
# KubeRay treats containers[0] of each Ray pod template as the Ray container.
RAY_CONTAINER = 0
# Where the Dockerfile puts the repo; job entrypoints name configs there.
IMAGE_REPO_DIR = "/home/ray/rlhf"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------- manifests


def _manifest_docs() -> list[tuple[str, dict]]:
    """(id, document) for every RayCluster/RayJob YAML document under cluster/."""
    docs = []
    for path in sorted([*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")]):
        for index, doc in enumerate(yaml.load_all(path.read_text(), Loader=_Loader)):
            if isinstance(doc, dict) and doc.get("kind") in RAY_KINDS:
                name = (doc.get("metadata") or {}).get("name", "?")
                docs.append((f"{path.relative_to(REPO)}#{index}:{doc['kind']}/{name}", doc))
    return docs


MANIFESTS = _manifest_docs()
MANIFEST_IDS = [doc_id for doc_id, _ in MANIFESTS]


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"].get("rayClusterSpec", {})


def _ray_pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of the head, every worker group and a custom RayJob submitter."""
    spec = _cluster_spec(doc)
    pods = [("headGroupSpec", spec["headGroupSpec"]["template"]["spec"])]
    for group in spec.get("workerGroupSpecs", []):
        pods.append((f"workerGroupSpecs[{group['groupName']}]", group["template"]["spec"]))
    if doc["kind"] == "RayJob" and doc["spec"].get("submitterPodTemplate"):
        pods.append(("submitterPodTemplate", doc["spec"]["submitterPodTemplate"]["spec"]))
    return pods


def test_manifests_are_found():
    kinds = [doc["kind"] for _, doc in MANIFESTS]
    assert kinds.count("RayCluster") >= 1 and kinds.count("RayJob") >= 2, MANIFEST_IDS


# ---------------------------------------------------------------- CRD schemas -> JSON Schema

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
FORMATS = jsonschema.FormatChecker(formats=())
for _name, (_lo, _hi) in _INT_RANGES.items():
    FORMATS.checks(_name)(lambda v, lo=_lo, hi=_hi: not isinstance(v, int) or isinstance(v, bool) or lo <= v <= hi)

# ObjectMeta is not in a CRD's schema (the API server checks it itself); the parts that matter here.
_DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": _DNS1123_SUBDOMAIN},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def k8s_to_jsonschema(node: dict) -> dict:
    """A structural CRD schema (OpenAPI v3 + x-kubernetes-*) as strict Draft 7 JSON Schema."""
    out = {key: value for key, value in node.items() if not key.startswith("x-kubernetes-") and key != "nullable"}
    if "properties" in node:
        out["properties"] = {name: k8s_to_jsonschema(sub) for name, sub in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = k8s_to_jsonschema(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        out["items"] = k8s_to_jsonschema(node["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [k8s_to_jsonschema(sub) for sub in node[key]]
    if "not" in node:
        out["not"] = k8s_to_jsonschema(node["not"])
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        if "anyOf" not in out:
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if node.get("x-kubernetes-list-type") == "map" and node.get("x-kubernetes-list-map-keys"):
        out["listMapKeys"] = list(node["x-kubernetes-list-map-keys"])
    return out


def _unique_by_keys(validator, keys, instance, schema):
    """`x-kubernetes-list-type: map`: no two items share the same values of the map keys."""
    if not validator.is_type(instance, "array"):
        return
    seen: dict[tuple, int] = {}
    for index, item in enumerate(instance):
        if isinstance(item, dict):
            key = tuple(repr(item.get(k)) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(
                    f"items {seen[key]} and {index} have the same {', '.join(keys)} ({', '.join(key)})"
                )
            seen.setdefault(key, index)


K8sValidator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"listMapKeys": _unique_by_keys})


@lru_cache(maxsize=None)
def _crds() -> dict[tuple[str, str], dict]:
    """{(apiVersion, kind): CRD version entry} for every CRD document in CRD_DIR."""
    found = {}
    for path in sorted([*CRD_DIR.glob("*.yaml"), *CRD_DIR.glob("*.yml")]):
        for doc in yaml.load_all(path.read_text(), Loader=_Loader):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                spec = doc["spec"]
                for version in spec["versions"]:
                    found[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = version
    return found


@lru_cache(maxsize=None)
def _validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    version = _crds().get((api_version, kind))
    assert version is not None, f"no CRD in {CRD_DIR} serves {kind} {api_version}"
    assert version.get("served", False), f"{kind} {api_version} is not served by the CRD"
    schema = k8s_to_jsonschema(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = _OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    K8sValidator.check_schema(schema)
    return K8sValidator(schema, format_checker=FORMATS)


def schema_errors(doc: dict) -> list[str]:
    """Every place where `doc` breaks its CRD's schema, as 'path: message' lines."""
    validator = _validator(doc.get("apiVersion", ""), doc.get("kind", ""))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


@pytest.fixture(scope="module")
def crds_present():
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found: {CRD_DIR} does not exist (set RLHF_KUBERAY_CRDS to the dir with ray.io_*.yaml)")


@pytest.mark.parametrize("doc", [doc for _, doc in MANIFESTS], ids=MANIFEST_IDS)
def test_manifest_matches_crd(crds_present, doc):
    assert not _crds()[(doc["apiVersion"], doc["kind"])].get("deprecated"), f"{doc['apiVersion']} is deprecated"
    assert schema_errors(doc) == []


def _first(kind: str) -> dict:
    return copy.deepcopy(next(doc for _, doc in MANIFESTS if doc["kind"] == kind))


def _break_replicas(doc):
    _cluster_spec(doc)["workerGroupSpecs"][0]["replicas"] = "two"


def _drop_head(doc):
    del _cluster_spec(doc)["headGroupSpec"]


def _drop_group_name(doc):
    del _cluster_spec(doc)["workerGroupSpecs"][0]["groupName"]


def _int_start_param(doc):
    _cluster_spec(doc)["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be the string "0"


def _misspelled_field(doc):
    doc["spec"]["shutdownAfterJobFinish"] = True


def _bad_quantity(doc):
    _ray_pod_specs(doc)[0][1]["containers"][RAY_CONTAINER]["resources"]["limits"]["cpu"] = ["8"]


def _duplicate_container(doc):
    containers = _ray_pod_specs(doc)[0][1]["containers"]
    containers.append(copy.deepcopy(containers[0]))


def _int32_overflow(doc):
    _cluster_spec(doc)["workerGroupSpecs"][0]["maxReplicas"] = 2**31


def _wrong_enum(doc):
    _cluster_spec(doc)["authOptions"] = {"mode": "password"}


def _label_not_string(doc):
    doc["metadata"]["labels"] = {"version": 2}


def _unknown_deletion_policy(doc):
    doc["spec"]["deletionStrategy"]["deletionRules"][0]["policy"] = "DeletePods"


def _capabilities_not_a_list(doc):
    _ray_pod_specs(doc)[0][1]["containers"][RAY_CONTAINER]["securityContext"]["capabilities"]["drop"] = "ALL"


def _misspelled_pod_security_field(doc):
    _ray_pod_specs(doc)[0][1]["securityContext"]["runAsNonroot"] = True


@pytest.mark.parametrize(
    "kind, breakage, where",
    [
        ("RayCluster", _break_replicas, "replicas"),
        ("RayCluster", _drop_head, "headGroupSpec"),
        ("RayJob", _drop_group_name, "groupName"),
        ("RayCluster", _int_start_param, "num-cpus"),
        ("RayJob", _misspelled_field, "shutdownAfterJobFinish"),
        ("RayJob", _bad_quantity, "cpu"),
        ("RayCluster", _duplicate_container, "containers"),
        ("RayCluster", _int32_overflow, "maxReplicas"),
        ("RayJob", _wrong_enum, "mode"),
        ("RayCluster", _label_not_string, "labels"),
        ("RayJob", _unknown_deletion_policy, "policy"),
        ("RayCluster", _capabilities_not_a_list, "drop"),
        ("RayJob", _misspelled_pod_security_field, "runAsNonroot"),
    ],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_broken_manifest_fails_validation(crds_present, kind, breakage, where):
    doc = _first(kind)
    assert schema_errors(doc) == []
    breakage(doc)
    errors = schema_errors(doc)
    assert errors, f"{breakage.__name__} was accepted"
    assert any(where in line for line in errors), errors


def test_int_or_string_without_any_of():
    """A bare `x-kubernetes-int-or-string` node accepts ints and strings, nothing else."""
    validator = K8sValidator(k8s_to_jsonschema({"type": "object", "properties": {"port": {"x-kubernetes-int-or-string": True}}}))
    assert validator.is_valid({"port": 8265}) and validator.is_valid({"port": "dashboard"})
    assert not validator.is_valid({"port": 1.5}) and not validator.is_valid({"port": None})
    assert not validator.is_valid({"prot": 8265})


# ---------------------------------------------------------------- image


def _dockerfile_image() -> str:
    """The image the Dockerfile's build instructions tag (`docker build ... -t IMAGE`)."""
    tags = set(re.findall(r"^#.*\bdocker build\b.*?\s-t\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE))
    assert len(tags) == 1, f"{DOCKERFILE} should document exactly one `docker build -t IMAGE`, found {tags}"
    return tags.pop()


def image_repository(ref: str) -> str:
    """'registry:5000/org/name:tag@sha256:..' -> 'registry:5000/org/name'."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return ref[: len(ref) - len(last)] + last.split(":", 1)[0]


def test_image_repository_parsing():
    assert image_repository("ghcr.io/org/rlhf:0.1.0") == "ghcr.io/org/rlhf"
    assert image_repository("localhost:5000/rlhf") == "localhost:5000/rlhf"
    assert image_repository("localhost:5000/rlhf:1@sha256:abc") == "localhost:5000/rlhf"


@pytest.mark.parametrize("doc", [doc for _, doc in MANIFESTS], ids=MANIFEST_IDS)
def test_manifest_uses_the_dockerfile_image(doc):
    expected = image_repository(_dockerfile_image())
    for where, pod in _ray_pod_specs(doc):
        image = pod["containers"][RAY_CONTAINER].get("image", "")
        assert image_repository(image) == expected, f"{where}: image {image!r} is not {expected} (cluster/docker/Dockerfile)"
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert ray_version, "cluster/docker/Dockerfile: no `ARG RAY_VERSION=`"
    assert _cluster_spec(doc).get("rayVersion") == ray_version.group(1)


# ---------------------------------------------------------------- RayJob entrypoints


def repo_config(path: str) -> str | None:
    """'/home/ray/rlhf/configs/x.yaml' -> 'configs/x.yaml'; None for anything else."""
    prefix = IMAGE_REPO_DIR + "/configs/"
    if not path.startswith(prefix) or ".." in Path(path).parts:
        return None
    return path[len(IMAGE_REPO_DIR) + 1 :]


def entrypoint_problems(entrypoint: str, repo: Path, head_pod: dict | None = None) -> list[str]:
    """What is wrong with a RayJob entrypoint for this repo (empty when nothing)."""
    if re.search(r"[;&|<>`]|\$\(", entrypoint):
        # KubeRay pastes the entrypoint unquoted into the submitter's shell command.
        return [f"not a single command: {entrypoint!r}"]
    argv = shlex.split(entrypoint)
    if len(argv) < 4 or Path(argv[0]).name not in ("python", "python3") or argv[1:3] != ["-m", "rlhf.run"]:
        return [f"does not start with `python -m rlhf.run CONFIG`: {entrypoint!r}"]
    overrides = [a for a in argv[4:] if not a.startswith("--")]
    config = repo_config(argv[3])
    problems = []
    if config is None:
        # Absolute: a relative path would depend on the directory the job happens to start in.
        problems.append(f"config {argv[3]!r} is not an absolute path under {IMAGE_REPO_DIR}/configs/")
    elif not (repo / config).is_file():
        problems.append(f"config {config!r} does not exist in {repo}")
    settings = dict(item.split("=", 1) for item in overrides if "=" in item)
    if settings.get("checkpoint.resume") != "auto":
        problems.append("no checkpoint.resume=auto: a retried attempt would start over")
    output_dir = settings.get("logging.output_dir", "")
    if head_pod is not None:
        claims = {v["name"] for v in head_pod.get("volumes", []) if "persistentVolumeClaim" in v}
        mounts = [m["mountPath"] for m in head_pod["containers"][RAY_CONTAINER].get("volumeMounts", []) if m["name"] in claims]
        if not any(output_dir.startswith(mount.rstrip("/") + "/") for mount in mounts):
            problems.append(f"logging.output_dir={output_dir!r} is not on a PVC mounted in the head pod {mounts}")
    if not problems:
        from rlhf.config import ConfigError, load_config

        try:
            # Third argument off: model/data paths name the cluster's volume, absent here.
            load_config(repo / config, overrides, False)
        except ConfigError as err:
            problems.append(f"config does not load: {err}")
    return problems


RAYJOBS = [(doc_id, doc) for doc_id, doc in MANIFESTS if doc["kind"] == "RayJob"]


@pytest.mark.parametrize("doc", [doc for _, doc in RAYJOBS], ids=[doc_id for doc_id, _ in RAYJOBS])
def test_rayjob_entrypoint_runs_an_existing_config(doc):
    head_pod = _ray_pod_specs(doc)[0][1]
    assert entrypoint_problems(doc["spec"].get("entrypoint", ""), REPO, head_pod) == []
    assert doc["spec"].get("backoffLimit", 0) >= 1, "a failed attempt should be retried (and resume)"


def _cpu_quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_nodes(doc: dict) -> list[dict[str, float]]:
    """The CPU/GPU each Ray node of the manifest's cluster offers, as KubeRay starts them:
    rayStartParams num-cpus/num-gpus if set, else the Ray container's limits."""
    spec = _cluster_spec(doc)
    groups = [(spec["headGroupSpec"], 1)]
    groups += [(group, group.get("replicas", 0) * group.get("numOfHosts", 1)) for group in spec.get("workerGroupSpecs", [])]
    nodes = []
    for group, count in groups:
        params = group.get("rayStartParams") or {}
        limits = group["template"]["spec"]["containers"][RAY_CONTAINER].get("resources", {}).get("limits", {})
        cpu = _cpu_quantity(params.get("num-cpus", limits.get("cpu", 0)))
        gpu = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        nodes += [{"CPU": cpu, "GPU": gpu}] * count
    return nodes


def plan_fit_problems(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> list[str]:
    """Like the run's own start-up check: totals, and every bundle fits on some node. Also: no
    whole GPU node more than the plan needs (an idle 8-GPU pod is expensive)."""
    problems = []
    for key in ("CPU", "GPU"):
        need, have = sum(b.get(key, 0.0) for b in bundles), sum(n[key] for n in nodes)
        if need > have + 1e-9:
            problems.append(f"plan needs {need:g} {key}, the cluster has {have:g}")
    for bundle in bundles:
        if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()) for node in nodes):
            message = f"no node can hold the bundle {bundle}"
            problems += [message] if message not in problems else []
    gpu_nodes = [n["GPU"] for n in nodes if n["GPU"] > 0]
    spare = sum(gpu_nodes) - sum(b.get("GPU", 0.0) for b in bundles)
    if gpu_nodes and spare >= max(gpu_nodes):
        problems.append(f"{spare:g} GPUs more than the plan needs: a whole GPU pod would sit idle")
    return problems


@pytest.mark.parametrize("doc", [doc for _, doc in RAYJOBS], ids=[doc_id for doc_id, _ in RAYJOBS])
def test_rayjob_cluster_holds_the_config_plan(doc):
    argv = shlex.split(doc["spec"]["entrypoint"])
    config = REPO / (repo_config(argv[3]) or argv[3])
    assert config.is_file(), f"{argv[3]} does not exist (yet)"
    from rlhf.config import load_config
    from rlhf.drivers.cluster import plan_pools

    pools = {id(pool): pool for pool in plan_pools(load_config(config, argv[4:], False)).values()}
    bundles = [bundle for pool in pools.values() for bundle in pool.bundles]
    assert plan_fit_problems(bundles, ray_nodes(doc)) == []


def test_plan_fit_check():
    pods = [{"CPU": 0, "GPU": 0}, {"CPU": 64, "GPU": 8}, {"CPU": 64, "GPU": 8}]
    assert plan_fit_problems([{"CPU": 6, "GPU": 1}] * 8 + [{"CPU": 4, "GPU": 2}] * 4, pods) == []
    assert plan_fit_problems([{"CPU": 6, "GPU": 1}] * 8, pods)  # a whole pod idle
    assert plan_fit_problems([{"CPU": 6, "GPU": 1}] * 17, pods)  # too few GPUs
    assert plan_fit_problems([{"CPU": 4, "GPU": 16}], pods)  # fits the total, no single node
    assert plan_fit_problems([{"CPU": 100, "GPU": 1}] + [{"CPU": 1, "GPU": 1}] * 15, pods)


def test_entrypoint_checker_on_a_scratch_repo(tmp_path):
    """The entrypoint check itself, on a throwaway configs/ dir: it accepts and it rejects."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.yaml").write_text(
        "model: {policy: org/policy, reward: org/reward}\ndata: {train: org/data}\n"
    )
    good = "python -m rlhf.run /home/ray/rlhf/configs/x.yaml logging.output_dir=/mnt/shared/runs/x checkpoint.resume=auto"
    assert entrypoint_problems(good, tmp_path) == []
    assert entrypoint_problems(good.replace("/home/ray/rlhf/configs/", "configs/"), tmp_path)  # relative
    assert entrypoint_problems(good.replace("/rlhf/configs/", "/rlhf/configs/../"), tmp_path)
    assert entrypoint_problems(good.replace("x.yaml", "missing.yaml"), tmp_path)
    assert entrypoint_problems(good.replace("resume=auto", "resume=never"), tmp_path)
    assert entrypoint_problems(good.replace("logging.output_dir", "logging.outdir"), tmp_path)
    assert entrypoint_problems("cd /home/ray/rlhf && " + good, tmp_path)
    assert entrypoint_problems(good.replace("rlhf.run", "rlhf.train"), tmp_path)
    head = {
        "containers": [{"volumeMounts": [{"name": "shared", "mountPath": "/mnt/shared"}]}],
        "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": "c"}}],
    }
    assert entrypoint_problems(good, tmp_path, head) == []
    assert entrypoint_problems(good.replace("/mnt/shared/", "/tmp/"), tmp_path, head)


# ---------------------------------------------------------------- Slurm


def test_slurm_script_is_valid_bash():
    script = CLUSTER / "slurm" / "ray_on_slurm.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
