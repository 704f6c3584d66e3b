"""What the training speed benchmark (benchmarks/train_speed.py) measures: its cases and suites.

A case names a model, a method and the workload (audio length, label tokens, timed steps after
untimed warm-up steps), and its settings in the engine's own names: ``training`` holds
``TrainingSettings`` fields (engine/training/settings.py; they are Seq2SeqTrainingArguments'
names too), ``method_settings`` the method's fields (peft's names for LoRA). Both start from
what the standard recipe uses (``TRAINING``, ``LORA``). The reference side reads the ones it has
(``REFERENCE_TRAINING``; r, lora_alpha, target_modules, lora_dropout); the engine side hands
all of them to the engine, checked as a run's settings are (``speed_engine.engine_settings``),
so a misspelt name fails, naming the case, before anything is measured.

No engine import here: the reference side (speed_reference.py) reads cases and never imports
the engine (an import contract in pyproject.toml keeps it so).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Training settings of every case unless it says otherwise (TrainingSettings names): the
# reference recipe's (Seq2SeqTrainer with a linear schedule from the first step, no weight
# decay, clipping at 1.0), and every layer checkpointed on both sides, as the reference's
# prepare_model_for_kbit_training / gradient_checkpointing_enable does.
TRAINING = {"per_device_train_batch_size": 16, "learning_rate": 1e-3, "seed": 0, "warmup_steps": 0,
            "lr_scheduler_type": "linear", "weight_decay": 0.0, "max_grad_norm": 1.0,
            "gradient_checkpointing": True}
# The training settings the reference side follows (as Seq2SeqTrainingArguments of the same
# names); the others (gradient_checkpointing, memory_budget_gb, compile_layers, cuda_graphs,
# precision, ...) are the engine side's alone: the reference always checkpoints every layer.
REFERENCE_TRAINING = ("per_device_train_batch_size", "learning_rate", "seed", "warmup_steps",
                      "lr_scheduler_type", "weight_decay", "max_grad_norm")
# LoRA of both sides for qlora and lora (peft's LoraConfig names, which the methods keep).
LORA = {"r": 32, "lora_alpha": 64, "target_modules": "q_proj,v_proj", "lora_dropout": 0.05}
LORA_METHODS = ("qlora", "lora")
# The training settings that reach the engine side's steps (prepare_training, TrainStep and the
# model builder read them); the others (evaluation, checkpoints, data loading, several GPUs, ...)
# have nothing to act on here, so a case may not set them and look measured.
ENGINE_TRAINING = ("per_device_train_batch_size", "learning_rate", "seed", "warmup_steps",
                   "lr_scheduler_type", "weight_decay", "max_grad_norm", "precision",
                   "gradient_checkpointing", "memory_budget_gb", "compile_layers", "cuda_graphs")
# Training settings a case sets through its own fields, never through ``training``.
FROM_CASE = {"max_steps": "its warmup + steps", "audio_padding": "its audio: 'short' is longest"}
# The benchmark's own option names before it used the engine's, and what took their place.
RENAMED = {"checkpoint": "training gradient_checkpointing (True for 'all', False for 'none')",
           "compile": "training compile_layers",
           "kernels": "method_settings kernels",
           "upcast_frozen": "method_settings upcast_frozen",
           "batch": "training per_device_train_batch_size",
           "lora_dropout": "method_settings lora_dropout"}


# torch.nn.attention.SDPBackend names a case may pin the engine side's attention to.
ATTENTION_BACKENDS = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


@dataclass
class Case:
    model: str
    method: str = "qlora"  # qlora | lora | full (the three the reference side knows)
    audio: str = "30s"  # "30s" or "short" (clips of 1-5 s)
    label_tokens: int = 64
    steps: int = 8  # timed optimizer steps
    warmup: int = 3  # untimed optimizer steps first (compilation, CUDA graph capture)
    memory_cap_gb: float = 0.0  # torch.cuda.set_per_process_memory_fraction, both sides
    training: dict = field(default_factory=dict)  # TrainingSettings names, over TRAINING
    method_settings: dict = field(default_factory=dict)  # the method's names (over LORA for LoRA)
    label: str = ""  # names an engine variant in the table
    # the engine side's scaled-dot-product attention kernel: "" lets torch choose (cuDNN's flash
    # kernel on Hopper), else one of ATTENTION_BACKENDS alone (issue 18's "Hopper attention" lever)
    attention: str = ""
    # torch._inductor.config values the engine side sets after its set-up (compilation is lazy,
    # so they apply to its compiled layers), e.g. {"fallback_random": False}: inductor's own RNG
    inductor: dict = field(default_factory=dict)
    sides: tuple = ("reference", "engine")

    def __post_init__(self):
        if self.attention and self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"case {self.model}: attention {self.attention!r} is not one of "
                             f"{', '.join(ATTENTION_BACKENDS)}")
        # Stored whole, so a result's JSON says every setting the case trained with.
        self.training = {**TRAINING, **self.training}
        if self.method in LORA_METHODS:
            self.method_settings = {**LORA, **self.method_settings}
        self.sides = tuple(self.sides)

    @property
    def batch(self) -> int:
        return int(self.training["per_device_train_batch_size"])

    @property
    def seed(self) -> int:
        return int(self.training["seed"])

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def name(self) -> str:
        return f"{self.model} {self.method} {self.audio} b{self.batch}" + (
            f" ({self.label})" if self.label else "")

    def with_training(self, **values) -> Case:
        return replace(self, training={**self.training, **values})


CPU = {"per_device_train_batch_size": 4}

SUITES = {
    "cpu": [
        Case("tiny-whisper", "qlora", steps=3, warmup=1, training=CPU),
        Case("tiny-whisper", "qlora", steps=3, warmup=1, audio="short", training=CPU),
        Case("tiny-whisper", "qlora", steps=3, warmup=1, training={**CPU, "memory_budget_gb": 0.05},
             label="memory plan 50 MB", sides=("engine",)),
    ],
    # The real whisper-base (the CTranslate2 wheels of requirements.txt, converted) on 2 CPU
    # cores: issue 18's CPU table. Minutes per measurement; run on a quiet machine.
    "cpu-whisper-base": [
        Case("whisper-base-pretrained", "qlora", steps=3, warmup=1, training={"per_device_train_batch_size": 8}),
        Case("whisper-base-pretrained", "qlora", steps=3, warmup=1, audio="short",
             training={"per_device_train_batch_size": 8}),
    ],
    "gpu": [
        Case("whisper-small", "qlora", steps=17),  # 20 logged steps: the loss-parity check
        Case("whisper-small", "qlora", training={"memory_budget_gb": 2.67}, sides=("engine",),
             label="planned for the reference's 2.67 GiB"),
        Case("whisper-large-v3", "qlora", steps=6),
        Case("whisper-large-v3", "qlora", steps=6, training={"memory_budget_gb": 7.38}, sides=("engine",),
             label="planned for the reference's 7.38 GiB"),
        Case("whisper-large-v3", "qlora", steps=6, memory_cap_gb=4.0, training={"memory_budget_gb": 4.0},
             label="memory-first, 4 GiB cap", sides=("engine",)),
        Case("whisper-small", "qlora", audio="short"),
        Case("whisper-small", "qlora", audio="short", training={"memory_budget_gb": 2.67}, sides=("engine",),
             label="planned for the reference's 2.67 GiB"),
        Case("whisper-small", "lora"),
    ],
    # Issue 18's lever "less recompute": large-v3 at 30 s without checkpointing at small
    # micro-batches (what a batch of 16 accumulated from them would run at, and whether it fits
    # the 0.55 x 7.38 GiB of goal 1), against every layer checkpointed at 16 and the planner.
    "large-v3-levers": [
        Case("whisper-large-v3", "qlora", steps=6),
        *[Case("whisper-large-v3", "qlora", steps=steps, sides=("engine",), label=f"micro {batch}, no checkpointing",
               training={"per_device_train_batch_size": batch, "gradient_checkpointing": False})
          for batch, steps in ((1, 32), (2, 16), (4, 8), (8, 6), (16, 6))],
        Case("whisper-large-v3", "qlora", steps=6, memory_cap_gb=4.0, training={"memory_budget_gb": 4.0},
             label="memory-first, 4 GiB cap", sides=("engine",)),
    ],
    # Issue 18's kernel levers on large-v3 (30 s, batch 16, every layer checkpointed unless a
    # row says otherwise), each against the engine's default in the same call: the attention
    # kernel (torch picks cuDNN's flash kernel on Hopper), LoRA dropout's cost (its masks are
    # drawn for every activation entering q and v), and the recompute (no checkpointing).
    "large-v3-kernels": [
        Case("whisper-large-v3", "qlora", steps=6),
        *[Case("whisper-large-v3", "qlora", steps=6, sides=("engine",), attention=backend,
               label=f"attention {backend.lower()}") for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION")],
        Case("whisper-large-v3", "qlora", steps=6, sides=("engine",), method_settings={"lora_dropout": 0.0},
             label="lora_dropout 0"),
        Case("whisper-large-v3", "qlora", steps=6, sides=("engine",), inductor={"fallback_random": False},
             label="inductor's own dropout RNG"),
        Case("whisper-large-v3", "qlora", steps=6, sides=("engine",), training={"gradient_checkpointing": False},
             label="no checkpointing"),
        Case("whisper-large-v3", "qlora", steps=6, memory_cap_gb=4.0, training={"memory_budget_gb": 4.0},
             label="memory-first, 4 GiB cap", sides=("engine",)),
    ],
    # The dropout lever alone (a shorter call than large-v3-kernels): the engine compiles with
    # eager's dropout kernel (fallback_random), against inductor's own RNG and no dropout; with
    # the recipe on both models for the loss curves (same masks as peft's eager dropout now).
    "dropout-rng": [
        Case("whisper-large-v3", "qlora", steps=6),
        Case("whisper-large-v3", "qlora", steps=6, sides=("engine",), inductor={"fallback_random": False},
             label="inductor's own dropout RNG"),
        Case("whisper-large-v3", "qlora", steps=6, sides=("engine",), method_settings={"lora_dropout": 0.0},
             label="lora_dropout 0"),
        Case("whisper-small", "qlora", steps=17),
        Case("whisper-small", "qlora", steps=17, sides=("engine",), inductor={"fallback_random": False},
             label="inductor's own dropout RNG"),
    ],
    # Does compiling the layers pay once CUDA graphs replay the step? Each model and window
    # with the engine's default and with compile_layers=off, steady state (compiling excluded).
    "compile-or-not": [
        *[Case(model, "qlora", audio=audio, steps=steps, sides=("engine",), label=label,
               training={} if label == "compiled" else {"compile_layers": "off"})
          for model, audio, steps in (("whisper-small", "30s", 10), ("whisper-small", "short", 10),
                                      ("whisper-large-v3", "30s", 6))
          for label in ("compiled", "not compiled")],
    ],
    # Issue 18, goal 2: where large-v3's step goes, by kind of work (run with
    # LIM_BENCH_PROFILE=folder). Recompute = the busy time of the first row less the second's.
    "large-v3-profile": [
        Case("whisper-large-v3", "qlora", steps=4, sides=("engine",)),
        Case("whisper-large-v3", "qlora", steps=4, sides=("engine",), training={"gradient_checkpointing": False},
             label="no checkpointing"),
    ],
    # Run with LIM_BENCH_PROFILE=folder: where each side's step time goes.
    "profile": [
        Case("whisper-small", "qlora", steps=4),
        Case("whisper-small", "qlora", steps=4, sides=("engine",), label="no checkpointing",
             training={"gradient_checkpointing": False}),
        Case("whisper-small", "qlora", steps=4, sides=("engine",), label="without CUDA graphs",
             training={"cuda_graphs": "off"}),
        Case("whisper-large-v3", "qlora", steps=3, sides=("engine",)),
    ],
    "ablation": [
        Case("whisper-small", "qlora", sides=("engine",), label="A: peft layers, fp32 upcast, autocast",
             training={"compile_layers": "off", "cuda_graphs": "off"},
             method_settings={"kernels": "peft", "upcast_frozen": True}),
        Case("whisper-small", "qlora", sides=("engine",), label="B: A + bf16 frozen base, no autocast",
             training={"compile_layers": "off", "cuda_graphs": "off"}, method_settings={"kernels": "peft"}),
        Case("whisper-small", "qlora", sides=("engine",), label="C: B + fused LoRA",
             training={"compile_layers": "off", "cuda_graphs": "off"}),
        Case("whisper-small", "qlora", sides=("engine",), label="D: C + compiled layers",
             training={"cuda_graphs": "off"}),
        Case("whisper-small", "qlora", sides=("engine",), label="G: D + CUDA graphs (default)"),
        Case("whisper-small", "qlora", sides=("engine",), label="E: C without checkpointing",
             training={"gradient_checkpointing": False, "compile_layers": "off", "cuda_graphs": "off"}),
        Case("whisper-small", "qlora", sides=("engine",), label="F: E with compiled layers",
             training={"gradient_checkpointing": False, "cuda_graphs": "off"}),
        Case("whisper-small", "qlora", sides=("engine",), label="H: F + CUDA graphs",
             training={"gradient_checkpointing": False}),
    ],
}
