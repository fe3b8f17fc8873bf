"""The pure curve-reading functions of the LR sweep, on synthetic curves (nothing trains)."""

import math

import pytest

from nandoctor import curves

NAN, INF = float("nan"), float("inf")


def lr_grid(n=100, lo=1e-7, hi=10.0):
    return curves.exp_schedule(lo, hi, n)


def s_curve(lrs, center=1e-3, diverge_at=1.0, top=2.0, bottom=0.1):
    """A textbook sweep: flat at ``top``, falls around ``center``, flat at ``bottom``, explodes past ``diverge_at``."""
    out = []
    for lr in lrs:
        x = math.log10(lr / center)
        y = bottom + (top - bottom) / (1 + math.exp(3 * x))
        if lr > diverge_at:
            y += 10 * math.log10(lr / diverge_at) ** 2 * top
        out.append(y)
    return out


def test_exp_schedule_is_log_spaced_and_hits_both_ends():
    lrs = curves.exp_schedule(1e-6, 1.0, 7)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    assert all(b / a == pytest.approx(10.0) for a, b in zip(lrs, lrs[1:]))


def test_smooth_is_bias_corrected_and_skips_nonfinite():
    # bias correction: a constant curve stays constant from the first point (no pull toward zero)
    assert curves.smooth([3.0] * 5) == pytest.approx([3.0] * 5)
    out = curves.smooth([1.0, NAN, 1.0, INF, 1.0])
    assert math.isnan(out[1]) and math.isnan(out[3])
    assert [out[0], out[2], out[4]] == pytest.approx([1.0, 1.0, 1.0])


def test_divergence_rising_and_nonfinite():
    lrs = lr_grid()
    raw = s_curve(lrs)
    idx, kind = curves.divergence_index(raw, curves.smooth(raw))
    assert kind == "rising" and 1.0 < lrs[idx] < 10.0
    raw_nan = raw[:50] + [NAN] + raw[51:]
    assert curves.divergence_index(raw_nan, curves.smooth(raw_nan)) == (50, "nonfinite")
    flat = [1.0] * 50
    assert curves.divergence_index(flat, curves.smooth(flat)) == (None, None)


def test_divergence_watch_agrees_with_the_pure_function():
    for raw in (s_curve(lr_grid()), [2.0, 1.5, 1.0, 0.5, 0.2, 0.1, 0.1, 5.0, 9.0], [1.0, 0.9, NAN, 0.5]):
        watch, seen = curves.DivergenceWatch(), (None, None)
        for i, x in enumerate(raw):
            kind = watch.add(x)
            if kind:
                seen = (i, kind)
                break
        assert seen == curves.divergence_index(raw, curves.smooth(raw))


def test_rules_find_the_descent_of_a_textbook_curve():
    lrs = lr_grid()
    sm = s_curve([lr for lr in lrs if lr < 1.0])
    cut = lrs[:len(sm)]
    steep = curves.steepest(cut, sm)
    assert 3e-4 < steep < 3e-3          # the steepest point is the centre of the drop
    assert 1e-4 < curves.valley(cut, sm) < 1.0
    assert curves.minimum_tenth(cut, sm) == pytest.approx(min(zip(sm, cut))[1] / 10)


@pytest.mark.parametrize("rule", list(curves.RULES.values()))
def test_rules_return_none_with_too_few_finite_points(rule):
    assert rule([1e-3, 1e-2, 1e-1], [1.0, 0.5, 0.2]) is None
    assert rule(lr_grid(20), [NAN] * 20) is None
    # NaN-aware: the NaNs are dropped, not propagated into the answer
    lrs = lr_grid(40, 1e-5, 1.0)
    ys = s_curve(lrs, center=1e-3, diverge_at=10.0)
    holed = [NAN if i % 5 == 0 else y for i, y in enumerate(ys)]
    answer = rule(lrs, holed)
    assert answer is not None and math.isfinite(answer)


def test_rules_say_nothing_on_a_curve_that_never_decreases():
    lrs = lr_grid(50)
    rising = [1.0 + 0.01 * i for i in range(50)]
    assert curves.steepest(lrs, rising) is None
    assert curves.valley(lrs, rising) is None


def test_read_sweep_suggests_below_divergence_with_spread():
    lrs = lr_grid()
    reading = curves.read_sweep(lrs, s_curve(lrs))
    assert reading.reason is None
    assert reading.divergence_lr is not None and reading.divergence_kind == "rising"
    assert 1e-4 < reading.suggested_lr <= reading.divergence_lr / curves.DIVERGENCE_MARGIN
    assert set(reading.suggestions) == {"steepest", "valley", "minimum_tenth"}
    assert reading.spread_decades >= 0
    m = reading.metrics()
    assert "suggested_lr" in m and "divergence_lr" in m


def test_read_sweep_states_why_there_is_no_suggestion():
    lrs = lr_grid(60)
    diverged_at_once = [1.0, 1.0, NAN] + [NAN] * 57
    r = curves.read_sweep(lrs, diverged_at_once)
    assert r.suggested_lr is None and "lowest learning rates" in r.reason
    assert r.divergence_lr == pytest.approx(lrs[2])
    flat = [1.0 + 0.001 * ((-1) ** i) for i in range(60)]
    r = curves.read_sweep(lrs, flat)
    assert r.suggested_lr is None and "never decreases" in r.reason
    assert curves.read_sweep(lrs[:4], [1.0, 0.9, 0.8, 0.7]).reason


def test_geometric_median():
    assert curves.geometric_median([1e-3, 1e-2, 1e-1]) == pytest.approx(1e-2)
    assert curves.geometric_median([1e-4, 1e-2]) == pytest.approx(1e-3)
    assert curves.geometric_median([]) is None


def test_schedule_is_exponential_and_the_same_on_any_machine():
    from nandoctor.probes.lr_sweep import Schedule

    plain = list(Schedule(1e-7, 10.0, 50))
    assert len(plain) == 50 and plain[0] == pytest.approx(1e-7) and plain[-1] == pytest.approx(10.0)
    assert all(b / a == pytest.approx(plain[1] / plain[0]) for a, b in zip(plain, plain[1:]))


def test_a_loss_that_runs_below_zero_is_unbounded_not_better():
    from nandoctor.curves import divergence_index, smooth
    raw = [0.1] * 20 + [0.1 - 0.05 * i for i in range(20)] + [-1e6 * i for i in range(1, 10)]
    index, kind = divergence_index(raw, smooth(raw))
    assert kind == "unbounded" and 20 < index < 40


def test_a_loss_that_climbs_back_above_its_start_has_diverged():
    """Well before the loss is 4x its best: the LR undoes the training, the rest of the sweep adds nothing."""
    raw = [2.0] * 40 + [2.0 - 0.04 * i for i in range(20)] + [1.2 + 0.1 * i for i in range(40)]
    index, kind = curves.divergence_index(raw, curves.smooth(raw))
    assert kind == "rising" and 68 < index < 80
    assert 2.0 < curves.smooth(raw)[index] < 4 * 1.2    # back above the start, far below 4x the best
    watch = curves.DivergenceWatch()
    assert next(i for i, x in enumerate(raw) if watch.add(x)) == index
    # a curve that never fell by a quarter may wander above its start without diverging
    wobble = [1.0, 0.9, 0.85, 0.8, 0.82, 0.9, 1.05, 1.1, 1.0, 0.95]
    assert curves.divergence_index(wobble, curves.smooth(wobble)) == (None, None)


def test_smoothed_noise_measures_the_batch_noise_not_the_trend():
    import random

    rng = random.Random(0)
    trend = [2.0 - 0.005 * i for i in range(400)]
    noisy = [y + rng.gauss(0, 0.2) for y in trend]
    gain = math.sqrt((1 - curves.SMOOTH_BETA) / (1 + curves.SMOOTH_BETA))
    assert curves.smoothed_noise(noisy) == pytest.approx(0.2 * gain, rel=0.15)
    assert curves.smoothed_noise(trend) == pytest.approx(0.0, abs=1e-9)
    assert curves.smoothed_noise([1.0, NAN, 2.0]) is None


def test_a_descent_within_the_batch_noise_suggests_a_tenth_of_the_divergence():
    """A short sweep whose loss only wanders (30 points, SGD barely trained) until it blows up at ~1."""
    import random

    rng = random.Random(1)
    lrs = lr_grid(30)
    raw = [1.1 + rng.gauss(0, 0.3) if lr < 1.0 else 50.0 for lr in lrs]
    r = curves.read_sweep(lrs, raw)
    assert r.divergence_lr is not None and 1.0 <= r.divergence_lr < 3.0
    assert r.suggested_lr == pytest.approx(r.divergence_lr / curves.DIVERGENCE_FALLBACK)
    assert "noise" in r.suggested_by
    # the same sweep with a real descent keeps its valley
    clean = [y - 0.9 * (lr > 1e-3) * (lr < 1.0) for lr, y in zip(lrs, [1.1 + rng.gauss(0, 0.03) for _ in lrs])]
    clean = [y if lr < 1.0 else 50.0 for lr, y in zip(lrs, clean)]
    r = curves.read_sweep(lrs, clean)
    assert r.suggested_by == "valley" and r.suggested_lr < r.divergence_lr / curves.DIVERGENCE_FALLBACK
