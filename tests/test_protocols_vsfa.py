"""Tests for regressors.protocols.train_val_test_splits (VSFA's 60/20/20 protocol)."""

import math

import numpy as np
import pytest

from regressors.errors import InvalidInputError
from regressors.protocols import train_val_test_splits

GROUPS = np.repeat(np.arange(12), [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 3, 3])  # 36 samples, 12 groups


def _check(splits, n, groups=None):
    for parts in splits:
        assert len(parts) == 3
        for p in parts:
            assert p.dtype == np.int64 and np.all(np.diff(p) > 0)  # sorted, unique
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))  # a partition
        if groups is not None:
            seen = [set(groups[p]) for p in parts]
            assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def test_default_is_ten_60_20_20_splits():
    splits = train_val_test_splits(50)
    assert len(splits) == 10
    _check(splits, 50)
    assert all([len(p) for p in s] == [30, 10, 10] for s in splits)
    assert len({tuple(s[2]) for s in splits}) == 10  # repeats differ


def test_vsfa_counts_without_float_artefact():
    # lidq92/VSFA: train = first ceil(0.6 G) groups, test from ceil(0.8 G). Its float
    # arithmetic (1 - 0.2 - 0.2 = 0.6000000000000001) gives 721 of 1200; we give 720.
    ((train, val, test),) = train_val_test_splits(1200, n_repeats=1)
    assert (len(train), len(val), len(test)) == (720, 240, 240)
    ((train, val, test),) = train_val_test_splits(234, n_repeats=1)  # CVD2014
    assert (len(train), len(val), len(test)) == (math.ceil(0.6 * 234), 188 - 141, 234 - 188)


def test_groups_stay_whole_and_are_counted_as_groups():
    splits = train_val_test_splits(36, groups=GROUPS, n_repeats=5, random_state=3)
    _check(splits, 36, GROUPS)
    for train, val, test in splits:
        # 12 groups: ceil(7.2) = 8 train, ceil(9.6) - 8 = 2 val, 2 test.
        assert [len(set(GROUPS[p])) for p in (train, val, test)] == [8, 2, 2]


def test_seeded_and_custom_fractions():
    a = train_val_test_splits(40, fractions=(0.5, 0.25, 0.25), n_repeats=3, random_state=7)
    b = train_val_test_splits(40, fractions=(0.5, 0.25, 0.25), n_repeats=3, random_state=7)
    c = train_val_test_splits(40, fractions=(0.5, 0.25, 0.25), n_repeats=3, random_state=8)
    assert all(np.array_equal(x, y) for s, t in zip(a, b, strict=True) for x, y in zip(s, t, strict=True))
    assert not all(np.array_equal(s[2], t[2]) for s, t in zip(a, c, strict=True))
    assert [len(p) for p in a[0]] == [20, 10, 10]
    train, val, test = train_val_test_splits(10, fractions=(0.8, 0.0, 0.2), n_repeats=1)[0]
    assert (len(train), len(val), len(test)) == (8, 0, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 10, "fractions": (0.6, 0.2, 0.3)}, "summing to 1"),
        ({"n": 10, "fractions": (0.8, 0.2, 0.0)}, "test > 0"),
        ({"n": 10, "fractions": (0.6, 0.4)}, "three numbers"),
        ({"n": 3, "fractions": (0.6, 0.2, 0.2)}, "leave an empty part"),
        ({"n": 10, "n_repeats": 0}, "n_repeats"),
        ({"n": 10, "groups": [0, 1]}, "groups must be 1-D"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        train_val_test_splits(**kwargs)
