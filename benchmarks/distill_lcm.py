"""Few-step distillation of the shipped tiny SD measured: latent consistency distillation on the CPU (issue 25, item 4).

Distils ``data/pretrained/tiny_sd`` (teacher: DDIM trailing, 25 steps, w = 3 as notebook 07) into a student with
``diffusion_lab.training.distill.distill_consistency`` (the default ``DistillConfig``: one call reproduces the shipped
run), then scores, on the same n prompts and the same initial noise z_T (common random numbers):

- the teacher with DDIM at 25, 4 and 2 steps (w = 3: what the student must match, and what it buys over the teacher
  run at the student's step counts);
- the student with diffusers' LCMScheduler at 1, 2 and 4 steps (no guidance: w is folded in);
- the student at 2 steps at the ``--checkpoints`` step counts (adherence against training steps).

Digit adherence with its binomial SE √(p(1 − p)/n), attribute adherence with its SE over the attribute requests,
FID-MNIST with a bootstrap SE (resampling the n images) and the real-vs-real floor for the same n; the target check
is the paired difference student-2 − teacher-25 in digit adherence (mean of per-prompt differences, SE sd/√n).

    .venv/bin/python benchmarks/distill_lcm.py --threads 2 --save data/pretrained/tiny_sd_lcm

Target (issue 25): the 2-step student within 0.02 of the teacher's 25-step digit adherence, after at most 5 minutes
of training on 2 CPU threads. Writes ``benchmarks/results/distill_lcm.json`` (one record per run, appended).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_train import cpu_name, latent_prompts  # noqa: E402  (the evaluation prompts every tiny-SD figure uses)

from diffusion_lab.mnist.captions import attribute_adherence  # noqa: E402
from diffusion_lab.mnist.classifier import classify, load_classifier  # noqa: E402
from diffusion_lab.mnist.metrics import fid_floor, frechet_distance, reference_stats  # noqa: E402
from diffusion_lab.training.distill import DistillConfig, distill_consistency, sample_student, save_student  # noqa: E402
from diffusion_lab.training.tiny_sd_io import load_tiny_sd  # noqa: E402
from diffusion_lab.utils.checkpoint import write_json_atomic  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "distill_lcm.json"
TEACHER_W = 3.0  # notebook 07's W, the pipeline's default guidance scale


def _se(p: float, n: int) -> float:
    return (p * (1 - p) / n) ** 0.5 if n else float("nan")


def _bootstrap_fid_se(feats: torch.Tensor, ref, draws: int = 100, seed: int = 0) -> float:
    """sd of FID-MNIST over ``draws`` resamples (with replacement) of the n images' classifier features."""
    g = torch.Generator().manual_seed(seed)
    n, fids = len(feats), []
    for _ in range(draws):
        f = feats[torch.randint(0, n, (n,), generator=g)].double().numpy()
        mu, sigma = f.mean(0), torch.from_numpy(f).T.cov().numpy()
        fids.append(frechet_distance(mu, sigma, ref.mu, ref.sigma))
    return float(torch.tensor(fids).std())


def _paired_fid_se(feats_a: torch.Tensor, feats_b: torch.Tensor, ref, draws: int = 200, seed: int = 0) -> float:
    """sd of FID(a) − FID(b) over resamples that take the same image indices from both (paired: same prompts, z_T)."""
    g = torch.Generator().manual_seed(seed)
    n, diffs = len(feats_a), []
    for _ in range(draws):
        idx = torch.randint(0, n, (n,), generator=g)
        fa, fb = feats_a[idx].double(), feats_b[idx].double()
        diffs.append(
            frechet_distance(fa.mean(0).numpy(), fa.T.cov().numpy(), ref.mu, ref.sigma)
            - frechet_distance(fb.mean(0).numpy(), fb.T.cov().numpy(), ref.mu, ref.sigma)
        )
    return float(torch.tensor(diffs).std())


def paired(a: str, b: str, points: dict, hits: dict, feats: dict, ref) -> dict:
    """a − b in digit adherence (mean of per-prompt differences, SE sd/√n) and FID-MNIST (paired bootstrap SE)."""
    d = hits[a].double() - hits[b].double()  # (n,)
    return {
        "digit_adherence": round(d.mean().item(), 4),
        "digit_adherence_se": round((d.std() / len(d) ** 0.5).item(), 4),
        "fid": round(points[a]["fid"] - points[b]["fid"], 2),
        "fid_se": round(_paired_fid_se(feats[a], feats[b], ref), 2),
    }


def score(images, prompts, labels, bins, classifier, ref, floor) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Metrics of n images, the per-image digit hits (n,) and classifier features (n, D) for paired differences."""
    images = images.clamp(-1, 1)
    logits, feats = classify(images, classifier)
    hits = logits.argmax(1) == labels  # (n,)
    f = feats.double().numpy()
    fid = frechet_distance(f.mean(0), feats.double().T.cov().numpy(), ref.mu, ref.sigma)
    attr = attribute_adherence(images, prompts, bins)
    p = hits.double().mean().item()
    return (
        {
            "n": len(images),
            "digit_adherence": round(p, 4),
            "digit_adherence_se": round(_se(p, len(images)), 4),
            "attribute_adherence": round(attr["adherence"], 4),
            "attribute_adherence_se": round(_se(attr["adherence"], attr["requests"]), 4),
            "attribute_requests": attr["requests"],
            "fid": round(fid, 2),
            "fid_se": round(_bootstrap_fid_se(feats, ref), 2),
            "fid_floor": round(floor, 2),
        },
        hits,
        feats,
    )


def sample_all(
    pipe, prompts, noise, steps, *, student: bool, seed: int, batch: int = 250
) -> tuple[torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed + 1)  # the LCM step's fresh noise (DDIM η = 0 draws none)
    out, start = [], time.perf_counter()
    for i in range(0, len(prompts), batch):
        kw = {"latents": noise[i : i + batch], "generator": g}
        if student:
            out.append(sample_student(pipe, prompts[i : i + batch], steps, **kw).images)
        else:
            out.append(pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=TEACHER_W, **kw).images)
    return torch.cat(out), time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=500, help="prompts per evaluated point")
    p.add_argument("--max-steps", type=int, default=None, help="override DistillConfig.max_steps")
    p.add_argument("--budget", type=float, default=None, help="override DistillConfig.time_budget_s (seconds)")
    p.add_argument("--set", nargs="*", default=[], help="other DistillConfig fields, e.g. lr=1e-4 skip=20")
    p.add_argument("--checkpoints", type=int, nargs="*", default=[], help="steps at which to score the 2-step student")
    p.add_argument("--save", type=Path, default=None, help="save the student here (save_student)")
    p.add_argument("--label", default="")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = None if value == "None" else type(getattr(DistillConfig, key, 0.0) or 0.0)(value)
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.budget is not None:
        overrides["time_budget_s"] = args.budget
    config = dataclasses.replace(DistillConfig(), **overrides)
    print("config", config.to_dict(), flush=True)

    teacher, bins = load_tiny_sd()
    snapshots: dict[int, dict] = {}

    def keep(step, loss, unet):
        if step in args.checkpoints:
            snapshots[step] = copy.deepcopy(unet.state_dict())

    load_before = os.getloadavg()
    student, log = distill_consistency(teacher, bins, config, callback=keep if args.checkpoints else None)
    load_after = os.getloadavg()
    print(f"distilled: {log['steps']} steps in {log['seconds']:.1f} s ({log['steps_per_s']:.2f} steps/s) on "
          f"{log['torch_threads']} threads, load {load_before[0]:.2f} → {load_after[0]:.2f}; data {log['data_seconds']:.1f} s; "
          f"loss {log['losses'][0]:.4f} → {log['final_loss']:.4f}", flush=True)  # fmt: skip

    classifier = load_classifier()
    ref = reference_stats(classifier)
    floor = fid_floor(args.n, classifier, reference=ref)
    prompts, labels = latent_prompts(args.n)
    noise = torch.randn((args.n, 4, 7, 7), generator=torch.Generator().manual_seed(0))  # z_T shared by every point
    points, hits, feats = {}, {}, {}
    for name, pipe, steps, is_student in (
        ("teacher_ddim25", teacher, 25, False), ("teacher_ddim4", teacher, 4, False), ("teacher_ddim2", teacher, 2, False),
        ("teacher_ddim1", teacher, 1, False), ("student_lcm1", student, 1, True), ("student_lcm2", student, 2, True),
        ("student_lcm4", student, 4, True),
    ):  # fmt: skip
        images, secs = sample_all(pipe, prompts, noise, steps, student=is_student, seed=0)
        points[name], hits[name], feats[name] = score(images, prompts, labels, bins, classifier, ref, floor)
        points[name].update(steps=steps, guidance_scale=1.0 if is_student else TEACHER_W, sample_seconds=round(secs, 2))
        print(f"{name:15s} {points[name]}", flush=True)
    vs25 = paired("student_lcm2", "teacher_ddim25", points, hits, feats, ref)
    target = {
        "student2_minus_teacher25": vs25,
        "within_0.02": vs25["digit_adherence"] >= -0.02,
        "rule": "met when the 2-step student's digit adherence is at most 0.02 below the teacher's DDIM-25 (n prompts, "
        "same z_T); differences paired per prompt",
    }
    buys = {f"student{k}_minus_teacher_ddim{k}": paired(f"student_lcm{k}", f"teacher_ddim{k}", points, hits, feats, ref)
            for k in (1, 2, 4)}  # fmt: skip
    print("target", target, "\nwhat distillation buys", buys, flush=True)

    curve = []
    for step in sorted(snapshots):
        ckpt = copy.deepcopy(student)
        ckpt.unet.load_state_dict(snapshots[step])
        images, _ = sample_all(ckpt, prompts, noise, 2, student=True, seed=0)
        name = f"student_lcm2@{step}"
        m, h, f = score(images, prompts, labels, bins, classifier, ref, floor)
        d = paired(name, "teacher_ddim25", {**points, name: m}, {**hits, name: h}, {**feats, name: f}, ref)
        curve.append({"step": step, **m, "minus_teacher25": d})
        print("checkpoint", curve[-1], flush=True)
    curve.append({"step": log["steps"], **points["student_lcm2"], "minus_teacher25": vs25})

    record = {
        "label": args.label,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "training_steps": log["steps"],
        "training_seconds": round(log["seconds"], 1),
        "steps_per_s": round(log["steps_per_s"], 2),
        "data_seconds": round(log["data_seconds"], 1),
        "final_loss": round(log["final_loss"], 5),
        "original_inference_steps": log["original_inference_steps"],
        "config": config.to_dict(),
        "teacher": "data/pretrained/tiny_sd, DDIM trailing, w = 3",
        "points": points,
        "target": target,
        "what_distillation_buys": buys,
        "student2_vs_training_steps": curve,
    }
    if args.save:
        save_student(student, bins, args.save, {**log, "measured": {"points": points, "target": target},
                                                "load_average_after": load_after})  # fmt: skip
        print(f"saved the student to {args.save}")
    if not args.no_record:
        existing = json.loads(OUT.read_text()) if OUT.is_file() else []
        write_json_atomic(OUT, existing + [record])
        print(f"appended the run to {OUT}")


if __name__ == "__main__":
    main()
