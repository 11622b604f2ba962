"""One job per GPU device across processes.

An exclusive `flock` on a lock file per device: the kernel frees it when its holder
exits or dies, so a crashed worker never leaves the device locked.
"""

import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class DeviceBusy(Exception):
    """The device lock could not be had within the wait limit."""


def lock_path(lock_dir: Path, device: str) -> Path:
    return Path(lock_dir) / f"device-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


@contextmanager
def device_lock(
    device: str,
    *,
    lock_dir: Path,
    wait: float,
    poll: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    path = lock_path(lock_dir, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = clock() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if clock() >= deadline:
                    raise DeviceBusy(f"{device} is busy: its lock {path} was held for more than {wait:g} s") from None
                sleep(poll)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
