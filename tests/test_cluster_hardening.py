"""Deployment files for locked-down clusters, checked without Kubernetes, Docker or Slurm.

- Every Ray pod and the RayJob submitter pass the Kubernetes "restricted" pod-security level
  (non-root, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp) and
  mount no service-account token; the shared volume is group-owned with OnRootMismatch.
- Images are immutable references: a per-build `git-<commit>` tag or a digest.
- The wandb key is on the head only; the head exposes only the GCS and dashboard ports.
- RayJobs: activeDeadlineSeconds as derived from the config, GPU workers deleted at once
  when the job ends (deletionRules; the cluster is fixed-size, which DeleteWorkers needs).
- The Dockerfile installs the locked dependencies before the source, on a base pinned by
  digest; its build context is an allow-list.
- The Slurm script binds the dashboard to the head's address and deletes its token on exit
  (also run end to end with srun, scontrol, ray and the run itself stubbed).
(The manifests' schema is test_cluster_manifests.py's.)
"""

from __future__ import annotations

import copy
import math
import re
import shlex
import subprocess
import sys

import pytest
from test_cluster_manifests import (
    CLUSTER,
    DOCKERFILE,
    MANIFESTS,
    RAY_CONTAINER,
    RAYJOBS,
    REPO,
    _cluster_spec,
    _ray_pod_specs,
    repo_config,
)

MANIFEST_DOCS = [doc for _, doc in MANIFESTS]
MANIFEST_IDS = [doc_id for doc_id, _ in MANIFESTS]
RAY_USER, RAY_GROUP = 1000, 100  # the Ray image's user `ray`

# activeDeadlineSeconds = DEADLINE_STARTUP_S + steps x DEADLINE_STEP_S (the manifests' comments say why).
DEADLINE_STARTUP_S = 3600
DEADLINE_STEP_S = 180
# configs/dpo.yaml trains one epoch of ~61k UltraFeedback pairs (its data lives on the cluster's volume).
DPO_TRAIN_PAIRS = 61_000


def pod_security_problems(pod: dict) -> list[str]:
    """What keeps `pod` from the "restricted" pod-security level, or mounts an API token."""
    problems = []
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken is not false")
    pod_sc = pod.get("securityContext") or {}
    if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod seccompProfile is not RuntimeDefault")
    if pod_sc.get("runAsNonRoot") is not True:
        problems.append("pod runAsNonRoot is not true")
    if pod_sc.get("runAsUser", RAY_USER) == 0:
        problems.append("runAsUser 0")
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        sc = container.get("securityContext") or {}
        name = container.get("name", "?")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities do not drop ALL")
        if set((sc.get("capabilities") or {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        if sc.get("privileged") or sc.get("runAsNonRoot") is False or sc.get("runAsUser") == 0:
            problems.append(f"{name}: runs privileged or as root")
    return problems


@pytest.mark.parametrize("doc", MANIFEST_DOCS, ids=MANIFEST_IDS)
def test_pods_are_restricted(doc):
    pods = _ray_pod_specs(doc)
    if doc["kind"] == "RayJob":
        assert "submitterPodTemplate" in [where for where, _ in pods], "the default submitter pod is not hardened"
    for where, pod in pods:
        assert pod_security_problems(pod) == [], where
        sc = pod["securityContext"]
        assert (sc.get("runAsUser"), sc.get("runAsGroup")) == (RAY_USER, RAY_GROUP), where
        if any("persistentVolumeClaim" in volume for volume in pod.get("volumes", [])):
            assert sc.get("fsGroup") == RAY_GROUP and sc.get("fsGroupChangePolicy") == "OnRootMismatch", where


def test_pod_security_check_rejects():
    pod = copy.deepcopy(_ray_pod_specs(MANIFEST_DOCS[0])[0][1])
    assert pod_security_problems(pod) == []
    for breakage in (
        lambda p: p.pop("automountServiceAccountToken"),
        lambda p: p["securityContext"].pop("seccompProfile"),
        lambda p: p["securityContext"].update(runAsNonRoot=False),
        lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
        lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        lambda p: p["containers"][0]["securityContext"].update(privileged=True),
    ):
        broken = copy.deepcopy(pod)
        breakage(broken)
        assert pod_security_problems(broken), breakage


IMMUTABLE_IMAGE = re.compile(r"^[^@\s]+?(:git-[0-9a-f]{7,40})?(@sha256:[0-9a-f]{64})?$")


def image_is_immutable(ref: str) -> bool:
    """A per-build tag (git-<commit>) or a digest; not `latest`, a version or no tag."""
    match = IMMUTABLE_IMAGE.match(ref)
    return bool(match and (match.group(1) or match.group(2)))


def test_image_reference_check():
    assert image_is_immutable("ghcr.io/org/rlhf:git-0123abcd")
    assert image_is_immutable("ghcr.io/org/rlhf@sha256:" + "a" * 64)
    assert image_is_immutable("localhost:5000/rlhf:git-0123abc@sha256:" + "0" * 64)
    for mutable in ("ghcr.io/org/rlhf:0.1.0", "ghcr.io/org/rlhf:latest", "ghcr.io/org/rlhf", "localhost:5000/rlhf"):
        assert not image_is_immutable(mutable), mutable


@pytest.mark.parametrize("doc", MANIFEST_DOCS, ids=MANIFEST_IDS)
def test_images_are_immutable_and_secrets_minimal(doc):
    for where, pod in _ray_pod_specs(doc):
        container = pod["containers"][RAY_CONTAINER]
        assert image_is_immutable(container["image"]), f"{where}: {container['image']}"
        env = {item["name"] for item in container.get("env", [])}
        assert ("WANDB_API_KEY" in env) == (where == "headGroupSpec"), f"{where}: the wandb key belongs to the head (driver) only"
    head = _ray_pod_specs(doc)[0][1]["containers"][RAY_CONTAINER]
    assert {(p["name"], p["containerPort"]) for p in head.get("ports", [])} == {("gcs-server", 6379), ("dashboard", 8265)}
    for where, pod in _ray_pod_specs(doc)[1:]:
        assert not pod["containers"][RAY_CONTAINER].get("ports"), f"{where} exposes ports"


def run_steps(cfg) -> int:
    """Optimizer steps (offline) or PPO steps of the whole run."""
    if cfg.algorithm.name == "ppo":
        return cfg.algorithm.ppo.num_steps
    if cfg.trainer.max_steps is not None:
        return cfg.trainer.max_steps
    return cfg.trainer.num_epochs * math.ceil(DPO_TRAIN_PAIRS / cfg.trainer.train_batch_size)


@pytest.mark.parametrize("doc", [doc for _, doc in RAYJOBS], ids=[doc_id for doc_id, _ in RAYJOBS])
def test_rayjob_deadline_and_deletion(doc):
    from rlhf.config import load_config

    argv = shlex.split(doc["spec"]["entrypoint"])
    cfg = load_config(REPO / repo_config(argv[3]), argv[4:], False)
    spec = doc["spec"]
    deadline = DEADLINE_STARTUP_S + run_steps(cfg) * DEADLINE_STEP_S
    assert spec.get("activeDeadlineSeconds") == deadline, "activeDeadlineSeconds no longer follows the config"
    assert deadline > cfg.resources.placement_timeout_s + cfg.resources.call_timeout_s
    # Rules and shutdownAfterJobFinishes/ttlSecondsAfterFinished are mutually exclusive in KubeRay.
    assert "shutdownAfterJobFinishes" not in spec and "ttlSecondsAfterFinished" not in spec
    rules = spec["deletionStrategy"]["deletionRules"]
    assert _cluster_spec(doc).get("enableInTreeAutoscaling") is False, "DeleteWorkers needs a fixed-size cluster"
    for condition in ({"jobStatus": "SUCCEEDED"}, {"jobStatus": "FAILED"}, {"jobDeploymentStatus": "Failed"}):
        ttl = {
            rule["policy"]: rule["condition"].get("ttlSeconds", 0)
            for rule in rules
            if {k: v for k, v in rule["condition"].items() if k != "ttlSeconds"} == condition
        }
        assert ttl.get("DeleteWorkers") == 0, f"GPU workers kept after {condition}"
        assert "DeleteCluster" in ttl and ttl["DeleteCluster"] >= ttl["DeleteWorkers"], condition


# ---------------------------------------------------------------- image recipe


def dockerfile_steps(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def test_dockerfile_installs_dependencies_before_the_source():
    steps = dockerfile_steps(DOCKERFILE.read_text())
    base = next(step for step in steps if step.startswith("FROM "))
    assert base.endswith("@${RAY_BASE_DIGEST}"), f"base image not pinned by digest: {base}"
    assert not re.search(r"^ARG RAY_BASE_DIGEST=", DOCKERFILE.read_text(), re.MULTILINE), "the digest must not default"
    source_copy = steps.index(next(s for s in steps if re.match(r"COPY (--\S+ )*\. ", s)))
    lock_install = steps.index(next(s for s in steps if "pip install -r constraints/gpu.txt" in s))
    lock_copy = steps.index(next(s for s in steps if s.startswith("COPY") and "constraints/gpu.txt" in s))
    assert lock_copy < lock_install < source_copy, steps
    project_install = next(s for s in steps[source_copy:] if "pip install" in s)
    assert "--no-deps" in project_install, "the source layer must not resolve dependencies again"


def test_build_context_is_an_allow_list():
    lines = [line.strip() for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", "the build context must start from nothing"
    allowed = [rule[1:] for rule in rules if rule.startswith("!")]
    for path in allowed:
        assert (REPO / path).exists(), f"allowed path {path} does not exist"
    assert {"pyproject.toml", "README.md", "rlhf", "constraints/gpu.txt"} <= set(allowed)
    excluded_after = rules[rules.index("!" + allowed[-1]) + 1 :]
    assert {"**/.env", "**/*.pem", "**/*.key"} <= set(excluded_after)


def test_build_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(DOCKERFILE.parent / "build.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- Slurm


def test_slurm_dashboard_on_head_address_and_token_removed():
    text = (CLUSTER / "slurm" / "ray_on_slurm.sh").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r'--dashboard-host="\$HEAD_IP"', code)
    assert "0.0.0.0" not in code
    assert re.search(r"trap 'rm -f \"\$RAY_AUTH_TOKEN_PATH\"' EXIT", code)
    assert not re.search(r"^\s*exec ", code, re.MULTILINE), "exec would skip the EXIT trap"


STUBS = {
    # scontrol show hostnames: one node; srun [options] CMD...: run CMD here.
    "scontrol": 'echo node1\n',
    "srun": 'while [ $# -gt 0 ]; do case "$1" in -w) shift 2;; -*) shift;; *) break;; esac; done\nexec "$@"\n',
    "ray": 'echo "ray $*" >> "$STUB_LOG"\n',
    # python: the token generator runs for real; the node-wait script and the run are stand-ins.
    "python": (
        'case "$1" in\n'
        '  -c) exec "$REAL_PYTHON" "$@";;\n'
        '  -) cat > /dev/null;;\n'
        '  -m) [ -f "$RAY_AUTH_TOKEN_PATH" ] && echo "token present" >> "$STUB_LOG"\n'
        '      echo "python $*" >> "$STUB_LOG"; exit 3;;\n'
        'esac\n'
    ),
}


def test_slurm_script_run_with_stubbed_slurm_and_ray(tmp_path):
    """The script end to end with srun/scontrol/ray/the run stubbed: the dashboard is bound to
    the head's address, the run's exit code is the job's, and the token is gone afterwards."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    run_dir, log = tmp_path / "run", tmp_path / "stub.log"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "REAL_PYTHON": sys.executable,
        "STUB_LOG": str(log),
        "RUN_DIR": str(run_dir),
        "CONFIG": "configs/x.yaml",
        "HEAD_IP": "127.0.0.1",
        "SLURM_JOB_NODELIST": "node1",
        "SLURMD_NODENAME": "node1",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_JOB_ID": "42",
    }
    script = CLUSTER / "slurm" / "ray_on_slurm.sh"
    result = subprocess.run(["bash", str(script), "rollout.num_engines=4"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    calls = log.read_text().splitlines()
    head_start = next(line for line in calls if line.startswith("ray start --head"))
    assert "--dashboard-host=127.0.0.1" in head_start.split()
    assert "token present" in calls
    run = next(line for line in calls if line.startswith("python -m rlhf.run"))
    assert run.split()[3:] == ["configs/x.yaml", f"logging.output_dir={run_dir}", "checkpoint.resume=auto", "rollout.num_engines=4"]
    assert list(run_dir.iterdir()) == [], "the Ray token outlived the job"
