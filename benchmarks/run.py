"""The benchmark harness: sparkfeed against Petastorm and raw pyarrow, one `make bench` run.

    .venv/bin/python benchmarks/run.py [--quick] [--cases tabular,vectors,...] [--repeats N]

Generates the source datasets once (datasets.py), then runs every measured case in a fresh
process (sparkfeed_side.py in our venv, petastorm_side.py in the Petastorm anchor venv), so peak
RSS is per case. A converter's cache lives as long as the process that made it, so each
(side, dataset) converts once in a "holder" process that stays alive while that dataset's cases
read the pickled converter. Results: benchmarks/results/{results.json, results.md, throughput.png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
from common import BENCH_DIR, CACHE_DIR, DATA_DIR, JSON_MARKER, RESULTS_DIR, ROOT, TMP_DIR

S3_BUCKET = "bench"
S3_SERVER_ENV = {"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(2**30)}
"""moto keeps objects up to this size in memory (its default, 1 MiB, spills larger ones to temp files)."""

OUR_PYTHON = sys.executable
ANCHOR_DIR = ROOT / ".anchors" / "petastorm"
ANCHOR_PYTHON = ANCHOR_DIR / "bin" / "python"
ANCHOR_SCRIPT = ROOT.parent / "shared" / "anchors" / "petastorm-venv.sh"
LOG_DIR = DATA_DIR / "logs"

GROUPS = (
    "tabular",
    "vectors",
    "images",
    "first_batch",
    "batching",
    "materialize",
    "reuse",
    "memory",
    "s3",
    "mixing",
    "sequences",
)
DEFAULT_LOADER_ROWS = 300_000
"""Petastorm's row-by-row loader reads the 2M-row tabular set at 30-70k rows/s: over 60 s a run.
Its tabular cases time the first 300,000 rows instead (rows/s is steady after the first batches)."""
CASE_TIMEOUT_S = 900
BATCHING_ONE_ROWS = 200_000
"""Rows the batch-size-1 batching cases time: 200,000 batches, a second or two when batching is linear."""
PACKED_ROWS = 20_000
"""Packed rows (of 4,096 tokens) per timed run of the steady packed cases: about two epochs of the sequences set."""
MIXING_ROWS = 2_000_000
"""Rows per timed run of the mixing group (the tabular set's size), from one loader that lives across runs."""
MIXES = (
    ("plain", "plain", "the plain cache alone"),
    ("zstd", "zstd", "the zstd cache alone"),
    ("mix50", "plain:0.5,zstd:0.5", "mix(plain 0.5, zstd 0.5), stop='never'"),
    ("mix90", "plain:0.9,zstd:0.1", "mix(plain 0.9, zstd 0.1), stop='never'"),
    ("self50", "plain:0.5,plain:0.5", "mix(plain 0.5, plain 0.5): the plain cache twice, stop='never'"),
    ("mix50b", "plain:0.5,zstd:0.5@batch", "mix(plain 0.5, zstd 0.5, granularity='batch'), stop='never'"),
    ("self50b", "plain:0.5,plain:0.5@batch", "mix(plain 0.5, plain 0.5, granularity='batch'): the plain cache twice"),
)
"""The mixing group's cases: (tag, --mix, label). The targets compare each mixture with the slower source alone
(``self50``: two sources as fast as each other, where the mixer's copy of every row shows most; ``@batch``: whole
batches from one source each, views of the sources' batches)."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One measured case: a side script invocation and where its row goes in the report."""

    id: str
    group: str
    """Report table: tabular, tabular_zstd, vectors, images, first_batch, materialize, memory."""
    side: str
    """sparkfeed, petastorm or pyarrow (pyarrow runs in our venv on sparkfeed's cache)."""
    label: str
    args: tuple[str, ...]
    holder: tuple[str, str, str | None] | None = None
    """(script side, dataset, codec) of the converter the case reads; None for standalone cases."""
    peer: str | None = None
    """Cases of the same group and peer are compared: plain, shuffle, shard, w1, w2."""
    note: str = ""
    selector: str = ""
    """The --cases name that selects it (default: its group)."""


# fmt: off
def build_cases() -> list[Case]:
    """Every case, in run order (grouped by holder so each dataset is converted once per side)."""
    cases: list[Case] = []

    def add(case_id: str, label: str, args: str, holder: tuple[str, str, str | None] | None, **kw: Any) -> None:
        group, side = case_id.split(".")[:2]
        cases.append(Case(case_id, group, side, label, tuple(args.split()), holder, **kw))

    sf_tab, sf_zstd = ("sparkfeed", "tabular", None), ("sparkfeed", "tabular", "zstd")
    sf_vec = ("sparkfeed", "vectors", None)
    for group, holder in (("tabular", sf_tab), ("tabular_zstd", sf_zstd), ("vectors", sf_vec)):
        tag, selector = (" (zstd cache)", "tabular") if group == "tabular_zstd" else ("", group)
        add(f"{group}.pyarrow.iter_batches", f"pyarrow iter_batches(1024) -> NumPy{tag}",
            "--reader arrow_iter_batches", holder, selector=selector)
        add(f"{group}.pyarrow.limit", f"Arrow limit: row group -> NumPy -> slices, 1 thread{tag}",
            "--reader arrow_limit", holder, selector=selector)
        add(f"{group}.pyarrow.read_table", f"pyarrow pq.read_table -> NumPy -> slices{tag}",
            "--reader arrow_read_table", holder, selector=selector)
        if group == "tabular":
            add("tabular.sparkfeed.numpy", "sparkfeed make_numpy_iterator", "--reader numpy", holder, peer="plain")
            add("tabular.sparkfeed.torch", "sparkfeed make_torch_dataloader", "--reader torch", holder, peer="plain")
            add("tabular.sparkfeed.numpy_noverify", "sparkfeed make_numpy_iterator, verify_checksums=False",
                "--reader numpy --no-verify", holder)
            add("tabular.sparkfeed.torch_noverify", "sparkfeed make_torch_dataloader, verify_checksums=False",
                "--reader torch --no-verify", holder)
            add("tabular.sparkfeed.tf", "sparkfeed make_tf_dataset (eager iteration)", "--reader tf", holder,
                peer="tf")
            add("tabular.sparkfeed.tf_graph", "sparkfeed make_tf_dataset (in a tf.function, as Keras fit)",
                "--reader tf_graph", holder)
            add("tabular.sparkfeed.tf_ceiling", "tf.data ceiling: one batch in memory, repeated, iterated eagerly",
                "--reader tf_ceiling", holder)
            add("tabular.sparkfeed.jax", "sparkfeed make_jax_iterator", "--reader jax", holder)
            add("tabular.sparkfeed.jax_ceiling", "JAX ceiling: batches cut from one block on the device, no reading",
                "--reader jax_ceiling", holder)
            add("tabular.sparkfeed.shuffle",
                "sparkfeed torch, shuffle_row_groups + shuffling_queue_capacity=10000, seed=0",
                "--reader torch --shuffle buffer --quality", holder, peer="shuffle")
            add("tabular.sparkfeed.rowgroups", "sparkfeed torch, shuffle_row_groups only, seed=0",
                "--reader torch --shuffle rowgroups --quality", holder, peer="rowgroups")
            add("tabular.sparkfeed.shard", "sparkfeed torch, shard 0 of 2",
                "--reader torch --shard 0/2", holder, peer="shard")
            add("first_batch.sparkfeed", "sparkfeed torch, tabular, no shuffle", "--reader first_batch", holder)
        elif group == "tabular_zstd":
            add("tabular_zstd.sparkfeed.torch", "sparkfeed make_torch_dataloader (zstd cache)",
                "--reader torch", holder, peer="plain", selector="tabular")
        else:
            add("vectors.sparkfeed.numpy", "sparkfeed make_numpy_iterator", "--reader numpy", holder, peer="plain")
            add("vectors.sparkfeed.torch", "sparkfeed make_torch_dataloader", "--reader torch", holder, peer="plain")
            add("vectors.sparkfeed.torch_noverify", "sparkfeed make_torch_dataloader, verify_checksums=False",
                "--reader torch --no-verify", holder)

    pt_tab, pt_vec = ("petastorm", "tabular", None), ("petastorm", "vectors", None)
    bounded, note = f"--max-rows {DEFAULT_LOADER_ROWS}", f"first {DEFAULT_LOADER_ROWS:,} rows"
    add("tabular.petastorm.default", "Petastorm DataLoader (default, row by row)",
        f"--reader default {bounded}", pt_tab, peer="plain", note=note)
    add("tabular.petastorm.default_shuffle", "Petastorm DataLoader, shuffling_queue_capacity=10000",
        f"--reader default --shuffle buffer {bounded}", pt_tab, peer="shuffle", note=note)
    add("tabular.petastorm.batched", "Petastorm BatchedDataLoader", "--reader batched", pt_tab, peer="plain")
    add("tabular.petastorm.batched_shuffle", "Petastorm BatchedDataLoader, shuffling_queue_capacity=10000",
        "--reader batched --shuffle buffer --quality", pt_tab, peer="shuffle")
    add("tabular.petastorm.batched_shard", "Petastorm BatchedDataLoader, shard 0 of 2",
        "--reader batched --shard 0/2", pt_tab, peer="shard")
    add("tabular.petastorm.tf", "Petastorm make_tf_dataset (eager iteration)", "--reader tf", pt_tab, peer="tf")
    add("vectors.petastorm.default", "Petastorm DataLoader (default, row by row)",
        "--reader default", pt_vec, peer="plain")
    add("vectors.petastorm.batched", "Petastorm BatchedDataLoader", "--reader batched", pt_vec, peer="plain")

    png = "--transform png --batch-size 64"
    # Both sides with thread workers (their default) and with process workers, which a GIL-bound
    # transform like this one needs to scale.
    for pool in ("thread", "process"):
        for workers in (1, 2):
            add(f"images.sparkfeed.{pool}.w{workers}",
                f"sparkfeed torch, transform_fn, reader_pool_type={pool!r}, workers_count={workers}",
                f"--reader torch --workers {workers} --pool {pool} {png}", ("sparkfeed", "images", None),
                peer=f"{pool}.w{workers}")
    for loader, name in (("default", "DataLoader"), ("batched", "BatchedDataLoader")):
        for pool in ("thread", "process"):
            for workers in (1, 2):
                add(f"images.petastorm.{loader}.{pool}.w{workers}",
                    f"Petastorm {name}, TransformSpec, reader_pool_type={pool!r}, workers_count={workers}",
                    f"--reader {loader} --workers {workers} --pool {pool} {png}", ("petastorm", "images", None),
                    peer=f"{pool}.w{workers}")

    # One 3M-row row group cut into small and normal batches: the batcher's cost per batch must
    # not grow with the chunk. Batch size 1 times the first BATCHING_ONE_ROWS rows.
    for reader, name in (("numpy", "make_numpy_iterator"), ("torch", "make_torch_dataloader")):
        for size in (1, 32, 1024):
            bounded = f" --max-rows {BATCHING_ONE_ROWS}" if size == 1 else ""
            add(f"batching.sparkfeed.{reader}.b{size}", f"sparkfeed {name}, batch {size}",
                f"batching --reader {reader} --batch-size {size}{bounded}", None,
                note=f"first {BATCHING_ONE_ROWS:,} rows" if size == 1 else "")

    # Token ids of heavy-tailed lengths (mean 200, up to 4,096) against the same number of tokens as
    # fixed-length rows of 200, and against today's object arrays; tokens/s counts values, not padding.
    sf_seq, sf_fixed = ("sparkfeed", "sequences", None), ("sparkfeed", "sequences_fixed", None)
    rows256 = "--batch-size 256 --tokens"
    for reader, name in (("numpy", "make_numpy_iterator"), ("torch", "make_torch_dataloader")):
        add(f"sequences.sparkfeed.fixed_{reader}", f"{name}, fixed-length rows of 200 (the anchor)",
            f"--reader {reader} {rows256}", sf_fixed, peer=reader)
        add(f"sequences.sparkfeed.object_{reader}", f"{name}, no sequence= (object arrays / lists of tensors)",
            f"--reader {reader} {rows256}", sf_seq, peer=reader)
        add(f"sequences.sparkfeed.pad_{reader}", f"{name}, sequence pad", f"--reader {reader} --sequence pad {rows256}",
            sf_seq, peer=reader)
        add(f"sequences.sparkfeed.bucket_{reader}", f"{name}, sequence bucket (default bounds 8..4096)",
            f"--reader {reader} --sequence bucket {rows256}", sf_seq, peer=reader)
        add(f"sequences.sparkfeed.pack_{reader}", f"{name}, sequence pack, 16 x 4096 per batch",
            f"--reader {reader} --sequence pack --batch-size 16 --seq-len 4096 --tokens", sf_seq, peer=reader)
        # Mixing packed batches against the cache alone, both in steady state (one endless loader timed
        # in runs of PACKED_ROWS packed rows), as the mixing group: a one-epoch run would charge the
        # mixture for the row groups its other source read ahead when the first ran out.
        steady = f"--reader {reader} --sequence pack --batch-size 16 --seq-len 4096 --steady-rows {PACKED_ROWS}"
        add(f"sequences.sparkfeed.packsteady_{reader}", f"{name}, sequence pack, one endless loader (steady state)",
            steady, sf_seq, peer=reader)
        add(f"sequences.sparkfeed.packmix_{reader}",
            f"{name}, sequence pack, the cache mixed with itself, whole batches, stop='never' (steady state)",
            f"{steady} --mix-self", sf_seq, peer=reader)
    add("sequences.sparkfeed.pad_tf", "make_tf_dataset, sequence pad (eager iteration)",
        f"--reader tf --sequence pad {rows256}", sf_seq, peer="tf")
    add("sequences.sparkfeed.bucket_jax", "make_jax_iterator, sequence bucket",
        f"--reader jax --sequence bucket {rows256}", sf_seq, peer="jax")
    add("sequences.petastorm.batched", "Petastorm BatchedDataLoader on the same DataFrame",
        "--reader batched --batch-size 256", ("petastorm", "sequences", None), peer="torch")
    add("sequences.petastorm.batched_fixed", "Petastorm BatchedDataLoader, fixed-length rows of 200",
        "--reader batched --batch-size 256", ("petastorm", "sequences_fixed", None), peer="torch")

    for side in ("sparkfeed", "petastorm"):
        for dataset in ("tabular", "vectors"):
            add(f"materialize.{side}.{dataset}", dataset, f"materialize --dataset {dataset}", None)
    add("reuse.sparkfeed.tabular", "tabular", "reuse --dataset tabular", None)
    add("memory.sparkfeed", "sparkfeed make_numpy_iterator, big dataset read in place", "memory", None)
    add("memory.sparkfeed.shuffled", "the same, shuffled: shuffling_queue_capacity=1,000,000 (3 row groups a "
        "window, 0.10 GiB)", "memory --shuffle 1000000", None)
    add("memory.sparkfeed.shuffled_step", "the same shuffle, batches of 65,536 rows, each after a 200 ms training "
        "step, first 8M rows", "memory --shuffle 1000000 --batch-size 65536 --step-ms 200 --max-rows 8000000", None)
    add("memory.sparkfeed.shuffled_prefetch", "the same with prefetch=3: one window read ahead, not four",
        "memory --shuffle 1000000 --batch-size 65536 --step-ms 200 --max-rows 8000000 --prefetch 3", None)

    # The same caches uploaded to a local S3 server (moto on 127.0.0.1, started by this harness):
    # the anchor is a plain sequential download of the same files, measured in the same run.
    for dataset, holder in (("tabular", sf_tab), ("vectors", sf_vec)):
        s3 = f"--s3 {dataset}"
        add(f"s3.pyarrow.{dataset}.download", "pyarrow.fs: the cache files downloaded whole, one after another "
            "(the anchor)", f"--reader s3_download {s3}", holder, peer=dataset)
        add(f"s3.pyarrow.{dataset}.row_groups", "pyarrow.fs: one ranged GET per row group, one at a time, "
            "nothing decoded", f"--reader s3_row_groups {s3}", holder, peer=dataset)
        for reader, name in (("numpy", "make_numpy_iterator"), ("torch", "make_torch_dataloader")):
            add(f"s3.sparkfeed.{dataset}.{reader}", f"sparkfeed {name} from S3, default prefetch",
                f"--reader {reader} {s3}", holder, peer=dataset)
            add(f"s3.sparkfeed.{dataset}.{reader}_p16", f"sparkfeed {name} from S3, prefetch=16",
                f"--reader {reader} --prefetch 16 {s3}", holder, peer=dataset)
        add(f"s3.sparkfeed.{dataset}.numpy_p16_w4", "sparkfeed make_numpy_iterator from S3, prefetch=16, "
            "workers_count=4", f"--reader numpy --prefetch 16 --workers 4 {s3}", holder, peer=dataset)
        add(f"s3.sparkfeed.{dataset}.numpy_p16_ra0", "sparkfeed make_numpy_iterator from S3, prefetch=16, "
            "read_ahead_bytes=0 (each row group alone)", f"--reader numpy --prefetch 16 --read-ahead-mb 0 {s3}",
            holder, peer=dataset)
        add(f"s3.sparkfeed.{dataset}.numpy_p16_ra256", "sparkfeed make_numpy_iterator from S3, prefetch=16, "
            "read_ahead_bytes=256 MiB", f"--reader numpy --prefetch 16 --read-ahead-mb 256 {s3}", holder, peer=dataset)
        add(f"s3.pyarrow.{dataset}.local_download", "local disk: the cache files read whole, one after another",
            "--reader local_download", holder, peer=dataset)
        for reader, name in (("numpy", "make_numpy_iterator"), ("torch", "make_torch_dataloader")):
            add(f"s3.sparkfeed.{dataset}.local_{reader}", f"sparkfeed {name} from the local cache",
                f"--reader {reader} --file-mb", holder, peer=dataset)

    # Two caches of the tabular set, uncompressed and zstd, held at once, read alone and mixed: in
    # steady state (one loader, runs of MIXING_ROWS rows each), since a mixture runs long by design.
    sf_mix = ("sparkfeed", "tabular", "plain+zstd")
    for reader, name in (("numpy", "make_numpy_iterator"), ("torch", "make_torch_dataloader")):
        for tag, spec, label in MIXES:
            add(f"mixing.sparkfeed.{tag}.{reader}", f"sparkfeed {name}, {label}",
                f"--reader {reader} --mix {spec} --steady-rows {MIXING_ROWS}", sf_mix, peer=reader)
    return cases
# fmt: on


# --------------------------------------------------------------------------- processes


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def python_of(side: str) -> str:
    return str(ANCHOR_PYTHON) if side == "petastorm" else OUR_PYTHON


def script_of(side: str) -> str:
    return str(BENCH_DIR / ("petastorm_side.py" if side == "petastorm" else "sparkfeed_side.py"))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYSPARK_PYTHON", None)  # Each side sets it to its own interpreter.
    env.pop("PYSPARK_DRIVER_PYTHON", None)
    env["PYTHONWARNINGS"] = "ignore::FutureWarning,ignore::DeprecationWarning"
    return env


def tail(path: Path, lines: int = 15) -> str:
    """The end of a log without Spark's and Java's routine noise."""
    noise = ("WARN ", "WARNING: ", "Using Spark's", "Setting default log level", "To adjust logging level")
    text = [line for line in path.read_text(errors="replace").splitlines() if not line.startswith(noise)]
    return "\n".join(text[-lines:])


def parse_result(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(JSON_MARKER):
            return json.loads(line[len(JSON_MARKER) :])
    return None


def run_side(side: str, args: list[str], log_name: str, timeout: float = CASE_TIMEOUT_S) -> dict[str, Any]:
    """One side process to completion; its JSON line, or {'error': ...} with the log's tail."""
    log_path = LOG_DIR / f"{log_name}.log"
    command = [python_of(side), script_of(side), *args]
    with log_path.open("w") as stderr:
        stderr.write(" ".join(command) + "\n")
        stderr.flush()
        try:
            done = subprocess.run(
                command, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s", "log": str(log_path)}
    result = parse_result(done.stdout)
    if done.returncode != 0 or result is None:
        return {"error": f"exit status {done.returncode}: {tail(log_path)}", "log": str(log_path)}
    return result


@contextmanager
def holder(side: str, dataset: str, codec: str | None) -> Iterator[dict[str, Any]]:
    """A process that converts ``dataset`` once and keeps the cache alive while the block runs."""
    name = f"{side}-{dataset}" + (f"-{codec}" if codec else "")
    handle = CACHE_DIR / f"{name}.converter.pkl"
    log_path = LOG_DIR / f"serve-{name}.log"
    command = [python_of(side), script_of(side), "serve", "--dataset", dataset, "--handle", str(handle)]
    if codec:
        command += ["--codec", codec]
    with log_path.open("w") as stderr:
        process = subprocess.Popen(
            command, cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        try:
            assert process.stdout is not None
            info: dict[str, Any] | None = None
            for line in process.stdout:
                info = parse_result(line)
                if info is not None:
                    break
            if info is None:
                process.wait()
                info = {"error": f"holder exit status {process.returncode}: {tail(log_path)}", "log": str(log_path)}
            else:
                info["handle"] = str(handle)
            yield info
        finally:
            if process.stdin is not None:
                process.stdin.close()  # The holder deletes its cache and exits.
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            handle.unlink(missing_ok=True)


class S3Stage:
    """The local S3 server of the ``s3`` group, started once per run, and the caches uploaded to it.

    The server is the tests' helper (tests/s3server.py: moto in a subprocess on 127.0.0.1); it is
    imported from there rather than copied, so the tests and the benchmark exercise one server.
    """

    def __init__(self) -> None:
        self.server: Any = None

    def __enter__(self) -> S3Stage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.server is not None:
            self.server.stop()

    def start(self) -> Any:
        if self.server is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from s3server import S3Server

            self.server = S3Server(env=S3_SERVER_ENV).start()
            self.server.create_bucket(S3_BUCKET)
            log(f"  S3 server (moto) on {self.server.url}, pid {self.server.pid}")
        return self.server

    @contextmanager
    def dataset(self, name: str, held: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Uploads a holder's cache directory (every file, the manifest included) to s3://bench/<name>/;
        deletes it after the block, so the server holds one dataset at a time."""
        import pyarrow.fs as pafs

        server = self.start()
        local = held["cache_url"].removeprefix("file://")
        fs = server.filesystem()
        started = time.perf_counter()
        pafs.copy_files(local, f"{S3_BUCKET}/{name}", destination_filesystem=fs, use_threads=True)
        upload_s = time.perf_counter() - started
        infos = fs.get_file_info(pafs.FileSelector(f"{S3_BUCKET}/{name}", recursive=True))
        nbytes = sum(info.size for info in infos if info.type == pafs.FileType.File)
        info = {
            "url": f"s3://{S3_BUCKET}/{name}",
            "row_groups": held["row_groups"],
            "storage_options": server.storage_options,
            "objects": sum(info.type == pafs.FileType.File for info in infos),
            "bytes": nbytes,
            "upload_s": upload_s,
        }
        log(f"  uploaded {info['objects']} objects, {nbytes / 1e6:,.0f} MB to {info['url']} in {upload_s:.1f} s")
        try:
            yield info
        finally:
            fs.delete_dir(f"{S3_BUCKET}/{name}")


REQUESTS_KEPT = 80
"""Requests of an s3 case kept verbatim in results.json (method, path, range): the warm-up epoch's."""


def s3_counts(requests: Any, result: dict[str, Any], row_groups: int) -> dict[str, Any]:
    """Requests a case made, per epoch and per row group. The case process ran the warm-up epoch and
    the timed ones; its one-off requests (opening the dataset: listing, manifest, footers) are spread
    over those epochs, so per-epoch numbers slightly overstate a long run's."""
    epochs = 1 + len(result["times_s"])
    per_epoch = requests.total / epochs
    return {
        "requests": requests.total,
        "by_method": requests.by_method,
        "ranged_gets": requests.ranged_gets,
        "range_bytes": requests.range_bytes,
        "epochs": epochs,
        "requests_per_epoch": per_epoch,
        "gets_per_epoch": requests.ranged_gets / epochs,
        "requests_per_row_group": per_epoch / row_groups,
        "bytes_per_get": requests.range_bytes / max(requests.ranged_gets, 1),
        "first_requests": [" ".join(entry).strip() for entry in requests.entries[:REQUESTS_KEPT]],
    }


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_busy(seconds: float = 3.0) -> float:
    """Fraction of CPU time not idle over the next few seconds: unlike the load average, which
    lags by a minute, it says whether something else is running right now.
    """

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total, idle = sample()
    time.sleep(seconds)
    total2, idle2 = sample()
    return 1 - (idle2 - idle) / max(total2 - total, 1)


# --------------------------------------------------------------------------- setup


ANCHOR_EXTRAS = ("pillow", "tensorflow-cpu", "keras")
"""What the harness adds to the Petastorm venv, at the versions of constraints.txt: Pillow for the
images case, TensorFlow (and its Keras) for make_tf_dataset."""
ANCHOR_KEEP = ("numpy", "pyarrow")
"""The anchor venv's own pins (Petastorm needs pyarrow 12, which needs numpy < 2), passed to the same
pip command at their installed versions so that installing the extras cannot upgrade them."""


def installed_in_anchor(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions in the anchor venv, from package metadata (fast: imports nothing)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def version(name):\n"
        "    try:\n"
        "        return m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        return None\n"
        "print(json.dumps({name: version(name) for name in sys.argv[1:]}))"
    )
    done = subprocess.run([str(ANCHOR_PYTHON), "-c", code, *names], capture_output=True, text=True, check=True)
    versions: dict[str, str | None] = json.loads(done.stdout)
    return versions


def ensure_anchor() -> None:
    """Builds the Petastorm venv when missing (a clean clone), then adds the extras it lacks (a no-op
    when they are there at the pinned versions)."""
    if not ANCHOR_PYTHON.exists():
        if not ANCHOR_SCRIPT.exists():
            raise SystemExit(
                f"the Petastorm anchor is built by {ANCHOR_SCRIPT}, which is not there: clone sparkfeed next to "
                "the shared/ folder that holds it, or run sparkfeed's side alone with --sides sparkfeed"
            )
        log(f"building the Petastorm anchor venv with {ANCHOR_SCRIPT} (a few minutes) ...")
        subprocess.run([str(ANCHOR_SCRIPT), str(ANCHOR_DIR.relative_to(ROOT))], cwd=ROOT, check=True)
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if version:
            pins[name.lower()] = version
    installed = installed_in_anchor((*ANCHOR_EXTRAS, *ANCHOR_KEEP))
    missing = [
        f"{name}=={pins[name]}" if name in pins else name
        for name in ANCHOR_EXTRAS
        if installed[name] is None or (name in pins and installed[name] != pins[name])
    ]
    if missing:
        keep = [f"{name}=={installed[name]}" for name in ANCHOR_KEEP if installed[name]]
        log(f"installing {' '.join(missing)} into the Petastorm anchor venv (keeping {' '.join(keep)}) ...")
        subprocess.run([str(ANCHOR_PYTHON), "-m", "pip", "install", "-q", *missing, *keep], check=True)


def env_versions(side: str) -> dict[str, Any]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from common import versions; print(json.dumps(versions()))"
    )
    done = subprocess.run(
        [python_of(side), "-c", code, str(BENCH_DIR)], capture_output=True, text=True, env=child_env(), check=False
    )
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-500:]}


def machine(sides: set[str]) -> dict[str, Any]:
    """The machine and the versions of each side that runs (the Petastorm venv may not exist without it)."""
    import psutil

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "loadavg_start": loadavg(),
        "cpu_busy_start": cpu_busy(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty_src": git("status", "--porcelain", "--", "src").splitlines(),
        "versions": {side: env_versions(side) for side in ("sparkfeed", "petastorm") if side in sides},
    }


# --------------------------------------------------------------------------- main


def selected(cases: list[Case], names: set[str], quick: bool, sides: set[str]) -> list[Case]:
    chosen = [
        c
        for c in cases
        if (c.selector or c.group) in names or c.group in names
        if c.side in sides or (c.side == "pyarrow" and "sparkfeed" in sides)
    ]
    return [c for c in chosen if not (quick and c.group == "memory")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip the 4 GiB memory case, 1 timed run per case")
    parser.add_argument("--cases", default=",".join(GROUPS), help=f"comma-separated, from: {', '.join(GROUPS)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 3, --quick 1)")
    parser.add_argument("--min-time", type=float, default=None, help="keep timing until runs add up to this (s)")
    parser.add_argument("--sides", default="sparkfeed,petastorm", help="sparkfeed (with pyarrow), petastorm")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    # `kill` as well as Ctrl-C unwinds through the holders' `finally`, so no cache or JVM is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = {n.strip() for n in args.cases.split(",") if n.strip()}
    unknown = names - set(GROUPS)
    if unknown:
        parser.error(f"unknown --cases {sorted(unknown)}; choose from {', '.join(GROUPS)}")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    min_time = args.min_time if args.min_time is not None else (0.0 if args.quick else 2.0)
    sides = {s.strip() for s in args.sides.split(",")}
    cases = selected(build_cases(), names, args.quick, sides)

    started = time.time()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(CACHE_DIR, ignore_errors=True)  # Caches of killed runs; live ones belong to running holders.
    shutil.rmtree(TMP_DIR, ignore_errors=True)
    CACHE_DIR.mkdir(parents=True)
    if "petastorm" in sides:
        ensure_anchor()
    info = machine(sides)
    log(
        f"load average at start: {info['loadavg_start']}, CPU busy {info['cpu_busy_start']:.0%} "
        f"(anything above a few % is another process); {len(cases)} cases, repeats={repeats}"
    )

    sources = {"tabular", "vectors", "images", "sequences", "sequences_fixed"}
    needed = sorted(sources & {c.holder[1] for c in cases if c.holder})
    needed += [c.args[c.args.index("--dataset") + 1] for c in cases if "--dataset" in c.args]
    needed += ["big"] if any(c.group == "memory" for c in cases) else []
    needed += ["onegroup"] if any(c.group == "batching" for c in cases) else []
    needed = sorted(set(needed))
    log(f"datasets: {', '.join(needed)}")
    dataset_records: list[dict[str, Any]] = []
    if needed:
        log_path = LOG_DIR / "datasets.log"
        log(f"  missing ones are generated with Spark 4 (first run: ~3 min; log: {log_path})")
        with log_path.open("w") as stderr:
            generation = subprocess.run(  # Spark 4 in its own process: its JVM ends with it.
                [OUR_PYTHON, str(BENCH_DIR / "datasets.py"), *needed],
                cwd=ROOT,
                env=child_env(),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                check=False,
            )
        if generation.returncode != 0:
            sys.exit(f"dataset generation failed:\n{tail(log_path)}")
        dataset_records = json.loads(generation.stdout.strip().splitlines()[-1])

    holders: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    timing = ["--repeats", str(repeats), "--min-time", str(min_time)]

    def record(case: Case, result: dict[str, Any], seconds: float, load: list[float]) -> None:
        entry = dataclasses.asdict(case) | {"result": result, "seconds": seconds, "loadavg": load}
        results.append(entry)
        if "error" in result:
            log(f"  {case.id}: ERROR {result['error'].splitlines()[0] if result['error'] else ''}")
        else:
            rate = result.get("rows_per_s")
            summary = (
                f"{rate:,.0f} rows/s"
                if rate
                else ", ".join(f"{k}={v:.3g}" for k, v in result.items() if k.endswith("_s") and isinstance(v, float))
            )
            if "tokens_per_s" in result:
                summary += f", {result['tokens_per_s']:,.0f} tokens/s"
            log(f"  {case.id}: {summary} ({seconds:.0f} s)")

    def run_case(case: Case, handle: str | None, s3: dict[str, Any] | None = None) -> None:
        load = loadavg()
        begun = time.perf_counter()
        if case.group == "s3":
            assert handle is not None and s3 is not None
            args = list(case.args)
            remote = "--s3" in args
            if remote:
                at = args.index("--s3")
                del args[at : at + 2]
                args += ["--s3-url", s3["url"], "--storage-options", json.dumps(s3["storage_options"])]
            server = stages.server
            server.start_recording()
            try:
                result = run_side(case.side, ["case", "--handle", handle, *args, *timing], case.id)
                if remote and "error" not in result:
                    result["s3"] = s3_counts(server.requests(), result, s3["row_groups"])
            finally:
                server.stop_recording()
            record(case, result, time.perf_counter() - begun, load)
            return
        if case.args[0] in ("materialize", "reuse"):
            result = run_side(case.side, [*case.args, "--repeats", str(repeats)], case.id)
        elif case.args[0] == "memory":
            result = run_side(case.side, list(case.args), case.id)
        elif case.args[0] == "batching":
            result = run_side(case.side, [*case.args, *timing], case.id)
        else:
            assert handle is not None
            result = run_side(case.side, ["case", "--handle", handle, *case.args, *timing], case.id)
        record(case, result, time.perf_counter() - begun, load)

    stages = S3Stage()  # started on the first s3 case; stopped whatever happens
    with stages:
        order: list[tuple[str, str, str | None] | None] = []
        for case in cases:
            if case.holder not in order:
                order.append(case.holder)
        for key in order:
            group = [c for c in cases if c.holder == key]
            if key is None:
                for case in group:
                    log(f"{case.id} ...")
                    run_case(case, None)
                continue
            side, dataset, codec = key
            log(f"converting {dataset}{' (' + codec + ')' if codec else ''} with {side} ...")
            with holder(side, dataset, codec) as held:
                holders["-".join(x for x in key if x)] = held
                if "error" in held:
                    log(f"  conversion failed: {held['error']}")
                    for case in group:
                        record(case, {"error": f"conversion failed: {held['error']}"}, 0.0, loadavg())
                    continue
                log(f"  converted in {held['convert_s']:.1f} s: {held['files']} files, {held['row_groups']} row groups")
                for case in group:
                    if case.group != "s3":
                        run_case(case, held["handle"])
                remote = [case for case in group if case.group == "s3"]
                if remote:
                    try:
                        with stages.dataset(dataset, held) as s3:
                            held["s3"] = {k: v for k, v in s3.items() if k != "storage_options"}
                            for case in remote:
                                run_case(case, held["handle"], s3)
                    except Exception as error:  # noqa: BLE001  (the other groups' results still get written)
                        log(f"  S3 stage failed: {error!r}")
                        for case in remote:
                            record(case, {"error": f"S3 stage failed: {error!r}"}, 0.0, loadavg())

    info["loadavg_end"] = loadavg()
    output = {
        "machine": info,
        "config": {
            "quick": args.quick,
            "repeats": repeats,
            "min_time_s": min_time,
            "cases": sorted(names),
            "sides": sorted(sides),
            "default_loader_rows": DEFAULT_LOADER_ROWS,
        },
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "duration_s": time.time() - started,
        "datasets": dataset_records,
        "holders": holders,
        "cases": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(output, indent=1, default=str) + "\n")
    report.write(output, args.out)
    log(f"done in {output['duration_s'] / 60:.1f} min: {args.out}/results.md")
    errors = [r["id"] for r in results if "error" in r["result"]]
    if errors:
        log(f"{len(errors)} case(s) failed: {', '.join(errors)} (logs in {LOG_DIR})")


if __name__ == "__main__":
    main()
