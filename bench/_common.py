"""Helpers shared by the benchmarks: percentiles and result files."""

import json
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def in_child(script: str, label: str, *args) -> dict:
    """Run `script --child *args` in a process of its own (fresh settings each time);
    returns the JSON object its last line prints."""
    import subprocess
    import sys

    command = [sys.executable, script, "--child", *map(str, args)]
    out = subprocess.run(command, cwd=Path(script).resolve().parent.parent, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{label} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(child, *kinds) -> bool:
    """In a `--child` process: call `child` with the arguments, converted by `kinds`,
    and print its result as JSON; True then. False in the parent."""
    import sys

    if sys.argv[1:2] != ["--child"]:
        return False
    print(json.dumps(child(*(kind(value) for kind, value in zip(kinds, sys.argv[2:], strict=True)))))
    return True


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def wait_or_exit(predicate, timeout: float, log) -> None:
    """Poll `predicate` until it holds; past `timeout` seconds, exit with the end of `log`."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out; worker log:\n{log.read_text()[-3000:]}")
