"""Layer 1, the pure maths: noise schedules, the forward process and the reverse steps, flow matching, guidance and
image operators. Functions of tensors only; no models, no files, no state."""
