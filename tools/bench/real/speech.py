"""Silero VAD (``silero_vad/data/silero_vad_op18_ifless.onnx`` from the ``silero-vad`` wheel, real weights)
on speech synthesized with espeak-ng, mixed with silences and faint noise.

The model is stateful: each call takes 512 new samples at 16 kHz plus the previous call's last 64
(``input`` [N, 576]) and the recurrent ``state``; it returns the speech probability and ``stateN``. The
prepared graph is the file's 16 kHz branch promoted out of its ``If`` (``sr`` gone) with ``state`` moved to
batch-first ``[N, 2, 128]`` (a Transpose each side), so every npz array has its samples on axis 0. Samples
are the (chunk, state) pairs the FP32 model meets when it streams the audio; streams are recorded in the
case's json so the evaluation can also stream each quantized model on its own state."""

from __future__ import annotations

import logging
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from tools.bench.real.store import save_case

log = logging.getLogger(__name__)
RATE, CHUNK, CONTEXT = 16000, 512, 64
SOURCE_FILE = "silero_vad_op18_ifless.onnx"

CALIB_SPEECH = [
    ("en-us", 160, "The quick brown fox jumps over the lazy dog near the river bank."),
    ("en-gb", 140, "Please remember to switch off the lights before you leave the office tonight."),
    ("en-us+f3", 175, "Quantization maps floating point numbers onto a small set of integer levels."),
    ("en-gb-scotland", 150, "We will meet at the station at half past seven tomorrow morning."),
    ("en-us+m3", 130, "Seven hundred and forty two people attended the concert in the park."),
    ("en-gb-x-rp+f2", 165, "Could you tell me where the nearest library is, please?"),
]
HELD_OUT_SPEECH = [
    ("en-us+f2", 150, "Rain is expected across the northern hills later this afternoon."),
    ("en-gb-x-rp", 170, "She opened the window and listened to the birds singing in the garden."),
    ("en-us+m5", 140, "The committee will publish its final report at the end of next month."),
    ("en-gb+f4", 155, "Turn left at the second junction and follow the signs to the harbour."),
    ("en-us", 185, "Numbers like three point one four one five nine are hard to remember."),
    ("en-gb-scotland+m2", 135, "My grandmother baked fresh bread every Sunday morning for the whole family."),
]


def synthesize(voice: str, speed: int, text: str) -> np.ndarray:
    """espeak-ng speech as float32 at 16 kHz."""
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text],
            check=True,
            capture_output=True,
        )
        with wave.open(str(wav)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    return resample_poly(pcm, RATE, rate).astype(np.float32)


def stream(utterances: list[tuple[str, int, str]], rng: np.random.Generator) -> np.ndarray:
    """Silence (0.3–1.2 s), speech at a random gain, silence…, over faint white noise; a multiple of 512."""
    parts: list[np.ndarray] = []
    for voice, speed, text in utterances:
        parts.append(np.zeros(int(RATE * rng.uniform(0.3, 1.2)), np.float32))
        parts.append(synthesize(voice, speed, text) * rng.uniform(0.3, 1.0))
    parts.append(np.zeros(int(RATE * rng.uniform(0.3, 1.2)), np.float32))
    audio = np.concatenate(parts)
    audio = audio + rng.normal(0, 10 ** (-45 / 20), audio.shape).astype(np.float32)
    return audio[: len(audio) // CHUNK * CHUNK]


def single_branch(src: Path, dest: Path) -> Path:
    """Promote the 16 kHz ``then`` branch of the top-level If, drop ``sr``, make ``state`` batch-first."""
    model = onnx.load(str(src))
    graph = model.graph
    if_node = next(n for n in graph.node if n.op_type == "If")
    branch = next(a.g for a in if_node.attribute if a.name == "then_branch")
    used = {i for n in branch.node for i in n.input}
    for n in branch.node:
        n.input[:] = ["state_sbh" if i == "state" else i for i in n.input]
    out_prob, out_state = (o.name for o in branch.output)
    nodes = [
        helper.make_node("Transpose", ["state"], ["state_sbh"], perm=[1, 0, 2], name="state_to_sbh"),
        *branch.node,
        helper.make_node("Identity", [out_prob], ["output"], name="output_identity"),
        helper.make_node("Transpose", [out_state], ["stateN"], perm=[1, 0, 2], name="stateN_to_bsh"),
    ]
    inits = [t for t in graph.initializer if t.name in used]
    inputs = [
        helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", CONTEXT + CHUNK]),
        helper.make_tensor_value_info("state", onnx.TensorProto.FLOAT, ["batch", 2, 128]),
    ]
    outputs = [
        helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("stateN", onnx.TensorProto.FLOAT, ["batch", 2, 128]),
    ]
    new = helper.make_model(
        helper.make_graph(nodes, "silero_vad_16k", inputs, outputs, inits),
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
    )
    onnx.checker.check_model(new, full_check=True)
    onnx.save(new, str(dest))
    return dest


def stream_samples(model: Path, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stream ``audio`` through the FP32 model: the (chunk with context, state) each call receives, and
    the probabilities."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    state = np.zeros((1, 2, 128), np.float32)
    context = np.zeros(CONTEXT, np.float32)
    chunks, states, probs = [], [], []
    for start in range(0, len(audio), CHUNK):
        x = np.concatenate([context, audio[start : start + CHUNK]])[None]
        chunks.append(x[0])
        states.append(state[0])
        prob, state = sess.run(None, {"input": x, "state": state})
        probs.append(float(prob[0, 0]))
        context = x[0, -CONTEXT:]
    return np.stack(chunks), np.stack(states), np.array(probs, np.float32)


def silero_model(pydeps: Path | None) -> Path:
    if pydeps is not None and (pydeps / "silero_vad" / "data" / SOURCE_FILE).exists():
        return pydeps / "silero_vad" / "data" / SOURCE_FILE
    import importlib.util

    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "silero-vad is not installed: pip download --no-deps silero-vad, unzip into pydeps"
        )
    return Path(spec.origin).parent / "data" / SOURCE_FILE


def _samples(
    model: Path, sets: list[list[tuple[str, int, str]]], rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], list[int], float]:
    xs, ss, starts, speech = [], [], [], []
    total = 0
    for utterances in sets:
        x, s, p = stream_samples(model, stream(utterances, rng))
        starts.append(total)
        total += len(x)
        xs.append(x)
        ss.append(s)
        speech.append(p > 0.5)
    return (
        {"input": np.concatenate(xs), "state": np.concatenate(ss)},
        starts,
        float(np.concatenate(speech).mean()),
    )


def prepare_silero(folder: Path, pydeps: Path | None) -> Path:
    rng = np.random.default_rng(40)
    with tempfile.TemporaryDirectory() as tmp:
        path = single_branch(silero_model(pydeps), Path(tmp) / "model.onnx")
        calib, _, calib_speech = _samples(path, [CALIB_SPEECH[:3], CALIB_SPEECH[3:]], rng)
        held, starts, held_speech = _samples(path, [HELD_OUT_SPEECH[:3], HELD_OUT_SPEECH[3:]], rng)
        log.info(
            "silero: speech fraction (FP32 p > 0.5) calib %.2f, held-out %.2f", calib_speech, held_speech
        )
        return save_case(
            "silero_vad",
            path,
            calib,
            held,
            {
                "kind": "vad",
                "streams": starts,
                "source": f"silero-vad 6.2.3 {SOURCE_FILE} (real weights): "
                "its 16 kHz If-branch promoted to the main "
                "graph, sr removed, state made batch-first [N, 2, 128] with a Transpose each side",
                "inputs": "input: 64 context + 512 new samples of 16 kHz audio per call; "
                "state: the recurrent state "
                "the FP32 model carried into that call. espeak-ng sentences (6 calibration, 6 other "
                "held-out sentences and voices) between silences, faint noise; held-out rows are "
                f"consecutive calls of {len(starts)} streams starting at rows {starts}; "
                f"FP32 speech fraction {held_speech:.2f}",
                "metric": "speech-probability agreement (streamed on own state): mean |dp|, p>0.5 agreement",
            },
            folder,
        )
