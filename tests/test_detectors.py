"""Online regime detectors: detection power, false alarms, causality, registry errors."""

from __future__ import annotations

import numpy as np
import pytest

from metabt.strategies.detector_bench import bench_ar_flips, bench_detectors, detector_inputs
from metabt.strategies.detectors import DETECTORS, Detector, make_detector

NAMES = sorted(DETECTORS)
# Detectors of volatility and mean changes; bocpd_ar and loss watch autocorrelation.
VOL_NAMES = ("bocpd", "cusum")
SEGMENT = 600  # bars per regime in the statistical tests
SEEDS = range(40)


def three_regimes(seed: int) -> np.ndarray:
    """Gaussian returns: vol sigma, then 2*sigma from bar 600, then sigma from bar 1200.

    sigma is drawn log-uniform in [0.5 %, 3 %] so the detectors are checked across
    the range of daily volatilities they are meant for.
    """
    rng = np.random.default_rng(seed)
    vol = float(np.exp(rng.uniform(np.log(0.005), np.log(0.03))))
    sigma = np.repeat([vol, 2.0 * vol, vol], SEGMENT)
    return sigma * rng.standard_normal(3 * SEGMENT)


def trace(det: Detector, xs: np.ndarray) -> tuple[list[int], list[float], list[int]]:
    alarms, probs, runs = [], [], []
    for i, x in enumerate(xs):
        if det.update(float(x)):
            alarms.append(i)
        probs.append(det.change_probability)
        runs.append(det.run_length)
    return alarms, probs, runs


def ar_flip(seed: int, phi: float = 0.4, n: int = 1300, cut: int = 600) -> np.ndarray:
    """Returns at 1% daily vol whose lag-1 autocorrelation flips from +phi to -phi at ``cut``."""
    rng = np.random.default_rng(seed)
    z, prev = np.empty(n), 0.0
    for t in range(n):
        f = phi if t < cut else -phi
        prev = f * prev + np.sqrt(1.0 - f * f) * rng.standard_normal()
        z[t] = prev
    return 0.01 * z


def inputs(name: str, seed: int) -> np.ndarray:
    """A series with changes this detector is built to see, as the strategy feeds it."""
    kind = getattr(DETECTORS[name], "input_kind", "return")
    returns = three_regimes(seed) if name in VOL_NAMES else ar_flip(seed)
    return detector_inputs(kind, returns)


@pytest.fixture(scope="module", params=VOL_NAMES)
def runs(request: pytest.FixtureRequest) -> tuple[str, list[tuple[list[int], int, int]]]:
    """Per seed: (alarms, run_length at each alarm) on the three-regime series."""
    out = []
    for seed in SEEDS:
        det = make_detector(request.param)
        alarms, _, run_lengths = trace(det, three_regimes(seed))
        out.append((alarms, [run_lengths[a] for a in alarms]))
    return request.param, out


def first_in(alarms: list[int], start: int, width: int) -> int | None:
    hits = [a for a in alarms if start <= a < start + width]
    return hits[0] if hits else None


def test_vol_doubling_detected_within_20_bars_on_most_seeds(runs) -> None:
    name, results = runs
    hit = [first_in(alarms, SEGMENT, 20) is not None for alarms, _ in results]
    assert np.mean(hit) >= 0.8, f"{name}: doubling detected within 20 bars on {np.mean(hit):.0%}"


def test_vol_halving_detected_within_60_bars_on_most_seeds(runs) -> None:
    name, results = runs
    hit = [first_in(alarms, 2 * SEGMENT, 60) is not None for alarms, _ in results]
    assert np.mean(hit) >= 0.8, f"{name}: halving detected within 60 bars on {np.mean(hit):.0%}"


def test_false_alarms_are_rare(runs) -> None:
    # Everything outside the 60 bars after each true change is a false alarm,
    # start-up bars included. Target is 0.5 per 1,000 bars; the bound leaves room
    # for sampling noise but fails a detector that fires every few hundred bars.
    name, results = runs
    false = sum(
        not any(c <= a < c + 60 for c in (SEGMENT, 2 * SEGMENT))
        for alarms, _ in results
        for a in alarms
    )
    rate = 1000.0 * false / (len(results) * 3 * SEGMENT)
    assert rate <= 1.5, f"{name}: {rate:.2f} false alarms per 1,000 bars"


def test_run_length_at_alarm_estimates_bars_since_change(runs) -> None:
    # The strategy adapts on the last run_length bars, so at a true detection it
    # must point close to the real change, not to the alarm bar.
    name, results = runs
    errors = []
    for alarms, lengths in results:
        for a, length in zip(alarms, lengths):
            for change in (SEGMENT, 2 * SEGMENT):
                if change <= a < change + 60:
                    errors.append(abs(length - (a - change + 1)))
    assert len(errors) >= len(results)
    assert np.median(errors) <= 4, f"{name}: median run-length error {np.median(errors)}"


def mean_shift_at_constant_vol(seed: int, shift_sd: float) -> np.ndarray:
    """Gaussian returns at one vol; from bar 600 the mean moves by ``shift_sd`` sd.

    The shift is upwards on even seeds and downwards on odd ones, so both mean
    CUSUMs are exercised; vol is drawn as in :func:`three_regimes`.
    """
    rng = np.random.default_rng(seed)
    vol = float(np.exp(rng.uniform(np.log(0.005), np.log(0.03))))
    sign = 1.0 if seed % 2 == 0 else -1.0
    mean = np.r_[np.zeros(SEGMENT), np.full(400, sign * shift_sd * vol)]
    return mean + vol * rng.standard_normal(SEGMENT + 400)


def test_cusum_detects_a_half_sd_mean_shift_at_constant_vol_within_200_bars() -> None:
    # The documented power of the mean CUSUMs (README, "Regime detectors"): a shift of
    # 0.5 sd with the vol unchanged is found within 200 bars on ~90% of seeds. The vol
    # CUSUMs alone (mean CUSUMs disabled or their thresholds inflated) manage ~20%.
    hit = []
    for seed in SEEDS:
        alarms = trace(make_detector("cusum"), mean_shift_at_constant_vol(seed, 0.5))[0]
        hit.append(first_in(alarms, SEGMENT, 200) is not None)
    assert np.mean(hit) >= 0.8, f"mean shift detected within 200 bars on {np.mean(hit):.0%}"


@pytest.mark.parametrize("name", NAMES)
def test_same_input_same_output(name: str) -> None:
    xs = inputs(name, 123)
    first = trace(make_detector(name), xs)
    assert first[0], "the series has changes; no alarm at all means the test is moot"
    assert trace(make_detector(name), xs) == first
    det = make_detector(name)
    trace(det, inputs(name, 7))
    det.reset()
    assert trace(det, xs) == first, "reset() must forget everything"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cut", [150, 610, 700, 1205])
def test_causal_prefix_invariance(name: str, cut: int) -> None:
    xs = inputs(name, 5)
    rng = np.random.default_rng(cut)
    other_future = np.concatenate([xs[:cut], 0.2 * rng.standard_normal(400)])
    full = trace(make_detector(name), xs)
    prefix = trace(make_detector(name), xs[:cut])
    other = trace(make_detector(name), other_future)
    for got in (full, other):
        assert [a for a in got[0] if a < cut] == prefix[0]
        assert got[1][:cut] == prefix[1]
        assert got[2][:cut] == prefix[2]


@pytest.mark.parametrize("name", NAMES)
def test_outputs_in_range(name: str) -> None:
    # A stretch of zero returns (a halted or illiquid asset) has zero variance; it
    # must not produce NaN or a division error.
    det = make_detector(name)
    for x in np.concatenate([np.zeros(60), inputs(name, 9)]):
        det.update(float(x))
        assert 0.0 <= det.change_probability <= 1.0
        assert det.run_length >= 1


def test_cusum_alarms_do_not_depend_on_return_scale() -> None:
    xs = three_regimes(11)
    base = trace(make_detector("cusum"), xs)[0]
    assert base
    assert trace(make_detector("cusum"), 7.0 * xs)[0] == base


@pytest.mark.parametrize("name", NAMES)
def test_satisfies_protocol(name: str) -> None:
    assert isinstance(make_detector(name), Detector)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_return_is_rejected(name: str, bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        make_detector(name).update(bad)


def test_unknown_detector_name_suggests_the_close_one() -> None:
    with pytest.raises(ValueError, match=r"unknown detector 'bocdp'.*did you mean 'bocpd'"):
        make_detector("bocdp")


def test_unknown_setting_suggests_the_close_one() -> None:
    with pytest.raises(ValueError, match=r"unknown setting 'hazzard'.*did you mean 'hazard'"):
        make_detector("bocpd", hazzard=300)
    with pytest.raises(ValueError, match=r"'up_treshold'.*did you mean 'up_threshold'"):
        make_detector("cusum", up_treshold=5.0)


@pytest.mark.parametrize(
    ("name", "settings", "key"),
    [
        ("bocpd", {"hazard": 0.5}, "hazard"),
        ("bocpd", {"threshold": 1.5}, "threshold"),
        ("bocpd", {"short_run": 400, "max_run": 300}, "max_run"),
        ("cusum", {"vol_ratio": 0.5}, "vol_ratio"),
        ("cusum", {"min_run": 0}, "min_run"),
    ],
)
def test_invalid_setting_values_are_named(name: str, settings: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        make_detector(name, **settings)


def test_settings_change_behaviour() -> None:
    # A registry that silently ignored keyword settings would pass every test above.
    xs = three_regimes(3)
    assert trace(make_detector("bocpd", threshold=0.99), xs) != trace(make_detector("bocpd"), xs)
    assert trace(make_detector("cusum", up_threshold=50.0), xs) != trace(make_detector("cusum"), xs)


@pytest.mark.parametrize("name", ["bocpd_ar", "loss"])
def test_ar_sign_flip_at_constant_vol_is_seen_where_cusum_is_blind(name: str) -> None:
    hit = {}
    for detector in (name, "cusum"):
        kind = getattr(DETECTORS[detector], "input_kind", "return")
        found = []
        for seed in range(20):
            returns = ar_flip(seed)
            xs = detector_inputs(kind, returns)
            alarms, _, _ = trace(make_detector(detector), xs)
            shifted = np.array(alarms, dtype=int) + len(returns) - len(xs)
            found.append(bool(((shifted >= 600) & (shifted < 660)).any()))
        hit[detector] = float(np.mean(found))
    assert hit[name] >= 0.7 and hit["cusum"] <= 0.2, hit


def test_ar_flip_bench_reports_its_keys_for_every_detector() -> None:
    result = bench_ar_flips(seed=0, n_series=2, n_bars=1500)
    assert set(result) == set(DETECTORS)
    for name, row in result.items():
        assert 0 <= row["ar_flip_detect_30"] <= 1 and 0 <= row["vol_only_detect_30"] <= 1, name
        assert row["ar_false_alarms_per_1000"] >= 0, name


def test_bench_reports_every_detector() -> None:
    result = bench_detectors(seed=0, n_series=2, n_bars=1500)
    assert set(result["detectors"]) == set(DETECTORS)
    for name, row in result["detectors"].items():
        assert row["update_us"] > 0, name
        assert row["false_alarms_per_1000"] >= 0, name
        assert row["delay_bars"] is None or 1 <= row["delay_bars"] <= 50, name
    # What the strategy runs for 8 assets: only the AR(1) BOCPD has a vectorised bank.
    banked = {
        name for name, row in result["detectors"].items() if "bank8_update_us_per_series" in row
    }
    assert banked == {"bocpd_ar"}
    assert result["detectors"]["bocpd_ar"]["bank8_update_us_per_series"] > 0


def _ar1(phi: float, n: int, seed: int) -> np.ndarray:
    """Unit-variance AR(1) series: z_t = phi z_{t-1} + sqrt(1 - phi^2) e_t."""
    eps = np.random.default_rng(seed).standard_normal(n)
    z = np.empty(n)
    z[0] = eps[0]
    for t in range(1, n):
        z[t] = phi * z[t - 1] + np.sqrt(1.0 - phi * phi) * eps[t]
    return z


def test_flip_evidence_is_the_gaussian_log_likelihood_ratio() -> None:
    from metabt.strategies.detection_bound import flip_llr

    z = _ar1(0.2, 50, seed=1)
    phi, var = 0.2, 1.0 - 0.2**2

    def log_density(mean: np.ndarray) -> np.ndarray:
        return -0.5 * np.log(2 * np.pi * var) - (z[1:] - mean) ** 2 / (2 * var)

    expected = log_density(-phi * z[:-1]) - log_density(phi * z[:-1])
    np.testing.assert_allclose(flip_llr(z[:-1], z[1:], np.full(49, phi)), expected, atol=1e-12)
    # Its mean is -KL before the flip and +KL after: 2 phi^2 / (1 - phi^2) nats a bar.
    kl = 2 * 0.3**2 / (1 - 0.3**2)
    for sign in (1, -1):
        long = _ar1(sign * 0.3, 200_000, seed=2)
        mean = flip_llr(long[:-1], long[1:], np.full(len(long) - 1, 0.3)).mean()
        assert abs(mean - (-kl if sign == 1 else kl)) < 0.01, (sign, mean, kl)


def test_known_change_bound_catches_strong_flips_and_respects_the_false_alarm_limit() -> None:
    from metabt.strategies.detection_bound import ar_flip_bound, known_change_cusum

    z = np.concatenate([_ar1(0.6, 500, seed=3), _ar1(-0.6, 500, seed=4)])
    phi = np.concatenate([np.full(500, 0.6), np.full(500, -0.6)])
    alarms = known_change_cusum(z, phi, threshold=6.9)
    assert ((alarms >= 500) & (alarms < 530)).any(), alarms
    assert not (alarms < 500).any(), alarms  # a 6.9-nat threshold: no false alarm here
    bound = ar_flip_bound(seed=0, n_series=4, n_bars=1500)
    assert bound["ar_false_alarms_per_1000"] <= 1.0, bound
    assert 0.0 <= bound["ar_flip_detect_30"] <= 1.0, bound
    # The bound is the best possible: no implemented detector may beat it at that limit.
    flips = bench_ar_flips(seed=0, n_series=4, n_bars=1500)
    for name, row in flips.items():
        if row["ar_false_alarms_per_1000"] <= bound["ar_false_alarms_per_1000"]:
            assert row["ar_flip_detect_30"] <= bound["ar_flip_detect_30"] + 1e-9, (name, row)
