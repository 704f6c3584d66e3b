"""The start-up self-test: one 4-bit matmul, on the CPU here (the Jetson image runs it on the GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from engine.selftest import SelftestError, run_selftest


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_selftest_runs_a_4bit_matmul_on_the_cpu_and_says_so(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine", "selftest", "--json"], capture_output=True,
                            text=True, timeout=120, env={**_env(), "LIM_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["device"] == "cpu" and report["device_name"].startswith("CPU")
    assert report["max_error"] < 0.02 and 0 < report["nf4_error"] < 0.25  # NF4 rounds, but not wildly
    assert not any(tmp_path.iterdir())  # needs no data home: nothing written there
    refused = subprocess.run([sys.executable, "-m", "engine", "selftest", "--require-gpu"],
                             capture_output=True, text=True, timeout=120, env=_env())
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: no CUDA device is visible") and "--runtime nvidia" in refused.stderr


def test_a_failing_kernel_stops_with_what_to_do(monkeypatch):
    import bitsandbytes

    def missing_kernel(*args, **kwargs):
        raise RuntimeError("CUDA error: named symbol not found\nCUDA kernel errors might be ...")

    monkeypatch.setattr(bitsandbytes, "matmul_4bit", missing_kernel)
    with pytest.raises(SelftestError, match=r"the 4-bit \(NF4\) matmul failed on .*: RuntimeError: "
                                            r"CUDA error: named symbol not found\."):
        run_selftest()


def test_wrong_numbers_are_caught(monkeypatch):
    import bitsandbytes

    monkeypatch.setattr(bitsandbytes, "matmul_4bit",
                        lambda inputs, weight, quant_state: torch.zeros(inputs.shape[0], quant_state.shape[0],
                                                                        dtype=inputs.dtype, device=inputs.device))
    with pytest.raises(SelftestError, match="gives wrong numbers"):
        run_selftest()


@pytest.mark.gpu
def test_selftest_on_the_gpu():
    report = run_selftest(require_gpu=True)
    assert report["device"] == "cuda" and report["compute_capability"]


def _env() -> dict:
    import os

    return {key: value for key, value in os.environ.items() if key != "LIM_PROFILE"}
