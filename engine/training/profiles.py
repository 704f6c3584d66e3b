"""Device profiles: what a machine can give a training run, and the defaults that follow from it.

A profile names a class of machine (a Jetson Orin board, a laptop, a GPU server) and holds
the memory a run may use there once the OS and the app have theirs, plus the training
defaults that suit it (batch, audio padding, dataloader workers). The active profile comes
from ``LIM_PROFILE`` (the command line's ``--profile`` sets it): a profile name, ``auto``
(the Jetson board this runs on, by its memory; none elsewhere) or nothing (no profile: the
settings' own defaults, no cap). It acts in two places:

* its defaults replace ``TrainingSettings``' defaults for new runs (the Training page's form
  starts from them; ``--set`` and the form still override any of them), among them the
  memory planner's ``memory_budget_gb``, so the planner fits each run into the profile's share;
* on a CUDA device the process's allocator is capped at that share
  (``torch.cuda.set_per_process_memory_fraction``), so a GPU server rehearses an 8 GB Jetson
  honestly: a run that would not fit the board fails there too.

The memory figures are planning values from NVIDIA's board specifications and published
QLoRA peaks on an Orin Nano (docs/jetson.md), not measurements on a board of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import SettingsError
from engine.names import LONGEST, WHOLE_WINDOW

GIB = 2**30
PROFILE_ENV = "LIM_PROFILE"
JETSON_RELEASE_FILE = Path("/etc/nv_tegra_release")  # present on every L4T (Jetson) system


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    memory_gib: float | None  # what the device has for everything (unified on a Jetson); None: the whole GPU
    os_gib: float  # the OS and its services (headless)
    app_gib: float  # the app: Python, torch, the CUDA context, Streamlit
    per_device_train_batch_size: int
    per_device_eval_batch_size: int
    audio_padding: str  # "longest" where memory and speed are scarce (TrainingSettings.audio_padding)
    dataloader_num_workers: int  # each worker is a process with its own memory: none on small boards

    @property
    def training_gib(self) -> float | None:
        """Memory a run may use (model, activations, optimizer state); None: no limit."""
        if self.memory_gib is None:
            return None
        return round(self.memory_gib - self.os_gib - self.app_gib, 2)

    def training_defaults(self) -> dict:
        """The ``TrainingSettings`` values this profile chooses for new runs."""
        return {"memory_budget_gb": self.training_gib or 0.0,
                "per_device_train_batch_size": self.per_device_train_batch_size,
                "per_device_eval_batch_size": self.per_device_eval_batch_size,
                "audio_padding": self.audio_padding,
                "dataloader_num_workers": self.dataloader_num_workers}

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "memory_gib": self.memory_gib,
                "os_gib": self.os_gib, "app_gib": self.app_gib, "training_gib": self.training_gib,
                "defaults": self.training_defaults()}


PROFILES = {profile.name: profile for profile in (
    # 7.4 GiB of the 8 GB are visible to Linux; L4T headless takes about 1.2 GiB, the app
    # (Python, torch, the CUDA context, Streamlit) about 1.7 GiB: 4.5 GiB for training, which
    # is the range QLoRA of 1-4B language models peaks at on this board (3.5-4.4 GB reported).
    DeviceProfile("jetson-orin-nano-8gb", "Jetson Orin Nano 8GB (JetPack 6): 8 GB shared by CPU "
                  "and GPU, 1024 CUDA cores (sm_87)", 7.4, 1.2, 1.7, 4, 8, LONGEST, 0),
    DeviceProfile("jetson-orin-nx-16gb", "Jetson Orin NX 16GB (JetPack 6): 16 GB shared by CPU "
                  "and GPU, 1024 CUDA cores (sm_87)", 15.3, 1.5, 1.8, 8, 16, LONGEST, 2),
    DeviceProfile("jetson-agx-orin-64gb", "Jetson AGX Orin 64GB (JetPack 6): 64 GB shared by CPU "
                  "and GPU, 2048 CUDA cores (sm_87)", 61.3, 2.0, 2.3, 16, 32, WHOLE_WINDOW, 4),
    DeviceProfile("laptop-cpu", "A laptop without a CUDA GPU (16 GB of RAM): short-audio windows "
                  "for speed, no worker processes beside the training threads", 15.5, 3.0, 2.5,
                  4, 8, LONGEST, 0),
    DeviceProfile("server-gpu", "An x86-64 server with a CUDA GPU of its own: the whole GPU, no "
                  "cap, Whisper's standard 30 s window", None, 0.0, 0.0, 16, 32, WHOLE_WINDOW, 4),
)}


def get_profile(name: str) -> DeviceProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise SettingsError(f"unknown device profile {name!r}; choose one of "
                            f"{', '.join(PROFILES)} (or auto)") from None


def detect_jetson_profile(release_file: Path = JETSON_RELEASE_FILE,
                          total_bytes: int | None = None) -> DeviceProfile | None:
    """The Orin profile for the board this runs on, by its memory; None off a Jetson."""
    if not release_file.exists():
        return None
    if total_bytes is None:
        import psutil

        total_bytes = psutil.virtual_memory().total  # unified: the GPU's memory too
    gib = total_bytes / GIB
    name = ("jetson-orin-nano-8gb" if gib < 12 else "jetson-orin-nx-16gb" if gib < 32
            else "jetson-agx-orin-64gb")
    return PROFILES[name]


def active_profile() -> DeviceProfile | None:
    """The profile ``LIM_PROFILE`` selects (``auto``: detected on a Jetson); None: no profile."""
    from engine.settings import load_config

    name = load_config().profile.strip()
    if not name or name == "none":
        return None
    if name == "auto":
        return detect_jetson_profile()
    return get_profile(name)


def gpu_memory_fraction(profile: DeviceProfile | None, total_bytes: int) -> float | None:
    """The share of a GPU of ``total_bytes`` the profile allows this process; None: no cap
    (no profile, a profile without a limit, or a GPU no larger than the profile's share)."""
    if profile is None or profile.training_gib is None or total_bytes <= 0:
        return None
    fraction = profile.training_gib * GIB / total_bytes
    return fraction if fraction < 1 else None


def cap_gpu_memory(profile: DeviceProfile | None, device: str) -> str | None:
    """Cap the CUDA allocator of this process at the profile's share of ``device``; returns what
    was done, for the run's log (None when nothing was capped). The cap holds for the process,
    as a board's memory would."""
    if profile is None:
        return None
    if not device.startswith("cuda"):
        return f"device profile {profile.name} (no CUDA device: nothing to cap)"
    import torch

    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index  # a torchrun rank's own GPU
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = gpu_memory_fraction(profile, total)
    if fraction is None:
        return f"device profile {profile.name}: no cap on {total / GIB:.1f} GiB of GPU memory"
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return (f"device profile {profile.name}: GPU memory capped at {profile.training_gib:g} GiB "
            f"of {total / GIB:.1f} GiB (fraction {fraction:.4f}), the share a run has on the device")
