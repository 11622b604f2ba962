"""Writing a diffusers SD 1.x pipeline as one original-layout `.safetensors` checkpoint.

Single-file checkpoints people download (A1111 / ComfyUI style) keep the original
Stable Diffusion layout: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE),
`cond_stage_model.transformer.*` (CLIP). The tests make one from a tiny pipeline to
check that such a file loads offline into the same weights.
"""

from pathlib import Path

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(rest: str, names: dict[str, str]) -> str:
    for new, old in names.items():
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def _unet_key(key: str, layers: int) -> str:
    parts = key.split(".")
    simple = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for new, old in simple.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        slot = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, index)]
        return f"middle_block.{slot}.{_rename(rest, _RESNET) if kind == 'resnets' else rest}"
    block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if parts[0] == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{(layers + 1) * (block + 1)}.0.op.{rest.removeprefix('conv.')}"
        return f"input_blocks.{(layers + 1) * block + index + 1}.{_inner(kind, rest)}"
    if kind == "upsamplers":
        return f"output_blocks.{(layers + 1) * block + layers}.UPSAMPLE.{rest}"
    return f"output_blocks.{(layers + 1) * block + index}.{_inner(kind, rest)}"


def _inner(kind: str, rest: str) -> str:
    """A resnet is slot 0 of an original block, its attention slot 1."""
    return f"0.{_rename(rest, _RESNET)}" if kind == "resnets" else f"1.{rest}"


def _vae_key(key: str, blocks: int) -> str:
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return key  # quant_conv, post_quant_conv
    parts = rest.split(".")
    if parts[0] == "conv_norm_out":
        return f"{side}.norm_out.{'.'.join(parts[1:])}"
    if parts[0] == "mid_block":
        kind, index, inner = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"{side}.mid.block_{index + 1}.{_rename(inner, _VAE_RESNET)}"
        return f"{side}.mid.attn_1.{_rename(inner, _VAE_ATTENTION)}"
    if parts[0] in ("down_blocks", "up_blocks"):
        block, kind, index, inner = int(parts[1]), parts[2], parts[3], ".".join(parts[4:])
        level = block if parts[0] == "down_blocks" else blocks - 1 - block
        group = "down" if parts[0] == "down_blocks" else "up"
        if kind == "resnets":
            return f"{side}.{group}.{level}.block.{index}.{_rename(inner, _VAE_RESNET)}"
        return f"{side}.{group}.{level}.{'downsample' if group == 'down' else 'upsample'}.{inner}"
    return key


def write_sd1_checkpoint(pipe, path: Path) -> Path:
    """Save an SD 1.x pipeline's UNet, VAE and text encoder as one original-layout file."""
    from safetensors.torch import save_file

    layers = pipe.unet.config.layers_per_block
    tensors = {}
    unet = {_unet_key(key, layers): value for key, value in pipe.unet.state_dict().items()}
    for key, value in unet.items():
        if ".UPSAMPLE." in key:
            # The upsampler follows the block's last resnet, and its attention where it has one.
            prefix = key.split(".UPSAMPLE.")[0]
            has_attention = any(other.startswith(prefix + ".1.") for other in unet)
            key = key.replace(".UPSAMPLE.", ".2." if has_attention else ".1.")
        tensors[f"model.diffusion_model.{key}"] = value
    blocks = len(pipe.vae.config.block_out_channels)
    for key, value in pipe.vae.state_dict().items():
        new = _vae_key(key, blocks)
        if ".attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original attention uses 1x1 convolutions
        tensors[f"first_stage_model.{new}"] = value
    for key, value in pipe.text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        tensors[f"cond_stage_model.transformer.{key}"] = value
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path
