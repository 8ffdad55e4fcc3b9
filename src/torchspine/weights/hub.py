"""Download, verify, unpack and convert official checkpoints, once, into a local cache.

Cache layout (``cache_dir()``: ``$TORCHSPINE_HOME``, else ``$TORCH_HOME/torchspine``, else
``$XDG_CACHE_HOME/torch/torchspine``, else ``~/.cache/torch/torchspine``, like torch.hub)::

    downloads/<folder>-<file>.tar.gz   the official tarball (``.part`` while downloading)
    digests.json                       sha256 and size of each tarball, recorded on first download
    models/<entry name>.safetensors    the converted model (the torchspine saved-model format)

Downloads resume a ``.part`` file with an HTTP ``Range`` request, retry on a cut connection,
and check the size and sha256 (from the catalogue, or recorded by the first download) naming
the file and the expected value. torch.hub's ``download_url_to_file`` has no resume, hence
the small downloader here (standard library ``urllib``, ``tqdm`` for progress). Tarballs are
unpacked with tarfile's ``data`` filter where Python has it, after checking every member
ourselves (no absolute paths, no ``..``, no links or devices). Conversion runs once; later calls
read the converted file and never touch the network. Set ``TORCHSPINE_OFFLINE=1`` (or pass
``offline=True``) to forbid the network: a missing file then raises ``FileNotFoundError``
naming the URL and where to put the tarball by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import socket
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from torchspine.weights.catalogue import PretrainedWeights

__all__ = ["cache_dir", "download", "extract_tar", "fetch", "find_checkpoint", "is_offline"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError)


def _failed(url: str, attempts: int, error: Exception | None, part: Path) -> str:
    return (f"downloading {url} failed after {attempts} attempts ({error}); "
            f"{part.stat().st_size if part.exists() else 0} bytes are kept in {part} and the next call resumes "
            f"from there")


def cache_dir() -> Path:
    """The torchspine cache folder (see the module docstring for the environment variables)."""
    if os.environ.get("TORCHSPINE_HOME"):
        return Path(os.environ["TORCHSPINE_HOME"]).expanduser()
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(torch_home).expanduser() / "torchspine"


def is_offline(offline: bool | None = None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get("TORCHSPINE_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class _Truncated(Exception):
    """The server closed the connection before sending every byte (retried, resumed)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_once(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (HTTP Range from its current size)."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "torchspine"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # range not satisfiable: the part file is already complete
            return
        raise
    with response:
        status = response.status
        mode = "ab"
        if start and status != 206:  # the server ignored the range: start over
            log.info("%s: server does not resume (HTTP %d); downloading from the start", url, status)
            start, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected = start + int(length) if length is not None else None
        from tqdm.auto import tqdm

        got = start
        with open(part, mode) as f, tqdm(total=expected, initial=start, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=part.name.removesuffix(".part"),
                                         disable=not progress, leave=False) as bar:
            while True:
                try:
                    block = response.read(_CHUNK)
                except http.client.IncompleteRead as e:
                    f.write(e.partial)
                    raise _Truncated(f"connection closed after {got + len(e.partial)} bytes") from e
                if not block:
                    break
                f.write(block)
                got += len(block)
                bar.update(len(block))
        if expected is not None and got < expected:
            raise _Truncated(f"connection closed after {got} of {expected} bytes")


def download(url: str, dest: str | os.PathLike, *, size: int | None = None, sha256: str | None = None,
             retries: int = 5, backoff: float = 1.0, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (resumable, retried) and check its size and sha256.

    A partial ``dest.part`` from an earlier attempt is resumed with an HTTP ``Range`` request.
    ``dest`` appears only once complete and verified. Raises ``ValueError`` naming the file and
    the expected value when the size or digest differs (the bad file is removed), and
    ``ConnectionError`` naming the URL after ``retries`` failed attempts (the partial file is
    kept for the next call to resume).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
            log.info("%s: retry %d/%d (resuming at %d bytes) after: %s", url, attempt, retries,
                     part.stat().st_size if part.exists() else 0, last)
        try:
            _fetch_once(url, part, progress, timeout)
            break
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code != 429:  # 404, 403 ...: retrying will not help
                raise ConnectionError(f"downloading {url}: HTTP {e.code} {e.reason}") from e
            last = e
        except (_Truncated, *_RETRYABLE) as e:
            last = e
            # A host name that does not resolve (no network, or a mistyped host) is not a cut
            # connection: one retry covers a DNS hiccup, more would only make an offline user wait.
            if isinstance(getattr(e, "reason", None), socket.gaierror) and attempt >= 1:
                raise ConnectionError(_failed(url, attempt + 1, e, part)) from e
    else:
        raise ConnectionError(_failed(url, retries + 1, last, part))
    _verify(part, dest.name, size=size, sha256=sha256)
    os.replace(part, dest)
    return dest


def _verify(path: Path, label: str, *, size: int | None, sha256: str | None) -> str:
    """Check size and digest of ``path``; on a mismatch remove it and raise ValueError."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        path.unlink()
        raise ValueError(f"{label}: downloaded {actual_size:,} bytes, expected {size:,} (truncated or changed "
                         f"upstream); the file was removed, try again")
    digest = _sha256(path)
    if sha256 is not None and digest != sha256.lower():
        path.unlink()
        raise ValueError(f"{label}: sha256 {digest} does not match the expected {sha256}; the file was removed")
    return digest


# ----------------------------------------------------------------------------- tarballs
def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"{archive}: refusing member {name!r}: absolute path")
    if ".." in parts:
        raise ValueError(f"{archive}: refusing member {name!r}: '..' would leave the extraction folder")
    if member.issym() or member.islnk():
        raise ValueError(f"{archive}: refusing member {name!r}: links are not extracted")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"{archive}: refusing member {name!r}: not a regular file or folder")


def extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack ``archive`` into ``dest`` after checking every member (see the module docstring).

    Raises ``ValueError`` naming the archive and member for an unsafe member, and for a
    truncated or corrupt archive.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, archive)
                if not (root / m.name).resolve().is_relative_to(root):
                    raise ValueError(f"{archive}: refusing member {m.name!r}: it resolves outside {dest}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python without extraction filters: the checks above are the guard
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{archive}: cannot unpack ({e}); the file is truncated or not a tar archive: "
                         f"delete it and download again") from e
    return dest


def find_checkpoint(folder: str | os.PathLike) -> str:
    """The TF checkpoint prefix inside an unpacked tarball (``.../model.ckpt-231500``, ``.../ckpt-1``).

    With several, the one with the largest global step (the number after the last ``-``).
    """
    folder = Path(folder)
    indexes = sorted(folder.rglob("*.index"))
    if not indexes:
        found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())[:10]
        raise ValueError(f"{folder}: no TensorFlow checkpoint (*.index) in the archive; it holds {found}")

    def step(p: Path) -> int:
        tail = p.name[: -len(".index")].rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    best = max(indexes, key=lambda p: (step(p), str(p)))
    return str(best)[: -len(".index")]


# ----------------------------------------------------------------------------- the cache
def _digests_file() -> Path:
    return cache_dir() / "digests.json"


def _recorded(archive: str) -> dict[str, Any]:
    path = _digests_file()
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()).get(archive, {}))
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: damaged digest record ({e}); delete it to record the digests again") from e


def _record(archive: str, url: str, size: int, digest: str) -> None:
    from torchspine.utils import atomic_write_text

    path = _digests_file()
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[archive] = {"url": url, "size": size, "sha256": digest}
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _unrecord(archive: str) -> None:
    from torchspine.utils import atomic_write_text

    path = _digests_file()
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    if data.pop(archive, None) is not None:
        log.info("%s: digest record removed (the tarball did not unpack and convert)", archive)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def archive_path(entry: PretrainedWeights) -> Path:
    return cache_dir() / "downloads" / entry.archive


def model_path(entry: PretrainedWeights) -> Path:
    return cache_dir() / "models" / f"{entry.name}.safetensors"


def _ensure_archive(entry: PretrainedWeights, *, offline: bool, progress: bool, retries: int) -> Path:
    dest = archive_path(entry)
    recorded = _recorded(entry.archive)
    size = entry.size if entry.size is not None else recorded.get("size")
    sha256 = entry.sha256 or recorded.get("sha256")
    if dest.is_file():
        if not recorded:  # placed by hand or recorded before: check what the catalogue knows
            digest = _verify(dest, str(dest), size=entry.size, sha256=entry.sha256)
            _record(entry.archive, entry.url, dest.stat().st_size, digest)
        return dest
    if offline:
        raise FileNotFoundError(
            f"weights {entry.name} are not in the cache and the network is off (TORCHSPINE_OFFLINE): download "
            f"{entry.url} elsewhere and put it at {dest} (or unset TORCHSPINE_OFFLINE)")
    log.info("downloading %s -> %s", entry.url, dest)
    try:
        download(entry.url, dest, size=size, sha256=sha256, progress=progress, retries=retries)
    except ConnectionError as e:
        raise ConnectionError(f"{e}. Without network access, download {entry.url} elsewhere and put it at "
                              f"{dest}") from e
    digest = _sha256(dest)
    if not recorded:
        log.info("%s: sha256 %s (%d bytes) recorded in %s", entry.archive, digest, dest.stat().st_size,
                 _digests_file())
        _record(entry.archive, entry.url, dest.stat().st_size, digest)
    return dest


def fetch(entry: PretrainedWeights, *, offline: bool | None = None, progress: bool = True, retries: int = 5,
          convert: Callable[..., Any] | None = None) -> Path:
    """The converted model file of ``entry``: from the cache, or downloaded, unpacked and converted.

    The returned file is in the saved-model format (:func:`torchspine.models.saved.load_model`).
    """
    from torchspine.models.saved import read_model_metadata

    out = model_path(entry)
    if out.is_file():
        try:
            read_model_metadata(out)  # the header only: a damaged file is converted again, not handed out
            return out
        except ValueError as e:
            log.warning("%s: the cached model is damaged (%s); removing it and converting again", out, e)
            out.unlink()
    had_record = bool(_recorded(entry.archive))
    archive = _ensure_archive(entry, offline=is_offline(offline), progress=progress, retries=retries)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="unpack-", dir=out.parent) as tmp:
            extract_tar(archive, tmp)
            prefix = find_checkpoint(tmp)
            log.info("converting %s (%s) for %s", entry.archive, Path(prefix).name, entry.model)
            try:
                (convert or convert_entry)(entry, prefix, out)
            except ValueError as e:
                raise ValueError(f"weights {entry.name}: {archive} (kept in the cache) does not convert into "
                                 f"{entry.model} with the catalogue settings {entry.overrides}: {e}") from e
    except BaseException:
        if not had_record:  # a digest recorded for a tarball that turned out bad would refuse the right one later
            _unrecord(entry.archive)
        raise
    return out


def convert_entry(entry: PretrainedWeights, checkpoint: str, out: str | os.PathLike) -> Path:
    """Convert an unpacked official checkpoint with the entry's settings and save it with its info."""
    from torchspine.data.labels import LabelMap
    from torchspine.interop.convert import build_converted, convert_checkpoint
    from torchspine.models.saved import save_model
    from torchspine.weights.catalogue import coco_label_names, imagenet_label_names

    result = convert_checkpoint(checkpoint, entry.model, codebase=entry.codebase, overrides=dict(entry.overrides))
    model = build_converted(entry.model, result.overrides, result.state_dict)
    info: dict[str, Any] = {
        "task": entry.task, "num_classes": entry.num_classes, "image_size": entry.input_size,
        "weights": entry.name, "published": entry.published,
        "provenance": {"url": entry.url, "source": entry.source, "config": entry.config, "codebase": entry.codebase,
                       "checkpoint": Path(checkpoint).name, "part_of": entry.part_of,
                       "sha256": _recorded(entry.archive).get("sha256")},
    }
    if entry.labels == "coco91":  # the official detectors: label = COCO category id
        info.update(LabelMap.by_category_id(coco_label_names()).to_info())
    elif entry.labels == "imagenet1001":  # a classifier: class names, index = class
        info["label_names"] = imagenet_label_names()
    return save_model(model, out, name=entry.model, overrides=result.overrides, info=info)


def remove(entry: PretrainedWeights) -> None:
    """Remove ``entry``'s converted file and tarball from the cache."""
    for p in (model_path(entry), archive_path(entry)):
        if p.exists():
            p.unlink()
