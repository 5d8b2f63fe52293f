"""``python -m tools.bench.tflite_bench``: dsqc vs onnx2tf (``-oiqt``) for the TFLite target, in one run.

onnx2tf needs TensorFlow, so it runs from its own venv (``--onnx2tf-venv``). Every conversion runs in
its own subprocess (wall time, peak RSS from ``wait4``); both tools get the same calibration samples.
Latency: LiteRT, 1 thread, default XNNPACK delegate, models timed back to back in alternation.
Writes ``TFLITE.md`` and ``tflite.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MODELS = ("mnist", "mobilenetv2_like", "resnet18_like", "efficientnet_like")
EXTRA_MODELS = ("small_transformer",)  # not in the default run: onnx2tf's 3-D input needs ``-kat``
VARIANTS = ("dsqc_int8", "dsqc_fp32", "onnx2tf_int8", "onnx2tf_fp32")
DSQC_OPTS = {"io": "int8", "input_layout": "nhwc"}  # same I/O as onnx2tf's *_full_integer_quant.tflite


def say(msg: str) -> None:
    print(f"[tflite_bench] {msg}", file=sys.stderr, flush=True)


def run_measured(cmd: list[str], log: Path, cwd: Path = REPO,
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process; wall seconds and peak RSS (MB, largest process of the tree)."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
           "ok": proc.returncode == 0}
    if proc.returncode:
        out["error"] = log.read_text()[-800:]
    return out


def dsqc_child(model: str, calib: str, held: str, out: str, precision: str) -> None:
    """Entry point of the measured dsqc subprocess."""
    from dsqc.driver.build_types import BuildRequest
    from dsqc.driver.pipeline import build

    n_cal = len(np.load(calib)["input"])
    n_eval = len(np.load(held)["input"])
    build(BuildRequest(model=Path(model), target="tflite", out_dir=Path(out), precision=precision,
                       calib=calib if precision == "int8" else None, calib_samples=n_cal,
                       eval_data=held if precision == "int8" else None, eval_samples=n_eval,
                       measure_latency=False, backend_options=dict(DSQC_OPTS, latency=False)))


def prepare(name: str, work: Path, n_cal: int, n_eval: int) -> tuple[Path, np.ndarray, np.ndarray,
                                                                       np.ndarray | None]:
    """Model path, calibration inputs, held-out inputs (NCHW float32) and labels (MNIST only)."""
    if name == "mnist":
        from dsqc.models.mnist import DEMO_MODEL_PATH, load_mnist

        x_tr, _ = load_mnist("train")
        x_te, y_te = load_mnist("test")
        return DEMO_MODEL_PATH, x_tr[:n_cal], x_te, y_te
    import onnx

    from dsqc.models.export import zoo_model

    path = zoo_model(name, work / "zoo")
    dims = [d.dim_value or 1 for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    cal = np.random.default_rng(0).standard_normal((n_cal, *dims[1:])).astype(np.float32)
    held = np.random.default_rng(1).standard_normal((n_eval, *dims[1:])).astype(np.float32)
    return path, cal, held, None


def convert(name: str, model: Path, cal: np.ndarray, held: np.ndarray, work: Path,
            onnx2tf: Path) -> dict[str, Any]:
    """Run dsqc int8, dsqc fp32 and onnx2tf -oiqt, each in its own subprocess."""
    d = (work / name).resolve()
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "calib.npz", input=cal)
    np.savez(d / "held.npz", input=held[:64])
    np.save(d / "calib_nhwc.npy", cal.transpose(0, 2, 3, 1) if cal.ndim == 4 else cal)
    me = [sys.executable, "-m", "tools.bench.tflite_bench", "_dsqc", str(model), str(d / "calib.npz"),
          str(d / "held.npz")]
    res: dict[str, Any] = {}
    for prec in ("int8", "fp32"):
        out = d / f"dsqc_{prec}"
        shutil.rmtree(out, ignore_errors=True)
        say(f"{name}: dsqc {prec}")
        res[f"dsqc_{prec}"] = run_measured([*me, str(out), prec], d / f"dsqc_{prec}.log")
        res[f"dsqc_{prec}"]["file"] = str(next(out.glob(f"*.{prec}.tflite"), ""))
    say(f"{name}: onnx2tf -oiqt")
    out = d / "onnx2tf"
    shutil.rmtree(out, ignore_errors=True)
    shape = "input:" + ",".join(map(str, (1, *cal.shape[1:])))  # static batch 1 (-b 1 breaks on zoo CNNs)
    src = d / "onnx2tf_input.onnx"  # onnx2tf rewrites its input file in place (onnxsim): give it a copy
    shutil.copyfile(model, src)
    mean, std = ("[" * cal.ndim + v + "]" * cal.ndim for v in ("0.0", "1.0"))
    cmd = [str(onnx2tf), "-i", str(src), "-o", str(out), "-oiqt", "-ois", shape,
           "-cind", "input", str(d / "calib_nhwc.npy"), mean, std]
    if cal.ndim != 4:  # a [batch, seq, d] input would be taken as NCW and transposed: keep it as it is
        cmd += ["-kat", "input"]
    # onnx2tf fetches 20 sample images from GitHub for its own ONNX-vs-TF check of 3-channel inputs (not for
    # calibration, which uses -cind); offline, a seeded stand-in in its working directory is read instead.
    stand_in = d / "calibration_image_sample_data_20x128x128x3_float32.npy"
    if not stand_in.exists():
        np.save(stand_in, np.random.default_rng(3).random((20, 128, 128, 3), dtype=np.float32))
    env = dict(os.environ, PATH=f"{onnx2tf.parent}{os.pathsep}{os.environ.get('PATH', '')}")  # onnxsim CLI
    res["onnx2tf_int8"] = run_measured(cmd, d / "onnx2tf.log", cwd=d, env=env)
    res["onnx2tf_int8"]["cmd"] = " ".join(cmd)
    res["onnx2tf_int8"]["file"] = str(next(out.glob("*_full_integer_quant.tflite"), ""))
    res["onnx2tf_fp32"] = {"file": str(next(out.glob("*_float32.tflite"), ""))}
    return res


def interpreter(path: str) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    return it


def run_tflite(path: str, xs: np.ndarray) -> np.ndarray:
    """Run one sample at a time (NCHW float in, float out), converting layout and int8 I/O."""
    it = interpreter(path)
    inp, outd = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for x in xs:
        x = x[None]
        if x.ndim == 4 and tuple(inp["shape"]) != x.shape:
            x = x.transpose(0, 2, 3, 1)
        if inp["dtype"] != np.float32:
            s, z = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / s + z), info.min, info.max)
        it.set_tensor(inp["index"], x.astype(inp["dtype"]))
        it.invoke()
        y = it.get_tensor(outd["index"]).astype(np.float32)
        if outd["dtype"] != np.float32:
            s, z = outd["quantization"]
            y = (y - z) * s
        outs.append(y.transpose(0, 3, 1, 2) if y.ndim == 4 else y)
    return np.concatenate(outs)


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / max(float(np.sum((ref - got) ** 2)), 1e-30)))


def latencies(files: dict[str, str], warmup: int, runs: int) -> dict[str, float]:
    """Median ms per model; interpreters built up front, invoked back to back in alternation."""
    its = {k: interpreter(f) for k, f in files.items() if f}
    rng = np.random.default_rng(2)
    for it in its.values():
        d = it.get_input_details()[0]
        shape = d["shape"]
        data = rng.standard_normal(shape) if d["dtype"] == np.float32 else rng.integers(-20, 20, shape)
        it.set_tensor(d["index"], data.astype(d["dtype"]))
        for _ in range(warmup):
            it.invoke()
    times: dict[str, list[float]] = {k: [] for k in its}
    for _ in range(runs):
        for k, it in its.items():
            t0 = time.perf_counter()
            it.invoke()
            times[k].append(time.perf_counter() - t0)
    return {k: round(float(np.median(v)) * 1e3, 3) for k, v in times.items()}


def evaluate(res: dict[str, Any], model: Path, held: np.ndarray, labels: np.ndarray | None) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"input": held[i:i + 64]})[0] for i in range(0, len(held), 64)])
    if labels is not None:
        res["onnx_fp32_acc"] = float(np.mean(ref.argmax(1) == labels))
    for key in ("dsqc_int8", "onnx2tf_int8", "dsqc_fp32", "onnx2tf_fp32"):
        f = res[key].get("file")
        if not f:
            continue
        res[key]["size_kb"] = round(os.path.getsize(f) / 1024, 1)
        try:
            got = run_tflite(f, held)
        except RuntimeError as exc:  # e.g. onnx2tf's Flex (Select TF) ops: LiteRT's builtins cannot run it
            res[key]["run_error"] = str(exc).splitlines()[0][:200]
            res[key]["file"] = ""
            continue
        res[key]["sqnr_db"] = round(sqnr(ref, got), 2)
        if labels is not None:
            res[key]["acc"] = float(np.mean(got.argmax(1) == labels))


def machine(onnx2tf_py: Path) -> dict[str, Any]:
    cpu = Path("/proc/cpuinfo").read_text()
    flags = next((ln.split(":", 1)[1].split() for ln in cpu.splitlines() if ln.startswith("flags")), [])
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("model name")), "?")
    mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    probe = "import importlib.metadata as m; print(m.version('onnx2tf'), m.version('tensorflow-cpu'))"
    o2t = subprocess.run([str(onnx2tf_py), "-c", probe], capture_output=True, text=True).stdout.split()
    vers = {p: md.version(p) for p in ("ai-edge-litert", "onnxruntime", "onnx", "numpy")}
    vers.update(onnx2tf=o2t[0] if o2t else "?", tensorflow_cpu=o2t[1] if len(o2t) > 1 else "?",
                python=platform.python_version())
    return {"cpu": model, "cores": os.cpu_count(), "ram_gb": round(int(mem.split()[1]) / 2**20, 1),
            "vnni": {f: f in flags for f in ("avx512_vnni", "avx_vnni", "avx512f", "avx2")},
            "versions": vers, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _f(v: Any, nd: int = 1) -> str:
    return "–" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def render(results: dict[str, Any], mach: dict[str, Any], args: argparse.Namespace) -> str:
    head = ("| model | tool | convert s | peak RSS MB | size KB | int8 ms | fp32 ms (same tool) | "
            "int8 speedup vs dsqc fp32 | SQNR dB | MNIST acc |")
    lines = ["# TFLite target: dsqc vs onnx2tf (-oiqt)", "", head, "|" + "---|" * 10]
    for name, r in results.items():
        lat = r.get("latency_ms", {})
        for tool in ("dsqc", "onnx2tf"):
            q = r[f"{tool}_int8"]
            ms, base = lat.get(f"{tool}_int8"), lat.get("dsqc_fp32")
            acc = q.get("acc")
            if not q.get("ok"):
                lines.append(f"| {name} | {tool} | FAILED ({_f(q.get('wall_s'))} s) |" + " |" * 7)
                continue
            lines.append(f"| {name} | {tool} | {_f(q.get('wall_s'))} | {_f(q.get('peak_rss_mb'), 0)} | "
                         f"{_f(q.get('size_kb'))} | {_f(ms, 3)} | {_f(lat.get(f'{tool}_fp32'), 3)} | "
                         f"{_f(base / ms if ms and base else None, 2)}× | {_f(q.get('sqnr_db'))} | "
                         f"{_f(acc * 100 if acc is not None else None, 2)} |")
    lines += ["", "Ratios dsqc / onnx2tf (< 1 = dsqc better):", "",
              "| model | convert time | peak RSS | int8 latency |", "|---|---|---|---|"]
    for name, r in results.items():
        a, b = r["dsqc_int8"], r["onnx2tf_int8"]
        if not (a.get("ok") and b.get("ok")):
            continue
        la, lb = r.get("latency_ms", {}).get("dsqc_int8"), r.get("latency_ms", {}).get("onnx2tf_int8")
        rss = a["peak_rss_mb"] / b["peak_rss_mb"]
        lines.append(f"| {name} | {_f(a['wall_s'] / b['wall_s'], 3)} | {_f(rss, 3)}"
                     f" | {_f(la / lb if la and lb else None, 3)} |")
    acc = {k: v.get("onnx_fp32_acc") for k, v in results.items() if v.get("onnx_fp32_acc") is not None}
    lines += ["", f"FP32 ONNX (ORT) MNIST accuracy: {acc}." if acc else "",
              f"Settings: {args.calib_samples} calibration samples (same for both tools; seeded normal "
              f"for the zoo models, first MNIST train digits), SQNR on {args.eval_samples} held-out inputs "
              "(all 1000 held-out test digits for MNIST), latency median of "
              f"{args.runs} runs after {args.warmup} warm-ups, 1 thread, XNNPACK, interpreters built outside "
              "the timing, models invoked in alternation. dsqc I/O: int8, NHWC input (like onnx2tf's "
              "`*_full_integer_quant.tflite`). Conversion time and RSS include process start and imports for "
              "both tools; onnx2tf `-oiqt` also writes float16, dynamic-range and int16-activation variants.",
              "", "## Machine", "", "```", json.dumps(mach, indent=1), "```", ""]
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.bench.tflite_bench",
                                description=(__doc__ or "").splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma list from {', '.join(MODELS + EXTRA_MODELS)}")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--eval-samples", type=int, default=64, help="held-out inputs for SQNR (zoo models)")
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--onnx2tf-venv", type=Path, default=Path("/work/venv-onnx2tf"))
    p.add_argument("--work", type=Path, default=REPO / ".cache" / "tflite_bench")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--collect", type=Path,
                   help="also copy the .tflite files here as <model>.<variant>.tflite (litert_time's layout)")
    return p.parse_args(argv)


def collect(results: dict[str, Any], folder: Path) -> None:
    """Copy every variant's file to ``folder/<model>.<variant>.tflite`` for timing on another host."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, r in results.items():
        for key in VARIANTS:
            if r[key].get("file"):
                shutil.copyfile(r[key]["file"], folder / f"{name}.{key}.tflite")


def main(argv: list[str]) -> int:
    if argv[:1] == ["_dsqc"]:
        dsqc_child(*argv[1:6])
        return 0
    args = parse(argv)
    onnx2tf = args.onnx2tf_venv / "bin" / "onnx2tf"
    if not onnx2tf.exists():
        sys.exit(f"onnx2tf not found at {onnx2tf}. Create its venv first:\n"
                 f"  python3 -m venv {args.onnx2tf_venv} "
                 f"&& {args.onnx2tf_venv}/bin/pip install onnx2tf tensorflow-cpu tf-keras onnx onnxruntime "
                 "onnx-graphsurgeon sng4onnx psutil\nor pass --onnx2tf-venv")
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        model, cal, held, labels = prepare(name, args.work, args.calib_samples, args.eval_samples)
        r = convert(name, model, cal, held, args.work, onnx2tf)
        evaluate(r, model, held, labels)
        files = {k: r[k].get("file", "") for k in VARIANTS}
        r["latency_ms"] = latencies(files, args.warmup, args.runs)
        say(f"{name}: {json.dumps({k: r[k].get('sqnr_db') for k in files})} {r['latency_ms']}")
        results[name] = r
    mach = machine(args.onnx2tf_venv / "bin" / "python")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tflite.json").write_text(json.dumps({"machine": mach, "results": results}, indent=1) + "\n")
    (args.out / "TFLITE.md").write_text(render(results, mach, args))
    say(f"wrote {args.out / 'TFLITE.md'}")
    if args.collect:
        collect(results, args.collect)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
