"""Weight-only quantization of the built-in transformer for CPU decoding: `quantize(model, "int4")`.

Decoding one token on a CPU streams every weight once, and is bound by memory traffic: SmolLM2-135M in
float32 reads 540 MB a token (about 60 ms on the 2-core machine), where llama.cpp, reading the same GGUF
as 4-bit blocks, reads 80 MB. The `int4` scheme is the one that GGUF file itself uses (llama.cpp's
Q4_1 projections with a Q8_0 embedding), run by PyTorch's int4 CPU kernel (`_weight_int4pack_mm_for_cpu`,
the kernel gpt-fast's int4 mode uses):

- every projection (q, k, v, o, gate, up, down): 4-bit codes in groups of 32 along the input, each group
  with its own scale and offset (w = scale * code + min, codes 0..15, from the group's min and max);
- the LM head (and the draft vocabulary's head): 8-bit codes in groups of 32 with a scale (w = scale *
  code, codes -127..127), run as two 4-bit planes (code = 16 * high + low) whose products are summed.

On a model read from that GGUF both grids are the file's own: llama.cpp's quantizer puts a group's min
and max on codes 0 and 15 (Q4_1) and its largest magnitude on +-127 (Q8_0), so the codes come back
exactly. What changes is the arithmetic: the kernel takes bfloat16 activations, scales and offsets
(8 significant bits, where the file's scales have 11) and returns bfloat16 products; the residual stream,
attention and norms stay in the model's dtype. So a quantized model is a different model from the float32
one, as llama.cpp is: its greedy text agrees with Hugging Face's float32 text for a while and then may
part (measured in benchmarks/real_model.py), and a lossless spec on it equals *its* greedy output.

After `quantize`, each quantized layer's `weight` holds the values the kernel multiplies by (float32),
so code that reads the weight (gradients, torch.compile, a draft vocabulary) computes the same function
up to activation rounding. A layer whose weight is later replaced or written is requantized from the new
values on its next eager call. The kernel serves CPU calls without gradients, eager or under
torch.compile (inductor fuses the code around it: SmolLM2 decodes at about 60 tokens/s on 2 cores, where
float32 runs at about 18); calls with gradients use the float32 weight.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from decspec.dsl.diagnostics import DecError
from decspec.progress import progress

GROUP = 32  # input features per scale: llama.cpp's Q4_1 and Q8_0 block size
SCHEMES = ("int4",)
_lock = threading.Lock()


@dataclass
class Int4Planes:
    """A weight [N, K] as one or two int4 planes for `_weight_int4pack_mm_for_cpu`: y = sum over planes of
    x @ ((code - 8) * scale + zero).T, in bfloat16. N is padded to a multiple of 16 (the kernel's tile)."""

    planes: list  # [(packed uint8 [N16, K/2], scales_and_zeros bfloat16 [K/G, N16, 2])]
    n_out: int
    n_in: int
    kind: str  # "int4" (affine 4-bit) or "int8" (symmetric 8-bit as two 4-bit planes)
    key: tuple  # the weight_key of the layer's weight these planes were made from (and written back into)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> x @ W.T [..., N] in x's dtype."""
        x2 = x.reshape(-1, self.n_in).to(torch.bfloat16)
        y = None
        for packed, sz in self.planes:
            part = torch._weight_int4pack_mm_for_cpu(x2, packed, GROUP, sz)
            y = part.float() if y is None else y + part.float()
        return y[:, : self.n_out].to(x.dtype).reshape(*x.shape[:-1], self.n_out)


def _pack(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[tuple, torch.Tensor]:
    """codes [N, K] in 0..15, scale/zero [N, K/G] (w = (code - 8) * scale + zero) -> (a kernel plane padded to N16,
    the float32 values [N, K] it multiplies by: bfloat16 scales and offsets applied to the codes)."""
    N, K = codes.shape
    sz = torch.stack([scale, zero], -1).to(torch.bfloat16)  # [N, K/G, 2]
    s, z = sz[..., 0].float(), sz[..., 1].float()
    values = ((codes.float() - 8).view(N, K // GROUP, GROUP) * s[..., None] + z[..., None]).view(N, K)
    pad = -N % 16
    codes = F.pad(codes.to(torch.int32), (0, 0, 0, pad), value=8).contiguous()
    sz = F.pad(sz, (0, 0, 0, 0, 0, pad)).transpose(0, 1).contiguous()  # [K/G, N16, 2]
    return (torch._convert_weight_to_int4pack_for_cpu(codes, 1), sz), values


def int4_planes(w: torch.Tensor, key: tuple) -> tuple[Int4Planes, torch.Tensor]:
    """Affine 4-bit groups: scale = (max - min) / 15, code = round((w - min) / scale) -> (code - 8) * scale + (min + 8 scale)."""
    N, K = w.shape
    g = w.detach().float().reshape(N, K // GROUP, GROUP)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = (hi - lo) / 15
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = ((g - lo[..., None]) / safe[..., None]).round().clamp(0, 15).reshape(N, K)
    plane, values = _pack(codes, scale, lo + 8 * scale)
    return Int4Planes([plane], N, K, "int4", key), values


def int8_planes(w: torch.Tensor, key: tuple) -> tuple[Int4Planes, torch.Tensor]:
    """Symmetric 8-bit groups (scale = max|w| / 127, code in -127..127) as two 4-bit planes: code = 16 * high + low,
    high in -8..7 (plane scale 16 * scale, offset 0), low in 0..15 (plane scale `scale`, offset 8 * scale)."""
    N, K = w.shape
    g = w.detach().float().reshape(N, K // GROUP, GROUP)
    scale = g.abs().amax(-1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    code = (g / safe[..., None]).round().clamp(-127, 127).to(torch.int32)
    high, low = torch.div(code, 16, rounding_mode="floor"), code % 16
    (p1, v1), (p2, v2) = _pack((high + 8).reshape(N, K), 16 * scale, torch.zeros_like(scale)), _pack(low.reshape(N, K), scale, 8 * scale)
    return Int4Planes([p1, p2], N, K, "int8", key), v1 + v2


MAKERS = {"int4": int4_planes, "int8": int8_planes}


def quantizable(layer: nn.Module) -> bool:
    w = getattr(layer, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[1] % GROUP == 0 and w.is_floating_point() and w.device.type == "cpu"


def quantize_layer(layer: nn.Module, kind: str) -> None:
    """Give a linear layer (Linear or SubsetHead) `kind` planes and write the values they hold into its weight."""
    from decspec.stdlib.models.transformer import weight_key

    if not quantizable(layer):
        return
    with torch.no_grad():
        planes, values = MAKERS[kind](layer.weight, ())
        layer.weight.copy_(values.to(layer.weight.dtype))
    planes.key = weight_key(layer.weight)
    layer.__dict__["_int4"] = planes


def quantized_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """x @ W.T + b through the layer's int4 planes, or None where they do not serve (not quantized, another
    device, gradients). A weight replaced or written since is requantized first (in eager code; under
    torch.compile the kernel is a call in the graph, on the planes it was traced with)."""
    planes = layer.__dict__.get("_int4")
    if planes is None or x.device.type != "cpu" or (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad)):
        return None
    from decspec.stdlib.models.transformer import weight_key

    key = None if torch.compiler.is_compiling() else weight_key(layer.weight)  # compiled code reads the planes it was traced with
    if key is not None and planes.key != key:
        with _lock:
            planes = layer.__dict__["_int4"]
            if planes.key != key:
                planes = MAKERS[planes.kind](layer.weight, key)[0]
                layer.__dict__["_int4"] = planes
    y = planes.matmul(x)
    bias = getattr(layer, "bias", None)
    return y if bias is None else y + bias


def check_scheme(scheme) -> None:
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise DecError(f"quantization {scheme!r} is not one decspec has", hint=f"use one of: {', '.join(SCHEMES)}")


def quantize(model: nn.Module, scheme: str = "int4") -> nn.Module:
    """Quantize decspec's built-in Transformer in place (see the module docstring) -> the model.

    The decoder layers' projections get 4-bit planes; the LM head (and the draft-vocabulary head drafts share)
    8-bit ones. The embedding lookup reads the LM head's values when the two are tied. Draft heads (EAGLE,
    Medusa, Hydra) keep their weights. Raises DecError for another model class or scheme, or a model that is
    not on the CPU."""
    from decspec.stdlib.models.transformer import Linear, Transformer

    check_scheme(scheme)
    if not isinstance(model, Transformer):
        raise DecError(f"quantize applies to decspec's built-in transformer, not {type(model).__name__}",
                       hint="load the model with decspec.stdlib.models.pretrained.load_transformer (or a named model / .gguf file)")
    if model.device.type != "cpu":
        raise DecError(f"quantize {scheme!r} runs on the CPU (PyTorch's int4 CPU kernel); this model is on {model.device}")
    layers = [m for m in model.model.layers.modules() if isinstance(m, Linear)]
    if not any(quantizable(m) for m in layers):
        raise DecError(f"quantize {scheme!r} needs projections whose input size is a multiple of {GROUP} (the group size); this "
                       f"model's hidden size is {model.config.hidden_size}", hint="run this model unquantized")
    for module in progress(layers, f"quantizing to {scheme}", unit="layer"):
        quantize_layer(module, "int4")
    quantize_layer(model.lm_head, "int8")
    sub = model.draft_lm_head
    if sub is not None:  # drafts propose through rows of the LM head: take its new values, as 8-bit groups too
        with torch.no_grad():
            sub.weight.copy_(model.lm_head.weight.detach()[sub.ids])
        quantize_layer(sub, "int8")
    model.quantization = scheme
    return model
