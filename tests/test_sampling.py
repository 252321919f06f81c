"""pipeline/sampling/clips.py: clip scores by the formula, candidates, and every selection rule."""

import numpy as np
import pytest

from pipeline.sampling.clips import (
    ClipSpec,
    Threshold,
    best_first,
    candidate_starts,
    clip_scores,
    rank_and_quantile,
    select,
)


def naive_clip_scores(s, length, stride):
    n = len(s)
    return np.array([sum(s[i + j * stride] for j in range(length) if i + j * stride < n) / length for i in range(n)])


@pytest.mark.parametrize("n, length, stride", [(40, 8, 4), (10, 8, 4), (5, 3, 1), (1, 8, 4), (33, 1, 7)])
def test_clip_scores_follow_the_formula(n, length, stride):
    s = np.random.default_rng(n).random(n)
    np.testing.assert_allclose(clip_scores(s, ClipSpec(length, stride)), naive_clip_scores(s, length, stride), rtol=1e-5)  # 6 digits


def test_clip_score_table():
    s = np.arange(10, dtype=float)  # s_i = i
    scores = clip_scores(s, ClipSpec(3, 2))
    assert scores[0] == pytest.approx((0 + 2 + 4) / 3, rel=1e-5)
    assert scores[5] == pytest.approx((5 + 7 + 9) / 3, rel=1e-5)
    assert scores[8] == 2.66667  # rounded to 6 significant digits; cut short at the end, still divided by L


@pytest.mark.parametrize("flows, spec, expected", [(47, ClipSpec(8, 4), 19), (29, ClipSpec(8, 4), 1), (28, ClipSpec(8, 4), 0),
                                                   (0, ClipSpec(8, 4), 0), (5, ClipSpec(1, 1), 5)])  # fmt: skip
def test_candidates_are_the_starts_whose_whole_clip_fits(flows, spec, expected):
    starts = candidate_starts(flows, spec)
    assert len(starts) == expected
    if expected:
        assert starts[-1] + (spec.length - 1) * spec.stride == flows - 1


SCORES = np.array([0.5, 0.9, 0.1, 0.7, 0.3, 0.9, 0.2, 0.0, 0.0])
CANDIDATES = np.arange(7)  # the last two starts are too late for a whole clip


@pytest.mark.parametrize(
    "threshold, kept",
    [(Threshold("median"), [1, 3, 5]),  # above the candidates' median 0.5
     (Threshold("quantile", quantile=0.25), [0, 1, 3, 4, 5]),
     (Threshold("absolute", absolute=0.6), [1, 3, 5]),
     (Threshold("top_k", top_k=2), [1, 5]),  # tie at 0.9: both
     (Threshold("top_k", top_k=1), [1]),  # tie broken by the earlier start
     (Threshold("absolute", absolute=0.95, min_keep=2), [1, 5]),  # nothing passes: the best two are kept
     (Threshold("absolute", absolute=0.95, min_keep=0), [])],
)  # fmt: skip
def test_selection_rules(threshold, kept):
    assert list(np.flatnonzero(select(SCORES, CANDIDATES, threshold))) == kept


def test_a_static_video_keeps_min_keep_clips_and_a_short_one_none():
    zeros = np.zeros(20)
    assert list(np.flatnonzero(select(zeros, np.arange(10), Threshold("median", min_keep=1)))) == [0]
    assert select(zeros, np.arange(0), Threshold()).shape == (0,)


def test_rank_and_quantile():
    rank, quantile = rank_and_quantile(np.array([0.2, 0.9, 0.2, 0.5]))
    assert list(rank) == [3, 1, 4, 2]
    assert list(quantile) == [0.0, 0.75, 0.0, 0.5]
    assert list(best_first(np.array([1.0, 3.0, 3.0]))) == [1, 2, 0]


def test_rounding_absorbs_last_bit_differences():
    from pipeline.sampling.clips import round_significant

    values = np.random.default_rng(0).lognormal(0, 3, 2000)
    noisy = values * (1 + np.random.default_rng(1).uniform(-1e-13, 1e-13, 2000))
    assert (values != noisy).sum() > 1000
    assert round_significant(values).tobytes() == round_significant(noisy).tobytes()
    assert list(round_significant(np.array([1234567.0, 0.000123456789, 0.0, -2.5e-7]))) == [1234570.0, 0.000123457, 0.0, -2.5e-7]
