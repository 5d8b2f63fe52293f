"""dsqc.passes: graph passes, one file each, named for what they do (FP32 passes; BiasCorrection,
AdaRound, GPTQ and InsertQDQ edit the QDQ model)."""

from .adaround import AdaRound
from .batchnorm_to_mul_add import BatchNormToMulAdd
from .bias_correction import BiasCorrection
from .eliminate_dead_code import EliminateDeadCode
from .eliminate_identity import EliminateIdentity
from .equalize_cross_layer import EqualizeCrossLayer
from .fold_add_into_bias import FoldAddIntoBias
from .fold_constants import FoldConstants
from .fold_pad_into_conv import FoldPadIntoConv
from .fuse_conv_bn import FuseConvBatchNorm
from .gptq import GPTQ
from .reduce_mean_to_global_pool import ReduceMeanToGlobalPool
from .shift_activations import ShiftActivations
from .simplify_reshape_transpose import SimplifyReshapeTranspose
from .smooth_quant import SmoothQuant

__all__ = [
    "GPTQ",
    "AdaRound",
    "BatchNormToMulAdd",
    "BiasCorrection",
    "EliminateDeadCode",
    "EliminateIdentity",
    "EqualizeCrossLayer",
    "FoldAddIntoBias",
    "FoldConstants",
    "FoldPadIntoConv",
    "FuseConvBatchNorm",
    "ReduceMeanToGlobalPool",
    "ShiftActivations",
    "SimplifyReshapeTranspose",
    "SmoothQuant",
]
