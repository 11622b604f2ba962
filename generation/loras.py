"""LoRAs: small `.safetensors` files that shift a model's style, offered with the models
of their family.

Operators drop files in `IMAGEGEN_LORA_DIR` (each is named by its file name, without
`.safetensors`) or register them as `IMAGEGEN_LORAS=name=/path/file.safetensors`, the
syntax of `IMAGEGEN_MODELS`, with `;family=sdxl` where the file does not tell. Each
file's family is read from its header (its metadata, else its tensors' names and
shapes) without loading torch; a file whose family cannot be told is not offered.

A job names its LoRAs as "name:weight" pairs (`generation.request.format_loras`); the
worker loads each file once as a diffusers adapter and switches between sets with
`set_adapters` (`generation.pipeline.DiffusersGenerator`). Nothing here imports Django
or torch: the form, the APIs and the worker all read the same registry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from generation.families import FAMILIES
from generation.request import format_loras
from generation.sources import ModelUnavailable

logger = logging.getLogger(__name__)

LORAS_MAX = 4  # LoRAs one job may apply
WEIGHT_MIN, WEIGHT_MAX = -2.0, 2.0
NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,99}$")
SUFFIX = ".safetensors"
# A LoRA made for one family also fits these (Flux LoRAs apply to Flux Kontext's transformer).
ALSO_FITS = {"flux": ("flux_kontext",)}


class LoraError(ValueError):
    """A LoRA request that cannot be honoured; the message says why, for the user."""


class LoraUnavailable(ModelUnavailable):
    """A job's LoRA was removed, or does not fit its model: the operator's to fix, not a
    failing backend. The message is shown to the user."""


@dataclass(frozen=True)
class LoraInfo:
    name: str
    path: Path
    family: str  # a key of generation.families.FAMILIES

    @property
    def family_label(self) -> str:
        return FAMILIES[self.family].label

    def fits(self, family: str) -> bool:
        return family == self.family or family in ALSO_FITS.get(self.family, ())

    @property
    def short_hash(self) -> str:
        """A1111's "Lora hashes" value: the first 12 hex digits of the tensors' SHA-256."""
        stat = self.path.stat()
        return tensor_hash(str(self.path), stat.st_mtime_ns, stat.st_size)[:12]

    def as_dict(self) -> dict:
        fits = [self.family, *ALSO_FITS.get(self.family, ())]
        return {"name": self.name, "family": self.family, "family_label": self.family_label, "fits": fits}


# --- Reading a file's header --------------------------------------------------------


def read_header(path: Path) -> dict:
    """A `.safetensors` file's JSON header: tensor name -> {dtype, shape, data_offsets},
    plus `__metadata__`."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if not 2 <= length <= 100_000_000:
            raise ValueError("not a safetensors file")
        return json.loads(file.read(length))


@lru_cache(maxsize=256)
def tensor_hash(path: str, mtime_ns: int, size: int) -> str:
    """SHA-256 of the tensor bytes after the header, as A1111 hashes LoRAs (its "addnet"
    hash), so a LoRA's hash does not change when only its metadata does."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        file.seek(8 + length)
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def family_of(header: dict) -> str | None:
    """The family a LoRA was trained for, from its metadata or, failing that, its tensors."""
    metadata = header.get("__metadata__") or {}
    architecture = " ".join(
        str(metadata.get(key, "")) for key in ("modelspec.architecture", "ss_base_model_version")
    ).lower()
    if architecture.strip():
        if "flux" in architecture:
            return "flux"
        if "stable-diffusion-3" in architecture or "sd3" in architecture:
            return "sd3"
        if "xl" in architecture:
            return "sdxl"
        if re.search(r"stable-diffusion-v[12]|sd_v[12]|sd_1|sd_2|v1|v2", architecture):
            return "sd15"
    keys = [key for key in header if key != "__metadata__"]

    def has(*parts: str) -> bool:
        return any(part in key for key in keys for part in parts)

    if has("single_transformer_blocks", "single_blocks", "double_blocks"):
        return "flux"
    transformer = any(key.startswith(("transformer.", "lora_transformer_")) for key in keys)
    if transformer or has("joint_blocks", "context_embedder"):
        return "sd3"
    if has("text_encoder_2", "lora_te2_", "input_blocks", "add_embedding"):
        return "sdxl"
    if has("unet", "down_blocks", "up_blocks", "mid_block", "lora_te_", "text_encoder"):
        # SD 1.x/2.x and SDXL share a UNet layout in diffusers' names; SDXL's text is
        # 2048 wide where it meets the image (attn2's keys).
        for key in keys:
            if "attn2" in key and "to_k" in key and re.search(r"lora_A|lora\.down|lora_down", key):
                shape = header[key].get("shape") or []
                return "sdxl" if len(shape) == 2 and shape[1] == 2048 else "sd15"
        return "sd15"
    return None


# --- The registry ---------------------------------------------------------------------


def parse_source(spec: str) -> tuple[Path, str | None]:
    """`/path/file.safetensors[;family=sdxl]` -> (path, family or None)."""
    source, *options = (part.strip() for part in spec.split(";"))
    family = None
    for option in options:
        key, _, value = option.partition("=")
        if key != "family" or value not in FAMILIES:
            raise ValueError(f"unknown option {option!r} (only family=" + "|".join(FAMILIES) + ")")
        family = value
    path = Path(source).expanduser()
    if path.suffix != SUFFIX:
        raise ValueError(f"{source!r}: a LoRA is a {SUFFIX} file")
    return path, family


class LoraRegistry:
    """The LoRAs of `folder` and of the registered entries (name -> source), read again
    when the folder changes, so files dropped in while the service runs are offered."""

    def __init__(self, folder: Path | None = None, extra: dict[str, str] | None = None):
        self.folder = Path(folder) if folder else None
        self.extra = dict(extra or {})
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._loras: dict[str, LoraInfo] = {}

    def _folder_stamp(self) -> tuple:
        if self.folder is None or not self.folder.is_dir():
            return ()
        files = sorted(self.folder.glob(f"*{SUFFIX}"))
        return tuple((file.name, file.stat().st_mtime_ns) for file in files)

    def _scan(self) -> dict[str, LoraInfo]:
        found: dict[str, tuple[Path, str | None]] = {}
        for name, _ in self._folder_stamp():
            found[name[: -len(SUFFIX)]] = (self.folder / name, None)
        for name, spec in self.extra.items():
            found[name] = parse_source(spec)
        loras = {}
        for name, (path, family) in sorted(found.items()):
            if not NAME.match(name):
                logger.warning("LoRA %s skipped: a name is letters, digits, '.', '_' and '-'", name)
                continue
            try:
                family = family or family_of(read_header(path))
            except (OSError, ValueError) as exc:
                logger.warning("LoRA %s (%s) skipped: %s", name, path, exc)
                continue
            if family is None:
                logger.warning("LoRA %s skipped: its family cannot be told; register it with ;family=...", name)
                continue
            loras[name] = LoraInfo(name=name, path=path, family=family)
        return loras

    def refresh(self) -> None:
        with self._lock:
            self._stamp = self._folder_stamp()
            self._loras = self._scan()

    def _current(self) -> dict[str, LoraInfo]:
        stamp = self._folder_stamp()
        if stamp != self._stamp:
            self.refresh()
        return self._loras

    def all(self) -> list[LoraInfo]:
        return list(self._current().values())

    def names(self) -> list[str]:
        return list(self._current())

    def get(self, name: str) -> LoraInfo:
        return self._current()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._current()

    def for_family(self, family: str) -> list[LoraInfo]:
        return [lora for lora in self.all() if lora.fits(family)]


# --- Requests -----------------------------------------------------------------------


def split_request(value) -> list[tuple[str, float]]:
    """(name, weight) pairs from what a request sends: "name:weight" items separated by
    spaces or commas (weight 1 when left out), or a list of such strings or of
    {"name", "weight"} objects."""
    items = value if isinstance(value, list | tuple) else re.split(r"[\s,]+", str(value or "").strip())
    pairs = []
    for item in items:
        if item in ("", None):
            continue
        if isinstance(item, dict):
            if not set(item) <= {"name", "weight"}:
                raise LoraError("LoRAs: each is {name, weight}.")
            name, weight = item.get("name"), item.get("weight", 1)
        elif isinstance(item, str):
            name, _, weight = item.partition(":") if ":" in item else (item, "", 1)
        else:
            raise LoraError("LoRAs: each is a name with a weight, such as detail:0.8.")
        if not isinstance(name, str) or not name:
            raise LoraError("LoRAs: each needs a name.")
        if isinstance(weight, bool):
            raise LoraError(f"LoRA {name}: the weight is a number from {WEIGHT_MIN:g} to {WEIGHT_MAX:g}.")
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise LoraError(f"LoRA {name}: the weight is a number from {WEIGHT_MIN:g} to {WEIGHT_MAX:g}.") from None
        pairs.append((name, weight))
    return pairs


def clean_loras(value, *, family: str, model: str, registry: LoraRegistry) -> str:
    """A request's LoRAs checked for model `model` of `family`, as a job stores them.
    Raises LoraError with a message for the user."""
    pairs = split_request(value)
    installed = {lora.name: lora for lora in registry.all()}  # the folder read once for the whole check
    if len(pairs) > LORAS_MAX:
        raise LoraError(f"LoRAs: at most {LORAS_MAX} at once ({len(pairs)} were asked for).")
    seen = set()
    for name, weight in pairs:
        if name in seen:
            raise LoraError(f"LoRA {name} is listed twice.")
        seen.add(name)
        if name not in installed:
            offered = ", ".join(lora.name for lora in installed.values() if lora.fits(family)) or "none are installed"
            raise LoraError(f"LoRA {name!r} is not installed (for {model}: {offered}).")
        lora = installed[name]
        if not lora.fits(family):
            raise LoraError(
                f"LoRA {name} is made for {lora.family_label} models; {model} is a {FAMILIES[family].label} model."
            )
        if not WEIGHT_MIN <= weight <= WEIGHT_MAX or weight != weight:
            raise LoraError(f"LoRA {name}: the weight is a number from {WEIGHT_MIN:g} to {WEIGHT_MAX:g}.")
    return format_loras(pairs)


PROMPT_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.IGNORECASE)


def take_prompt_tags(prompt: str) -> tuple[str, list[tuple[str, str]]]:
    """A1111's `<lora:name:weight>` tags taken out of a prompt: (the prompt without them,
    [(name, weight text)]). A1111 clients write LoRAs this way; the model never sees
    the tags."""
    found = [(match.group(1).strip(), (match.group(2) or "1").strip()) for match in PROMPT_TAG.finditer(prompt)]
    text = PROMPT_TAG.sub("", prompt)
    text = re.sub(r"\s*,\s*(,\s*)+", ", ", text)  # "a, <lora:x:1>, b" leaves no empty item
    return re.sub(r"\s{2,}", " ", text).strip(" ,"), found


def prompt_tags(pairs) -> str:
    """A job's LoRAs as A1111 writes them in a prompt."""
    return " ".join(f"<lora:{name}:{weight:g}>" for name, weight in pairs)


def infotext_hashes(pairs, registry: LoraRegistry) -> str:
    """The value of A1111's "Lora hashes" field: "name: hash, name2: hash"."""
    items = []
    for name, _ in pairs:
        try:
            items.append(f"{name}: {registry.get(name).short_hash}")
        except (KeyError, OSError):
            continue  # removed since the job ran
    return ", ".join(items)
