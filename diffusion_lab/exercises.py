"""Checks for the notebooks' exercises: each tells the student right or wrong, with a hint when wrong.

Every ``check_*`` function prints one line starting with ✅ or ❌ and returns True or False, so a notebook cell
can also ``assert`` it. They compare the student's answer with the library on several random cases; an error
raised by the student's code becomes a ❌ with the error message, never a crash of the check.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from diffusion_lab.diffusion import q_sample
from diffusion_lab.schedules import inference_timesteps, snr
from diffusion_lab.widgets import schedule_table

__all__ = [
    "check_q_sample",
    "check_snr_crossing",
    "check_trailing_timesteps",
    "check_ddpm_loss",
    "check_ddpm_step",
    "check_ddim_step",
    "check_timesteps_answer",
    "check_reparameterize",
    "check_gaussian_kl",
    "check_scaling_factor",
    "check_tokenize",
    "check_cross_attention",
    "check_pooled_output",
    "check_cfg_combine",
    "check_rescale_noise_cfg",
    "check_best_guidance",
    "check_img2img_start",
    "check_latent_mask",
    "check_inpaint_blend",
    "check_flow_path",
    "check_time_shift",
    "check_flow_euler_step",
    "check_sdxl_time_ids",
    "check_refiner_split",
    "check_sd3_joint_text",
    "check_lora_forward",
    "check_prior_preservation_loss",
    "check_magnitude_prune",
    "check_psnr",
    "check_control_keep",
    "check_noise_image_embedding",
]


def _report(ok: bool, what: str, hint: str) -> bool:
    print(f"✅ {what}: correct" if ok else f"❌ {what}: not yet. Hint: {hint}")
    return ok


def check_q_sample(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x0, t, noise, alphas_cumprod)`` must return x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise, one t per sample.

    Tried on MNIST-shaped batches (B, 1, 28, 28) and on 2-D points (B, 2).
    """
    g = torch.Generator().manual_seed(123)
    ab = schedule_table()["linear"]
    for shape in [(4, 1, 28, 28), (3, 2)]:
        x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        t = torch.randint(0, 1000, (shape[0],), generator=g)
        want = q_sample(x0, t, noise, ab)  # before the student's code runs (it might change x0 in place)
        try:
            got = fn(x0.clone(), t.clone(), noise.clone(), ab.clone())
        except Exception as e:  # the student's code raised: say so instead of failing the whole notebook
            return _report(False, "q_sample", f"your function raised {type(e).__name__}: {e}")
        if got is None:
            return _report(False, "q_sample", "your function returns None: fill in its body and return x_t")
        got = torch.as_tensor(got)
        if got.shape != want.shape:
            return _report(
                False,
                "q_sample",
                f"for x0 of shape {shape} return shape {tuple(want.shape)}, not "
                f"{tuple(got.shape)}: reshape ᾱ_t to (B, 1, ..., 1) with x0.ndim "
                "dimensions, e.g. alphas_cumprod[t].reshape(-1, *[1] * (x0.ndim - 1))",
            )
        if not torch.allclose(got.to(want.dtype), want, atol=1e-5):
            return _report(
                False,
                "q_sample",
                "x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise; square roots of ᾱ, not of β, and each sample uses its own t",
            )
    return _report(True, "q_sample", "")


def check_snr_crossing(t_answer, schedule: str = "squaredcos_cap_v2") -> bool:
    """The first t at which SNR_t = ᾱ_t/(1−ᾱ_t) drops below 1 (0 dB) for ``schedule``."""
    what = f"0 dB crossing of {schedule}"
    want = int(torch.nonzero(snr(schedule_table()[schedule]) < 1)[0])
    if t_answer is None:
        return _report(False, what, "set answer to an integer t")
    try:
        answer = int(t_answer)  # accepts Python ints, NumPy integers and one-element tensors
    except (TypeError, ValueError, RuntimeError):
        return _report(
            False, what, "answer must be one integer t, e.g. int(torch.nonzero(mask)[0]), not a list or a mask"
        )
    return _report(
        answer == want, what, "find the first index where snr(alphas_cumprod) < 1, e.g. with torch.nonzero(...)[0]"
    )


def check_trailing_timesteps(fn: Callable[[int, int], np.ndarray]) -> bool:
    """``fn(n, T)`` must return the ``trailing`` timesteps: round(T − k·T/n) − 1 for k = 0..n−1 (ties to even)."""
    what = "trailing spacing"
    for n, T in [(1, 1000), (4, 1000), (7, 1000), (50, 1000), (3, 10), (4, 10)]:
        try:
            out = fn(n, T)
        except Exception as e:
            return _report(False, what, f"your function raised {type(e).__name__}: {e}")
        if out is None:
            return _report(False, what, "your function returns None: fill in its body")
        got = np.asarray(out).astype(np.int64).tolist()
        want = inference_timesteps(n, T, "trailing").tolist()
        if got != want:
            return _report(
                False,
                what,
                f"for n={n}, T={T} expected {want}, got {got}: start at T−1, step down by "
                "T/n, round halves to even (Python's round and np.round do)",
            )
    return _report(True, what, "")


def check_ddpm_loss(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(model, x0, t, noise, alphas_cumprod)`` must return mean((ε − model(x_t, t))²) with x_t from q_sample."""
    what = "DDPM loss"
    g = torch.Generator().manual_seed(7)
    ab = schedule_table()["linear"]

    def model(x_t, t):  # a fixed stand-in for a network that depends on x_t and t
        return torch.tanh(x_t) * (t.float().reshape(-1, *[1] * (x_t.ndim - 1)) / 1000)

    x0, noise = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    t = torch.randint(0, 1000, (6,), generator=g)
    want = (noise - model(q_sample(x0, t, noise, ab), t)).pow(2).mean()
    try:
        got = fn(model, x0.clone(), t.clone(), noise.clone(), ab.clone())
    except Exception as e:
        return _report(False, what, f"your function raised {type(e).__name__}: {e}")
    if got is None:
        return _report(False, what, "your function returns None: fill in its body")
    got = torch.as_tensor(got)
    if got.numel() != 1:
        return _report(False, what, f"return one number (the mean over the batch), got shape {tuple(got.shape)}")
    return _report(
        bool(torch.allclose(got.float(), want, atol=1e-6)),
        what,
        "x_t = q_sample(x0, t, noise, ᾱ); the target is the noise; average the squared error",
    )


def check_ddpm_step(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(eps_hat, x_t, ab_t, ab_prev, z)`` must return one DDPM step (fixed_small variance, no clipping)."""
    from diffusion_lab.diffusion import ddpm_step, x0_from_eps

    what = "DDPM step"
    g = torch.Generator().manual_seed(8)
    ab = schedule_table()["linear"]
    for t, tp in [(999, 998), (500, 499), (10, 9)]:
        eps, x_t, z = (torch.randn(3, 2, generator=g) for _ in range(3))
        want = ddpm_step(x0_from_eps(x_t, eps, ab[t]), x_t, ab[t], ab[tp], z)
        try:
            got = fn(eps.clone(), x_t.clone(), ab[t].clone(), ab[tp].clone(), z.clone())
        except Exception as e:
            return _report(False, what, f"your function raised {type(e).__name__}: {e}")
        if got is None:
            return _report(False, what, "your function returns None: fill in its body")
        if not torch.allclose(torch.as_tensor(got).float(), want, atol=1e-4):
            return _report(
                False,
                what,
                f"wrong at t={t}: predict x̂_0 from ε̂ first, then the posterior mean of "
                "DDPM Eq. 7 with β'_t = 1 − ᾱ_t/ᾱ_prev, plus sqrt(β̃)·z",
            )
    return _report(True, what, "")


def check_ddim_step(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x0_hat, eps_hat, ab_prev, sigma)`` must return √ᾱ'·x̂_0 + √(1 − ᾱ' − σ²)·ε̂ (DDIM Eq. 12, no noise)."""
    from diffusion_lab.diffusion import ddim_sigma, ddim_step

    what = "DDIM step"
    g = torch.Generator().manual_seed(9)
    ab = schedule_table()["linear"]
    for t, tp, eta in [(999, 949, 0.0), (500, 450, 1.0), (100, 50, 0.5)]:
        x0, eps = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
        sigma = ddim_sigma(ab[t], ab[tp], eta)
        want = ddim_step(x0, eps, ab[tp], sigma)
        try:
            got = fn(x0.clone(), eps.clone(), ab[tp].clone(), sigma.clone())
        except Exception as e:
            return _report(False, what, f"your function raised {type(e).__name__}: {e}")
        if got is None:
            return _report(False, what, "your function returns None: fill in its body")
        if not torch.allclose(torch.as_tensor(got).float(), want, atol=1e-5):
            return _report(False, what, f"wrong for eta={eta}: the direction term is sqrt(1 − ᾱ' − σ²)·ε̂")
    return _report(True, what, "")


def check_timesteps_answer(answer, n: int, spacing: str, T: int = 1000) -> bool:
    """``answer`` must be the ``n`` timesteps a sampler with this ``spacing`` visits, in order."""
    what = f"{spacing} timesteps for n={n}"
    if answer is None:
        return _report(False, what, "set answer to a list of integers")
    try:
        got = [int(v) for v in answer]
    except (TypeError, ValueError):
        return _report(False, what, "answer must be a list of integers, e.g. scheduler.timesteps.tolist()")
    return _report(
        got == inference_timesteps(n, T, spacing).tolist(),
        what,
        "call set_timesteps(n) on the scheduler and read .timesteps (in the order it returns them)",
    )


# --------------------------------------------------------------------------------------------- notebook 04


def _call(fn: Callable, what: str, *args):
    """(result, None) or (None, the ❌ line's hint) when the student's function raised or returned None."""
    try:
        out = fn(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
    except Exception as e:
        return None, f"your function raised {type(e).__name__}: {e}"
    if out is None:
        return None, "your function returns None: fill in its body and return the result"
    return out, None


def _call_tensor(fn: Callable, what: str, want: torch.Tensor, wrong_shape: str, *args) -> tuple[torch.Tensor, str]:
    """``fn(*args)`` as a tensor of ``want``'s dtype, and a hint if it raised, returned a placeholder or has the
    wrong shape (``wrong_shape`` is the hint then, formatted with ``want=`` and ``got=`` shapes)."""
    got, hint = _call(fn, what, *args)
    if hint:
        return got, hint
    got = torch.as_tensor(got).to(want.dtype)
    if got.shape != want.shape:
        return got, wrong_shape.format(want=tuple(want.shape), got=tuple(got.shape))
    return got, ""


def check_reparameterize(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(mean, logvar, eps)`` must return z = μ + σ·ε with σ = exp(½·log σ²) (the reparameterisation trick)."""
    what = "reparameterised sample"
    g = torch.Generator().manual_seed(11)
    mean, logvar, eps = (torch.randn(3, 4, 7, 7, generator=g) for _ in range(3))
    want = mean + torch.exp(0.5 * logvar) * eps
    got, hint = _call_tensor(fn, what, want, "return one z per input, shape {want}, not {got}", mean, logvar, eps)
    if hint:
        return _report(False, what, hint)
    if torch.allclose(got, mean + torch.exp(logvar) * eps, atol=1e-5):
        return _report(False, what, "exp(logvar) is the variance σ²; the sample needs σ = exp(0.5·logvar)")
    return _report(torch.allclose(got.to(want.dtype), want, atol=1e-5), what, "z = mean + exp(0.5·logvar)·eps")


def check_gaussian_kl(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(mean, logvar)`` (B, L, h, w) must return KL(N(μ, σ²) ‖ N(0, 1)) summed over all but the batch: (B,)."""
    what = "KL to the standard normal"
    g = torch.Generator().manual_seed(12)
    mean, logvar = torch.randn(5, 4, 7, 7, generator=g), torch.randn(5, 4, 7, 7, generator=g)
    want = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)
    got, hint = _call(fn, what, mean, logvar)
    if hint:
        return _report(False, what, hint)
    got = torch.as_tensor(got).to(want.dtype)
    if got.numel() == 1 and torch.allclose(got.reshape(()).to(want.dtype), want.sum(), rtol=1e-4):
        return _report(False, what, "return one KL per sample (shape (B,)): sum over dims 1.., not over the batch")
    if got.shape != want.shape:
        return _report(False, what, f"return shape {tuple(want.shape)} (one KL per sample), not {tuple(got.shape)}")
    return _report(
        torch.allclose(got.to(want.dtype), want, rtol=1e-4, atol=1e-4),
        what,
        "KL = ½·Σ(μ² + σ² − 1 − log σ²) with σ² = exp(logvar), summed over channels and positions",
    )


def check_scaling_factor(fn: Callable[[torch.Tensor], float]) -> bool:
    """``fn(latents)`` must return s = 1 / std(latents) over all numbers, so that s·latents has unit variance."""
    what = "scaling factor"
    g = torch.Generator().manual_seed(13)
    for scale in (0.2, 5.0):
        z = torch.randn(64, 4, 7, 7, generator=g) * scale + 0.3
        want = 1.0 / z.std().item()
        got, hint = _call(fn, what, z)
        if hint:
            return _report(False, what, hint)
        try:
            got = float(got)
        except (TypeError, ValueError, RuntimeError):
            return _report(False, what, "return one number s (a float), e.g. 1 / latents.std().item()")
        if abs(got - z.std().item()) < 1e-3 * z.std().item():
            return _report(False, what, "that is the standard deviation itself; the factor is its inverse, 1 / std")
        if abs(got - want) > 1e-3 * want:
            return _report(False, what, "s = 1 / std over all numbers at once (batch, channels, positions)")
    return _report(True, what, "")


# --------------------------------------------------------------------------------------------- notebook 05


def check_tokenize(fn: Callable[[str, list[str], int], tuple[list[int], list[int]]]) -> bool:
    """``fn(text, vocab, max_length)`` must return (input_ids, attention_mask) like ``WordTokenizer``: two lists of
    ``max_length`` ints, <bos> (2) word ids <eos> (3) then <pad> (0); unknown words → <unk> (1); lower-case words
    split on anything that is not a letter or digit; too long: keep <bos>, the first max_length − 2 words, <eos>."""
    import warnings

    from diffusion_lab.text import WordTokenizer

    what = "tokenizer"
    vocab = WordTokenizer.from_texts([]).vocab
    cases = [
        ("a thick seven", 8, "a plain caption"),
        ("", 8, 'the empty prompt "" (it still gets <bos> and <eos>)'),
        ("A Thick, slanted SEVEN!", 8, "capitals and punctuation (lower-case; split on non-letters)"),
        ("a purple seven", 8, "an unknown word (it becomes <unk>, id 1)"),
        ("a large thick slanted handwritten seven", 6, "a prompt longer than max_length (truncate the words)"),
    ]
    for text, max_length, about in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reference warns about "purple"
            enc = WordTokenizer(vocab, model_max_length=max_length)(text, return_tensors=None)
        want = (enc["input_ids"][0], enc["attention_mask"][0])
        got, hint = _call(fn, what, text, list(vocab), max_length)
        if hint:
            return _report(False, what, hint)
        try:
            ids, mask = ([int(i) for i in seq] for seq in got)
        except (TypeError, ValueError):
            return _report(False, what, "return two lists of ints: (input_ids, attention_mask)")
        if (ids, mask) == want:
            continue
        if len(ids) != max_length or len(mask) != max_length:
            hint = f"both lists must have max_length = {max_length} entries (pad ids with 0, the mask with 0)"
        elif ids[:1] != [2] or 3 not in ids:
            hint = "start with <bos> (id 2) and end the words with <eos> (id 3), before the padding"
        elif ids == want[0]:
            hint = "the mask is 1 on <bos>, the words and <eos>, and 0 on the padding"
        else:
            hint = f"expected ids {want[0]}, got {ids}"
        return _report(False, what, f"wrong for {text!r} ({about}): {hint}")
    return _report(True, what, "")


def check_cross_attention(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(q, k, v, mask)`` must return softmax(Q Kᵀ/√d, padded keys removed) V.

    q (B, heads, N, d) from the image positions; k, v (B, heads, M, d) from the text tokens; mask (B, M), 1 for
    real tokens and 0 for padding; the result is (B, heads, N, d).
    """
    what = "cross-attention"
    g = torch.Generator().manual_seed(14)
    for b, nh, n, m, d in [(2, 4, 49, 8, 16), (3, 1, 5, 6, 8)]:
        q = torch.randn(b, nh, n, d, generator=g)  # (B, heads, N, d)
        k, v = torch.randn(2, b, nh, m, d, generator=g).unbind(0)  # (B, heads, M, d) each
        lengths = torch.randint(2, m + 1, (b,), generator=g)
        lengths[0] = 2  # at least one row with padding
        mask = (torch.arange(m)[None] < lengths[:, None]).long()  # (B, M)
        scores = q @ k.transpose(-1, -2)  # (B, heads, N, M)
        hide = mask[:, None, None, :] == 0
        want = (scores / d**0.5).masked_fill(hide, float("-inf")).softmax(-1) @ v
        shape_hint = "return (B, heads, N, d) = {want}, not {got}: A V, not A"
        got, hint = _call_tensor(fn, what, want, shape_hint, q, k, v, mask)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-5):
            continue
        if torch.allclose(got, scores.masked_fill(hide, float("-inf")).softmax(-1) @ v, atol=1e-5):
            hint = "divide the scores Q Kᵀ by √d (d = q.shape[-1]) before the softmax"
        elif torch.allclose(got, (scores / d**0.5).softmax(-1) @ v, atol=1e-5):
            hint = "padded keys still get weight: set their scores to −inf where mask == 0 before the softmax"
        else:
            hint = "A = softmax over the keys (the last axis, M) of Q Kᵀ/√d with −inf at padding; return A V"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_pooled_output(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(last_hidden_state, input_ids, eos_token_id)`` must return each row's state at its first <eos>: (B, D).

    last_hidden_state (B, M, D), input_ids (B, M) padded on the right with 0, as the tokenizer returns them.
    """
    what = "pooled output"
    g = torch.Generator().manual_seed(15)
    b, m, dim, eos = 4, 8, 16, 3
    lengths = torch.tensor([2, 5, 8, 4])  # <bos> … <eos>, then padding
    ids = torch.zeros(b, m, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        ids[i, :n] = torch.randint(4, 26, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 2, eos
    h = torch.randn(b, m, dim, generator=g)
    want = h[torch.arange(b), lengths - 1]
    got, hint = _call_tensor(fn, what, want, "return one vector per prompt, shape {want}, not {got}", h, ids, eos)
    if hint:
        return _report(False, what, hint)
    if torch.allclose(got, h[:, -1]):
        return _report(False, what, "the last position is padding for short prompts: take the position of <eos>")
    if torch.allclose(got, h.mean(1)):
        return _report(False, what, "CLIP does not average the tokens: it takes the state at the <eos> position")
    return _report(
        torch.allclose(got, want),
        what,
        "find each row's <eos>, e.g. (input_ids == eos_token_id).int().argmax(1), then index h[arange(B), eos]",
    )


# --------------------------------------------------------------------------------------------- notebook 06


def check_cfg_combine(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(cond, uncond, guidance_scale)`` must return ε̃ = ε_∅ + w·(ε_c − ε_∅) (diffusers' w: 1 = no guidance)."""
    what = "classifier-free guidance"
    g = torch.Generator().manual_seed(16)
    cond, uncond = torch.randn(2, 3, 4, 7, 7, generator=g).unbind(0)  # (B, L, h, w) each
    for w in (2.5, 0.0, 1.0, 7.5):  # 2.5 first: it tells the typical mistakes apart
        want = uncond + w * (cond - uncond)
        shape_hint = "return one prediction per sample, shape {want}, not {got}"
        got, hint = _call_tensor(fn, what, want, shape_hint, cond, uncond, w)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-5):
            continue
        if torch.allclose(got, (1 + w) * cond - w * uncond, atol=1e-5):
            hint = (
                "that is the paper's (1 + w)·ε_c − w·ε_∅; with diffusers' guidance scale, w = 1 must give ε_c: "
                "ε_∅ + w·(ε_c − ε_∅)"
            )
        elif torch.allclose(got, cond + w * (uncond - cond), atol=1e-5):
            hint = "cond and uncond are swapped: w = 0 must give the unconditional ε_∅, w = 1 the conditional ε_c"
        else:
            hint = f"wrong for w = {w}: start at ε_∅ and move w times the difference ε_c − ε_∅"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_rescale_noise_cfg(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(noise_cfg, noise_pred_text, guidance_rescale)`` must return guidance rescale (Lin et al. 2024, Eq. 15-16):
    φ·ε̃·σ(ε_c)/σ(ε̃) + (1 − φ)·ε̃, with σ the standard deviation of each sample over all its other dimensions."""
    from diffusion_lab.sampling import rescale_noise_cfg

    what = "guidance rescale"
    g = torch.Generator().manual_seed(17)
    text = torch.randn(3, 4, 7, 7, generator=g) * torch.tensor([0.5, 1.0, 2.0]).reshape(3, 1, 1, 1)
    cfg = text * torch.tensor([3.0, 1.5, 6.0]).reshape(3, 1, 1, 1) + torch.randn(3, 4, 7, 7, generator=g)
    for phi in (0.7, 0.0, 1.0):
        want = rescale_noise_cfg(cfg, text, phi)
        shape_hint = "return the rescaled prediction, shape {want}, not {got}"
        got, hint = _call_tensor(fn, what, want, shape_hint, cfg, text, phi)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-5):
            continue
        batch_wide = phi * cfg * text.std() / cfg.std() + (1 - phi) * cfg
        inverted = phi * cfg * cfg.std((1, 2, 3), keepdim=True) / text.std((1, 2, 3), keepdim=True) + (1 - phi) * cfg
        rescaled = cfg * text.std((1, 2, 3), keepdim=True) / cfg.std((1, 2, 3), keepdim=True)
        if torch.allclose(got, batch_wide, atol=1e-5):
            hint = "take σ per sample (over dims 1, 2, 3, keepdim=True), not over the whole batch"
        elif torch.allclose(got, inverted, atol=1e-5):
            hint = "the ratio is upside down: multiply by σ(ε_c)/σ(ε̃), which shrinks an inflated ε̃"
        elif torch.allclose(got, (1 - phi) * rescaled + phi * cfg, atol=1e-5) or torch.allclose(
            got, rescaled, atol=1e-5
        ):
            hint = f"wrong for φ = {phi}: φ = 0 must return ε̃ unchanged and φ = 1 the fully rescaled ε̃·σ(ε_c)/σ(ε̃)"
        else:
            hint = f"wrong for φ = {phi}: rescaled = ε̃·σ(ε_c)/σ(ε̃) per sample, then φ·rescaled + (1 − φ)·ε̃"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_best_guidance(answer, guidance_scales, values, *, lower_is_better: bool = False) -> bool:
    """``answer`` must be the guidance scale w (from ``guidance_scales``) at which the measured ``values`` are best:
    the highest, or the lowest with ``lower_is_better`` (e.g. FID)."""
    what = "best guidance scale"
    ws = [float(w) for w in guidance_scales]
    v = np.asarray([float(x) for x in values], dtype=float)
    if len(ws) != len(v) or not len(ws):
        return _report(False, what, "pass the guidance scales and one measured value per scale (two equal lists)")
    if answer is None:
        return _report(False, what, "set your answer to a guidance scale w, a number from the list of scales")
    try:
        answer = float(answer)
    except (TypeError, ValueError):
        return _report(False, what, "answer with one number, the guidance scale w itself")
    best = int(np.nanargmin(v) if lower_is_better else np.nanargmax(v))
    worst = int(np.nanargmax(v) if lower_is_better else np.nanargmin(v))
    if np.isclose(answer, ws[best]):
        return _report(True, what, "")
    if answer == best and answer not in ws:
        hint = "that is the position in the list; answer the guidance scale w at that position"
    elif np.isclose(answer, ws[worst]):
        hint = (
            "that is the worst one: lower is better here"
            if lower_is_better
            else "that is the worst one: higher is better here"
        )
    else:
        hint = "find the " + ("lowest" if lower_is_better else "highest") + " measured value and read off its w"
    return _report(False, what, hint)


# ----------------------------------------------------------------------------------------------------------------------
# Notebook 07: the tiny Stable Diffusion (img2img and inpainting)
# ----------------------------------------------------------------------------------------------------------------------


def _img2img_start(num_inference_steps: int, strength: float) -> int:
    """diffusers' ``get_timesteps``: keep the last int(N·γ) of the N steps, so the loop starts at index N − int(N·γ)."""
    init_steps = min(int(num_inference_steps * strength), num_inference_steps)
    return max(num_inference_steps - init_steps, 0)


def check_img2img_start(fn: Callable[[int, float], int]) -> bool:
    """``fn(num_inference_steps, strength)`` must return t_start, the index of the first of the N inference
    timesteps that img2img runs: N − int(N·γ) (diffusers' ``get_timesteps``; int() truncates)."""
    what = "img2img start index"
    cases = [(50, 0.8), (25, 0.3), (25, 0.5), (10, 0.75), (4, 0.6), (20, 0.0), (20, 1.0), (1, 0.5), (30, 0.35)]
    for n, strength in cases:
        want = _img2img_start(n, strength)
        got, hint = _call(fn, what, n, strength)
        if hint:
            return _report(False, what, hint)
        try:
            got_f = float(got)
        except (TypeError, ValueError):
            return _report(False, what, f"return one whole number (an index), got {type(got).__name__}")
        if got_f == want:
            continue
        if got_f == round(n * (1 - strength)) or got_f == int(n * (1 - strength)):
            hint = (
                f"for N = {n}, γ = {strength}: diffusers counts the steps to run first, int(N·γ) (truncated), and "
                "starts at N minus that; rounding or truncating N·(1 − γ) differs when N·γ is not a whole number"
            )
        elif got_f == n - want:
            hint = f"for N = {n}, γ = {strength} that is the number of steps run; return where they start: N − int(N·γ)"
        else:
            hint = f"for N = {n}, γ = {strength} the answer is not {got}: run int(N·γ) steps, the last ones"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_latent_mask(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> bool:
    """``fn(mask, f)`` must turn a pixel mask (B, 1, H, W) in [0, 1] into the latent mask (B, 1, H/f, W/f) this
    course's pipeline uses: each latent cell gets the mean of its f×f pixels (the share of the cell to repaint)."""
    import torch.nn.functional as F

    what = "latent mask"
    g = torch.Generator().manual_seed(7)
    box = torch.zeros(2, 1, 28, 28)
    box[0, :, 10:, :] = 1  # a bottom part whose edge cuts through latent cells (f = 4)
    box[1, :, 5:19, 3:13] = 1
    soft = torch.rand(2, 1, 16, 16, generator=g)
    for mask, f in ((box, 4), (soft, 2), (soft, 8)):
        want = F.avg_pool2d(mask, f)
        shape_hint = f"for f = {f} return shape {{want}} (one value per latent cell), not {{got}}"
        got, hint = _call_tensor(fn, what, want, shape_hint, mask, f)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-6):
            continue
        if torch.allclose(got, mask[..., ::f, ::f]) or torch.allclose(got, F.interpolate(mask, scale_factor=1 / f)):
            hint = (
                "that is nearest sampling (one pixel per cell; diffusers' inpainting pipelines do that): here each "
                "latent cell gets the mean of its f×f pixels, so a cell half inside the mask is repainted by half"
            )
        elif torch.allclose(got, F.max_pool2d(mask, f)):
            hint = "max-pooling repaints every cell the mask touches at all; take the mean of each f×f block"
        else:
            hint = "average each f×f block of pixels: F.avg_pool2d(mask, f) or F.interpolate(..., mode='area')"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_inpaint_blend(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(latents, known, mask)`` must return the inpainting blend after a step: (1 − m)·known + m·latents, where
    ``latents`` is the model's z, ``known`` the image's latents noised to the same timestep and m = 1 repaints."""
    what = "inpainting blend"
    g = torch.Generator().manual_seed(11)
    z, known = torch.randn(3, 4, 7, 7, generator=g), torch.randn(3, 4, 7, 7, generator=g)
    binary = torch.zeros(1, 1, 7, 7)
    binary[..., 4:, :] = 1
    soft = torch.rand(3, 1, 7, 7, generator=g)
    for mask in (binary, soft):
        want = (1 - mask) * known + mask * z
        got, hint = _call_tensor(fn, what, want, "return latents of shape {want}, not {got}", z, known, mask)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-6):
            continue
        if torch.allclose(got, mask * known + (1 - mask) * z, atol=1e-6):
            hint = "the mask is the wrong way round: m = 1 means repaint (take the model's latents), 0 means keep"
        elif torch.allclose(got, z, atol=1e-6) or torch.allclose(got, known, atol=1e-6):
            hint = "return a blend of both: the known latents where m = 0, the model's where m = 1"
        else:
            hint = "blend per position: (1 − m)·known + m·latents (a soft mask mixes the two)"
        return _report(False, what, hint)
    return _report(True, what, "")


# ----------------------------------------------------------------------------------------------------------------------
# Notebook 08: rectified flow
# ----------------------------------------------------------------------------------------------------------------------


def check_flow_path(fn: Callable[..., tuple]) -> bool:
    """``fn(x0, noise, t)`` must return (x_t, v): the straight path x_t = (1 − t)·x₀ + t·ε and its velocity
    v = dx_t/dt = ε − x₀ (t (B,) per sample, 0 = data, 1 = noise)."""
    what = "the rectified-flow path and its velocity"
    g = torch.Generator().manual_seed(31)
    x0, noise = torch.randn(2, 5, 4, 7, 7, generator=g).unbind(0)  # (B, L, h, w) each
    t = torch.tensor([0.0, 0.25, 0.5, 0.8, 1.0])
    tb = t[:, None, None, None]
    want_x, want_v = (1 - tb) * x0 + tb * noise, noise - x0
    out, hint = _call(fn, what, x0, noise, t)
    if hint:
        return _report(False, what, hint)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        return _report(False, what, "return two tensors: (x_t, v)")
    got_x, got_v = (torch.as_tensor(o).to(x0.dtype) for o in out)
    if got_x.shape != want_x.shape or got_v.shape != want_v.shape:
        return _report(
            False, what, f"both must have x0's shape {tuple(x0.shape)}: broadcast t as t[:, None, None, None]"
        )
    if not torch.allclose(got_x, want_x, atol=1e-5):
        if torch.allclose(got_x, tb * x0 + (1 - tb) * noise, atol=1e-5):
            hint = "x_t is reversed: at t = 0 it must be the data x₀, at t = 1 the noise ε"
        elif torch.allclose(got_x, (1 - tb).sqrt() * x0 + tb.sqrt() * noise, atol=1e-5):
            hint = "no square roots: the rectified-flow path is linear in t, (1 − t)·x₀ + t·ε"
        else:
            hint = "x_t must be (1 − t)·x₀ + t·ε, with t broadcast over (L, h, w)"
        return _report(False, what, hint)
    if not torch.allclose(got_v, want_v, atol=1e-5):
        hint = (
            "the velocity points the wrong way: d/dt [(1 − t)·x₀ + t·ε] = ε − x₀ (from data to noise)"
            if torch.allclose(got_v, x0 - noise, atol=1e-5)
            else "v is the derivative of x_t with respect to t: ε − x₀ (it does not depend on t)"
        )
        return _report(False, what, hint)
    return _report(True, what, "")


def check_time_shift(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> bool:
    """``fn(t, shift)`` must return SD3's shifted time α·t / (1 + (α − 1)·t) (α = shift; 0 and 1 stay put)."""
    what = "the timestep shift"
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    for alpha in (3.0, 1.0, 0.5, 6.0):
        want = alpha * t / (1 + (alpha - 1) * t)
        got, hint = _call_tensor(fn, what, want, "return one shifted time per input time, {want}, not {got}", t, alpha)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-6):
            continue
        if torch.allclose(got, t / (alpha - (alpha - 1) * t), atol=1e-6):
            hint = "that is the inverse shift (it moves t towards 0): use α·t / (1 + (α − 1)·t)"
        elif torch.allclose(got, alpha * t, atol=1e-6):
            hint = "α·t leaves [0, 1]: divide by 1 + (α − 1)·t so that t = 1 stays 1"
        else:
            hint = f"wrong for shift α = {alpha}: α·t / (1 + (α − 1)·t)"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_flow_euler_step(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x_t, v, t, t_next)`` must return one Euler step of dx/dt = v: x_t + (t_next − t)·v (t_next < t)."""
    what = "the Euler step"
    g = torch.Generator().manual_seed(32)
    x, v = torch.randn(2, 3, 4, 7, 7, generator=g).unbind(0)
    for t, t_next in ((1.0, 0.75), (0.4, 0.0), (0.9, 0.85)):
        want = x + (t_next - t) * v
        got, hint = _call_tensor(fn, what, want, "return the next state, shape {want}, not {got}", x, v, t, t_next)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-5):
            continue
        if torch.allclose(got, x + (t - t_next) * v, atol=1e-5):
            hint = (
                "the step goes the wrong way: sampling runs t → t_next < t, so add (t_next − t)·v, a negative multiple"
            )
        else:
            hint = f"wrong from t = {t} to {t_next}: x_t + (t_next − t)·v"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_sdxl_time_ids(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(original_size, crops_coords_top_left, target_size)`` (each an (a, b) pair) must return SDXL's
    micro-conditioning vector, shape (1, 6): (orig h, orig w, crop top, crop left, target h, target w)."""
    what = "SDXL's time ids"
    for orig, crop, target in (((512, 768), (0, 0), (1024, 1024)), ((300, 200), (32, 16), (896, 1152))):
        want = torch.tensor([[*orig, *crop, *target]], dtype=torch.float32)
        got, hint = _call_tensor(
            fn, what, want, "return a (1, 6) tensor (one row of six numbers), not {got}", orig, crop, target
        )
        if hint and got is not None and torch.as_tensor(got).numel() == 6:
            got, hint = torch.as_tensor(got).to(torch.float32).reshape(1, 6), ""
            if torch.equal(got, want):
                hint = "the numbers are right; return them as one row: shape (1, 6), e.g. torch.tensor([[...]])"
        if hint:
            return _report(False, what, hint)
        if torch.equal(got, want):
            continue
        if torch.equal(got, torch.tensor([[*target, *crop, *orig]], dtype=torch.float32)):
            hint = "original_size comes first and target_size last (the order SDXL was trained with)"
        elif torch.equal(got, torch.tensor([[*orig[::-1], *crop[::-1], *target[::-1]]], dtype=torch.float32)):
            hint = "each pair is (height, width) / (top, left) as given: do not swap them"
        else:
            hint = "concatenate the three pairs in order: original_size, crops_coords_top_left, target_size"
        return _report(False, what, hint)
    return _report(True, what, "")


def _refiner_split_reference(timesteps: list[int], fraction: float, T: int = 1000) -> tuple[list[int], list[int]]:
    """diffusers' rule: cutoff = round(T − fraction·T); the base runs the timesteps ≥ cutoff, the refiner the rest."""
    cutoff = int(round(T - fraction * T))
    return [t for t in timesteps if t >= cutoff], [t for t in timesteps if t < cutoff]


def check_refiner_split(fn: Callable[..., tuple]) -> bool:
    """``fn(timesteps, high_noise_frac)`` (a descending list of integer timesteps out of T = 1000, and the fraction
    of the *noise range* the base model handles) must return (base_timesteps, refiner_timesteps), as diffusers'
    ``denoising_end`` / ``denoising_start`` split them."""
    what = "the base/refiner hand-off"
    for n, frac in ((10, 0.8), (25, 0.7), (40, 0.75)):
        ts = sorted({int(round(x)) for x in np.linspace(999, 0, n)}, reverse=True)
        want = _refiner_split_reference(ts, frac)
        out, hint = _call(fn, what, list(ts), frac)
        if hint:
            return _report(False, what, hint)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            return _report(False, what, "return two lists: (base_timesteps, refiner_timesteps)")
        got = tuple([int(t) for t in part] for part in out)
        if got == tuple(want):
            continue
        if got == tuple(_refiner_split_reference(ts, 1 - frac)):
            hint = "high_noise_frac is the share of the *noise* range the base handles: the cutoff is T − frac·T"
        elif len(got[0]) == round(frac * n):
            hint = "split by noise level, not by step count: the cutoff timestep is round(T − frac·T)"
        else:
            hint = f"with {n} steps and frac {frac}: base = timesteps ≥ round(1000 − frac·1000), refiner = the rest"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_sd3_joint_text(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(clip_l, clip_g, t5)`` with shapes (B, 77, Dl), (B, 77, Dg), (B, S, D5) must return SD3's text tokens
    (B, 77 + S, D5): CLIP-L and bigG side by side, zero-padded to T5's width, then T5's tokens after them."""
    what = "SD3's joint text tokens"
    g = torch.Generator().manual_seed(33)
    clip_l, clip_g, t5 = (
        torch.randn(2, 77, 6, generator=g),
        torch.randn(2, 77, 10, generator=g),
        torch.randn(2, 9, 24, generator=g),
    )
    clip = torch.nn.functional.pad(torch.cat([clip_l, clip_g], dim=-1), (0, 8))
    want = torch.cat([clip, t5], dim=1)  # (2, 86, 24)
    got, hint = _call_tensor(
        fn, what, want, "the result must be (B, 77 + S, D_T5) = {want}, not {got}", clip_l, clip_g, t5
    )
    if hint:
        return _report(False, what, hint)
    if torch.allclose(got, want):
        return _report(True, what, "")
    if torch.allclose(got, torch.cat([t5, clip], dim=1)):
        hint = "the CLIP tokens come first, then T5's"
    elif torch.allclose(got, torch.cat([torch.nn.functional.pad(torch.cat([clip_g, clip_l], -1), (0, 8)), t5], 1)):
        hint = "CLIP-L's features come before bigG's along the last dimension"
    else:
        hint = "torch.cat([clip_l, clip_g], -1), pad the last dimension with zeros to T5's width, then cat with t5 on dim 1"
    return _report(False, what, hint)


def check_lora_forward(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x, W, A, B, alpha)`` with x (N, d_in), W (d_out, d_in), A (r, d_in), B (d_out, r) must return a LoRA
    layer's output h = x Wᵀ + (α/r)·x Aᵀ Bᵀ (N, d_out): the frozen layer plus the scaled low-rank update (Hu et al.
    2021, Eq. 3 and §4.1)."""
    what = "the LoRA layer"
    g = torch.Generator().manual_seed(41)
    for n, d_in, d_out, r, alpha in ((5, 8, 6, 2, 4.0), (3, 16, 16, 4, 4.0), (2, 6, 9, 3, 1.0)):
        x, W = torch.randn(n, d_in, generator=g), torch.randn(d_out, d_in, generator=g)
        A, B = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
        want = x @ W.T + (alpha / r) * x @ A.T @ B.T
        got, hint = _call_tensor(
            fn, what, want, "return one output row per input, shape {want}, not {got}", x, W, A, B, alpha
        )
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-4):
            continue
        if torch.allclose(got, x @ W.T + x @ A.T @ B.T, atol=1e-4) and alpha != r:
            hint = "the update is scaled by α/r (alpha divided by the rank r = A.shape[0])"
        elif torch.allclose(got, x @ W.T + alpha * x @ A.T @ B.T, atol=1e-4):
            hint = "scale the update by α/r, not α: r = A.shape[0]"
        elif torch.allclose(got, (alpha / r) * x @ A.T @ B.T, atol=1e-4):
            hint = "the frozen layer's own output x Wᵀ is still there: h = x Wᵀ + (α/r)·x Aᵀ Bᵀ"
        else:
            hint = f"wrong for r = {r}, α = {alpha}: x Aᵀ is (N, r), then Bᵀ maps it to (N, d_out)"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_prior_preservation_loss(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(pred, target, pred_prior, target_prior, prior_weight)`` must return DreamBooth's loss (Ruiz et al. 2023,
    Eq. 2): mean((pred − target)²) + λ·mean((pred_prior − target_prior)²), a scalar."""
    what = "the prior-preservation loss"
    g = torch.Generator().manual_seed(42)
    pred, target, pred_prior, target_prior = torch.randn(4, 3, 4, 7, 7, generator=g).unbind(0)
    for lam in (1.0, 0.5, 0.0):
        want = (pred - target).pow(2).mean() + lam * (pred_prior - target_prior).pow(2).mean()
        got, hint = _call_tensor(
            fn,
            what,
            want,
            "return one number (a 0-d tensor), not shape {got}",
            pred,
            target,
            pred_prior,
            target_prior,
            lam,
        )
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-5):
            continue
        instance = (pred - target).pow(2).mean()
        if torch.allclose(got, instance + (pred_prior - target_prior).pow(2).mean(), atol=1e-5):
            hint = "multiply the prior term by prior_weight λ"
        elif torch.allclose(got, instance, atol=1e-5):
            hint = "add the prior term: λ·mean((pred_prior − target_prior)²)"
        elif torch.allclose(
            got, (pred - target).abs().mean() + lam * (pred_prior - target_prior).abs().mean(), atol=1e-5
        ):
            hint = "both terms are mean *squared* errors"
        else:
            hint = f"wrong for λ = {lam}: mean((pred − target)²) + λ·mean((pred_prior − target_prior)²)"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_magnitude_prune(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(w, sparsity)`` must return a copy of the tensor w with its k = ⌊p·N⌋ smallest-magnitude entries set to
    zero (N = w.numel(), p = sparsity), the others unchanged (Han et al. 2015)."""
    what = "magnitude pruning"
    g = torch.Generator().manual_seed(43)
    w = torch.randn(8, 6, 3, 3, generator=g)  # distinct magnitudes: no ties at the threshold
    for p in (0.5, 0.9, 0.25, 0.0):
        k = int(p * w.numel())
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[w.abs().flatten().argsort()[:k]] = False
        want = torch.where(keep.view_as(w), w, torch.zeros_like(w))
        got, hint = _call_tensor(fn, what, want, "return a tensor shaped like w {want}, not {got}", w, p)
        if hint:
            return _report(False, what, hint)
        if torch.equal(got, want):
            continue
        zeros = int((got == 0).sum())
        if zeros != k:
            hint = f"for sparsity {p} exactly ⌊p·N⌋ = {k} of the {w.numel()} weights must be zero, got {zeros}"
        else:
            hint = "rank the weights by |w| (not by w: −3 is a large weight) and zero the k smallest"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_psnr(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x, y)`` with x, y (B, C, H, W) in [−1, 1] must return the peak signal-to-noise ratio of each image pair in
    decibels, (B,): PSNR = 10·log10(MAX² / MSE) with MAX = 2 (the width of [−1, 1]) and MSE the mean of (x − y)² over
    one image's pixels."""
    what = "PSNR"
    g = torch.Generator().manual_seed(44)
    y = torch.rand(5, 1, 28, 28, generator=g) * 2 - 1
    x = (y + torch.randn(5, 1, 1, 1, generator=g).abs() * 0.2 * torch.randn(y.shape, generator=g)).clamp(-1, 1)
    mse = (x - y).pow(2).mean(dim=(1, 2, 3))  # (B,)
    want = 10 * torch.log10(4.0 / mse)
    got, hint = _call_tensor(fn, what, want, "return one PSNR per image, shape {want}, not {got}", x, y)
    if hint:
        return _report(False, what, hint)
    if torch.allclose(got, want, atol=1e-3):
        return _report(True, what, "")
    if torch.allclose(got, want - 10 * torch.log10(torch.tensor(4.0)), atol=1e-3):
        hint = "images in [−1, 1] span MAX = 2, so MAX² = 4 (MAX = 1 is for images in [0, 1])"
    elif torch.allclose(got, 10 * torch.log10(2.0 / mse), atol=1e-3):
        hint = "square the peak: 10·log10(MAX² / MSE) = 20·log10(MAX) − 10·log10(MSE)"
    elif torch.allclose(got, 20 * torch.log10(4.0 / mse), atol=1e-3):
        hint = "PSNR is 10·log10 of a ratio of *powers* (MAX² / MSE); 20·log10 is for amplitudes"
    else:
        hint = "10·log10(MAX² / MSE) with MSE = ((x − y)²).mean over (C, H, W) of each image"
    return _report(False, what, hint)


def _control_keep(i: int, n: int, start: float, end: float) -> float:
    return 1.0 - float(i / n < start or (i + 1) / n > end)


def check_control_keep(fn: Callable[[int, int, float, float], float]) -> bool:
    """``fn(i, n, start, end)`` must return 1.0 when step i (0-based, of n) lies inside the window
    [start, end] of the sampling run and 0.0 otherwise — diffusers' rule for ``control_guidance_start/end``: the
    control is off when i/n < start or (i + 1)/n > end. The ControlNet's residuals are multiplied by it."""
    what = "the control-guidance window"
    for n, start, end in ((10, 0.0, 1.0), (10, 0.0, 0.5), (8, 0.25, 1.0), (20, 0.1, 0.75), (7, 0.3, 0.6)):
        got = []
        for i in range(n):
            out, hint = _call(fn, what, i, n, start, end)
            if hint:
                return _report(False, what, hint)
            try:
                got.append(float(out))
            except (TypeError, ValueError):
                return _report(False, what, f"return a number (1.0 or 0.0), not {type(out).__name__}")
        want = [_control_keep(i, n, start, end) for i in range(n)]
        if got == want:
            continue
        if got == [1.0 - float(i / n < start or i / n > end) for i in range(n)]:
            hint = "step i of n covers [i/n, (i + 1)/n]: it must end by `end`, so the test is (i + 1)/n > end"
        else:
            i = next(k for k in range(n) if got[k] != want[k])
            hint = f"step {i} of {n} with the window [{start}, {end}]: expected {want[i]}, got {got[i]}"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_noise_image_embedding(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(emb, mean, std, noise, alphas_cumprod, level)`` must return Stable unCLIP's noise augmentation of image
    embeddings emb (B, D): normalise e = (emb − mean)/std, noise it to ``level`` as the forward process does,
    e' = √ᾱ_level·e + √(1 − ᾱ_level)·noise, and undo the normalisation, e'·std + mean (diffusers'
    ``StableUnCLIPImageNormalizer.scale`` → ``image_noising_scheduler.add_noise`` → ``unscale``)."""
    what = "the image-embedding noise augmentation"
    g = torch.Generator().manual_seed(45)
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
    for b, d, level in ((4, 16, 250), (2, 8, 0), (3, 32, 999)):
        emb = torch.randn(b, d, generator=g) * 3 + 1
        mean, std = torch.randn(d, generator=g), torch.rand(d, generator=g) + 0.5
        noise = torch.randn(b, d, generator=g)
        e = (emb - mean) / std
        want = (ab[level].sqrt() * e + (1 - ab[level]).sqrt() * noise) * std + mean
        got, hint = _call_tensor(fn, what, want, "return one embedding per row, shape {want}, not {got}", emb, mean,
                                 std, noise, ab, level)  # fmt: skip
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-4):
            continue
        if torch.allclose(got, ab[level].sqrt() * emb + (1 - ab[level]).sqrt() * noise, atol=1e-4):
            hint = "normalise first ((emb − mean)/std), noise, then undo it (·std + mean): the noise is in unit scale"
        elif torch.allclose(got, ab[level].sqrt() * e + (1 - ab[level]).sqrt() * noise, atol=1e-4):
            hint = "undo the normalisation at the end: e'·std + mean"
        elif torch.allclose(got, (ab[level] * e + (1 - ab[level]) * noise) * std + mean, atol=1e-4):
            hint = "the forward process scales by square roots: √ᾱ and √(1 − ᾱ)"
        else:
            hint = f"wrong at level {level}: ᾱ_level = alphas_cumprod[level]"
        return _report(False, what, hint)
    return _report(True, what, "")
