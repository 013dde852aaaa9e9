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
    # every kernel file; csrc/test_core.c is the standalone C test driver, not part of it
    sources=[p for p in sorted(glob.glob(os.path.join("csrc", "*.c")))
             if os.path.basename(p) != "test_core.c"],
    depends=[os.path.join("csrc", "st_core.h")],
    include_dirs=["csrc", np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_21_API_VERSION")],
    extra_compile_args=extra_compile,
    extra_link_args=extra_link,
)

setup(ext_modules=[core])
