"""LoRAs: what switching the set of LoRAs between passes costs, against passes with none,
in one run, through the worker's generator (`DiffusersGenerator`, its adapter cache).

Passes, each timed alone (the same prompt, size and steps):

1. none: no LoRA (the baseline);
2. same set: one LoRA, the same every pass (what an active adapter adds to a step);
3. switching: two sets, loaded once, alternated every pass (what a pass pays when the
   queue mixes LoRA sets: `set_adapters`, no model reload);
4. cold: a LoRA file loaded for the first time (`load_lora_weights`), once per file.

The switch itself (the adapter call before a pass) is timed apart too. On a CPU it runs
the `demo` model with random LoRAs built offline; `--sd15-shaped` runs Stable Diffusion
1.5's layer sizes with rank-16 LoRAs on its attention layers, for a GPU.

    .venv/bin/python bench/lora_switch.py [--passes 8] [--size 256] [--steps 10]
    .venv/bin/python bench/lora_switch.py --sd15-shaped --size 512 --steps 25
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import summary_ms, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rank", type=int, help="the LoRAs' rank (default 8; 16 with --sd15-shaped)")
    parser.add_argument("--sd15-shaped", action="store_true", help="an SD-1.5-shaped model instead of demo")
    parser.add_argument("--cache", default=str(ROOT / "var" / "models"))
    args = parser.parse_args()
    args.rank = args.rank or (16 if args.sd15_shaped else 8)

    from generation.demo_model import build_random_lora, demo_pipeline_path, random_pipeline_path
    from generation.loading import ModelRegistry
    from generation.loras import LoraRegistry
    from generation.pipeline import DiffusersGenerator
    from generation.request import GenerationRequest

    cache = Path(args.cache)
    if args.sd15_shaped:
        folder, model = random_pipeline_path(cache, "sd15"), "sd15"
        registry = ModelRegistry({"sd15": str(folder)})
    else:
        folder, model = demo_pipeline_path(cache), "demo"
        registry = ModelRegistry()
    loras_dir = Path(tempfile.mkdtemp(prefix="bench-loras-"))
    names = ["a", "b", "c", "cold1", "cold2", "cold3"]
    for seed, name in enumerate(names):
        build_random_lora(loras_dir / f"{name}.safetensors", folder, seed=seed, rank=args.rank)
    generator = DiffusersGenerator(registry, cache_dir=cache, loras=LoraRegistry(loras_dir), lora_cache=8)

    def request(loras):
        return GenerationRequest(
            model=model, prompt="a castle on a hill", negative_prompt="", width=args.size, height=args.size,
            steps=args.steps, guidance=7, seed=1, loras=loras,
        )  # fmt: skip

    switch_seconds: list[float] = []
    original = generator._use_loras

    def timed_use(loras):
        started = time.perf_counter()
        original(loras)
        switch_seconds.append(time.perf_counter() - started)

    generator._use_loras = timed_use

    def one_pass(loras) -> float:
        started = time.perf_counter()
        generator.generate(request(loras))
        if generator.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        return time.perf_counter() - started

    one_pass(())  # load the model, warm up
    loads = generator.loads
    set_a, set_b = (("a", 1.0),), (("b", 0.7), ("c", 0.5))
    one_pass(set_a), one_pass(set_b)  # load the switching sets' files once

    runs: dict[str, list[float]] = {"none": [], "same_set": [], "switching": []}
    switches: dict[str, list[float]] = {"none": [], "same_set": [], "switching": []}
    # Interleaved rounds, so the machine's noise falls on every kind alike.
    for index in range(args.passes):
        for kind, loras in (("none", ()), ("same_set", set_a), ("switching", set_b if index % 2 else set_a)):
            if kind == "same_set":
                one_pass(set_a)  # the set is already active when its timed pass starts
            if kind == "switching":
                one_pass(set_a if index % 2 else set_b)  # the pass before had the other set
            switch_seconds.clear()
            runs[kind].append(one_pass(loras))
            switches[kind].append(sum(switch_seconds))
    cold = []
    for name in ("cold1", "cold2", "cold3"):
        switch_seconds.clear()
        total = one_pass(((name, 1.0),))
        cold.append({"pass_s": total, "load_and_switch_s": sum(switch_seconds)})

    baseline = statistics.median(runs["none"])
    result = {
        "model": model,
        "device": generator.device,
        "size": args.size,
        "steps": args.steps,
        "rank": args.rank,
        "passes": {kind: summary_ms(seconds) for kind, seconds in runs.items()},
        "adapter_call": {kind: summary_ms(seconds) for kind, seconds in switches.items()},
        "ratio_to_none_p50": {kind: round(statistics.median(seconds) / baseline, 3) for kind, seconds in runs.items()},
        "cold_load": {
            "pass": summary_ms([row["pass_s"] for row in cold]),
            "load_and_switch": summary_ms([row["load_and_switch_s"] for row in cold]),
            "ratio_to_none_p50": round(statistics.median(row["pass_s"] for row in cold) / baseline, 3),
        },
        "model_loads_during_runs": generator.loads - loads,
        "lora_files_loaded": generator.lora_loads,
    }
    gpu = generator.device.startswith("cuda")
    name = "lora_switch" + ("_sd15" if args.sd15_shaped else "") + ("_gpu" if gpu else "")
    path = write_result(name, result)
    for kind in runs:
        print(
            f"{kind:10} pass p50 {result['passes'][kind]['p50_ms']:8.1f} ms"
            f"  (x{result['ratio_to_none_p50'][kind]:.3f} of none)"
            f"  adapter call p50 {result['adapter_call'][kind]['p50_ms']:6.2f} ms"
        )
    print(
        f"cold load  pass p50 {result['cold_load']['pass']['p50_ms']:8.1f} ms"
        f"  (x{result['cold_load']['ratio_to_none_p50']:.3f})"
        f"  load+switch p50 {result['cold_load']['load_and_switch']['p50_ms']:.1f} ms"
    )
    print(f"model loads while switching: {result['model_loads_during_runs']}; results in {path}")


if __name__ == "__main__":
    main()
