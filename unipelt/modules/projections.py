"""Small facts about the frozen projections modules attach to: sizes, fused slices, in-place weight edits.

GPT-2 keeps q, k and v in one fused Conv1D (weight stored as (in, out)); the architecture table names a slice of
it as ``"attn.c_attn[1/3]"``. These helpers let LoRA, IA3 and BitFit treat a slice like a plain projection.
"""

from __future__ import annotations

import torch
from torch import nn

from unipelt.inject.architectures import Architecture, parse_projection, role_path


def projection_features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a Linear or of a GPT-2 style Conv1D (whose weight is stored transposed)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if weight is not None and type(module).__name__ == "Conv1D":
        return weight.shape[0], weight.shape[1]
    raise TypeError(f"expected a Linear or Conv1D projection, not {type(module).__name__}")


def locate(layer: nn.Module, arch: Architecture, role: str) -> tuple[nn.Module, int, int]:
    """(projection module, slice index, number of slices) of a role in one layer."""
    path, part, parts = parse_projection(role_path(arch, role))
    return layer.get_submodule(path), part, parts


def slice_width(module: nn.Module, parts: int) -> int:
    return projection_features(module)[1] // parts


def layer_width(layer: nn.Module, arch: Architecture) -> int:
    """The width of one layer's hidden state (the query projection's input): what its gates read. It is the
    config's ``hidden_size`` except in staged models (Swin), whose width doubles from stage to stage."""
    module, _, _ = locate(layer, arch, "query")
    return projection_features(module)[0]


def key_width(layer: nn.Module, arch: Architecture) -> int:
    """Keys per position of one layer's attention (heads x head size): the width of its prefix vectors."""
    module, _, parts = locate(layer, arch, "key")
    return slice_width(module, parts)


def output_slice(module: nn.Module, part: int, parts: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Views of the weight (as stored: (out, in) for Linear, (in, out) for Conv1D) and bias of one slice."""
    weight, bias = module.weight, getattr(module, "bias", None)
    if isinstance(module, nn.Linear):
        width = weight.shape[0] // parts
        rows = slice(part * width, (part + 1) * width)
        return weight[rows], None if bias is None else bias[rows]
    width = weight.shape[1] // parts
    cols = slice(part * width, (part + 1) * width)
    return weight[:, cols], None if bias is None else bias[cols]


def on_slice(out: torch.Tensor, part: int, parts: int, change) -> torch.Tensor:
    """``change`` applied to slice ``part`` of the last axis of ``out`` (the whole tensor when parts == 1)."""
    if parts == 1:
        return change(out)
    width = out.shape[-1] // parts
    return torch.cat(
        [
            out[..., : part * width],
            change(out[..., part * width : (part + 1) * width]),
            out[..., (part + 1) * width :],
        ],
        dim=-1,
    )


@torch.no_grad()
def scale_output_rows(module: nn.Module, part: int, parts: int, scale: torch.Tensor) -> None:
    """W <- diag(scale) W and b <- scale * b on one output slice: what scaling that output by ``scale`` does."""
    weight, bias = output_slice(module, part, parts)
    if isinstance(module, nn.Linear):
        weight *= scale[:, None].to(weight.dtype)
    else:
        weight *= scale[None, :].to(weight.dtype)
    if bias is not None:
        bias *= scale.to(bias.dtype)


@torch.no_grad()
def scale_input_columns(module: nn.Module, scale: torch.Tensor) -> None:
    """W <- W diag(scale): what scaling the projection's input by ``scale`` does."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        weight *= scale[None, :].to(weight.dtype)
    else:
        weight *= scale[:, None].to(weight.dtype)
