"""Latency of an event crossing processes through the channel layer.

A sender process calls group_send with a timestamp every 20 ms; this process is a
member of the group and notes when each message arrives. Runs once on the
embedded layer (channels-lite on SQLite) and once on channels-redis, in one run.

    .venv/bin/python bench/event_latency.py [--messages 200]
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GROUP = "bench-latency"


def _setup_django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagegen_site.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only")
    import django

    django.setup()


def send(count: int, interval: float) -> None:
    _setup_django()
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    for n in range(count):
        async_to_sync(layer.group_send)(GROUP, {"type": "bench.tick", "n": n, "sent": time.time()})
        time.sleep(interval)


async def receive(count: int, env: dict[str, str], interval: float) -> list[float]:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(GROUP, channel)
    sender = subprocess.Popen(
        [sys.executable, __file__, "--send", str(count), "--interval", str(interval)], env=env, cwd=ROOT
    )
    latencies = []
    try:
        while len(latencies) < count:
            message = await asyncio.wait_for(layer.receive(channel), timeout=30)
            latencies.append(time.time() - message["sent"])
    finally:
        sender.wait(timeout=60)
        await layer.group_discard(GROUP, channel)
    return latencies


def run_layer(name: str, env_changes: dict[str, str | None], count: int, interval: float) -> dict:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    if "REDIS_URL" not in env:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--database", "channels", "-v0"], env=env, cwd=ROOT, check=True
        )
    command = [sys.executable, __file__, "--receive", str(count), "--interval", str(interval)]
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--send", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--receive", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    if args.send is not None:
        send(args.send, args.interval)
        return
    if args.receive is not None:
        import json

        from bench._common import summary_ms

        _setup_django()
        print(json.dumps(summary_ms(asyncio.run(receive(args.receive, dict(os.environ), args.interval)))))
        return

    from bench._common import write_result

    results = {}
    with tempfile.TemporaryDirectory() as data_dir:
        base = {"DATA_DIR": data_dir, "SECRET_KEY": "bench-only", "DATABASE_URL": None, "CHANNELS_SQLITE_PATH": None}
        results["embedded (channels-lite, SQLite)"] = run_layer(
            "embedded", {**base, "REDIS_URL": None}, args.messages, args.interval
        )
        results["channels-redis"] = run_layer("redis", {**base, "REDIS_URL": args.redis}, args.messages, args.interval)
    print(f"{'layer':34} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, row in results.items():
        print(f"{name:34} {row['n']:>5} {row['p50_ms']:>8} {row['p95_ms']:>8} {row['max_ms']:>8}")
    path = write_result(
        "event_latency",
        {"command": "bench/event_latency.py", "messages": args.messages, "interval_s": args.interval, **results},
    )
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
