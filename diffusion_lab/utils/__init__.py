"""Layer 0, used by every other layer: settings (quick mode), safetensors checkpoints and atomic writes, seeded noise."""
