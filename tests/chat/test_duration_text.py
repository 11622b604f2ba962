"""A duration reads the same from the server (the filters a card is rendered with) and
from the page (static/js/chat/duration.js, which counts it down): a card must not say
"about 43 s" and a second later "about 45 s", nor "About about 10 s left"."""

import json
import shutil
import subprocess

import pytest

from generation.templatetags.jobs import duration, time_left, waiting_time
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


def js_durations(values, tmp_path, function: str = "duration") -> list[str]:
    """The texts static/js/chat/duration.js's `function` gives for `values` (lists of
    arguments for a function of several), run by Node."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node is needed to run static/js/chat/duration.js (apt-get install nodejs)")
    # As a .mjs, so that Node loads it as the module it is whatever its version.
    (tmp_path / "duration.mjs").write_text(DURATION_JS.read_text())
    runner = tmp_path / "run.mjs"
    runner.write_text(
        'import { readFileSync } from "node:fs";\n'
        f'import {{ {function} as text }} from "./duration.mjs";\n'
        'const values = JSON.parse(readFileSync(0, "utf8"));\n'
        "process.stdout.write(JSON.stringify(values.map((v) => (Array.isArray(v) ? text(...v) : text(v)))));\n"
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


PROGRESS = (0, 8, 50, 89, 90, 100)


def test_the_page_and_the_server_say_every_time_left_the_same_way(tmp_path):
    cases = [[seconds, progress] for seconds in SECONDS[:800:3] + SECONDS[20_001:] for progress in PROGRESS]
    cases += [[None, 50], ["", 95]]
    texts = js_durations(cases, tmp_path, "timeLeft")

    different = [(case, js, time_left(*case)) for case, js in zip(cases, texts, strict=True)]
    different = [row for row in different if row[1] != row[2]]
    assert different[:10] == [], f"{len(different)} times left differ (seconds and progress, JS, Python)"


def test_the_page_and_the_server_say_every_wait_the_same_way(tmp_path):
    pairs = [[start, start + own] for start in (0, 0.04, 0.4, 0.5, 4.49, 4.5, 30, 89.5, 5400) for own in (0.3, 12, 600)]
    pairs += [[None, 10], [3, None]]
    texts = js_durations(pairs, tmp_path, "waitingTime")

    python = [waiting_time({"estimated_start_seconds": start, "estimated_seconds": ready}) for start, ready in pairs]
    assert texts == python


@pytest.mark.parametrize(
    "seconds, progress, text",
    [
        (10, 40, "About 10 s left"),
        (43, 0, "About 45 s left"),
        (150, 20, "About 3 min left"),
        (3, 8, "A few seconds left"),
        (0.4, 50, "A few seconds left"),
        (3, 90, "Almost done…"),
        (0, 100, "Almost done…"),
        (30, 95, "About 30 s left"),
        (None, 50, ""),
    ],
)
def test_time_left_reads_naturally_and_is_almost_done_only_near_the_end(seconds, progress, text):
    assert time_left(seconds, progress) == text


@pytest.mark.parametrize(
    "start, ready, text",
    [
        (30, 45, "Starts in about 30 s, ready in about 45 s"),
        (0, 0.4, "Starting soon, ready in a few seconds"),
        (0.2, 20, "Starts in a few seconds, ready in about 20 s"),
        (None, 45, ""),
    ],
)
def test_a_wait_reads_naturally(start, ready, text):
    assert waiting_time({"estimated_start_seconds": start, "estimated_seconds": ready}) == text
