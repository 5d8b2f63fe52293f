"""AdaRound (Nagel et al. 2020): learn, per weight, whether to round down or up, layer by layer.

Round-to-nearest minimises each weight's own error, not the layer's output error; at 4 bits that
difference is most of the loss. For each layer the integer weight becomes ``floor(W / s) + h + z``
with ``h`` in [0, 1] a rectified sigmoid of a free variable ``V`` (ζ = 1.1, γ = -0.1), initialised so
that ``h`` equals the fractional part (the soft weight starts at ``W``). Adam minimises

    ‖ W x_fp32 − Ŵ(h) x̃ ‖² / E_nearest  +  λ · mean(1 − |2h − 1|^β)

where ``x̃`` is what the layer reads in the quantized model, ``x_fp32`` what it reads in FP32, the
error is summed over output channels and averaged over positions, and ``E_nearest`` is
round-to-nearest's, so λ means the same in every layer. The regulariser (off for the first 20 % of
the iterations, then β annealed 20 → 2) drives every ``h`` to 0 or 1; λ = 100 (tuned on the MNIST
CNN at 4 bits: 1 → 25.7 dB, 10 → 28.7, 100 → 29.5; it should dominate once β is small, so that
the hard rounding equals what was optimised). The result is rounded hard (``h ≥ ½``), clipped to
the plan's range, and kept only if its output error on the stored inputs is below round-to-nearest's.
Scale and zero point stay as planned; torch is imported here only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import Model
from dsqc.op_kinds import COMPUTE_OPS
from dsqc.pass_infra import Pass, PassResult

from ._weight_grid import WeightGrid, weight_grid

log = logging.getLogger(__name__)
MARK = "dsqc.adaround"
LAYERS = COMPUTE_OPS
_ZETA, _GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class LayerInputs:
    """One layer's data input on the same samples: in the quantized model and in FP32.
    Conv/ConvTranspose: ``[N, C, ...]``; Gemm/MatMul: rows ``[M, K]``."""

    quantized: np.ndarray
    fp32: np.ndarray


@dataclass(frozen=True)
class RoundingResult:
    """Output error (mean squared, on the stored inputs) before and after; ``kept``: the new ints won."""

    nearest_mse: float
    learned_mse: float
    changed: int
    kept: bool


class AdaRound(Pass):
    """Re-round the integer weights of the layers named in ``inputs`` (keys: node names) against
    their FP32 outputs. ``float_weights``: the FP32 weights by node name; ``limits``: the plan's
    ``(qmin, qmax)`` by node name (default: the storage type's narrow range)."""

    def __init__(self, float_weights: Mapping[str, np.ndarray], inputs: Mapping[str, LayerInputs],
                 limits: Mapping[str, tuple[int, int]] | None = None, iterations: int = 500,
                 batch: int = 32, reg: float = 100.0, lr: float = 1e-2, seed: int = 0) -> None:
        self.float_weights = dict(float_weights)
        self.inputs = dict(inputs)
        self.limits = dict(limits or {})
        self.iterations, self.batch, self.reg, self.lr, self.seed = iterations, batch, reg, lr, seed
        self.results: dict[str, RoundingResult] = {}

    def call(self, model: Model) -> PassResult:
        modified = False
        for node in model.graph.nodes:
            if node.op not in LAYERS or node.name not in self.inputs or node.name not in self.float_weights:
                continue
            grid = weight_grid(node, self.limits.get(node.name))
            w = np.asarray(self.float_weights[node.name], np.float32)
            forward = _forward(node, w.ndim)
            reason = grid if isinstance(grid, str) else forward if isinstance(forward, str) else None
            if reason is None and isinstance(grid, WeightGrid) and grid.q.shape != w.shape:
                reason = f"FP32 weight {w.shape} does not match the integer weight {grid.q.shape}"
            if reason is not None or not isinstance(grid, WeightGrid) or isinstance(forward, str):
                log.debug("%s: skip %s: %s", self.name, node.name, reason)
                continue
            result = self._round(grid, w, forward, self.inputs[node.name])
            self.results[node.name] = result
            modified |= result.kept and result.changed > 0
            log.info("%s: %s output MSE %.4g → %.4g (%d weights flipped)%s", self.name, node.name,
                     result.nearest_mse, result.learned_mse, result.changed,
                     "" if result.kept else ", kept nearest")
        if modified:
            model.metadata[MARK] = f"{sum(r.kept for r in self.results.values())} layers re-rounded"
        return PassResult(model, modified)

    def _round(self, grid: WeightGrid, w: np.ndarray, forward: Any, data: LayerInputs) -> RoundingResult:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small layers: one thread is faster than two contending ones
        try:
            return self._optimise(torch, grid, w, forward, data)
        finally:
            torch.set_num_threads(threads)

    def _optimise(self, torch: Any, grid: WeightGrid, w: np.ndarray, forward: Any,
                  data: LayerInputs) -> RoundingResult:
        torch.manual_seed(self.seed)
        x_q = torch.from_numpy(np.ascontiguousarray(data.quantized, np.float32))
        x_fp = torch.from_numpy(np.ascontiguousarray(data.fp32, np.float32))
        scale, zero = torch.from_numpy(grid.scale), torch.from_numpy(grid.zero.astype(np.float32))
        ratio = w / grid.scale
        floor = np.floor(ratio)
        rest = torch.from_numpy((ratio - floor).astype(np.float32))
        base = torch.from_numpy(floor.astype(np.float32))
        with torch.no_grad():
            target = forward(x_fp, torch.from_numpy(w))
        v = torch.nn.Parameter(-torch.log((_ZETA - _GAMMA) / (rest.clamp(1e-4, 1 - 1e-4) - _GAMMA) - 1))
        optimizer = torch.optim.Adam([v], lr=self.lr)

        def weight(h: torch.Tensor) -> torch.Tensor:
            return (torch.clamp(base + h + zero, grid.qmin, grid.qmax) - zero) * scale

        with torch.no_grad():  # the loss unit: round-to-nearest's error, so λ means the same in every layer
            nearest = _mse(forward, x_q, torch.from_numpy(grid.dequantize()), target)
        unit = max(nearest * target.shape[1], 1e-30)
        gen = torch.Generator().manual_seed(self.seed)
        n, warm = x_q.shape[0], int(0.2 * self.iterations)
        batch = self.batch * (8 if x_q.ndim == 2 else 1)  # Gemm/MatMul: rows, not images
        for step in range(self.iterations):
            idx = torch.randint(0, n, (min(batch, n),), generator=gen)
            h = torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)
            loss = _reconstruction(forward(x_q[idx], weight(h)), target[idx]) / unit
            if step >= warm:
                beta = 20 + (2 - 20) * (step - warm) / max(1, self.iterations - warm)
                loss = loss + self.reg * (1 - (2 * h - 1).abs().pow(beta)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        up = v.detach().numpy() >= 0  # h(V) ≥ ½
        learned = np.clip(floor.astype(np.int64) + up + grid.zero, grid.qmin, grid.qmax)
        with torch.no_grad():
            before = nearest
            after = _mse(forward, x_q, torch.from_numpy(grid.dequantize(learned)), target)
        changed = int(np.count_nonzero(learned != grid.q))
        kept = after < before
        if kept:
            grid.write(learned)
        return RoundingResult(before, after, changed, kept)


def _reconstruction(out: Any, target: Any) -> Any:
    """Squared error summed over the output-channel axis (1), averaged over samples and positions."""
    return (out - target).pow(2).sum(dim=1).mean()


def _mse(forward: Any, x: Any, w: Any, target: Any, chunk: int = 256) -> float:
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        total += float((forward(x[start:start + chunk], w) - target[start:start + chunk]).pow(2).sum())
    return total / float(target.numel())


def _forward(node: gs.Node, weight_rank: int) -> Any:
    """A torch function ``(x, w) -> output without bias`` for the layer, or why there is none."""
    import torch.nn.functional as F

    attrs = node.attrs
    if node.op == "MatMul":
        return lambda x, w: x @ w
    if node.op == "Gemm":
        if int(attrs.get("transA", 0)):
            return "Gemm with transA"
        alpha, trans_b = float(attrs.get("alpha", 1.0)), int(attrs.get("transB", 0))
        return lambda x, w: alpha * (x @ (w.T if trans_b else w))
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return f"{node.op} with auto_pad"
    spatial = weight_rank - 2
    pads = list(attrs.get("pads", []))
    if not 1 <= spatial <= 3:
        return f"{node.op} with a {weight_rank}-D weight"
    pads = pads or [0] * (2 * spatial)
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    group = int(attrs.get("group", 1))
    if node.op == "Conv":
        conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
        torch_pads = [p for i in reversed(range(spatial)) for p in (pads[i], pads[i + spatial])]
        return lambda x, w: conv(F.pad(x, torch_pads), w, None, strides, 0, dilations, group)
    if pads[:spatial] != pads[spatial:] or "output_shape" in attrs:
        return "ConvTranspose with asymmetric pads or output_shape"
    convt = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    extra = list(attrs.get("output_padding", [0] * spatial))
    return lambda x, w: convt(x, w, None, strides, pads[:spatial], extra, group, dilations)
