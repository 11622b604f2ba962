"""How long a pass of the pipeline takes, learnt from measured passes (no Django here).

A pass that makes images of P megapixels in all (width x height x images) in `steps`
denoising steps takes about

    seconds = overhead + overhead_per_mp * P + steps * (step + step_per_mp * P)

a fixed part (encoding the prompt, setting the scheduler up, decoding the latents),
and the steps, whose cost has a floor (a GPU launches the same kernels whatever the
size) and grows with the pixels. Seconds per step alone (the time divided by the
steps) would charge every step a share of the fixed part, so a job with more steps
than those measured would be promised too long, and one with fewer too short.

`fit` learns these four numbers from measured passes (`Sample`s), as far as they
tell them apart: four different shapes (megapixels and steps) or more fit all four;
fewer scale the model's measured default (the worker's start-up warm-up pass,
`Speed.from_warm_up`) to what was measured. `Estimator` (built by
`generation.selectors.duration_estimator`) answers with the exact shape's own median
where that shape has been measured, and with the fit otherwise.

Two durations are told apart: how long a job takes once it has started, until its
image is stored (`seconds`), and how long its pass holds the device (`busy`): the
worker claims the next pass as soon as the images are made, while the PNGs are
encoded and stored on the side, so a job waiting behind it waits only for `busy`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import median

TERMS = ("overhead", "overhead_per_mp", "step", "step_per_mp")
# A measured pass this much slower than the fit of the others held something else
# (a model's load, a stall): it is left out of the fit.
OUTLIER = 1.5


@dataclass(frozen=True)
class Speed:
    """Seconds a pass takes as a function of its megapixels and steps (see the module)."""

    overhead: float = 0.0
    overhead_per_mp: float = 0.0
    step: float = 0.0
    step_per_mp: float = 0.0

    def seconds(self, megapixels: float, steps: float) -> float:
        return self.head(megapixels) + self.steps(megapixels, steps)

    def head(self, megapixels: float) -> float:
        """The part that does not depend on the steps."""
        return self.overhead + self.overhead_per_mp * megapixels

    def steps(self, megapixels: float, steps: float) -> float:
        return steps * (self.step + self.step_per_mp * megapixels)

    @classmethod
    def per_step(cls, seconds_per_step: float, *, megapixels: float) -> Speed:
        """A guess with no fixed part: `seconds_per_step` at `megapixels`, in proportion to pixels."""
        return cls(step_per_mp=seconds_per_step / megapixels)

    @classmethod
    def from_warm_up(cls, measured: dict) -> Speed | None:
        """A model's default from what a worker's warm-up measured (`Worker.warmup`), if usable."""
        try:
            speed = cls(**{term: max(float(measured.get(term, 0.0)), 0.0) for term in TERMS})
        except (TypeError, ValueError, AttributeError):
            return None
        return speed if speed.step or speed.step_per_mp else None


@dataclass(frozen=True)
class Sample:
    """One measured pass: its megapixels (all its images), the steps it ran, and how long
    it took from its claim until its last image was stored; `busy` is how long it held
    the device, where the worker's next pass showed it (else None)."""

    megapixels: float
    steps: int
    seconds: float
    busy: float | None = None


def fit(samples: list[Sample], prior: Speed) -> Speed:
    """The `Speed` that best explains `samples` (in relative terms), starting from `prior`.

    With four shapes or more, all four numbers are fitted (none negative); with two or
    three, the prior's fixed part and its steps are each scaled; with one, the prior as
    a whole. Passes far slower than the fit of the others are left out, once.
    """
    if not samples:
        return prior
    speed = _fit(samples, prior)
    kept = [sample for sample in samples if sample.seconds <= OUTLIER * speed.seconds(sample.megapixels, sample.steps)]
    if len(samples) >= 3 and 0 < len(kept) < len(samples):
        speed = _fit(kept, prior)
    return speed


def _fit(samples: list[Sample], prior: Speed) -> Speed:
    shapes = {(sample.megapixels, sample.steps) for sample in samples}
    if len(shapes) >= 4:
        rows = [(1.0, s.megapixels, s.steps, s.steps * s.megapixels) for s in samples]
        solved = _least_squares(rows, [s.seconds for s in samples])
        if solved is not None and (solved[2] or solved[3]):
            return Speed(*solved)
    if len(shapes) >= 2:
        # The prior's shape, each part scaled: a prior with no fixed part gets a constant one.
        head = prior.head if (prior.overhead or prior.overhead_per_mp) else (lambda megapixels: 1.0)
        rows = [(head(s.megapixels), prior.steps(s.megapixels, s.steps)) for s in samples]
        solved = _least_squares(rows, [s.seconds for s in samples])
        if solved is not None and solved[1] > 0:
            a, b = solved
            if prior.overhead or prior.overhead_per_mp:
                return Speed(a * prior.overhead, a * prior.overhead_per_mp, b * prior.step, b * prior.step_per_mp)
            return Speed(a, 0.0, b * prior.step, b * prior.step_per_mp)
    scale = median(s.seconds / max(prior.seconds(s.megapixels, s.steps), 1e-9) for s in samples)
    return Speed(*(scale * getattr(prior, term) for term in TERMS))


def _least_squares(rows: list[tuple[float, ...]], targets: list[float]) -> tuple[float, ...] | None:
    """Non-negative coefficients minimising the squared relative errors, or None.

    A term whose coefficient comes out negative is dropped and the rest fitted again
    (the few terms make that as good as a real non-negative solver here).
    """
    active = list(range(len(rows[0])))
    while active:
        # Each row divided by its target: every pass weighs by its relative error.
        weighted = [
            ([row[j] / target for j in active], 1.0) for row, target in zip(rows, targets, strict=True) if target > 0
        ]
        solution = _solve_normal(weighted, len(active))
        if solution is None:
            return None
        worst = min(range(len(active)), key=lambda k: solution[k])
        if solution[worst] >= 0:
            full = [0.0] * len(rows[0])
            for k, j in enumerate(active):
                full[j] = solution[k]
            return tuple(full)
        del active[worst]
    return None


def _solve_normal(rows: list[tuple[list[float], float]], size: int) -> list[float] | None:
    """Least squares by the normal equations (a few unknowns), None when they do not
    determine the answer."""
    a = [[0.0] * size for _ in range(size)]
    b = [0.0] * size
    for x, y in rows:
        for i in range(size):
            b[i] += x[i] * y
            for j in range(size):
                a[i][j] += x[i] * x[j]
    scale = max((abs(a[i][i]) for i in range(size)), default=0.0)
    if scale == 0:
        return None
    # Gaussian elimination with partial pivoting.
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-10 * scale:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        b[col], b[pivot] = b[pivot], b[col]
        for r in range(col + 1, size):
            factor = a[r][col] / a[col][col]
            if factor:
                for c in range(col, size):
                    a[r][c] -= factor * a[col][c]
                b[r] -= factor * b[col]
    solution = [0.0] * size
    for r in range(size - 1, -1, -1):
        solution[r] = (b[r] - sum(a[r][c] * solution[c] for c in range(r + 1, size))) / a[r][r]
    return solution


def fit_tail(samples: Iterable[Sample]) -> Speed:
    """What a pass's images take to store once the device is done with them (PNG encoding
    and the job's completion), as `overhead + overhead_per_mp * P`, from the passes
    whose `busy` is known; nothing when none is."""
    tails = [
        Sample(s.megapixels, 0, s.seconds - s.busy, None) for s in samples if s.busy is not None and s.seconds > s.busy
    ]
    if not tails:
        return Speed()
    if len({t.megapixels for t in tails}) >= 2:
        solved = _least_squares([(1.0, t.megapixels) for t in tails], [t.seconds for t in tails])
        if solved is not None:
            return Speed(overhead=solved[0], overhead_per_mp=solved[1])
    return Speed(overhead=median(t.seconds for t in tails))


@dataclass
class Estimator:
    """Durations of passes (see the module): `seconds` (until its images are stored) and
    `busy` (how long it holds the device).

    `samples` are keyed by model, kind, width, height, images and steps; `priors` are
    the models' measured defaults; `default` is the last resort for a model with
    neither history nor a measured default. An edit with no history of its kind is
    timed as the model's new images are.
    """

    samples: dict[tuple[str, str, int, int, int, int], list[Sample]]
    priors: dict[str, Speed]
    default: Speed
    start_latency: float = 0.0  # seconds an idle worker takes to start a job sent to it
    new_images: str = "txt2img"
    _fits: dict[tuple[str, str], Speed] = field(default_factory=dict)
    _tail: Speed | None = None
    _by_kind: dict[tuple[str, str], list[Sample]] | None = None
    # A queue repeats a few shapes many times: each is worked out once.
    _seconds: dict[tuple, float] = field(default_factory=dict)
    _busy: dict[tuple, float] = field(default_factory=dict)

    def __call__(self, model: str, width: int, height: int, steps: int, batch: int = 1, kind: str = "txt2img") -> float:
        """Seconds from a pass's start until its images are stored."""
        key = (model, kind, width, height, batch, steps)
        if key not in self._seconds:
            measured = self.samples.get(key)
            if measured and len(measured) >= 3:
                seconds = median(sample.seconds for sample in measured)
            else:
                seconds = self.speed(model, kind).seconds(width * height * batch / 1e6, steps)
                if measured:
                    # A shape measured once or twice: its own times, and the fit as one more.
                    seconds = (sum(sample.seconds for sample in measured) + seconds) / (len(measured) + 1)
            self._seconds[key] = seconds
        return self._seconds[key]

    def busy(self, model: str, width: int, height: int, steps: int, batch: int = 1, kind: str = "txt2img") -> float:
        """Seconds a pass holds the device: what a job waiting behind it waits for it."""
        key = (model, kind, width, height, batch, steps)
        if key not in self._busy:
            measured = [sample.busy for sample in self.samples.get(key, ()) if sample.busy is not None]
            if len(measured) >= 3:
                self._busy[key] = median(measured)
            else:
                seconds = self(model, width, height, steps, batch, kind)
                stored = self.tail().seconds(width * height * batch / 1e6, 0)
                self._busy[key] = max(seconds - stored, seconds / 2)
        return self._busy[key]

    def tail(self) -> Speed:
        if self._tail is None:
            self._tail = fit_tail(sample for samples in self.samples.values() for sample in samples)
        return self._tail

    def speed(self, model: str, kind: str) -> Speed:
        """The fitted speed of `model` for jobs of `kind`."""
        key = (model, kind)
        if key not in self._fits:
            prior = self.priors.get(model) or self._pooled()
            if kind != self.new_images:
                prior = self.speed(model, self.new_images)
            self._fits[key] = fit(self._kind_samples().get(key, []), prior)
        return self._fits[key]

    def _pooled(self) -> Speed:
        """A model with no history and no measured default: every model's new images
        fitted together, else the configured default."""
        key = ("", self.new_images)
        if key not in self._fits:
            pooled = [
                s for (_, kind), samples in self._kind_samples().items() if kind == self.new_images for s in samples
            ]
            self._fits[key] = fit(pooled, self.default)
        return self._fits[key]

    def _kind_samples(self) -> dict[tuple[str, str], list[Sample]]:
        if self._by_kind is None:
            self._by_kind = {}
            for (model, kind, *_), samples in self.samples.items():
                self._by_kind.setdefault((model, kind), []).extend(samples)
        return self._by_kind


def time_left(total: float, *, elapsed: float | None, progress: int) -> float:
    """What is left of `total` seconds for a pass `elapsed` seconds in, at `progress` percent.

    Progress is written at every tenth of the steps, so the pass is somewhere between
    `progress` and ten points further: the clock says where, within that range (a pass
    slower than its estimate is held at the range's end, not counted down past it).
    Without a start time, progress alone.
    """
    most = total * (100 - progress) / 100
    if elapsed is None:
        return max(most, 0.0)
    least = total * (90 - progress) / 100
    return max(min(total - elapsed, most), least, 0.0)
