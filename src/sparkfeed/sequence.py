"""How a loader batches arrays of varying length: the ``sequence`` reader argument.

``sequence={"tokens": "pad"}`` names each column to batch as a sequence and how; a mode name
is the short form of :class:`Sequence` with its defaults, and ``Sequence(...)`` (or a dict of
its fields) the full one. :func:`check_sequence` is the one place that checks the argument's
values; what depends on the dataset (is the column an array of numbers? how long are its rows?)
is checked when the loader is made, by :mod:`sparkfeed.reader.sequence`, which also does the
batching.

The modes, for a column ``x`` (see docs/sequences.md for the full story):

- ``pad``: ``x`` is ``(batch, L, *inner)``, L the longest row of the batch (rounded up to
  ``pad_to_multiple_of``, at most ``max_length``), with ``x_lengths`` and, if asked, ``x_mask``.
  Batches are cut as for any column: only an epoch's last batch is short.
- ``bucket``: each batch holds rows of one length bucket only, padded to the bucket's bound, so
  there are as many shapes as buckets (jitted steps compile once per bucket).
- ``pack``: rows laid end to end in ``(batch, seq_len)`` rows, with ``x_segment_ids`` and
  ``x_position_ids``; a row longer than what is left of a packed row continues in the next.
- ``ragged``: for ``make_tf_dataset`` a ``tf.RaggedTensor``; elsewhere the values end to end
  (``(tokens, *inner)``) with ``x_lengths``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

Mode = Literal["pad", "bucket", "pack", "ragged"]
MODES: tuple[Mode, ...] = ("pad", "bucket", "pack", "ragged")

_OPTIONS_OF: dict[str, tuple[str, ...]] = {
    "pad": ("max_length", "pad_to_multiple_of", "pad_value", "mask"),
    "bucket": ("max_length", "pad_to_multiple_of", "pad_value", "mask", "buckets"),
    "pack": ("max_length", "pad_value", "mask", "seq_len"),
    "ragged": ("max_length",),
}
"""Which fields each mode uses; giving another is an error rather than a silent no-op."""


@dataclasses.dataclass(frozen=True)
class Sequence:
    """How one column of arrays of varying length is batched (the values of ``sequence=``).

    Args:
        mode: ``"pad"``, ``"bucket"``, ``"pack"`` or ``"ragged"`` (see the module docstring).
        max_length: Rows longer than this are truncated to their first ``max_length`` values,
            silently: a limit you set (the row itself is kept). None: no limit.
        pad_to_multiple_of: ``pad``: the padded length is rounded up to a multiple of this
            (then capped by ``max_length``); ``bucket``: so are the bucket bounds.
        pad_value: What fills the padding (0).
        mask: Also yield ``<column>_mask``, a bool array, True over the values.
        buckets: ``bucket``: the upper bounds of the buckets, increasing; a row goes to the
            first bucket whose bound is at least its length and is padded to that bound.
            None: powers of two from 8 up to the longest row (measured when the cache was
            written) or ``max_length``.
        seq_len: ``pack``: the length of every packed row (required).
    """

    mode: Mode = "pad"
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    pad_value: int | float = 0
    mask: bool = False
    buckets: tuple[int, ...] | None = None
    seq_len: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Sequence mode={self.mode!r} is not allowed: it must be one of {MODES}")
        for name in ("max_length", "pad_to_multiple_of", "seq_len"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _positive(name, value))
        value = self.pad_value
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"Sequence pad_value={self.pad_value!r} is not allowed: it must be a number")
        object.__setattr__(self, "pad_value", value)
        if not isinstance(self.mask, bool | np.bool_):
            raise ValueError(f"Sequence mask={self.mask!r} is not allowed: it must be a bool")
        object.__setattr__(self, "mask", bool(self.mask))
        if self.buckets is not None:
            object.__setattr__(self, "buckets", _buckets(self.buckets))
        if self.mode == "pack" and self.seq_len is None:
            raise ValueError("Sequence mode='pack' needs seq_len, the length of every packed row")
        # A field at its default counts as not given, whatever the mode.
        given = [name for name in _FIELDS[1:] if getattr(self, name) != _DEFAULTS[name]]
        wrong = [name for name in given if name not in _OPTIONS_OF[self.mode]]
        if wrong:
            raise ValueError(
                f"Sequence {', '.join(f'{n}={getattr(self, n)!r}' for n in wrong)} does nothing with mode="
                f"{self.mode!r}, which takes {', '.join(_OPTIONS_OF[self.mode])}"
            )

    def describe(self) -> dict[str, Any]:
        """The fields that differ from the defaults, as plain data (for the reader state's identity).

        A whole ``pad_value`` is written as an int: ``1`` and ``1.0`` pad alike, and a state
        saved with one resumes with the other (its identity is compared as text).
        """
        out: dict[str, Any] = {"mode": self.mode}
        for name in _FIELDS[1:]:
            value = getattr(self, name)
            if value != _DEFAULTS[name]:
                if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                    value = int(value)
                out[name] = list(value) if isinstance(value, tuple) else value
        return out


_FIELDS = tuple(field.name for field in dataclasses.fields(Sequence))
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(Sequence)}


def _positive(name: str, value: object) -> int:
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_) and value >= 1:
        return int(value)
    raise ValueError(f"Sequence {name}={value!r} is not allowed: it must be an integer >= 1 or None")


def _buckets(value: object) -> tuple[int, ...]:
    allowed = "it must be increasing integers >= 1, the buckets' upper bounds, such as (64, 128, 256, 512)"
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise ValueError(f"Sequence buckets={value!r} is not allowed: {allowed}")
    items = list(value)
    if not items or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 1 for v in items):
        raise ValueError(f"Sequence buckets={value!r} is not allowed: {allowed}")
    bounds = tuple(int(v) for v in items)
    if any(b <= a for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"Sequence buckets={value!r} is not allowed: {allowed}")
    return bounds


def check_sequence(value: object) -> dict[str, Sequence] | None:
    """The ``sequence`` reader argument as ``{column: Sequence}``, every value checked.

    Accepts ``{"col": "pad"}`` (a mode), ``{"col": Sequence(...)}`` and ``{"col": {"mode":
    "pack", "seq_len": 512}}`` (a Sequence's fields), or None.

    Raises:
        ValueError: Anything else; the message names the value and shows the accepted forms.
    """
    if value is None:
        return None
    example = "such as {'tokens': 'pad'} or {'tokens': sparkfeed.Sequence('pack', seq_len=512)}"
    if not isinstance(value, Mapping) or not value:
        raise ValueError(
            f"sequence={value!r} is not allowed: it must be a dict of column name -> mode or Sequence, {example}"
        )
    out: dict[str, Sequence] = {}
    for name, spec in value.items():
        if not isinstance(name, str):
            raise ValueError(f"sequence key {name!r} is not allowed: keys are column names, {example}")
        if isinstance(spec, Sequence):
            out[name] = spec
        elif isinstance(spec, str):
            if spec not in MODES:
                raise ValueError(
                    f"sequence={{{name!r}: {spec!r}}} is not allowed: the mode must be one of {MODES}, {example}"
                )
            if spec == "pack":
                raise ValueError(
                    f"sequence={{{name!r}: 'pack'}} needs the packed rows' length: "
                    f"{{{name!r}: sparkfeed.Sequence('pack', seq_len=512)}}"
                )
            out[name] = Sequence(spec)
        elif isinstance(spec, Mapping):
            unknown = sorted(set(spec) - set(_FIELDS), key=str)
            if unknown:
                raise ValueError(
                    f"sequence[{name!r}] has unknown keys {unknown}; a Sequence's fields are {list(_FIELDS)}"
                )
            out[name] = Sequence(**spec)
        else:
            raise ValueError(
                f"sequence[{name!r}]={spec!r} is not allowed: it must be a mode ({', '.join(MODES)}), a "
                f"sparkfeed.Sequence or a dict of its fields, {example}"
            )
    deciding = [name for name, spec in out.items() if spec.mode in ("bucket", "pack")]
    if len(deciding) > 1 and len({out[name].mode for name in deciding}) > 1:
        raise ValueError(
            f"sequence: columns {deciding} ask for both 'bucket' and 'pack'; one way of cutting batches per loader"
        )
    if len([name for name in deciding if out[name].mode == "bucket"]) > 1:
        raise ValueError(
            f"sequence: columns {deciding} all ask for 'bucket': batches are bucketed by one column's lengths; "
            "pad the others"
        )
    packed = [out[name] for name in deciding if out[name].mode == "pack"]
    if len({(s.seq_len, s.max_length) for s in packed}) > 1:
        raise ValueError(
            "sequence: the 'pack' columns differ in seq_len or max_length; columns packed together share them"
        )
    return out
