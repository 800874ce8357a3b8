#!/usr/bin/env python3
"""Writes tests/fixtures/vae_diffusers_names.json: how diffusers names the Stable Diffusion
autoencoder's weights, as diffusers' own converter (convert_ldm_vae_checkpoint, the one its
single-file loading uses) maps the CompVis state dict onto them, for two configs. For each
diffusers key: the CompVis key it comes from and the diffusers shape (its attention projections
are Linear (C, C) where CompVis has 1x1 convs (C, C, 1, 1)). The test writes a diffusers-named
file from this table and loads it with ditto's diffusers loader. Each tensor is tagged with its
index, so the mapping is read from the converted values themselves.

    PYTHONPATH=/path/to/diffusers/src:/path/to/huggingface_hub/src:/path/to/einops UVIT_SRC=/path/to/U-ViT \\
        /usr/bin/python3 tools/gen_vae_diffusers_names.py
"""
import contextlib
import io
import json
import os
import sys

import torch as th

src = os.environ.get("UVIT_SRC")
if not src:
    sys.exit("set UVIT_SRC to a checkout of baofff/U-ViT (the folder that holds libs/autoencoder.py)")
sys.path.insert(0, src)
try:
    import safetensors  # noqa: F401
except ImportError:  # Debian has no python3-safetensors; diffusers imports it on load, this script never calls it
    import importlib.machinery
    import types
    for mod in ("safetensors", "safetensors.torch"):
        sys.modules[mod] = types.ModuleType(mod)
        sys.modules[mod].__spec__ = importlib.machinery.ModuleSpec(mod, None)
    sys.modules["safetensors"].torch = sys.modules["safetensors.torch"]
    sys.modules["safetensors.torch"].load_file = sys.modules["safetensors.torch"].save_file = None
    sys.modules["safetensors.torch"].load = sys.modules["safetensors.torch"].storage_ptr = None
    sys.modules["safetensors.torch"].storage_size = None
from diffusers import AutoencoderKL  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint  # noqa: E402
from libs import autoencoder as ae  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "vae_diffusers_names.json")
CONFIGS = {
    "sd": dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
               num_res_blocks=2, attn_resolutions=[], dropout=0.0),
    "small": dict(double_z=True, z_channels=3, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                  num_res_blocks=1, attn_resolutions=[], dropout=0.0),
}
result = {}
for name, dd in CONFIGS.items():
    probe = th.nn.Module()
    with contextlib.redirect_stdout(io.StringIO()):
        probe.encoder, probe.decoder = ae.Encoder(**dd), ae.Decoder(**dd)
    probe.quant_conv = th.nn.Conv2d(2 * dd["z_channels"], 2 * dd["z_channels"], 1)
    probe.post_quant_conv = th.nn.Conv2d(dd["z_channels"], dd["z_channels"], 1)
    compvis = list(probe.state_dict().items())
    tagged = {f"first_stage_model.{k}": th.full(v.shape, float(i)) for i, (k, v) in enumerate(compvis)}
    config = {"sample_size": dd["resolution"], "in_channels": dd["in_channels"], "out_channels": dd["out_ch"],
              "down_block_types": ["DownEncoderBlock2D"] * len(dd["ch_mult"]), "up_block_types": ["UpDecoderBlock2D"] * len(dd["ch_mult"]),
              "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]], "latent_channels": dd["z_channels"],
              "layers_per_block": dd["num_res_blocks"]}
    converted = convert_ldm_vae_checkpoint(tagged, config)
    model = AutoencoderKL(**config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected, unexpected
    # the converter leaves attention weights as 1x1 convs; the model holds Linear (C, C): reshape as diffusers does on load
    table = {}
    for k, v in model.state_dict().items():
        src_tensor = converted[k]
        table[k] = [compvis[int(src_tensor.flatten()[0])][0], list(v.shape)]
    result[name] = {"ddconfig": dd, "diffusers_config": config, "keys": table}
with open(OUT, "w") as f:
    json.dump(result, f, sort_keys=True, separators=(",", ":"))
    f.write("\n")
print(f"{sum(len(r['keys']) for r in result.values())} keys -> tests/fixtures/vae_diffusers_names.json")
