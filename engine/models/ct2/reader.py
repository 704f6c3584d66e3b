"""Reading a CTranslate2 ``model.bin``: the source's parts read as one stream, the variables as arrays."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from engine.errors import ModelError
from engine.models.ct2.sources import Ct2Source

FORMAT_VERSION = 6
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
ITEM_BYTES = {0: 4, 1: 1, 2: 2, 3: 4, 4: 2, 5: 2}


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
