"""The tower: an MLP whose linear layers come from a layer factory.

``MLP(input_dim=..., hidden=(400, 400), layer=Linear)`` is the plain DNN tower; passing another factory
(an APG layer, a partitioned STAR/ADL layer, ...) changes every hidden layer without touching the
backbone that owns the tower. Every layer a factory makes follows the adaptive interface
``forward(x, cond) -> same shape as the static layer``; the static :class:`Linear` ignores ``cond``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# oneDNN's matrix products for float32 linear layers on the CPU (see :class:`Linear`); set the environment
# variable ADACTR_CPU_LINEAR=aten (or this attribute to False) for PyTorch's own ``F.linear``.
CPU_ONEDNN = (os.environ.get("ADACTR_CPU_LINEAR", "onednn") != "aten" and torch.backends.mkldnn.is_available()
              and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x W^T + b`` by oneDNN: x (B, in), weight (out, in) -> (B, out)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


# Below this many rows oneDNN's per-call overhead outweighs its faster product: a 400 -> 400 layer
# without autograd, two threads, oneDNN vs F.linear: 1 row 28 vs 20 us, 64 rows 135 vs 128 us, 256 rows
# 401 vs 420 us, 4096 rows 6.3-6.6 vs 7.1-7.4 ms (single-row serving stays on F.linear).
ONEDNN_MIN_ROWS = 128


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    return (CPU_ONEDNN and x.device.type == "cpu" and x.dim() == 2 and x.shape[0] >= ONEDNN_MIN_ROWS
            and x.dtype == torch.float32 and weight.dtype == torch.float32 and not torch.compiler.is_compiling())


class _OneDnnLinearFn(torch.autograd.Function):
    """``y = x W^T + b`` whose forward and input gradient are oneDNN products (CPU, float32).

    The weight gradient stays PyTorch's ``g^T x`` (MKL): oneDNN would need both operands transposed
    into copies first, which costs more than it saves.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)  # (B, out)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors  # (B, in), (out, in)
        g = g.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _onednn_linear(g, weight.t().contiguous(), None)  # (B, out) @ (out, in): (B, in)
        if ctx.needs_input_grad[1]:
            gw = g.t().mm(x)  # (out, B) @ (B, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)  # (out,)
        return gx, gw, gb


class Linear(nn.Linear):
    """``nn.Linear`` with the adaptive interface: ``forward(x, cond)``, ``cond`` ignored.

    On the CPU a float32 layer runs its forward and input-gradient products through oneDNN rather than
    MKL: on this project's 2-core AMD EPYC, MKL multiplies a (4096, 400) by a (400, 390) matrix (the input
    gradient of a 39-field x 10 tower's first layer) at 110 GFLOP/s and oneDNN at 195; a hidden layer's
    forward, (4096, 400) by (400, 400) plus bias, at 160 against 199
    (``python benchmarks/cpu_step.py --threads 2 --gemm``). Batches under :data:`ONEDNN_MIN_ROWS` rows,
    other dtypes, inputs that are not 2-D and ``torch.compile`` keep ``F.linear``. Same maths; results
    differ by float rounding only, and are reproducible run to run.
    """

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if not _use_onednn(x, self.weight):
            return super().forward(x)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad
                                        or (self.bias is not None and self.bias.requires_grad)):
            return _OneDnnLinearFn.apply(x, self.weight, self.bias)
        return _onednn_linear(x, self.weight, self.bias)


class _WideLinearFn(torch.autograd.Function):
    """``y = x W^T + b`` with a backward written for out >> in; see :class:`WideOutputLinear`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.addmm(bias, x, weight.t())  # (B, out)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors  # (B, in), (out, in)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = g.mm(weight.t().contiguous().t())  # (B, out) @ (out, in) read column-major: (B, in)
        if ctx.needs_input_grad[1]:
            gw = x.t().mm(g).t().contiguous()  # (in, B) @ (B, out), transposed: (out, in)
        if ctx.needs_input_grad[2]:
            gb = g.sum(0)  # (out,)
        return gx, gw, gb


class WideOutputLinear(Linear):
    """:class:`Linear` for a layer whose output is far wider than its input (APG's generator: ~10 -> 10^5).

    Same parameters, outputs and gradients as ``nn.Linear``; only the order of the backward's matrix
    products differs. Autograd's ``F.linear`` forms ``dW = g^T x`` as a (out, B) @ (B, in) product, which
    the CPU BLAS runs at a few GFLOP/s when ``in`` is tiny; here ``dW = (x^T g)^T`` ((in, B) @ (B, out)).
    One CPU thread, B = 4096, forward + backward: 10 -> 25,600 1463 -> 618 ms, 10 -> 160,000 11.2 -> 3.4 s,
    no change at in = 64 or 393 (``benchmarks/apg_cost.py generator --threads 1 --batch 4096``). Without
    autograd (evaluation, export) it is plain ``F.linear``.
    """

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.bias is not None and torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _WideLinearFn.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


# (in_features, out_features) -> a module with forward(x, cond)
LayerFactory = Callable[[int, int], nn.Module]


class Activation(str, Enum):
    RELU = "relu"
    GELU = "gelu"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    LEAKY_RELU = "leaky_relu"

    def make(self) -> nn.Module:
        if self is Activation.RELU:
            return nn.ReLU()
        if self is Activation.GELU:
            return nn.GELU()
        if self is Activation.TANH:
            return nn.Tanh()
        if self is Activation.SIGMOID:
            return nn.Sigmoid()
        return nn.LeakyReLU()


class MLP(nn.Module):
    """input -> [layer -> (batch norm) -> activation -> (dropout)] x len(hidden) -> (output layer).

    ``output_dim=None`` leaves the last hidden activations as the output (for parallel structures that
    concatenate towers); otherwise a final layer made by ``output_layer`` (a static :class:`Linear` unless
    given; it gets ``cond`` like the hidden layers, so a per-domain tower's output layer can be per-domain)
    maps to ``output_dim``.

    A layer whose ``reads_undropped_input`` is true (a self-wise APG layer, which generates its parameters
    from its own input; an AdaSparse layer with ``pruner_before_dropout``) is called
    ``layer(x, cond, source)``: ``x`` is its input as every layer gets it (after the previous layer's
    dropout), ``source`` the same activations before that dropout. In evaluation they are the same tensor.
    """

    def __init__(self, *, input_dim: int, hidden: Sequence[int], output_dim: int | None = 1,
                 layer: LayerFactory = Linear, activation: Activation = Activation.RELU,
                 dropout: float = 0.0, batch_norm: bool = False,
                 output_layer: LayerFactory = Linear) -> None:
        super().__init__()
        if input_dim <= 0 or any(h <= 0 for h in hidden):
            raise ValueError(f"MLP sizes must be positive, got input {input_dim} and hidden {list(hidden)}")
        dims = [input_dim, *hidden]
        self.layers = nn.ModuleList(layer(i, o) for i, o in zip(dims[:-1], dims[1:], strict=True))
        # post[i]: layer i's batch norm and activation; its dropout is ``self.dropout``, applied after
        self.post = nn.ModuleList(
            nn.Sequential(*([nn.BatchNorm1d(o)] if batch_norm else []), activation.make()) for o in hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.output_dim = output_dim if output_dim is not None else dims[-1]
        self.out = output_layer(dims[-1], output_dim) if output_dim is not None else None

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        source = x  # the activations before dropout (the input has none)
        for layer, post in zip(self.layers, self.post, strict=True):
            source = post(_call(layer, x, cond, source))  # (B, h)
            x = self.dropout(source) if self.dropout is not None else source
        # a per-domain output layer reads cond too
        return _call(self.out, x, cond, source) if self.out is not None else x


def _call(layer: nn.Module, x: Tensor, cond: Tensor | None, source: Tensor) -> Tensor:
    """``layer(x, cond)``, or ``layer(x, cond, source)`` for a layer that reads its input before dropout."""
    return layer(x, cond, source) if getattr(layer, "reads_undropped_input", False) else layer(x, cond)
