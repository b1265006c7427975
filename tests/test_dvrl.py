"""DVRL never hands back a collapsed estimator's constant values."""

import numpy as np
import pytest

from hostcp_core import make_synthetic
from hostcp_core.errors import ValuationFailed
from hostcp_core.synthetic import flip_labels
from hostcp_core.valuers import dvrl


@pytest.fixture(scope="module")
def noisy_task():
    train, test = make_synthetic(300, 300, seed=0)
    return flip_labels(train, 0.1, seed=0)[0], test


def test_collapse_on_every_attempt_raises(noisy_task):
    # At learning_rate 0.3 Adam's first steps saturate or kill the estimator on every seed:
    # the values used to come back all equal (std 0), with nothing to say so.
    train, test = noisy_task
    valuer = dvrl.DVRL(seed=0, device="cpu", iterations=60, inner_iterations=2,
                       learning_rate=0.3)
    with pytest.raises(ValuationFailed, match="collapsed on all 3 attempts"):
        valuer.fit(train, test)


def test_collapsed_first_attempt_is_restarted(noisy_task, monkeypatch):
    # The first estimator starts with its last ReLU layer dead (a constant 0.5 everywhere,
    # as a collapse leaves it); the run must notice, start again and say so.
    built = []
    original = dvrl._Estimator.__init__

    def init(self, *args, **kw):
        original(self, *args, **kw)
        if not built:
            with dvrl.torch.no_grad():
                self.comb[0].bias.fill_(-1e3)
        built.append(self)

    monkeypatch.setattr(dvrl._Estimator, "__init__", init)
    train, test = noisy_task
    res = dvrl.DVRL(seed=1, device="cpu", iterations=60, inner_iterations=2).fit(train, test)
    assert len(built) == 2
    assert res.extra["restarts"] == 1
    assert res.extra["collapsed_at"] == [dvrl._DEAD_PATIENCE - 1]
    assert np.ptp(res.values) > 1e-3
    assert np.isfinite(res.values).all()
