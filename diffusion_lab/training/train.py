"""Train the tiny Stable Diffusion from the command line, on one process or many, with Hugging Face Accelerate.

Notation
--------
===============================  ==========  ==========================================================================
code                             symbol      meaning
===============================  ==========  ==========================================================================
``global_batch_size``            B           examples in one optimizer step, summed over processes and micro-batches
``accelerator.num_processes``    P           processes (one per GPU, or CPU processes talking through gloo)
``gradient_accumulation_steps``  A           micro-batches each process runs before the optimizer step
``micro``                        b           examples per micro-batch, b = B / (P·A)
``step``                         k           optimizer step, 0-based; the step's data come from Generator(s·2³² + k)
``seed``                         s           one integer for the initial weights and every batch
``latents``                      z_0         (N, L, 7, 7) = s_vae · μ(x): the shipped autoencoder's scaled means
``t``, ``noise``                 t, ε        (B,) timesteps in 0 … T − 1 and (B, L, 7, 7) Gaussian noise
``per_example``                  ℓ_i         ‖v_θ(z_t, t, c) − v‖² averaged over the latent's entries (v-prediction)
===============================  ==========  ==========================================================================

What it trains: the denoiser of the course's tiny Stable Diffusion, text encoder and U-Net jointly, on MNIST latents
encoded by the shipped autoencoder (``data/pretrained/tiny_sd``), with the captions, caption dropout and v-prediction
loss of :func:`diffusion_lab.training.recipes.train_latent_text2img`; from scratch (``--init scratch``) or continuing the
shipped weights (``--init pretrained``: fine-tuning). Unlike the notebooks' recipe it counts steps, not seconds,
so that a run is reproducible on any machine.

Why 2 processes give the same weights as 1 (up to float rounding)
----------------------------------------------------------------
1. The data of step k do not depend on P or A: the *global* batch (indices, captions, dropped captions, t, ε) is drawn
   on the CPU from ``Generator(s·2³² + k)``; process p keeps rows p·B/P … (p+1)·B/P − 1 and cuts them into A
   micro-batches of b = B/(P·A) rows.
2. The gradient does not depend on P or A. The loss of the step is the mean over the global batch, and a mean over
   B rows is the average over processes of the average over micro-batches of the micro-batch means:

       L = (1/B) Σ_i ℓ_i = (1/P) Σ_p (1/A) Σ_a L_{p,a},    L_{p,a} = (1/b) Σ_{i ∈ micro-batch (p, a)} ℓ_i.

   So each process back-propagates L_{p,a} / A (``accelerator.backward`` divides by A), the A gradients add up in
   ``.grad`` (no all-reduce until the last one: ``accelerator.accumulate``), and DDP's all-reduce averages the P
   processes' sums: ∇L exactly as one process on all B rows, except for the order of the additions.
3. Everything after the gradient is the same computation on every process: clipping the global norm to 1 (once,
   on the summed and averaged gradient: only when ``accelerator.sync_gradients``), AdamW, EMA.

Checkpoints are safetensors + JSON (:func:`diffusion_lab.utils.checkpoint.save_checkpoint`, written atomically by the main
process, never pickle): ``output_dir/checkpoint-<k>`` holds the weights, the EMA weights, the optimizer state and the
arguments. Because a step's data come from (s, k), resuming needs no random state: ``--resume latest`` continues
exactly where the run stopped. At the end the main process writes the EMA weights as a pipeline folder,
``output_dir/pipeline`` (``tiny_sd_io.load_tiny_sd(output_dir / "pipeline")``), and ``output_dir/train_log.json``.

Commands
--------
One process (CPU or one GPU)::

    python -m diffusion_lab.training.train --steps 1000 --output-dir runs/tiny_sd

Two CPU processes on one machine. ``accelerate launch --cpu --num_processes 2`` starts several processes only through
MPI (``--mpirun_hostfile``); without MPI use ``--multi_gpu`` (torchrun underneath): on a machine without GPUs this
script then runs its processes on the CPU and they talk through gloo::

    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --main_process_port 0 \
        -m diffusion_lab.training.train --steps 1000 --output-dir runs/tiny_sd_2cpu

Four GPUs with bf16 mixed precision, 2 micro-batches of 16 per GPU (B = 4·2·16 = 128)::

    accelerate launch --multi_gpu --num_processes 4 --mixed_precision bf16 \
        -m diffusion_lab.training.train --global-batch-size 128 --gradient-accumulation-steps 2 --output-dir runs/tiny_sd_4gpu

Resume an interrupted run (same arguments plus ``--resume``)::

    python -m diffusion_lab.training.train --steps 1000 --output-dir runs/tiny_sd --resume latest
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from diffusion_lab.maths.diffusion import q_sample
from diffusion_lab.maths.guidance import drop_condition
from diffusion_lab.mnist.captions import attributes, captions_for
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.models.text_encoder import TextEncoder
from diffusion_lab.models.unet import UNet
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.training.finetune import encode_images
from diffusion_lab.training.loop import EMA, check_finite_loss, optimizer_step
from diffusion_lab.training.loss import training_target
from diffusion_lab.training.recipes import latent_text_recipe
from diffusion_lab.training.tiny_sd_io import load_tiny_sd, pretrained_tiny_sd_path, save_tiny_sd
from diffusion_lab.utils.checkpoint import load_config, load_training_state, save_checkpoint, write_json_atomic
from diffusion_lab.utils.progress import tqdm
from diffusion_lab.utils.settings import pick

__all__ = [
    "TrainArgs",
    "TextDenoiser",
    "parse_args",
    "train",
    "main",
    "global_batch",
    "prepare_data",
    "latest_checkpoint",
]

INITS = ("scratch", "pretrained")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")


# what a resumed run must share with the run it continues (the others, e.g. --steps or the number of processes, may
# change: the data of step k depend only on these)
MUST_MATCH_ON_RESUME = ("init", "pretrained_dir", "global_batch_size", "lr", "seed", "num_images", "ema_decay")


@dataclass
class TrainArgs:
    """The command line of ``python -m diffusion_lab.training.train`` (one field per flag: ``global_batch_size`` is
    ``--global-batch-size``). Stored in every checkpoint and in ``train_log.json``."""

    output_dir: str = field(default="runs/tiny_sd", metadata={"help": "checkpoints, pipeline/ and train_log.json"})
    init: str = field(default="scratch", metadata={"help": "scratch: new text encoder + U-Net; pretrained: fine-tune"})
    pretrained_dir: str | None = field(
        default=None, metadata={"help": "the shipped tiny_sd folder (autoencoder, caption bins; weights to fine-tune)"}
    )
    steps: int = field(default_factory=lambda: pick(1000, 4), metadata={"help": "optimizer steps in all"})
    global_batch_size: int = field(default=32, metadata={"help": "B, summed over processes and micro-batches"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "A micro-batches per process and step"})
    lr: float | None = field(
        default=None, metadata={"help": "peak learning rate (default: the recipe's 3e-3; half of it with pretrained)"}
    )
    warmup_steps: int = field(default=20, metadata={"help": "linear warm-up, then cosine decay to half the peak"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this (0: off)"})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, bf16 or fp16 (CUDA only); default: accelerate launch's, else no"}
    )
    seed: int = field(default=0, metadata={"help": "initial weights and every batch"})
    num_images: int = field(default_factory=lambda: pick(8_000, 500), metadata={"help": "first N MNIST images"})
    checkpoint_every: int = field(
        default=500, metadata={"help": "save checkpoint-<step> every N steps (0: at the end)"}
    )
    resume: str | None = field(default=None, metadata={"help": "a checkpoint folder, or 'latest' in --output-dir"})
    ema_decay: float = field(default=0.99, metadata={"help": "EMA of the weights (with warm-up); saved as pipeline/"})
    cpu: bool = field(default=False, metadata={"help": "train on the CPU even if a GPU is there"})
    progress: bool = field(default=True, metadata={"help": "progress bar on the main process"})

    def __post_init__(self):
        def check_int(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"--{_flag(name)} must be an integer >= {minimum}, got {value!r}")
            if value < minimum:
                raise ValueError(f"--{_flag(name)} must be an integer >= {minimum}, got {value!r}")

        for name in ("steps", "global_batch_size", "gradient_accumulation_steps", "num_images"):
            check_int(name)
        for name in ("warmup_steps", "checkpoint_every", "seed"):
            check_int(name, minimum=0)
        if self.seed >= 2**32:
            raise ValueError(
                f"--seed must be below 2**32 (step k's generator is seeded with seed·2³² + k), got {self.seed}"
            )
        if self.init not in INITS:
            raise ValueError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(
                f"--mixed-precision must be one of {', '.join(MIXED_PRECISIONS)}, got {self.mixed_precision!r} "
                "(bf16 works on CPUs and recent GPUs, fp16 needs a CUDA GPU)"
            )
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay!r}")
        if not self.grad_clip >= 0:
            raise ValueError(f"--grad-clip must be >= 0 (0 turns clipping off), got {self.grad_clip!r}")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`TrainArgs` field, its type and help taken from the field."""
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_lab.training.train",
        description="Train the tiny Stable Diffusion's text encoder + U-Net; runs unchanged under accelerate launch.",
    )
    hints = typing.get_type_hints(TrainArgs)
    for f in dataclasses.fields(TrainArgs):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        kind = hints[f.name]
        help_text = f.metadata.get("help", "")
        help_text += "" if "default" in help_text else f" (default: {default})"
        if kind is bool:
            parser.add_argument(f"--{_flag(f.name)}", action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)  # fmt: skip
            continue
        base = next(a for a in typing.get_args(kind) if a is not type(None)) if typing.get_args(kind) else kind
        parser.add_argument(f"--{_flag(f.name)}", type=base, default=default, help=help_text)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    """:class:`TrainArgs` from command-line words (``sys.argv[1:]`` when None); bad values raise ValueError."""
    return TrainArgs(**vars(_build_parser().parse_args(argv)))


class TextDenoiser(nn.Module):
    """Text encoder + U-Net as one module, ``forward(ids, mask, z_t, t) -> prediction (B, L, h, w)``: DDP wraps one
    module and averages the gradients of both networks in one all-reduce."""

    def __init__(self, text_encoder: nn.Module, unet: nn.Module):
        super().__init__()
        self.text_encoder, self.unet = text_encoder, unet
        self.config = _TextDenoiserConfig(text_encoder.config.to_dict(), unet.config.to_dict())

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        text = self.text_encoder(input_ids, attention_mask=attention_mask)  # states (B, M, D), pooled (B, D)
        return self.unet(
            z_t, t, encoder_hidden_states=text.last_hidden_state, encoder_attention_mask=attention_mask,
            pooled_text=text.pooler_output if self.unet.config.pooled_dim else None,
        )  # fmt: skip


@dataclass
class _TextDenoiserConfig:
    """What ``save_checkpoint`` stores as the model config of a :class:`TextDenoiser`."""

    text_encoder: dict
    unet: dict

    def to_dict(self) -> dict:
        return asdict(self)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of step k: Generator(s·2³² + k), the same on every process and after a resume."""
    return torch.Generator().manual_seed(seed * 2**32 + step)


def global_batch(data: dict, step: int, args: TrainArgs) -> dict[str, torch.Tensor]:
    """Everything random about optimizer step ``step``, for the whole global batch of B rows (CPU tensors):
    ``z0`` (B, L, h, w), ``ids`` and ``mask`` (B, M), ``t`` (B,), ``noise`` (B, L, h, w).

    ``data`` is what :func:`prepare_data` returns.
    """

    g, b, latents, tok = step_generator(args.seed, step), args.global_batch_size, data["latents"], data["tokenizer"]
    idx = torch.randint(0, len(latents), (b,), generator=g)  # (B,)
    captions = captions_for(
        data["labels"][idx], None, data["bins"], attrs={k: v[idx] for k, v in data["attrs"].items()}, generator=g,
        drop_prob=data["caption_drop_prob"],
    )  # fmt: skip
    ids = tok(captions, max_length=data["max_length"])["input_ids"]  # (B, M)
    null_ids = tok("", max_length=data["max_length"])["input_ids"]  # (1, M): <bos> <eos> <pad>…
    ids = drop_condition(ids, null_ids, data["cond_drop_prob"], g)  # 5 % of the rows → "" (CFG)
    z0 = latents[idx]  # (B, L, h, w)
    t = torch.randint(0, data["num_timesteps"], (b,), generator=g)  # (B,)
    noise = torch.randn(z0.shape, generator=g)  # (B, L, h, w)
    return {"z0": z0, "ids": ids, "mask": ids != tok.pad_token_id, "t": t, "noise": noise}


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoint-<k>`` folder of ``output_dir`` with the largest k (None if there is none)."""
    found = [
        (int(m.group(1)), p)
        for p in Path(output_dir).glob("checkpoint-*")
        if (m := CHECKPOINT_PATTERN.fullmatch(p.name)) and (p / "config.json").is_file()
    ]
    return max(found)[1] if found else None


def _resume_folder(args: TrainArgs) -> Path | None:
    if args.resume is None:
        return None
    if args.resume == "latest":
        folder = latest_checkpoint(args.output_dir)
        if folder is None:
            raise FileNotFoundError(
                f"--resume latest: {args.output_dir} holds no checkpoint-<step> folder yet. Start without --resume, "
                "or pass --output-dir of the run you want to continue"
            )
        return folder
    folder = Path(args.resume)
    if not (folder / "config.json").is_file() or not (folder / "state.safetensors").is_file():
        raise FileNotFoundError(
            f"--resume {args.resume}: not a checkpoint folder (no config.json and state.safetensors). Pass a "
            f"checkpoint-<step> folder written by this script, or --resume latest to take the newest in --output-dir"
        )
    return folder


def _check_same_run(folder: Path, args: TrainArgs) -> dict:
    stored = load_config(folder)
    old = stored.get("train_config") or {}
    different = [f"--{_flag(k)} {old.get(k)!r} → {getattr(args, k)!r}" for k in MUST_MATCH_ON_RESUME
                 if old.get(k) != getattr(args, k)]  # fmt: skip
    if different:
        raise ValueError(
            f"{folder} was written by a run with other arguments ({'; '.join(different)}): resume with the same "
            "values, or start a new run in another --output-dir"
        )
    return stored


def _load_shipped(args: TrainArgs):

    folder = Path(args.pretrained_dir) if args.pretrained_dir is not None else pretrained_tiny_sd_path()
    try:
        return load_tiny_sd(folder)
    except FileNotFoundError as e:
        what = "the weights to fine-tune (--init pretrained)" if args.init == "pretrained" else "the autoencoder"
        raise FileNotFoundError(
            f"{folder} is not a tiny_sd folder, and it holds {what} and the caption bins: pass --pretrained-dir with "
            "a folder written by tiny_sd_io.save_tiny_sd (the repository ships data/pretrained/tiny_sd; "
            "benchmarks/cpu_train.py --model latent --save <folder> makes one)"
        ) from e


def prepare_data(pipe, bins, args: TrainArgs) -> dict:
    """The first ``args.num_images`` MNIST images as latents (N, L, h, w) of ``pipe.vae``, their labels and
    attributes, and what captions need (caption bins, tokenizer, the recipe's two dropout probabilities)."""

    recipe = latent_text_recipe()[3]

    images, labels = load_mnist("train", limit=args.num_images)  # (N, 1, 28, 28), (N,)
    latents = torch.cat([encode_images(pipe, images[i : i + 1000]).cpu() for i in range(0, len(images), 1000)])
    return {
        "latents": latents,  # (N, L, h, w) = s_vae · μ(x)
        "labels": labels,
        "attrs": attributes(images),
        "bins": bins,
        "tokenizer": pipe.tokenizer,
        "max_length": pipe.max_length,
        "num_timesteps": len(pipe.scheduler.alphas_cumprod),
        "caption_drop_prob": recipe.caption_drop_prob,  # each attribute word dropped with p = 0.25
        "cond_drop_prob": recipe.cond_drop_prob,  # whole caption → "" with p = 0.05
    }


def _build_model(pipe, args: TrainArgs) -> TextDenoiser:

    if args.init == "pretrained":
        return TextDenoiser(pipe.text_encoder, pipe.unet).train().requires_grad_(True)
    _, text_cfg, unet_cfg, recipe = latent_text_recipe(seed=args.seed)
    torch.manual_seed(args.seed + 1)  # the same initial weights on every process
    text_encoder, unet = TextEncoder(text_cfg), UNet(unet_cfg)
    nn.init.normal_(text_encoder.token_embedding.weight, std=recipe.token_embedding_std)  # distinct words at once
    return TextDenoiser(text_encoder, unet).train()


def _make_accelerator(args: TrainArgs):
    from accelerate import Accelerator  # lazy: only the scale-out run needs Accelerate (~1 s to import)

    # launched by torchrun (accelerate launch --multi_gpu) on a machine without GPUs: CPU processes talking through
    # gloo; otherwise accelerate would give each process DistributedType.NO and every one would train alone
    launched = "LOCAL_RANK" in os.environ
    cpu = args.cpu or (launched and not torch.accelerator.is_available())
    accelerator = Accelerator(
        cpu=cpu, mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != world:
        raise RuntimeError(
            f"launched as {world} processes, but accelerate set up {accelerator.num_processes}: every process would "
            "train alone. Pass --cpu to train on CPU processes, or check the accelerate launch flags"
        )
    if (
        accelerator.num_processes == 1
        and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
        and "MASTER_PORT" in os.environ
    ):
        raise RuntimeError(
            "accelerate launch --cpu --num_processes N starts N processes only through MPI (--mpirun_hostfile); "
            "without MPI only one process runs. Use accelerate launch --multi_gpu --num_processes N ... instead: on "
            "a machine without GPUs this script then trains on N CPU processes (gloo)"
        )
    return accelerator


def _reset_accelerate() -> None:
    """Forget accelerate's process-wide state, so that the next :func:`train` in this process starts afresh (other
    mixed precision, a new gradient-accumulation counter). accelerate's own tests do the same."""
    from accelerate.state import (  # lazy: only the scale-out run needs Accelerate (~1 s to import)
        AcceleratorState,
        GradientState,
    )

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def train(args: TrainArgs) -> dict:
    """Run the training described by ``args`` (see the module docstring); returns what ``train_log.json`` holds.

    Every process calls it; the main process alone writes checkpoints, ``pipeline/`` and ``train_log.json``.
    """
    accelerator = _make_accelerator(args)
    try:
        return _train(accelerator, args)
    finally:
        accelerator.end_training()  # destroys the process group (no-op in one process)
        _reset_accelerate()


def _train(accelerator, args: TrainArgs) -> dict:

    # 0. checks that need the number of processes or the device, before anything slow
    p, a, b_global = accelerator.num_processes, args.gradient_accumulation_steps, args.global_batch_size
    if b_global % (p * a):
        raise ValueError(
            f"--global-batch-size {b_global} is not divisible by processes × accumulation = {p} × {a} = {p * a}: "
            f"pick a multiple of {p * a} (e.g. {max(1, b_global // (p * a)) * p * a}) or change "
            "--gradient-accumulation-steps"
        )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type != "cuda":
        raise ValueError(
            f"fp16 mixed precision needs a CUDA GPU (its loss scaler), but this run is on {accelerator.device.type}: "
            "use --mixed-precision bf16 or no"
        )
    micro = b_global // (p * a)  # b
    resume_from = _resume_folder(args)
    stored = _check_same_run(resume_from, args) if resume_from is not None else None

    # 1. data and model: the same on every process
    pipe, bins = _load_shipped(args)
    data = prepare_data(pipe, bins, args)
    ab = pipe.scheduler.alphas_cumprod.float().to(accelerator.device)  # (T,) ᾱ_t
    prediction_type = pipe.scheduler.config["prediction_type"]
    model = _build_model(pipe, args)
    recipe = latent_text_recipe()[3]
    peak_lr = (
        args.lr if args.lr is not None else recipe.lr * (recipe.final_lr_fraction if args.init == "pretrained" else 1)
    )
    schedule = dataclasses.replace(recipe, lr=peak_lr, warmup_steps=args.warmup_steps, max_steps=args.steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=recipe.weight_decay)
    ema = EMA(model, args.ema_decay)
    start_step, losses, seconds_before = 0, [], 0.0
    if resume_from is not None:
        start_step = load_training_state(resume_from, model, ema_model=ema.model, optimizer=optimizer)
        extra = stored["extra"]
        ema.updates = int(extra["ema_updates"])
        losses, seconds_before = list(extra["losses"]), float(extra["seconds"])
        accelerator.print(f"resumed from {resume_from} at step {start_step}")
    model, optimizer = accelerator.prepare(model, optimizer)
    if resume_from is not None and accelerator.scaler is not None and stored["extra"].get("grad_scaler"):
        accelerator.scaler.load_state_dict(stored["extra"]["grad_scaler"])
    ema.model.to(accelerator.device)
    raw = accelerator.unwrap_model(model)
    accelerator.print(
        f"{p} process(es) × {a} micro-batch(es) of {micro} = global batch {b_global}; {accelerator.device}, "
        f"mixed precision {accelerator.mixed_precision}; steps {start_step} → {args.steps}"
    )
    if start_step >= args.steps:
        accelerator.print(f"the checkpoint is at step {start_step} >= --steps {args.steps}: nothing to train")

    def save(step: int) -> None:
        if accelerator.is_main_process:
            save_checkpoint(
                Path(args.output_dir) / f"checkpoint-{step}", raw, ema_model=ema.model, optimizer=optimizer.optimizer,
                step=step, train_config=asdict(args),
                extra={"ema_updates": ema.updates, "losses": losses, "seconds": seconds_before + time.perf_counter() - t0,
                       "world_size": p, "grad_scaler": accelerator.scaler.state_dict() if accelerator.scaler else None},
            )  # fmt: skip
        accelerator.wait_for_everyone()

    # 2. the loop: one optimizer step = A micro-batches on each of P processes
    t0 = time.perf_counter()
    bar = tqdm(total=args.steps, initial=start_step, desc="text encoder + U-Net",
               disable=not (args.progress and accelerator.is_main_process), mininterval=1.0)  # fmt: skip
    model.train()
    for step in range(start_step, args.steps):
        batch = global_batch(data, step, args)  # the whole global batch, B rows
        first = accelerator.process_index * a * micro  # this process's shard: rows first … first + A·b − 1
        shard_loss = torch.zeros((), device=accelerator.device)
        for j in range(a):
            rows = slice(first + j * micro, first + (j + 1) * micro)
            z0, t, noise = (batch[k][rows].to(accelerator.device) for k in ("z0", "t", "noise"))  # (b, L, h, w), (b,)
            ids, mask = batch["ids"][rows].to(accelerator.device), batch["mask"][rows].to(accelerator.device)  # (b, M)
            with accelerator.accumulate(model):  # no all-reduce until the A-th micro-batch
                z_t = q_sample(z0, t, noise, ab)  # √ᾱ_t z_0 + √(1 − ᾱ_t) ε, (b, L, h, w)
                out = model(ids, mask, z_t, t).float()  # (b, L, h, w)
                target = training_target(prediction_type, z0, noise, ab[t][:, None, None, None])
                loss = (out - target).pow(2).flatten(1).mean(1).mean()  # L_{p,a}: mean over the micro-batch
                accelerator.backward(loss)  # adds ∇(L_{p,a} / A) to .grad; on the A-th, DDP averages over P
                # clip the global norm once the gradients are whole; the step is a no-op until the A-th micro-batch;
                # the finite check waits for the loss reduced over all processes (below), so that they stop together
                optimizer_step(
                    None, optimizer, model.parameters(), lr=schedule.lr_at(step), step=step,
                    max_grad_norm=args.grad_clip if accelerator.sync_gradients else None,
                    clip_grad_norm=accelerator.clip_grad_norm_,
                )  # fmt: skip
            shard_loss += loss.detach() / a
        step_loss = accelerator.reduce(shard_loss, reduction="mean").item()  # mean over the global batch
        check_finite_loss(step_loss, step, "lower --lr (the last checkpoint is untouched)")
        if not accelerator.optimizer_step_was_skipped:  # fp16: a step skipped for overflow leaves the EMA alone
            ema.update(raw)
        losses.append(step_loss)
        bar.update(1)
        if (step + 1) % 25 == 0:
            bar.set_postfix(loss=f"{sum(losses[-25:]) / len(losses[-25:]):.4f}", refresh=False)
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 and step + 1 < args.steps:
            save(step + 1)
    bar.close()
    end = max(args.steps, start_step)
    save(end)
    seconds = seconds_before + time.perf_counter() - t0

    # 3. the EMA weights as a pipeline folder, and the log
    log = {
        "losses": losses, "steps": end, "world_size": p, "gradient_accumulation_steps": a,
        "micro_batch_size": micro, "mixed_precision": accelerator.mixed_precision, "seconds": seconds,
        "args": asdict(args),
    }  # fmt: skip
    if accelerator.is_main_process:
        ema_net = ema.model.to("cpu").eval()
        trained = TinyStableDiffusionPipeline(
            pipe.vae, ema_net.text_encoder, pipe.tokenizer, ema_net.unet, pipe.scheduler
        )
        save_tiny_sd(trained, bins, Path(args.output_dir) / "pipeline")
        write_json_atomic(Path(args.output_dir) / "train_log.json", log)
        accelerator.print(f"saved {Path(args.output_dir) / 'pipeline'} (EMA weights); final loss {losses[-1]:.4f}")
    accelerator.wait_for_everyone()
    return log


def main(argv: list[str] | None = None) -> dict:
    """``python -m diffusion_lab.training.train [flags]``: parse, train, return the log (see :func:`train`)."""
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
