"""Unit tests run offline (never the hub, whatever the caller's environment says) and in quick mode by default."""

from __future__ import annotations

import os

os.environ.update(
    HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1"
)
os.environ.setdefault("DIFFUSION_LAB_SMOKE", "1")
