#!/usr/bin/env bash
# Sanitizer run of the C core (CI calls this; a couple of minutes).
#
#  1. tests/c/test_core.c, the pure-C driver of every kernel (no Python: it links the kernel
#     files vocab.c, insert.c, stats.c and wordpiece.c only), built with ASan + UBSan and run with
#     LeakSanitizer on (detect_leaks=1); then under valgrind (memcheck, leak check) if installed.
#  2. stickytoken._core built with STICKYTOKEN_SANITIZE=1 in a temporary copy of the repository
#     (the in-place build is left alone) and the core tests run against it, with libasan
#     preloaded into the interpreter.  Leak detection is off there: CPython, NumPy and torch keep
#     memory for the life of the process; the C driver above is where leaks are checked.
#
# Environment: PYTHON (default: python), CC (default: gcc), PYTEST_ARGS (extra pytest args).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
CC="${CC:-gcc}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/stickytoken-sanitize.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SAN_FLAGS=(-std=c99 -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
KERNELS=("$ROOT"/csrc/vocab.c "$ROOT"/csrc/insert.c "$ROOT"/csrc/stats.c "$ROOT"/csrc/wordpiece.c)
DRIVER="$ROOT/tests/c/test_core.c"

echo "== 1. C driver under ASan + UBSan + LeakSanitizer"
"$CC" "${SAN_FLAGS[@]}" -Wall -Wextra -I "$ROOT/csrc" "$DRIVER" "${KERNELS[@]}" -lm \
    -o "$WORK/test_core_asan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$WORK/test_core_asan"

if command -v valgrind >/dev/null 2>&1; then
    echo "== 1b. C driver under valgrind"
    "$CC" -std=c99 -O0 -g -I "$ROOT/csrc" "$DRIVER" "${KERNELS[@]}" -lm -o "$WORK/test_core_vg"
    valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        "$WORK/test_core_vg"
else
    echo "== 1b. valgrind not installed; skipped"
fi

echo "== 2. sanitized extension + core tests"
mkdir -p "$WORK/src"
cp -r "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/csrc" "$ROOT/stickytoken" "$ROOT/tests" "$WORK/src/"
find "$WORK/src" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
(cd "$WORK/src" && STICKYTOKEN_SANITIZE=1 "$PYTHON" setup.py -q build_ext --inplace >"$WORK/build.log" 2>&1) \
    || { cat "$WORK/build.log"; exit 1; }
LIBASAN="$("$CC" -print-file-name=libasan.so)"
LIBUBSAN="$("$CC" -print-file-name=libubsan.so)"
cd "$WORK/src"
export LD_PRELOAD="$LIBASAN:$LIBUBSAN"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:alloc_dealloc_mismatch=0:detect_odr_violation=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export HF_HUB_OFFLINE=1
"$PYTHON" -c "import stickytoken._core as c, sys; assert c.__file__.startswith('$WORK'), c.__file__; print('sanitized build:', c.__file__)"
# shellcheck disable=SC2086
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_core_stats.py tests/test_core_insert.py \
    tests/test_core_vocab.py tests/test_core_dlpack.py tests/test_core_wordpiece.py ${PYTEST_ARGS:-}
echo "== sanitize.sh: all passed"
