"""GPTQ (Frantar et al. 2023): quantize a Gemm/MatMul weight one input column at a time, pushing each
column's rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's squared output error, ``H = 2 XᵀX`` over calibration inputs ``X`` (what the layer reads in
the quantized model).

Per layer, with the weight as rows ``[outputs, K]``: ``H += damp · mean(diag H) · I`` (damp 1 %,
×10 until the Cholesky factor exists); inputs never seen (``H_kk = 0``) get ``H_kk = 1``; optionally
columns in order of decreasing ``H_kk`` (act-order); the upper Cholesky factor ``U`` of ``H⁻¹``;
then blocks of ``block`` columns with lazy updates of the rest. Every column is rounded on the
plan's grid — its scales, zero points and ``[qmin, qmax]`` are kept (per channel or per block along K,
as the planner chose them from the FP32 weight), not recomputed. The result is kept only where its
``tr(ΔW H ΔWᵀ)`` is below round-to-nearest's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import Model
from dsqc.op_kinds import MATRIX_OPS
from dsqc.pass_infra import Pass, PassResult

from ._weight_grid import WeightGrid, as_rows, from_rows, weight_grid

log = logging.getLogger(__name__)
MARK = "dsqc.gptq"
LAYERS = MATRIX_OPS


@dataclass(frozen=True)
class GPTQResult:
    """``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` for round-to-nearest and GPTQ; ``kept``: GPTQ's ints won."""

    nearest_error: float
    gptq_error: float
    changed: int
    kept: bool


class GPTQ(Pass):
    """Re-round the integer weights of the Gemm/MatMul layers in ``hessians`` (node name → ``[K, K]``,
    ``Σ 2 xxᵀ`` over input rows). ``float_weights``: FP32 weights by node name; ``limits``: the
    plan's ``(qmin, qmax)`` by node name."""

    def __init__(self, float_weights: Mapping[str, np.ndarray], hessians: Mapping[str, np.ndarray],
                 limits: Mapping[str, tuple[int, int]] | None = None, block: int = 128,
                 damp: float = 0.01, act_order: bool = False) -> None:
        self.float_weights = dict(float_weights)
        self.hessians = dict(hessians)
        self.limits = dict(limits or {})
        self.block, self.damp, self.act_order = block, damp, act_order
        self.results: dict[str, GPTQResult] = {}

    def call(self, model: Model) -> PassResult:
        modified = False
        for node in model.graph.nodes:
            if node.op not in LAYERS or node.name not in self.hessians or node.name not in self.float_weights:
                continue
            grid = weight_grid(node, self.limits.get(node.name))
            w = np.asarray(self.float_weights[node.name], np.float64)
            rows = as_rows(node, w)
            reason = grid if isinstance(grid, str) else None
            if reason is None and rows is None:
                reason = "weight is not a 2-D Gemm/MatMul operand"
            if reason is None and isinstance(grid, WeightGrid) and grid.q.shape != w.shape:
                reason = f"FP32 weight {w.shape} does not match the integer weight {grid.q.shape}"
            h = np.asarray(self.hessians[node.name], np.float64)
            if reason is None and rows is not None and h.shape != (rows.shape[1],) * 2:
                reason = f"Hessian {h.shape} does not match {rows.shape[1]} inputs"
            if reason is not None or not isinstance(grid, WeightGrid) or rows is None:
                log.debug("%s: skip %s: %s", self.name, node.name, reason)
                continue
            result = self._quantize(node, grid, rows, h)
            self.results[node.name] = result
            modified |= result.kept and result.changed > 0
            log.info("%s: %s relative error %.4g → %.4g (%d weights changed)%s", self.name, node.name,
                     result.nearest_error, result.gptq_error, result.changed,
                     "" if result.kept else ", kept nearest")
        if modified:
            model.metadata[MARK] = f"{sum(r.kept for r in self.results.values())} layers re-rounded"
        return PassResult(model, modified)

    def _quantize(self, node: gs.Node, grid: WeightGrid, w: np.ndarray, h: np.ndarray) -> GPTQResult:
        scale = as_rows(node, grid.scale.astype(np.float64))
        zero = as_rows(node, grid.zero)
        nearest = as_rows(node, grid.q)
        assert scale is not None and zero is not None and nearest is not None
        q = gptq_rows(w, h, scale, zero, grid.qmin, grid.qmax, self.block, self.damp, self.act_order)

        def error(ints: np.ndarray) -> float:
            delta = w - (ints - zero) * scale
            return float(np.einsum("ij,jk,ik->", delta, h, delta))

        norm = max(float(np.einsum("ij,jk,ik->", w, h, w)), 1e-30)
        before, after = error(nearest) / norm, error(q) / norm
        kept = after < before
        changed = int(np.count_nonzero(q != nearest))
        if kept:
            grid.write(from_rows(node, q))
        return GPTQResult(before, after, changed, kept)


def gptq_rows(w: np.ndarray, h: np.ndarray, scale: np.ndarray, zero: np.ndarray, qmin: int, qmax: int,
              block: int = 128, damp: float = 0.01, act_order: bool = False) -> np.ndarray:
    """GPTQ's integers for ``w`` ``[outputs, K]`` on the fixed grid ``scale``/``zero`` (same shape)."""
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    k = w.shape[1]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w, h, scale, zero = w[:, perm], h[np.ix_(perm, perm)], scale[:, perm], zero[:, perm]
    u = _inverse_cholesky(h, damp)
    q = np.zeros(w.shape, np.int64)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1, u1 = w[:, i1:i2].copy(), u[i1:i2, i1:i2]
        err1 = np.zeros_like(w1)
        for i in range(i2 - i1):
            col, s, z = w1[:, i], scale[:, i1 + i], zero[:, i1 + i]
            qi = np.clip(np.rint(col / s) + z, qmin, qmax)
            q[:, i1 + i] = qi
            e = (col - (qi - z) * s) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    out = np.empty_like(q)
    out[:, perm] = q
    return out


def _inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor of ``(H + λI)⁻¹``; λ grows ×10 until ``H + λI`` is positive definite."""
    mean_diag = float(np.mean(np.diag(h)))
    for attempt in range(6):
        damped = h + (damp * 10 ** attempt) * mean_diag * np.eye(h.shape[0])
        try:
            inverse = np.linalg.inv(np.linalg.cholesky(damped))
            return np.linalg.cholesky(inverse.T @ inverse).T
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("Hessian is not positive definite even with 10⁵× damping")
