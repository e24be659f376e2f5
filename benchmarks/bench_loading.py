"""Peak memory of loading an original-layout SD single file, each load in a fresh process.

Builds synthetic checkpoints in the original ldm layout (random weights, nothing downloaded):
"tiny" (the test backbone) and "medium" (SD 1.5's layout with narrower blocks, ~0.5 GB), as
.safetensors and as .ckpt. Each load runs in its own subprocess, which reports its peak RSS
(VmHWM) after the imports and after the load; the difference is what loading cost. For
contrast, a naive load (whole file into memory, module built with random weights, then
load_state_dict copies) is measured the same way. Every weight is read once before the
peak is taken, so memory-mapped tensors count in full.

    python benchmarks/bench_loading.py                 # tiny + medium
    python benchmarks/bench_loading.py --sizes tiny
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("bench_loading")

MEDIUM = {
    "unet": {"block_out_channels": [128, 256, 512, 512], "attention_head_dim": 8, "cross_attention_dim": 768},
    "vae": {"block_out_channels": [64, 128, 256, 256]},
    "text_encoder": {"num_hidden_layers": 12},
}

CHILD = r"""
import json, sys, time, torch
from caphuman.weights.stable_diffusion import SDArchitecture, load_single_file
def peak_mb():
    # VmHWM is this process's own peak RSS; ru_maxrss would also carry the parent's peak
    # across fork + exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
path, arch_file, mode = sys.argv[1], sys.argv[2], sys.argv[3]
arch = json.loads(open(arch_file).read())
architecture = SDArchitecture(unet=arch["unet"], vae=arch["vae"], text_encoder=arch["text_encoder"])
if mode == "naive":  # only import what the naive path needs before the baseline
    from diffusers import UNet2DConditionModel, AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextConfig
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint
    import safetensors.torch
before = peak_mb()
start = time.perf_counter()
if mode == "ours":
    modules = load_single_file(path, architecture)
else:
    state = safetensors.torch.load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)["state_dict"]
    unet = UNet2DConditionModel.from_config(arch["unet"]); unet.load_state_dict(convert_ldm_unet_checkpoint(state, arch["unet"]))
    vae = AutoencoderKL.from_config(arch["vae"]); vae.load_state_dict(convert_ldm_vae_checkpoint(state, arch["vae"]))
    text = CLIPTextModel(CLIPTextConfig.from_dict(arch["text_encoder"]))
    text.load_state_dict({k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(state).items()}, strict=False)
    modules = (unet, vae, text)
seconds = time.perf_counter() - start
# Touch every weight: memory-mapped .ckpt tensors are paged in only when first read.
with torch.no_grad():
    for module in modules:
        for parameter in module.parameters():
            parameter.sum()
params = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
print(json.dumps({"before_mb": before, "after_mb": peak_mb(), "seconds": seconds, "param_mb": params / 2**20}))
"""


def architecture(size: str) -> dict:
    """Configs (diffusers UNet/VAE, CLIP text) of the synthetic checkpoint."""
    from caphuman.models.architectures import SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE
    from caphuman.models.tiny import tiny_backbone

    if size == "tiny":
        backbone = tiny_backbone()
        return {"unet": dict(backbone.unet.config), "vae": dict(backbone.vae.config), "text_encoder": backbone.text_encoder.config.to_dict()}
    return {
        "unet": {**SD15_UNET, **MEDIUM["unet"]},
        "vae": {**SD15_VAE, **MEDIUM["vae"]},
        "text_encoder": {**SD15_TEXT_ENCODER, **MEDIUM["text_encoder"]},
    }


def write_checkpoints(size: str, folder: Path) -> tuple[Path, list[Path]]:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from caphuman.weights.ldm_layout import export_original_sd

    arch = architecture(size)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(arch["unet"])
    vae = AutoencoderKL.from_config(arch["vae"])
    text = CLIPTextModel(CLIPTextConfig.from_dict(arch["text_encoder"]))
    state = {key: value.contiguous() for key, value in export_original_sd(unet, vae, text).items()}
    del unet, vae, text
    arch_file = folder / f"{size}.json"
    arch_file.write_text(json.dumps(arch, default=list))
    safetensors_path, ckpt_path = folder / f"{size}.safetensors", folder / f"{size}.ckpt"
    save_file(state, str(safetensors_path))
    torch.save({"state_dict": state}, ckpt_path)
    return arch_file, [safetensors_path, ckpt_path]


def measure(path: Path, arch_file: Path, mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(arch_file), mode], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "medium"], choices=["tiny", "medium"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.info("%-8s %-12s %-6s %9s %9s %11s %8s %7s", "size", "format", "mode", "file MB", "param MB", "peak+ MB", "peak/file", "s")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            arch_file, paths = write_checkpoints(size, Path(tmp))
            for path in paths:
                file_mb = path.stat().st_size / 2**20
                for mode in ("ours", "naive"):
                    row = measure(path, arch_file, mode)
                    extra = row["after_mb"] - row["before_mb"]
                    logger.info(
                        "%-8s %-12s %-6s %9.1f %9.1f %11.1f %8.2f %7.2f",
                        size, path.suffix, mode, file_mb, row["param_mb"], extra, extra / file_mb, row["seconds"],
                    )  # fmt: skip


if __name__ == "__main__":
    main()
