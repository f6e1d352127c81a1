#!/usr/bin/env bash
# Idempotent set-up: apt packages FFCV builds against, then .venv/ from requirements.txt.
# A re-run on a ready machine only compares a stamp and exits in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="pkg-config libturbojpeg0-dev libopencv-dev"
if ! dpkg -s $APT_PACKAGES >/dev/null 2>&1; then
  echo "setup: installing apt packages: $APT_PACKAGES"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PACKAGES >/dev/null
fi

PY=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "setup: installing Python packages into .venv (2-3 minutes on a fresh machine)"
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
# The repo root on the venv's path (what an editable install does), so `bench/run_all.py` run as a
# script and `python -m reports` both import allconv, loaders, bench and reports from this checkout.
.venv/bin/python -c 'import site, sys; open(site.getsitepackages()[0] + "/allconv_bench.pth", "w").write(sys.argv[1] + "\n")' "$PWD"
echo "$want" > "$stamp"
