"""Each model family's tiny pipeline on this machine's device, in its family's dtype, with
and without the memory mode (model CPU offload and VAE tiling): seconds per image, the
device's peak memory, and whether both modes make the same image.

No Django, no database: the pipeline layer alone (generation/pipeline.py), so it runs
wherever torch and diffusers do. On a CPU the memory mode only tiles the VAE (offload
needs a GPU); on CUDA the bf16 families run in bf16 and SD 1.x and SDXL in fp16.

    .venv/bin/python bench/model_families.py [--size 256] [--steps 8]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_result  # noqa: E402
from generation.demo_model import TINY_FAMILIES, demo_pipeline_path, random_pipeline_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cache", default=str(ROOT / "var" / "models"), help="where the tiny models are built")
    args = parser.parse_args()

    import numpy as np
    import torch

    from generation.loading import ModelRegistry
    from generation.pipeline import DiffusersGenerator
    from generation.request import GenerationRequest

    cache = Path(args.cache)
    folders = {"sd15": demo_pipeline_path(cache)} | {
        family: random_pipeline_path(cache, shape) for shape, family in TINY_FAMILIES.items()
    }
    extra = {name: str(path) for name, path in folders.items()}
    extra |= {f"{name}-offload": f"{path};offload" for name, path in folders.items()}
    registry = ModelRegistry(extra)
    generator = DiffusersGenerator(registry, cache_dir=cache)
    cuda = generator.device.startswith("cuda")
    runs = {}
    for name in folders:
        images = {}
        for variant in (name, f"{name}-offload"):
            family = registry.get(variant).family
            request = GenerationRequest(
                model=variant,
                prompt="a lighthouse at dusk",
                negative_prompt="",
                width=args.size,
                height=args.size,
                steps=args.steps,
                guidance=family.default_guidance,
                seed=5,
            )
            pipe = generator.load(variant)
            generator.generate(request)  # warm-up
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            image = generator.generate(request)
            if cuda:
                torch.cuda.synchronize()
            denoiser = getattr(pipe, "unet", None) or pipe.transformer
            images[variant] = np.asarray(image, dtype=int)
            runs[variant] = {
                "family": family.name,
                "dtype": str(next(denoiser.parameters()).dtype).removeprefix("torch."),
                "seconds": round(time.perf_counter() - started, 3),
                "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
                "vae_tiling": bool(getattr(pipe.vae, "use_tiling", False)),
            }
        runs[name]["max_pixel_difference_with_offload"] = int(np.abs(images[name] - images[f"{name}-offload"]).max())
    result = {
        "command": "bench/model_families.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "size": args.size,
        "steps": args.steps,
        "runs": runs,
    }
    for variant, run in runs.items():
        print(f"{variant:16} {run}")
    print(f"written to {write_result('model_families', result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
