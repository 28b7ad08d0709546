#!/usr/bin/env bash
# Set up everything pacsnode needs on a fresh Debian machine, idempotently:
#   - system tools: DCMTK (storescu/storescp/echoscu), Orthanc, dicom3tools (dciodvfy), dcm2niix
#   - a virtualenv in .venv with pacsnode + distillation, the [train,dev] extras,
#     torch pinned to the CPU build through constraints.txt
# Called by `make demo` and `make test`; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# rsyslog with its TLS driver: the audit repository of the ATNA tests (tests/syslog_receiver.py)
compgen -G "/usr/lib/*/rsyslog/lmnsd_gtls.so" >/dev/null || need_apt+=(rsyslog-gnutls)
for tool in /usr/bin/storescu /usr/bin/dciodvfy /usr/sbin/Orthanc /usr/bin/dcm2niix \
    /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/bin/chromium /usr/bin/promtool; do
  [ -e "$tool" ] || need_apt+=("$tool")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing system packages (missing: ${need_apt[*]})"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    dcmtk orthanc orthanc-dicomweb dicom3tools dcm2niix rsyslog rsyslog-gnutls >/dev/null
  # the status page's tests drive a real headless chromium; promtool (in prometheus) lints /metrics
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium prometheus >/dev/null
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl stop prometheus || true
  fi
  # Orthanc's Debian package starts a system service on 4242/8042; the demo and the tests
  # start their own instances on free ports, so the packaged one is not needed.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
    $SUDO systemctl stop orthanc || true
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.pacsnode-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv (torch pinned by constraints.txt)"
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[train,dev]"
  touch "$stamp"
fi
echo "setup: ready"
