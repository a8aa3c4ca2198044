#!/usr/bin/env bash
# System packages some tests need beyond what pip installs; `make test` (and so .ci/run) runs this first.
#
#   gcc                      C compiler: firmware-bridge C reference tests (tests/test_bridge_c.py,
#                            test_bridge_runtime_e2e.py, the C parts of test_bridge_serial.py)
#   libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins
#                            live capture through a private PulseAudio daemon (tests/test_capture.py,
#                            and `stethoedge devices` in tests/test_cli.py)
#   espeak-ng                a spoken clip for the AudioSet-weights check (tests/test_efficientat_model.py)
#   chromium                 renders the exam HTML report in a real headless browser (tests/test_report_browser.py)
#
# Installs the missing ones with apt-get when apt-get exists and we are root (or sudo works without a
# password); otherwise, or when the install fails (offline), prints exactly which tests will skip and why.
# Never fails: the tests run either way, and each missing package makes only its tests skip, with the
# package as the reason. STETHOEDGE_SYSTEM_DEPS=0 (make test SYSTEM_DEPS=0) skips this step.
set -uo pipefail

if [ "${STETHOEDGE_SYSTEM_DEPS:-1}" = "0" ]; then
  exit 0
fi

declare -A WHY=(
  [gcc]="no C compiler: the firmware-bridge C reference tests skip (tests/test_bridge_c.py, test_bridge_runtime_e2e.py, 3 in test_bridge_serial.py)"
  [libportaudio2]="no PortAudio: the live-capture tests skip (tests/test_capture.py) and so does the \`devices\` test in tests/test_cli.py"
  [pulseaudio]="no PulseAudio server: the live-capture tests skip (tests/test_capture.py)"
  [pulseaudio-utils]="no pactl/paplay: the live-capture tests skip (tests/test_capture.py)"
  [libasound2-plugins]="no ALSA pulse plugin: the live-capture tests skip (tests/test_capture.py)"
  [espeak-ng]="no espeak-ng: the spoken-clip AudioSet-weights check skips (tests/test_efficientat_model.py)"
  [chromium]="no chromium: the headless-browser checks of the exam report skip (tests/test_report_browser.py)"
)
PACKAGES=(gcc libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins espeak-ng chromium)

present() {  # is package $1 (or, for gcc, any C compiler) here?
  case "$1" in
    gcc) command -v "${CC:-cc}" >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1 ;;
    *) if command -v dpkg-query >/dev/null 2>&1; then
         dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
       else
         case "$1" in
           libportaudio2) ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 ;;
           pulseaudio) command -v pulseaudio >/dev/null 2>&1 ;;
           pulseaudio-utils) command -v pactl >/dev/null 2>&1 ;;
           libasound2-plugins) ls /usr/share/alsa/alsa.conf.d/*pulse* >/dev/null 2>&1 ;;
           espeak-ng) command -v espeak-ng >/dev/null 2>&1 ;;
           chromium) command -v chromium >/dev/null 2>&1 ;;
         esac
       fi ;;
  esac
}

missing() {
  local out=() p
  for p in "${PACKAGES[@]}"; do
    present "$p" || out+=("$p")
  done
  echo "${out[@]}"
}

MISSING=$(missing)
[ -z "$MISSING" ] && exit 0

SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
fi
if command -v apt-get >/dev/null 2>&1 && [ "$SUDO" != "none" ]; then
  echo "system-deps: installing $MISSING (apt-get)" >&2
  # shellcheck disable=SC2086
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $MISSING; } \
    >/dev/null 2>&1 || echo "system-deps: apt-get could not install them (offline?)" >&2
  MISSING=$(missing)
  [ -z "$MISSING" ] && exit 0
elif ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: no apt-get here; install the equivalents of: $MISSING" >&2
else
  echo "system-deps: not root and no password-less sudo; run: sudo apt-get install $MISSING" >&2
fi
for p in $MISSING; do
  echo "system-deps: $p missing -> ${WHY[$p]}" >&2
done
exit 0
