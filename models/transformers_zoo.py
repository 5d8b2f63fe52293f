"""Tiny BERT, GPT-2, Llama and DeepseekV3 (MLA attention + MoE) from ``transformers`` configs, random
weights, offline; exported with the TorchScript exporter for dsqc's tests and benchmarks.

Every model takes ``input_ids`` and ``attention_mask`` (int64 ``[batch, seq_len]``, seq_len static,
batch dynamic; the mask is passed explicitly, which avoids ``aten::diff``) and returns
``last_hidden_state`` (float32 ``[batch, seq_len, hidden]``). Attention is ``eager`` (explicit
MatMul/Softmax). Norm weights are randomised so no two norms share identical parameters.

DeepseekV3's routed experts: transformers' ``eager`` experts loop over the experts *hit while
tracing* and gather their weights with data-dependent indices (NonZero), so the exported graph fails
in ONNX Runtime when fewer experts are hit at run time (for example on constant token ids), and its
expert weights are not constants, so they cannot be quantized per channel. ``experts="dense"`` (the
default) registers an experts implementation that runs every expert on every token and weights its
output by the token's routing weight (0 when not selected): the same function, a static graph,
constant expert weights. ``experts="eager"`` keeps transformers' own loop.

Needs torch and transformers (the ``bench`` extra); nothing else in dsqc imports this module.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

ARCHS = ("bert", "gpt2", "llama", "deepseek_v3")
SEQ_LEN = 16
VOCAB = 256
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "last_hidden_state"
DENSE_EXPERTS = "dsqc_dense"
#: Node-name regex of the attention projections (Q/K/V and output) of all four exports and MiniLM,
#: for an INT4 ``[[override]]`` (Llama/DeepseekV3 ``self_attn/*proj*``, BERT ``query``/``key``/
#: ``value``/``attention/output/dense``, GPT-2 ``attn/c_attn``/``attn/c_proj``).
ATTENTION_PROJECTIONS = (r".*(self_attn/[a-z_]*proj[a-z_]*|attention/self/(query|key|value)|"
                         r"attention/output/dense|attn/c_attn|attn/c_proj)/.*")

_SMALL = {"vocab_size": VOCAB, "max_position_embeddings": 64}
_CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert": ("BertConfig", "BertModel", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                         "intermediate_size": 128}),
    "gpt2": ("GPT2Config", "GPT2Model", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64,
                                         "bos_token_id": 0, "eos_token_id": 0}),
    "llama": ("LlamaConfig", "LlamaModel", {"hidden_size": 64, "num_hidden_layers": 2,
                                            "num_attention_heads": 4, "num_key_value_heads": 2,
                                            "intermediate_size": 128}),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3Model", {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "intermediate_size": 128, "moe_intermediate_size": 32, "n_routed_experts": 4,
        "num_experts_per_tok": 2, "n_shared_experts": 1, "n_group": 1, "topk_group": 1,
        "first_k_dense_replace": 1, "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8, "v_head_dim": 16, "head_dim": 8}),
}


def _dense_experts_forward(self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                           top_k_weights: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the token's routing weight for it (0 if not chosen)."""
    out = torch.zeros_like(hidden_states)
    for expert in range(self.num_experts):
        chosen = (top_k_index == expert).to(top_k_weights.dtype)
        weight = (top_k_weights * chosen).sum(dim=-1, keepdim=True)
        hidden = self._apply_gate(nn.functional.linear(hidden_states, self.gate_up_proj[expert]))
        out = out + nn.functional.linear(hidden, self.down_proj[expert]) * weight
    return out


def _register_dense_experts() -> None:
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(DENSE_EXPERTS, _dense_experts_forward)


class LastHiddenState(nn.Module):
    """``(input_ids, attention_mask) → last_hidden_state`` around a transformers base model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state


def build_model(arch: str, seed: int = 0, experts: str = "dense") -> LastHiddenState:
    """The tiny ``arch`` model in eval mode with seeded random weights (norm weights randomised)."""
    if arch not in _CONFIGS:
        raise KeyError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    if experts not in ("dense", "eager"):
        raise ValueError(f"experts must be 'dense' or 'eager', got {experts!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    config_name, model_name, fields = _CONFIGS[arch]
    config = getattr(transformers, config_name)(**{**_SMALL, **fields})
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    config.use_cache = False
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    if arch == "deepseek_v3" and experts == "dense":
        _register_dense_experts()
        model.config._experts_implementation = DENSE_EXPERTS
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower() or "ln_" in name:
                param.copy_(torch.empty_like(param).uniform_(0.5, 1.5) if param.ndim and "bias" not in name
                            else torch.empty_like(param).normal_(0.0, 0.1))
    return LastHiddenState(model).eval()


def token_feeds(n: int, seq_len: int = SEQ_LEN, seed: int = 0, vocab: int = VOCAB,
                padded: float = 0.25) -> dict[str, np.ndarray]:
    """``n`` random sequences: uniform token ids; a ``padded`` share end in right padding (mask 0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (n, seq_len), dtype=np.int64)
    mask = np.ones((n, seq_len), np.int64)
    for row in np.flatnonzero(rng.random(n) < padded):
        mask[row, rng.integers(seq_len // 2, seq_len):] = 0
    return {"input_ids": ids, "attention_mask": mask}


def save_token_npz(path: str | os.PathLike[str], n: int, seq_len: int = SEQ_LEN, seed: int = 0) -> Path:
    """An ``.npz`` of :func:`token_feeds` for ``dsqc build --calib``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    feeds = token_feeds(n, seq_len, seed)
    np.savez(path, input_ids=feeds["input_ids"], attention_mask=feeds["attention_mask"])
    return path


def export_transformer(arch: str, path: str | os.PathLike[str], seq_len: int = SEQ_LEN, seed: int = 0,
                       experts: str = "dense") -> Path:
    """Export the tiny ``arch`` model to ONNX (opset 17, dynamic batch, static ``seq_len``)."""
    from dsqc.models.export import export_onnx

    module = build_model(arch, seed, experts)
    feeds = token_feeds(2, seq_len, seed=seed + 1, padded=0.5)
    args = tuple(torch.from_numpy(feeds[n]) for n in INPUT_NAMES)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
        out = export_onnx(module, args, path, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_batch=True, opset=17)
    log.info("exported tiny %s (seq_len=%d, experts=%s) to %s", arch, seq_len, experts, out)
    return out


def torch_reference(arch: str, feeds: dict[str, np.ndarray], seed: int = 0,
                    experts: str = "dense") -> np.ndarray:
    """``last_hidden_state`` of the PyTorch model (the same seed gives the same weights as the export)."""
    module = build_model(arch, seed, experts)
    with torch.no_grad():
        args = [torch.from_numpy(np.asarray(feeds[n])) for n in INPUT_NAMES]
        return module(*args).numpy()
