"""The project's `.env` file, read once by the settings so every entry point sees it.

Variables already in the environment win over the file. `IMAGEGEN_ENV_FILE` names
another file, or none when empty. Under pytest the project's own `.env` is not read (a
developer's local values must not change the tests); a file named by
`IMAGEGEN_ENV_FILE` still is.

`python -m imagegen_site.envfile NAME ...` prints `export NAME=value` lines for the
scripts, which need a few values (DATA_DIR, WEB_HOST ...) before Django starts.
"""

import os
import shlex
import sys
from pathlib import Path

from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent


def env_file() -> Path | None:
    """The file to read, or None."""
    named = os.environ.get("IMAGEGEN_ENV_FILE")
    if named is not None:
        return Path(named) if named.strip() else None
    if "PYTEST_VERSION" in os.environ:
        return None
    return BASE_DIR / ".env"


def load_env_file() -> Path | None:
    """Add the file's variables to os.environ without replacing any; returns the file read."""
    path = env_file()
    if path is None or not path.is_file():
        return None
    load_dotenv(path, override=False)
    return path


def main(names: list[str]) -> None:
    load_env_file()
    for name in names:
        if name in os.environ:
            print(f"export {name}={shlex.quote(os.environ[name])}")


if __name__ == "__main__":
    main(sys.argv[1:])
