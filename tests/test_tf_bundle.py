"""The numpy-only TensorFlow checkpoint reader against TensorFlow's own ``tf.train.load_checkpoint``.

The ``tf`` tests let TensorFlow (the project's TF venv, ``TORCHSPINE_TF_PYTHON``) write TF1
``Saver`` and TF2 ``tf.train.Checkpoint`` files with several shards and many dtypes
(``tests/tf_side/write_bundles.py``), then require the numpy reader to return exactly what
TensorFlow reads. The others need no TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from torchspine.interop.tf_bundle import TensorBundle, crc32c, read_checkpoint, resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tf_python: str) -> Path:
    out = tmp_path_factory.mktemp("bundles")
    proc = subprocess.run([tf_python, str(REPO / "tests" / "tf_side" / "write_bundles.py"), str(out)],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _expected(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    with np.load(folder / "expected.npz") as data:
        names = json.loads(str(data["names"]))
        numeric = {n: data[f"v{i}"] for i, n in enumerate(names)}
    meta = json.loads((folder / "expected_strings.json").read_text())
    strings = {n: np.array([bytes.fromhex(h) for h in s["hex"]], dtype=object).reshape(s["shape"])
               for n, s in meta["strings"].items()}
    return numeric, strings, meta["dtypes"]


@pytest.mark.tf
@pytest.mark.parametrize("kind,prefix,shards", [("tf1", "model.ckpt", 2), ("tf2", "ckpt-1", 3),
                                                ("tf2_big", "ckpt-1", 1)])
def test_reader_matches_tensorflow(bundles: Path, kind: str, prefix: str, shards: int) -> None:
    folder = bundles / kind
    numeric, strings, dtypes = _expected(folder)
    with TensorBundle(folder / prefix) as b:
        assert b.num_shards == shards  # TF itself split the data into this many files
        assert set(b.names()) == set(numeric) | set(strings)
        for name, want in numeric.items():
            got = b.read(name)  # crc32c verified
            # bfloat16 arrives widened to float32 on both sides (exact: bfloat16 is float32's top half).
            assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
            assert got.shape == want.shape, name
            np.testing.assert_array_equal(got, want, err_msg=name)
        for name, want in strings.items():
            got = b.read(name)
            assert got.shape == want.shape and list(got.reshape(-1)) == list(want.reshape(-1)), name
        if kind == "tf2":  # MaxShardSizePolicy cut the largest kernels into slices across shards
            assert any(e.sliced for e in b.entries.values())
    if kind == "tf1":  # dtypes this checkpoint was built to cover
        assert {dtypes[n] for n in dtypes} >= {"float32", "float64", "int32", "int64", "bool", "float16",
                                               "bfloat16", "string"}
        assert numeric["empty"].shape == (0, 3) and numeric["scalar"].shape == ()


@pytest.mark.tf
def test_read_checkpoint_skips_bookkeeping_and_strips_tf2_suffix(bundles: Path) -> None:
    tf2 = read_checkpoint(bundles / "tf2")  # a directory: resolved through its 'checkpoint' file
    assert "model/backbone/blocks/0/kernel" in tf2
    assert tf2["model/backbone/blocks/2/gamma"].dtype == np.float64
    assert not any("save_counter" in n or "OBJECT_GRAPH" in n for n in tf2)
    assert "model/label" not in tf2  # strings are not model weights
    tf1 = read_checkpoint(bundles / "tf1" / "model.ckpt.index")
    assert "global_step" not in tf1 and tf1["ints/i64"].tolist() == [-(2**40), 0, 2**62, 7]


@pytest.mark.tf
def test_damaged_files_are_named(bundles: Path, tmp_path: Path) -> None:
    src = bundles / "tf2_big"
    for f in src.glob("ckpt-1.*"):
        shutil.copy(f, tmp_path / f.name)
    data = tmp_path / "ckpt-1.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[1000] ^= 0x40  # one flipped bit inside the float tensor
    data.write_bytes(bytes(raw))
    with TensorBundle(tmp_path / "ckpt-1") as b:
        with pytest.raises(ValueError, match=r"checksum mismatch for tensor 'model/w/"):
            b.read("model/w/.ATTRIBUTES/VARIABLE_VALUE")
        assert b.read("model/w/.ATTRIBUTES/VARIABLE_VALUE", verify=False).shape == (1000, 1200)
    data.write_bytes(bytes(raw[: len(raw) // 2]))  # a truncated download
    with TensorBundle(tmp_path / "ckpt-1") as b, pytest.raises(ValueError, match="truncated"):
        b.read("model/w/.ATTRIBUTES/VARIABLE_VALUE")
    index = tmp_path / "ckpt-1.index"
    index.write_bytes(index.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"ckpt-1\.index: not a TensorFlow checkpoint index"):
        TensorBundle(tmp_path / "ckpt-1")



@pytest.mark.tf
def test_a_missing_shard_is_named(bundles: Path, tmp_path: Path) -> None:
    # TF split this checkpoint into 3 data files; a download that lost the middle one must say
    # which file is missing (not fail on an index offset or return a partial state).
    for f in (bundles / "tf2").glob("ckpt-1.*"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "ckpt-1.data-00001-of-00003").unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt-1\.data-00001-of-00003 is missing \(the index lists 3\)"):
        read_checkpoint(tmp_path / "ckpt-1")

# ----------------------------------------------------------------- without TensorFlow
def test_crc32c_known_values() -> None:
    # The CRC-32C check value of RFC 3720 (iSCSI) appendix B.4: "123456789" -> 0xE3069283,
    # and 32 zero bytes -> 0x8A9136AA.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    # The chunked path (long inputs) equals the byte-wise path on the same bytes.
    data = np.random.default_rng(0).integers(0, 256, 300_001, dtype=np.uint8).tobytes()
    from torchspine.interop.tf_bundle import _crc_bytes

    assert crc32c(data) == _crc_bytes(0xFFFFFFFF, data) ^ 0xFFFFFFFF


def test_resolve_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"has no \*\.index"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "a.index").write_bytes(b"")
    (tmp_path / "b.index").write_bytes(b"")
    with pytest.raises(ValueError, match="holds 2 checkpoints"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "b"\n')
    assert resolve_checkpoint(tmp_path) == str(tmp_path / "b")
    with pytest.raises(ValueError, match=r"a\.index: .*too short"):
        TensorBundle(tmp_path / "a")


def test_snappy_block_decoding() -> None:
    # google/snappy format_description.txt: varint length 11, a 5-byte literal "abcde" (tag
    # (5-1)<<2), then a copy with 1-byte offset (tag 01): length 6 at offset 5 -> "abcdeabcdea".
    from torchspine.interop.tf_bundle import _snappy_decompress

    assert _snappy_decompress(bytes([11, 4 << 2]) + b"abcde" + bytes([((6 - 4) << 2) | 1, 5])) == b"abcdeabcdea"


def test_reader_needs_no_tensorflow() -> None:
    # The module imports no TensorFlow, protobuf or torch: run it in a fresh interpreter that forbids them.
    code = ("import sys; [sys.modules.__setitem__(m, None) for m in ('tensorflow', 'google.protobuf', 'torch')];"
            "import importlib.util as u; s = u.spec_from_file_location('b', sys.argv[1]); m = u.module_from_spec(s);"
            "sys.modules['b'] = m; s.loader.exec_module(m); print(hex(m.crc32c(b'123456789')))")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "src" / "torchspine" / "interop" / "tf_bundle.py")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "0xe3069283", proc.stderr


def test_slice_keys_decode() -> None:
    # tensor_bundle.cc EncodeTensorNameSlice: OrderedCode NumIncreasing(0), the name (0x00 escaped as
    # 00 ff, ended by 00 01), NumIncreasing(rank), then SignedNumIncreasing start and length per
    # dimension (-1: the whole dimension). Signed numbers of one byte are 0x80 ^ value (0 -> 80,
    # 3 -> 83, -1 -> 7f); 100 needs two bytes, 0xc000 ^ 100 = c0 64.
    from torchspine.interop.tf_bundle import _slice_key

    key = b"\x00" + b"a/b\x00\xffc" + b"\x00\x01" + b"\x01\x02" + bytes([0x80, 0x7F, 0x83]) + b"\xc0\x64"
    assert _slice_key(key) == ("a/b\x00c", ((0, -1), (3, 100)))
    assert _slice_key(b"model/w/.ATTRIBUTES/VARIABLE_VALUE") is None
