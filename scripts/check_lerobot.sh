#!/usr/bin/env bash
# Does LeRobot itself open what `graphvla data metaworld` writes?
#
# For each format (v2.1 -> LeRobot 0.3.2, v3.0 -> LeRobot 0.4.1) this records a fresh tiny Meta-World
# dataset with the installed graphvla, then, in a side virtual environment holding that pinned
# LeRobot, opens it with LeRobotDataset(root=...) from another working directory, checks items
# against GraphVLA's own reader (frames and vectors equal), the policy features and the image
# statistics, and trains LeRobot's ACT two steps on it (scripts/check_lerobot.py).
#
#   scripts/check_lerobot.sh [v2.1|v3.0|all]      (default: all)
#   VENV_DIR=/tmp/lerobot-venvs  WORK=/tmp/graphvla-lerobot-check   (where venvs and recordings go)
#
# Installing LeRobot beside this project's torch (2.13, CPU):
# - LeRobot is installed with --no-deps plus the pure-Python packages it needs to open a dataset and
#   train ACT (datasets, draccus, jsonlines, deepdiff, termcolor, huggingface-hub, pyserial; 0.4.1
#   also transformers 4.57 and diffusers, which its policies package imports). With its own
#   dependencies pip would replace torch: 0.4.1 pins torch<2.8 and torchvision<0.23 (it runs on
#   torch 2.13 all the same: this script is the proof), and both want torchvision, whose PyPI wheel
#   pulls a matching torch.
# - torchvision 0.28.0 (the release for torch 2.13) comes from PyPI with --no-deps. PyPI's wheel is a
#   CUDA build: beside a CPU torch its compiled operators (nms, roi_align) do not load, and
#   check_lerobot.py skips registering their meta kernels; ACT uses only torchvision's Python ResNet.
# - LeRobot 0.4.1 needs datasets 4.x, which needs pyarrow >= 21 and so numpy 2: the 0.4.1 venv
#   gets its own numpy 2.2 and pyarrow 21 (the project keeps numpy < 2 for openpi-client).
# Not checked here: `--video` recordings. LeRobot decodes video with torchcodec (needs system FFmpeg
# libraries, absent on this machine) or torchvision's VideoReader (gone from torchvision 0.28);
# tests/test_lerobot_format.py reads them back with GraphVLA's PyAV reader.
# The venvs use --system-site-packages (the installed torch and graphvla) and live outside the
# repository; nothing here is a dependency of graphvla.
set -euo pipefail

WHICH="${1:-all}"
VENV_DIR="${VENV_DIR:-/tmp/lerobot-venvs}"
WORK="${WORK:-/tmp/graphvla-lerobot-check}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"

common_deps=("draccus==0.10.0" "jsonlines>=4,<5" "deepdiff>=7,<9" "termcolor>=2.4,<4" "pyserial>=3.5")

make_venv() {  # make_venv NAME LEROBOT_VERSION EXTRA_PIP_ARGS...
  local venv="$VENV_DIR/$1" version="$2"
  shift 2
  if [ -x "$venv/bin/python" ] && "$venv/bin/pip" show lerobot 2>/dev/null | grep -q "^Version: $version$"; then
    return
  fi
  rm -rf "$venv"
  "$PY" -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --no-deps "lerobot==$version" "torchvision==0.28.0"
  "$venv/bin/pip" install -q "${common_deps[@]}" "$@"
}

check() {  # check FORMAT VENV_NAME
  local fmt="$1" venv="$VENV_DIR/$2" data="$WORK/metaworld-$1"
  rm -rf "$data"
  graphvla data metaworld -o "$data" --tasks reach-v3,push-v3 --episodes 2 --size 64 --format "$fmt"
  # From another folder: nothing may resolve relative to the working directory.
  (cd "$WORK" && "$venv/bin/python" "$HERE/check_lerobot.py" "$data" --steps 2)
}

mkdir -p "$VENV_DIR" "$WORK"
if [ "$WHICH" = "v2.1" ] || [ "$WHICH" = "all" ]; then
  make_venv lerobot-0.3.2 0.3.2 "datasets==3.6.0" "huggingface-hub>=0.34.2,<1.0"
  check v2.1 lerobot-0.3.2
fi
if [ "$WHICH" = "v3.0" ] || [ "$WHICH" = "all" ]; then
  make_venv lerobot-0.4.1 0.4.1 "datasets>=4.0,<4.2" "huggingface-hub>=0.34.2,<0.36" "numpy>=2,<2.3" \
    "pyarrow>=21,<22" "transformers==4.57.1"
  "$VENV_DIR/lerobot-0.4.1/bin/pip" install -q --no-deps "diffusers>=0.27.2,<0.36"
  check v3.0 lerobot-0.4.1
fi
