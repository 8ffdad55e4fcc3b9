"""The one mapping between a detector's labels and an annotation file's category ids.

A detector predicts labels ``0..num_classes - 1``; label 0 is background (RetinaNet's
post-processing and torchvision's Mask R-CNN both drop it). Two conventions give the other
labels a COCO category id, and a saved model records which one it uses
(``info["label_convention"]``, written by :meth:`LabelMap.to_info`):

* ``"contiguous"`` (every model torchspine trains): labels ``1..K`` are the file's categories
  in ascending id order, whatever the ids are (0-based, sparse, any order in the file).
  ``info["category_ids"][label - 1]`` is the id and ``info["label_names"][label - 1]`` the name.
* ``"category_id"`` (the official detectors: ``num_classes`` 91, COCO ids 1..90): the label *is*
  the category id. ``info["label_names"][label]`` is the name (``__background__`` at 0, ``N/A``
  for ids COCO does not use) and ``info["category_ids"]`` is ``0..num_classes - 1``.

Files written before the convention was recorded are read by :meth:`LabelMap.from_info` from the
length of their lists, as those versions wrote them (``num_classes - 1`` entries: contiguous;
``num_classes`` entries: index = label).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["BY_CATEGORY_ID", "CONTIGUOUS", "LabelMap"]

CONTIGUOUS = "contiguous"
BY_CATEGORY_ID = "category_id"
CONVENTIONS = (CONTIGUOUS, BY_CATEGORY_ID)
BACKGROUND = "__background__"


@dataclass(frozen=True)
class LabelMap:
    """Labels ``1..K`` of a detector and the category id and name of each.

    ``category_ids[label - 1]`` and ``names[label - 1]`` in both conventions; ``convention``
    says how the model's label space was laid out (and how :meth:`to_info` writes it).
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]
    convention: str = CONTIGUOUS

    def __post_init__(self) -> None:
        ids = tuple(int(c) for c in self.category_ids)
        names = tuple(str(n) for n in self.names)
        object.__setattr__(self, "category_ids", ids)
        object.__setattr__(self, "names", names)
        if self.convention not in CONVENTIONS:
            raise ValueError(f"label convention must be one of {CONVENTIONS}, got {self.convention!r}")
        if len(names) != len(ids):
            raise ValueError(f"label map: {len(ids)} category ids but {len(names)} names")
        if len(set(ids)) != len(ids):
            dup = sorted({c for c in ids if ids.count(c) > 1})
            raise ValueError(f"label map: category ids {dup} appear more than once in {list(ids)}")
        if self.convention == BY_CATEGORY_ID and ids != tuple(range(1, len(ids) + 1)):
            raise ValueError(f"label map: the {BY_CATEGORY_ID!r} convention needs labels = ids 1..{len(ids)}, "
                             f"got {list(ids)[:10]}")
        object.__setattr__(self, "_label_of", {c: i + 1 for i, c in enumerate(ids)})

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_categories(cls, categories: Iterable[Mapping[str, Any]], *, order: Sequence[int] | None = None,
                        source: str = "categories") -> LabelMap:
        """Contiguous labels for a COCO ``categories`` list: ascending ids, or ``order`` (the
        category ids of labels 1..K, e.g. the training set's for a validation file; every id of
        ``categories`` must be among them)."""
        named: dict[int, str] = {}
        for c in categories:
            if "id" not in c:
                raise ValueError(f"{source}: category {dict(c)!r} has no 'id'")
            named[int(c["id"])] = str(c.get("name", c["id"]))
        if order is None:
            ids = sorted(named)
        else:
            ids = [int(c) for c in order]
            unknown = sorted(set(named) - set(ids))
            if unknown:
                raise ValueError(f"{source}: categories {unknown} are not among the model's category ids {ids}")
        return cls(tuple(ids), tuple(named.get(c, str(c)) for c in ids), CONTIGUOUS)

    @classmethod
    def by_category_id(cls, names_by_label: Sequence[str]) -> LabelMap:
        """The label *is* the category id: ``names_by_label[i]`` names label / id ``i``
        (index 0, the background, is not a category)."""
        names = list(names_by_label)[1:]
        return cls(tuple(range(1, len(names) + 1)), tuple(names), BY_CATEGORY_ID)

    @classmethod
    def from_info(cls, info: Mapping[str, Any], *, source: str = "model info") -> LabelMap | None:
        """The map a saved model's ``info`` records; ``None`` when it records neither category
        ids, names nor ``num_classes``. Errors name ``source``, the field and its value."""
        n = info.get("num_classes")
        n = int(n) if n is not None else None
        ids, names = info.get("category_ids"), info.get("label_names")
        ids = [int(c) for c in ids] if ids else None
        names = [str(x) for x in names] if names else None
        convention = info.get("label_convention")
        if convention is None:  # written before the convention was recorded: the list lengths tell
            if ids is not None:
                if n is None or len(ids) == n - 1:
                    convention = CONTIGUOUS
                elif len(ids) == n:  # index = label
                    if ids != list(range(n)):
                        # a label space indexed from 0 with other ids: label L was ids[L]
                        return cls(tuple(ids[1:]), tuple(_names(names, n, source)[1:] if names else
                                                         map(str, ids[1:])), CONTIGUOUS)
                    convention = BY_CATEGORY_ID
                else:
                    raise ValueError(f"{source}: category_ids has {len(ids)} entries for num_classes {n} "
                                     f"(expected {n - 1}, one per label 1..{n - 1})")
            elif n is not None:  # no ids: labels were the ids themselves
                convention = BY_CATEGORY_ID
            elif names is not None:
                raise ValueError(f"{source}: label_names without num_classes or category_ids cannot be mapped "
                                 f"to category ids")
            else:
                return None
        if convention == CONTIGUOUS:
            if ids is None:
                raise ValueError(f"{source}: label_convention 'contiguous' without category_ids")
            if n is not None and len(ids) != n - 1:
                raise ValueError(f"{source}: category_ids has {len(ids)} entries for num_classes {n} "
                                 f"(the contiguous convention lists labels 1..{n - 1})")
            if names is not None and len(names) != len(ids):
                raise ValueError(f"{source}: label_names has {len(names)} entries for {len(ids)} category_ids")
            return cls(tuple(ids), tuple(names if names is not None else map(str, ids)), CONTIGUOUS)
        if convention == BY_CATEGORY_ID:
            if n is None:
                n = len(names) if names is not None else len(ids) if ids is not None else None
            if n is None:
                raise ValueError(f"{source}: label_convention 'category_id' without num_classes")
            if ids is not None and ids != list(range(n)):
                raise ValueError(f"{source}: label_convention 'category_id' with category_ids {ids[:10]}... "
                                 f"(expected 0..{n - 1}: the label is the id)")
            return cls.by_category_id(_names(names, n, source) if names else [BACKGROUND, *map(str, range(1, n))])
        raise ValueError(f"{source}: label_convention must be one of {CONVENTIONS}, got {convention!r}")

    # ------------------------------------------------------------------ use
    @property
    def num_classes(self) -> int:
        """Classifier outputs, the background (label 0) included."""
        return len(self.category_ids) + 1

    @property
    def names_by_label(self) -> list[str]:
        """Name of each label, index = label (``__background__`` at 0)."""
        return [BACKGROUND, *self.names]

    def category_id(self, label: int) -> int:
        """The category id of ``label`` (1..K)."""
        label = int(label)
        if not 1 <= label <= len(self.category_ids):
            raise ValueError(f"label {label} is outside the model's labels 1..{len(self.category_ids)}")
        return self.category_ids[label - 1]

    def label(self, category_id: int) -> int:
        """The label of category id ``category_id``."""
        try:
            return self._label_of[int(category_id)]
        except KeyError:
            raise ValueError(f"category id {category_id} is not among the model's category ids "
                             f"{list(self.category_ids)[:20]}") from None

    def name(self, label: int) -> str:
        """The name of ``label`` (0: ``__background__``)."""
        if int(label) == 0:
            return BACKGROUND
        self.category_id(label)  # checks the range
        return self.names[int(label) - 1]

    def check_covers(self, category_ids: Iterable[int], *, source: str) -> None:
        """ValueError naming ``source`` when an id of ``category_ids`` has no label here."""
        unknown = sorted(set(int(c) for c in category_ids) - set(self.category_ids))
        if unknown:
            raise ValueError(f"{source}: categories {unknown} are not among the model's category ids "
                             f"{list(self.category_ids)}")

    def to_info(self) -> dict[str, Any]:
        """The entries a saved model's ``info`` records (read back by :meth:`from_info`)."""
        if self.convention == BY_CATEGORY_ID:
            return {"label_convention": BY_CATEGORY_ID, "category_ids": list(range(self.num_classes)),
                    "label_names": self.names_by_label}
        return {"label_convention": CONTIGUOUS, "category_ids": list(self.category_ids),
                "label_names": list(self.names)}


def _names(names: list[str], n: int, source: str) -> list[str]:
    """Names index = label (``n`` of them) from a list of ``n`` (index = label) or ``n - 1``."""
    if len(names) == n:
        return names
    if len(names) == n - 1:
        return [BACKGROUND, *names]
    raise ValueError(f"{source}: label_names has {len(names)} entries for num_classes {n}")
