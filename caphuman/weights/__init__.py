"""Weights files: where each one lives (registry), reading them (files), loading them strictly into
modules (strict), SD 1.5 / CLIP loading (stable_diffusion), ldm <-> diffusers names (ldm_layout),
the original caphuman.ckpt conversion (original_checkpoint) and ``caphuman doctor``'s checks (checks)."""
