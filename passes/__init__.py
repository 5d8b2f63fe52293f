"""dsqc.passes: FP32 graph passes, one file each, named for what they do."""

from .batchnorm_to_mul_add import BatchNormToMulAdd
from .eliminate_dead_code import EliminateDeadCode
from .eliminate_identity import EliminateIdentity
from .fold_add_into_bias import FoldAddIntoBias
from .fold_constants import FoldConstants
from .fold_pad_into_conv import FoldPadIntoConv
from .fuse_conv_bn import FuseConvBatchNorm
from .simplify_reshape_transpose import SimplifyReshapeTranspose

__all__ = [
    "BatchNormToMulAdd",
    "EliminateDeadCode",
    "EliminateIdentity",
    "FoldAddIntoBias",
    "FoldConstants",
    "FoldPadIntoConv",
    "FuseConvBatchNorm",
    "SimplifyReshapeTranspose",
]
