"""Mutation score of the unit tests and of the notebooks: do they notice a realistic bug in the library?

Each mutation below is one small, realistic bug (a sign flip, a dropped square root, an off-by-one in ᾱ, a negative
prompt silently ignored, a LoRA scaled by r/α instead of α/r, ...) written as data: the file, the exact original
snippet (it must occur exactly once, or the script stops), its replacement and what it models. For every mutation
the script, in a scratch copy of the repository (never in the working tree):

1. writes the mutated file;
2. unit stage: runs the mutation's targeted test files, and only if they all pass the whole unit suite
   (``pytest tests --ignore=tests/browser -x``, with 2 xdist workers); the mutation is *caught* if a test fails
   (the first failure is recorded) and also if a run times out (recorded as such);
3. notebook stage: runs, one at a time, the notebooks that teach the mutated code (``pytest --nbval -x``, quick
   mode, strict output comparison), each on its own: does that notebook alone notice the bug, and in which cell?
4. puts the original file back.

Before any mutation, the targeted test files and the involved notebooks run once unmutated in the same scratch copy
(the baseline): a verdict is only given where its baseline passed, otherwise it is recorded as ``baseline_failed`` and
left out of the scores. The whole unit suite also runs once unmutated, the first time a mutation needs it; tests that
already fail there are left out of the mutations' whole-suite runs (and listed in the results), so that "caught"
always means that a test which passes on the unmutated code fails.

Scores: unit = caught / mutations with a verdict; notebooks = mutations caught by at least one of their teaching
notebooks (what ``pytest --nbval notebooks/`` would report) / mutations with teaching notebooks and a verdict; the
results also give the share of (mutation, notebook) runs in which that one notebook caught the bug. Targets (issue):
both >= 90 %. Results go to ``benchmarks/results/mutation.json`` (written atomically), or to ``--out``. Not part of
``make test``.

    .venv/bin/python benchmarks/mutation_check.py --list                     # the mutations, checked, then exit
    .venv/bin/python benchmarks/mutation_check.py                            # everything (about 2 h on 2 cores)
    .venv/bin/python benchmarks/mutation_check.py --skip-notebooks --out /tmp/mut.json     # unit stage only
    .venv/bin/python benchmarks/mutation_check.py --only cfg-cond-base,lora-scale-r-over-alpha --out /tmp/m.json

The scratch copy holds the files git knows of (tracked, or untracked and not ignored), so ``.venv``, ``.git``,
``build/`` and caches stay out; the large files in ``data/`` are hard links (never written to). The virtualenv has
an editable install of the working tree, so every child process gets ``PYTHONPATH=<scratch>`` (notebook kernels
inherit pytest's environment) and the script checks that ``diffusion_lab`` is imported from the scratch copy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "mutation.json"
HARDLINK_MIN_BYTES = 256 * 1024  # data/ files at least this big are hard-linked into the scratch copy
TARGETED_TIMEOUT_S = 600
FULL_SUITE_TIMEOUT_S = 1200
NOTEBOOK_TIMEOUT_S = 600
TARGET_SCORE = 0.9
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]
UNIT_SUITE = ["tests", "--ignore=tests/browser", "-n", "2", "--dist", "loadfile"]


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    replacement: str
    description: str  # the realistic bug it models
    weakly_tested: bool  # in code the issue lists as weakly tested today
    tests: tuple[str, ...]  # test files to try first
    notebooks: tuple[str, ...]  # the notebooks that teach (call or derive) the mutated code, by number


NB = {
    "01": "01_forward_diffusion.ipynb",
    "02": "02_ddpm_from_scratch.ipynb",
    "03": "03_ddim_and_samplers.ipynb",
    "05": "05_text_conditioning_and_cross_attention.ipynb",
    "06": "06_classifier_free_guidance.ipynb",
    "07": "07_tiny_stable_diffusion.ipynb",
    "08": "08_rectified_flow_and_mmdit.ipynb",
    "11": "11_stable_diffusion_3.ipynb",
    "12": "12_fine_tuning.ipynb",
    "13s": "13_model_surgery_and_scaling_out.ipynb",
    "14": "14_super_resolution.ipynb",
    "15": "15_controlnet.ipynb",
    "16": "16_image_variations_and_video.ipynb",
}
METRIC_NOTEBOOKS = ("02", "03", "06", "08", "14")  # call evaluate / fid_floor / reference_stats themselves

M = Mutation
# fmt: off
MUTATIONS: tuple[Mutation, ...] = (
    # --- the core maths ----------------------------------------------------------------------------------------
    M("q-sample-dropped-sqrt", "diffusion_lab/maths/diffusion.py",
      "return ab**0.5 * x0 + (1 - ab) ** 0.5 * noise",
      "return ab**0.5 * x0 + (1 - ab) * noise",
      "forward process with the noise scaled by 1 − ᾱ_t instead of √(1 − ᾱ_t) (dropped square root)",
      False, ("tests/test_diffusion_math.py",), ("01", "02")),
    M("ddpm-posterior-dropped-sqrt", "diffusion_lab/maths/diffusion.py",
      "coef_xt = alpha_t**0.5 * (1 - ab_prev) / (1 - ab_t)",
      "coef_xt = alpha_t * (1 - ab_prev) / (1 - ab_t)",
      "DDPM posterior mean (Eq. 7) with α_t instead of √α_t in front of x_t",
      False, ("tests/test_diffusion_math.py", "tests/test_scheduler_parity.py"), ("02", "03")),
    M("ddim-alpha-prev-off-by-one", "diffusion_lab/schedulers/scheduling_ddim.py",
      "ab_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod",
      "ab_prev = self.alphas_cumprod[prev_t + 1] if prev_t >= 0 else self.final_alpha_cumprod",
      "DDIM step reads ᾱ at the paper's index t'+1 instead of the code's t' (off-by-one between conventions)",
      False, ("tests/test_scheduler_parity.py", "tests/test_diffusion_math.py"), ("03",)),
    M("sample-prediction-read-as-v", "diffusion_lab/maths/diffusion.py",
      "return model_output, eps_from_x0(x_t, model_output, ab_t)",
      "return x0_from_v(x_t, model_output, ab_t), eps_from_v(x_t, model_output, ab_t)",
      'a "sample" (x_0) prediction converted as if it were v',
      False, ("tests/test_diffusion_math.py", "tests/test_scheduler_parity.py"), ("03",)),
    M("cfg-cond-base", "diffusion_lab/maths/guidance.py",
      "return uncond + guidance_scale * (cond - uncond)",
      "return cond + guidance_scale * (cond - uncond)",
      "classifier-free guidance as ε_c + w·(ε_c − ε_∅) instead of ε_∅ + w·(ε_c − ε_∅)",
      False, ("tests/test_guidance.py", "tests/test_exercises_cfg.py"), ("02", "06", "07", "08")),
    M("drop-condition-inverted", "diffusion_lab/maths/guidance.py",
      "drop = (u < drop_prob).reshape",
      "drop = (u > drop_prob).reshape",
      "condition dropout replaces 1 − p of the captions by the null one instead of p",
      False, ("tests/test_guidance.py",), ("06",)),
    M("flow-path-swapped", "diffusion_lab/maths/flow.py",
      "return (1 - t) * x0 + t * noise",
      "return t * x0 + (1 - t) * noise",
      "rectified-flow path with data and noise swapped (t = 1 is the data)",
      False, ("tests/test_flow.py", "tests/test_exercises_flow.py"), ("08",)),
    M("scaled-linear-betas-not-squared", "diffusion_lab/maths/schedules.py",
      "return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2",
      "return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32)",
      "SD's scaled-linear schedule without the final square (β = linspace(√β_start, √β_end))",
      False, ("tests/test_scheduler_parity.py", "tests/test_diffusion_math.py"), ("01",)),
    M("img2img-strength-reversed", "diffusion_lab/pipelines/stable_diffusion.py",
      "t_start = max(num_inference_steps - init_steps, 0)",
      "t_start = max(init_steps, 0)",
      "img2img starts at index int(N·γ) (the number of steps to run) instead of N − int(N·γ): strength reversed",
      False, ("tests/test_pipeline.py",), ("07",)),
    M("inpaint-mask-inverted", "diffusion_lab/pipelines/stable_diffusion.py",
      "z = (1 - m) * keep + m * z",
      "z = m * keep + (1 - m) * z",
      "inpainting keeps the masked region and repaints the rest (mask convention 1 = keep)",
      False, ("tests/test_pipeline.py",), ("07",)),
    # --- weakly tested: attribute measurement ------------------------------------------------------------------
    M("size-square-root", "diffusion_lab/mnist/captions.py",
      "return 4 * (mu20 * mu02 - mu11**2).clamp_min(0) ** 0.25",
      "return 4 * (mu20 * mu02 - mu11**2).clamp_min(0) ** 0.5",
      "digit size d = 4·det(Σ)^½ instead of 4·det(Σ)^¼ (square root of the determinant, not fourth root)",
      True, ("tests/test_text.py",), ("05",)),
    M("attribute-adherence-wrong-word", "diffusion_lab/mnist/captions.py",
      "wants_high = (word == ATTRIBUTE_WORDS[name][1]) != negated",
      "wants_high = (word == ATTRIBUTE_WORDS[name][0]) != negated",
      'attribute adherence counts the wrong word of each pair as the high side ("thin" judged as "thick")',
      True, ("tests/test_text.py",), ("06", "07", "08", "15")),
    # --- weakly tested: training recipes -----------------------------------------------------------------------
    M("ema-decay-inverted", "diffusion_lab/training/loop.py",
      "torch._foreach_lerp_(ema_params, params, 1 - d)",
      "torch._foreach_lerp_(ema_params, params, d)",
      "EMA update θ_ema ← (1 − β)·θ_ema + β·θ (decay inverted: the average follows the raw weights)",
      True, ("tests/test_training.py",), ("02", "13s")),
    M("min-snr-v-weight-as-eps", "diffusion_lab/training/loss.py",
      "return clipped / (snr + 1)",
      "return clipped / snr",
      "Min-SNR-γ weight for v-prediction taken from the ε formula, min(SNR, γ)/SNR instead of /(SNR + 1)",
      True, ("tests/test_training.py",), ("02",)),
    M("training-v-target-swapped", "diffusion_lab/training/loss.py",
      "return velocity(x0, noise, alphas_cumprod_t)",
      "return velocity(noise, x0, alphas_cumprod_t)",
      "v target built as √ᾱ·x_0 − √(1−ᾱ)·ε (arguments of velocity swapped)",
      True, ("tests/test_training.py",), ("02",)),
    M("cosine-lr-runs-upwards", "diffusion_lab/training/loop.py",
      "(1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))",
      "(1 - min_factor) * 0.5 * (1 - math.cos(math.pi * min(1.0, progress)))",
      "cosine learning-rate schedule with the sign flipped: it rises from 10 % to the peak instead of decaying",
      True, ("tests/test_training.py",), ("02",)),
    M("latent-scaling-factor-inverted", "diffusion_lab/training/recipes.py",
      "s = 1.0 / means.double().std().item()",
      "s = means.double().std().item()",
      "latent scaling factor s = std(μ) instead of 1/std(μ): latents not normalised to unit variance",
      True, ("tests/test_recipes_latent.py",), ("07", "13s")),
    M("recipe-ships-raw-weights", "diffusion_lab/training/recipes.py",
      'unet = ema.model["denoiser"].eval()',
      "unet = unet.eval()",
      "the latent recipe's pipeline gets the raw last-iterate U-Net instead of its EMA average",
      True, ("tests/test_recipes_latent.py", "tests/test_surgery.py"), ("07", "13s")),
    M("recipe-condition-drop-wrong-field", "diffusion_lab/training/recipes.py",
      "ids = drop_condition(ids, null_ids, cfg.cond_drop_prob, g)",
      "ids = drop_condition(ids, null_ids, cfg.caption_drop_prob, g)",
      "text recipes drop whole captions with the attribute-word probability (25 %) instead of cond_drop_prob (5 %)",
      True, ("tests/test_recipes_latent.py",), ("06", "07", "08", "13s")),
    M("flow-recipe-target-sign", "diffusion_lab/training/recipes.py",
      "return (v - flow_velocity(z0, noise)).pow(2).mean()",
      "return (v - flow_velocity(noise, z0)).pow(2).mean()",
      "rectified-flow recipe trains on the velocity z_0 − ε instead of ε − z_0",
      True, ("tests/test_training_helpers.py", "tests/test_recipes_latent.py", "tests/test_flow_pipeline.py"), ("08",)),
    # --- weakly tested: fine-tuning losses ---------------------------------------------------------------------
    M("finetune-v-model-eps-target", "diffusion_lab/training/finetune.py",
      "target = training_target(prediction_type, latents, noise, ab_t)",
      'target = training_target("epsilon", latents, noise, ab_t)',
      "fine-tuning loss of a v-prediction model uses the ε target",
      True, ("tests/test_finetune.py",), ("12",)),
    M("dreambooth-prior-weight-ignored", "diffusion_lab/training/finetune.py",
      "loss = loss + prior_weight * prior",
      "loss = loss + prior",
      "DreamBooth adds the prior-preservation term with weight 1 whatever λ is",
      True, ("tests/test_finetune.py",), ("12",)),
    M("textual-inversion-mask-inverted", "diffusion_lab/training/finetune.py",
      "hook = table.register_hook(lambda grad: grad * keep)",
      "hook = table.register_hook(lambda grad: grad * (1 - keep))",
      "textual inversion freezes the new token's row and trains every other word (gradient mask inverted)",
      True, ("tests/test_finetune.py",), ("12",)),
    M("lora-scale-r-over-alpha", "diffusion_lab/bridge/lora.py",
      "return (alpha / r) * (B @ A)",
      "return (r / alpha) * (B @ A)",
      "LoRA update scaled by r/α instead of α/r",
      True, ("tests/test_lora.py",), ("12",)),
    # --- weakly tested: surgery ----------------------------------------------------------------------------------
    M("prune-keeps-smallest", "diffusion_lab/training/surgery.py",
      "drop = torch.topk(scores, k, largest=False).indices",
      "drop = torch.topk(scores, k, largest=True).indices",
      "magnitude pruning zeroes the largest weights and keeps the smallest",
      True, ("tests/test_surgery.py",), ("13s",)),
    M("int8-scale-uint8-range", "diffusion_lab/training/surgery.py",
      "s = flat.abs().amax(1) / 127",
      "s = flat.abs().amax(1) / 255",
      "int8 scale from the unsigned range (max|w|/255): half the codes clip at ±127",
      True, ("tests/test_surgery.py",), ("13s",)),
    # --- weakly tested: metrics ----------------------------------------------------------------------------------
    M("fid-trace-factor-dropped", "diffusion_lab/mnist/metrics.py",
      "- 2 * np.trace(covmean)",
      "- np.trace(covmean)",
      "Fréchet distance with tr((Σ₁Σ₂)^½) subtracted once instead of twice",
      True, ("tests/test_metrics.py",), METRIC_NOTEBOOKS),
    M("fid-floor-from-test-split", "diffusion_lab/mnist/metrics.py",
      'images, _ = load_mnist("train")',
      'images, _ = load_mnist("test")',
      "the FID floor draws its real images from the reference (test) set itself instead of the training set",
      True, ("tests/test_metrics.py",), METRIC_NOTEBOOKS),
    # --- weakly tested: negative prompts, guidance in the pipeline -----------------------------------------------
    M("negative-prompt-ignored", "diffusion_lab/pipelines/stable_diffusion.py",
      'uc, umask, upooled = self.encode_prompt(negatives or [""] * b)',
      'uc, umask, upooled = self.encode_prompt([""] * b)',
      "the pipeline always encodes the empty prompt for the unconditional branch: negative prompts ignored",
      True, ("tests/test_pipeline.py",), ("06",)),
    M("pipeline-cfg-branches-swapped", "diffusion_lab/pipelines/stable_diffusion.py",
      "pred_uncond, pred_text = pred.chunk(2)",
      "pred_text, pred_uncond = pred.chunk(2)",
      "the pipeline reads the batch [uncond; cond] as [cond; uncond]: guidance pushes away from the prompt",
      True, ("tests/test_pipeline.py",), ("06", "07")),
    # --- weakly tested: exercise checkers ------------------------------------------------------------------------
    M("check-cfg-reference-swapped", "diffusion_lab/course/exercises/nb06_guidance.py",
      "want = uncond + w * (cond - uncond)",
      "want = cond + w * (uncond - cond)",
      "the CFG exercise's reference swaps cond and uncond: correct answers are rejected",
      True, ("tests/test_exercises_cfg.py",), ("06", "11")),
    M("check-prune-ranks-signed-weights", "diffusion_lab/course/exercises/nb13_surgery.py",
      "keep[w.abs().flatten().argsort()[:k]] = False",
      "keep[w.flatten().argsort()[:k]] = False",
      "the pruning exercise's reference ranks weights by w instead of |w| (the mistake it should catch)",
      True, ("tests/test_exercises_finetune.py",), ("13s",)),
    M("check-img2img-start-is-steps-run", "diffusion_lab/course/exercises/nb07_tiny_sd.py",
      "return max(num_inference_steps - init_steps, 0)",
      "return init_steps",
      "the img2img exercise's reference returns the number of steps run, int(N·γ), instead of the start index",
      True, ("tests/test_exercises_sd.py",), ("07",)),
)
# fmt: on
del M


# ----------------------------------------------------------------------------------------------------------------------
# Running things
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One pytest process: exit code (None on timeout), seconds, output, and the failures its summary lists."""

    rc: int | None
    seconds: float
    output: str
    failures: list[tuple[str, str]]  # (node id, message) from the FAILED / ERROR lines, in order

    @property
    def timed_out(self) -> bool:
        return self.rc is None

    @property
    def failed(self) -> bool:
        """Tests failed (1) or collection was interrupted by errors (2); a timeout also counts."""
        return self.timed_out or self.rc in (1, 2)

    @property
    def passed(self) -> bool:
        return self.rc == 0

    def summary(self) -> dict:
        counts = [line.strip("= ") for line in self.output.splitlines() if RESULT_LINE.search(line)]
        return {"rc": self.rc, "timed_out": self.timed_out, "seconds": round(self.seconds, 1),
                "pytest": counts[-1] if counts else None}  # fmt: skip


RESULT_LINE = re.compile(r"\b\d+ (passed|failed|errors?|deselected|skipped)\b.* in [\d.]+s")


SUMMARY_LINE = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - (.*))?$")


def run_pytest(args: list[str], cwd: Path, env: dict, timeout_s: float) -> Run:
    """``python -m pytest <args>`` in ``cwd``; on timeout the whole process group is stopped (SIGTERM, then KILL)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *PYTEST, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        out = ""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                out, _ = proc.communicate(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        rc = None
    lines = (out or "").splitlines()
    first_error = next((line[1:].strip() for line in lines if line.startswith("E ")), "")  # pytest's "E  ..." lines
    failures = []
    for line in lines:
        m = SUMMARY_LINE.match(line.strip())
        if m:
            message = m.group(2) or ""  # cut to the terminal's width; the first "E" line is whole
            if first_error and (not message or message.endswith("...")):
                message = first_error
            failures.append((m.group(1), message[:300]))
    return Run(rc, time.perf_counter() - start, out or "", failures)


def status(run: Run, details: str = "") -> str:
    """One log line for a baseline run: passed/FAILED, seconds, and on failure ``details`` and the output's tail."""
    if run.passed:
        return f"  passed in {run.seconds:.0f} s"
    return f"  FAILED in {run.seconds:.0f} s{details}\n{tail(run.output)}"


def failing_files(run: Run) -> set[str]:
    return {node.split("::")[0] for node, _ in run.failures}


def tail(text: str, n: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


# ----------------------------------------------------------------------------------------------------------------------
# The scratch copy
# ----------------------------------------------------------------------------------------------------------------------


def repo_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore (so no .venv, build/, caches), that exist now."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True,
        capture_output=True,
    ).stdout.decode()  # fmt: skip
    return sorted({p for p in out.split("\0") if p and (ROOT / p).is_file()})


def make_scratch(base: str | None) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="diffusion-lab-mutation-", dir=base))
    linked = copied = 0
    for rel in repo_files():
        src, dst = ROOT / rel, scratch / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel.startswith("data/") and src.stat().st_size >= HARDLINK_MIN_BYTES:
            try:
                os.link(src, dst)
                linked += 1
                continue
            except OSError:  # another file system: copy instead
                pass
        shutil.copy2(src, dst)
        copied += 1
    print(f"scratch copy {scratch}: {copied} files copied, {linked} large data files hard-linked", flush=True)
    return scratch


def child_env(scratch: Path) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(scratch), DIFFUSION_LAB_SMOKE="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("DIFFUSION_LAB_DATA", None)  # data from the scratch copy's data/
    return env


def verify_imports(scratch: Path, env: dict) -> None:
    """Fail loudly unless ``import diffusion_lab`` resolves inside the scratch copy, from its root and notebooks/."""
    want = (scratch / "diffusion_lab").resolve()
    for cwd in (scratch, scratch / "notebooks"):
        got = subprocess.run(
            [sys.executable, "-c", "import diffusion_lab; print(diffusion_lab.__file__)"], cwd=cwd, env=env,
            capture_output=True, text=True,
        )  # fmt: skip
        path = Path(got.stdout.strip() or "?").resolve()
        if got.returncode != 0 or not path.is_relative_to(want):
            sys.exit(
                f"diffusion_lab imported from {path} (cwd {cwd}), not from the scratch copy {want}: the mutations "
                f"would not be tested. stderr: {got.stderr.strip()[-500:]}"
            )
    print(
        f"diffusion_lab resolves inside the scratch copy from {scratch.name}/ and {scratch.name}/notebooks/", flush=True
    )


def check_mutations(mutations: tuple[Mutation, ...], root: Path) -> None:
    """Every original snippet must occur exactly once and differ from its replacement; ids unique; files exist."""
    problems = []
    ids = [m.id for m in mutations]
    problems += [f"duplicate id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for m in mutations:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.id}: {m.file} does not exist")
            continue
        count = path.read_text(encoding="utf-8").count(m.original)
        if count != 1:
            problems.append(f"{m.id}: the original snippet occurs {count} times in {m.file} (must be exactly once)")
        if m.original == m.replacement:
            problems.append(f"{m.id}: replacement equals the original")
        problems += [f"{m.id}: no test file {t}" for t in m.tests if not (root / t).is_file()]
        problems += [f"{m.id}: unknown notebook {n!r}" for n in m.notebooks if n not in NB]
    if problems:
        sys.exit("mutation table is out of date with the code:\n  " + "\n  ".join(problems))


# ----------------------------------------------------------------------------------------------------------------------
# Baselines and the two stages
# ----------------------------------------------------------------------------------------------------------------------


class Baselines:
    """Unmutated runs in the scratch copy: targeted test files, whole unit suite (lazily), each notebook."""

    def __init__(self, scratch: Path, env: dict):
        self.scratch, self.env = scratch, env
        self.test_files_failing: set[str] = set()
        self.targeted: dict | None = None
        self.full: dict | None = None
        self._full_args: list[str] | None = None
        self.notebooks: dict[str, dict] = {}

    def run_targeted(self, files: list[str]) -> None:
        print(f"baseline: {len(files)} targeted test files, unmutated ...", flush=True)
        run = run_pytest(files, self.scratch, self.env, FULL_SUITE_TIMEOUT_S)  # one process, as the mutation runs
        self.test_files_failing = failing_files(run) if not run.timed_out else set(files)
        if not run.passed and not run.failures:  # an error pytest did not attribute to a file: trust none
            self.test_files_failing = set(files)
        self.targeted = {**run.summary(), "files": files, "failing": [n for n, _ in run.failures]}
        print(status(run, f": {sorted(self.test_files_failing)}"), flush=True)

    def full_suite_args(self) -> list[str] | None:
        """The whole unit suite's pytest arguments without the tests that already fail unmutated (deselected; a
        file that fails to collect is ignored), so that "caught" still means a test that passes turned red; None
        when the unmutated run gives no usable baseline (a timeout, or pytest failing without naming a test)."""
        if self.full is None:
            print("baseline: whole unit suite, unmutated ...", flush=True)
            run = run_pytest(UNIT_SUITE, self.scratch, self.env, FULL_SUITE_TIMEOUT_S)
            failing = [n for n, _ in run.failures]
            usable = run.passed or (run.rc in (1, 2) and bool(failing))
            excluded = [f"--deselect={n}" if "::" in n else f"--ignore={n}" for n in failing]
            self.full = {**run.summary(), "failing": failing, "excluded_from_mutation_runs": usable and bool(failing)}
            self._full_args = [*UNIT_SUITE, *excluded] if usable else None
            print(status(run, f" ({len(failing)} failing tests are left out of the mutation runs)"), flush=True)
        return self._full_args

    def run_notebook(self, nb: str) -> None:
        print(f"baseline: notebook {nb}, unmutated ...", flush=True)
        run = run_pytest(["--nbval", "-x", f"notebooks/{NB[nb]}"], self.scratch, self.env, NOTEBOOK_TIMEOUT_S)
        self.notebooks[nb] = {**run.summary(), "failing": [n for n, _ in run.failures]}
        print(status(run), flush=True)

    def notebook_ok(self, nb: str) -> bool:
        return self.notebooks.get(nb, {}).get("rc") == 0


def unit_stage(m: Mutation, base: Baselines) -> dict:
    """Targeted test files first (-x); only if they all pass, the whole unit suite (-x, 2 workers)."""
    result = {"verdict": None, "caught": None, "stage": None, "first_failure": None, "message": None,
              "seconds": 0.0, "runs": []}  # fmt: skip
    bad = sorted(set(m.tests) & base.test_files_failing)
    if bad:
        result.update(verdict="baseline_failed", message=f"unmutated baseline fails in {bad}")
        return result
    for stage in ("targeted", "full"):
        if stage == "targeted":
            args, timeout_s = [*m.tests, "-x"], TARGETED_TIMEOUT_S
        else:
            suite = base.full_suite_args()
            if suite is None:
                result.update(verdict="baseline_failed", message="the unmutated unit suite gives no usable baseline")
                return result
            args, timeout_s = [*suite, "-x"], FULL_SUITE_TIMEOUT_S
        run = run_pytest(args, base.scratch, base.env, timeout_s)
        result["runs"].append({"stage": stage, **run.summary()})
        result["seconds"] = round(result["seconds"] + run.seconds, 1)
        if run.failed:
            node, msg = run.failures[0] if run.failures else (None, "")
            verdict = "timeout" if run.timed_out else "caught"
            result.update(verdict=verdict, caught=True, stage=stage, first_failure=node, message=msg or None)
            if run.timed_out:
                result["message"] = f"no result within {timeout_s} s (counted as caught)"
            return result
        if not run.passed:  # pytest itself failed (usage error, no tests): no verdict
            result.update(verdict="error", stage=stage, message=tail(run.output, 5))
            return result
    result.update(verdict="survived", caught=False, stage="full")
    return result


ANSI = re.compile(r"\x1b\[[0-9;]*m")
EXCEPTION_LINE = re.compile(r"^\w*(Error|Exception|Interrupt)\b(:.*)?$")


def nbval_failure(output: str) -> dict:
    """What nbval's report says about the failing cell: why (outputs differ, an exception, a timeout), the first
    line of the cell's source, and the exception (e.g. the AssertionError of a proof that no longer holds)."""
    lines = [line.rstrip() for line in ANSI.sub("", output).splitlines()]
    reason = next((m.group(1) for line in lines if (m := re.match(r"^Cell \d+: (.+)$", line))), None)
    source = None
    if "Input:" in lines:
        source = next((line.strip() for line in lines[lines.index("Input:") + 1 :] if line.strip()), None)
    after = lines[lines.index("Traceback:") :] if "Traceback:" in lines else []
    exception = next((line for line in after if EXCEPTION_LINE.match(line.strip())), None)
    return {"reason": reason, "cell_source": source and source[:120], "exception": exception and exception[:300]}


def notebook_stage(m: Mutation, base: Baselines, unmutated_baseline, all_notebooks: bool = False) -> dict:
    """Run the teaching notebooks one by one; unless ``all_notebooks``, stop at the first that catches the bug (the
    verdict, "caught by a notebook that teaches the code", is then known; the rest are recorded as not run).
    A notebook's unmutated baseline runs the first time it is needed, through ``unmutated_baseline(nb)``, which puts
    the original file back while it runs."""
    out = {}
    for nb in m.notebooks:
        if not all_notebooks and any(v["caught"] for v in out.values()):
            out[NB[nb]] = {"verdict": "not_run", "caught": None, "cell": None, "seconds": 0.0}
            continue
        if nb not in base.notebooks:
            unmutated_baseline(nb)
        if not base.notebook_ok(nb):
            out[NB[nb]] = {"verdict": "baseline_failed", "caught": None, "cell": None, "seconds": 0.0}
            continue
        run = run_pytest(["--nbval", "-x", f"notebooks/{NB[nb]}"], base.scratch, base.env, NOTEBOOK_TIMEOUT_S)
        node = run.failures[0][0] if run.failures else None
        if run.failed:
            verdict = "timeout" if run.timed_out else "caught"
        else:
            verdict = "survived" if run.passed else "error"
        out[NB[nb]] = {
            "verdict": verdict, "caught": True if run.failed else (False if run.passed else None),
            "cell": node.split("::", 1)[1] if node and "::" in node else None,  # nbval's name, e.g. "Cell 4"
            **(nbval_failure(run.output) if run.failures else {}), "seconds": round(run.seconds, 1), "rc": run.rc,
        }  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------


def score(caught: int, valid: int) -> float | None:
    return round(caught / valid, 4) if valid else None


def summarise(records: list[dict], skip_notebooks: bool) -> dict:
    unit_valid = [r for r in records if r["unit"]["caught"] is not None]
    unit_caught = [r for r in unit_valid if r["unit"]["caught"]]
    with_nb = [r for r in records if r["teaching_notebooks"]]
    nb_valid = [r for r in with_nb if r["notebook_caught"] is not None]
    nb_caught = [r for r in nb_valid if r["notebook_caught"]]
    pairs = [v for r in records for v in r["notebooks"].values() if v["caught"] is not None]
    unit_score, nb_score = score(len(unit_caught), len(unit_valid)), score(len(nb_caught), len(nb_valid))
    notebooks = {
        "with_teaching_notebooks": len(with_nb),
        "with_verdict": len(nb_valid),
        "caught": len(nb_caught),
        "no_verdict": [r["id"] for r in with_nb if r["notebook_caught"] is None],
        "survivors": [r["id"] for r in nb_valid if not r["notebook_caught"]],
        "score": nb_score,
        "notebook_runs": len(pairs),  # (mutation, teaching notebook) runs with a verdict: each notebook on its own
        "notebook_runs_caught": sum(bool(v["caught"]) for v in pairs),
        "notebook_runs_score": score(sum(bool(v["caught"]) for v in pairs), len(pairs)),
    }
    return {
        "mutations": len(records),
        "weakly_tested": sum(r["weakly_tested"] for r in records),
        "unit": {
            "with_verdict": len(unit_valid),
            "caught": len(unit_caught),
            "caught_by_targeted_files": sum(r["unit"]["stage"] == "targeted" for r in unit_caught),
            "timeouts": sum(r["unit"]["verdict"] == "timeout" for r in records),
            "no_verdict": [r["id"] for r in records if r["unit"]["caught"] is None],
            "survivors": [r["id"] for r in unit_valid if not r["unit"]["caught"]],
            "score": unit_score,
            "weakly_tested_score": score(
                sum(r["weakly_tested"] for r in unit_caught), sum(r["weakly_tested"] for r in unit_valid)
            ),
        },
        "notebooks": None if skip_notebooks else notebooks,
        "targets": {
            "threshold": TARGET_SCORE,
            "unit_met": unit_score is not None and unit_score >= TARGET_SCORE,
            "notebooks_met": None if skip_notebooks else (nb_score is not None and nb_score >= TARGET_SCORE),
        },
    }


def git_state() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def write_json_atomic(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    os.replace(tmp, path)


def print_list(mutations: tuple[Mutation, ...]) -> None:
    for m in mutations:
        nbs = ",".join(m.notebooks) or "-"
        print(
            f"{m.id:36s} {m.file.removeprefix('diffusion_lab/'):32s} weak={'yes' if m.weakly_tested else 'no ':3s} "
            f"nb={nbs:16s} {m.description}"
        )
    weak = sum(m.weakly_tested for m in mutations)
    print(f"{len(mutations)} mutations ({weak} in weakly tested code); every original snippet occurs exactly once")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the mutations (after checking them) and exit")
    parser.add_argument("--only", help="comma-separated mutation ids to run (default: all)")
    parser.add_argument("--skip-notebooks", action="store_true", help="unit stage only")
    parser.add_argument(
        "--all-notebooks", action="store_true", help="run every teaching notebook, not only up to the first that catches"
    )
    parser.add_argument("--keep-scratch", action="store_true", help="keep the scratch copy (its path is printed)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    parser.add_argument("--scratch-base", help="folder for the scratch copy (default: the system's temp folder)")
    args = parser.parse_args(argv)

    mutations = MUTATIONS
    if args.only:
        wanted = [i.strip() for i in args.only.split(",") if i.strip()]
        unknown = sorted(set(wanted) - {m.id for m in MUTATIONS})
        if unknown:
            parser.error(f"unknown mutation ids {unknown}; see --list")
        mutations = tuple(m for m in MUTATIONS if m.id in wanted)
    check_mutations(MUTATIONS, ROOT)
    if args.list:
        print_list(mutations)
        return 0

    started, t0 = datetime.now(UTC), time.perf_counter()
    command = shlex.join([os.path.relpath(sys.executable, ROOT), os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    scratch = make_scratch(args.scratch_base)
    records: list[dict] = []
    try:
        check_mutations(mutations, scratch)  # the copy may differ from the tree checked above if files just changed
        env = child_env(scratch)
        verify_imports(scratch, env)
        base = Baselines(scratch, env)
        base.run_targeted(sorted({t for m in mutations for t in m.tests}))
        # notebook baselines run lazily, the first time a mutation needs them (most mutations stop at their first)

        for k, m in enumerate(mutations, 1):
            path = scratch / m.file
            if path.stat().st_nlink != 1:
                sys.exit(f"{path} is a hard link: refusing to write through it")
            original = path.read_text(encoding="utf-8")
            print(f"[{k}/{len(mutations)}] {m.id} ({m.file}): {m.description}", flush=True)
            try:
                mutated = original.replace(m.original, m.replacement, 1)
                path.write_text(mutated, encoding="utf-8")

                def unmutated_baseline(nb: str, path=path, original=original, mutated=mutated) -> None:
                    path.write_text(original, encoding="utf-8")
                    try:
                        base.run_notebook(nb)
                    finally:
                        path.write_text(mutated, encoding="utf-8")

                unit = unit_stage(m, base)
                where = f" ({unit['stage']}: {unit['first_failure']})" if unit["first_failure"] else ""
                print(f"  unit: {unit['verdict']}{where}, {unit['seconds']:.0f} s", flush=True)
                notebooks = {} if args.skip_notebooks else notebook_stage(m, base, unmutated_baseline, args.all_notebooks)
                for name, v in notebooks.items():
                    where = f" at {v['cell']}" if v["cell"] else ""
                    print(f"  {name}: {v['verdict']}{where}, {v['seconds']:.0f} s", flush=True)
            finally:
                path.write_text(original, encoding="utf-8")
            verdicts = [v["caught"] for v in notebooks.values() if v["caught"] is not None]
            records.append({
                "id": m.id, "file": m.file, "description": m.description, "weakly_tested": m.weakly_tested,
                "original": m.original, "replacement": m.replacement, "targeted_tests": list(m.tests),
                "teaching_notebooks": [NB[n] for n in m.notebooks], "unit": unit, "notebooks": notebooks,
                "notebook_caught": (any(verdicts) if verdicts else None) if m.notebooks and notebooks else None,
            })  # fmt: skip
            partial = {"summary": {**summarise(records, args.skip_notebooks), "complete": False,
                                   "command": command, "date": started.isoformat(timespec="seconds")},
                       "mutations": records}  # fmt: skip
            write_json_atomic(args.out, partial)  # a run cut short still leaves what it measured
    finally:
        if args.keep_scratch:
            print(f"scratch copy kept at {scratch}", flush=True)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    summary = summarise(records, args.skip_notebooks)
    summary.update(
        complete=True,
        selection="all" if mutations == MUTATIONS else [m.id for m in mutations],
        notebooks_run=not args.skip_notebooks,
        baseline={"targeted_tests": base.targeted, "unit_suite": base.full, "notebooks": base.notebooks},
        git=git_state(),
        date=started.isoformat(timespec="seconds"),
        total_seconds=round(time.perf_counter() - t0, 1),
        command=command,
        python=sys.version.split()[0],
    )
    write_json_atomic(args.out, {"summary": summary, "mutations": records})
    u, n = summary["unit"], summary["notebooks"]
    print(f"unit tests: {u['caught']}/{u['with_verdict']} caught (score {u['score']}); survivors {u['survivors']}")
    if n is not None:
        print(f"notebooks: {n['caught']}/{n['with_verdict']} caught (score {n['score']}); survivors {n['survivors']}")
    print(f"targets met: {summary['targets']}; {summary['total_seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
