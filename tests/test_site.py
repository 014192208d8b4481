"""The documentation site (``mkdocs.yml``, ``docs/``) builds, runs as written and says what the code does.

- Every ``python`` block of every page runs, the blocks of one page in order in one namespace, as a
  reader would run them in one session; a block that cannot run here (it needs a cluster or a
  bucket) says so just above its fence with ``<!-- not run: reason -->``, and those stay few.
  ``docs/migration.md`` is run by ``tests/test_docs.py``, with the tables it checks there.
- Every table of ``docs/api.md`` is checked against the code: the signatures, the keys of
  ``ReaderArgs`` and their defaults, the converter's members, the errors' base classes.
- Every message quoted in ``docs/troubleshooting.md`` is triggered here, and the code must still
  print it.
- ``mkdocs build --strict`` renders every page of the nav, the benchmark plot and the changelog.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import inspect
import logging
import os
import re
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sparkfeed
import sparkfeed.predicates
from sparkfeed import (
    Sequence,
    SparkDatasetConverter,
    TransformSpec,
    make_predict_fn,
    make_spark_converter,
    mix,
    register_delete_dir_handler,
)
from sparkfeed.distributed import RANK_VARIABLES
from sparkfeed.jax import JaxIterator
from sparkfeed.loader import ReaderLoader
from sparkfeed.options import ReaderArgs, ReaderOptions, reader_options
from sparkfeed.reader import Reader
from sparkfeed.torch import TorchDataLoader
from sparkfeed.transform import edit_field

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN_ELSEWHERE = {"migration.md": "test_docs.py"}
"""Pages whose blocks another test runs, with the fixture and checks of its own."""
MAX_NOT_RUN = 3
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->")

# --------------------------------------------------------------------------- reading the pages


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced ``python`` block: the line its code starts after, the code, and why it is not run (if so)."""

    line: int
    code: str
    not_run: str | None


def _python_blocks(text: str) -> list[Block]:
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        line = text.count("\n", 0, match.start(1))
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.fullmatch(before.strip())
        blocks.append(Block(line, match.group(1), marker.group(1) if marker else None))
    return blocks


def _pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _lines_outside_code(text: str) -> Iterator[str]:
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def _slug(heading: str) -> str:
    """The anchor MkDocs gives a heading: code marks dropped, lower case, punctuation but ``-`` and ``_`` dropped."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower())


@dataclasses.dataclass
class Table:
    """A table under a heading: its header cells and its rows of cells."""

    header: list[str]
    rows: list[list[str]]


def _tables(text: str) -> dict[str, list[Table]]:
    """Each heading's tables, the heading keyed by its first code span (`name`), else its text."""
    sections: dict[str, list[Table]] = {}
    current, table = "", None
    for line in _lines_outside_code(text):
        heading = re.match(r"#{1,6} (.*)", line)
        if heading:
            code = re.search(r"`([^`]+)`", heading.group(1))
            current = code.group(1) if code else heading.group(1).strip()
            sections.setdefault(current, [])
            table = None
            continue
        if not line.startswith("|"):
            table = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if table is None:
            table = Table(cells, [])
            sections.setdefault(current, []).append(table)
        elif not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            table.rows.append(cells)
    return sections


def _first_code(cell: str) -> str | None:
    found = re.search(r"`([^`]+)`", cell)
    return found.group(1) if found else None


# --------------------------------------------------------------------------- (a) every block runs


@pytest.fixture
def docs_session(spark, tmp_path, monkeypatch) -> Iterator[Any]:
    """The suite's session, as a reader's own would be: no launcher's rank variables, caches under tmp_path."""
    for pair in RANK_VARIABLES:
        for name in pair:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPARKFEED_CACHE_DIR", str(tmp_path / "caches"))
    yield spark


CODE_PAGES = [page.name for page in _pages() if page.name not in RUN_ELSEWHERE and _python_blocks(page.read_text())]


def test_the_pages_that_show_code_are_run() -> None:
    assert {"index.md", "architecture.md", "types.md", "caching.md", "distributed.md", "troubleshooting.md"} <= set(
        CODE_PAGES
    )
    assert all((ROOT / "tests" / test).exists() for test in RUN_ELSEWHERE.values())


@pytest.mark.slow
@pytest.mark.parametrize("page", CODE_PAGES)
def test_every_python_block_of_the_page_runs_in_order(docs_session, page: str) -> None:
    path = DOCS / page
    namespace: dict[str, Any] = {"__name__": f"docs_{path.stem}"}
    ran = 0
    for block in _python_blocks(path.read_text()):
        if block.not_run is None:
            # Padded so that a failure's traceback names the page's own line.
            exec(compile("\n" * block.line + block.code, str(path), "exec"), namespace)
            ran += 1
    assert ran


def test_blocks_that_do_not_run_say_why_and_stay_few() -> None:
    marked = [(page.name, block.not_run) for page in _pages() for block in _python_blocks(page.read_text())]
    not_run = [(page, reason) for page, reason in marked if reason is not None]
    assert len(not_run) <= MAX_NOT_RUN, not_run
    assert all(len(reason.split()) >= 3 for _, reason in not_run), not_run
    # A marker that is not right above a python fence would leave its block running, or mark nothing.
    assert sum(len(NOT_RUN.findall(page.read_text())) for page in _pages()) == len(not_run)


def test_the_quickstart_is_under_15_lines() -> None:
    quickstart = _python_blocks((DOCS / "index.md").read_text())[0]
    assert "make_spark_converter(df)" in quickstart.code and quickstart.not_run is None
    assert len(quickstart.code.strip().splitlines()) < 15


# --------------------------------------------------------------------------- (b) api.md is the code

API = DOCS / "api.md"

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "make_spark_converter": make_spark_converter,
    "make_numpy_iterator": SparkDatasetConverter.make_numpy_iterator,
    "make_torch_dataloader": SparkDatasetConverter.make_torch_dataloader,
    "make_tf_dataset": SparkDatasetConverter.make_tf_dataset,
    "make_jax_iterator": SparkDatasetConverter.make_jax_iterator,
    "TransformSpec": TransformSpec,
    "Sequence": Sequence,
    "edit_field": edit_field,
    "register_delete_dir_handler": register_delete_dir_handler,
    "make_predict_fn": make_predict_fn,
    "mix": mix,
    **{name: getattr(sparkfeed.predicates, name) for name in sparkfeed.predicates.__all__ if name != "PredicateBase"},
}
"""Each table of parameters in api.md (by its heading's name) and the callable it documents."""


def _api_tables() -> dict[str, list[Table]]:
    return _tables(API.read_text())


def _parameter_rows(name: str) -> list[list[str]]:
    tables = [t for t in _api_tables().get(name, []) if t.header == ["parameter", "default", "meaning"]]
    assert len(tables) == 1, f"api.md needs one parameter table under the heading `{name}`"
    return tables[0].rows


def _documented(cell: str) -> str:
    """A default cell as the code would write it: ``required``, ``—`` or the code span's text."""
    return cell if cell in ("required", "—") else (_first_code(cell) or cell)


def _expected(parameter: inspect.Parameter) -> tuple[str, str]:
    if parameter.kind is inspect.Parameter.VAR_KEYWORD:
        return f"**{parameter.name}", "—"
    default = "required" if parameter.default is inspect.Parameter.empty else repr(parameter.default)
    return parameter.name, default


def test_every_public_callable_has_a_table() -> None:
    public = {
        name
        for name in sparkfeed.__all__
        if callable(getattr(sparkfeed, name))
        and not (isinstance(getattr(sparkfeed, name), type) and issubclass(getattr(sparkfeed, name), BaseException))
        and name != "SparkDatasetConverter"  # its members table, below; its methods have tables of their own
    }
    methods = {
        name
        for name, member in vars(SparkDatasetConverter).items()
        if inspect.isfunction(member) and not name.startswith("_") and len(inspect.signature(member).parameters) > 1
    }
    predicates = {name for name in sparkfeed.predicates.__all__ if name != "PredicateBase"}
    assert public | methods | predicates | {"edit_field"} == set(FUNCTIONS)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_each_parameter_table_is_the_signature(name: str) -> None:
    parameters = [p for p in inspect.signature(FUNCTIONS[name]).parameters.values() if p.name != "self"]
    rows = _parameter_rows(name)
    documented = [(_first_code(row[0]) or row[0], _documented(row[1])) for row in rows]
    assert documented == [_expected(p) for p in parameters]
    assert all(row[2] for row in rows), "every row says what the parameter means"


def test_the_reader_arguments_table_is_reader_args_with_its_defaults() -> None:
    tables = [t for t in _api_tables()["Reader arguments"] if t.header == ["argument", "default", "meaning"]]
    rows = tables[0].rows
    names = [_first_code(row[0]) for row in rows]
    assert sorted(names) == sorted(ReaderArgs.__annotations__) and len(set(names)) == len(names)
    defaults = {field.name: field.default for field in dataclasses.fields(ReaderOptions)}
    keyword_only = inspect.signature(reader_options).parameters.values()
    defaults |= {p.name: p.default for p in keyword_only if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert {name: _documented(row[1]) for name, row in zip(names, rows, strict=True)} == {
        name: repr(defaults[name]) for name in names
    }


def test_the_converter_table_lists_every_public_member() -> None:
    (table,) = [t for t in _api_tables()["SparkDatasetConverter"] if t.header[0] == "member"]
    documented = {_first_code(row[0]) for row in table.rows}
    assert documented == {name for name in vars(SparkDatasetConverter) if not name.startswith("_")} | {"__len__"}
    assert list(inspect.signature(SparkDatasetConverter.delete).parameters) == ["self"]  # "no arguments"
    for row in table.rows:  # the constants' values are written out
        name = _first_code(row[0])
        if row[1] == "class attribute":
            assert f"`{getattr(SparkDatasetConverter, name)!r}`" in row[2] or "same key" in row[2], name


LOADER_MEMBERS = {
    "iter(loader)": "__iter__",
    "len(loader)": "__len__",
    "state_dict()": "state_dict",
    "load_state_dict(state)": "load_state_dict",
    "stats()": "stats",
    "close()": "close",
    "with loader:": "__enter__",
}


def test_the_loaders_table_lists_what_every_loader_has() -> None:
    (table,) = _api_tables()["Loaders"]
    assert [_first_code(row[0]) for row in table.rows] == list(LOADER_MEMBERS)
    public = {name for name in dir(ReaderLoader) if not name.startswith("_")}
    assert public <= set(LOADER_MEMBERS.values())
    for cls in (Reader, TorchDataLoader, JaxIterator):
        assert all(hasattr(cls, member) for member in LOADER_MEMBERS.values()), cls


def test_the_errors_table_names_each_error_and_its_base() -> None:
    (table,) = _api_tables()["Errors"]
    documented = {}
    for row in table.rows:
        module, _, name = _first_code(row[0]).rpartition(".")
        error = getattr(importlib.import_module(module), name)
        assert issubclass(error, getattr(builtins, _first_code(row[1]))), row
        documented[name] = error
    exported = {name for name in sparkfeed.__all__ if isinstance(getattr(sparkfeed, name), type)}
    assert {name for name in exported if issubclass(getattr(sparkfeed, name), BaseException)} <= set(documented)


# --------------------------------------------------------------------------- (c) troubleshooting's messages

TROUBLESHOOTING = DOCS / "troubleshooting.md"


def _quotes() -> dict[str, list[str]]:
    """Each section's quoted messages (the lines of its ``text`` blocks), by the section's anchor."""
    quotes: dict[str, list[str]] = {}
    section = ""
    fenced: str | None = None
    for line in TROUBLESHOOTING.read_text().splitlines():
        if fenced is None and line.startswith("## "):
            section = _slug(line[3:])
        elif fenced is None and line.startswith("```"):
            fenced = line[3:]
        elif line.startswith("```"):
            fenced = None
        elif fenced == "text" and line.strip():
            quotes.setdefault(section, []).append(line)
    return quotes


def _raised(action: Callable[[], object]) -> str:
    """What the user sees of the exception the action raises: the traceback's last line and its notes."""
    try:
        action()
    except BaseException as error:  # noqa: BLE001 - any error is what is being looked at
        return "".join(traceback.format_exception_only(error))
    raise AssertionError("the action raised nothing")


def _iterate(loader: Any) -> None:
    with loader as batches:
        for _ in batches:
            pass


def _struct(spark, tmp_path, monkeypatch) -> str:
    return _raised(lambda: make_spark_converter(spark.range(10).selectExpr("id", "named_struct('a', id) AS s")))


def _null(spark, tmp_path, monkeypatch) -> str:
    converter = make_spark_converter(spark.createDataFrame([(1, 1.0), (2, None)], "id long, x double"))
    return _raised(lambda: _iterate(converter.make_numpy_iterator(num_epochs=1)))


def _tf_null(spark, tmp_path, monkeypatch) -> str:
    converter = make_spark_converter(spark.createDataFrame([("a",), (None,)], "s string"))
    return _raised(lambda: _iterate(converter.make_tf_dataset(num_epochs=1)))


def _tf_ragged(spark, tmp_path, monkeypatch) -> str:
    converter = make_spark_converter(spark.createDataFrame([([1.0],), ([1.0, 2.0],)], "a array<double>"))
    return _raised(lambda: converter.make_tf_dataset(num_epochs=1))


def _jax_overflow(spark, tmp_path, monkeypatch) -> str:
    import jax

    converter = make_spark_converter(spark.createDataFrame([(2**40,)], "v long"))
    with jax.enable_x64(False):
        return _raised(lambda: _iterate(converter.make_jax_iterator(num_epochs=1)))


def _small(spark) -> SparkDatasetConverter:
    return make_spark_converter(spark.range(2))


def _keyword(spark, tmp_path, monkeypatch) -> str:
    return _raised(lambda: _small(spark).make_torch_dataloader(shuffle=True))


def _endless_len(spark, tmp_path, monkeypatch) -> str:
    return _raised(lambda: len(_small(spark).make_numpy_iterator()))


def _empty_shard(spark, tmp_path, monkeypatch) -> str:
    return _raised(lambda: _small(spark).make_numpy_iterator(cur_shard=0, shard_count=4, shard_policy="exact"))


def _second_iteration(spark, tmp_path, monkeypatch) -> str:
    loader = _small(spark).make_numpy_iterator(batch_size=1, num_epochs=1)
    first = iter(loader)
    next(first)
    try:
        return _raised(lambda: iter(loader))
    finally:
        first.close()


def _foreign_state(spark, tmp_path, monkeypatch) -> str:
    saved_on = make_spark_converter(spark.range(100, numPartitions=2))
    other = make_spark_converter(spark.range(100, numPartitions=4))
    with saved_on.make_numpy_iterator(batch_size=10, num_epochs=1) as loader:
        next(iter(loader))
        state = loader.state_dict()
    with other.make_numpy_iterator(batch_size=10, num_epochs=1) as loader:
        return _raised(lambda: loader.load_state_dict(state))


def _not_ours(spark, tmp_path, monkeypatch) -> str:
    converter = make_spark_converter(spark.range(5), cache_dir=str(tmp_path))
    directory = Path(converter.location.local_path)
    (directory / "_sparkfeed_cache.json").unlink()  # as if something had replaced the directory's contents
    try:
        return _raised(converter.delete)
    finally:
        shutil.rmtree(directory)


def _deleted(spark, tmp_path, monkeypatch) -> str:
    converter = make_spark_converter(spark.range(7), cache_dir=str(tmp_path))
    converter.delete()
    return _raised(converter.make_numpy_iterator)


def _unreadable(spark, tmp_path, monkeypatch) -> str:
    return _raised(lambda: make_spark_converter(spark.range(3), cache_dir="foo://bucket/x"))


def _corrupt(spark, tmp_path, monkeypatch) -> str:
    converter = make_spark_converter(spark.range(8), cache_dir=str(tmp_path))
    (Path(converter.location.local_path) / "_sparkfeed_manifest.json").write_text("{")
    return _raised(lambda: make_spark_converter(converter.cache_dir_url))


def _not_reused(spark, tmp_path, monkeypatch) -> str:
    from pyspark.sql import functions as F

    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("sparkfeed.converter")
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not an attribute: it clears the loggers' cached isEnabledFor
    logger.addHandler(handler)
    try:
        clock = spark.range(3).withColumn("t", F.current_timestamp())
        make_spark_converter(clock, cache_dir=str(tmp_path), reuse="auto").delete()
        make_spark_converter(spark.range(4), cache_dir=str(tmp_path), reuse="auto").delete()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return "\n".join(lines)


def _no_torch(spark, tmp_path, monkeypatch) -> str:
    converter = _small(spark)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as where it is not installed
    return _raised(converter.make_torch_dataloader)


def _bad_transform(spark, tmp_path, monkeypatch) -> str:
    return _raised(lambda: _iterate(_small(spark).make_numpy_iterator(num_epochs=1, transform_fn=lambda frame: None)))


def _array_in_place(spark, tmp_path, monkeypatch) -> str:
    def scale(frame: Any) -> Any:
        for cell in frame["v"]:
            cell[:] = cell * 2
        return frame

    converter = make_spark_converter(spark.range(2).selectExpr("array(id, id) AS v"))
    return _raised(lambda: _iterate(converter.make_numpy_iterator(num_epochs=1, transform_fn=scale)))


class LabelError(Exception):
    """An exception as user code often writes one: its ``__init__`` does not pass its arguments on."""

    def __init__(self, label: str, row: int) -> None:
        super().__init__(f"row {row} has no label {label!r}")


def _unsendable(spark, tmp_path, monkeypatch) -> str:
    def transform(frame: Any) -> Any:
        raise LabelError("cat", 3)

    loader = _small(spark).make_numpy_iterator(num_epochs=1, transform_fn=transform, reader_pool_type="process")
    return _raised(lambda: _iterate(loader))


def _no_such_column(spark, tmp_path, monkeypatch) -> str:
    return _raised(lambda: _small(spark).make_numpy_iterator(schema_fields=["label"]))


def _no_java(spark, tmp_path, monkeypatch) -> str:
    """pyspark and ``scripts/ensure-java.sh`` on a PATH of the usual tools without java (nor apt-get)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "env", "id", "cat", "grep", "sed", "head", "uname", "dirname", "basename", "readlink", "ls"):
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    env = {"PATH": str(tools), "HOME": str(tmp_path)}
    start = "from pyspark.sql import SparkSession; SparkSession.builder.master('local[1]').getOrCreate()"
    spark_run = subprocess.run([sys.executable, "-c", start], env=env, capture_output=True, text=True, timeout=120)
    bash = shutil.which("bash")
    assert bash is not None
    make_run = subprocess.run(
        [bash, str(ROOT / "scripts" / "ensure-java.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert spark_run.returncode != 0 and make_run.returncode == 1
    return spark_run.stdout + spark_run.stderr + make_run.stderr


TRIGGERS: dict[str, Callable[[Any, Path, pytest.MonkeyPatch], str]] = {
    "a-column-type-has-no-tensor-form": _struct,
    "a-null-in-a-tensor-column": _null,
    "a-null-string-in-tensorflow": _tf_null,
    "arrays-of-varying-length-in-tensorflow": _tf_ragged,
    "a-64-bit-value-in-jax": _jax_overflow,
    "an-unknown-keyword": _keyword,
    "len-of-an-endless-loader": _endless_len,
    "an-endless-loader-over-an-empty-shard": _empty_shard,
    "a-second-iteration-while-one-is-active": _second_iteration,
    "a-saved-state-that-belongs-elsewhere": _foreign_state,
    "notourserror-on-delete": _not_ours,
    "a-converter-used-after-delete": _deleted,
    "a-cache-location-the-reader-cannot-read": _unreadable,
    "a-cache-manifest-cannot-be-read": _corrupt,
    "reuseauto-converts-again": _not_reused,
    "a-framework-is-not-installed": _no_torch,
    "a-transform-that-returns-something-else": _bad_transform,
    "a-transform-that-changes-an-array-in-place": _array_in_place,
    "an-exception-from-a-worker-process-that-cannot-travel": _unsendable,
    "schema_fields-naming-no-column": _no_such_column,
    "java-is-missing": _no_java,
}
"""Each troubleshooting section (by anchor) and how to make the code print its messages."""


def _appears_in(quote: str, output: str) -> bool:
    """Whether the quote's parts, split at ``…`` (what varies), appear in the output in this order."""
    at = 0
    for part in quote.split("…"):
        found = output.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return True


def test_every_troubleshooting_section_quotes_a_message_triggered_here() -> None:
    assert set(_quotes()) == set(TRIGGERS)


@pytest.mark.slow
@pytest.mark.parametrize("section", sorted(TRIGGERS))
def test_the_quoted_message_is_what_the_code_prints(spark, tmp_path, monkeypatch, section: str) -> None:
    output = TRIGGERS[section](spark, tmp_path, monkeypatch)
    missing = [quote for quote in _quotes()[section] if not _appears_in(quote, output)]
    assert not missing, f"quoted in troubleshooting.md but not printed:\n{missing}\nprinted:\n{output}"


# --------------------------------------------------------------------------- (d) the site builds


def _nav() -> list[str]:
    from mkdocs.config import load_config

    config = load_config(str(ROOT / "mkdocs.yml"))
    return [page for entry in config["nav"] for page in entry.values()]


@pytest.mark.slow
def test_the_site_builds_strictly_with_every_page_the_plot_and_the_changelog(tmp_path) -> None:
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [*command, "--site-dir", str(site)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stdout + built.stderr
    nav = _nav()
    assert sorted(nav) == sorted(page.name for page in _pages()), "every page is in the nav, once"
    for page in nav:
        assert (site / page.replace(".md", ".html")).is_file(), page
    plot = ROOT / "benchmarks" / "results" / "throughput.png"
    assert (site / "assets" / "throughput.png").read_bytes() == plot.read_bytes()
    assert 'src="assets/throughput.png"' in (site / "performance.html").read_text()
    changelog = (site / "changelog.html").read_text()
    first_entry = re.search(r"^### (.+)$", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert first_entry is not None and "Unreleased" in changelog
    assert all(word in changelog for word in re.findall(r"[A-Za-z]{4,}", first_entry.group(1)))
    assert not list(DOCS.rglob("*.png")), "the plot is served from benchmarks/results/, not copied into docs/"


def test_the_performance_pages_numbers_are_the_committed_results() -> None:
    results = (ROOT / "benchmarks" / "results" / "results.md").read_text()
    tables = [table for section in _tables((DOCS / "performance.md").read_text()).values() for table in section]
    numbers = [
        number
        for table in tables
        for row in table.rows
        for cell in row[1:]
        for number in re.findall(r"\d[\d,]*(?:\.\d+)?(?:x|%| s| GiB)?", re.sub(r"`[^`]*`", "", cell))
    ]
    assert len(numbers) > 20
    assert [number for number in numbers if number not in results] == []


def test_the_readme_links_the_site() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make docs" in readme and "(docs/index.md)" in readme
