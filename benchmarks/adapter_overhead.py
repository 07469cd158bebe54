"""Training-step cost of MuScleLoRA vs LoRA on SmolLM2-135M (fp32 and 4-bit nf4), side by side.

Both adapters use the same attention targets (q_proj, v_proj) and rank (r=2, alpha=8, the paper's LLM
setting); MuScleLoRA additionally carries its multi-scale part (scales [1,2,3,4], rank 1 per scale)
on the last block's mlp.down_proj, i.e. exactly what a user gets from ``MuScleLoRAConfig()``.

Measured per variant, in one process, on one shared base model (the adapter is unloaded between
variants; variants alternate over rounds to even out machine noise):
  * step time: median wall time of forward + backward + AdamW step, after warm-up steps;
  * peak memory: peak resident set size (RSS, sampled every 2 ms by a thread via psutil or
    /proc/self/statm) during the timed steps, minus the RSS right before them (after gc and glibc
    malloc_trim, with a fixed mmap threshold so RSS follows live memory). This is the training
    working set (activations, gradients, optimizer state), not the model weights.

Usage:
    python benchmarks/adapter_overhead.py --quick    # ~1-3 min per precision: batch 1, length 32, 2 timed steps, 2 rounds
    python benchmarks/adapter_overhead.py            # full: batch 4, length 128, 10 timed steps, 3 rounds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import hardware_info, write_json  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

import hf_backdoor_defense  # noqa: E402,F401
from hf_backdoor_defense.assets import smollm2_path  # noqa: E402
from hf_backdoor_defense.tuners.musclelora import MuScleLoRAConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "adapter_overhead.json"


def _release_freed_memory_to_os() -> None:
    """Make RSS track live memory: fixed mmap threshold (glibc) and a trim before each measurement.

    Without this, the first variant measured pays for growing the heap and later ones reuse it, so RSS
    deltas depend on the order. No-op where glibc is not available.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, so big tensors are mmapped and unmapped on free
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover
        pass


def _rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # pragma: no cover
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Context manager sampling RSS in a thread; ``.peak_delta`` is peak minus the starting RSS."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak_delta = 0

    def __enter__(self):
        gc.collect()
        _release_freed_memory_to_os()
        self.start = _rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.peak_delta = self.peak - self.start


def _configs(rank: int, alpha: float) -> dict:
    return {
        "lora": lambda: LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj"]),
        "musclelora": lambda: MuScleLoRAConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=alpha,
                                               target_modules=["q_proj", "v_proj"]),
    }


def _measure(base, make_config, batch, warmup: int, steps: int) -> dict:
    model = get_peft_model(base, make_config())
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step():
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    times = []
    with PeakRSS() as mem:
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    result = {
        "trainable_params": sum(p.numel() for p in params),
        "step_time_s": statistics.median(times),
        "step_times_s": times,
        "peak_rss_delta_mib": mem.peak_delta / 2**20,
    }
    optimizer.state.clear()
    model.unload()  # restores the base for the next variant
    gc.collect()
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few steps, small batch: proves the script works")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "4bit"], choices=["fp32", "4bit"])
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="JSON file; results of precisions not run this time are kept")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 avoids OpenMP spin contention on a shared CPU: ~10x faster here)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = (
        {"batch_size": 1, "seq_len": 32, "warmup": 1, "steps": 2, "rounds": 2}
        if args.quick
        else {"batch_size": 4, "seq_len": 128, "warmup": 2, "steps": 10, "rounds": 3}
    )
    torch.manual_seed(0)
    ids = torch.randint(10, 40000, (settings["batch_size"], settings["seq_len"]))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    report = {
        "model": "SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, hidden 576)",
        "adapters": {"lora": "q_proj,v_proj r=2 alpha=8",
                     "musclelora": "q_proj,v_proj r=2 alpha=8 + MSLR scales [1,2,3,4] on layers.29.mlp.down_proj"},
        "memory_metric": "peak RSS during timed steps minus RSS before them (psutil, 2 ms sampling)",
        "mode": "quick" if args.quick else "full",
        "settings": settings,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "hardware": hardware_info(),
        "results": {},
    }
    configs = _configs(rank=2, alpha=8)
    total = len(args.precisions) * settings["rounds"] * len(configs)
    with tqdm(total=total, desc="adapter overhead") as progress:
        for precision in args.precisions:
            kwargs = {"dtype": torch.float32}
            if precision == "4bit":
                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
                )
            base = AutoModelForCausalLM.from_pretrained(smollm2_path(), **kwargs)
            runs: dict[str, list[dict]] = {name: [] for name in configs}
            for round_index in range(settings["rounds"]):
                order = list(configs) if round_index % 2 == 0 else list(configs)[::-1]
                for name in order:
                    runs[name].append(_measure(base, configs[name], batch, settings["warmup"], settings["steps"]))
                    progress.update(1)
            summary = {}
            for name, measurements in runs.items():
                summary[name] = {
                    "trainable_params": measurements[0]["trainable_params"],
                    "step_time_s": statistics.median(m["step_time_s"] for m in measurements),
                    "peak_rss_delta_mib": statistics.median(m["peak_rss_delta_mib"] for m in measurements),
                    "rounds": measurements,
                }
            summary["settings"] = dict(settings)
            summary["step_time_ratio"] = summary["musclelora"]["step_time_s"] / summary["lora"]["step_time_s"]
            summary["memory_ratio"] = summary["musclelora"]["peak_rss_delta_mib"] / max(
                summary["lora"]["peak_rss_delta_mib"], 1e-9
            )
            report["results"][precision] = summary
            del base
            gc.collect()
    if args.output.exists():  # keep the other precisions' figures (e.g. fp32 and 4bit run separately)
        previous = json.loads(args.output.read_text())
        if previous.get("mode") == report["mode"]:
            report["results"] = {**previous.get("results", {}), **report["results"]}
    write_json(args.output, report)
    for precision in args.precisions:
        summary = report["results"][precision]
        print(
            f"{precision}: LoRA {summary['lora']['step_time_s']:.3f}s / {summary['lora']['peak_rss_delta_mib']:.0f} MiB, "
            f"MuScleLoRA {summary['musclelora']['step_time_s']:.3f}s / "
            f"{summary['musclelora']['peak_rss_delta_mib']:.0f} MiB -> time x{summary['step_time_ratio']:.3f}, "
            f"memory x{summary['memory_ratio']:.3f}"
        )
    return report


if __name__ == "__main__":
    main()
