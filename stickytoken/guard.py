"""A guard that keeps a model's sticky tokens out of the texts it embeds.

``StickyGuard(model, tokens_or_result)`` wraps a SentenceTransformer and has the same
``encode`` (and ``encode_query`` / ``encode_document``) signature; every other attribute is
the wrapped model's.  Two modes:

``mode="remove"`` (text level, the default).  For each sticky token's decoded text ``t``
(surrounding whitespace stripped; tokens whose text is empty or whitespace are ignored), a
*run* is one or more back-to-back copies of ``t``, optionally separated by whitespace.  The
guard deletes:

1. every run that stands as its own word: not preceded or followed by a word character
   (letter, digit, underscore) where ``t`` itself begins or ends with one; a ``t`` that
   begins or ends with punctuation (e.g. ``[SEP]``, ``</s>``) is matched wherever it occurs;
2. every run of two or more copies of ``t`` wherever it occurs, also glued to other text
   (``lucaslucasThe`` -> ``The``), since a real word rarely repeats a token back to back.

A single copy glued into a longer word (``lucasThe``) is kept: it cannot be told apart from
an ordinary word.  Matching ignores case when the model's tokenizer lowercases its input
(checked by encoding ``"A"`` and ``"a"``), else it is exact.  After deletion, runs of
whitespace left behind are collapsed to one space and the text is stripped.  A text made only
of sticky tokens becomes empty.

``mode="mask"`` (token level).  Texts are not changed; instead, while the guard encodes, the
attention mask is set to 0 at every position holding a sticky token id, so no position
attends to the copies and mean pooling skips them.  This catches every occurrence the
tokenizer produces, glued ones included, and also legitimate uses of the same token, but not
the special tokens the tokenizer itself puts around every text: a sticky ``[CLS]`` or ``</s>``
is masked where it was inserted, never in the frame ([CLS] ... [SEP]) every text has.  It needs
a model whose first module is a sentence-transformers Transformer taking ``input_ids`` and
``attention_mask``.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, MutableMapping
from numbers import Integral
from typing import Any, Literal

from .errors import InputError
from .models import batch_padding

MODES = ("remove", "mask")


def _sticky_list(tokens_or_result, tokenizer) -> tuple[list[str], list[int]]:
    """(texts, ids) of the sticky tokens from a DetectionResult, run folder, TokenResults,
    strings or ids."""
    from .results import DetectionResult

    src = tokens_or_result
    if isinstance(src, os.PathLike) or (isinstance(src, str) and _looks_like_path(src)):
        if not os.path.isdir(os.fspath(src)):
            raise InputError(f"{os.fspath(src)!r} looks like a path but is not a folder; give a finished run folder, "
                             "or a list of tokens (e.g. [\"</s>\"]) to guard against")
        src = DetectionResult.load(os.fspath(src))
    if isinstance(src, DetectionResult):
        src = src.sticky_tokens
    if isinstance(src, str) or (isinstance(src, Integral) and not isinstance(src, bool)) \
            or (hasattr(src, "id") and hasattr(src, "text")):
        src = [src]   # one token, given bare
    if not isinstance(src, Iterable):
        raise InputError(f"sticky tokens must be a DetectionResult, a run folder, TokenResults, strings or ids; "
                         f"got {type(src).__name__}")
    texts, ids, several = [], [], []
    for t in src:
        if hasattr(t, "id") and hasattr(t, "text"):
            texts.append(t.text)
            ids.append(int(t.id))
        elif isinstance(t, Integral):   # (a Python or NumPy integer)
            if tokenizer is None:
                raise InputError("token ids need a model with a tokenizer to be turned into text")
            if not 0 <= int(t) < len(tokenizer):
                raise InputError(f"token id {int(t)} is not in the vocabulary (0..{len(tokenizer) - 1})")
            ids.append(int(t))
            texts.append(tokenizer.decode([int(t)], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        elif isinstance(t, str):
            texts.append(t)
            if tokenizer is not None:
                enc = tokenizer.encode(t, add_special_tokens=False)
                if len(enc) == 1:
                    ids.append(int(enc[0]))
                else:
                    several.append(t)
        else:
            raise InputError(f"sticky tokens must be a DetectionResult, a run folder, TokenResults, strings or "
                             f"ids; got {type(t).__name__}")
    return texts, sorted(set(ids)), several


def _looks_like_path(text: str) -> bool:
    """A string that names a folder (existing, or under an existing folder, or starting like a
    path), not a token such as ``</s>``."""
    if os.path.isdir(text):
        return True
    if "/" not in text and os.sep not in text:
        return False
    if text.startswith(("/", "./", "../", "~")) or text.endswith(("/", os.sep)):
        return True
    parent = os.path.dirname(text.rstrip("/" + os.sep))
    return bool(parent) and os.path.isdir(parent)


def _lowercases(tokenizer) -> bool:
    if tokenizer is None:
        return False
    try:
        return tokenizer.encode("A", add_special_tokens=False) == tokenizer.encode("a", add_special_tokens=False)
    except Exception:
        return False


def build_pattern(texts: Iterable[str], ignore_case: bool = False) -> re.Pattern | None:
    """The regular expression the remove mode deletes (see the module docstring)."""
    alts = []
    for t in sorted({t.strip() for t in texts if t and t.strip()}, key=len, reverse=True):
        e = re.escape(t)
        before = r"(?<!\w)" if re.match(r"\w", t[0]) else ""
        after = r"(?!\w)" if re.match(r"\w", t[-1]) else ""
        alts.append(rf"(?:{e})(?:\s*(?:{e}))+")                 # two or more copies, anywhere
        alts.append(rf"{before}(?:{e}){after}")                  # one copy standing as a word
    if not alts:
        return None
    return re.compile("|".join(alts), re.IGNORECASE if ignore_case else 0)


class StickyGuard:
    """A SentenceTransformer wrapper that removes (or masks) sticky tokens before encoding.

    >>> guard = StickyGuard(model, result)            # or a run folder, or ["lucas", ...]
    >>> emb = guard.encode(["some text lucas lucas"]) # same keywords as model.encode
    """

    def __init__(self, model, tokens_or_result, mode: Literal["remove", "mask"] = "remove",
                 ignore_case: bool | None = None):
        from .results import DetectionResult

        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.model = model
        self.mode = mode
        tokenizer = getattr(model, "tokenizer", None)
        self.texts, self.ids, several = _sticky_list(tokens_or_result, tokenizer)
        self._frame_ids: tuple[list[int], list[int]] | None = None   # (mask mode's, found when first needed)
        self.ignore_case = _lowercases(tokenizer) if ignore_case is None else bool(ignore_case)
        self.pattern = build_pattern(self.texts, self.ignore_case)
        self.source_is_run = isinstance(tokens_or_result, DetectionResult) or (
            isinstance(tokens_or_result, (str, os.PathLike)) and os.path.isdir(os.fspath(tokens_or_result)))
        if not self.texts:
            why = "the run found none" if self.source_is_run else "none were given"
            warnings.warn(f"StickyGuard has no sticky tokens to guard against ({why}): it passes every "
                          "text through unchanged", UserWarning, stacklevel=2)
        elif mode == "mask" and not self.ids:
            raise InputError("mask mode needs sticky tokens that are single vocabulary ids")
        elif mode == "mask" and several:
            shown = ", ".join(repr(t) for t in several[:6]) + (", ..." if len(several) > 6 else "")
            warnings.warn(f"mask mode masks single vocabulary ids: {len(several)} of the texts given are not one "
                          f"token and are not masked ({shown}); remove mode deletes them as text",
                          UserWarning, stacklevel=2)

    @property
    def active(self) -> bool:
        """Whether the guard has any sticky token to act on."""
        return bool(self.texts)

    def __repr__(self) -> str:
        if not self.active:
            return (f"StickyGuard(mode={self.mode!r}, tokens=0: no sticky tokens, passes texts through unchanged, "
                    f"model={type(self.model).__name__})")
        shown = ", ".join(repr(t) for t in self.texts[:6]) + (", ..." if len(self.texts) > 6 else "")
        return f"StickyGuard(mode={self.mode!r}, tokens={len(self.texts)} [{shown}], model={type(self.model).__name__})"

    def __getattr__(self, name: str) -> Any:
        # only called for attributes the guard lacks: behave like the wrapped model
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def clean(self, text: str) -> str:
        """The text with the sticky tokens removed (remove mode's rules)."""
        if self.pattern is None or not isinstance(text, str):
            return text
        out = self.pattern.sub(" ", text)
        return re.sub(r"\s+", " ", out).strip()

    def clean_texts(self, inputs):
        if isinstance(inputs, str):
            return self.clean(inputs)
        if isinstance(inputs, (list, tuple)):
            return [self.clean(t) if isinstance(t, str) else t for t in inputs]
        return [self.clean(t) if isinstance(t, str) else t for t in list(inputs)]

    def _call(self, method: str, inputs, *args, **kwargs):
        """``model.<method>`` on the guarded texts; batches pad even where the tokenizer has
        no pad token (``models.batch_padding``)."""
        fn = getattr(self.model, method)
        with batch_padding(self.model):
            if self.mode == "remove":
                return fn(self.clean_texts(inputs), *args, **kwargs)
            if method == "encode_multi_process" or kwargs.get("pool") is not None \
                    or isinstance(kwargs.get("device"), (list, tuple)):
                # the mask is a hook on this process's model: other processes' copies would run unguarded
                raise InputError("mask mode guards the model in this process only; encode without a pool or "
                                 "a list of devices, or use mode='remove' (it cleans the texts before they go out)")
            hook = self._install_mask_hook()
            try:
                return fn(inputs, *args, **kwargs)
            finally:
                hook.remove()

    def __call__(self, inputs, *args, **kwargs):
        """Call the guard as the model is called: on tokenized features (a dict with
        ``input_ids`` and ``attention_mask``, as ``model(features)`` takes) it runs the model's
        forward pass with every sticky-token position masked (either mode: the text is already
        tokenized); on texts it is ``encode``."""
        if isinstance(inputs, MutableMapping):
            if not self.ids:
                return self.model(inputs, *args, **kwargs)
            hook = self._install_mask_hook()
            try:
                return self.model(inputs, *args, **kwargs)
            finally:
                hook.remove()
        return self.encode(inputs, *args, **kwargs)

    def encode(self, inputs, *args, **kwargs):
        """``model.encode`` on the guarded texts; every argument is passed through."""
        return self._call("encode", inputs, *args, **kwargs)

    def encode_query(self, inputs, *args, **kwargs):
        return self._call("encode_query", inputs, *args, **kwargs)

    def encode_document(self, inputs, *args, **kwargs):
        return self._call("encode_document", inputs, *args, **kwargs)

    def encode_multi_process(self, inputs, *args, **kwargs):
        """``model.encode_multi_process`` on the guarded texts (remove mode only: mask mode's
        hook does not reach the pool's processes)."""
        return self._call("encode_multi_process", inputs, *args, **kwargs)

    def _install_mask_hook(self):
        import torch

        first = self.model[0]
        ids = torch.as_tensor(self.ids, dtype=torch.long)
        prefix, suffix = self._frame()

        def hook(module, args, kwargs):
            features = args[0] if args else kwargs.get("features")
            if isinstance(features, MutableMapping) and "input_ids" in features and "attention_mask" in features:
                input_ids, attention = features["input_ids"], features["attention_mask"]
                hit = torch.isin(input_ids, ids.to(input_ids.device))
                if (prefix or suffix) and bool(hit.any()):
                    hit &= ~_frame_positions(input_ids, attention, prefix, suffix)
                mask = attention.masked_fill(hit, 0)
                # keep at least one position per row so pooling never divides by zero
                empty = mask.sum(-1) == 0
                if bool(empty.any()):
                    mask[empty] = features["attention_mask"][empty]
                features["attention_mask"] = mask
            return None

        return first.register_forward_pre_hook(hook, with_kwargs=True)

    def _frame(self) -> tuple[list[int], list[int]]:
        """The special ids the tokenizer puts before and after every text ([CLS] ... [SEP]),
        when one of them is a sticky token (mask mode then keeps the frame's own); ([], [])
        when none is, or the frame cannot be found."""
        if self._frame_ids is None:
            from .encoder import tokenizer_frame

            try:
                prefix, suffix = tokenizer_frame(self.model.tokenizer)
            except Exception:
                prefix, suffix = [], []
            sticky = set(self.ids)
            self._frame_ids = (prefix, suffix) if sticky & set(prefix + suffix) else ([], [])
        return self._frame_ids


def _frame_positions(input_ids, attention, prefix: list[int], suffix: list[int]):
    """True where a row holds the tokenizer's own frame: the first ``len(prefix)`` and the last
    ``len(suffix)`` attended positions, when they hold those ids (either padding side)."""
    import torch

    mask = attention.bool()
    k = torch.cumsum(mask.long(), dim=-1) - 1           # index among the attended positions
    n = mask.sum(-1, keepdim=True)
    frame = torch.zeros_like(mask)
    for j, tid in enumerate(prefix):
        frame |= mask & (k == j) & (input_ids == tid)
    for j, tid in enumerate(suffix):
        frame |= mask & (k == n - len(suffix) + j) & (input_ids == tid)
    return frame
