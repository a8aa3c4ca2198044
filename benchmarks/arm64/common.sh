# Shared by benchmarks/arm64_smoke.sh and benchmarks/tflite_runtime_check.sh (sourced, not run).
# Everything they write goes under $CACHE (default ~/.cache/stethoedge); nothing in the repository.
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
CACHE=${STETHOEDGE_CACHE:-$HOME/.cache/stethoedge}
SHARED=${STETHOEDGE_SHARED:-$REPO/../shared}
HOST_PY=${STETHOEDGE_HOST_PYTHON:-python3}
X86_VENV=$CACHE/x86-venv            # the x86-64 reference: the same wheel, ai-edge-litert, numpy 2
FULL_BUNDLE=$CACHE/bundle-all       # every artifact kind the runtime can run (exported from a training run)
ICBHI=$SHARED/data/icbhi_sample
SPRSOUND_FILE=${STETHOEDGE_SPRSOUND_FILE:-test2022_inter/41092434_4.8_0_p1_3493.flac}  # CAS, unseen patient

cd /  # never import stethoedge from the repository's folders (python -c puts the cwd first on sys.path)

say() { printf '%s\n' "$*"; }
# pip's warnings about this host's unused local index folders are noise here.
quiet_pip() { "$@" 2>&1 | sed '/is ignored: it is neither a file nor a directory/d'; }
step() { printf '\n== [%4ss] %s\n' "$SECONDS" "$*"; }
die() { printf '%s: %s\n' "$(basename "$0" .sh)" "$1" >&2; exit "${2:-2}"; }

# The recordings compared: the 13 ICBHI files, the 32-bit PCM variant and one SPRSound FLAC.
# quick: one of each encoding (24-bit 44.1 kHz, 16-bit 4 kHz, 8 kHz FLAC).
audio_list() {
  local quick=${1:-0}
  if [[ $quick == 1 ]]; then
    printf '%s\n' "$ICBHI/audio_and_txt_files/101_1b1_Al_sc_Meditron.wav" \
      "$ICBHI/audio_and_txt_files/104_1b1_Lr_sc_Litt3200.wav" "$SHARED/data/sprsound/$SPRSOUND_FILE"
  else
    ls "$ICBHI"/audio_and_txt_files/*.wav "$ICBHI"/variant_pcm32/*.wav
    printf '%s\n' "$SHARED/data/sprsound/$SPRSOUND_FILE"
  fi
}

check_data() {
  [[ -d $ICBHI/audio_and_txt_files ]] \
    || die "no ICBHI sample at $ICBHI (set STETHOEDGE_SHARED to the folder holding data/)"
  [[ -f $SHARED/data/sprsound/$SPRSOUND_FILE ]] || die "no SPRSound recording $SHARED/data/sprsound/$SPRSOUND_FILE"
}

# build_wheel DIR: the wheel of a snapshot of the working tree (tracked + untracked, not ignored), so
# edits made while this runs cannot leave a half-written file in it. Prints the wheel's path.
build_wheel() {
  local out=$1 src=$1/src
  rm -rf "$out" && mkdir -p "$src"
  (cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null -T - -cf - 2>/dev/null) | tar -C "$src" -xf -
  "$X86_VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$out" "$src" >"$out/build.log" 2>&1 \
    || { cat "$out/build.log" >&2; die "wheel build failed"; }
  rm -rf "$src"
  ls "$out"/stethoedge-*.whl
}

ensure_x86_venv() {
  [[ -x $X86_VENV/bin/python ]] && return 0
  { "$HOST_PY" -m venv "$X86_VENV" && quiet_pip "$X86_VENV/bin/python" -m pip install -q setuptools wheel; } \
    || die "cannot create $X86_VENV"
}

install_wheel() {  # install_wheel VENV_PYTHON WHEEL EXTRAS [more specs...]
  local py=$1 whl=$2 extras=$3; shift 3
  quiet_pip "$py" -m pip install -q --no-deps --force-reinstall "$whl" || die "pip could not install $whl"
  quiet_pip "$py" -m pip install -q --only-binary=:all: "$whl[$extras]" "$@" \
    || die "pip could not install $whl[$extras] $*"
}

# The bundle with every artifact kind: cached; exported once from a training run with the repository's
# .venv (torch, litert-torch): ../runs/edge-b is the run the shipped model came from.
# Returns 1, with the reason in $FULL_BUNDLE_MISSING, when there is none and none can be made.
ensure_full_bundle() {
  [[ -f $FULL_BUNDLE/manifest.json ]] && return 0
  local run=${STETHOEDGE_ARM64_RUN:-$REPO/../runs/edge-b}
  if [[ ! -f $run/checkpoint.pt ]]; then
    FULL_BUNDLE_MISSING="no bundle with every artifact at $FULL_BUNDLE and no training run to export one from at
  $run; set STETHOEDGE_ARM64_RUN=RUN_DIR (any run of 'stethoedge train') or copy a bundle exported with
  '--formats all' to $FULL_BUNDLE"
    return 1
  fi
  if [[ ! -x $REPO/.venv/bin/stethoedge ]]; then
    FULL_BUNDLE_MISSING="exporting $run needs the repository's .venv with the export extras (make venv)"
    return 1
  fi
  step "exporting $run with every format to $FULL_BUNDLE (once; about 10 minutes on 2 cores)"
  rm -rf "$FULL_BUNDLE.tmp"
  nice -n 10 "$REPO/.venv/bin/stethoedge" export "$run" --out "$FULL_BUNDLE.tmp" --formats all \
    >"$CACHE/bundle-all.export.log" 2>&1 || { tail -20 "$CACHE/bundle-all.export.log" >&2; die "export failed"; }
  mv "$FULL_BUNDLE.tmp" "$FULL_BUNDLE"
  grep '^|' "$FULL_BUNDLE/export_report.md"
}
