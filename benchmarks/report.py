"""Turns results.json into results.md (tables, targets) and throughput.png (bar chart).

    .venv/bin/python benchmarks/report.py [benchmarks/results]   re-renders without re-measuring

Every ratio is between medians of the same run on the same machine; nothing is compared
across runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR

GIB = 2**30
MIB = 2**20

GROUP_TITLES = {
    "tabular": "Tabular: 2,000,000 rows x (id long, f0..f15 float32, label int), uncompressed cache, batch 1024",
    "tabular_zstd": "Tabular, zstd cache (Petastorm has no zstd: its columns are its uncompressed runs)",
    "vectors": "Vectors: 200,000 rows x DenseVector(512) (float32 arrays in the cache), batch 1024, one epoch",
    "images": "Images: 20,000 64x64 RGB PNGs decoded in the reader's transform, batch 64, one epoch",
}
SHORT = {"tabular": "tabular", "tabular_zstd": "tabular zstd", "vectors": "vectors"}
PEER_GROUP = {"tabular_zstd": "tabular"}


class Results:
    """Lookups over one results.json."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.cases = data["cases"]
        self.by_id = {case["id"]: case for case in self.cases}

    def result(self, case_id: str) -> dict[str, Any] | None:
        case = self.by_id.get(case_id)
        if case is None or "error" in case["result"]:
            return None
        result: dict[str, Any] = case["result"]
        return result

    def rate(self, case_id: str) -> float | None:
        result = self.result(case_id)
        return None if result is None else result.get("rows_per_s")

    def peer_rate(self, case: dict[str, Any], loader: str) -> float | None:
        """Petastorm's rate for the same group and peer (e.g. shuffled vs shuffled)."""
        if case["side"] == "petastorm" or case["peer"] is None:
            return None
        group = PEER_GROUP.get(case["group"], case["group"])
        for other in self.cases:
            if (
                other["side"] == "petastorm"
                and other["group"] == group
                and other["peer"] == case["peer"]
                and other["id"].split(".")[2].split("_")[0] == loader
            ):
                return self.rate(other["id"])
        return None


# --------------------------------------------------------------------------- targets


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def targets(r: Results) -> list[dict[str, Any]]:
    """The targets of the brief, each with its measured value and PASS/MISS (None: not measured)."""
    out: list[dict[str, Any]] = []

    def add(
        case: str, text: str, value: float | None, limit: float, fmt: Callable[[float], str], *, at_most: bool = False
    ) -> None:
        passed = None if value is None else (value <= limit if at_most else value >= limit)
        out.append(
            {
                "case": case,
                "target": text,
                "value": value,
                "shown": "—" if value is None else fmt(value),
                "pass": passed,
            }
        )

    pct = "{:.0%}".format
    times = "{:.2f}x".format
    limit = r.rate("tabular.pyarrow.limit")
    add(
        "tabular.sparkfeed.numpy",
        "tabular no-shuffle NumPy ≥ 75% of the Arrow limit",
        ratio(r.rate("tabular.sparkfeed.numpy"), limit),
        0.75,
        pct,
    )
    add(
        "tabular.sparkfeed.torch",
        "tabular no-shuffle torch ≥ 65% of the Arrow limit",
        ratio(r.rate("tabular.sparkfeed.torch"), limit),
        0.65,
        pct,
    )
    add(
        "tabular.sparkfeed.torch",
        "tabular no-shuffle torch ≥ 4x Petastorm BatchedDataLoader",
        ratio(r.rate("tabular.sparkfeed.torch"), r.rate("tabular.petastorm.batched")),
        4,
        times,
    )
    torch_rate = r.rate("tabular.sparkfeed.torch")
    add(
        "tabular.sparkfeed.tf",
        "tabular TF dataset ≥ 50% of the torch loader (issue 4)",
        ratio(r.rate("tabular.sparkfeed.tf"), torch_rate),
        0.5,
        pct,
    )
    add(
        "tabular.sparkfeed.jax",
        "tabular JAX iterator ≥ 70% of the torch loader (issue 4)",
        ratio(r.rate("tabular.sparkfeed.jax"), torch_rate),
        0.7,
        pct,
    )
    add(
        "tabular.sparkfeed.shuffle",
        "tabular shuffled (10k buffer) ≥ 4x Petastorm BatchedDataLoader (10k buffer)",
        ratio(r.rate("tabular.sparkfeed.shuffle"), r.rate("tabular.petastorm.batched_shuffle")),
        4,
        times,
    )
    add(
        "tabular.sparkfeed.shuffle",
        "tabular shuffled (10k buffer) ≥ 100x Petastorm DataLoader (10k buffer)",
        ratio(r.rate("tabular.sparkfeed.shuffle"), r.rate("tabular.petastorm.default_shuffle")),
        100,
        times,
    )
    ours_q, theirs_q = (
        (r.result(case) or {}).get("shuffle_quality", {})
        for case in ("tabular.sparkfeed.shuffle", "tabular.petastorm.batched_shuffle")
    )
    add(
        "tabular.sparkfeed.shuffle",
        "tabular shuffled (10k buffer): batch spread ≥ Petastorm BatchedDataLoader's (10k buffer)",
        ratio(ours_q.get("batch_spread"), theirs_q.get("batch_spread")),
        1,
        times,
    )
    add(
        "tabular.sparkfeed.shuffle",
        "tabular shuffled (10k buffer): mean abs Spearman r ≤ Petastorm BatchedDataLoader's (10k buffer)",
        ratio(ours_q.get("mean_abs_spearman"), theirs_q.get("mean_abs_spearman")),
        1,
        times,
        at_most=True,
    )
    add(
        "vectors.sparkfeed.torch",
        "vectors torch ≥ 10x Petastorm BatchedDataLoader",
        ratio(r.rate("vectors.sparkfeed.torch"), r.rate("vectors.petastorm.batched")),
        10,
        times,
    )
    for workers in (1, 2):
        # Each side's fastest configuration (loader, thread or process workers) at this workers_count.
        theirs = [
            r.rate(f"images.petastorm.{loader}.{pool}.w{workers}")
            for loader in ("batched", "default")
            for pool in ("thread", "process")
        ]
        ours = {pool: r.rate(f"images.sparkfeed.{pool}.w{workers}") for pool in ("thread", "process")}
        best_pool = max((p for p in ours if ours[p] is not None), key=lambda p: ours[p] or 0, default="thread")
        add(
            f"images.sparkfeed.{best_pool}.w{workers}",
            f"images workers_count={workers} ≥ 1.5x Petastorm (each side's fastest loader and pool)",
            ratio(ours[best_pool], max((x for x in theirs if x is not None), default=None)),
            1.5,
            times,
        )
    first = r.result("first_batch.sparkfeed")
    add(
        "first_batch.sparkfeed",
        "first batch ≤ 0.5 s",
        first and first["latency_s"],
        0.5,
        "{:.3f} s".format,
        at_most=True,
    )
    for dataset in ("tabular", "vectors"):
        m = r.result(f"materialize.sparkfeed.{dataset}")
        add(
            f"materialize.sparkfeed.{dataset}",
            f"materialization {dataset} ≤ 1.25x df.write.parquet",
            m and ratio(m["convert_s"], m["write_s"]),
            1.25,
            times,
            at_most=True,
        )
    reused = r.result("reuse.sparkfeed.tabular")
    if reused is not None:
        add(
            "reuse.sparkfeed.tabular",
            "a cache kept by one process, reused by a new one (reuse='auto') ≤ 1 s",
            reused["reuse_s"] if reused.get("same_cache") else None,
            1.0,
            "{:.2f} s".format,
            at_most=True,
        )
    for dataset in ("tabular", "vectors"):
        for case, window in (("numpy_p16", "default 128 MiB"), ("numpy_p16_ra256", "256 MiB")):
            if f"s3.sparkfeed.{dataset}.{case}" in r.by_id:
                add(
                    f"s3.sparkfeed.{dataset}.{case}",
                    f"s3 {dataset}: NumPy iterator, prefetch=16, read-ahead window {window} ≥ 80% of the plain "
                    "sequential download (rows/s)",
                    ratio(r.rate(f"s3.sparkfeed.{dataset}.{case}"), r.rate(f"s3.pyarrow.{dataset}.download")),
                    0.8,
                    pct,
                )
    for reader in ("numpy", "torch"):
        slower = min_rate(r.rate(f"mixing.sparkfeed.{source}.{reader}") for source in ("plain", "zstd"))
        for tag, shares in (("mix50", "0.5/0.5"), ("mix90", "0.9/0.1"), ("mix50b", "0.5/0.5, whole batches")):
            add(
                f"mixing.sparkfeed.{tag}.{reader}",
                f"mixing {reader}: plain + zstd caches at {shares} ≥ 90% of the slower cache alone (issue 13)",
                ratio(r.rate(f"mixing.sparkfeed.{tag}.{reader}"), slower),
                0.9,
                pct,
            )
        for tag, how in (("self50", ""), ("self50b", ", whole batches")):
            add(
                f"mixing.sparkfeed.{tag}.{reader}",
                f"mixing {reader}: the plain cache twice at 0.5/0.5{how} ≥ 90% of the plain cache alone (issue 13)",
                ratio(r.rate(f"mixing.sparkfeed.{tag}.{reader}"), r.rate(f"mixing.sparkfeed.plain.{reader}")),
                0.9,
                pct,
            )
        fixed = (r.result(f"sequences.sparkfeed.fixed_{reader}") or {}).get("tokens_per_s")
        for mode in ("pad", "bucket", "pack"):
            case = f"sequences.sparkfeed.{mode}_{reader}"
            if case in r.by_id:
                add(
                    case,
                    f"sequences {reader}: {mode} tokens/s ≥ 50% of the same tokens as fixed-length rows",
                    ratio((r.result(case) or {}).get("tokens_per_s"), fixed),
                    0.5,
                    pct,
                )
        mixed = f"sequences.sparkfeed.packmix_{reader}"
        if mixed in r.by_id:  # both steady, both packed batches of 16 x 4096: packed rows/s compare as tokens/s
            add(
                mixed,
                f"sequences {reader}: pack, the cache mixed with itself, ≥ 90% of the cache alone (issue 13)",
                ratio(r.rate(mixed), r.rate(f"sequences.sparkfeed.packsteady_{reader}")),
                0.9,
                pct,
            )
    mem = r.result("memory.sparkfeed")
    add(
        "memory.sparkfeed",
        "streaming 4 GiB: peak RSS ≤ 1 GiB above baseline",
        mem and (mem["peak_rss"] - mem["baseline_rss"]) / GIB,
        1.0,
        "{:.2f} GiB".format,
        at_most=True,
    )
    return out


def min_rate(rates: Iterable[float | None]) -> float | None:
    """The slowest of some rates; None when any is missing."""
    known = list(rates)
    if any(rate is None for rate in known):
        return None
    return min(rate for rate in known if rate is not None)


def comparisons(r: Results) -> list[tuple[str, str]]:
    """Ratios shown for information, without a target: (what, measured)."""
    out = []
    ours = r.by_id.get("tabular.sparkfeed.tf")
    if ours is not None and "tabular.petastorm.tf" in r.by_id:
        value = ratio(r.rate(ours["id"]), r.peer_rate(ours, "tf"))
        out.append(("tabular no-shuffle: sparkfeed make_tf_dataset vs Petastorm make_tf_dataset", n(value, "{:.2f}x")))
    torch = r.by_id.get("tabular.sparkfeed.torch")
    for case_id, what in (
        ("tabular.sparkfeed.tf_graph", "make_tf_dataset consumed in a tf.function (as Keras fit) vs torch"),
        ("tabular.sparkfeed.tf_ceiling", "tf.data ceiling (one in-memory batch repeated, eager) vs torch"),
        ("tabular.sparkfeed.jax_ceiling", "JAX ceiling (batches cut from a block on the device) vs torch"),
    ):
        if case_id in r.by_id and torch is not None:
            out.append((f"tabular no-shuffle: {what}", percent(ratio(r.rate(case_id), r.rate(torch["id"])))))
    return out


def verdict(passed: bool | None) -> str:
    return "—" if passed is None else ("**PASS**" if passed else "**MISS**")


# --------------------------------------------------------------------------- markdown


def n(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "—" if value is None else fmt.format(value)


def percent(value: float | None) -> str:
    """Percent with enough digits that Petastorm's row-by-row loader does not show as 0%."""
    if value is None:
        return "—"
    return f"{value:.0%}" if value >= 0.1 else f"{value:.1%}" if value >= 0.01 else f"{value:.2%}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def spread(result: dict[str, Any]) -> str:
    """Timed runs and their range in rows/s: a wide range means a noisy machine or a bimodal reader."""
    rates = sorted(result["rows"] / t for t in result["times_s"])
    return f"{len(rates)}: {si(rates[0])}-{si(rates[-1])}"


def si(value: float) -> str:
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def rss(result: dict[str, Any]) -> str:
    return f"{result['peak_rss'] / MIB:,.0f} (+{(result['peak_rss'] - result['baseline_rss']) / MIB:,.0f})"


def throughput_table(r: Results, group: str, marks: dict[str, list[str]]) -> list[str]:
    limit = r.rate(f"{group}.pyarrow.limit")
    rows = []
    for case in (c for c in r.cases if c["group"] == group):
        res = case["result"]
        label = case["label"] + (f" ({case['note']})" if case["note"] else "")
        if "error" in res:
            rows.append([label, "error (below)", "", "", "", "", "", "", "; ".join(marks.get(case["id"], []))])
            continue
        rate = res["rows_per_s"]
        rows.append(
            [
                label,
                n(rate),
                spread(res),
                n(res["mb_per_s"]),
                rss(res),
                percent(ratio(rate, limit)),
                n(ratio(rate, r.peer_rate(case, "batched")), "{:.2f}x"),
                n(ratio(rate, r.peer_rate(case, "default")), "{:.1f}x"),
                "; ".join(marks.get(case["id"], [])),
            ]
        )
    header = [
        "reader",
        "rows/s",
        "runs: slowest-fastest",
        "MB/s",
        "peak RSS MiB (+over baseline)",
        "vs Arrow limit",
        "vs Petastorm Batched",
        "vs Petastorm default",
        "target",
    ]
    return table(header, rows)


def busy_text(busy: float | None) -> str:
    if busy is None:
        return "not measured"
    return f"{busy:.0%}" + (" (**another process was running: these numbers are noisy**)" if busy > 0.1 else "")


def header_lines(data: dict[str, Any]) -> list[str]:
    m = data["machine"]
    cfg = data["config"]
    ours, theirs = m["versions"].get("sparkfeed", {}), m["versions"].get("petastorm", {})
    libs = ("python", "pyspark", "pyarrow", "numpy", "pandas", "torch", "tensorflow", "PIL", "sparkfeed", "petastorm")
    lines = [
        "# sparkfeed benchmark results",
        "",
        f"- Date: {data['started']}, run time {data['duration_s'] / 60:.1f} min "
        f"({'quick' if cfg['quick'] else 'full'}: median of ≥ {cfg['repeats']} timed runs after a warm-up"
        + (f", timed runs repeated until they add up to {cfg['min_time_s']:g} s" if cfg["min_time_s"] else "")
        + ")",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram_bytes'] / GIB:.0f} GiB RAM, {m['platform']}",
        f"- CPU busy in the 3 s before the first case: {busy_text(m.get('cpu_busy_start'))}"
        + f"; load average (1/5/15 min, lags by a minute) at start {m['loadavg_start']}, at end {m.get('loadavg_end')}",
        f"- Code: git {m['git_commit']}"
        + (
            f", with uncommitted changes in src/: {', '.join(m['git_dirty_src'])}"
            if m["git_dirty_src"]
            else ", src/ clean"
        ),
        "",
        *table(
            ["", *libs],
            [
                ["sparkfeed venv", *[ours.get(k, "—") for k in libs]],
                ["Petastorm anchor venv", *[theirs.get(k, "—") for k in libs]],
            ],
        ),
        "",
    ]
    return lines


def sequences_table(r: Results, marks: dict[str, list[str]]) -> list[str]:
    """The sequences group: rows/s and tokens/s of each mode beside the fixed-length anchor."""
    cases = [c for c in r.cases if c["group"] == "sequences"]
    if not cases:
        return []
    source = next((d for d in r.data["datasets"] if d["name"] == "sequences"), None)
    what = source["spec"]["schema"] if source else "tokens array<int> of heavy-tailed lengths"
    rows = []
    for case in cases:
        result = case["result"]
        if "error" in result:
            first = result["error"].strip().splitlines()
            rows.append([case["label"], "—", "—", "—", "—", f"could not: {first[-1][:160] if first else ''}"])
            continue
        tokens = result.get("tokens_per_s")
        if tokens is None and case["side"] == "petastorm" and "fixed" in case["id"]:
            tokens = result["rows_per_s"] * 200  # every row 200 tokens
        fixed = (r.result(f"sequences.sparkfeed.fixed_{case['peer']}") or {}).get("tokens_per_s")
        if case["peer"] in ("tf", "jax") or fixed is None:
            fixed = (r.result("sequences.sparkfeed.fixed_numpy") or {}).get("tokens_per_s")
        padding = result.get("cells_per_token")
        rows.append(
            [
                case["label"],
                f"{result['rows_per_s']:,.0f}",
                "—" if tokens is None else f"{tokens:,.0f}",
                n(ratio(tokens, fixed), "{:.0%}"),
                "—" if padding is None else f"{padding:.2f}",
                "; ".join(marks.get(case["id"], [])),
            ]
        )
    return [
        "## Sequences: token ids of varying length",
        "",
        f"Source: {what}, read with batch 256 (pack: 16 rows of 4096), one epoch, no shuffle. Tokens/s counts "
        "the values delivered, not padding; cells per token is what the batches' arrays hold per value (1.00: "
        "no padding). The anchor is the same number of tokens as fixed-length rows of 200 (`fixed_*`); tf and "
        "jax compare with the NumPy anchor. The steady-state cases time one endless loader in runs of 20,000 packed "
        "rows (about two epochs), and their rows/s counts packed rows: the mixture against the cache alone.",
        "",
        *table(["reader", "rows/s", "tokens/s", "vs fixed-length tokens/s", "cells per token", "target"], rows),
        "",
    ]


def markdown(data: dict[str, Any]) -> str:
    r = Results(data)
    goals = targets(r)
    marks: dict[str, list[str]] = {}
    for goal in goals:
        marks.setdefault(goal["case"], []).append(f"{goal['shown']} {verdict(goal['pass'])}")
    lines = header_lines(data)

    lines += ["## Targets", ""]
    lines += table(["target", "measured", ""], [[g["target"], g["shown"], verdict(g["pass"])] for g in goals])
    lines += [""]
    if any(g["pass"] is False for g in goals):
        lines += [
            "Why a target is missed: [analysis.md](analysis.md), written by hand for a committed run, with the "
            "profiles of `benchmarks/hotspots.py` in [profiles/](profiles/).",
            "",
        ]
    info = comparisons(r)
    if info:
        lines += ["## Comparisons without a target", "", *table(["comparison", "measured"], [list(c) for c in info])]
        lines += [""]

    for group, title in GROUP_TITLES.items():
        if any(c["group"] == group for c in r.cases):
            lines += [f"## {title}", "", *throughput_table(r, group, marks), ""]

    quality = [c for c in r.cases if r.result(c["id"]) and "shuffle_quality" in r.result(c["id"])]  # type: ignore[operator]
    if quality:
        lines += [
            "## Shuffle quality (tabular, 2,000,000 rows, averaged over epochs)",
            "",
            "Per epoch: the correlation between a row's position in the source and in the epoch (Spearman "
            "on ranks; lower |r| is better), mean |displacement| / N (a uniform shuffle gives 1/3), the fraction "
            "of consecutive rows that were consecutive in the source (0 for a row-level shuffle), and batch "
            "spread: the standard deviation of one batch's source positions over a uniform sample's (1 for a "
            "uniform shuffle; it is how much of the dataset one batch mixes). Averaged over the epochs shown.",
            "",
        ]
        rows = []
        for case in quality:
            q = case["result"]["shuffle_quality"]
            if "epochs" not in q:  # a result from before the multi-epoch measure
                continue
            rows.append(
                [
                    case["label"],
                    str(q["epochs"]),
                    f"{q['mean_abs_spearman']:.4f} (max {q['max_abs_spearman']:.4f})",
                    f"{q['mean_abs_displacement_over_n']:.3f}",
                    f"{q['adjacent_kept']:.4f}",
                    f"{q['batch_spread']:.3f}",
                ]
            )
        lines += table(
            ["reader", "epochs", "mean abs Spearman r", "mean abs displacement / N", "adjacent kept", "batch spread"],
            rows,
        )
        lines += [""]

    lines += sequences_table(r, marks)

    first = [c for c in r.cases if c["group"] == "first_batch"]
    if first:
        lines += [
            "## First batch latency",
            "",
            "From entering `with converter.make_torch_dataloader(...)` to holding the first batch (tabular, "
            "batch 1024, no shuffle), median of the timed runs after a warm-up.",
            "",
        ]
        rows = []
        for case in first:
            res = r.result(case["id"])
            shown = "error (below)" if res is None else f"{res['latency_s']:.3f} s"
            spread = "" if res is None else ", ".join(f"{x:.3f}" for x in res["latencies_s"])
            rows.append([case["label"], shown, spread, "; ".join(marks.get(case["id"], []))])
        lines += [*table(["reader", "median", "runs (s)", "target"], rows), ""]

    cut = [c for c in r.cases if c["group"] == "batching"]
    if cut:
        one = next((d for d in data["datasets"] if d["name"] == "onegroup"), None)
        rows_in = f"{one['spec']['rows']:,}" if one else "?"
        lines += [
            f"## Batching: one row group of {rows_in} rows (id long, f0..f3 float32, label int) cut into batches",
            "",
            "One epoch is one chunk, so this is the batcher's own cost per batch. Rates are timed from the "
            "first batch (which waits for the row group to be decoded) to the last; batch 1 reads only the "
            "rows noted. Read in place from the onegroup source, no shuffle.",
            "",
        ]
        rows = []
        for case in cut:
            res = r.result(case["id"])
            if res is None:
                rows.append([case["label"], "error (below)", "", "", ""])
                continue
            rows.append(
                [
                    case["label"] + (f" ({case['note']})" if case["note"] else ""),
                    n(res["batches_per_s"]),
                    n(res["rows_per_s"]),
                    f"{res['first_batch_s']:.2f} s",
                    f"{len(res['times_s'])}: {min(res['times_s']):.3f}-{max(res['times_s']):.3f} s",
                ]
            )
        lines += [*table(["loader", "batches/s", "rows/s", "first batch", "timed runs: fastest-slowest"], rows), ""]

    if any(c["group"] == "materialize" for c in r.cases):
        lines += [
            "## Materialization",
            "",
            "Wall time of `make_spark_converter(spark.read.parquet(source))` (defaults: uncompressed, "
            "float32, 32 MiB row groups) against `df.write.parquet(tmp)` of the same DataFrame (Spark's "
            "defaults: snappy), median of the timed runs after a warm-up pair; a new DataFrame and a new cache "
            'dir every run, so no cache reuse. "First conversion" is the holder\'s conversion in a fresh JVM.',
            "",
        ]
        rows = []
        for dataset in ("tabular", "vectors"):
            ours, theirs = r.result(f"materialize.sparkfeed.{dataset}"), r.result(f"materialize.petastorm.{dataset}")
            if ours is None and theirs is None:
                continue
            first_ours = data["holders"].get(f"sparkfeed-{dataset}", {}).get("convert_s")
            first_theirs = data["holders"].get(f"petastorm-{dataset}", {}).get("convert_s")
            rows.append(
                [
                    dataset,
                    n(ours and ours["convert_s"], "{:.1f} s"),
                    n(ours and ours["write_s"], "{:.1f} s"),
                    n(ours and ratio(ours["convert_s"], ours["write_s"]), "{:.2f}x"),
                    n(theirs and theirs["convert_s"], "{:.1f} s"),
                    f"{n(first_ours, '{:.1f} s')} / {n(first_theirs, '{:.1f} s')}",
                    "; ".join(marks.get(f"materialize.sparkfeed.{dataset}", [])),
                ]
            )
        lines += table(
            [
                "dataset",
                "sparkfeed make_spark_converter",
                "df.write.parquet",
                "ratio",
                "Petastorm make_spark_converter",
                "first conversion sparkfeed / Petastorm",
                "target",
            ],
            rows,
        )
        lines += [""]

    reused = r.result("reuse.sparkfeed.tabular")
    if reused is not None:
        lines += [
            "## Reuse across processes",
            "",
            "The tabular source converted with `keep=True` in one process; then, each in a new Python process with "
            'its own Spark session, `make_spark_converter(df, reuse="auto")` of the same DataFrame, timed from the '
            "call to the converter (the session's start-up not counted). Median of the fresh processes.",
            "",
            *table(
                ["dataset", "conversion (keep=True)", "reuse by a new process", "runs", "same cache", "target"],
                [
                    [
                        "tabular",
                        f"{reused['convert_s']:.2f} s",
                        f"{reused['reuse_s']:.2f} s",
                        ", ".join(f"{t:.2f}" for t in reused["reuse_times_s"]),
                        "yes" if reused["same_cache"] else "**no**",
                        "; ".join(marks.get("reuse.sparkfeed.tabular", [])),
                    ]
                ],
            ),
            "",
        ]

    lines += s3_section(r, marks)
    lines += mixing_section(r, marks)

    mem = [c for c in r.cases if c["group"] == "memory"]
    if mem:
        big = next((d for d in data["datasets"] if d["name"] == "big"), None)
        size = f"{big['bytes_on_disk'] / GIB:.2f} GiB, {big['spec']['rows']:,} rows" if big else "?"
        lines += [
            "## Memory: streaming the big dataset once",
            "",
            f"The big source ({size}, uncompressed, 32 MiB row groups) read in place by "
            "`make_spark_converter(path)`, NumPy iterator, batch 1024, one epoch, page cache warmed first.",
            "",
        ]
        rows = []
        for case in mem:
            res = r.result(case["id"])
            if res is None:
                rows.append([case["label"], "error (below)", "", "", "", ""])
                continue
            rows.append(
                [
                    case["label"],
                    n(res["rows_per_s"]),
                    f"{res['baseline_rss'] / MIB:,.0f}",
                    f"{res['peak_rss'] / MIB:,.0f}",
                    f"{(res['peak_rss'] - res['baseline_rss']) / MIB:,.0f}",
                    "; ".join(marks.get(case["id"], [])),
                ]
            )
        lines += table(["reader", "rows/s", "baseline RSS MiB", "peak RSS MiB", "peak - baseline MiB", "target"], rows)
        lines += [""]

    lines += ["## Datasets and caches", ""]
    rows = [
        [d["name"], f"{d['spec']['rows']:,}", d["spec"]["schema"], str(d["files"]), f"{d['bytes_on_disk'] / MIB:,.0f}"]
        for d in data["datasets"]
    ]
    lines += [*table(["source", "rows", "schema", "files", "MiB on disk"], rows), ""]
    rows = [
        [
            name,
            n(h.get("convert_s"), "{:.1f} s"),
            str(h.get("files", "—")),
            str(h.get("row_groups", "—")),
            n(h.get("cache_bytes") and h["cache_bytes"] / MIB),
        ]
        for name, h in data["holders"].items()
        if "error" not in h
    ]
    lines += [*table(["converter cache", "converted in", "files", "row groups", "MiB"], rows), ""]

    errors = [c for c in r.cases if "error" in c["result"]] + [
        {"id": f"convert {name}", "result": h} for name, h in data["holders"].items() if "error" in h
    ]
    if errors:
        lines += ["## Errors", ""]
        for case in errors:
            lines += [f"**{case['id']}**", "", "```", case["result"]["error"].strip(), "```", ""]

    lines += [
        "## How to read this",
        "",
        "- rows/s: rows yielded by one epoch / wall time, median of the timed runs (or of the rows noted).",
        "- MB/s: bytes of the decoded arrays (or tensors) yielded per second, MB = 10^6 bytes.",
        "- peak RSS: `ru_maxrss` of the case's own fresh process; in parentheses, over its RSS just before "
        "reading started (after imports and unpickling the converter).",
        "- vs Arrow limit: against one thread decoding whole row groups of the same cache files to NumPy and "
        "slicing 1024-row views: no framework overhead at all.",
        "- vs Petastorm: against the Petastorm case with the same data and option (no shuffle, the 10k "
        "shuffling buffer, shard 0 of 2, or workers_count); Petastorm reads its own cache of the same source.",
        "",
    ]
    return "\n".join(lines)


def mixing_section(r: Results, marks: dict[str, list[str]]) -> list[str]:
    """The mixing group: two caches of the tabular set read alone and mixed with sparkfeed.mix."""
    cases = [c for c in r.cases if c["group"] == "mixing"]
    if not cases:
        return []
    lines = [
        "## Mixing: two caches of the tabular set, alone and mixed (`sparkfeed.mix`)",
        "",
        "The tabular source converted twice and held at once: uncompressed (plain) and zstd. Each case reads "
        "one loader, batch 1024, no shuffle, `num_epochs=None` (mixtures: `stop='never'`, `seed=0`); a timed "
        "run is the next 2,000,000 rows of that same loader, so no run pays for starting threads or for row "
        "groups read ahead and left unused when a loop stops. The target compares each mixture with the "
        "slower of its two caches read alone, in the same loader (the plain cache mixed with itself: with the "
        "plain cache alone). `granularity='batch'`: each batch comes whole from one source, drawn with the "
        "weights, as a view of that source's batch (the other mixtures copy every row into batches that mix "
        "the sources).",
        "",
    ]
    rows = []
    for case in cases:
        res = r.result(case["id"])
        if res is None:
            rows.append([case["label"], "error (below)", "", "", "", "", ""])
            continue
        reader = case["id"].rsplit(".", 1)[1]
        sources = ("plain",) if ".self50" in case["id"] else ("plain", "zstd")
        slower = min_rate(r.rate(f"mixing.sparkfeed.{source}.{reader}") for source in sources)
        rows.append(
            [
                case["label"],
                n(res["rows_per_s"]),
                spread(res),
                n(res["mb_per_s"]),
                rss(res),
                percent(ratio(res["rows_per_s"], slower)),
                "; ".join(marks.get(case["id"], [])),
            ]
        )
    header = ["reader", "rows/s", "runs: slowest-fastest", "MB/s", "peak RSS MiB (+over baseline)"]
    lines += [*table([*header, "vs the slower cache alone", "target"], rows), ""]
    return lines


def s3_section(r: Results, marks: dict[str, list[str]]) -> list[str]:
    """The s3 group: reads through the local S3 server beside the same reads of the local cache."""
    if not any(c["group"] == "s3" for c in r.cases):
        return []
    lines = [
        "## Object storage: the caches on a local S3 server (moto on 127.0.0.1)",
        "",
        "The holder's cache directory (every file, the manifest included) uploaded to `s3://bench/<dataset>/` "
        "on moto's S3 server, started by the harness on 127.0.0.1 (the tests' `tests/s3server.py`). sparkfeed "
        'reads it in place: `make_spark_converter("s3://bench/<dataset>", storage_options=...)`, one epoch, '
        "batch 1024, no shuffle. **Anchor**: the same files read whole with `pyarrow.fs` "
        "(`open_input_file(path).read()`: one GET each), one after another; rows/s is the cache's rows over that "
        "time. **Row-group GETs**: one ranged GET per row group's byte span, one at a time, nothing decoded. "
        "File MB/s: the cache's Parquet bytes over the median run, the same unit for every row; MB/s: decoded "
        "bytes yielded. Requests are counted by moto's recorder over the case's warm-up and timed epochs "
        "(its one-off requests, opening the dataset, spread over them). moto answers every ranged GET by "
        "copying the whole object, so on this server a request costs in proportion to the object's size, "
        "not the range's: that is what the row-group row shows.",
        "",
    ]
    for dataset in ("tabular", "vectors"):
        cases = [c for c in r.cases if c["group"] == "s3" and c["peer"] == dataset]
        if not cases:
            continue
        anchor = r.rate(f"s3.pyarrow.{dataset}.download")
        spans = r.rate(f"s3.pyarrow.{dataset}.row_groups")
        rows = []
        for case in cases:
            res = case["result"]
            if "error" in res:
                rows.append([case["label"], "error (below)", *[""] * 10])
                continue
            req = res.get("s3", {})
            rows.append(
                [
                    case["label"],
                    n(res["rows_per_s"]),
                    spread(res),
                    n(res.get("file_mb_per_s")),
                    n(res["mb_per_s"]),
                    percent(ratio(res["rows_per_s"], anchor)),
                    percent(ratio(res["rows_per_s"], spans)),
                    n(req.get("requests_per_epoch"), "{:,.1f}"),
                    n(req.get("requests_per_row_group"), "{:.2f}"),
                    n(req.get("bytes_per_get") and req["bytes_per_get"] / 1e6, "{:.2f}"),
                    rss(res),
                    "; ".join(marks.get(case["id"], [])),
                ]
            )
        upload = r.data["holders"].get(f"sparkfeed-{dataset}", {}).get("s3", {})
        lines += [
            f"### {dataset}"
            + (
                f": {upload['objects']} objects, {upload['bytes'] / 1e6:,.0f} MB, "
                f"{upload['row_groups']} row groups (uploaded in {upload['upload_s']:.1f} s)"
                if upload
                else ""
            ),
            "",
        ]
        header = [
            "reader",
            "rows/s",
            "runs: slowest-fastest",
            "file MB/s",
            "MB/s",
            "vs anchor",
            "vs row-group GETs",
            "requests/epoch",
            "requests/row group",
            "MB/GET",
            "peak RSS MiB (+over baseline)",
            "target",
        ]
        lines += [*table(header, rows), ""]
    return lines


# --------------------------------------------------------------------------- plot


def plot(data: dict[str, Any], path: Path) -> None:
    """Horizontal bars, log x: rows/s of every reader in the tabular and vector groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = Results(data)
    order = list(SHORT)
    chosen = sorted(
        (c for c in r.cases if c["group"] in SHORT and "error" not in c["result"]),
        key=lambda c: order.index(c["group"]),  # stable: each group keeps its case order
    )
    bars = [
        (f"{SHORT[c['group']]}: {c['label']}" + (" *" if c["note"] else ""), c["result"]["rows_per_s"], c["side"])
        for c in chosen
    ]
    if not bars:
        return
    colors = {"sparkfeed": "#1f77b4", "petastorm": "#d62728", "pyarrow": "#7f7f7f"}
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(bars) + 1.4))
    labels = [b[0] for b in bars][::-1]
    values = [b[1] for b in bars][::-1]
    ax.barh(labels, values, color=[colors[b[2]] for b in bars][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("rows/s (log scale), median")
    for y, value in enumerate(values):
        ax.text(value * 1.05, y, f"{value:,.0f}", va="center", fontsize=7)
    ax.set_xlim(min(values) / 2, max(values) * 4)
    ax.tick_params(axis="y", labelsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), loc="lower right", fontsize=8)
    m = data["machine"]
    ax.set_title(
        f"sparkfeed vs Petastorm vs pyarrow, batch 1024, one epoch ({m['cores']} cores, {data['started'][:10]})"
        + (
            "\n* Petastorm's row-by-row DataLoader timed on its first rows, see results.md"
            if any("*" in b[0] for b in bars)
            else ""
        ),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write(data: dict[str, Any], out: Path) -> None:
    """results.md and throughput.png next to results.json."""
    (out / "results.md").write_text(markdown(data))
    plot(data, out / "throughput.png")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_DIR
    write(json.loads((out / "results.json").read_text()), out)
    print(out / "results.md")


if __name__ == "__main__":
    main()
