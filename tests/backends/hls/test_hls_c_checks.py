"""Honest checks on the generated C: no allocation or libm, static stack frames, UB-free testbench,
and names from the ONNX file that cannot inject anything into C, Tcl or the Makefile."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _hls_helpers import emit
from _integer_models import Case, fuse_bn, make_model, quantize, random_feeds
from onnx import helper

from dsqc.backends.hls import HLS_PROFILE
from dsqc.backends.hls.csim import check_object, run_csim
from dsqc.backends.hls.names import comment_text, identifier

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "make", "nm")),
                                reason="gcc/make/nm not installed")

EVIL = 'x"; system("rm -rf /"); // */ ??/\n#include <stdlib.h>\\'


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_object_has_no_allocation_libm_or_dynamic_stack(tmp_path: Path, name: str) -> None:
    from _integer_models import case

    emit(case(name), tmp_path, csim=False, parallelism=4)
    check = check_object(tmp_path / "hls")
    assert check.undefined == []  # not even memcpy: nothing to link against
    assert check.stack and check.static_only, check.stack
    assert max(size for _, size, _ in check.stack) < 256


def test_testbench_under_ubsan(tmp_path: Path) -> None:
    from _integer_models import case

    emit(case("mobilenet"), tmp_path, csim=False)
    probe = subprocess.run(["gcc", "-fsanitize=undefined", "-x", "c", "-", "-o", str(tmp_path / "probe")],
                           input="int main(void){return 0;}", capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip("libubsan not available")
    result = run_csim(tmp_path / "hls", target="ubsan")
    assert result.passed and "runtime error" not in result.log, result.log[-2000:]


def _evil_case() -> Case:
    rng = np.random.default_rng(3)
    inits = {"w": rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32),
             "b": rng.normal(0, 0.1, 4).astype(np.float32),
             "fc": rng.normal(0, 0.3, (4 * 36, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", [EVIL, "w", "b"], [EVIL + "conv"], name=EVIL),
             helper.make_node("Relu", [EVIL + "conv"], ["r"], name=EVIL + "relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="*/ int boom; /*"),
             helper.make_node("MatMul", ["f", "fc"], [EVIL + "out"], name="?" + "?/")]
    fp32 = fuse_bn(make_model(nodes, {EVIL: ["N", 2, 8, 8]}, {EVIL + "out": ["N", 3]}, inits))
    qdq, plan = quantize(fp32, HLS_PROFILE, random_feeds(fp32, 32, seed=1))
    return Case("evil", fp32, qdq, plan, random_feeds(fp32, 8, seed=2))


def test_evil_names_yield_safe_c(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.write_text("still here")
    result = emit(_evil_case(), tmp_path / "out", name='model"; rm -rf / #')
    hls = result.metrics["hls"]
    assert hls["top"] == "model_rm_rf"
    assert hls["csim"]["status"] == "bit-exact" and hls["csim"]["undefined_symbols"] == []
    assert canary.read_text() == "still here"
    for path in (tmp_path / "out" / "hls").rglob("*"):
        if path.suffix not in (".c", ".h", ".tcl") and path.name != "Makefile":
            continue
        text = path.read_text()
        if path.suffix in (".c", ".h"):
            assert "??" not in text and "\\\n" not in text  # no trigraph, no line splice
            text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)  # comments hold only sanitized text
            text = re.sub(r'"[^"\n]*"', '""', text)  # drop the testbench's own printf strings
        assert "rm -rf /" not in text
        for token in ("system", "boom", "stdlib"):
            assert not re.search(rf"\b{token}\b", text), (path.name, token)
        includes = [line.split("#include")[1].strip() for line in text.splitlines() if "#include" in line]
        assert set(includes) <= {'""', "<stdint.h>", "<stdio.h>"}, includes


def test_identifier_and_comment_sanitizers() -> None:
    assert identifier(EVIL) == "x_system_rm_rf_include_stdlib_h"
    assert identifier("3conv") == "n_3conv" and identifier("int") == "n_int" and identifier("") == "x"
    text = comment_text(EVIL)
    assert not set(text) & set('*/?\\"\n#<>();')


@pytest.mark.parametrize(("model", "top"), [("x", "net_x"), ("int8_t", "net_int8_t"), ("9lives", "n_9lives"),
                                            ("ceil", "net_ceil")])
def test_top_name_never_clashes(tmp_path: Path, model: str, top: str) -> None:
    from _integer_models import case

    result = emit(case("resnet"), tmp_path, name=model, tb_vectors=2)
    assert result.metrics["hls"]["top"] == top
    assert result.metrics["hls"]["csim"]["status"] == "bit-exact"


def test_c_that_does_not_compile_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Were a generated name ever to clash again (a top function called ``ceil`` once did), the build
    says so in one line instead of a CalledProcessError traceback."""
    from _integer_models import case

    import dsqc.backends.hls.c_writer as c_writer
    from dsqc.errors import DsqcError

    monkeypatch.setattr(c_writer, "is_reserved", lambda name: False)
    with pytest.raises(DsqcError, match=r"^hls: the generated C did not compile or run under `make csim`"):
        emit(case("resnet"), tmp_path, name="ceil", tb_vectors=2)
