#!/usr/bin/env bash
# The triton peer's own virtualenv for `uniserve bench service --peers triton` (or all).
#
# nvidia-pytriton pins numpy<2 and the project's environment runs numpy 2, so PyTriton gets a
# venv of its own, .venv-triton/ (git-ignored), which service/bench/peers finds by itself: the
# same torch as the Makefile's (the CPU wheel first, so pip does not fetch CUDA), this checkout
# installed editable with the bench-triton extra, numpy<2, and pyarrow<21 (newer pyarrow needs
# numpy 2; tested with 20.0.0). Tested with nvidia-pytriton 0.7.0 (Triton 2.51) on CPU.
#
#   scripts/setup_triton_venv.sh            # PYTHON=python3.11 VENV=.venv-triton TORCH_VERSION=2.13.0
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-triton}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip install --quiet -e '.[bench-triton]' 'numpy<2' 'pyarrow<21'
"$VENV/bin/python" -c "import numpy, pytriton; print('pytriton ready, numpy', numpy.__version__)"
