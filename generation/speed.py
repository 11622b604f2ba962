"""The speed mode: a loaded pipeline made faster once, while its model loads.

What it does to a pipeline (`make_fast`):

- the denoiser (UNet or transformer) and the VAE get fused QKV projections, and keep
  PyTorch's scaled-dot-product attention (diffusers' fused SDPA processors);
- a UNet and the VAE use the channels-last memory format, which the GPU's convolution
  kernels prefer;
- a VAE that the family's pipeline would otherwise convert to float32 for every decode
  (SDXL's, which overflows in float16) runs in bfloat16, which has float32's range;
- the denoiser is compiled with `torch.compile` for fixed shapes (on CUDA with CUDA
  graphs, which take the kernel launches off the CPU), then warmed up (`warm_up`) for
  a bounded set of pass sizes at the family's default size, so the compiling happens
  while the model loads and never in a user's job.

A pass of another shape runs the same modules eagerly (`fast_pass`): nothing is
compiled after the model has loaded. `compiled_graphs()` counts what has been
compiled in this process, so tests and the worker can tell.

Like `pipeline.py`, nothing here imports Django.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Steps of each warm-up pass: the denoiser's shapes do not depend on the step count;
# with CUDA graphs the first call runs plainly, the second records and the third replays.
WARM_UP_STEPS = 3


@dataclass
class SpeedReport:
    """What the speed mode did to a loaded model, for the worker's log and its row."""

    compile_seconds: float = 0.0
    graphs: int = 0  # graphs compiled while warming up
    shapes: set[tuple[int, int, int]] = field(default_factory=set)  # (pass size, width, height) warmed
    steps: list[str] = field(default_factory=list)  # what was done, in words


def compiled_graphs() -> int:
    """How many graphs `torch.compile` has compiled in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def denoiser_name(pipe) -> str:
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def make_fast(pipe, *, device: str, vae_upcasts: bool) -> list[str]:
    """Fuse, lay out and compile `pipe`'s parts in place; what was done, in words."""
    import torch

    done: list[str] = []
    name = denoiser_name(pipe)
    denoiser = getattr(pipe, name)
    vae = getattr(pipe, "vae", None)
    for part in (denoiser, vae):
        if part is not None and hasattr(part, "fuse_qkv_projections"):
            try:
                part.fuse_qkv_projections()
            except ValueError:  # a model with added KV projections keeps its own
                continue
            done.append(f"fused QKV ({type(part).__name__})")
    if name == "unet":
        denoiser.to(memory_format=torch.channels_last)
        done.append("channels-last UNet")
    if vae is not None:
        vae.to(memory_format=torch.channels_last)
        if vae_upcasts and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            vae_in_bfloat16(vae)
            done.append("bfloat16 VAE")
    cuda = device.startswith("cuda")
    compiled = torch.compile(denoiser, fullgraph=True, dynamic=False, mode="reduce-overhead" if cuda else None)
    setattr(pipe, name, compiled)
    done.append(f"compiled {type(denoiser).__name__}" + (" with CUDA graphs" if cuda else ""))
    return done


def vae_in_bfloat16(vae) -> None:
    """Run `vae` in bfloat16 (float32's range, half its memory traffic) on any input.

    The pipeline hands it float16 latents or images; each part casts what it is given.
    `force_upcast` is turned off, so the pipeline no longer converts the VAE to float32
    and back around every decode.
    """
    import torch

    vae.to(dtype=torch.bfloat16)
    vae.register_to_config(force_upcast=False)

    def cast(module, args, kwargs):
        args = tuple(_bf16(value) for value in args)
        return args, {key: _bf16(value) for key, value in kwargs.items()}

    def _bf16(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(torch.bfloat16)
        return value

    for part in ("encoder", "decoder", "quant_conv", "post_quant_conv"):
        module = getattr(vae, part, None)
        if module is not None:
            module.register_forward_pre_hook(cast, with_kwargs=True)


def warm_up(
    run_pass: Callable[[int, int, int], Any], *, shapes: Iterable[tuple[int, int, int]], report: SpeedReport
) -> None:
    """Compile for each (pass size, width, height) by running a short pass of it."""
    started = time.perf_counter()
    before = compiled_graphs()
    for shape in shapes:
        run_pass(*shape)
        report.shapes.add(shape)
    report.graphs = compiled_graphs() - before
    report.compile_seconds = time.perf_counter() - started


@contextlib.contextmanager
def fast_pass(warmed: bool) -> Iterator[None]:
    """Run a pass with what was compiled at load time: compiled code where it fits the
    pass's shapes, eager code where it does not, and never a new compile."""
    import torch

    with torch.compiler.set_stance("eager_on_recompile" if warmed else "force_eager"):
        yield
