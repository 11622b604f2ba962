"""Idle unload: the GPU memory a worker holds with its model loaded, after the beat's
thread has unloaded it, and once the next job has loaded it again.

As in a worker, passes run on one thread (the device thread) and the unload comes
from another (the beat's). The model is a random-weight pipeline with Stable
Diffusion 1.5's layer sizes (`sd15`) in eager mode and in the speed mode, where the
compiled code and its CUDA graphs hold memory of their own. On a CPU it runs the
`demo` model and reports the process's resident memory instead.

    .venv/bin/python bench/idle_unload.py [--shape sd15] [--size 512]
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default=None, help="sd15 on a GPU, demo on a CPU")
    parser.add_argument("--size", type=int, default=None)
    args = parser.parse_args()
    import torch

    from generation.demo_model import random_pipeline_path
    from generation.loading import ModelRegistry
    from generation.pipeline import DiffusersGenerator
    from generation.request import GenerationRequest

    cuda = torch.cuda.is_available()
    shape = args.shape or ("sd15" if cuda else "demo")
    size = args.size or (512 if cuda else 256)
    cache = Path(os.environ.get("IMAGEGEN_MODEL_CACHE", ROOT / "var" / "models"))
    if cuda:
        with torch.device("cuda"):
            path = random_pipeline_path(cache, shape)
    else:
        path = random_pipeline_path(cache, shape)
    registry = ModelRegistry({"eager": f"{path};eager", "fast": f"{path};speed={size}"})
    generator = DiffusersGenerator(registry, cache_dir=cache, device="cuda" if cuda else "cpu", max_batch=1)

    def memory() -> dict:
        if cuda:
            torch.cuda.synchronize()
            return {
                "allocated_mib": round(torch.cuda.memory_allocated() / 2**20),
                "reserved_mib": round(torch.cuda.memory_reserved() / 2**20),
            }
        import gc

        gc.collect()
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return {"rss_mib": round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20)}

    import queue

    asks: queue.Queue = queue.Queue()
    answers: queue.Queue = queue.Queue()

    def device_thread():
        while (model := asks.get()) is not None:
            request = GenerationRequest(
                model=model,
                prompt="a lighthouse",
                negative_prompt="",
                width=size,
                height=size,
                steps=10,
                guidance=7.0,
                seed=1,
            )
            started = time.perf_counter()
            generator.generate(request)
            answers.put(round(time.perf_counter() - started, 2))

    threading.Thread(target=device_thread, name="device", daemon=True).start()

    def on_device_thread(model: str) -> float:
        """A pass on the device thread, which runs every pass as in a worker; its seconds."""
        asks.put(model)
        return answers.get(timeout=900)

    result = {"command": "bench/idle_unload.py " + " ".join(sys.argv[1:]), "shape": shape, "size": size}
    result["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    result["empty"] = memory()
    for model in ("eager", "fast"):
        first = on_device_thread(model)
        loaded = memory()
        generator.unload()  # from this thread: the beat's, in a worker
        unloaded = memory()
        again = on_device_thread(model)
        result[model] = {
            "first_job_seconds": first,
            "loaded": loaded,
            "after_unload": unloaded,
            "job_after_reload_seconds": again,
            "reloaded": memory(),
            "load_seconds": round(generator.load_seconds[model], 2),
        }
        generator.unload()
    for key, value in result.items():
        print(f"{key:10} {value}")
    name = "idle_unload" + ("" if cuda else "_cpu")
    print(f"written to {write_result(name, result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
