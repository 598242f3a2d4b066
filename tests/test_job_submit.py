"""`ray job submit` against a running Ray cluster, exactly as cluster/README.md ("An existing Ray cluster") says.

A head is started with `ray start --head` (token auth on, its own --temp-dir, free ports) from an environment
whose `python` is the one running these tests, so the job's `python -m rlhf.run` finds rlhf's dependencies.
The code travels as the `--working-dir` upload; the tiny PPO job uses the config's relative `assets/tiny`,
which is not uploaded (.gitignore) and so is built by the job inside its working dir, where its actors
(same node, same working dir) find it. Only the absolute `logging.output_dir` lives outside the upload.

Isolation from other Ray sessions on this machine: the head's own --temp-dir keeps its address out of
/tmp/ray/ray_current_cluster (which a plain `ray.init()` elsewhere would join), and the cluster is
stopped by killing the processes `ray start` spawned (its session and their descendants) -- never with
`ray stop`, which terminates every raylet and GCS on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from rlhf.drivers.checkpoint import complete_checkpoints
from rlhf.drivers.metrics import read_metrics

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # .venv/bin: its `python` has rlhf's dependencies, its `ray` is Ray 2.60
RAY = str(BIN / "ray")
CLI_FLAGS = ["--log-style", "record", "--log-color", "false"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _client_env() -> dict[str, str]:
    """What a user's shell needs for the job CLI: RAY_AUTH_MODE=token (the token is ~/.ray/auth_token)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["RAY_AUTH_MODE"] = "token"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _kill_session(sid: int, grace_s: float = 5.0) -> None:
    """Terminate every process in session `sid` (what `ray start` spawned) and all their descendants."""
    procs: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                procs[proc.pid] = proc
                for child in proc.children(recursive=True):
                    procs[child.pid] = child
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass
    procs.pop(os.getpid(), None)
    for proc in procs.values():
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


class RayHead:
    """A one-node cluster started with `ray start --head`, as an operator would, on free local ports."""

    def __init__(self) -> None:
        # Short path: Ray puts unix sockets under it (108-byte limit).
        self.temp_dir = tempfile.mkdtemp(prefix="rjs", dir="/tmp")
        self.sid: int | None = None
        dashboard, client, agent_http, agent_grpc, runtime_env, metrics = _free_ports(6)
        self.address = f"http://127.0.0.1:{dashboard}"
        self.start_args = [
            RAY, "start", "--head", "--port", "0", "--temp-dir", self.temp_dir, "--num-cpus", "4",
            "--include-dashboard", "true", "--dashboard-port", str(dashboard),
            "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
            "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
            "--metrics-export-port", str(metrics), "--disable-usage-stats", *CLI_FLAGS,
        ]

    def start(self) -> None:
        env = _client_env()  # RAY_AUTH_MODE=token on the head too, and .venv/bin first on the jobs' PATH
        # The token the head and the clients share: Ray's default ~/.ray/auth_token, created if missing
        # (a head started with RAY_AUTH_MODE=token and no token refuses to start). Its stdout is the token.
        default_token = Path.home() / ".ray" / "auth_token"
        if not (env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH") or default_token.is_file()):
            subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, check=True, timeout=60)
        proc = subprocess.Popen(self.start_args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        self.sid = proc.pid
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out[-3000:]
        deadline = time.time() + 60
        while True:  # the job server answers a little after `ray start` returns
            listing = self.job("list", check=False)
            if listing.returncode == 0:
                return
            assert time.time() < deadline, listing.stdout[-3000:]
            time.sleep(1)

    def stop(self) -> None:
        if self.sid is not None:
            _kill_session(self.sid)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def job(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """`ray job <args> --address <head>` from the repo root; stdout and stderr together."""
        cmd, rest = list(args), []
        if "--" in cmd:  # `--address` must come before the entrypoint
            cut = cmd.index("--")
            cmd, rest = cmd[:cut], cmd[cut:]
        proc = subprocess.run([RAY, "job", *cmd, "--address", self.address, *CLI_FLAGS, *rest], check=False,
                              cwd=REPO, env=_client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, proc.stdout[-3000:]
        return proc

    def status(self, submission_id: str) -> str:
        out = self.job("status", submission_id).stdout
        for pattern, status in ((r"succeeded", "SUCCEEDED"), (r"failed", "FAILED"), (r"was stopped", "STOPPED")):
            if re.search(rf"Job '{re.escape(submission_id)}' {pattern}", out):
                return status
        match = re.search(rf"Status for job '{re.escape(submission_id)}': (\w+)", out)
        assert match, out[-2000:]
        return match.group(1).split(".")[-1]

    def logs(self, submission_id: str) -> str:
        return self.job("logs", submission_id).stdout

    def submit_and_wait(self, submission_id: str, *args: str, timeout_s: float) -> subprocess.CompletedProcess:
        """A blocking `ray job submit` (it streams the job's logs and returns when the job ends); a job still
        running after timeout_s is stopped and the test fails. No status polling: on 2 cores every `ray`
        CLI call costs seconds of CPU that the job needs."""
        try:
            return self.job("submit", "--submission-id", submission_id, *args, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            self.job("stop", submission_id, check=False)
            pytest.fail(f"job {submission_id} not finished after {timeout_s:g}s:\n{self.logs(submission_id)[-4000:]}")


@pytest.fixture(scope="module")
def ray_head():
    head = RayHead()
    try:
        head.start()
        yield head
    finally:
        head.stop()


def _submission_id(name: str) -> str:
    return f"rlhf-test-{name}-{uuid.uuid4().hex[:8]}"


def test_job_runs_in_the_upload_with_the_clusters_python(ray_head):
    """The working_dir upload is the repo minus .gitignore'd and default-excluded dirs; `python` is rlhf's."""
    probe = ("import json, os, sys, rlhf; print('PROBE ' + json.dumps({'python': sys.executable, "
             "'rlhf': rlhf.__file__, 'cwd': os.getcwd(), 'files': sorted(os.listdir('.')), "
             "'ray_address': os.environ.get('RAY_ADDRESS')}))")
    sid = _submission_id("probe")
    proc = ray_head.submit_and_wait(sid, "--working-dir", ".", "--", "python", "-c", probe, timeout_s=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert ray_head.status(sid) == "SUCCEEDED"
    line = next(line for line in proc.stdout.splitlines() if line.startswith("PROBE "))
    info = json.loads(line[len("PROBE "):])
    assert Path(info["python"]).parent == BIN
    cwd = Path(info["cwd"])
    assert cwd != REPO and cwd.is_relative_to(ray_head.temp_dir), cwd  # the unpacked upload, on the head
    assert Path(info["rlhf"]) == cwd / "rlhf" / "__init__.py"  # the uploaded code, not the editable install
    assert {"rlhf", "configs", "pyproject.toml"} <= set(info["files"])
    assert not {".venv", "assets", "outputs", ".git", "wandb"} & set(info["files"]), info["files"]
    assert info["ray_address"]  # set by the job manager: rlhf.run joins this cluster


def test_config_error_fails_the_job_with_one_line(ray_head, tmp_path):
    sid = _submission_id("bad-config")
    start = time.time()
    proc = ray_head.submit_and_wait(
        sid, "--working-dir", ".", "--", "python", "-m", "rlhf.run", "configs/tiny/ppo.yaml", "algorithm.ppo.kl_cof=1",
        f"logging.output_dir={tmp_path / 'run'}", timeout_s=120,
    )
    assert proc.returncode != 0, proc.stdout[-3000:]  # the blocking submit reports the failure
    assert time.time() - start < 90
    assert ray_head.status(sid) == "FAILED"
    logs = ray_head.logs(sid)
    errors = [line for line in logs.splitlines() if line.startswith("config error:")]
    assert len(errors) == 1, logs[-3000:]
    assert "unknown key 'algorithm.ppo.kl_cof'" in errors[0] and "did you mean 'kl_coef'" in errors[0]
    assert "Traceback" not in logs
    assert not (tmp_path / "run").exists()


def test_tiny_ppo_job_succeeds_with_outputs_where_the_config_says(ray_head, tmp_path):
    out = tmp_path / "run"
    sid = _submission_id("ppo")
    start = time.time()
    # ~2 minutes here; the first run on a machine also JIT-builds DeepSpeed's shm op (~1 more minute).
    proc = ray_head.submit_and_wait(
        sid, "--working-dir", ".", "--",
        "python", "-m", "rlhf.run", "configs/tiny/ppo.yaml", "algorithm.ppo.num_steps=2", "checkpoint.interval=2",
        "algorithm.ppo.eval_interval=0", "logging.wandb.mode=disabled", "logging.progress_bar=false",
        f"logging.output_dir={out}", timeout_s=480,
    )
    print(f"tiny PPO job: {time.time() - start:.0f}s from submit to end")
    logs = proc.stdout
    assert proc.returncode == 0, logs[-4000:]
    assert ray_head.status(sid) == "SUCCEEDED"
    assert "connecting to Ray cluster at" in logs  # joined the existing cluster, did not start its own
    assert [row["step"] for row in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["step_000002"]
    assert (out / "policy" / "config.json").is_file()
