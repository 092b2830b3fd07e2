"""The strategy's batched per-bar paths decide what one series / one window at a time decides.

Inside a backtest every asset's AR(1) BOCPD runs in one :class:`ARBOCPDBank`, and
every window due for adaptation on a bar (all assets x all ensemble members) is
adapted in one batched numpy pass (:func:`adapt_batch`). Both must give what the
one-at-a-time code gives, or the speed-up would change the decisions.
"""

from __future__ import annotations

import numpy as np
import pytest

from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import PolicySpec, init_params, to_numpy
from metabt.strategies.adaptive_policy import AdaptivePolicy, adapt_batch, together
from metabt.strategies.bocpd_ar import ARBOCPD, ARBOCPDBank
from metabt.strategies.detectors import DetectorBank, make_detector_bank


def _ar_flips(seed: int, n_bars: int, n_series: int) -> np.ndarray:
    """Returns whose lag-1 autocorrelation flips sign every 250 bars, at constant vol."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n_bars, n_series))
    x = np.zeros_like(noise)
    for t in range(1, n_bars):
        phi = 0.6 if (t // 250) % 2 else -0.6
        x[t] = phi * x[t - 1] + noise[t] * np.sqrt(1 - phi * phi)
    return x


def test_each_row_of_the_bank_is_exactly_a_lone_detector():
    n_bars, n_series = 1500, 5
    x = _ar_flips(0, n_bars, n_series)
    # Assets miss bars (holidays, late listings): inactive rows must not move at all.
    active = np.random.default_rng(1).random((n_bars, n_series)) > 0.1
    active[:300, 4] = False
    bank = ARBOCPDBank(n_series)
    lone = [ARBOCPD() for _ in range(n_series)]
    alarms = 0
    for t in range(n_bars):
        fired = bank.update(x[t], active[t])
        for i, det in enumerate(lone):
            if not active[t, i]:
                assert not fired[i]
                continue
            assert det.update(x[t, i]) == fired[i]
            alarms += int(fired[i])
            # Bit for bit: the strategy's decisions must not depend on the batching.
            assert det.change_probability == bank.change_probability[i]
            assert det.run_length == bank.run_length[i]
    assert alarms >= 10, "the flips must make the detectors fire, or this test proves nothing"


def test_a_bank_of_detectors_without_a_vectorised_form_updates_each_one():
    bank = make_detector_bank("cusum", 3)
    assert isinstance(bank, DetectorBank)
    x = _ar_flips(2, 400, 3) * np.array([1.0, 3.0, 0.3])  # vol changes between series
    x[200:, 0] *= 4.0
    fired_any = np.zeros(3, dtype=bool)
    for row in x:
        fired_any |= bank.update(row, np.array([True, True, False]))
    assert fired_any[0] and not fired_any[2]
    assert bank.run_length[2] == 0  # never updated


def _policy(seed: int, spec: PolicySpec, lr: float | str) -> AdaptivePolicy:
    params = to_numpy(init_params(spec, seed))
    inner_lr = (
        {k: np.full(v.shape, 0.1 + 0.05 * seed) for k, v in params.items()}
        if lr == "meta_sgd"
        else lr
    )
    return AdaptivePolicy(
        spec, ObjectiveSpec(), params, inner_lr, 5, tuple("f" * spec.n_features),
        lr_length_power=0.5,
    )  # fmt: skip


@pytest.mark.parametrize("lr", [0.3, "meta_sgd"])
@pytest.mark.parametrize("mode", ["long_only", "long_short"])
def test_batched_adaptation_equals_one_window_and_one_member_at_a_time(mode, lr):
    spec = PolicySpec(n_features=6, hidden=(8,), mode=mode)
    members = tuple(_policy(seed, spec, lr) for seed in range(3))
    assert together(members)
    rng = np.random.default_rng(3)
    n_win, n = 4, 37
    x = rng.standard_normal((n_win, n, spec.n_features))
    y = rng.standard_normal((n_win, n))
    inv_vol = rng.uniform(0.5, 2.0, (n_win, n))
    got = adapt_batch(members, x, y, inv_vol)
    assert len(got) == n_win and all(len(per_member) == len(members) for per_member in got)
    for j in range(n_win):
        for m, pol in enumerate(members):
            want_params, want_before, want_after = pol.adapt(x[j], y[j], inv_vol[j])
            params, before, after = got[j][m]
            assert before == pytest.approx(want_before, rel=1e-12, abs=1e-14)
            assert after == pytest.approx(want_after, rel=1e-12, abs=1e-14)
            assert after != pytest.approx(before)  # the steps moved the weights
            for k, v in want_params.items():
                np.testing.assert_allclose(params[k], v, rtol=1e-12, atol=1e-14)


def test_policies_that_differ_in_steps_are_not_batched():
    spec = PolicySpec(n_features=4, hidden=(5,))
    a = _policy(0, spec, 0.3)
    b = AdaptivePolicy(spec, ObjectiveSpec(), a.params, 0.3, 2, a.feature_names)
    assert together((a, a)) and not together((a, b))


def test_a_policy_that_adapts_its_own_way_is_not_bypassed():
    class Custom(AdaptivePolicy):
        def adapt(self, x, y, inv_vol=None, when=None):
            return super().adapt(x, y, inv_vol, when)

    spec = PolicySpec(n_features=4, hidden=(5,))
    a = _policy(0, spec, 0.3)
    custom = Custom(spec, ObjectiveSpec(), a.params, 0.3, 5, a.feature_names)
    assert not together((custom,)) and not together((a, custom))
