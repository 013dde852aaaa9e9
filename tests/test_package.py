"""The package's surface: what ``import stickytoken`` gives, and that the command line starts
without PyTorch where it does not need it."""
import subprocess
import sys

import pytest


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_import_and_the_parser_leave_torch_unimported():
    out = _python("import sys, stickytoken, stickytoken.rows, stickytoken.compare, stickytoken.report\n"
                  "from stickytoken import cli\n"
                  "cli.build_parser().parse_args(['compare', 'a', 'b'])\n"
                  "cli._setup_logging(False)\n"
                  "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))")
    assert out == "[]"


def test_the_command_line_says_its_versions_without_importing_torch():
    out = _python("import sys, io, contextlib\n"
                  "from stickytoken import cli\n"
                  "buf = io.StringIO()\n"
                  "with contextlib.redirect_stdout(buf):\n"
                  "    try: cli.main(['--version'])\n"
                  "    except SystemExit: pass\n"
                  "print(buf.getvalue().strip(), 'torch' in sys.modules)")
    import numpy
    import torch

    assert out == f"stickytoken {__import__('stickytoken').__version__} (numpy {numpy.__version__}, " \
                  f"torch {torch.__version__}) False"


def test_public_names_are_there_and_the_functions_keep_their_module_names():
    import stickytoken
    from stickytoken.check import LABELS            # importing the modules by name ...
    from stickytoken.compare import STATUSES
    import stickytoken.check as check_module

    assert LABELS[0] == "strong_rejected" and "shared" in STATUSES
    assert callable(stickytoken.check) and stickytoken.check.__name__ == "check"   # ... leaves the functions
    assert callable(stickytoken.compare) and stickytoken.compare.__name__ == "compare"
    assert check_module is stickytoken.check
    assert stickytoken.assess.__name__ == "stickytoken.assess"   # a module, as before
    for name in stickytoken.__all__:
        assert getattr(stickytoken, name) is not None
        assert name in dir(stickytoken)
    assert stickytoken.detect is sys.modules["stickytoken.api"].detect
    with pytest.raises(AttributeError, match="no attribute 'detcet'"):
        stickytoken.detcet


def test_no_cuda_context_is_made_for_other_devices(monkeypatch):
    import torch

    from stickytoken.models import warm_cuda

    assert warm_cuda("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert warm_cuda("cuda") is None    # (the load says CUDA is not there)
    assert warm_cuda(None) is None      # the default device is then the CPU
