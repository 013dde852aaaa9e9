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


@pytest.mark.parametrize("argv, extra, command", [
    (["attention", "RUN", "--layers", "9"], "--layers 9", "attention"),
    (["detect", "--foo"], "--foo", "detect"),
    (["models", "get", "x", "--zz"], "--zz", "models get"),
])
def test_an_unknown_flag_names_the_help_of_the_command_it_was_given_to(argv, extra, command, capsys):
    from stickytoken import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: unrecognized arguments: {extra} (see: python -m stickytoken {command} --help)"]


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


def test_sentence_transformers_imports_without_scikit_learn_and_its_function_still_works():
    out = _python("import sys\n"
                  "import numpy as np\n"
                  "from stickytoken.models import import_sentence_transformers\n"
                  "st = import_sentence_transformers()\n"
                  "print('sklearn' in sys.modules, 'sklearn.metrics' in sys.modules, st.__name__)\n"
                  "from sentence_transformers.util import similarity\n"
                  "x = np.arange(12, dtype=float).reshape(4, 3)\n"
                  "d = similarity.pairwise_distances(x, metric='manhattan')\n"    # the real function, now imported
                  "from sklearn.metrics import pairwise_distances\n"
                  "print('sklearn.metrics' in sys.modules, np.array_equal(d, pairwise_distances(x, metric='manhattan')),"
                  " float(d[0, 3]))\n"
                  "print(import_sentence_transformers() is st, st.SentenceTransformer.__module__.split('.')[0])")
    assert out.splitlines() == ["False False sentence_transformers", "True True 27.0",
                                "True sentence_transformers"]


def test_every_deferred_name_is_its_modules_own_function_at_its_first_call():
    # each stand-in name exists in the real module, and calling it calls the real function
    out = _python("import importlib\n"
                  "from stickytoken import models\n"
                  "for module, names in models._DEFERRED_IMPORTS.items():\n"
                  "    for name in names:\n"
                  "        real = getattr(importlib.import_module(module), name)\n"
                  "        assert callable(real), (module, name)\n"
                  "        assert models._deferred(module, name).__name__ == name\n"
                  "print(models._deferred('scipy.stats', 'spearmanr')([1, 2, 3, 4], [1, 3, 2, 4])[0])")
    assert float(out) == pytest.approx(0.8)


def test_an_import_that_needs_more_than_the_stand_ins_is_done_the_ordinary_way():
    # a stand-in missing what the import takes from the module: the ordinary import, whole
    out = _python("import sys\n"
                  "from stickytoken import models\n"
                  "models._DEFERRED_IMPORTS = {'sklearn.metrics': ('euclidean_distances',)}\n"
                  "st = models.import_sentence_transformers()\n"
                  "from sentence_transformers.util import similarity\n"
                  "import sklearn.metrics\n"
                  "print(similarity.pairwise_distances is sklearn.metrics.pairwise_distances,"
                  " type(sys.modules['sklearn.metrics']).__name__, hasattr(st, 'SentenceTransformer'))")
    assert out == "True module True"


def test_attention_kernels_are_named_in_order_and_a_wrong_name_refused(monkeypatch):
    from torch.nn.attention import SDPBackend

    from stickytoken.encoder import attention_backends
    from stickytoken.errors import InputError

    monkeypatch.delenv("STICKYTOKEN_ATTENTION", raising=False)
    assert attention_backends() == (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
    assert attention_backends(" Efficient, math,efficient") == (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
    monkeypatch.setenv("STICKYTOKEN_ATTENTION", "cudnn")
    assert attention_backends() == (SDPBackend.CUDNN_ATTENTION,)
    for bad in ("flash,flashy", " , "):
        with pytest.raises(InputError, match="choose from flash, efficient, math, cudnn"):
            attention_backends(bad)


def test_submodules_are_attributes_as_the_readme_uses_them():
    # `stickytoken.models.default_model_path()` in a fresh interpreter was an AttributeError
    out = _python("import os, stickytoken\n"
                  "print(os.path.isdir(stickytoken.models.default_model_path()), callable(stickytoken.compare),\n"
                  "      callable(stickytoken.agreement), stickytoken.assess.__name__)\n"
                  "try:\n"
                  "    stickytoken.no_such_thing\n"
                  "except AttributeError as exc:\n"
                  "    print(exc)")
    assert out.splitlines() == ["True True True stickytoken.assess",
                                "module 'stickytoken' has no attribute 'no_such_thing'"]
