"""Read TensorFlow checkpoints with numpy alone (no TensorFlow).

Both TF1 ``tf.compat.v1.train.Saver`` (V2 format) and TF2 ``tf.train.Checkpoint`` write a
*tensor bundle* (tensorflow/tensorflow ``tensorflow/core/util/tensor_bundle/tensor_bundle.cc``
and ``tensor_bundle.proto``):

* ``PREFIX.index``: an immutable sorted table in LevelDB's format (tensorflow/tensorflow
  ``tensorflow/core/lib/io/format.h``, ``block.cc``, ``table_builder.cc``): data blocks of
  prefix-compressed ``key -> value`` entries with a restart array, each block followed by a
  5-byte trailer (compression type, masked crc32c), an index block pointing at the data blocks,
  and a 48-byte footer ending in the magic ``0xdb4775248b80fb57``. The bundle writer stores
  its blocks uncompressed (``TableBuilderOptions``: ``kNoCompression``); snappy blocks are
  decoded too, for tables written by other tools.
* The entry under the empty key is a ``BundleHeaderProto`` (number of shards, endianness);
  every other key is a tensor name whose value is a ``BundleEntryProto`` (dtype, shape, shard,
  offset, size, masked crc32c of the bytes, slices).
* ``PREFIX.data-0000i-of-0000N``: the raw tensor bytes (row-major, the header's byte order);
  strings as ``[varint64 length]... [masked crc32c of the lengths as uint32] [bytes]...``.

The two messages are decoded with a hand-written protobuf wire-format reader: they have six
scalar fields and pulling in the generated TensorFlow protos would need TensorFlow.
A tensor saved in slices (TF1 partitioned variables, or a large tensor split across shards by a
TF2 sharding policy) has an entry listing its slices and one entry per slice under a key encoded
with TensorFlow's OrderedCode (``EncodeTensorNameSlice``); the reader reassembles it.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["BundleEntry", "TensorBundle", "crc32c", "read_checkpoint", "resolve_checkpoint"]

log = logging.getLogger(__name__)

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes + 8-byte magic
_MASK_DELTA = 0xA282EAD8

# tensorflow/tensorflow tensorflow/core/framework/types.proto: DataType -> numpy dtype.
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32), 2: np.dtype(np.float64), 3: np.dtype(np.int32), 4: np.dtype(np.uint8),
    5: np.dtype(np.int16), 6: np.dtype(np.int8), 8: np.dtype(np.complex64), 9: np.dtype(np.int64),
    10: np.dtype(np.bool_), 17: np.dtype(np.uint16), 18: np.dtype(np.complex128), 19: np.dtype(np.float16),
    22: np.dtype(np.uint32), 23: np.dtype(np.uint64),
}
_DT_STRING, _DT_BFLOAT16 = 7, 14
_DTYPE_NAMES = {7: "string", 14: "bfloat16", 20: "resource", 21: "variant"}


# ------------------------------------------------------------------------------- crc32c
def _make_table() -> np.ndarray:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table[i] = c
    return table


_TABLE = _make_table()
_TABLE_LIST = [int(v) for v in _TABLE]


def _crc_bytes(crc: int, data: bytes) -> int:
    """Raw (unconditioned) byte-wise update; for short inputs."""
    t = _TABLE_LIST
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _zeros_operator(nbytes: int) -> list[int]:
    """The GF(2) 32x32 matrix that appends ``nbytes`` zero bytes to a raw crc (zlib's crc32_combine)."""
    op = [0x82F63B78] + [1 << n for n in range(31)]  # one zero bit
    result = [1 << n for n in range(32)]  # identity
    nbits = nbytes * 8
    while nbits:
        if nbits & 1:
            result = [_gf2_times(op, result[n]) for n in range(32)]
        nbits >>= 1
        if nbits:
            op = [_gf2_times(op, op[n]) for n in range(32)]
    return result


def crc32c(data: bytes | memoryview | np.ndarray) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TensorFlow's ``crc32c::Value``.

    No crc32c library is a dependency, and a byte loop in Python is too slow for large tensors:
    long inputs are cut into equal chunks whose CRCs numpy advances side by side, then combined
    with the zero-append operator (the method of zlib's ``crc32_combine``).
    """
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    n = buf.size
    if n < 1 << 14:
        return _crc_bytes(0xFFFFFFFF, buf.tobytes()) ^ 0xFFFFFFFF
    chunks = min(4096, n >> 10)
    length = n // chunks
    cols = np.ascontiguousarray(buf[: chunks * length].reshape(chunks, length).T)
    crcs = np.full(chunks, 0xFFFFFFFF, dtype=np.uint32)
    table = _TABLE
    for j in range(length):
        crcs = table[(crcs ^ cols[j]) & 0xFF] ^ (crcs >> 8)
    crcs ^= np.uint32(0xFFFFFFFF)
    op = _zeros_operator(length)
    crc = int(crcs[0])
    for c in crcs[1:].tolist():
        crc = _gf2_times(op, crc) ^ c
    rest = buf[chunks * length:].tobytes()
    if rest:  # continue the conditioned crc over the tail
        crc = _crc_bytes(crc ^ 0xFFFFFFFF, rest) ^ 0xFFFFFFFF
    return crc


def _unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ----------------------------------------------------------------------- wire format
def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes | memoryview) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as int, fixed32/64 as int, bytes as bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            val, pos = bytes(buf[pos:pos + size]), pos + size
        elif wire == 5:
            val, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {num})")
        yield num, val


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass(frozen=True)
class BundleEntry:
    """One tensor's ``BundleEntryProto``: where its bytes are and what they hold."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None
    sliced: bool

    @staticmethod
    def parse(name: str, value: bytes) -> "BundleEntry":
        dtype = shard = offset = size = 0
        crc: int | None = None
        shape: list[int] = []
        sliced = False
        for num, val in _fields(value):
            if num == 1:
                dtype = int(val)
            elif num == 2:
                for dnum, dval in _fields(val):  # TensorShapeProto.dim
                    if dnum == 2:
                        shape.append(next((_int64(int(v)) for n, v in _fields(dval) if n == 1), 0))
                    elif dnum == 3 and dval:
                        raise ValueError(f"tensor {name!r}: unknown rank in the checkpoint")
            elif num == 3:
                shard = int(val)
            elif num == 4:
                offset = int(val)
            elif num == 5:
                size = int(val)
            elif num == 6:
                crc = int(val)
            elif num == 7:
                sliced = True
        return BundleEntry(name, dtype, tuple(shape), shard, offset, size, crc, sliced)


# ------------------------------------------------------------------- sorted table
def _snappy_decompress(src: bytes) -> bytes:
    """Raw snappy (format_description.txt of google/snappy): literals and back-references."""
    n, pos = _varint(src, 0)
    out = bytearray()
    while pos < len(src):
        tag = src[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                length = int.from_bytes(src[pos:pos + extra], "little")
                pos += extra
            length += 1
            out += src[pos:pos + length]
            pos += length
            continue
        if kind == 1:
            length, offset = ((tag >> 2) & 7) + 4, ((tag >> 5) << 8) | src[pos]
            pos += 1
        elif kind == 2:
            length, offset = (tag >> 2) + 1, int.from_bytes(src[pos:pos + 2], "little")
            pos += 2
        else:
            length, offset = (tag >> 2) + 1, int.from_bytes(src[pos:pos + 4], "little")
            pos += 4
        if offset == 0 or offset > len(out):
            raise ValueError("corrupt snappy block (bad back-reference)")
        for _ in range(length):  # may overlap itself
            out.append(out[-offset])
    if len(out) != n:
        raise ValueError(f"corrupt snappy block ({len(out)} bytes, header says {n})")
    return bytes(out)


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise ValueError("table block shorter than its restart count")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise ValueError("table block restart array exceeds the block")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + vlen]
        pos += vlen


class _Table:
    """Iterates a LevelDB-format table held in memory."""

    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.path = data, path
        if len(data) < _FOOTER_SIZE:
            raise ValueError(f"{path}: {len(data)} bytes, too short for a checkpoint index (truncated?)")
        magic = struct.unpack_from("<Q", data, len(data) - 8)[0]
        if magic != _TABLE_MAGIC:
            raise ValueError(f"{path}: not a TensorFlow checkpoint index (bad table magic {magic:#x}; "
                             f"expected {_TABLE_MAGIC:#x})")
        footer = data[len(data) - _FOOTER_SIZE:]
        _, pos = _varint(footer, 0)  # metaindex offset
        _, pos = _varint(footer, pos)  # metaindex size
        off, pos = _varint(footer, pos)
        size, _ = _varint(footer, pos)
        self.index = (off, size)

    def block(self, offset: int, size: int) -> bytes:
        end = offset + size + 5
        if end > len(self.data):
            raise ValueError(f"{self.path}: block at {offset} (+{size}) runs past the end of the file (truncated?)")
        raw = self.data[offset:offset + size]
        kind = self.data[offset + size]
        stored = struct.unpack_from("<I", self.data, offset + size + 1)[0]
        if _unmask(stored) != crc32c(raw + bytes([kind])):
            raise ValueError(f"{self.path}: checksum mismatch in the table block at offset {offset} (corrupt file)")
        if kind == 0:
            return raw
        if kind == 1:
            return _snappy_decompress(raw)
        raise ValueError(f"{self.path}: unknown block compression type {kind} at offset {offset}")

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for _, handle in _block_entries(self.block(*self.index)):
            off, pos = _varint(handle, 0)
            size, _ = _varint(handle, pos)
            yield from _block_entries(self.block(off, size))


# ------------------------------------------------------- keys of partitioned variables
def _ordered_string(key: bytes, pos: int) -> tuple[bytes, int]:
    """An OrderedCode string: 0x00 escaped as 00 ff, 0xff as ff 00, ended by 00 01."""
    out = bytearray()
    while pos + 1 < len(key):
        b, nxt = key[pos], key[pos + 1]
        if b == 0 and nxt == 1:
            return bytes(out), pos + 2
        if b in (0, 0xFF):
            out.append(b)
            pos += 2
        else:
            out.append(b)
            pos += 1
    raise ValueError("unterminated ordered-code string")


def _ordered_signed(key: bytes, pos: int) -> tuple[int, int]:
    """An OrderedCode ``SignedNumIncreasing`` of up to 7 bytes: the value in two's complement over
    ``L`` bytes whose first ``L`` bits are flipped, so the byte starts with ``L`` ones (a
    non-negative value) or ``L`` zeros (a negative one)."""
    first = key[pos]
    probe = first if first & 0x80 else first ^ 0xFF
    length = 0
    while length < 8 and probe & (0x80 >> length):
        length += 1
    if not 1 <= length <= 7:
        raise ValueError(f"unsupported ordered-code number (header byte {first:#x})")
    raw = bytearray(key[pos:pos + length])
    raw[0] ^= (0xFF << (8 - length)) & 0xFF
    return int.from_bytes(raw, "big", signed=True), pos + length


def _slice_key(key: bytes) -> tuple[str, tuple[tuple[int, int], ...]] | None:
    """(tensor name, ((start, length) per dim)) of a slice's data key (tensor_bundle.cc
    ``EncodeTensorNameSlice``: OrderedCode 0, name, rank, then start and length per dim, -1 =
    the whole dimension); ``None`` for ordinary keys."""
    if not key.startswith(b"\0"):
        return None
    name, pos = _ordered_string(key, 1)
    n = key[pos]  # NumIncreasing: a length byte, then big-endian bytes
    rank = int.from_bytes(key[pos + 1:pos + 1 + n], "big")
    pos += 1 + n
    extents = []
    for _ in range(rank):
        start, pos = _ordered_signed(key, pos)
        length, pos = _ordered_signed(key, pos)
        extents.append((start, length))
    return name.decode("utf-8", errors="replace"), tuple(extents)


# ---------------------------------------------------------------------------- bundle
def resolve_checkpoint(path: str | os.PathLike) -> str:
    """The checkpoint prefix for a prefix, a ``.index`` / ``.data-*`` file, or a directory.

    A directory is resolved through its ``checkpoint`` state file (``model_checkpoint_path``,
    as ``tf.train.latest_checkpoint``) or else its only ``*.index`` file.
    """
    p = str(path)
    if os.path.isfile(p + ".index"):
        return p
    if p.endswith(".index") and os.path.isfile(p):
        return p[: -len(".index")]
    m = re.match(r"^(.*)\.data-\d{5}-of-\d{5}$", p)
    if m and os.path.isfile(m.group(1) + ".index"):
        return m.group(1)
    if os.path.isdir(p):
        state = Path(p) / "checkpoint"
        if state.is_file():
            m = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(encoding="utf-8"), re.M)
            if m:
                prefix = m.group(1) if os.path.isabs(m.group(1)) else os.path.join(p, m.group(1))
                if os.path.isfile(prefix + ".index"):
                    return prefix
                raise FileNotFoundError(f"{state} names checkpoint {m.group(1)!r}, but {prefix}.index does not exist")
        indexes = sorted(Path(p).glob("*.index"))
        if len(indexes) == 1:
            return str(indexes[0])[: -len(".index")]
        if indexes:
            raise ValueError(f"checkpoint directory {p} holds {len(indexes)} checkpoints "
                             f"({', '.join(i.name for i in indexes[:4])}) and no 'checkpoint' file: name one prefix")
        raise FileNotFoundError(f"checkpoint directory {p} has no *.index file")
    raise FileNotFoundError(f"checkpoint {p!r} not found (expected {p}.index, a .index file or a checkpoint directory)")


class TensorBundle:
    """A TensorFlow checkpoint opened for reading: ``names()``, ``entry(name)``, ``read(name)``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.prefix = resolve_checkpoint(path)
        index_path = self.prefix + ".index"
        with open(index_path, "rb") as f:
            table = _Table(f.read(), index_path)
        self.num_shards, self.big_endian = 1, False
        self.entries: dict[str, BundleEntry] = {}
        self._slices: dict[str, list[tuple[tuple[tuple[int, int], ...], BundleEntry]]] = {}
        self._maps: dict[int, mmap.mmap] = {}
        for key, value in table.items():
            if key == b"":  # BundleHeaderProto
                for num, val in _fields(value):
                    if num == 1:
                        self.num_shards = int(val)
                    elif num == 2:
                        self.big_endian = int(val) == 1
                continue
            sliced = _slice_key(key)
            if sliced is not None:  # the bytes of one slice of a partitioned tensor
                self._slices.setdefault(sliced[0], []).append((sliced[1], BundleEntry.parse(sliced[0], value)))
                continue
            name = key.decode("utf-8", errors="replace")
            self.entries[name] = BundleEntry.parse(name, value)

    def __enter__(self) -> "TensorBundle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    def names(self) -> list[str]:
        return sorted(self.entries)

    def shard_path(self, shard: int) -> str:
        return f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}"

    def _shard(self, shard: int) -> mmap.mmap:
        if shard not in self._maps:
            path = self.shard_path(shard)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"checkpoint data shard {path} is missing (the index lists {self.num_shards})")
            with open(path, "rb") as f:
                self._maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.path.getsize(path) \
                    else mmap.mmap(-1, 1)
        return self._maps[shard]

    def read(self, name: str, *, verify: bool = True) -> np.ndarray:
        """The tensor ``name`` as a numpy array (a copy); crc32c-checked when ``verify``."""
        if name not in self.entries:
            raise KeyError(f"{self.prefix}: no tensor {name!r}")
        e = self.entries[name]
        if e.sliced:
            return self._assemble(e, verify)
        return self._read_entry(e, verify)

    def _assemble(self, e: BundleEntry, verify: bool) -> np.ndarray:
        """A tensor saved in slices (a partitioned variable, or one split by a TF2 sharding policy)."""
        parts = self._slices.get(e.name, [])
        index_of = {(tuple((a, b) for a, b in extents)): part for extents, part in parts}
        out: np.ndarray | None = None
        covered = 0
        for extents, part in index_of.items():
            piece = self._read_entry(part, verify)
            if out is None:
                out = np.empty(e.shape, dtype=piece.dtype)
            region = tuple(slice(None) if length == -1 else slice(start, start + length) for start, length in extents)
            out[region] = piece
            covered += piece.size
        total = int(np.prod(e.shape, dtype=np.int64))
        if out is None or covered != total:
            raise ValueError(f"{self.prefix}: the slices of tensor {e.name!r} cover {covered} of its {total} values")
        return out

    def _read_entry(self, e: BundleEntry, verify: bool) -> np.ndarray:
        name = e.name
        data = self._shard(e.shard_id)
        if e.offset + e.size > len(data) and e.size:
            raise ValueError(f"{self.shard_path(e.shard_id)}: tensor {name!r} at bytes {e.offset}..{e.offset + e.size} "
                             f"runs past the end of the file ({len(data)} bytes; truncated?)")
        raw = memoryview(data)[e.offset:e.offset + e.size]
        try:
            count = int(np.prod(e.shape, dtype=np.int64))
            if e.dtype == _DT_STRING:
                return self._strings(raw, count, e, verify)
            if verify and e.crc32c is not None and crc32c(raw) != _unmask(e.crc32c):
                raise ValueError(f"{self.shard_path(e.shard_id)}: checksum mismatch for tensor {name!r} (corrupt file)")
            if e.dtype == _DT_BFLOAT16:  # numpy has no bfloat16: widen to float32 (exact)
                bits = np.frombuffer(raw, dtype=">u2" if self.big_endian else "<u2", count=count)
                return (bits.astype(np.uint32) << 16).view(np.float32).reshape(e.shape)
            if e.dtype not in _DTYPES:
                raise ValueError(f"{self.prefix}: tensor {name!r} has dtype "
                                 f"{_DTYPE_NAMES.get(e.dtype, e.dtype)}, which this reader does not decode")
            dt = _DTYPES[e.dtype].newbyteorder(">" if self.big_endian else "<")
            if count * dt.itemsize != e.size:
                raise ValueError(f"{self.prefix}: tensor {name!r} {list(e.shape)} {dt} needs {count * dt.itemsize} "
                                 f"bytes, the entry says {e.size}")
            arr = np.frombuffer(raw, dtype=dt, count=count).reshape(e.shape)
            return arr.astype(dt.newbyteorder("="), copy=True)
        finally:
            raw.release()

    def _strings(self, raw: memoryview, count: int, e: BundleEntry, verify: bool) -> np.ndarray:
        # tensor_bundle.cc WriteStringTensor: the checksum covers each length as uint32 (uint64
        # when longer than 4 GiB), not its varint bytes, then the 4 stored bytes, then the strings.
        lengths, pos = [], 0
        for _ in range(count):
            n, pos = _varint(raw, pos)
            lengths.append(n)
        stored = bytes(raw[pos:pos + 4])
        pos += 4
        out = np.empty(count, dtype=object)
        for i, n in enumerate(lengths):
            out[i] = bytes(raw[pos:pos + n])
            pos += n
        if pos != e.size:
            raise ValueError(f"{self.prefix}: string tensor {e.name!r} holds {pos} bytes, the entry says {e.size}")
        if verify and e.crc32c is not None:
            covered = b"".join(struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n) for n in lengths)
            covered += stored + b"".join(out.tolist())
            if crc32c(covered) != _unmask(e.crc32c):
                raise ValueError(f"{self.shard_path(e.shard_id)}: checksum mismatch for string tensor {e.name!r} "
                                 f"(corrupt file)")
        return out.reshape(e.shape)


# Variables a converter never needs: optimizer slots, step counters, the object graph.
SKIP_MARKERS = ("/.OPTIMIZER_SLOT/", "optimizer/", "/Momentum", "global_step", "save_counter",
                "_CHECKPOINTABLE_OBJECT_GRAPH", "/ExponentialMovingAverage")
_TF2_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def read_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> dict[str, np.ndarray]:
    """Every numeric model variable of a TF checkpoint, without TensorFlow.

    Optimizer slots, step counters and the object graph are skipped, and TF2 names lose their
    ``/.ATTRIBUTES/VARIABLE_VALUE`` suffix (``backbone/layer_with_weights-0/kernel``).
    """
    out: dict[str, np.ndarray] = {}
    with TensorBundle(path) as bundle:
        for name in bundle.names():
            e = bundle.entries[name]
            if any(m in name for m in SKIP_MARKERS) or e.dtype in (_DT_STRING, 20, 21):
                continue
            key = name[: -len(_TF2_SUFFIX)] if name.endswith(_TF2_SUFFIX) else name
            out[key] = bundle.read(name, verify=verify)
    log.debug("read %d variables from %s", len(out), bundle.prefix)
    return out
