"""Build of stickytoken's C core, stickytoken._core (metadata lives in pyproject.toml).

STICKYTOKEN_SANITIZE=1 builds it with AddressSanitizer and UBSan (see scripts/sanitize.sh).
"""
import glob
import os

import numpy as np
from setuptools import Extension, setup

if os.environ.get("STICKYTOKEN_SANITIZE") == "1":
    extra_compile = ["-std=c99", "-O1", "-g", "-fsanitize=address,undefined",
                     "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    extra_link = ["-fsanitize=address,undefined"]
else:
    extra_compile = ["-std=c99", "-O3"]
    extra_link = []

core = Extension(
    "stickytoken._core",
    # the kernels (vocab.c, insert.c, stats.c) and the binding (intake.c, module.c); the pure-C
    # test driver lives in tests/c/
    sources=sorted(glob.glob(os.path.join("csrc", "*.c"))),
    depends=[os.path.join("csrc", h) for h in ("st_core.h", "intake.h", "wrap_text.h")],
    include_dirs=["csrc", np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_21_API_VERSION")],
    extra_compile_args=extra_compile,
    extra_link_args=extra_link,
)

setup(ext_modules=[core])
