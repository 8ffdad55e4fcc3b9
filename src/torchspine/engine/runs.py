"""Training runs as self-contained artefacts: find the model in a run folder or a saved file,
rebuild it with the settings it was trained with, and resolve the run's paths.

A run folder (``torchspine train --out RUN``) holds ``model.safetensors`` in the one saved-model
format (:mod:`torchspine.models.saved`: model name, overrides and an ``info`` dict with
``num_classes``, the label map (``label_convention``, ``category_ids``, ``label_names``: see
:mod:`torchspine.data.labels`), ``image_size``, ``preprocessing``) and
``config.json`` (the training config). :func:`load_trained` accepts the folder, the file, or a
model file written before the ``info`` dict existed (then the folder's ``config.json`` and its
annotation file supply the same facts).

Paths stored in a run are absolute (written by ``torchspine train``); older runs store them as
given, so :func:`resolve_run_path` tries them relative to the current folder, then to the run
folder and its parent, and names every place it looked.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from torchspine.data.labels import LabelMap

__all__ = ["TrainedModel", "find_model_file", "load_run_config", "load_trained", "resolve_pretrained",
           "resolve_run_path", "resume_config"]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"


@dataclass
class TrainedModel:
    """A rebuilt model and what the run says about it."""

    model: nn.Module
    name: str
    info: dict[str, Any]
    path: Path
    run_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int | None:
        v = self.info.get("image_size") or self.config.get("image_size")
        return int(v) if v else None

    @property
    def num_classes(self) -> int | None:
        v = self.info.get("num_classes")
        return int(v) if v is not None else None

    @property
    def labels(self) -> LabelMap | None:
        """The model's label map (:meth:`LabelMap.from_info` of its ``info``); a detector with
        the official 91 classes and no recorded names gets the COCO names (label = category id)."""
        if self._official_coco:
            from torchspine.weights.catalogue import coco_label_names

            return LabelMap.by_category_id(coco_label_names())
        return LabelMap.from_info(self.info, source=str(self.path))

    @property
    def _official_coco(self) -> bool:
        return not self.info.get("label_names") and not self.info.get("category_ids") and self.num_classes == 91

    @property
    def label_names(self) -> list[str] | None:
        """Name of each label, index = label (label 0, the background, first), when the model
        records them (or has the official COCO label space)."""
        labels = self.labels
        named = self.info.get("label_names") or self._official_coco
        return labels.names_by_label if labels is not None and named else None

    def category_id(self, label: int) -> int:
        """The annotation file's category id of label ``label`` (the label itself when the
        model records no map)."""
        labels = self.labels
        return int(label) if labels is None else labels.category_id(label)


def find_model_file(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(model file, run folder or None)`` for a run folder or a model file."""
    p = Path(path)
    if p.is_dir():
        f = p / MODEL_FILE
        if not f.is_file():
            extra = " (it has checkpoint.pt: the run did not finish; --resume it)" if (p / "checkpoint.pt").is_file() \
                else ""
            raise FileNotFoundError(f"{p} is a folder without {MODEL_FILE}: not a finished training output "
                                    f"folder{extra}")
        return f, p
    if not p.is_file():
        raise FileNotFoundError(f"model file or run folder not found: {p}")
    run = p.parent if (p.parent / "config.json").is_file() else None
    return p, run


def load_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run folder's ``config.json`` (``{}`` when absent)."""
    from torchspine.utils import read_json

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return {}
    cfg = read_json(path, what="run config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object of training settings")
    return cfg


def resolve_run_path(value: str | os.PathLike | None, run_dir: str | os.PathLike | None, *,
                     what: str = "path") -> str | None:
    """A path recorded in a run, made usable from any working folder (see the module docstring)."""
    if value is None:
        return None
    p = Path(value)
    if p.is_absolute():
        if not p.exists():
            raise FileNotFoundError(f"{what} {str(p)!r} recorded in the run does not exist (moved?)")
        return str(p)
    tried = [Path.cwd() / p]
    if run_dir is not None:
        run = Path(run_dir).resolve()
        # the run folder and the folders above it (a run at PROJECT/runs/NAME was trained from PROJECT)
        tried += [d / p for d in [run, *list(run.parents)[:3]]]
    for cand in tried:
        if cand.exists():
            return str(cand.resolve())
    raise FileNotFoundError(f"{what} {str(p)!r} recorded in the run was not found; looked in "
                            + ", ".join(repr(str(t)) for t in tried))


def _legacy_info(cfg: dict[str, Any], run_dir: Path | None) -> dict[str, Any]:
    """``info`` for a model file without it: from the run's config and annotation file."""
    from torchspine.utils import read_json

    info: dict[str, Any] = {"task": "detection"}
    if cfg.get("image_size"):
        info["image_size"] = int(cfg["image_size"])
    ann = cfg.get("train_ann")
    if ann is None and cfg:
        from torchspine.data.synth import ensure_synth

        ann = ensure_synth()["train_ann"]  # the built-in dataset the run trained on
    if ann is not None:
        data = read_json(resolve_run_path(ann, run_dir, what="train_ann"), what="annotation file")
        cats = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        n = max(cats) + 1 if cats else 1  # such runs trained on the file's category ids as labels
        info.update(num_classes=n, **LabelMap.by_category_id([cats.get(i, str(i)) for i in range(n)]).to_info())
    return info


def load_trained(path: str | os.PathLike, *, device: str = "cpu", **overrides: Any) -> TrainedModel:
    """Rebuild the model of a run folder or a saved model file, in eval mode.

    ``overrides`` change settings that do not change the weights (``score_thresh``,
    ``image_size``, ...)."""
    from torchspine.models.registry import create_model
    from torchspine.models.saved import NoModelMetadata, load_model, load_weights, read_model_metadata

    file, run_dir = find_model_file(path)
    cfg = load_run_config(run_dir) if run_dir else {}
    try:
        meta = read_model_metadata(file)
    except NoModelMetadata:  # damaged metadata or an unreadable file: the error names it
        meta = None
    if meta is not None and (meta.get("info") or {}).get("source") != "converted" and not overrides:
        model = load_model(file, device=device)
        info = dict(meta["info"])
        name = meta["model"]
    elif meta is not None:
        kw = {**meta["overrides"], **overrides} if isinstance(meta["overrides"], dict) else meta["overrides"]
        try:
            model = create_model(meta["model"], **kw)
        except (ValueError, TypeError) as e:  # damaged or foreign metadata: name the file (as load_model does)
            raise ValueError(f"{file}: its metadata (model {meta['model']!r}, settings {kw!r:.300}) does not build "
                             f"a model: {e}") from e
        load_weights(model, file)
        model.to(device).eval()
        info, name = dict(meta["info"]), meta["model"]
    else:  # tensors only: the run's config.json says how to build it
        if not cfg.get("model"):
            raise ValueError(f"{file}: holds weights without torchspine model metadata and no config.json beside "
                             f"it; give --model and its settings, or a run folder")
        info = _legacy_info(cfg, run_dir)
        kw = dict(cfg.get("model_overrides") or {})
        if cfg.get("stochastic_depth_rate") is not None:
            kw.setdefault("stochastic_depth_rate", cfg["stochastic_depth_rate"])
        kw.setdefault("num_classes", info.get("num_classes", 91))
        kw.setdefault("image_size", info.get("image_size", 640))
        kw.update(overrides)
        name = cfg["model"]
        model = create_model(name, **kw)
        load_weights(model, file)
        model.to(device).eval()
        model.torchspine_info = info
    if run_dir is not None and not info.get("image_size") and cfg.get("image_size"):
        info["image_size"] = int(cfg["image_size"])
    return TrainedModel(model=model, name=name, info=info, path=file, run_dir=run_dir, config=cfg)


def resolve_pretrained(source: str | os.PathLike, *, model: str | None = None) -> Path:
    """The saved-model file ``source`` names: a file, a run folder, or a catalogue entry of
    :mod:`torchspine.weights` (downloaded once; from the cache afterwards). This is the one place
    fine-tuning resolves a ``--weights`` value."""
    p = Path(source)
    if p.exists():
        return find_model_file(p)[0]
    if os.sep in str(source) or str(source).endswith((".safetensors", ".pt", ".pth")):
        raise FileNotFoundError(f"--weights {str(source)!r}: no such file or run folder")
    try:
        import torchspine.weights as catalogue
    except ImportError:
        raise FileNotFoundError(f"--weights {str(source)!r}: no such file or run folder (and this torchspine has "
                                f"no weights catalogue)") from None
    name = str(source)
    if model is not None and name not in catalogue.CATALOGUE:
        entry = catalogue.resolve_weights(model, name)  # a tag of the model being trained: "coco"
    else:
        entry = catalogue.get_weights(name)  # ValueError with close matches
    return Path(catalogue.fetch(entry))


# Fields that may change when a run is resumed (they do not change what is computed).
RESUME_MAY_CHANGE = frozenset({"device", "num_workers", "num_threads", "progress", "resume", "output_dir",
                               "log_interval", "tensorboard", "eval_max_images"})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def resume_config(output_dir: str | os.PathLike, given: dict[str, Any], *, flags: dict[str, str] | None = None,
                  recipe: dict[str, Any] | None = None):
    """The config of the run in ``output_dir`` for ``--resume``: everything comes from the run's
    ``config.json``; each field in ``given`` (the command line) or ``recipe`` (a recipe named
    again) must agree with it, except :data:`RESUME_MAY_CHANGE`. The error names the first
    field that differs (as its command-line flag, from ``flags``)."""
    from torchspine.engine.config import TrainConfig

    run = Path(output_dir)
    saved = load_run_config(run)
    if not saved:
        raise FileNotFoundError(f"--resume: {run / 'config.json'} not found (is {str(run)!r} the --out folder of "
                                f"the run to continue?)")
    base = TrainConfig.from_dict(saved, source=str(run / "config.json"))
    cur = base.to_dict()
    # a recipe value the command line overrides did not make the run (the command line won then too)
    from_recipe = {k: v for k, v in (recipe or {}).items() if k not in given}
    for source, values in (("recipe", from_recipe), ("command line", given)):
        for key, value in values.items():
            if key in RESUME_MAY_CHANGE or key.startswith("_") or key not in cur:
                continue
            if key in ("train_ann", "train_images", "val_ann", "val_images") and value is not None and \
                    cur[key] is not None:
                value, have = str(Path(value).resolve()), resolve_run_path(cur[key], run, what=key)
            else:
                have = cur[key]
            if not _same(value, have):
                flag = (flags or {}).get(key, key)
                hint = ""
                if key == "max_steps":
                    # The learning-rate schedule (warm-up, step or cosine decay) is laid out over
                    # max_steps, so a resumed run with another length would not be the run it was.
                    hint = (f"; to train longer, start a new run from this one's weights: "
                            f"--weights {run / 'model.safetensors'} --out NEW_FOLDER")
                raise ValueError(f"--resume: {flag} {value!r} ({source}) differs from the run's {key} {have!r} "
                                 f"recorded in {run / 'config.json'}; leave it out to continue that run, or train "
                                 f"into another --out{hint}")
    over = {k: v for k, v in given.items() if k in RESUME_MAY_CHANGE}
    # paths recorded relative by older runs: make them absolute now
    paths = {k: resolve_run_path(cur[k], run, what=k) for k in ("train_ann", "train_images", "val_ann", "val_images")
             if cur[k] is not None}
    return base.replace(**{**paths, **over, "resume": True})
