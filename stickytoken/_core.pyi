"""Type stubs and contract of the C extension ``stickytoken._core``.

Every array argument accepts a NumPy array, any buffer-protocol object, or a DLPack-capable
tensor (PyTorch CPU tensors, bfloat16 included), read without copying.  A CUDA tensor is
refused with ``BufferError`` (move it to the CPU first).  Wrong kind of object -> TypeError;
bad value, shape or dtype -> ValueError; unreadable buffer -> BufferError.  Kernels release
the GIL.  Every kernel has a float64 NumPy twin in ``stickytoken/_reference.py`` with the
same name and signature.

"Float array" below means float64, float32, float16 or bfloat16 (bfloat16 via DLPack only);
results are always float64 and sums accumulate in float64.
"""
from typing import Sequence

import numpy as np

# ---- token categories (docs/algorithm.md §1) -------------------------------------------
OK: int                        # 0
OK_SPECIAL: int                # 1
MEANINGLESS: int               # 2
UNREACHABLE_SPECIAL: int       # 3
UNDECODEABLE: int              # 4
UNREACHABLE_SINGLE_TOKEN: int  # 5
UNREACHABLE_MULTI_TOKEN: int   # 6
CATEGORY_NAMES: tuple[str, ...]  # names indexed by code, e.g. CATEGORY_NAMES[0] == "OK"

def token_categories(
    texts: Sequence[str],          # decoded text of ids 0..V-1
    reencoded: np.ndarray,         # int64, flat concatenation of every text's re-encoded ids
    offsets: np.ndarray,           # int64 [V+1], reencoded[offsets[i]:offsets[i+1]] belongs to id i
    special_ids: np.ndarray,       # int64, the tokenizer's special ids (any order, may repeat)
) -> np.ndarray:                   # int8 [V], category code per id, rules checked in the doc's order
    """Rules, in order: MEANINGLESS (empty or only whitespace; Python str.isspace set);
    OK_SPECIAL / OK (re-encoding == [id]; special when id in special_ids);
    UNREACHABLE_SPECIAL (>= 3 code points, starts with '[' or '<', ends with ']' or '>',
    holds a letter: ASCII letter or a code point >= U+00C0 other than U+00D7, U+00F7,
    U+2000-U+206F, U+3000-U+303F); UNDECODEABLE (holds U+FFFD);
    UNREACHABLE_SINGLE_TOKEN (re-encodes to exactly one other id);
    UNREACHABLE_MULTI_TOKEN (anything else, zero ids included)."""

def bytelevel_decode(tokens: Sequence[str], invalid: str = "hex") -> list[str]:
    """GPT-2 byte-level stand-in strings (e.g. 'Ġthe') -> UTF-8 text.  Bytes that do not form
    valid UTF-8 are shown as '<0xAB>' (invalid='hex') or U+FFFD (invalid='replace').  A
    character that is not a byte-level stand-in raises ValueError."""

# ---- insertion (docs/algorithm.md §3) ---------------------------------------------------
PREFIX: int   # 0
SUFFIX: int   # 1
INSERT: int   # 2

def build_token_batch(
    base_ids: np.ndarray,          # int64 flat ids of the P base (contrast) sequences, no special tokens
    base_offsets: np.ndarray,      # int64 [P+1]
    token_ids: np.ndarray,         # int64 [T] tokens to insert
    *,
    insert_num: int,               # K >= 1
    variants: Sequence[int] = (0, 1, 2),
    frame_prefix: np.ndarray,      # int64 ids put before the content, e.g. [CLS]; may be empty
    frame_suffix: np.ndarray,      # int64 ids put after the content, e.g. [SEP] or </s>; may be empty
    pad_id: int,
    max_length: int,               # rows longer than this lose content tokens from the end; frame kept
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows ordered token-major: for t in T, p in P, v in variants, k in 1..K.
    prefix: [t]*k + base; suffix: base + [t]*k; insert: start from base, for each k insert one
    more t at a uniform position in 0..len(current) (inclusive), so row k holds k copies.
    Insert positions come from a generator seeded by (seed, token id, pair index p) only, so a
    row is the same whatever else is in the batch, on every platform.
    Returns input_ids int64 [N, L] right-padded with pad_id, attention_mask int64 [N, L],
    lengths int64 [N], index int64 [N, 4] = (t index, p, variant code, k)."""

def build_text_variants(
    token_texts: Sequence[str],     # [T] decoded token texts
    token_ids: np.ndarray,          # int64 [T] (used for seeding only)
    base_texts: Sequence[str],      # [P] contrast sentences
    *,
    insert_num: int,
    variants: Sequence[int] = (0, 1, 2),
    seed: int,
) -> tuple[list[str], np.ndarray]:
    """The paper's strings.  prefix: t*k + c; suffix: c + t*k (plain repetition and
    concatenation); insert: words = c.split(); for each k insert t at a uniform position in
    0..len(words) and the text is ' '.join(words).  Same seeding and row order as
    build_token_batch.  Returns (texts [N], index int64 [N, 4])."""

def length_order(lengths: np.ndarray) -> np.ndarray:
    """int64 permutation that sorts lengths ascending, stable (ties keep their order)."""

# ---- statistics (docs/algorithm.md §2-4) -----------------------------------------------
def row_distances(x: np.ndarray, refs: np.ndarray, ref_index: np.ndarray) -> np.ndarray:
    """x [n, d], refs [m, d] float arrays; ref_index int64 [n] into refs.  Returns float64
    [n, 3]: cosine distance (1 - cos; 1 when either vector is zero), euclidean, manhattan
    distance of x[i] to refs[ref_index[i]]."""

def sticky_score(seqs: np.ndarray, td: np.ndarray, a: float, b: float, c0: float) -> np.ndarray:
    """seqs float64 [n, L] distance sequences D = [d0, d1, ..., dK]; td float64 [n].  fall/n_fall
    are the sizes and count of decreasing steps, rise/n_rise of increasing ones.  Returns
    float64 [n] = (fall + a*n_fall + 0.1*td) / (rise + b*n_rise + c0)."""

def verify_counts(seqs: np.ndarray) -> np.ndarray:
    """seqs float64 [n, L] with L >= 2.  Returns uint8 [n]: 1 where mean(D[1:]) - D[0] < 0."""

def mean_similarity(emb: np.ndarray) -> float:
    """Mean cosine similarity over all V x V ordered pairs of emb's rows (diagonal included),
    computed as |sum_i u_i|^2 / V^2 with u_i = row / |row| (a zero row counts as a zero u)."""

def pairwise_cosine(emb: np.ndarray) -> np.ndarray:
    """float64 [n, n] cosine similarities of emb's rows (0 where a row is zero)."""

def percentile(x: np.ndarray, q: float) -> float:
    """Linear-interpolation percentile (NumPy's default), q in [0, 100]; NaNs skipped;
    ValueError when no finite value is left."""

def iqr_fence(x: np.ndarray, k: float = 0.7) -> float:
    """Q3 + k * (Q3 - Q1) with linear-interpolation quartiles; NaNs skipped as in percentile."""

# ---- WordPiece (row building: rows._Splicer) ---------------------------------------------
class WordPiece:
    """A WordPiece vocabulary ({entry: id}, as in tokenizer.json's model) as a byte trie.
    TypeError when vocab is not a dict of str to int; ValueError for a negative id, unk_id or
    max_chars.  Read-only once made: threads may share one."""

    def __init__(self, vocab: dict[str, int], *, prefix: str = "##", unk_id: int,
                 max_chars: int = 100, lowercase: bool = True) -> None: ...
    unk_id: int       # what a word no entry fits, or one longer than max_chars, becomes
    max_chars: int
    lowercase: bool   # A-Z lowercased first

    def encode(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [M], counts int64 [len(words)]): each word's ids, concatenated, as the
        tokenizers library's WordPiece model splits one pre-tokenized word (greedy longest
        match from the start; later pieces are entries that begin with prefix, looked up
        without it; a position no entry starts makes the whole word [unk_id]).  Only words made
        of ASCII letters and digits are split: any other word has count -1 and no ids."""
