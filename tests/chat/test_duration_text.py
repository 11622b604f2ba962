"""A duration reads the same from the server (the `duration` filter a card is rendered
with) and from the page (static/js/chat/duration.js, which counts it down): a card must
not say "about 43 s" and a second later "about 45 s"."""

import json
import shutil
import subprocess

import pytest

from generation.templatetags.jobs import duration
from tests.helpers import BASE_DIR

DURATION_JS = BASE_DIR / "static" / "js" / "chat" / "duration.js"

# Every second up to five and a half hours, days and years, and the fractions a countdown
# passes through (halves above all: Python's round() and JS's Math.round() differ there).
SECONDS = [
    *range(20_001),
    *(86_399, 86_400, 100_000, 123_456, 1_000_000, 123_456_789, 2**31, 10**12),
    *(whole + part for whole in range(0, 200) for part in (0.25, 0.49, 0.5, 0.75)),
    *(4.5, 89.5, 5399.5, 5579.5, 5580.5, -0.5, -3),
]


def js_durations(values, tmp_path) -> list[str]:
    """The texts static/js/chat/duration.js gives for `values`, run by Node."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node is needed to run static/js/chat/duration.js (apt-get install nodejs)")
    # As a .mjs, so that Node loads it as the module it is whatever its version.
    (tmp_path / "duration.mjs").write_text(DURATION_JS.read_text())
    runner = tmp_path / "run.mjs"
    runner.write_text(
        'import { readFileSync } from "node:fs";\n'
        'import { duration } from "./duration.mjs";\n'
        'const values = JSON.parse(readFileSync(0, "utf8"));\n'
        "process.stdout.write(JSON.stringify(values.map(duration)));\n"
    )
    done = subprocess.run(
        [node, str(runner)], input=json.dumps(values), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_page_and_the_server_say_every_duration_the_same_way(tmp_path):
    texts = js_durations(SECONDS, tmp_path)

    different = [(seconds, js, duration(seconds)) for seconds, js in zip(SECONDS, texts, strict=True)]
    different = [row for row in different if row[1] != row[2]]
    assert different[:10] == [], f"{len(different)} durations differ (seconds, JS, Python)"


def test_an_unknown_duration_is_no_text_on_either_side(tmp_path):
    assert js_durations([None, ""], tmp_path) == ["", ""]
    assert duration(None) == duration("") == ""


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "a few seconds"),
        (4, "a few seconds"),
        (43, "about 45 s"),
        (45, "about 45 s"),
        (89, "about 90 s"),
        (90, "about 2 min"),
        (150, "about 3 min"),  # halves round up, not to even
        (5399, "about 90 min"),
        (5400, "about 1.5 h"),
        (7200, "about 2 h"),
        (86_400, "about 24 h"),
    ],
)
def test_it_reads_as_coarse_steps(seconds, text):
    assert duration(seconds) == text
