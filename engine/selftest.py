"""Start-up self-test: one 4-bit (NF4) matmul through bitsandbytes, on the GPU when there is one.

QLoRA's base weights live in bitsandbytes' 4-bit format, so a container whose bitsandbytes
cannot launch its kernels on this device (on a Jetson Orin: the PyPI wheel, built for server
ARM, fails at the first 4-bit kernel with "named symbol not found") trains nothing. The Jetson
image runs ``python -m engine selftest --require-gpu`` before the app starts and stops with the
message below instead of failing at the first training step::

    python -m engine selftest [--require-gpu] [--json]

The test quantises a random weight to NF4 on the device, checks the storage is 4-bit (two
weights per byte, on that device), multiplies through ``bnb.matmul_4bit`` and compares with
the product of the dequantised weight (the same numbers: only rounding may differ) and of the
original weight (NF4's own error, bounded). Without a GPU it runs on the CPU and says so.
"""

from __future__ import annotations

import platform
import time

from engine.errors import WorkbenchError

JETSON_HINT = ("On a Jetson this is what the PyPI bitsandbytes wheel does (it is built for server "
               "ARM, not JetPack): use the image's bitsandbytes, built from source with "
               "-DCOMPUTE_CAPABILITY=87 (docs/jetson.md).")


class SelftestError(WorkbenchError):
    """The device cannot run the 4-bit kernels QLoRA needs."""


def run_selftest(require_gpu: bool = False, device: str | None = None) -> dict:
    """Run one 4-bit matmul on ``device`` (default: CUDA if visible, else the CPU) and return
    what was checked; raise ``SelftestError`` with what to do when it cannot."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    if require_gpu and not on_gpu:
        raise SelftestError("no CUDA device is visible to this process: start the container with "
                            "`docker run --runtime nvidia ...` (on a Jetson, JetPack's NVIDIA "
                            "container runtime), and check the host sees its GPU (tegrastats, "
                            "nvidia-smi)")
    try:
        import bitsandbytes as bnb
        from bitsandbytes import functional as bnb_functional
    except Exception as error:  # a broken native library fails here on some builds
        raise SelftestError(f"bitsandbytes cannot be imported ({type(error).__name__}: "
                            f"{_first_line(error)}); QLoRA needs it. {JETSON_HINT}") from error
    dtype = torch.bfloat16 if not on_gpu or torch.cuda.is_bf16_supported() else torch.float16
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 128, generator=generator).to(device, dtype)  # (out, in)
    inputs = torch.randn(8, 128, generator=generator).to(device, dtype)  # (batch, in)
    started = time.perf_counter()
    try:
        packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4", blocksize=64)
        output = bnb.matmul_4bit(inputs, packed.t(), quant_state=state)  # (batch, out)
        dequantised = inputs @ bnb_functional.dequantize_4bit(packed, state).t()
        if on_gpu:
            torch.cuda.synchronize()
    except Exception as error:
        raise SelftestError(f"the 4-bit (NF4) matmul failed on {_device_name(device)}: "
                            f"{type(error).__name__}: {_first_line(error)}. "
                            + (JETSON_HINT if on_gpu else "")) from error
    elapsed = time.perf_counter() - started
    if packed.dtype != torch.uint8 or packed.numel() * 2 != weight.numel() or packed.device != weight.device:
        raise SelftestError(f"bitsandbytes did not store the weight in 4 bits on {device} "
                            f"({packed.dtype}, {packed.numel()} bytes for {weight.numel()} "
                            f"weights, on {packed.device})")
    scale = float(dequantised.abs().max())
    kernel_error = float((output.float() - dequantised.float()).abs().max()) / scale
    nf4_error = float((output.float() - (inputs @ weight.t()).float()).abs().max()) / scale
    if not output.isfinite().all() or kernel_error > 0.02 or nf4_error > 0.25:
        raise SelftestError(f"the 4-bit matmul on {_device_name(device)} gives wrong numbers "
                            f"(relative error {kernel_error:.3g} against the dequantised weight, "
                            f"{nf4_error:.3g} against the original). {JETSON_HINT if on_gpu else ''}")
    return {"ok": True, "device": "cuda" if on_gpu else "cpu", "device_name": _device_name(device),
            "compute_capability": (".".join(map(str, torch.cuda.get_device_capability(device)))
                                   if on_gpu else None),
            "torch": torch.__version__, "cuda": torch.version.cuda, "bitsandbytes": bnb.__version__,
            "dtype": str(dtype).removeprefix("torch."), "max_error": kernel_error,
            "nf4_error": nf4_error, "seconds": round(elapsed, 4), "machine": platform.machine()}


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()})"


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0]
