"""The web server: WEB_PROCESSES daphne processes sharing one listening socket.

One daphne process runs every request's Python on one thread, so it serves one core's
worth of requests. This launcher opens the socket once (WEB_HOST:WEB_PORT) and starts
the processes on it (daphne's --fd); the kernel hands each new connection to one of
them. Live events reach every process through the channel layer, so a page may talk to
any of them. A process that dies is started again; SIGTERM or SIGINT stops them all.

    .venv/bin/python scripts/web.py        # WEB_PROCESSES: default the CPUs, at most 4
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def processes() -> int:
    value = os.environ.get("WEB_PROCESSES", "")
    if not value:
        return max(1, min(os.cpu_count() or 1, 4))
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"WEB_PROCESSES must be a whole number of at least 1, not {value!r}")
    return int(value)


def main() -> None:
    count = processes()
    host = os.environ.get("WEB_HOST", "127.0.0.1")
    port = int(os.environ.get("WEB_PORT", "8000"))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=2048)
    listener.set_inheritable(True)
    command = [
        sys.executable,
        "-m",
        "daphne",
        "--fd",
        str(listener.fileno()),
        *os.environ.get("WEB_DAPHNE_ARGS", "").split(),
        "imagegen_site.asgi:application",
    ]

    def start() -> subprocess.Popen:
        return subprocess.Popen(command, cwd=ROOT, pass_fds=[listener.fileno()])

    children = [start() for _ in range(count)]
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"web: {count} daphne process(es) on {host}:{port}", flush=True)
    while not stopping:
        for index, child in enumerate(children):
            if child.poll() is not None and not stopping:
                print(f"web: process {child.pid} exited with {child.returncode}; starting another", flush=True)
                time.sleep(1)  # a process that cannot start must not spin
                children[index] = start()
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()


if __name__ == "__main__":
    main()
