"""docs/migration.md runs as written and covers every parameter, so the migration guide never lies.

Its ``python`` blocks run in order in one namespace holding the suite's Spark session, as a
reader would run them in one session. Its tables are checked against the code (every parameter
of sparkfeed's signatures, every key of ``ReaderArgs``, every public name) and against
Petastorm 0.13.1's API, written out below from ``petastorm/spark/spark_dataset_converter.py``,
``petastorm/reader.py``, ``petastorm/transform.py``, ``petastorm/predicates.py`` and
``petastorm/pytorch.py`` (Petastorm cannot be installed beside sparkfeed).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sparkfeed
import sparkfeed.predicates
from sparkfeed import SparkDatasetConverter, TransformSpec, make_spark_converter
from sparkfeed.distributed import RANK_VARIABLES
from sparkfeed.options import PETASTORM_DEFAULTS, PETASTORM_ONLY, ReaderArgs
from sparkfeed.torch import check_data_loader_fn
from sparkfeed.transform import edit_field

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "migration.md"
EMPTY = inspect.Parameter.empty

# --------------------------------------------------------------------------- Petastorm 0.13.1's API

PETASTORM_SIGNATURES: dict[str, list[tuple[str, Any]]] = {
    "make_spark_converter": [
        ("df", EMPTY),
        ("parquet_row_group_size_bytes", 32 * 1024 * 1024),
        ("compression_codec", None),
        ("dtype", "float32"),
    ],
    "make_tf_dataset": [
        ("batch_size", None),
        ("prefetch", None),
        ("num_epochs", None),
        ("workers_count", None),
        ("shuffling_queue_capacity", None),
    ],
    "make_torch_dataloader": [
        ("batch_size", 32),
        ("num_epochs", None),
        ("workers_count", None),
        ("shuffling_queue_capacity", 0),
        ("data_loader_fn", None),
    ],
}
"""Petastorm's positional parameters and defaults (its loaders then take ``**petastorm_reader_kwargs``)."""

MAKE_BATCH_READER = [
    "dataset_url_or_urls",
    "schema_fields",
    "reader_pool_type",
    "workers_count",
    "results_queue_size",
    "seed",
    "shuffle_rows",
    "shuffle_row_groups",
    "shuffle_row_drop_partitions",
    "predicate",
    "rowgroup_selector",
    "num_epochs",
    "cur_shard",
    "shard_count",
    "shard_seed",
    "cache_type",
    "cache_location",
    "cache_size_limit",
    "cache_row_size_estimate",
    "cache_extra_settings",
    "hdfs_driver",
    "transform_spec",
    "filters",
    "storage_options",
    "zmq_copy_buffers",
    "filesystem",
    "convert_early_to_numpy",
]
"""Every parameter of ``petastorm.make_batch_reader``, in order: where the converter's loaders sent keywords."""

PETASTORM_NAMES: dict[str, list[str]] = {
    "`make_spark_converter`": [name for name, _ in PETASTORM_SIGNATURES["make_spark_converter"]],
    "`SparkDatasetConverter`": [
        "PARENT_CACHE_DIR_URL_CONF",
        "cache_dir_url",
        "file_urls",
        "dataset_size",
        "__len__",
        "delete",
        "make_tf_dataset",
        "make_torch_dataloader",
        "register_delete_dir_handler",
    ],
    "`make_torch_dataloader`": [name for name, _ in PETASTORM_SIGNATURES["make_torch_dataloader"]],
    "`make_tf_dataset`": [name for name, _ in PETASTORM_SIGNATURES["make_tf_dataset"]],
    "Reader keywords": MAKE_BATCH_READER,
    "Petastorm's torch loaders and `data_loader_fn`": [
        "data_loader_fn",
        "DataLoader",
        "BatchedDataLoader",
        "InMemBatchedDataLoader",
    ],
    "`TransformSpec` and `edit_field`": [
        "TransformSpec",
        "func",
        "edit_fields",
        "removed_fields",
        "selected_fields",
        "edit_field",
        "name",
        "numpy_dtype",
        "shape",
        "nullable",
    ],
    "Predicates": [
        "PredicateBase",
        "in_set",
        "in_intersection",
        "in_lambda",
        "in_negate",
        "in_reduce",
        "in_pseudorandom_split",
    ],
}
"""Each section's Petastorm names, which its tables' first column must hold."""

# --------------------------------------------------------------------------- sparkfeed's API


def _parameters(fn: Callable[..., Any]) -> list[str]:
    """A callable's parameters as a table row names them: without ``self`` and ``**kwargs``."""
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
    ]


SPARKFEED_NAMES: dict[str, list[str]] = {
    "`make_spark_converter`": _parameters(make_spark_converter),
    "`SparkDatasetConverter`": [
        *(name for name in vars(SparkDatasetConverter) if not name.startswith("_")),
        "__len__",
        "register_delete_dir_handler",
    ],
    "`make_torch_dataloader`": _parameters(SparkDatasetConverter.make_torch_dataloader),
    "`make_tf_dataset`": _parameters(SparkDatasetConverter.make_tf_dataset),
    "`make_numpy_iterator` and `make_jax_iterator`": [
        *_parameters(SparkDatasetConverter.make_numpy_iterator),
        *_parameters(SparkDatasetConverter.make_jax_iterator),
    ],
    "Reader keywords": list(ReaderArgs.__annotations__),
    "Petastorm's torch loaders and `data_loader_fn`": ["data_loader_fn"],
    "`TransformSpec` and `edit_field`": [
        "TransformSpec",
        *(field.name for field in dataclasses.fields(TransformSpec)),
        "edit_field",
        *_parameters(edit_field),
    ],
    "Predicates": list(sparkfeed.predicates.__all__),
}
"""Each section's sparkfeed names, which its tables' second column must hold."""

SIGNATURES: dict[str, Callable[..., Any]] = {
    "make_spark_converter": make_spark_converter,
    "make_torch_dataloader": SparkDatasetConverter.make_torch_dataloader,
    "make_tf_dataset": SparkDatasetConverter.make_tf_dataset,
    "make_numpy_iterator": SparkDatasetConverter.make_numpy_iterator,
    "make_jax_iterator": SparkDatasetConverter.make_jax_iterator,
    "TransformSpec": TransformSpec,
    "edit_field": edit_field,
}
"""The calls whose signature the guide writes out, as ``sparkfeed: `name(...)```."""

# --------------------------------------------------------------------------- reading the guide


def _guide() -> str:
    return GUIDE.read_text()


def _lines_outside_code(text: str) -> Iterator[tuple[int, str]]:
    """The guide's lines that are not inside a fenced block (a ``#`` comment is no heading)."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def _headings(text: str) -> list[str]:
    return [line.lstrip("#").strip() for _, line in _lines_outside_code(text) if re.match(r"#{1,6} ", line)]


def _table_rows(text: str) -> dict[str, list[list[str]]]:
    """Each heading's table rows (header and separator left out), as lists of cells."""
    sections: dict[str, list[list[str]]] = {}
    current = ""
    header_next = False
    for _, line in _lines_outside_code(text):
        if re.match(r"#{1,6} ", line):
            current = line.lstrip("#").strip()
            sections.setdefault(current, [])
            header_next = True
            continue
        if not line.startswith("|"):
            header_next = True
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header_next or all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            header_next = False
            continue
        sections[current].append(cells)
    return sections


def _names(cell: str) -> set[str]:
    """The identifiers that start the cell's code spans: `batch_size`, `**kwargs` → batch_size, kwargs."""
    names = set()
    for span in re.findall(r"`([^`]+)`", cell):
        found = re.match(r"\**([A-Za-z_][A-Za-z0-9_]*)", span)
        if found:
            names.add(found.group(1))
    return names


def _column(section: str, index: int) -> set[str]:
    rows = _table_rows(_guide())[section]
    assert rows, f"the guide has no table under {section!r}"
    return set().union(*(_names(row[index]) for row in rows))


def _render(name: str, parameters: list[tuple[str, Any, Any]]) -> str:
    """``name(a, b=1, *, c=None, **kwargs)`` from (name, kind, default) triples, as the guide writes calls."""
    parts: list[str] = []
    starred = False
    for parameter, kind, default in parameters:
        if kind is inspect.Parameter.VAR_KEYWORD:
            parts.append(f"**{parameter}")
            continue
        if kind is inspect.Parameter.VAR_POSITIONAL:
            parts.append(f"*{parameter}")
            starred = True
            continue
        if kind is inspect.Parameter.KEYWORD_ONLY and not starred:
            parts.append("*")
            starred = True
        parts.append(parameter if default is EMPTY else f"{parameter}={default!r}")
    return f"{name}({', '.join(parts)})"


def _sparkfeed_signature(name: str) -> str:
    parameters = inspect.signature(SIGNATURES[name]).parameters.values()
    return _render(name, [(p.name, p.kind, p.default) for p in parameters if p.name != "self"])


def _petastorm_signature(name: str) -> str:
    positional = [(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, default) for p, default in PETASTORM_SIGNATURES[name]]
    if name != "make_spark_converter":
        positional.append(("petastorm_reader_kwargs", inspect.Parameter.VAR_KEYWORD, EMPTY))
    return _render(name, positional)


def _github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


# --------------------------------------------------------------------------- the tests


@pytest.fixture
def guide_session(spark, tmp_path, monkeypatch) -> Iterator[Any]:
    """The suite's session as a migrating user has it: no sparkfeed conf, no launcher, caches under tmp_path.

    The guide shows Petastorm's conf key choosing the cache location, which needs sparkfeed's own
    key (set by the suite's fixture, and winning over Petastorm's) out of the way; both are put
    back as they were.
    """
    for pair in RANK_VARIABLES:
        for name in pair:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPARKFEED_CACHE_DIR", str(tmp_path / "caches"))
    keys = (SparkDatasetConverter.CACHE_DIR_CONF, SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF)
    saved = {key: spark.conf.get(key, None) for key in keys}
    for key in keys:
        spark.conf.unset(key)
    try:
        yield spark
    finally:
        for key, value in saved.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def test_every_python_block_of_the_guide_runs_in_order(guide_session) -> None:
    text = _guide()
    blocks = [
        (text.count("\n", 0, match.start(1)), match.group(1))
        for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    ]
    assert len(blocks) >= 10
    namespace: dict[str, Any] = {"spark": guide_session, "__name__": "migration_guide"}
    for line, code in blocks:
        # Padded so that a failure's traceback names the guide's own line.
        exec(compile("\n" * line + code, str(GUIDE), "exec"), namespace)
    assert isinstance(namespace["converter"], SparkDatasetConverter)


@pytest.mark.parametrize("section", sorted(SPARKFEED_NAMES))
def test_the_tables_cover_every_sparkfeed_parameter(section: str) -> None:
    missing = [name for name in SPARKFEED_NAMES[section] if name not in _column(section, 1)]
    assert not missing, f"no row under {section!r} names these sparkfeed parameters in its second column: {missing}"


@pytest.mark.parametrize("section", sorted(PETASTORM_NAMES))
def test_the_tables_cover_every_petastorm_parameter(section: str) -> None:
    missing = [name for name in PETASTORM_NAMES[section] if name not in _column(section, 0)]
    assert not missing, f"no row under {section!r} names these Petastorm parameters in its first column: {missing}"


def test_every_public_name_of_sparkfeed_is_in_the_guide() -> None:
    text = _guide()
    public = [name for name in sparkfeed.__all__ if name != "__version__"]
    assert [name for name in public if not re.search(rf"`(sparkfeed\.)?{name}\b", text)] == []


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_the_signatures_written_out_are_the_codes(name: str) -> None:
    assert f"sparkfeed: `{_sparkfeed_signature(name)}`" in _guide()


@pytest.mark.parametrize("name", sorted(PETASTORM_SIGNATURES))
def test_petastorms_positional_orders_are_sparkfeeds(name: str) -> None:
    assert f"Petastorm: `{_petastorm_signature(name)}`" in _guide()
    ours = list(inspect.signature(SIGNATURES[name]).parameters.values())
    ours = [p for p in ours if p.name != "self"][: len(PETASTORM_SIGNATURES[name])]
    assert [(p.name, p.default) for p in ours] == PETASTORM_SIGNATURES[name]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in ours)


def test_every_refused_petastorm_keyword_quotes_the_codes_advice() -> None:
    rows = {name: row for row in _table_rows(_guide())["Reader keywords"] for name in _names(row[0])}
    assert set(PETASTORM_ONLY) <= set(rows), sorted(set(PETASTORM_ONLY) - set(rows))
    for name, advice in PETASTORM_ONLY.items():
        assert f"`{name}: {advice}`" in rows[name][2], name
        if name in PETASTORM_DEFAULTS:  # spelled out at Petastorm's default, it asks for nothing: ignored
            assert rows[name][1] == f"ignored at `{PETASTORM_DEFAULTS[name]!r}`, else refused", name
        elif name != "data_loader_fn":  # which make_torch_dataloader takes; the other loaders refuse it
            assert rows[name][1] == "refused", name
    accepted = set(ReaderArgs.__annotations__) | {"num_epochs", "workers_count"}
    for name in set(MAKE_BATCH_READER) - set(PETASTORM_ONLY) - {"dataset_url_or_urls"}:
        assert name in accepted and name in _names(rows[name][1]), name  # taken, under Petastorm's name


def test_the_data_loader_fn_advice_is_quoted_whole() -> None:
    class InMemBatchedDataLoader:  # recognised by module and name, as Petastorm's own class would be
        __module__ = "petastorm.pytorch"

    lines = _guide().splitlines()
    for loader in (InMemBatchedDataLoader, list):
        with pytest.raises(ValueError) as error:
            check_data_loader_fn(loader)
        advice = str(error.value).split(" is not allowed: ", 1)[1]
        assert advice in lines, advice


def test_the_guides_links_lead_to_its_headings() -> None:
    text = _guide()
    anchors = {_github_anchor(heading) for heading in _headings(text)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= anchors, sorted(links - anchors)


def test_the_readme_links_the_guide() -> None:
    assert "(docs/migration.md)" in (ROOT / "README.md").read_text()
