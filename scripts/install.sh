#!/usr/bin/env bash
# Installs GraphVLA and what it needs on a fresh Debian machine (CPU): system libraries for
# off-screen MuJoCo rendering and Graphviz, the CPU build of torch first (so pip never pulls a
# multi-GB CUDA build), then the project with its test and simulator extras.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="graphviz libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6"
if command -v apt-get >/dev/null 2>&1; then
  missing=$(for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if ! $PY -c "import torch" >/dev/null 2>&1; then
  wheel=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1 || true)
  if [ -n "$wheel" ]; then
    $PY -m pip install -q "$wheel"
  else
    $PY -m pip install -q torch==2.13.0  # elsewhere: point pip at a CPU wheel index to avoid the CUDA build
  fi
fi
$PY -m pip install -q -e ".[test,sim,deepspeed,export,pretrained]"
