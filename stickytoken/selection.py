"""Which tokens, controls and sentences an analysis (attention, assess) runs on.

From a finished run: its sticky tokens (or, when it has none, its top candidates standing in
for them, said in a note) and as many control tokens, a seeded draw from the run's
lowest-scored tokens, or from those around its median score (``DetectionResult.control_ids``).
From a model alone: the tokens the user names and a seeded draw of single-token words as
controls.  Sentences: a seeded sample
of the built-in corpus or the user's file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError, check_int, check_texts, read_user_file
from .results import DetectionResult

DEFAULT_SENTENCES = 32


def resolve_result(result_or_run):
    """A DetectionResult, or a run folder path -> DetectionResult; anything else -> None."""
    if isinstance(result_or_run, DetectionResult):
        return result_or_run
    if isinstance(result_or_run, (str, os.PathLike)) and os.path.isdir(os.fspath(result_or_run)) \
            and os.path.isfile(os.path.join(os.fspath(result_or_run), "results.json")):
        return DetectionResult.load(os.fspath(result_or_run))
    return None


def finished_run(run):
    """A DetectionResult as given, or that of a finished run folder; an error that says why
    a folder holds none (``DetectionResult.load``)."""
    if isinstance(run, DetectionResult):
        return run
    return DetectionResult.load(os.fspath(run))


def run_tokens(result, tokenizer, tokens, controls, n_tokens, seed, control_draw: str = "lowest"):
    """(ids, texts, groups, notes) to analyse from a run: its sticky tokens and controls, or
    the ``tokens`` given (with ``controls``, or the run's seeded control draw)."""
    if tokens is None:
        return select_tokens(result, n_tokens, seed, control_draw)
    ids = token_ids_from(tokenizer, tokens)
    if controls is None:
        given = set(ids)
        ctrl = [int(c) for c in result.control_ids(len(ids), seed, control_draw)
                if int(c) not in given]   # never a token itself
    else:
        ctrl = _controls_apart(tokenizer, ids, token_ids_from(tokenizer, controls))
    groups = ["sticky"] * len(ids) + ["control"] * len(ctrl)
    ids = ids + [int(c) for c in ctrl]
    return ids, [None] * len(ids), groups, []


def run_model(result, **kwargs):
    """The model a run was made with (``load_model``'s keywords), or an error that says to give
    it with --model when it is no longer where the run found it."""
    from .models import load_model, resolve_device, resolve_dtype

    device = resolve_device(kwargs.get("device"))   # (a device or dtype refused is not the model's fault)
    resolve_dtype(kwargs.get("dtype"), device)
    try:
        return load_model(result.model, **kwargs)
    except InputError as exc:
        raise InputError(f"{exc}; the run {result.run_dir or ''} was made with it: give the model with --model "
                         "(model= from Python)") from exc


def select_tokens(result, n_tokens: int | None = None, seed: int | None = None, control_draw: str = "lowest"):
    """The run's sticky tokens (highest score first, at most ``n_tokens``) and as many control
    tokens.  A run with no sticky tokens falls back to its top verification candidates, in a
    group named 'candidate' (and says so).  Returns (ids, texts, groups, notes)."""
    notes = []
    picked = list(result.sticky_tokens)
    group = "sticky"
    if not picked:
        picked = list(result.candidates)
        group = "candidate"
        if not picked:
            raise InputError(f"run of {result.model!r} has no sticky tokens and no candidates to analyse")
        notes.append("the run found no sticky tokens; its top verification candidates stand in for them")
    picked.sort(key=lambda t: -t.score)
    if n_tokens is not None:
        if n_tokens < 1:
            raise InputError(f"the number of tokens must be at least 1, got {n_tokens}")
        picked = picked[:n_tokens]
    seed = result.params.get("seed", 42) if seed is None else seed
    controls = [int(i) for i in result.control_ids(len(picked), seed, control_draw)]
    by_id = {c.id: c for c in result.candidates}
    ids = [t.id for t in picked] + controls
    texts = [t.text for t in picked] + [by_id[i].text if i in by_id else None for i in controls]
    groups = [group] * len(picked) + ["control"] * len(controls)
    return ids, texts, groups, notes


def token_ids_from(tokenizer, tokens) -> list[int]:
    """Ids, strings (each must be one vocabulary token) or TokenResult-like objects -> ids; a
    single one of them is one token (a string is never split into its characters)."""
    if isinstance(tokens, (str, int, np.integer)) or hasattr(tokens, "id"):
        tokens = [tokens]
    if not hasattr(tokens, "__iter__"):
        raise InputError(f"tokens must be ids, strings or TokenResults, got {type(tokens).__name__}")
    out = []
    vocab_size = len(tokenizer)
    for t in tokens:
        if isinstance(t, bool):
            raise InputError(f"tokens must be ids, strings or TokenResults, got {t!r}")
        if hasattr(t, "id"):
            out.append(int(t.id))
        elif isinstance(t, (int, np.integer)):
            if not 0 <= int(t) < vocab_size:
                raise InputError(f"token id {int(t)} is outside the vocabulary (0..{vocab_size - 1})")
            out.append(int(t))
        elif isinstance(t, str):
            ids = tokenizer.encode(t, add_special_tokens=False)
            if len(ids) != 1:
                ids2 = tokenizer.convert_tokens_to_ids([t])
                if ids2 and ids2[0] is not None and ids2[0] != tokenizer.unk_token_id:
                    ids = ids2
                else:
                    raise InputError(f"token {t!r} is not a single vocabulary token (it encodes to {len(ids)} ids)")
            out.append(int(ids[0]))
        else:
            raise InputError(f"tokens must be ids, strings or TokenResults, got {type(t).__name__}")
    return out


def _controls_apart(tokenizer, ids: list[int], controls: list[int]) -> list[int]:
    """``controls``, refused when one of them is also among the tokens analysed (it would be
    compared with itself)."""
    given = set(ids)
    both = [i for i in dict.fromkeys(controls) if i in given]
    if both:
        raise InputError("a token cannot be its own control: " + ", ".join(repr(token_text(tokenizer, i)) for i in both)
                         + " given as both a token and a control")
    return controls


def token_text(tokenizer, tid: int) -> str:
    return tokenizer.decode([int(tid)], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def load_sentences(sentences=None, n: int | None = DEFAULT_SENTENCES, seed: int = 42) -> list[str]:
    """Corpus sentences: the given list or file (one a line), else the built-in corpus; a
    seeded sample of ``n`` when there are more."""
    if sentences is None:
        sentences = os.path.join(os.path.dirname(__file__), "data", "sentences.txt")
    if isinstance(sentences, (str, os.PathLike)):
        path = os.fspath(sentences)
        text = read_user_file(path, "sentence file", "give a text file with one sentence a line")
        sentences = [line.strip() for line in text.splitlines() if line.strip()]
    sentences = [s for s in check_texts("sentences", sentences) if s.strip()]
    if not sentences:
        raise InputError("no sentences to insert tokens into; give a non-empty list or file")
    if n is not None:
        if n < 1:
            raise InputError(f"the number of sentences must be at least 1, got {n}")
        if n < len(sentences):
            idx = np.sort(np.random.default_rng(seed).choice(len(sentences), size=n, replace=False))
            sentences = [sentences[i] for i in idx]
    return list(sentences)


def random_controls(tokenizer, n, seed, exclude=()):
    """n seeded single-token alphabetic words from the vocabulary, for analyses without a run."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    pool = sorted(i for t, i in vocab.items() if t.isalpha() and len(t) > 2 and i not in special and i not in exclude)
    if not pool:
        raise InputError("could not find control tokens in the vocabulary; pass controls explicitly")
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(pool, size=min(n, len(pool)), replace=False)]


def controls_said(params: dict[str, Any]) -> str:
    """Where an analysis' controls came from, for its summary line (nothing for results saved
    before it was recorded)."""
    how = params.get("controls")
    return f" ({how})" if how else ""


@dataclass
class Selection:
    """What an analysis runs on: the loaded model, its name, the seed, the tokens (ids, decoded
    texts, groups 'sticky' / 'candidate' / 'control'), notes, the run's result (or None) and
    the default output folder (RUN/<subdir> for a run, else None), and where the controls
    came from (``controls``: in words, for the summaries)."""

    model: Any
    name: str
    seed: int
    ids: list[int]
    texts: list[str]
    groups: list[str]
    notes: list[str]
    result: DetectionResult | None
    output: str | None
    controls: str = ""


def analysis_inputs(result_or_model, *, tokens=None, controls=None, n_tokens: int | None = None,
                    seed: int | None = None, model=None, device: str | None = None, subdir: str = "",
                    verb: str = "analyse", control_draw: str = "lowest") -> Selection:
    """The model and tokens an analysis command works on.  ``result_or_model`` is a
    DetectionResult or run folder (tokens: its sticky tokens, at most ``n_tokens``, or the
    ``tokens`` given; controls: the run's seeded draw, or ``controls``), or a model
    (SentenceTransformer, path or name) with ``tokens`` (controls: ``controls``, or a seeded
    draw of single-token words).  ``model`` overrides the model a run names."""
    from .models import load_model, model_name
    from .options import CONTROL_DRAWS

    if control_draw not in CONTROL_DRAWS:
        raise InputError(f"control_draw must be one of {', '.join(CONTROL_DRAWS)}, got {control_draw!r}")
    if control_draw != "lowest" and controls is not None:
        raise InputError("give controls or a control draw, not both (the controls named are used as they are)")
    if seed is not None:
        seed = check_int("seed", seed, 0, 2**63 - 1)
    result = resolve_result(result_or_model)
    if result is not None:
        seed = int(result.params.get("seed", 42)) if seed is None else int(seed)
        st = load_model(model, device=device) if model is not None else run_model(result, device=device)
        ids, texts, groups, notes = run_tokens(result, st.tokenizer, tokens, controls, n_tokens, seed, control_draw)
        drawn = CONTROL_DRAWS[control_draw]
        name = result.model
        output = os.path.join(result.run_dir, subdir) if result.run_dir and subdir else None
    else:
        seed = 42 if seed is None else int(seed)
        if control_draw != "lowest":
            raise InputError(f"control_draw={control_draw!r} draws from a run's scores: give a run folder")
        source = result_or_model if model is None else model
        st = load_model(source, device=device)
        name = model_name(source)
        if tokens is None:
            raise InputError(f"give a detection result or run folder, or tokens to {verb}")
        ids = token_ids_from(st.tokenizer, tokens)[:n_tokens]
        notes = []
        drawn = "a seeded draw of single-token words"
        if controls is None:
            ctrl = random_controls(st.tokenizer, len(ids), seed, exclude=set(ids))
            notes.append("no detection result: control tokens are a seeded draw of single-token words")
        else:
            ctrl = _controls_apart(st.tokenizer, ids, token_ids_from(st.tokenizer, controls))
        groups = ["sticky"] * len(ids) + ["control"] * len(ctrl)
        ids = ids + [int(c) for c in ctrl]
        texts = [None] * len(ids)
        output = None
    texts = [t if t is not None else token_text(st.tokenizer, i) for t, i in zip(texts, ids)]
    return Selection(st, name, seed, ids, texts, groups, notes, result, output,
                     "as named" if controls is not None else drawn)
