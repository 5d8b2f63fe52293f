"""PTQ boosters: FP32-side rewrites before calibration (CLE, SmoothQuant) and bias correction after Q/DQ.

``apply_boosters`` runs on the normalized FP32 model and returns an FP32 model computing the same
function (CLE exactly; SmoothQuant exactly up to float rounding) that quantizes better; the QDQ model
is then built from it as usual. ``correct_biases`` takes that FP32 model and its QDQ model and returns
the QDQ model with bias-corrected layers.

Recipe table (the pipeline reads it into ``BoosterOptions.from_dict``)::

    [boosters]
    cle = true               # cross-layer equalization of Conv → ReLU/none → Conv chains
    smoothquant = 0.5        # alpha; omit (or false) to disable
    shift = true             # centre one-signed MatMul/Gemm inputs (default: on for symmetric activations)
    bias_correction = true
    adaround = true          # learned rounding of Conv/ConvTranspose/Gemm/MatMul weights (after Q/DQ)
    adaround_iterations = 500
    gptq = true              # GPTQ on Gemm/MatMul weights (AdaRound then takes the other layers)
    gptq_act_order = false   # GPTQ: columns by decreasing Hessian diagonal
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from dsqc.calibration.channel_stats import channel_stats
from dsqc.calibration.data import SampleSet
from dsqc.calibration.runner import calibrate
from dsqc.errors import RecipeError
from dsqc.ir import Model, constant_value
from dsqc.model_io import prepare
from dsqc.op_kinds import data_channel_axis
from dsqc.passes.bias_correction import COMPUTE, BiasCorrection, float_input
from dsqc.passes.equalize_cross_layer import EqualizeCrossLayer
from dsqc.passes.shift_activations import ShiftActivations, shift_targets, unshifted
from dsqc.passes.smooth_quant import SmoothQuant, targets
from dsqc.quant.rounding import ROUNDED_MARK, RoundingOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoosterOptions:
    cle: bool = False
    smoothquant: float | None = None
    bias_correction: bool = True  # on by default: torchvision MobileNetV2 graph 38 → 48 dB
    shift: bool | None = None  # None: on when activations are quantized symmetrically (see resolved)
    adaround: bool = False
    adaround_iterations: int = 500
    gptq: bool = False
    gptq_act_order: bool = False

    @property
    def rounding(self) -> RoundingOptions | None:
        """What ``learn_rounding`` should do after Q/DQ insertion, or ``None``."""
        if not (self.adaround or self.gptq):
            return None
        return RoundingOptions(self.adaround, self.gptq, self.adaround_iterations, self.gptq_act_order)

    @property
    def fp32_side(self) -> bool:
        return self.cle or self.smoothquant is not None or bool(self.shift)

    def resolved(self, symmetric_activations: bool) -> BoosterOptions:
        """The options with ``shift`` decided: one-signed inputs only cost bits without a zero point."""
        if self.shift is not None:
            return self
        return dataclasses.replace(self, shift=symmetric_activations)

    @classmethod
    def from_dict(cls, table: dict[str, Any], label: str = "recipe") -> BoosterOptions:
        """Validate a ``[boosters]`` table; errors name the key."""
        unknown = set(table) - set(_KEYS)
        if unknown:
            raise RecipeError(f"{label}: unknown key 'boosters.{sorted(unknown)[0]}'; allowed: "
                              + ", ".join(sorted(_KEYS)))
        for key in ("cle", "bias_correction", "shift", "adaround", "gptq", "gptq_act_order"):
            if not isinstance(table.get(key, False), bool):
                raise RecipeError(f"{label}: boosters.{key} must be true or false")
        alpha = table.get("smoothquant")
        if alpha is False:
            alpha = None
        if alpha is True:
            alpha = 0.5
        if alpha is not None and (not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0):
            raise RecipeError(f"{label}: boosters.smoothquant must be an alpha in [0, 1] (or true/false)")
        iterations = table.get("adaround_iterations", 500)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or not 1 <= iterations <= 100_000:
            raise RecipeError(f"{label}: boosters.adaround_iterations must be an integer in [1, 100000]")
        shift = table.get("shift")
        return cls(bool(table.get("cle", False)), None if alpha is None else float(alpha),
                   bool(table.get("bias_correction", True)), None if shift is None else bool(shift),
                   bool(table.get("adaround", False)), iterations, bool(table.get("gptq", False)),
                   bool(table.get("gptq_act_order", False)))


_KEYS = ("adaround", "adaround_iterations", "bias_correction", "cle", "gptq", "gptq_act_order", "shift",
         "smoothquant")


def apply_boosters(fp32: onnx.ModelProto, samples: SampleSet, options: BoosterOptions,
                   batch_size: int = 8) -> onnx.ModelProto:
    """CLE, then SmoothQuant (per-channel absmax streamed over ``samples``), then the shift of
    one-signed layer inputs (min/max streamed over ``samples``), as options ask."""
    if not options.fp32_side:
        return fp32
    model = Model.from_proto(fp32)
    if options.cle:
        changed = EqualizeCrossLayer()(model).modified
        log.info("boosters: cross-layer equalization %s", "applied" if changed else "found no chain")
    if options.smoothquant is not None:
        proto = model.to_proto()
        names = targets(model.graph)
        stats = channel_stats(proto, dict.fromkeys(names, -1), samples, batch_size)
        result = SmoothQuant(options.smoothquant, {n: s.absmax for n, s in stats.items()})(model)
        log.info("boosters: SmoothQuant(alpha=%g) on %d activation tensors%s", options.smoothquant,
                 len(names), "" if result.modified else " (nothing changed)")
    if options.shift:
        proto = model.to_proto()
        names = shift_targets(model.graph)
        seen = calibrate(proto, names, samples, method="minmax", batch_size=batch_size) if names else {}
        shift = ShiftActivations({n: (s.min, s.max) for n, s in seen.items()})
        shift(model)
        log.info("boosters: shifted %d of %d MatMul/Gemm input tensors to zero-centred ranges",
                 len(shift.shifted), len(names))
    out = model.to_proto()
    out.ir_version = fp32.ir_version
    return prepare(out, "boosted model")


class BiasCorrector:
    """Bias correction of QDQ models against one FP32 model and sample set: ``ΔW · E[x]`` with the
    per-channel input means streamed over the samples through the FP32 model. The means depend on
    neither plan nor precision, so they are streamed once (for the tensors a call first needs) and serve
    every QDQ model corrected after: range select's candidates, each mixed-precision round, the build.
    ``bias_shifts`` holds the last call's ``ΔW · E[x]`` per node whose int32 bias it corrected."""

    def __init__(self, fp32: onnx.ModelProto, samples: SampleSet, batch_size: int = 8) -> None:
        self.fp32, self.samples, self.batch_size = fp32, samples, batch_size
        self.reference = Model.from_proto(fp32)
        weights = {n.name: constant_value(n.inputs[1]) for n in self.reference.graph.nodes
                   if n.op in COMPUTE and len(n.inputs) > 1}
        self.float_weights = {k: v for k, v in weights.items() if v is not None}
        self._means: dict[tuple[str, int], np.ndarray] = {}
        self.bias_shifts: dict[str, np.ndarray] = {}

    def __call__(self, qdq: onnx.ModelProto) -> onnx.ModelProto:
        model = Model.from_proto(qdq)
        produced = self.reference.graph.tensors()
        wanted: dict[str, tuple[str, int]] = {}
        learned = set(model.metadata.get(ROUNDED_MARK, "").splitlines())  # AdaRound/GPTQ fitted the mean too
        for node in model.graph.nodes:
            if node.name in self.float_weights and node.name not in learned:
                # a shifted input's own bias fix is in place (quantize.py): correct for E[x], not E[x - m]
                tensor = unshifted(self.reference.graph, float_input(node).name)
                if tensor in produced and constant_value(produced[tensor]) is None:
                    wanted[node.name] = (tensor, data_channel_axis(node))
        missing = {tensor: axis for tensor, axis in wanted.values() if (tensor, axis) not in self._means}
        if missing:
            stats = channel_stats(self.fp32, missing, self.samples, self.batch_size)
            self._means.update({(t, a): stats[t].mean for t, a in missing.items()})
        bc = BiasCorrection(self.float_weights, {node: self._means[key] for node, key in wanted.items()})
        bc(model)
        self.bias_shifts = dict(bc.bias_shifts)
        log.info("boosters: bias correction on %d of %d layers", len(bc.corrected), len(wanted))
        out = model.to_proto()
        out.ir_version = qdq.ir_version
        return prepare(out, "bias-corrected model")


def correct_biases(fp32: onnx.ModelProto, qdq: onnx.ModelProto, samples: SampleSet,
                   batch_size: int = 8) -> onnx.ModelProto:
    """Bias correction of ``qdq`` against ``fp32`` (the model it was quantized from), once."""
    return BiasCorrector(fp32, samples, batch_size)(qdq)
