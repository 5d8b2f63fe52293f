#!/bin/bash
# Time .tflite folders on the device machine (issue 15): bash litert_device.sh DIR:THREADS:ROUNDS:RUNS[:SESSIONS]...
# e.g. DIR:1,4:96:20:8. Next to this script (all in one carried folder): litert_time.py (tools/bench) and
# litert_min.tar.xz, LiteRT 2.3.0's interpreter cut from its cp312 wheel (4.3 MB instead of 22), made here with
#   unzip ai_edge_litert-2.3.0-cp312-*.whl 'ai_edge_litert/*'; cd into a fresh folder, copy ai_edge_litert/{__init__,
#   interpreter,metrics_portable,metrics_interface}.py, _pywrap_litert_interpreter_wrapper.so and
#   libpywrap_litert_common.so into ai_edge_litert/, unzip backports_strenum's wheel there, tar cJf litert_min.tar.xz *
# Files named *.tflite.xz (tools.bench.tflite_carry) are inflated first. JSON per folder goes to $OUT.
set -e
cd "$(dirname "$0")"
mkdir -p /tmp/lr && tar xJf litert_min.tar.xz -C /tmp/lr
export PYTHONPATH=/tmp/lr${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 - <<'PY'
import lzma, pathlib
for p in pathlib.Path(".").rglob("*.tflite.xz"):
    p.with_suffix("").write_bytes(lzma.decompress(p.read_bytes())); p.unlink()
PY
grep -m1 "model name" /proc/cpuinfo; grep -o -w -E 'avx512_vnni|avx_vnni|amx_int8|avx512_fp16' /proc/cpuinfo | sort | uniq -c
python3 -c "import ai_edge_litert, numpy; print('litert', ai_edge_litert.__version__, 'numpy', numpy.__version__)"
for spec in "$@"; do
  IFS=: read -r dir threads rounds runs sessions <<< "$spec"
  python3 litert_time.py "$dir" --threads ${threads//,/ } --rounds "$rounds" --runs "$runs" --sessions "${sessions:-1}" \
    --out "$OUT/$(basename "$dir").json" > /dev/null
  echo "timed $dir"
done
