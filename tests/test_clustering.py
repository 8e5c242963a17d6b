"""M3Fed's server mathematics: GCBC's affinities and clusters, GCCM's consensus matrix."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score

from avfl.fl.clustering import (
    angular_affinity,
    consensus_matrix,
    consensus_update,
    deviation_similarity,
    gcbc,
)


def _families(n_per=(4, 3, 5), dim=200, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(len(n_per), dim))
    labels = np.repeat(np.arange(len(n_per)), n_per)
    uploads = 1.0 + directions[labels] + noise * rng.normal(size=(len(labels), dim))
    return uploads, labels


def test_the_affinity_is_symmetric_in_0_1_with_ones_on_the_diagonal():
    uploads, _ = _families()
    sigma = deviation_similarity(uploads)
    a = angular_affinity(sigma)
    assert np.allclose(a, a.T) and a.min() >= 0 and a.max() <= 1 and np.allclose(np.diag(a), 1)
    # Eq. 5 is Pearson's r of the deviations from the round's mean upload.
    dev = uploads - uploads.mean(axis=0)
    assert np.isclose(sigma[0, 5], np.corrcoef(dev[0], dev[5])[0, 1])


def test_gcbc_recovers_noisy_direction_families_and_is_deterministic():
    for mu, sizes in ((2, (5, 4)), (3, (4, 3, 5))):
        uploads, truth = _families(sizes, seed=mu)
        labels, _ = gcbc(uploads, mu, seed=7)
        assert adjusted_rand_score(truth, labels) == 1.0
        assert np.array_equal(labels, gcbc(uploads, mu, seed=7)[0])
        assert labels[0] == 0  # numbered by first appearance
    assert np.array_equal(gcbc(uploads, 1, seed=0)[0], np.zeros(len(uploads)))


def test_gccm_rows_sum_to_one_and_equal_operators_are_left_unchanged():
    rng = np.random.default_rng(1)
    shares = np.array([0.1, 0.2, 0.3, 0.4])
    same = np.repeat(rng.normal(size=(1, 3, 2)), 4, axis=0)
    updated, s = consensus_update(same, shares)
    assert np.allclose(s.sum(axis=1), 1) and np.allclose(s, np.tile(shares, (4, 1)))
    assert np.allclose(updated, same)
    close = same + 0.01 * rng.normal(size=same.shape)
    assert np.allclose(consensus_matrix(close, shares).sum(axis=1), 1)
    # Operators far apart: each keeps its own (the collapse the notes record).
    far = 10.0 * rng.normal(size=(4, 3, 2))
    assert np.allclose(consensus_matrix(far, shares), np.eye(4), atol=1e-9)
