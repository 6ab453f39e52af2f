"""From scratch to measured quality on this machine's CPU: the pixel-space class-conditional MNIST recipe.

Trains ``diffusion_lab.training.recipes_pixel.mnist_pixel_recipe`` (the model of notebook 02) for a wall-clock budget, then samples
with DDIM and DDPM and measures prompt adherence and FID-MNIST (with the real-vs-real floor for the same n) using
the shipped classifier. Appends one record per (sampler, steps, guidance) to ``benchmarks/results/cpu_train.json``.

    .venv/bin/python benchmarks/cpu_train.py --budget 600 --threads 2 --save data/pretrained/mnist_pixel_cond

Target (issue 4): >= 90 % adherence within 600 s of training on 2 CPU threads.

``--model latent`` trains the latent text-to-image model instead (``diffusion_lab.training.recipes.train_latent_text2img``:
autoencoder, text encoder and cross-attention U-Net from scratch in ``--budget`` seconds, 120 by default), samples
prompts such as "a thick seven" with DDIM-25 at several guidance scales and measures digit adherence (classifier),
attribute adherence (``diffusion_lab.mnist.captions.attribute_adherence``) and FID-MNIST with its floor:

    .venv/bin/python benchmarks/cpu_train.py --model latent --threads 2 --save data/pretrained/mnist_latent_text

Targets (issue 5): <= 120 s of training in all; >= 98 % digit adherence at the best guidance scale; >= 90 %
attribute adherence; FID-MNIST <= 3x the floor at a guidance scale with >= 95 % digit adherence.

``--model flow`` is the steps-vs-quality comparison of issue 6 at equal training time: it trains the rectified-flow
MMDiT (``diffusion_lab.training.recipes.train_latent_flow``) on the shipped tiny_sd's autoencoder for as many seconds as
that model's U-Net trained (its ``diffusion_seconds`` in this file), then samples both with the same prompts: the
MMDiT with Euler at 4, 8, 16, 32 steps, the U-Net with DDIM at 10, 25, 50.

    .venv/bin/python benchmarks/cpu_train.py --model flow --threads 2 --save data/pretrained/tiny_sd3

Target (issue 6): the flow model at 8 steps matches or beats DDIM at 25 steps on FID-MNIST and adherence.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from diffusion_lab.mnist.classifier import load_classifier
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.mnist.metrics import evaluate, reference_stats
from diffusion_lab.pipelines.sampling import sample
from diffusion_lab.pipelines.shootout import eval_prompts
from diffusion_lab.training.recipes import train_latent_flow, train_latent_text2img
from diffusion_lab.training.recipes_pixel import schedulers_for, train_mnist_pixel
from diffusion_lab.training.tiny_sd_io import load_tiny_sd, pretrained_tiny_sd_path, save_tiny_sd
from diffusion_lab.utils.checkpoint import write_json_atomic

OUT = Path(__file__).resolve().parent / "results" / "cpu_train.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_fields(args) -> dict:
    """Where and how a record was measured (the same fields for every model)."""
    return {
        "threads": args.threads,
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "seed": args.seed,
    }


def append_runs(runs: list[dict]) -> None:
    existing = json.loads(OUT.read_text()) if OUT.is_file() else []
    write_json_atomic(OUT, existing + runs)


def generate(model, scheduler, n, steps, guidance, seed=0, batch=250):
    """n images, labels cycling 0..9, in batches; returns (images, labels, seconds)."""
    labels = torch.arange(n) % 10
    g = torch.Generator().manual_seed(seed)
    out, start = [], time.perf_counter()
    for i in range(0, n, batch):
        y = labels[i : i + batch]
        out.append(
            sample(
                model,
                scheduler,
                (len(y), 1, 28, 28),
                num_inference_steps=steps,
                class_labels=y,
                guidance_scale=guidance,
                generator=g,
            ).images.clamp(-1, 1)
        )
    return torch.cat(out), labels, time.perf_counter() - start


# Evaluation prompts: per digit, 4 plain prompts ("a seven") and one for each attribute word ("a thick seven"), so
# every attribute word is asked equally often (n/10 times for n images, a multiple of 10) and 40 % of the prompts name
# only the digit. The library's shoot-out evaluates the samplers on the very same prompts, so they live there.
latent_prompts = eval_prompts


def generate_latent(pipe, prompts, steps, guidance, seed=0, batch=250):
    """One image per prompt with the pipeline, in batches; returns (images, seconds)."""
    g = torch.Generator().manual_seed(seed)
    out, start = [], time.perf_counter()
    for i in range(0, len(prompts), batch):
        out.append(pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=g).images)
    return torch.cat(out), time.perf_counter() - start


def main_latent(args) -> None:
    from diffusion_lab.mnist.captions import attribute_adherence

    torch.set_num_threads(args.threads)
    budget = 120.0 if args.budget is None else args.budget
    t0 = time.perf_counter()
    pipe, info = train_latent_text2img(budget_s=budget, seed=args.seed)
    wall = time.perf_counter() - t0
    print(
        f"trained in {wall:.1f} s wall: autoencoder {info['ae_seconds']:.1f} s ({info['ae_steps']} steps), data "
        f"{info['load_seconds'] + info['encode_seconds']:.1f} s, text encoder + U-Net {info['diffusion_seconds']:.1f} s "
        f"({info['diffusion_steps']} steps, {info['diffusion_steps_per_s']:.2f} steps/s, "
        f"{info['diffusion_images_per_s']:.0f} img/s); parameters {info['parameters']}",
        flush=True,
    )
    if args.save:
        save_tiny_sd(pipe, info["bins"], args.save)
        print(f"saved the pipeline (EMA weights) and the caption bins to {args.save}")

    classifier = load_classifier()
    ref = reference_stats(classifier)
    prompts, labels = latent_prompts(args.n_eval)
    params = info["parameters"]
    common = {
        "model": "latent",
        "description": f"latent text-to-image: AutoencoderKL {params['vae'] / 1e6:.2f} M, text encoder "
        f"{params['text_encoder'] / 1e6:.2f} M, cross-attention U-Net {params['unet'] / 1e6:.2f} M params",
        "recipe": "diffusion_lab.training.recipes.latent_text_recipe",
        "label": args.label,
        "budget_seconds": budget,
        "train_seconds": round(wall, 1),
        "ae_seconds": round(info["ae_seconds"], 1),
        "data_seconds": round(info["load_seconds"] + info["encode_seconds"], 1),
        "diffusion_seconds": round(info["diffusion_seconds"], 1),
        "ae_steps": info["ae_steps"],
        "train_steps": info["diffusion_steps"],
        "batch_size": info["configs"]["train"]["batch_size"],
        "diffusion_steps_per_s": round(info["diffusion_steps_per_s"], 2),
        "train_images_per_s": round(info["diffusion_images_per_s"], 1),
        "final_loss": round(info["final_loss"], 5),
        "parameters": params,
        **machine_fields(args),
    }
    runs = []
    for steps in args.ddim_steps:
        for w in args.guidance:
            x, secs = generate_latent(pipe, prompts, steps, w)
            m = evaluate(x, labels, classifier, reference=ref)
            a = attribute_adherence(x, prompts, info["bins"])
            run = {
                **common,
                "sampler": "DDIM",
                "steps": steps,
                "guidance_scale": w,
                "n": len(prompts),
                "digit_adherence": round(m["adherence"], 4),
                "attribute_adherence": round(a["adherence"], 4),
                "attribute_requests": a["requests"],
                "attribute_adherence_per_word": {
                    k: round(a[k], 3) for k in ("thick", "thin", "slanted", "upright", "small", "large") if k in a
                },
                "fid": round(m["fid_mnist"], 2),
                "fid_floor": round(m["fid_floor"], 2),
                "diversity": round(m["diversity"], 3),
                "within_class_diversity": round(m.get("within_class_diversity", float("nan")), 3),
                "sample_seconds_per_image": round(secs / len(prompts), 4),
            }
            runs.append(run)
            print(
                f"DDIM-{steps} w={w}: digit adherence {run['digit_adherence']:.3f}  attribute adherence "
                f"{run['attribute_adherence']:.3f}  FID-MNIST {run['fid']:.1f} (floor {run['fid_floor']:.1f}, "
                f"n={run['n']})  {run['attribute_adherence_per_word']}  {secs:.0f} s",
                flush=True,
            )
    if not args.no_record:
        append_runs(runs)
        print(f"appended {len(runs)} runs to {OUT}")


def unet_denoiser_seconds() -> float:
    """The denoiser time of the shipped tiny_sd: the last unlabelled latent record of this file."""
    runs = json.loads(OUT.read_text()) if OUT.is_file() else []
    for run in reversed(runs):
        if run.get("model") == "latent" and not run.get("label") and "diffusion_seconds" in run:
            return float(run["diffusion_seconds"])
    raise SystemExit("no latent record in cpu_train.json: run --model latent --save data/pretrained/tiny_sd first")


def main_flow(args) -> None:
    from diffusion_lab.mnist.captions import attribute_adherence
    from diffusion_lab.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

    torch.set_num_threads(args.threads)
    unet_pipe, bins = load_tiny_sd(pretrained_tiny_sd_path("tiny_sd"))
    budget = unet_denoiser_seconds() if args.budget is None else args.budget
    print(f"training the MMDiT for {budget:.1f} s, the shipped U-Net's denoiser time", flush=True)
    t0 = time.perf_counter()
    pipe, info = train_latent_flow(
        unet_pipe.vae, budget_s=budget, seed=args.seed, text_config=unet_pipe.text_encoder.config
    )
    print(
        f"trained in {time.perf_counter() - t0:.1f} s wall: data {info['data_seconds']:.1f} s, text encoder + MMDiT "
        f"{info['diffusion_seconds']:.1f} s ({info['diffusion_steps']} steps, {info['diffusion_steps_per_s']:.2f} "
        f"steps/s); parameters {info['parameters']}",
        flush=True,
    )
    if args.save:
        save_tiny_sd(pipe, info["bins"], args.save)
        print(f"saved the pipeline (EMA weights) and the caption bins to {args.save}")
    classifier = load_classifier()
    ref = reference_stats(classifier)
    prompts, labels = latent_prompts(args.n_eval)
    shift = info["configs"]["train"]["shift"]
    common = {
        "comparison": "equal denoiser training time (issue 6)",
        "label": args.label,
        "denoiser_seconds_budget": round(budget, 1),
        "n": len(prompts),
        **machine_fields(args),
    }
    flow_fields = {
        "model": "flow",
        "description": f"rectified flow + MMDiT {info['parameters']['transformer'] / 1e6:.2f} M params on tiny_sd's "
        "autoencoder",
        "recipe": "diffusion_lab.training.recipes.latent_flow_recipe",
        "diffusion_seconds": round(info["diffusion_seconds"], 1),
        "train_steps": info["diffusion_steps"],
        "final_loss": round(info["final_loss"], 5),
        "parameters": info["parameters"],
        "shift": shift,
    }
    unet_fields = {
        "model": "latent",
        "description": "the shipped tiny_sd (U-Net), sampled for the comparison",
        "diffusion_seconds": round(budget, 1),
        "parameters": unet_pipe.num_parameters(),
    }
    plan = [("Euler", pipe, FlowMatchEulerDiscreteScheduler(shift=shift), s, flow_fields) for s in args.flow_steps]
    plan += [("DDIM", unet_pipe, unet_pipe.scheduler, s, unet_fields) for s in args.ddim_steps]
    runs = []
    for w in args.guidance:
        for sampler, p, scheduler, steps, fields in plan:
            p.scheduler = scheduler
            x, secs = generate_latent(p, prompts, steps, w)
            m = evaluate(x, labels, classifier, reference=ref)
            a = attribute_adherence(x, prompts, bins)
            run = {
                **fields, **common, "sampler": sampler, "steps": steps, "guidance_scale": w,
                "digit_adherence": round(m["adherence"], 4), "attribute_adherence": round(a["adherence"], 4),
                "fid": round(m["fid_mnist"], 2), "fid_floor": round(m["fid_floor"], 2),
                "diversity": round(m["diversity"], 3), "sample_seconds_per_image": round(secs / len(prompts), 4),
            }  # fmt: skip
            runs.append(run)
            print(
                f"{fields['model']:6s} {sampler}-{steps} w={w}: digit {run['digit_adherence']:.3f}  attribute "
                f"{run['attribute_adherence']:.3f}  FID-MNIST {run['fid']:.1f} (floor {run['fid_floor']:.1f}, n={run['n']})"
                f"  {secs:.0f} s",
                flush=True,
            )
    if not args.no_record:
        append_runs(runs)
        print(f"appended {len(runs)} runs to {OUT}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        choices=("pixel", "latent", "flow"),
        default="pixel",
        help="pixel (issue 4), latent (issue 5) or flow (issue 6: MMDiT vs U-Net at equal time)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="training wall-clock budget in seconds (pixel 600, latent 120, flow: the U-Net's denoiser time)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-eval", type=int, default=1000, help="samples per DDIM evaluation")
    p.add_argument(
        "--ddim-steps", type=int, nargs="+", default=None, help="DDIM steps (pixel 50, latent 25, flow 10 25 50)"
    )
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=None,
        help="guidance scales (pixel 1 1.5 2, latent 1 1.5 2 3 4, flow 2 3)",
    )
    p.add_argument("--flow-steps", type=int, nargs="+", default=[4, 8, 16, 32], help="Euler steps (flow)")
    p.add_argument("--ddpm-guidance", type=float, default=1.5)
    p.add_argument("--ddpm-n", type=int, default=0, help="samples for the DDPM-1000 evaluation (0: skip)")
    p.add_argument("--save", type=Path, default=None, help="save the EMA model here (save_pretrained folder)")
    p.add_argument("--label", default="", help="free text stored with the runs")
    p.add_argument("--no-record", action="store_true", help="print the results only (latent mode)")
    args = p.parse_args()
    if args.model == "flow":
        args.ddim_steps = args.ddim_steps or [10, 25, 50]
        args.guidance = args.guidance or [2.0, 3.0]
        main_flow(args)
        return
    if args.model == "latent":
        args.ddim_steps = args.ddim_steps or [25]
        args.guidance = args.guidance or [1.0, 1.5, 2.0, 3.0, 4.0]
        main_latent(args)
        return
    args.budget = 600.0 if args.budget is None else args.budget
    args.ddim_steps = args.ddim_steps or [50]
    args.guidance = args.guidance or [1.0, 1.5, 2.0]

    torch.set_num_threads(args.threads)
    images, labels = load_mnist("train")
    t0 = time.perf_counter()
    trainer = train_mnist_pixel(images, labels, time_budget_s=args.budget, seed=args.seed)
    wall = time.perf_counter() - t0
    model = trainer.ema.model.eval()
    print(
        f"trained {trainer.step} steps in {wall:.0f} s wall ({trainer.train_seconds:.0f} s in steps), "
        f"{trainer.step * trainer.config.batch_size / trainer.train_seconds:.0f} img/s",
        flush=True,
    )
    if args.save:
        from dataclasses import asdict

        from diffusion_lab.utils.checkpoint import save_checkpoint

        save_checkpoint(
            args.save,
            trainer.model,
            ema_model=trainer.ema.model,
            train_config=asdict(trainer.config),
            extra={"train_seconds": trainer.train_seconds, "trained_by": "benchmarks/cpu_train.py"},
        )
        print(f"saved raw and EMA weights to {args.save}")

    classifier = load_classifier()
    ref = reference_stats(classifier)
    ddpm, ddim = schedulers_for(model.config, trainer.config.prediction_type)
    common = {
        "model": f"UNet {tuple(model.config.channels)} patch {model.config.patch_size}, "
        f"{model.num_parameters() / 1e6:.2f} M params, class-conditional, pixel space",
        "recipe": "diffusion_lab.training.recipes_pixel.mnist_pixel_recipe",
        "label": args.label,
        "train_seconds": round(wall, 1),
        "train_step_seconds": round(trainer.train_seconds, 1),
        "train_steps": trainer.step,
        "batch_size": trainer.config.batch_size,
        "train_images_per_s": round(trainer.step * trainer.config.batch_size / trainer.train_seconds, 1),
        "final_loss": round(sum(trainer.losses[-50:]) / min(50, len(trainer.losses)), 5),
        **machine_fields(args),
    }
    runs = []
    plan = [("DDIM", ddim, s, w, args.n_eval) for s in args.ddim_steps for w in args.guidance]
    if args.ddpm_n:
        plan += [("DDPM", ddpm, 1000, args.ddpm_guidance, args.ddpm_n)]
    for name, sched, steps, w, n in plan:
        x, y, secs = generate(model, sched, n, steps, w)
        m = evaluate(x, y, classifier, reference=ref)
        run = {
            **common,
            "sampler": name,
            "steps": steps,
            "guidance": w,
            "n": n,
            "adherence": round(m["adherence"], 4),
            "fid_mnist": round(m["fid_mnist"], 2),
            "fid_floor": round(m["fid_floor"], 2),
            "diversity": round(m["diversity"], 3),
            "within_class_diversity": round(m.get("within_class_diversity", float("nan")), 3),
            "sample_seconds_per_image": round(secs / n, 4),
        }
        runs.append(run)
        print(
            f"{name}-{steps} w={w}: adherence {run['adherence']:.3f}  FID-MNIST {run['fid_mnist']:.1f} "
            f"(floor {run['fid_floor']:.1f}, n={n})  {run['sample_seconds_per_image'] * 1000:.1f} ms/image",
            flush=True,
        )
    append_runs(runs)
    print(f"appended {len(runs)} runs to {OUT}")


if __name__ == "__main__":
    main()
