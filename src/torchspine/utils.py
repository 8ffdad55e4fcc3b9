"""Small shared helpers: atomic file writes with errors that name the file, stale temporary
files, JSON files read with errors that name the file, device resolution, and the ImageNet
normalisation constants."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

# ImageNet mean / std (RGB, 0-1 scale): the input normalisation of the official SpineNet models
# (tensorflow/tpu models/official/detection/utils/input_utils.py normalize_image), used by the
# detectors' transform, the classification data and the timm entry points.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

logger = logging.getLogger(__name__)

# Below this much free space, a failed write is reported as a full disk (torch.save and
# safetensors report a full disk as "unexpected pos ..." or "file write failed").
_LOW_SPACE_BYTES = 64 * 2**20


def _tmp_glob(path: Path) -> str:
    return f".{path.name}.*.tmp"


def _write_error(path: Path, e: BaseException) -> OSError | None:
    """A clear ``OSError`` for a failed write of ``path``, or ``None`` to re-raise ``e`` as it is."""
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return OSError(errno.ENOSPC, f"no space left on device while writing {path}; the previous file, "
                                     "if any, is unchanged")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OSError(code, f"cannot write {path}: {os.strerror(code).lower()} (is the folder "
                             f"{path.parent} writable?)")
    if isinstance(e, RuntimeError):  # torch.save / safetensors wrap the OSError
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            return None
        if free < _LOW_SPACE_BYTES:
            return OSError(errno.ENOSPC, f"no space left on device while writing {path} ({free} bytes free; "
                                         f"{e}); the previous file, if any, is unchanged")
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash mid-write leaves the previous file intact (rename is atomic on POSIX). A full disk
    or a folder that cannot be written raises ``OSError`` naming ``path`` and the cause; the
    temporary file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        clear = _write_error(path, e)
        if clear is not None:
            raise clear from e
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        clear = _write_error(path, e) if isinstance(e, (OSError, RuntimeError)) else None
        if clear is not None:
            raise clear from e
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, _write)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` left beside ``path`` when a process was
    killed mid-write (``.<name>.*.tmp``); returns the removed paths. Call it only when no other
    process is writing ``path`` (for example when a run starts or resumes)."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(_tmp_glob(path)):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError as e:
            logger.warning("could not remove stale temporary file %s: %s", tmp, e)
    if removed:
        logger.info("removed %d stale temporary file(s) of %s left by an interrupted write", len(removed), path)
    return removed


def read_json(path: str | os.PathLike, *, what: str = "file") -> Any:
    """Parse a JSON file; a missing file or bad JSON raises an error naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder, not a JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows editors) is dropped
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text (JSON) file ({e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def resolve_device(name: str | None = "auto", *, local_rank: int | None = None) -> "torch.device":
    """``"auto"`` (or ``None``) -> CUDA if available else CPU; ``"cuda"`` with ``local_rank`` ->
    that rank's GPU. A CUDA device without CUDA is a ValueError naming the device."""
    import torch

    name = "auto" if name is None else str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r} is not a valid torch device ({e})") from e
