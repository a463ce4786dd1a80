"""The persisted contract between raw files and models: ``schema.json`` plus vocabularies.

A prepared dataset directory holds::

    DIR/schema.json          this file's :class:`Schema`, as JSON
    DIR/vocab/<field>.json   one list of raw values per categorical field (index = position + 2)
    DIR/vocab/__domain__.json  the train domains (index = position + 2), e.g. "gender=F|age=25|occupation=4"
    DIR/<split>/*.npy        encoded arrays (see :mod:`adactr.data.encode`)

Index convention for every categorical (and sequence) field: ``0`` = missing (and sequence padding),
``1`` = out-of-vocabulary (unseen at fit time, or rarer than ``min_count``), ``2..`` = vocabulary.
A model therefore never sees an index error for a value it was not trained on. The domain index
follows the same convention: ``0`` = ``<missing>`` (a domain column empty), ``1`` = ``<unseen>`` (a domain
not in train, or rarer than ``--min-domain-count``), the shared fallback of per-domain layers.

No torch here: this module is shared by the readers and the encoder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from adactr.errors import DataError

MISSING = 0
OOV = 1
RESERVED = 2  # number of reserved indices before the vocabulary starts

SCHEMA_VERSION = 1


class Kind(str, Enum):
    CATEGORICAL = "categorical"
    NUMERICAL = "numerical"
    SEQUENCE = "sequence"  # multi-valued categorical, e.g. "Comedy|Romance"


class NumericTransform(str, Enum):
    """How a numerical column is encoded. Every transform but ``standard`` turns a number into a bucket
    token, so the field is embedded like a categorical one (and ``--min-count`` applies to its buckets);
    an empty value is missing (index 0) under all of them."""

    # Criteo winners' discretisation (FuxiCTR/BARS ``convert_to_bucket``): v > 2 -> floor(ln(v)^2), else
    # floor(v) itself; the big buckets are kept apart from the small integers (3 -> bucket 1 is not v = 1).
    LOG_BUCKET = "log_bucket"
    # DynInt paper (Sec. 4.1): floor(ln(v^2)). v = 0 (ln 0 = -inf) is a bucket of its own, not missing;
    # v < 0 shares the bucket of |v| (v^2 is the same), as in the formula.
    LOG_V2 = "log_v2"
    # xDeepInt's official code (src/transformation.py): floor(ln(v^2 + 1)); 0 -> 0, v < 0 as |v|.
    LOG1P_V2 = "log1p_v2"
    # z-score with the train mean/std; missing -> 0 (the mean). The value scales a per-field vector.
    STANDARD = "standard"

    @property
    def buckets(self) -> bool:
        """True when the transform gives bucket tokens (embedded by index), not a scaled value."""
        return self is not NumericTransform.STANDARD


class Pooling(str, Enum):
    MEAN = "mean"
    SUM = "sum"


@dataclass(frozen=True)
class FieldSpec:
    """One input column as the model sees it."""

    name: str
    kind: Kind
    # categorical / sequence / log-bucketed numerical: vocabulary size including the 2 reserved slots
    vocab_size: int = 0
    min_count: int = 1
    # numerical only
    transform: NumericTransform | None = None
    mean: float = 0.0
    std: float = 1.0
    # sequence only
    sep: str = "|"
    max_len: int = 0
    pooling: Pooling = Pooling.MEAN

    @property
    def embedded_as_index(self) -> bool:
        """True when the encoded value is an index into an embedding table (cat array)."""
        return self.kind is Kind.CATEGORICAL or (
            self.kind is Kind.NUMERICAL and self.transform is not None and self.transform.buckets)


@dataclass(frozen=True)
class FieldLayout:
    """What a model needs to know about its inputs: sizes only, in the order of the encoded arrays.

    ``cat`` columns come first in the (B, F, D) embedding output, then ``num``, then ``seq``.
    """

    names: tuple[str, ...]
    cat_sizes: tuple[int, ...]
    n_num: int
    seq_sizes: tuple[int, ...]
    seq_pooling: tuple[Pooling, ...]
    n_domains: int = 0  # 0 when the dataset has no domain column

    @property
    def n_fields(self) -> int:
        return len(self.cat_sizes) + self.n_num + len(self.seq_sizes)

    def index(self, name: str) -> int:
        """Position of a field in the (B, F, D) embedding output."""
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(f"unknown field {name!r}; fields are: {', '.join(self.names)}") from None


@dataclass(frozen=True)
class Schema:
    label: str
    fields: tuple[FieldSpec, ...]
    # column holding the domain / scenario; for a combination of columns their names joined by "|"
    domain: str | None = None
    domain_names: tuple[str, ...] = ()  # index -> name, reserved slots included
    # the columns whose combination is the domain (empty when the domain is one column: `domain`)
    domain_columns: tuple[str, ...] = ()
    group: str | None = None  # column holding the GAUC group (e.g. user id)
    ignore: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # every raw column the train file had (used to check new files)
    source_format: str = "csv"
    version: int = SCHEMA_VERSION
    extra: dict[str, str] = field(default_factory=dict)

    # ---- derived views -------------------------------------------------------------------------
    @property
    def domain_sources(self) -> tuple[str, ...]:
        """The raw columns the domain is read from: (), one column, or the combined columns."""
        return self.domain_columns or ((self.domain,) if self.domain else ())

    @property
    def cat_fields(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.embedded_as_index)

    @property
    def num_fields(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.kind is Kind.NUMERICAL and not f.embedded_as_index)

    @property
    def seq_fields(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.kind is Kind.SEQUENCE)

    def layout(self) -> FieldLayout:
        cat, num, seq = self.cat_fields, self.num_fields, self.seq_fields
        return FieldLayout(
            names=tuple(f.name for f in (*cat, *num, *seq)),
            cat_sizes=tuple(f.vocab_size for f in cat),
            n_num=len(num),
            seq_sizes=tuple(f.vocab_size for f in seq),
            seq_pooling=tuple(f.pooling for f in seq),
            n_domains=len(self.domain_names),
        )

    def fingerprint(self) -> str:
        """Short hash of what a model depends on: field names, kinds, sizes and order."""
        key = json.dumps([(f.name, f.kind.value, f.vocab_size, f.transform and f.transform.value)
                          for f in self.fields] + [self.label, self.domain, len(self.domain_names)])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    # ---- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        d = asdict(self)
        d["fields"] = [_field_to_json(f) for f in self.fields]
        if not self.domain_columns:  # a one-column domain's schema.json is as it always was
            del d["domain_columns"]
        d["fingerprint"] = self.fingerprint()
        return d

    @classmethod
    def from_json(cls, d: dict, *, source: str = "schema.json") -> Schema:
        try:
            if d.get("version") != SCHEMA_VERSION:
                raise DataError(f"schema version {d.get('version')} is not {SCHEMA_VERSION}", file=source)
            fields = tuple(_field_from_json(f) for f in d["fields"])
            return cls(label=d["label"], fields=fields, domain=d.get("domain"),
                       domain_names=tuple(d.get("domain_names", ())),
                       domain_columns=tuple(d.get("domain_columns", ())), group=d.get("group"),
                       ignore=tuple(d.get("ignore", ())), columns=tuple(d.get("columns", ())),
                       source_format=d.get("source_format", "csv"), version=d["version"],
                       extra=dict(d.get("extra", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"not a valid adactr schema ({e})", file=source) from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> Schema:
        if not path.exists():
            raise DataError("no schema.json here: is this a directory made by `adactr prepare`?",
                            file=str(path))
        return cls.from_json(json.loads(path.read_text()), source=str(path))


def _field_to_json(f: FieldSpec) -> dict:
    d = asdict(f)
    d["kind"] = f.kind.value
    d["transform"] = f.transform.value if f.transform else None
    d["pooling"] = f.pooling.value
    return d


def _field_from_json(d: dict) -> FieldSpec:
    d = dict(d)
    d["kind"] = Kind(d["kind"])
    d["transform"] = NumericTransform(d["transform"]) if d.get("transform") else None
    d["pooling"] = Pooling(d.get("pooling", "mean"))
    return FieldSpec(**d)
