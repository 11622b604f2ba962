"""Progress latency: from the pipeline's step callback to the event arriving at a
WebSocket client (a real browser), on the embedded layer and on Redis, in one run.

For each layer a child process starts daphne, logs a user into headless Chromium,
which opens its own WebSocket to /ws/events/ and notes when each job.progress event
arrives; the child runs a 512x512 demo job through the worker's own path (JobRunner) in a
thread and notes when each step callback began. Same machine, same wall clock.

    .venv/bin/python bench/progress_latency.py [--steps 60]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import summary_ms, write_result  # noqa: E402
from bench._django import ROOT, bench_env, migrate, setup, start_web, stop, user_with_conversation  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
LISTEN = """
window.__events = [];
const ws = new WebSocket(`ws://${location.host}/ws/events/`);
ws.onmessage = (m) => {
  const e = JSON.parse(m.data);
  if (e.type === "job.progress") window.__events.push([e.step, Date.now()]);
};
new Promise((resolve) => { ws.onopen = resolve; });
"""


def measure(steps: int) -> dict:
    """Runs in the child process, whose environment picks the layer."""
    env = dict(os.environ)
    migrate(env)
    setup(env)
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright keeps a loop on this thread
    from playwright.sync_api import sync_playwright

    from generation.registry import get_generator
    from generation.services import job_submit
    from generation.worker import JobRunner

    user, conversation = user_with_conversation(title="latency")
    web, base = start_web(Path(env["DATA_DIR"]) / "web.log")
    callback_at: dict[int, float] = {}

    class Timed:
        def __init__(self, inner):
            self.inner, self.device = inner, inner.device

        def load(self, name):
            return self.inner.load(name)

        def needs_download(self, name):
            return self.inner.needs_download(name)

        def generate_batch(self, requests, on_step=None):
            def timed(step, total, latents):
                callback_at[step] = time.time()
                on_step(step, total, latents)

            return self.inner.generate_batch(requests, timed)

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{base}/login/")
            page.fill("#id_username", "bench")
            page.fill("#id_password", "bench-password-1")
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            page.evaluate(LISTEN)
            time.sleep(1)
            get_generator().load("demo")  # warm

            def work():
                job_submit(
                    user=user, conversation=conversation, prompt="latency", steps=steps, width=512, height=512
                ).jobs[0]
                JobRunner(Timed(get_generator())).run_queue(budget=0)

            worker = threading.Thread(target=work)
            worker.start()
            while worker.is_alive():
                page.wait_for_timeout(100)
            page.wait_for_timeout(1500)
            received = page.evaluate("window.__events")
            browser.close()
    finally:
        stop(web)
    latencies = [arrived / 1000 - callback_at[step] for step, arrived in received if step in callback_at]
    return {**summary_ms(latencies), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.steps)))
        return
    results = {}
    for name, redis in (("embedded (channels-lite)", None), ("channels-redis", args.redis)):
        env = bench_env(REDIS_URL=redis, DATABASE_URL=None, LOG_LEVEL="WARNING")
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--steps", str(args.steps)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'layer':26} {'events':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, row in results.items():
        print(f"{name:26} {row['n']:>7} {row['p50_ms']:>8} {row['p95_ms']:>8} {row['max_ms']:>8}")
    command = "bench/progress_latency.py " + " ".join(sys.argv[1:])
    print(f"written to {write_result('progress_latency', {'command': command, **results}).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
