#!/usr/bin/env bash
# The LiteRT backend's tflite-runtime fallback, run for real on x86-64.
#
#   benchmarks/tflite_runtime_check.sh
#
# tflite-runtime (2.14, the last release) needs numpy < 2 and was once seen returning wrong logits
# without an error, so the runtime trusts it only after a bundle's self-test passes. This script makes
# its own venv, $STETHOEDGE_CACHE/tflite-runtime-venv (default ~/.cache/stethoedge): numpy<2,
# tflite-runtime, the stethoedge wheel with the runtime extra and NOT ai-edge-litert (so the fallback is
# what loads). Every tflite artifact of the shipped model and of the bundle with every artifact kind
# ($STETHOEDGE_CACHE/bundle-all, exported once; see arm64_smoke.sh) gets its start-up self-test there;
# what passes classifies 3 real recordings (24-bit 44.1 kHz, 16-bit 4 kHz, 8 kHz FLAC) and is compared
# window by window with ai-edge-litert in the x86-64 reference venv ($STETHOEDGE_CACHE/x86-venv).
# Exit 0: every artifact the self-test lets through answers like ai-edge-litert (within its tolerance);
# refusals are reported, not failures (refusing is the self-test's job). Exit 1: something got through
# and answers differently. Exit 2: could not run (reason on stderr).
# Network: PyPI only (the first run; later runs reinstall only the wheel).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/arm64/common.sh"
TFLRT_VENV=$CACHE/tflite-runtime-venv
OUT=$CACHE/tflite-runtime-check
DRIVER=$REPO/benchmarks/arm64/smoke_driver.py
mkdir -p "$CACHE"
exec 8>"$CACHE/.tflite-runtime-check.lock"
flock 8
rm -rf "$OUT" && mkdir -p "$OUT"
check_data
[[ $(uname -m) == x86_64 ]] || die "this checks x86-64 (benchmarks/arm64_smoke.sh runs the same on emulated arm64)"
T0=$(date +%s)

step "wheel and venvs"
ensure_x86_venv
WHEEL=$(build_wheel "$CACHE/tflite-runtime-wheel")
install_wheel "$X86_VENV/bin/python" "$WHEEL" runtime,tflite
[[ -x $TFLRT_VENV/bin/python ]] || "$HOST_PY" -m venv "$TFLRT_VENV" || die "cannot create $TFLRT_VENV"
install_wheel "$TFLRT_VENV/bin/python" "$WHEEL" runtime "numpy<2" tflite-runtime
if "$TFLRT_VENV/bin/python" -c 'import ai_edge_litert' 2>/dev/null; then
  die "$TFLRT_VENV has ai-edge-litert installed; the fallback would not load (remove the venv)"
fi
PY=$TFLRT_VENV/bin/python
"$PY" -m pip check >/dev/null || die "pip check failed in $TFLRT_VENV: $("$PY" -m pip check)"
say "$TFLRT_VENV: $("$PY" -m pip freeze | grep -iE '^(numpy|tflite-runtime|onnxruntime)==' | tr '\n' ' ')"
FULL=(--bundle "all=$FULL_BUNDLE")
if ! ensure_full_bundle; then
  say "WARNING: the bundle with every artifact kind is not available, so only the shipped model's artifacts are"
  say "checked: $FULL_BUNDLE_MISSING"
  FULL=()
fi

mapfile -t AUDIO3 < <(audio_list 1)
run() {  # run VENV OUT.json
  local py=$1/bin/python shipped
  shipped=$("$py" -c 'from stethoedge.models import default_bundle; print(default_bundle())')
  nice -n 10 "$py" "$DRIVER" classify "$2" --bundle "default=$shipped" "${FULL[@]}" \
    --engine onnx-fp32 --stride 1 --audio "${AUDIO3[@]}" 2>&1 | grep -v -E '^(INFO|WARNING): ' | sed 's/^/  /'
}
step "ai-edge-litert (reference, $X86_VENV)"
run "$X86_VENV" "$OUT/ai-edge-litert.json"
step "tflite-runtime ($TFLRT_VENV)"
run "$TFLRT_VENV" "$OUT/tflite-runtime.json"

step "tflite-runtime on x86-64 against ai-edge-litert on x86-64"
STATUS=0
"$X86_VENV/bin/python" "$DRIVER" compare "$OUT/ai-edge-litert.json" "$OUT/tflite-runtime.json" --allow-refusals \
  --detail-bundle none | tee "$OUT/summary.md" || STATUS=1
say "results: $OUT; $(( $(date +%s) - T0 )) s"
say "TFLITE-RUNTIME CHECK $([[ $STATUS == 0 ]] && echo PASS || echo FAIL)"
exit "$STATUS"
