#!/usr/bin/env bash
# The one GPU call of a session that is lent a GPU (15 minutes of device time in all):
# issue 19's benchmark (benchmarks/gpu.py), then round 3 of issue 18's sweep
# (scripts/gpu_train.py), in at most ~9.5 minutes. scripts/gpu_prepare.py makes the .gpu/
# files it reads and prints the call (carry those files, timeout_s 600). Everything lands in
# $OUT: session.log, gpu.json, summary.json, logs.tar.gz, models.tar.N (at most 8 files).
#
# QKOV_SESSION_SMOKE=1 PYTHON=.venv/bin/python OUT=/tmp/x bash scripts/gpu_session.sh
# runs the same steps tiny on a CPU (a check of this script).
set -u
: "${OUT:?OUT: the folder the device tool brings back}"
PY=${PYTHON:-python3}
MINUTES=${MINUTES:-4.5}
start=$(date +%s)
log="$OUT/session.log"
say() { echo "[$(( $(date +%s) - start )) s] $*" >>"$log"; }

bench=(--budget 120)
# the device tool brings back 8 files, 64 MiB together: 4 parts of models.tar (15 MiB each)
# beside the log, gpu.json, summary.json and logs.tar.gz; 52 MiB of fp16 weights holds the
# three round-3 runs gpu_train.py's choose() brings back (9 each; with round 2's runs: the
# 8,192-token attn2 (21), another attn2 (9) and the MLP model (17))
train=(--minutes "$MINUTES" --budget-mb 52)
if [ "${QKOV_SESSION_SMOKE:-0}" = 1 ]; then
  bench=(--budget 30 --tiny --device cpu --rounds 2)
  train=(--minutes 2 --smoke --only r3_ls01 r2_v8192)  # smoke runs end at step 20
fi

say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
say "$("$PY" -c 'import sys, torch; print("torch", torch.__version__, "python", sys.version.split()[0])' 2>&1)"
site=$(mktemp -d)
tokens=$(mktemp -d)
"$PY" -m pip install -q --no-index --no-deps --target "$site" .gpu/wheels/*.whl >>"$log" 2>&1 \
  || say "wheels not installed: the benchmark skips TransformerLens"
for f in .gpu/cache/*.tar.xz; do tar -xJf "$f" -C "$tokens"; done
export PYTHONPATH="$site:$PWD/src"

say "benchmarks/gpu.py ${bench[*]}"
timeout 150 "$PY" benchmarks/gpu.py --out "$OUT/gpu.json" "${bench[@]}" >>"$log" 2>&1
say "benchmark ended (exit $?)"

say "scripts/gpu_train.py ${train[*]}"
"$PY" scripts/gpu_train.py --stdlib-tar .gpu/stdlib311.tar.gz --cache "$tokens" --out "$OUT" \
  "${train[@]}" >>"$log" 2>&1
say "training ended (exit $?)"
