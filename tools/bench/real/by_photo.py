"""``python -m tools.bench.real.by_photo``: REAL.md's photo-crop rows split by held-out photo.

A row's SQNR pools 512 crops of 8 held-out photos, so one photo whose crops every quantizer gets wrong can
decide it. This reads the models the last ``python -m tools.bench.real`` run wrote (``tools/bench/real.json``
names them) and measures dsqc's default build and ORT's best configuration on each photo's crops apart:
SQNR of the first output vs FP32 and top-1 agreement; then the margins → ``tools/bench/REAL_BY_PHOTO.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from tools.bench.real import evaluate, metrics, photos, report
from tools.bench.real.store import REPO, load_meta, real_dir

SIDES = ("dsqc", "ort_best")


def photo_of_each_crop(meta: dict[str, Any]) -> list[str] | None:
    """The held-out photo of each sample, where the case's crops came round-robin from
    :data:`photos.HELD_OUT_PHOTOS` (``vision.image_sets``); ``None`` for other cases."""
    names = photos.HELD_OUT_PHOTOS
    if meta["kind"] != "classifier" or f"held-out from {', '.join(names)}" not in meta.get("inputs", ""):
        return None
    return [names[i % len(names)] for i in range(meta["n_eval"])]


def split_case(meta: dict[str, Any], folder: Path, case: dict[str, Any]) -> dict[str, Any] | None:
    """Per photo (and pooled, and without the photo worst for dsqc): SQNR and top-1 of each side."""
    owner = photo_of_each_crop(meta)
    if owner is None:
        return None
    feeds, _ = evaluate.held_out(meta, folder)
    ref = evaluate.outputs(folder / meta["model"], feeds)
    got = {side: evaluate.outputs(Path(case["jobs"][case[side]]["model"]), feeds) for side in SIDES}
    groups = {name: np.array([o == name for o in owner]) for name in photos.HELD_OUT_PHOTOS}

    def measure(keep: np.ndarray) -> dict[str, dict[str, float]]:
        return {side: {"sqnr_db": metrics.sqnr_db(ref[keep], got[side][keep]),
                       "top1": metrics.top1_agreement(ref[keep], got[side][keep])} for side in SIDES}

    rows = {name: measure(keep) for name, keep in groups.items()}
    worst = min(rows, key=lambda n: rows[n]["dsqc"]["sqnr_db"])
    rows["all"] = measure(np.ones(len(owner), bool))
    rows[f"all but {worst}"] = measure(~groups[worst])
    margins = [rows[n]["dsqc"]["sqnr_db"] - rows[n]["ort_best"]["sqnr_db"] for n in photos.HELD_OUT_PHOTOS]
    return {"ort_best": case["ort_best"], "rows": rows, "worst_photo_for_dsqc": worst,
            "median_photo_margin_db": statistics.median(margins),
            "photos_ahead_by_1db": sum(m >= 1.0 for m in margins), "photos": len(margins)}


def markdown(split: dict[str, dict[str, Any]], machine: dict[str, str]) -> str:
    out = ["# The real-weight photo rows, by held-out photo", "",
           f"`python -m tools.bench.real.by_photo` on {machine['cpu']}, {machine['date']}, tree "
           f"`{machine['commit']}`, on the models of REAL.md's last run (real.json). Each photo's 64 "
           "crops (every 8th of the 512) measured apart: SQNR of the output vs FP32 (dB) and top-1 "
           "agreement, dsqc's default build beside ORT's best configuration for the row. `all` is REAL.md's "
           "pooled number; the last line drops the photo where dsqc measured worst.", ""]
    for name, s in split.items():
        out += [f"## {name} (ORT best: {s['ort_best']})", "",
                f"dsqc ≥ ORT best + 1 dB on {s['photos_ahead_by_1db']} of {s['photos']} photos; median "
                f"photo margin {s['median_photo_margin_db']:+.1f} dB; dsqc's worst photo: "
                f"{s['worst_photo_for_dsqc']}.",
                "", "| held-out photo | dsqc dB | dsqc top-1 | ORT best dB | ORT best top-1 | margin dB |",
                "|---|---:|---:|---:|---:|---:|"]
        for photo, r in s["rows"].items():
            d, o = r["dsqc"], r["ort_best"]
            label = f"**{photo}**" if photo == "all" else photo
            out.append(f"| {label} | {d['sqnr_db']:.1f} | {d['top1']:.3f} | {o['sqnr_db']:.1f} | "
                       f"{o['top1']:.3f} | {d['sqnr_db'] - o['sqnr_db']:+.1f} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.real.by_photo", description=__doc__)
    p.add_argument("--json", type=Path, default=REPO / "tools" / "bench" / "real.json")
    p.add_argument("--md", type=Path, default=REPO / "tools" / "bench" / "REAL_BY_PHOTO.md")
    p.add_argument("--out-json", type=Path, default=REPO / "tools" / "bench" / "real_by_photo.json")
    p.add_argument("--cases", nargs="*", help="only these cases (default: every photo-crop case)")
    args = p.parse_args(argv)
    folder = real_dir()
    metas, cases = load_meta(folder), json.loads(args.json.read_text())["cases"]
    split = {}
    for name, case in cases.items():
        wanted = name in metas and (not args.cases or name in args.cases)
        if wanted and (s := split_case(metas[name], folder, case)) is not None:
            split[name] = s
            pooled = s["rows"]["all"]
            print(f"{name}: all {pooled['dsqc']['sqnr_db']:.1f} vs {pooled['ort_best']['sqnr_db']:.1f} dB; "
                  f"worst photo {s['worst_photo_for_dsqc']}; ahead on {s['photos_ahead_by_1db']}/"
                  f"{s['photos']} photos", flush=True)
    args.md.write_text(markdown(split, report.machine()) + "\n")
    args.out_json.write_text(json.dumps(split, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
