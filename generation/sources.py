"""Where a model comes from: a local diffusers folder, a single `.safetensors` file or a
Hub id, and which family it is, read from its files without loading torch.

An `IMAGEGEN_MODELS` entry is `name=source`, optionally followed by `;option`s:

- `offload`: the memory mode for big models on smaller GPUs (model CPU offload and
  VAE tiling);
- `family=sdxl`: the family, where it cannot be read from the files (a Hub id not yet
  pulled, an unusual checkpoint);
- `config=<folder or Hub id>`: the diffusers configs a single-file checkpoint is read
  with (default: its family's reference repository, from the Hub cache);
- `speed` or `eager`: the speed mode on or off (`speed.py`: compiled denoiser, fused
  attention projections, channels-last); by default it is on where it was measured
  faster with the same images (the family's `speed_default`, on CUDA). It compiles for
  the family's default size; `speed=1024,832x1216` names the sizes (WIDTH or
  WIDTHxHEIGHT, at most 4) instead. Other sizes run eagerly.

Nothing here imports Django or torch: the settings validate entries with it, the web
process reads families with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from generation.families import (
    DEFAULT_FAMILY,
    FAMILIES,
    Family,
    family_for_checkpoint_keys,
    family_for_name,
    family_for_pipeline,
)

DEMO_SOURCE = "demo"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


class ModelUnavailable(Exception):
    """A model's files are not here and cannot be fetched now; the message says how to fix it."""


@dataclass(frozen=True)
class ModelSpec:
    source: str
    offload: bool = False
    family: str | None = None
    config: str | None = None
    speed: bool | None = None  # None: the family's default on this device
    speed_sizes: tuple[tuple[int, int], ...] = ()  # (width, height) compiled for; () the default size

    @property
    def kind(self) -> str:
        """ "demo", "file", "folder" or "hub"."""
        if self.source == DEMO_SOURCE:
            return "demo"
        path = Path(self.source).expanduser()
        if path.exists():
            return "file" if path.is_file() else "folder"
        if _HUB_ID.match(self.source) and not self.source.startswith((".", "/", "~")):
            return "hub"
        return "file" if self.source.endswith((".safetensors", ".ckpt")) else "folder"

    @property
    def repo_id(self) -> str:
        return self.source.partition("@")[0]

    @property
    def revision(self) -> str | None:
        return self.source.partition("@")[2] or None


def parse_spec(text: str) -> ModelSpec:
    """`source[;offload][;family=NAME][;config=FOLDER_OR_HUB_ID][;speed|;eager]`; ValueError when malformed."""
    source, *options = [part.strip() for part in text.split(";")]
    if not source:
        raise ValueError(f"no model source in {text!r}")
    values: dict[str, object] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if key == "offload" and not sep:
            values["offload"] = True
        elif key == "family" and value in FAMILIES:
            values["family"] = value
        elif key == "config" and value:
            values["config"] = value
        elif key == "speed" and sep:
            values["speed"] = True
            values["speed_sizes"] = _speed_sizes(value, text)
        elif key in ("speed", "eager") and not sep:
            values["speed"] = key == "speed"
        else:
            known = f"offload, family=({'|'.join(FAMILIES)}), config=FOLDER_OR_HUB_ID, speed, eager"
            raise ValueError(f"unknown option {option!r} in {text!r} (known: {known})")
    named = [option.partition("=")[0] for option in options]
    if "speed" in named and "eager" in named:
        raise ValueError(f"{text!r} asks for both speed and eager: choose one")
    if values.get("offload") and values.get("speed"):
        raise ValueError(
            f"{text!r} asks for both offload and speed: the memory mode moves each part to the GPU only while it "
            "runs, which compiled parts cannot follow; choose one"
        )
    return ModelSpec(source=source, **values)


MAX_SPEED_SIZES = 4


def _speed_sizes(value: str, text: str) -> tuple[tuple[int, int], ...]:
    sizes = []
    for item in value.split(","):
        width, _, height = item.strip().lower().partition("x")
        try:
            size = (int(width), int(height or width))
        except ValueError:
            size = (0, 0)
        if min(size) < 64 or max(size) > 4096 or size[0] % 8 or size[1] % 8:
            raise ValueError(
                f"speed size {item.strip()!r} in {text!r} is not WIDTH or WIDTHxHEIGHT in pixels "
                "(multiples of 8, 64 to 4096)"
            )
        sizes.append(size)
    if len(sizes) > MAX_SPEED_SIZES:
        raise ValueError(f"{text!r} names {len(sizes)} speed sizes; at most {MAX_SPEED_SIZES} are compiled")
    return tuple(dict.fromkeys(sizes))


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names of a `.safetensors` file, read from its header (no tensor is loaded, no torch)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as checkpoint:
        return list(checkpoint.keys())


def holds_vae(keys) -> bool:
    """Whether a single-file checkpoint carries a VAE (else it is a denoiser alone)."""
    return any(key.startswith(("vae.", "first_stage_model.")) for key in keys)


def hub_cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """A file of a Hub repository from the local Hub cache (HF_HUB_CACHE), or None; never online."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return Path(found) if isinstance(found, str) else None


def _family_from_index(path: Path | None) -> Family | None:
    if path is None or not path.is_file():
        return None
    try:
        class_name = json.loads(path.read_text()).get("_class_name", "")
    except (OSError, ValueError):
        return None
    return family_for_pipeline(class_name)


def detect_family(spec: ModelSpec) -> tuple[Family, bool]:
    """The model's family, and whether it was read from its files (else it is a guess)."""
    kind = spec.kind
    found: Family | None = None
    if kind == "demo":
        return DEFAULT_FAMILY, True
    if kind == "folder":
        found = _family_from_index(Path(spec.source).expanduser() / "model_index.json")
    elif kind == "file":
        path = Path(spec.source).expanduser()
        if path.suffix == ".safetensors" and path.is_file():
            try:
                found = family_for_checkpoint_keys(safetensors_keys(path))
            except Exception:  # not a readable checkpoint: the loader will say so
                found = None
    elif kind == "hub":
        found = _family_from_index(hub_cached_file(spec.repo_id, "model_index.json", spec.revision))
    if spec.family:
        # The operator's word wins: a merged or unusual model may read as another family.
        return FAMILIES[spec.family], True
    if found is not None:
        return found, True
    return family_for_name(spec.source) or DEFAULT_FAMILY, False
