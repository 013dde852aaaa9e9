#!/usr/bin/env bash
# The test suite under the GPU machine's library versions, on this machine's CPU: a clean clone
# of HEAD in a fresh virtual environment with transformers, sentence-transformers and tokenizers
# pinned to what the GPU image holds (/work/.library/device/KINDS.md, "pip list"), so that code
# written against newer releases does not first fail during a GPU session's scarce device time.
# Not run by CI (it doubles the suite's time); run it before a GPU session after changes
# that touch transformers or sentence-transformers.  About 10 minutes on the 2-core CPU.
#
# What cannot be matched here: the GPU image's Python (3.12) and NumPy (2.5, not on PyPI for
# this Python 3.11); torch is the CPU wheel of this machine's version.
#
# Environment: VERSIONS (pip requirement specifiers), WORK (default: a temporary folder,
# removed afterwards), PYTEST_ARGS (extra pytest arguments).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSIONS="${VERSIONS:-transformers==5.17.0 sentence-transformers==6.0.1 tokenizers==0.23.2}"
TORCH="${TORCH:-torch==2.13.0}"
if [ -z "${WORK:-}" ]; then
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/stickytoken-gpu-versions.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1

git clone -q "$ROOT" "$WORK/repo"
python3 -m venv "$WORK/venv"
. "$WORK/venv/bin/activate"
python -m pip install -q "$TORCH"
# shellcheck disable=SC2086
python -m pip install -q $VERSIONS
cd "$WORK/repo"
# shellcheck disable=SC2086
python -m pip install -q -e ".[test]" $VERSIONS
python -m pip list 2>/dev/null | grep -iE '^(torch|transformers|sentence-transformers|tokenizers|numpy) '
# shellcheck disable=SC2086
python -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-}
