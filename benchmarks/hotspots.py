"""Where a benchmark case spends its time: one case under py-spy, every thread and worker process.

    .venv/bin/python benchmarks/hotspots.py images.sparkfeed.thread.w1 tabular.sparkfeed.tf ...

Runs each named case of `run.py` once (its warm-up and timed runs for at least 8 s) under
`py-spy record --threads --subprocesses`, sampling every thread and child process (reader
threads and worker processes included), and writes `benchmarks/results/profiles/<case>.txt`:
the share of samples per function as the innermost Python frame (self time) and as any frame
(inclusive time), idle samples excluded. The results file's "why a target is missed" notes cite
these. py-spy comes with the `bench` extra; it needs ptrace on its own child, which a normal
user has.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import ROOT, build_cases, child_env, holder, log, python_of, script_of

OUT_DIR = Path(__file__).resolve().parent / "results" / "profiles"
TOP = 25
RATE_HZ = 250
MIN_TIME_S = 8
"""Timed reading per profile: long enough that start-up (imports, the first read) is a small share."""
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*):\d+\)$")


def _frame_name(frame: str) -> str:
    """``function (path:line)`` → ``function (module file)``: lines differ, functions do not."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "src/", "benchmarks/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['function']} ({path})"


def summarize(raw: Path, title: str) -> str:
    """Self and inclusive sample shares of py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame_name(f) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for name in set(frames):
            anywhere[name] += samples
    header = f"{total} active samples at {RATE_HZ} Hz (idle threads excluded), all threads and processes"
    lines = [f"# {title}", "", header, ""]
    for heading, counter in (("self (innermost Python frame)", own), ("inclusive", anywhere)):
        lines += [f"## {heading}", ""]
        for name, samples in counter.most_common(TOP):
            lines.append(f"{100 * samples / max(total, 1):5.1f}%  {name}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", help="case ids, as in results.json (e.g. images.sparkfeed.thread.w1)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy", path=str(Path(python_of("sparkfeed")).parent))
    if py_spy is None:
        sys.exit("py-spy is missing: pip install -e '.[bench]' (make bench installs it)")
    known = {case.id: case for case in build_cases()}
    unknown = [name for name in args.cases if name not in known]
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; known: {sorted(known)}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        case = known[name]
        if case.holder is None:
            log(f"{name}: standalone cases are not profiled here")
            continue
        with holder(*case.holder) as info:
            if "error" in info:
                log(f"{name}: holder failed: {info['error']}")
                continue
            raw = OUT_DIR / f"{name}.raw"
            command = [
                py_spy, "record", "--threads", "--subprocesses", "--nonblocking", "-r", str(RATE_HZ),
                "-f", "raw", "-o", str(raw), "--",
                python_of(case.side), script_of(case.side), "case", "--handle", info["handle"], *case.args,
                "--repeats", "3", "--min-time", str(MIN_TIME_S),
            ]  # fmt: skip
            log(f"profiling {name} ...")
            subprocess.run(command, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, check=True)
            (OUT_DIR / f"{name}.txt").write_text(summarize(raw, f"{name}: {case.label}"))
            raw.unlink()
            log(f"  wrote {OUT_DIR / f'{name}.txt'}")


if __name__ == "__main__":
    main()
