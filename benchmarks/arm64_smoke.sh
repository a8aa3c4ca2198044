#!/usr/bin/env bash
# The device install, proven where the devices are: an emulated 64-bit Raspberry Pi OS (Debian bookworm
# arm64, Python 3.11) installs the locally built stethoedge wheel with the runtime and tflite extras from
# PyPI's aarch64 wheels, and must classify exactly as x86-64 does.
#
#   sudo benchmarks/arm64_smoke.sh [--quick] [--rebuild] [--keep]
#
# Needs: root (chroot, mounts), an x86-64 Debian/Ubuntu host, the package registries (deb.debian.org for
# the arm64 packages and for qemu-user-static + mmdebstrap if missing, PyPI for the wheels), and
# ../shared/data (ICBHI sample, SPRSound). No binfmt_misc: every arm64 program is started explicitly
# through qemu-aarch64-static copied into the root filesystem (nothing is registered with the kernel).
#
# What it does:
#   1. builds the wheel from a snapshot of the working tree; installs it in an x86-64 reference venv
#   2. builds a Debian bookworm arm64 root filesystem with mmdebstrap (variant extract: Debian's arm64 .debs,
#      unpacked; the maintainer scripts would need binfmt, and the runtime needs none of what they do),
#      creates /opt/stethoedge (wheel[runtime,tflite]) and /opt/tflite-runtime (numpy<2 + tflite-runtime,
#      no ai-edge-litert: the LiteRT backend's fallback) from PyPI's aarch64 wheels, and caches the result as
#      $STETHOEDGE_CACHE/arm64-rootfs.tar (default ~/.cache/stethoedge); later runs unpack it and reinstall
#      only the wheel
#   3. in the emulated system, as a Raspberry Pi 5 CPU (QEMU_CPU=cortex-a76: ARMv8.2, dot product, fp16) and
#      a Pi 4 CPU (cortex-a72: ARMv8.0, neither): `stethoedge doctor`; every artifact of the shipped model
#      and of a bundle with every artifact kind must pass its start-up self-test; the real recordings are
#      classified and every window's logits/probabilities compared with x86-64; one recording goes through
#      `listen --replay` and through `listen --bridge` over a pty pair with the simulated stethoscope
#   4. the tflite-runtime fallback on arm64: self-test verdict per tflite artifact; what passes is compared
#      with ai-edge-litert on x86-64
# Exit status: 0 when everything matches within each artifact's stated tolerance, 1 when not, 2 when it
# could not run (the reason on stderr), 3 when this machine cannot emulate (chroot, mounts or qemu-user
# refused; the reason on stderr). Results: $STETHOEDGE_CACHE/arm64/last-run/ (summary.md, *.json).
#
# --quick (CI): the Pi 5 CPU only; 3 recordings (24-bit 44.1 kHz, 16-bit 4 kHz, 8 kHz FLAC); the full
# bundle's and the tflite-runtime artifacts self-tested but not run on recordings.
# Env: STETHOEDGE_CACHE, STETHOEDGE_SHARED (folder with data/), STETHOEDGE_ARM64_CPUS ("cortex-a76
# cortex-a72"), STETHOEDGE_ARM64_RUN (training run to export the full bundle from, once),
# STETHOEDGE_ARM64_MIRROR (http://deb.debian.org).
set -euo pipefail
QUICK=0 REBUILD=0 KEEP=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --rebuild) REBUILD=1 ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done
SELF=$(readlink -f "$0")
source "$(dirname "$SELF")/arm64/common.sh"  # (it changes to /)

[[ $(id -u) == 0 ]] || die "needs root (chroot and mounts); run it with sudo"
[[ $(uname -m) == x86_64 ]] || die "the host must be x86-64 (it is the reference the arm64 results are compared with)"
# Mounts made below live in a private mount namespace: they vanish with this process, whatever happens.
if [[ -z ${_ARM64_SMOKE_NS:-} ]] && unshare --mount --propagation private true 2>/dev/null; then
  exec unshare --mount --propagation private env _ARM64_SMOKE_NS=1 bash "$SELF" "$@"
fi  # (without a private namespace, cleanup() unmounts what this script mounted)

A=$CACHE/arm64
TARBALL=$CACHE/arm64-rootfs.tar
ROOT=$A/root
OUT=$A/last-run
LOG=$OUT/run.log
EMU=/usr/bin/qemu-aarch64-static
CHROOT=$(command -v chroot || echo /usr/sbin/chroot)
MIRROR=${STETHOEDGE_ARM64_MIRROR:-http://deb.debian.org}
CPUS=${STETHOEDGE_ARM64_CPUS:-cortex-a76 cortex-a72}
[[ $QUICK == 1 ]] && CPUS=${CPUS%% *}
PRIMARY=${CPUS%% *}
PKGS=python3,python3-venv,libportaudio2,ca-certificates,base-files,base-passwd,libc-bin
DRIVER=benchmarks/arm64/smoke_driver.py
mkdir -p "$A"
exec 9>"$A/.lock"
flock -n 9 || { say "another arm64 smoke run holds $A/.lock; waiting for it"; flock 9; }
rm -rf "$OUT" && mkdir -p "$OUT"
exec > >(tee -a "$LOG") 2>&1

trap 'say "arm64-smoke: FAILED (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
T0=$(date +%s)
declare -A TIMES
lap() { TIMES[$1]=$(( $(date +%s) - ${2:-$T0} )); }

[[ -c /dev/null ]] || die "/dev/null is not a character device on this host; apt and mmdebstrap need it
  (fix: mknod -m 666 /dev/null.new c 1 3 && mv /dev/null.new /dev/null)"
check_data

step "host tools"
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[[ -x $EMU ]] || need+=(qemu-user-static)
"$HOST_PY" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
  say "installing ${need[*]} (apt)"
  { apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } \
    || die "could not install ${need[*]} with apt-get"
fi
say "qemu: $($EMU --version | head -1); mmdebstrap $(mmdebstrap --version | awk '{print $2}'); binfmt_misc: not used"

step "wheel from the working tree, x86-64 reference venv ($X86_VENV)"
t=$(date +%s)
ensure_x86_venv
WHEEL=$(build_wheel "$A/wheel")
install_wheel "$X86_VENV/bin/python" "$WHEEL" runtime,tflite
say "$(basename "$WHEEL"); x86-64: $("$X86_VENV/bin/python" -c 'import platform, numpy, onnxruntime, ai_edge_litert
print("python", platform.python_version(), "numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)')"
ensure_full_bundle || die "$FULL_BUNDLE_MISSING"
lap wheel_and_x86_venv "$t"

# What runs, the same on both sides.
mapfile -t AUDIO < <(audio_list "$QUICK")
mapfile -t AUDIO3 < <(audio_list 1)
in_root() {  # where a recording is inside the root filesystem
  local f
  for f in "$@"; do
    case $f in "$ICBHI"/*) echo "/data/icbhi/${f#"$ICBHI"/}" ;; *) echo "/data/sprsound/$(basename "$f")" ;; esac
  done
}
# 15 s at 4 kHz; the stethoscope sends it as 16 kHz int16, cut to 14 s (whole hops; see smoke_driver.py)
BRIDGE_WAV=$ICBHI/audio_and_txt_files/104_1b1_Lr_sc_Litt3200.wav
if [[ $QUICK == 1 ]]; then
  CLASSIFY=(--engine onnx-fp32 --stride 1 --selftest-bundle "all=BUNDLE_ALL")
else
  # The shipped model: both artifacts through the stream engine, every window; the full bundle: every
  # artifact on every 8th of those windows' features (same front end), the self-test on all.
  CLASSIFY=(--engine all --stride 8 --bundle "all=BUNDLE_ALL")
fi

step "x86-64 reference run"
t=$(date +%s)
SHIPPED_X86=$("$X86_VENV/bin/python" -c 'from stethoedge.models import default_bundle; print(default_bundle())')
args=(); for a in "${CLASSIFY[@]}"; do args+=("${a//BUNDLE_ALL/$FULL_BUNDLE}"); done
nice -n 10 "$X86_VENV/bin/python" "$REPO/$DRIVER" classify "$OUT/x86.json" --features "$OUT/x86.npz" \
  --bundle "default=$SHIPPED_X86" "${args[@]}" --audio "${AUDIO[@]}" | sed 's/^/  /'
nice -n 10 "$X86_VENV/bin/python" "$REPO/$DRIVER" bridge "$OUT/x86-bridge.json" --bundle "$SHIPPED_X86" \
  --audio "$BRIDGE_WAV" | sed 's/^/  /'
lap x86_reference "$t"

# -- the arm64 root filesystem ----------------------------------------------------------------------------
cleanup() {
  local m
  for m in $(awk -v r="$ROOT" 'index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  if awk -v r="$ROOT" 'index($2, r "/") == 1 {found=1} END {exit !found}' /proc/mounts; then
    say "warning: something is still mounted under $ROOT; not removing it"
  elif [[ $KEEP != 1 ]]; then
    rm -rf "$ROOT"
  fi
}
trap cleanup EXIT

arm() {  # arm QEMU_CPU PROGRAM ARGS...: run an arm64 program in the root filesystem
  local cpu=$1; shift
  env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 PYTHONUNBUFFERED=1 QEMU_CPU="$cpu" \
    STETHOEDGE_EXEC_PREFIX="$EMU" PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore nice -n 10 "$CHROOT" "$ROOT" "$EMU" "$@"
}
quiet_cpuinfo() { sed -u '/cpuinfo/d; /^onnxruntime cpuid_info warning/d'; }

host_files() {  # network and trust settings of this host (pip goes through the same TLS as the host's)
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
}

pip_in() {  # pip_in VENV ARGS...: pip of an arm64 venv, with the pip download cache kept on the host
  local venv=$1; shift
  mkdir -p "$A/pip-cache" "$ROOT/root/.cache/pip"
  mount --bind "$A/pip-cache" "$ROOT/root/.cache/pip"
  local rc=0
  arm "$PRIMARY" "$venv/bin/python" -m pip "$@" || rc=$?
  umount "$ROOT/root/.cache/pip"
  return $rc
}

install_in_root() {  # the wheel (and whatever its requirements now need) into both arm64 venvs
  mkdir -p "$ROOT/tmp/wheel" && cp "$WHEEL" "$ROOT/tmp/wheel/"
  local w=/tmp/wheel/$(basename "$WHEEL")
  pip_in /opt/stethoedge install -q --no-deps --force-reinstall "$w"
  pip_in /opt/stethoedge install -q --only-binary=:all: "$w[runtime,tflite]"
  pip_in /opt/tflite-runtime install -q --no-deps --force-reinstall "$w"
  pip_in /opt/tflite-runtime install -q --only-binary=:all: "$w[runtime]" "numpy<2" tflite-runtime
  local venv
  for venv in /opt/stethoedge /opt/tflite-runtime; do
    arm "$PRIMARY" "$venv/bin/python" -m pip check | sed "s|^|  $venv: |"
  done
}

probe_emulation() {  # exit 3 (this machine cannot emulate) rather than fail later for the same reason
  local why
  why=$(arm "$PRIMARY" /usr/bin/python3 -c 'import platform; assert platform.machine() == "aarch64"' 2>&1) \
    || die "cannot run arm64 programs here (chroot + $EMU): ${why:-no output}" 3
}

rm -rf "$ROOT"
if [[ $REBUILD == 1 || ! -f $TARBALL ]]; then
  step "building the Debian bookworm arm64 root filesystem (mmdebstrap --variant=extract)"
  t=$(date +%s)
  mkdir -p "$ROOT"
  nice -n 10 mmdebstrap --variant=extract --arch=arm64 --include="$PKGS" bookworm "$A/base.tar" \
    "deb $MIRROR/debian bookworm main" "deb $MIRROR/debian bookworm-updates main" \
    "deb $MIRROR/debian-security bookworm-security main" >"$OUT/mmdebstrap.log" 2>&1 \
    || { tail -20 "$OUT/mmdebstrap.log"; die "mmdebstrap failed (log: $OUT/mmdebstrap.log)"; }
  tar -C "$ROOT" -xf "$A/base.tar" && rm -f "$A/base.tar"
  cp "$EMU" "$ROOT$EMU"
  probe_emulation
  # What the skipped maintainer scripts do that Python and pip need: users, the loader cache.
  cp "$ROOT/usr/share/base-passwd/passwd.master" "$ROOT/etc/passwd"
  cp "$ROOT/usr/share/base-passwd/group.master" "$ROOT/etc/group"
  arm "$PRIMARY" /sbin/ldconfig
  host_files
  say "  $(arm "$PRIMARY" /usr/bin/python3 -c 'import platform, sys
print("python", sys.version.split()[0], "on", platform.machine(), platform.libc_ver())')"
  lap rootfs_debs "$t"
  step "venvs from PyPI's aarch64 wheels: /opt/stethoedge (runtime,tflite), /opt/tflite-runtime (numpy<2)"
  t=$(date +%s)
  pipwhl=$(cd "$ROOT" && ls usr/share/python-wheels/pip-*.whl)
  for venv in /opt/stethoedge /opt/tflite-runtime; do
    # --without-pip: ensurepip starts a child python, which the kernel cannot exec without binfmt;
    # Debian's own pip wheel (the one ensurepip would install) is installed by running it from the wheel.
    arm "$PRIMARY" /usr/bin/python3 -m venv --without-pip "$venv"
    arm "$PRIMARY" "$venv/bin/python" "/$pipwhl/pip" install -q --no-index "/$pipwhl"
  done
  install_in_root
  lap rootfs_venvs "$t"
  t=$(date +%s)
  tar -C "$ROOT" --exclude=./tmp/wheel -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
  say "  cached: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
  lap rootfs_save "$t"
else
  step "unpacking the cached root filesystem $TARBALL ($(du -h "$TARBALL" | cut -f1), $(date -r "$TARBALL" '+%F %R'))"
  t=$(date +%s)
  mkdir -p "$ROOT" && tar -C "$ROOT" -xf "$TARBALL"
  probe_emulation
  host_files
  install_in_root
  lap rootfs_unpack_and_install "$t"
fi
for venv in /opt/stethoedge /opt/tflite-runtime; do
  pkgs='^(numpy|onnxruntime|ai-edge-litert|tflite-runtime|stethoedge|scipy|soxr|soundfile)[=@ ]'
  say "  $venv: $(arm "$PRIMARY" "$venv/bin/python" -m pip freeze 2>/dev/null | grep -iE "$pkgs" | sed 's/ @ .*//' | tr '\n' ' ')"
done

# The run's inputs, copied in (no bind mounts of host data into a directory that is removed afterwards).
mkdir -p "$ROOT/data/icbhi/audio_and_txt_files" "$ROOT/data/icbhi/variant_pcm32" "$ROOT/data/sprsound" \
  "$ROOT/out" "$ROOT/drv"
for f in "${AUDIO[@]}" "${AUDIO3[@]}"; do cp -n "$f" "$ROOT$(in_root "$f")"; done
# The stethoscope's 16 kHz int16 stream as the x86 run made it: resampling the 4 kHz file on arm64 gives
# samples that differ in the last bit (soxr's NEON vs AVX code), and after rounding to int16 63 of 224000
# samples differ by 1 LSB; a device sends the same bytes whatever the host, so both hosts get these.
cp "$OUT/x86-bridge/stethoscope-16k.wav" "$ROOT/data/stethoscope-16k.wav"
rm -rf "$ROOT/bundles" && mkdir -p "$ROOT/bundles" && cp -r "$FULL_BUNDLE" "$ROOT/bundles/all"
cp "$REPO/$DRIVER" "$ROOT/drv/"
# /proc for the emulated programs (ttyname, /dev/fd); a private devpts for the pty pair. Not /sys: with
# both, onnxruntime's cpuinfo reads the host's x86 /proc/cpuinfo as ARM and the emulated python crashes
# (qemu: signal 11); without /sys cpuinfo gives up with warnings and onnxruntime reads the CPU features
# from the auxiliary vector instead (what QEMU_CPU sets).
mount -t proc proc "$ROOT/proc" || die "cannot mount /proc in the root filesystem (needs CAP_SYS_ADMIN)" 3
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$ROOT/dev/pts" \
  || die "cannot mount a private devpts in the root filesystem (needs CAP_SYS_ADMIN)" 3
rm -f "$ROOT/dev/ptmx" && ln -s pts/ptmx "$ROOT/dev/ptmx"
SHIPPED_ARM=$(arm "$PRIMARY" /opt/stethoedge/bin/python -c 'from stethoedge.models import default_bundle
print(default_bundle())')
mapfile -t AUDIO_ARM < <(in_root "${AUDIO[@]}")
mapfile -t AUDIO3_ARM < <(in_root "${AUDIO3[@]}")
args=(); for a in "${CLASSIFY[@]}"; do args+=("${a//BUNDLE_ALL//bundles/all}"); done

STATUS=0
for cpu in $CPUS; do
  t=$(date +%s)
  step "emulated arm64, QEMU_CPU=$cpu: stethoedge doctor"
  # The console script, through its interpreter: qemu-user runs ELF files, and without binfmt_misc nothing
  # reads the script's #! line for it (on the device: just `stethoedge doctor`).
  arm "$cpu" /opt/stethoedge/bin/python /opt/stethoedge/bin/stethoedge doctor --bundle "$SHIPPED_ARM" 2>&1 \
    | quiet_cpuinfo | sed 's/^/  /'
  # doctor's "audio: MISSING" here is the emulation's: sounddevice finds PortAudio with
  # ctypes.util.find_library, which runs `/sbin/ldconfig -p` as a child process, and the kernel cannot
  # exec an arm64 binary without binfmt_misc. The library itself is installed and loads:
  arm "$cpu" /opt/stethoedge/bin/python -c 'import ctypes, ctypes.util
lib = ctypes.CDLL("libportaudio.so.2"); lib.Pa_GetVersionText.restype = ctypes.c_char_p
print("  PortAudio (libportaudio2, arm64) loads:", lib.Pa_GetVersionText().decode(), "| find_library(\"portaudio\") ->",
      ctypes.util.find_library("portaudio"), "(needs to exec /sbin/ldconfig: no binfmt_misc here, see above)")'
  if [[ $cpu == "$PRIMARY" ]]; then
    step "QEMU_CPU=$cpu: self-tests, then the recordings (${#AUDIO_ARM[@]}) through the runtime"
    arm "$cpu" /opt/stethoedge/bin/python /drv/smoke_driver.py classify "/out/arm64-$cpu.json" \
      --features "/out/arm64-$cpu.npz" --bundle "default=$SHIPPED_ARM" "${args[@]}" --audio "${AUDIO_ARM[@]}" \
      2>&1 | quiet_cpuinfo | sed 's/^/  /'
    step "QEMU_CPU=$cpu: listen --replay and --bridge (pty pair, simulated stethoscope), $(basename "$BRIDGE_WAV")"
    arm "$cpu" /opt/stethoedge/bin/python /drv/smoke_driver.py bridge "/out/arm64-$cpu-bridge.json" \
      --bundle "$SHIPPED_ARM" --audio /data/stethoscope-16k.wav 2>&1 | quiet_cpuinfo | sed 's/^/  /' || STATUS=1
    step "QEMU_CPU=$cpu: the tflite-runtime fallback (/opt/tflite-runtime: numpy<2, no ai-edge-litert)"
    # 3 recordings: the shipped model's artifacts through the stream engine, every window; the full bundle's
    # on the same windows as x86 (every 8th). --quick: the self-tests only.
    tfl=(--bundle "default=$SHIPPED_ARM" --engine onnx-fp32,tflite-fp16 --stride 8 --bundle "all=/bundles/all"
         --audio "${AUDIO3_ARM[@]}")
    [[ $QUICK == 1 ]] && tfl=(--selftest-bundle "default=$SHIPPED_ARM" --selftest-bundle "all=/bundles/all")
    arm "$cpu" /opt/tflite-runtime/bin/python /drv/smoke_driver.py classify "/out/arm64-$cpu-tflite-runtime.json" \
      "${tfl[@]}" 2>&1 | quiet_cpuinfo | sed 's/^/  /'
  else
    step "QEMU_CPU=$cpu: self-tests, then ${#AUDIO3_ARM[@]} recordings"
    arm "$cpu" /opt/stethoedge/bin/python /drv/smoke_driver.py classify "/out/arm64-$cpu.json" \
      --features "/out/arm64-$cpu.npz" --bundle "default=$SHIPPED_ARM" "${args[@]}" --audio "${AUDIO3_ARM[@]}" \
      2>&1 | quiet_cpuinfo | sed 's/^/  /'
  fi
  cp -r "$ROOT/out/." "$OUT/"
  lap "arm64_$cpu" "$t"
done

step "x86-64 vs emulated arm64"
t=$(date +%s)
cmp=("$X86_VENV/bin/python" "$REPO/$DRIVER" compare "$OUT/x86.json")
for cpu in $CPUS; do
  extra=(); [[ $cpu != "$PRIMARY" ]] && extra=(--subset)
  "${cmp[@]}" "$OUT/arm64-$cpu.json" "${extra[@]}" | tee -a "$OUT/summary.md" || STATUS=1
done
"${cmp[@]}" --bridge "$OUT/arm64-$PRIMARY-bridge.json" --bridge-ref "$OUT/x86-bridge.json" \
  | tee -a "$OUT/summary.md" || STATUS=1
say "" | tee -a "$OUT/summary.md"
say "tflite-runtime fallback on arm64 (QEMU_CPU=$PRIMARY) against ai-edge-litert on x86-64:" | tee -a "$OUT/summary.md"
"${cmp[@]}" "$OUT/arm64-$PRIMARY-tflite-runtime.json" --subset --allow-refusals --detail-bundle none \
  | tee -a "$OUT/summary.md" || STATUS=1
lap compare "$t"

lap total
step "times (s): $(for k in "${!TIMES[@]}"; do printf '%s=%s ' "$k" "${TIMES[$k]}"; done)"
say "results: $OUT (summary.md, run.log, *.json)"
verdict=$([[ $STATUS == 0 ]] && echo PASS || echo FAIL)
say "ARM64 SMOKE $verdict ($([[ $QUICK == 1 ]] && echo quick || echo full), CPUs: $CPUS)"
exit "$STATUS"
