"""Seeded noise that is the same on every device (diffusers' ``randn_tensor``)."""

from __future__ import annotations

import torch

from diffusion_lab.utils.errors import check_generator

__all__ = ["randn"]


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device`` — as diffusers'
    ``randn_tensor`` does, so a CPU generator gives the same numbers whether the model runs on CPU or GPU. A list of
    generators (one per sample, ``shape[0]`` of them) draws sample i from generator i, as diffusers does."""
    generator = check_generator("generator", generator, batch=shape[0] if shape else None)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(generator, list):
        rows = [randn((1, *shape[1:]), g, device, dtype) for g in generator]
        return torch.cat(rows)
    draw_on = device
    if generator is not None and generator.device.type != device.type:
        if generator.device.type != "cpu":
            raise ValueError(
                f"cannot draw a {device.type} tensor from a {generator.device.type} generator; "
                "pass a CPU generator (torch.Generator().manual_seed(...)) or one on the same device"
            )
        draw_on = torch.device("cpu")
    return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype).to(device)
