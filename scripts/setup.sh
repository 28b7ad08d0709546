#!/usr/bin/env bash
# Set up everything pacsnode needs on a fresh Debian machine, idempotently:
#   - system tools: DCMTK (storescu/storescp/echoscu), Orthanc, dicom3tools (dciodvfy), dcm2niix
#   - a virtualenv in .venv with pacsnode + distillation, the [train,dev,cluster] extras,
#     torch pinned to the CPU build through constraints.txt
# Called by `make demo` and `make test`; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# rsyslog with its TLS driver: the audit repository of the ATNA tests (tests/syslog_receiver.py)
compgen -G "/usr/lib/*/rsyslog/lmnsd_gtls.so" >/dev/null || need_apt+=(rsyslog-gnutls)
for tool in /usr/bin/storescu /usr/bin/dciodvfy /usr/sbin/Orthanc /usr/bin/dcm2niix \
    /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/bin/chromium /usr/bin/promtool \
    /usr/bin/systemd-analyze /usr/bin/setpriv /usr/lib/postgresql/15/bin/postgres; do
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
  # tests/test_deploy.py checks the unit with systemd-analyze; tests run `nobody` through setpriv
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    systemd util-linux >/dev/null
  # the cluster tests start a throw-away PostgreSQL (tests/pg.py); its packaged service is not needed
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet postgresql 2>/dev/null; then
    $SUDO systemctl stop postgresql || true
  fi
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
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[train,dev,cluster]"
  touch "$stamp"
fi

# The viewer tests (tests/test_seg_readers.py, tests/test_ohif_browser.py): node and npm (Debian's
# when the machine has none), the viewers' readers pinned in tests/viewers (npm ci; puppeteer-core
# drives Debian's chromium, so no browser download), and OHIF's prebuilt viewer (npm pack
# @ohif/app carries package/dist) in tests/viewers/ohif-dist, where `pacsnode demo --viewer` finds it too.
if ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing nodejs and npm"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
viewers=tests/viewers
if [ ! -f "$viewers/node_modules/.package-lock.json" ] || [ "$viewers/package-lock.json" -nt "$viewers/node_modules/.package-lock.json" ]; then
  echo "setup: installing the viewer readers (npm ci in $viewers)"
  (cd "$viewers" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
OHIF_VERSION=3.13.2
if [ "$(cat "$viewers/ohif-dist/.ohif-version" 2>/dev/null)" != "$OHIF_VERSION" ]; then
  echo "setup: unpacking OHIF $OHIF_VERSION's prebuilt viewer into $viewers/ohif-dist"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack "@ohif/app@$OHIF_VERSION" --silent >/dev/null && tar xzf "ohif-app-$OHIF_VERSION.tgz" package/dist)
  rm -rf "$viewers/ohif-dist"
  mv "$tmp/package/dist" "$viewers/ohif-dist"
  echo "$OHIF_VERSION" > "$viewers/ohif-dist/.ohif-version"
  rm -rf "$tmp"
fi
echo "setup: ready"
