"""Fast mode: exact where it claims to be (no screening, no early stop == exhaustive), the
sequential verification agrees with full verification on a planted case, its run folder
resumes, and fast and exhaustive runs never share a folder."""
import json
import os
import shutil

import numpy as np
import pytest

import stickytoken
from stickytoken import _core
from stickytoken.cli import build_parser
from stickytoken.errors import RunFolderError
from stickytoken.fast import FastSettings, _threshold, percentile_position, sequential_verification
from stickytoken.pairs import builtin_sentences
from stickytoken.verify import FENCE_K, VERIFY_WEIGHTS

PARAMS = dict(sent_pair_num=2, insert_num=3, verification_sent_pair_num=16, shortlist_percent=10.0, seed=7)
EXACT = FastSettings(cap_quantile=float("inf"), verify_z=float("inf"))
STOPPING = FastSettings(pilot=0.2, pilot_min=10, cap_quantile=50.0, verify_pilot=0.2, verify_pilot_min=2,
                        verify_rounds=(4, 8), verify_z=1.0)


@pytest.fixture(scope="module")
def pairs():
    """40 pairs with given similarities, all below the tiny model's mean similarity, so that
    the verification stage gets 16 distinct pairs."""
    s = builtin_sentences()[:80]
    return [(s[2 * i], s[2 * i + 1], 0.02 * i) for i in range(40)]


@pytest.fixture(scope="module")
def exhaustive(tiny_model, pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ex") / "r"
    return stickytoken.detect(tiny_model, pairs=pairs, output=str(out), show_progress_bar=False, **PARAMS)


def test_fast_without_screen_or_early_stop_equals_exhaustive(tiny_model, pairs, exhaustive, tmp_path):
    fast = stickytoken.detect(tiny_model, pairs=pairs, output=str(tmp_path / "f"), show_progress_bar=False, fast=True,
                              fast_settings=EXACT, **PARAMS)
    assert len(exhaustive.verification_pairs) == 16
    np.testing.assert_array_equal(fast.scored_ids, exhaustive.scored_ids)
    # the same rows in other batches: float32 forward passes agree to rounding only
    np.testing.assert_allclose(fast.scores, exhaustive.scores, rtol=1e-5, atol=2e-6)
    assert fast.shortlist_threshold == pytest.approx(exhaustive.shortlist_threshold, abs=1e-5)
    assert [c.id for c in fast.candidates] == [c.id for c in exhaustive.candidates]
    for a, b in zip(fast.candidates, exhaustive.candidates):
        assert a.verification == pytest.approx(b.verification, abs=1e-12)
        assert a.max_prob == pytest.approx(b.max_prob, abs=1e-12)
    assert fast.fence == pytest.approx(exhaustive.fence, abs=1e-12)
    assert [c.id for c in fast.sticky_tokens] == [c.id for c in exhaustive.sticky_tokens]
    assert fast.params["fast"] is True and exhaustive.params["fast"] is False


def test_screen_threshold_is_exact_when_the_top_is_scored():
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    top = np.sort(x)[::-1][:percentile_position(500, 2.0) + 1]
    assert _threshold(top, 500, 2.0) == pytest.approx(np.percentile(x, 98.0), abs=1e-12)
    assert percentile_position(23699, 2.0) == 23699 - int(np.floor(23698 * 0.98))


def test_fast_default_screens_and_stops_early(tiny_model, pairs, exhaustive, tmp_path):
    settings = STOPPING
    fast = stickytoken.detect(tiny_model, pairs=pairs, output=str(tmp_path / "f"), show_progress_bar=False, fast=True,
                              fast_settings=settings, **PARAMS)
    run = json.load(open(os.path.join(fast.run_dir, "run.json")))
    assert run["identity"]["fast"] is True
    info = run["fast"]
    assert info["screen"]["screened"] == len(exhaustive.scored_ids)
    assert info["screen"]["fully_scored"] < len(exhaustive.scored_ids)
    assert info["verify"]["passes"] < info["verify"]["exhaustive_passes"]
    assert info["verify"]["pilot"] == max(2, int(np.ceil(0.2 * len(fast.candidates))))
    assert fast.fence == pytest.approx(info["verify"]["fence"])
    screen = info["screen"]
    assert screen["pilot"] == max(10, int(np.ceil(0.2 * len(exhaustive.scored_ids))))
    assert sum(st["stopped"] for st in screen["stages"]) > 0
    assert screen["passes"] < screen["exhaustive_passes"]
    # scores are sums of non-negative pair terms: the running bound never passes the threshold
    for st in screen["stages"][:-1]:
        assert st["threshold_lower_bound"] <= exhaustive.shortlist_threshold + 1e-5
    # every fully scored token has its exhaustive score
    ex = {int(i): s for i, s in zip(exhaustive.scored_ids, exhaustive.scores)}
    for i, s in zip(fast.scored_ids, fast.scores):
        np.testing.assert_allclose(s, ex[int(i)], rtol=1e-5, atol=2e-6)
    assert "peak_host_memory_mb" in fast.peak_memory


def test_fast_run_folder_resumes_to_the_same_result(tiny_model, pairs, tmp_path, monkeypatch):
    settings = STOPPING
    kw = dict(pairs=pairs, show_progress_bar=False, fast=True, fast_settings=settings, **PARAMS)
    first = stickytoken.detect(tiny_model, output=str(tmp_path / "f"), **kw)
    # an interrupted copy: results gone, some parts gone, status running
    half = tmp_path / "half"
    shutil.copytree(first.run_dir, half)
    for name in os.listdir(half):
        if name not in ("run.json", "parts", "pairs.json", "mean_similarity.json"):
            os.unlink(half / name)
    parts = sorted(os.listdir(half / "parts"))
    for name in parts[len(parts) // 2:]:
        os.unlink(half / "parts" / name)
    again = stickytoken.detect(tiny_model, output=str(half), **kw)
    np.testing.assert_array_equal(again.scored_ids, first.scored_ids)
    np.testing.assert_array_equal(again.scores, first.scores)
    assert [(c.id, c.verification) for c in again.candidates] == [(c.id, c.verification) for c in first.candidates]
    # a finished fast run does no model work again
    from stickytoken import score

    monkeypatch.setattr(score.VariantSequences, "sequences", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    third = stickytoken.detect(tiny_model, output=str(half), **kw)
    assert [c.id for c in third.sticky_tokens] == [c.id for c in first.sticky_tokens]


def test_fast_with_workers_is_bit_identical(tiny_model, pairs, tmp_path, monkeypatch, one_torch_thread):
    """Fast mode's pilot, pair-by-pair scoring and rounds of verification take their rows from
    the row-building workers too: with 2 workers the same parts, bit for bit, as with none."""
    from stickytoken.rows import RowPool

    kw = dict(pairs=pairs, show_progress_bar=False, fast=True, fast_settings=STOPPING, **PARAMS)
    a = stickytoken.detect(tiny_model, output=str(tmp_path / "a"), workers=0, **kw)
    submitted = []
    submit = RowPool.submit
    monkeypatch.setattr(RowPool, "submit", lambda self, *args, **kwargs: submitted.append(self.workers) or
                        submit(self, *args, **kwargs))
    b = stickytoken.detect(tiny_model, output=str(tmp_path / "b"), workers=2, **kw)
    assert len(submitted) == len(os.listdir(tmp_path / "b" / "parts")) and set(submitted) == {2}
    parts = sorted(os.listdir(tmp_path / "a" / "parts"))
    assert parts == sorted(os.listdir(tmp_path / "b" / "parts"))
    assert {p.split("-")[1] for p in parts} >= {"pilot", "pair00", "pair01", "verify"}
    for name in parts:
        pa, pb = np.load(tmp_path / "a" / "parts" / name), np.load(tmp_path / "b" / "parts" / name)
        assert sorted(pa.files) == sorted(pb.files)
        for k in pa.files:
            np.testing.assert_array_equal(pa[k], pb[k])
    assert [(c.id, c.verification) for c in a.candidates] == [(c.id, c.verification) for c in b.candidates]
    for folder, w in (("a", 0), ("b", 2)):   # run.json's profile covers fast mode's stages too
        profile = json.load(open(tmp_path / folder / "run.json"))["profile"]
        assert {profile[k]["workers"] for k in ("scoring", "verification")} == {w}
        assert ("host_thread" in profile["scoring"]) == (w > 0)


def test_fast_and_exhaustive_never_share_a_folder(tiny_model, pairs, exhaustive, tmp_path):
    with pytest.raises(RunFolderError, match="other parameters"):
        stickytoken.detect(tiny_model, pairs=pairs, output=exhaustive.run_dir, show_progress_bar=False, fast=True, **PARAMS)
    fast_dir = str(tmp_path / "f")
    stickytoken.detect(tiny_model, pairs=pairs, output=fast_dir, show_progress_bar=False, fast=True,
                       fast_settings=EXACT, **PARAMS)
    with pytest.raises(RunFolderError, match="other parameters"):
        stickytoken.detect(tiny_model, pairs=pairs, output=fast_dir, show_progress_bar=False, **PARAMS)
    with pytest.raises(RunFolderError, match="other parameters"):  # other fast settings: another run
        stickytoken.detect(tiny_model, pairs=pairs, output=fast_dir, show_progress_bar=False, fast=True, **PARAMS)


def test_cli_has_the_fast_flag():
    args = build_parser().parse_args(["detect", "--fast", "--max-tokens", "5"])
    assert args.fast is True
    assert build_parser().parse_args(["detect"]).fast is False


def test_sequential_verification_agrees_with_full_on_a_planted_case():
    """600 candidates, 250 pairs: 8 planted sticky ones move closer in ~95% of tests, the rest
    in 35-75%.  Early stopping against the pilot's fence must find the planted ones with far
    fewer pairs, and the candidates that saw every pair have their exact values."""
    rng = np.random.default_rng(3)
    C, P = 600, 250
    p = rng.uniform(0.35, 0.75, size=C)
    planted = rng.choice(C, 8, replace=False)
    p[planted] = 0.95
    tests = rng.random((C, P, 3, 3)) < p[:, None, None, None]      # [C, P, variant, metric]
    per_pair = (tests * VERIFY_WEIGHTS[None, None, :, None]).sum(axis=2)  # [C, P, metric]
    full = per_pair.mean(axis=1)
    full_fence = float(_core.iqr_fence(np.ascontiguousarray(full[:, 0]), FENCE_K))
    want = set(np.flatnonzero(full[:, 0] > full_fence).tolist())
    assert set(planted.tolist()) <= want

    calls = []

    def fetch(r, active, pidx):
        calls.append((r, int(active.sum()), len(pidx)))
        return per_pair[active][:, pidx]

    values, seen, info = sequential_verification(C, P, fetch, FastSettings(), seed=1)
    assert calls[0] == (0, 120, P) and calls[1] == (1, C - 120, 8)   # the pilot, then round 1
    got = set(np.flatnonzero(values[:, 0] > info["fence"]).tolist())
    assert set(planted.tolist()) <= got
    assert len(got ^ want) <= 3
    assert abs(info["fence"] - full_fence) < 0.03
    assert seen.mean() < 0.4 * P
    done = seen == P
    np.testing.assert_allclose(values[done], full[done], atol=1e-12)
    # no early stop: every candidate sees every pair and the fence is the exhaustive one
    values, seen, info = sequential_verification(C, P, fetch, FastSettings(verify_z=float("inf")), seed=1)
    assert np.all(seen == P) and info["fence"] == pytest.approx(full_fence, abs=1e-12)
    np.testing.assert_allclose(values, full, atol=1e-12)
