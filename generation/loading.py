"""Loading models: the registry of named models, their sources, and their pipelines.

Like `pipeline.py`, this module imports nothing from Django. `demo` is an
SD-1.5-shaped pipeline with small random weights (`demo_model.py`); real images need
a real model: a local diffusers folder, a single `.safetensors` file or a Hub id
(`sources.py`). What differs between families is data in `families.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from generation.demo_model import DEMO, demo_pipeline_path
from generation.families import SIZE_MAX, Family, ModelLimits, family_for_pipeline
from generation.sources import (
    DEMO_SOURCE,
    ModelSpec,
    ModelUnavailable,
    detect_family,
    holds_vae,
    hub_cached_file,
    parse_spec,
    safetensors_keys,
)

# torch and diffusers are imported where they are used, so the web process can read
# the registry without loading them.


@dataclass(frozen=True)
class ModelInfo:
    name: str
    spec: ModelSpec
    size_cap: int  # besides the family's own limit

    @property
    def source(self) -> str:
        return self.spec.source

    @property
    def is_demo(self) -> bool:
        return self.name == DEMO

    @property
    def offload(self) -> bool:
        return self.spec.offload

    @property
    def family(self) -> Family:
        return _family(self.spec)

    def speed(self, device: str) -> bool:
        """Whether the model runs in the speed mode on `device` (see `speed.py`)."""
        if self.spec.speed is not None:
            return self.spec.speed
        # `demo`'s tiny layers would wait longer for the compiler than they ever gain.
        return device.startswith("cuda") and self.family.speed_default and not self.offload and not self.is_demo

    @property
    def max_size(self) -> int:
        return min(self.family.max_size, self.size_cap)

    def limits(self) -> ModelLimits:
        family = self.family
        return ModelLimits(
            model=self.name,
            family=family,
            min_size=family.min_size,
            max_size=self.max_size,
            size_step=family.size_step,
            default_size=min(family.default_size, self.max_size),
        )


_families: dict[ModelSpec, Family] = {}


def _family(spec: ModelSpec) -> Family:
    # Read from the files once; a guess (a Hub model not pulled yet) is read again
    # next time, so the family is right as soon as the files are here.
    if spec in _families:
        return _families[spec]
    family, certain = detect_family(spec)
    if certain:
        _families[spec] = family
    return family


class ModelRegistry:
    """Named models: `demo` plus local diffusers folders, `.safetensors` files and Hub ids.

    `extra` maps a name to an `IMAGEGEN_MODELS` source, with its options (see `sources.py`).
    """

    DEMO_MAX_SIZE = 1024
    MAX_SIZE = SIZE_MAX

    def __init__(self, extra: dict[str, str] | None = None):
        self._models = {DEMO: ModelInfo(DEMO, ModelSpec(DEMO_SOURCE), self.DEMO_MAX_SIZE)}
        for name, text in (extra or {}).items():
            self._models[name] = ModelInfo(name, parse_spec(str(text)), self.MAX_SIZE)

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> ModelInfo:
        try:
            return self._models[name]
        except KeyError:
            raise KeyError(f"Unknown model {name!r}; known: {', '.join(self._models)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def limits(self, name: str) -> ModelLimits:
        """The family and the limits of model `name` (KeyError when unknown)."""
        return self.get(name).limits()


def resolve_device(preference: str = "auto") -> str:
    if preference != "auto":
        return preference
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(info: ModelInfo, *, cache_dir: Path, device: str, on_download: Callable[[], None] | None = None):
    """Load a model's pipeline onto `device`, in its family's dtype on CUDA.

    A Hub model missing from the cache is downloaded first when the machine is online
    (`on_download` is called before that starts); everything else is read offline.
    """
    family = info.family
    dtype = family.torch_dtype(device)
    kind = info.spec.kind
    if kind == "demo":
        pipe = _from_folder(demo_pipeline_path(cache_dir), family, dtype)
    elif kind == "hub":
        pipe = _from_folder(hub_snapshot(info, on_download=on_download), family, dtype)
    elif kind == "file":
        pipe = _from_single_file(info, family, dtype)
    else:
        source = Path(info.source).expanduser()
        if not (source / "model_index.json").is_file():
            raise ModelUnavailable(
                f"Model {info.name!r}: {source} is not a diffusers folder (no model_index.json); "
                "fix its path in IMAGEGEN_MODELS."
            )
        pipe = _from_folder(source, family, dtype)
    return place_pipeline(pipe, device=device, offload=info.offload)


def place_pipeline(pipe, *, device: str, offload: bool):
    """Move the pipeline to `device`; in the memory mode only the running part is there.

    The memory mode keeps each model (text encoders, UNet or transformer, VAE) in the
    host's memory and moves it to the GPU while it runs (diffusers' model CPU offload),
    and decodes the image in tiles, so an SDXL or Flux model fits a smaller GPU at
    some cost in speed.
    """
    if offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    if offload and getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _from_folder(folder: Path, family: Family, dtype, **components):
    from diffusers import AutoPipelineForText2Image

    index = json.loads((Path(folder) / "model_index.json").read_text())
    # The folder's own pipeline class decides its family's arguments: the registry's
    # may be a guess made before the files were here.
    family = family_for_pipeline(index.get("_class_name", "")) or family
    return AutoPipelineForText2Image.from_pretrained(
        str(folder), dtype=dtype, local_files_only=True, **family.load_kwargs, **components
    )


def _from_single_file(info: ModelInfo, family: Family, dtype):
    import diffusers

    path = Path(info.source).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"Model {info.name!r}: {path} does not exist; fix its path in IMAGEGEN_MODELS.")
    if transformer_only(info):
        # The other parts (text encoders, VAE) come from the family's repository.
        base = single_file_config(info)
        transformer = getattr(diffusers, family.transformer).from_single_file(
            str(path), config=str(base), subfolder="transformer", dtype=dtype, local_files_only=True
        )
        return _from_folder(base, family, dtype, transformer=transformer)
    config = single_file_config(info)
    pipeline_class = getattr(diffusers, family.pipelines[0])
    return pipeline_class.from_single_file(
        str(path), config=str(config), dtype=dtype, local_files_only=True, **family.load_kwargs
    )


def transformer_only(info: ModelInfo) -> bool:
    """Whether a single-file model holds its family's transformer alone (as Flux.1's files do)."""
    path = Path(info.source).expanduser()
    if not info.family.transformer or path.suffix != ".safetensors" or not path.is_file():
        return False
    return not holds_vae(safetensors_keys(path))


def single_file_config(info: ModelInfo, *, download: bool = False) -> Path:
    """The local folder a single-file checkpoint is read with.

    A local folder (`config=`), or a Hub repository from the Hub cache: its `config=`,
    else its family's reference repository. For a checkpoint with all its parts only
    the configs are needed; for a transformer alone, the other parts' weights too.
    Loading never downloads them (`manage.py model_pull NAME` does, with `download`).
    """
    wanted = info.spec.config or info.family.single_file_config
    if Path(wanted).expanduser().is_dir():
        return Path(wanted).expanduser()
    repo_id, _, revision = wanted.partition("@")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "tokenizer*/*", "*/spiece.model"]
    needs = "configs"
    if transformer_only(info):
        patterns += ["text_encoder*/*", "vae/*"]
        needs = "text encoders, VAE and configs"
    try:
        folder = snapshot_download(
            repo_id, revision=revision or None, allow_patterns=patterns, local_files_only=not download
        )
    except Exception as exc:
        raise ModelUnavailable(
            f"Model {info.name!r}: the single-file checkpoint needs the {needs} of {repo_id}, which are not in "
            f"the Hub cache. Run `manage.py model_pull {info.name}` where the machine is online, or name a local "
            f"diffusers folder of the same architecture with ';config=/path' in IMAGEGEN_MODELS."
        ) from exc
    return Path(folder)


def hub_snapshot(info: ModelInfo, *, on_download: Callable[[], None] | None = None, progress: bool = False) -> Path:
    """The local folder of a Hub model, downloading it into the Hub cache if it is not there.

    Offline (HF_HUB_OFFLINE=1), or when the download fails, a ModelUnavailable names
    the model and says how to fix it.
    """
    from huggingface_hub import constants, snapshot_download

    repo_id, revision = info.spec.repo_id, info.spec.revision
    if hub_cached_file(repo_id, "model_index.json", revision) is not None:
        try:
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        except Exception:
            pass  # a partial cache: download what is missing, below
    where = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(
            f"Model {info.name!r} ({where}) is not in the Hub cache ({constants.HF_HUB_CACHE}) and this machine "
            f"is offline (HF_HUB_OFFLINE). Run `manage.py model_pull {info.name}` on a machine that is online with "
            "the same cache, or copy the model's folder there and register the folder instead."
        )
    if on_download is not None:
        on_download()
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    if not progress:
        diffusers_logging.disable_progress_bar()
    try:
        # diffusers picks the files a pipeline needs (safetensors, no duplicate formats).
        return Path(DiffusionPipeline.download(repo_id, revision=revision))
    except Exception as exc:
        raise ModelUnavailable(
            f"Model {info.name!r} ({where}) could not be downloaded: {type(exc).__name__}: {exc}. Check the id and "
            "the network; for a gated model accept its licence on the Hub and set HF_TOKEN, then run "
            f"`manage.py model_pull {info.name}`."
        ) from exc
    finally:
        if not progress:
            diffusers_logging.enable_progress_bar()
