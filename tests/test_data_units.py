"""Streaming statistics and the data diagnoses on hand-built evidence: nothing trains here."""


import pytest
import torch
from torch import nn

from nandoctor import diagnoses
from nandoctor.probes.data_scan import per_sample_grad_norms
from nandoctor.probes.samples import NotFactorable, PerSampleLoss, linear_grad_norms, linear_only
from nandoctor.probes.scan_stats import FeatureStats, Magnitude, Reservoir, TargetStats, TopK
from nandoctor.records import Evidence, ProbeResult


# --- streaming statistics ---------------------------------------------------------------------------
def test_feature_stats_do_not_depend_on_the_chunking():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 4, generator=gen, dtype=torch.float64) * 3 + 2
    x[:, 2] = torch.arange(1000) + 5.0   # a row counter with an offset
    x[17, 1] = float("nan")
    results = []
    for chunk in (1000, 333, 64):
        fs = FeatureStats(with_index=True)
        for s in range(0, 1000, chunk):
            fs.update(x[s:s + chunk], torch.arange(s, min(s + chunk, 1000)))
        results.append(fs.result())
    ok = torch.isfinite(x)
    for r in results:
        assert r["nonfinite"] == [0, 1, 0, 0]
        assert r["integer_valued"] == [False, False, True, False]
        for j in range(4):
            col = x[ok[:, j], j]
            assert r["mean"][j] == pytest.approx(float(col.mean()), rel=1e-9)
            assert r["std"][j] == pytest.approx(float(col.std()), rel=1e-9)
            assert r["min"][j] == float(col.min()) and r["max"][j] == float(col.max())
        assert r["index_corr"][2] == pytest.approx(1.0) and r["index_slope"][2] == pytest.approx(1.0)
        assert r["index_offset"][2] == pytest.approx(5.0)
        assert abs(r["index_corr"][0]) < 0.1


def test_reservoir_is_a_bounded_uniform_sample():
    res = Reservoir(500, seed=1)
    for s in range(0, 100_000, 4096):
        res.add(torch.arange(s, min(s + 4096, 100_000), dtype=torch.float64)[:, None])
    assert len(res) == 500
    kept = res.rows[:, 0]
    assert kept.unique().numel() == 500
    assert 40_000 < float(kept.mean()) < 60_000  # uniform over the whole range, not the first or last rows


def test_topk_keeps_the_largest_finite_values_with_their_indices():
    top = TopK(3)
    top.add(torch.tensor([1.0, float("nan"), 9.0]), torch.tensor([10, 11, 12]))
    top.add(torch.tensor([5.0, 7.0, float("inf")]), torch.tensor([13, 14, 15]))
    assert top.items() == [(12, 9.0), (14, 7.0), (13, 5.0)]


def test_target_stats_flag_labels_outside_the_outputs_but_not_ignore_index():
    ts = TargetStats(n_classes=3, kind="class", ignore_index=-100)
    bad = ts.update(torch.tensor([0, 1, 2, 3, -100, -1]), torch.arange(6))
    assert bad.tolist() == [False, False, False, True, False, True]
    r = ts.result()
    assert r["out_of_range"]["indices"] == [3, 5] and r["out_of_range"]["values"] == {-1: 1, 3: 1}
    assert r["histogram"] == {0: 1, 1: 1, 2: 1, 3: 1}


# --- diagnoses on hand-built evidence -----------------------------------------------------------------
def scan_result(**metrics) -> ProbeResult:
    base = {"samples_scanned": 1000, "samples_total": 1000, "whole_set": True, "sampling": "every sample",
            "inputs": {"layout": "features", "feature_names": None}, "features": {}, "index_columns": [],
            "nonfinite": {"count": 0}, "targets": {}, "loss": {}, "load_errors": {"count": 0, "first": []},
            "training": {}}
    return ProbeResult(name="data_scan", metrics={**base, **metrics}, plots=["plots/data-features.png"])


def check(code, ev):
    return diagnoses.get(code).check(ev)


def feats(**cols):
    """Per-feature lists from column dicts: feats(mean=[...], std=[...], ...)."""
    n = len(next(iter(cols.values())))
    base = {"count": [1000] * n, "nonfinite": [0] * n, "integer_valued": [False] * n,
            "index_corr": [0.0] * n, "index_slope": [0.0] * n}
    return {**base, **cols}


@pytest.mark.parametrize("message, fires", [
    ("expected scalar type Long but found Float", True),
    ("expected target dtype to be Long or Byte, but got Float", True),
    ("Target 3 is out of bounds.", True),
    ("Found dtype Long but expected Float", True),
    ("mat1 and mat2 shapes cannot be multiplied (32x10 and 12x3)", False),
])
def test_target_out_of_range_from_a_crash_message_alone(message, fires):
    ev = Evidence(warmup=ProbeResult(name="warmup", status="failed",
                                     error={"type": "RuntimeError", "message": message, "where": "net.py:9"}))
    found = check("target-out-of-range", ev)
    assert (found is not None) == fires
    if fires:
        assert found.severity == "critical" and found.evidence["crashed_in"] == ["warmup"]
        assert "training-crashed" in found.explains and "cannot-overfit-batch" in found.explains


def test_an_index_error_in_user_code_is_not_a_label_problem():
    err = {"type": "IndexError", "message": "list index out of range", "last_frame": "/home/u/data.py:12"}
    assert check("target-out-of-range", Evidence(overfit=ProbeResult(name="overfit", status="failed", error=err))) is None


def test_unnormalized_is_critical_only_when_training_is_in_trouble():
    f = feats(mean=[120.0, 0.1], std=[60.0, 1.0], min=[0.0, -3.0], max=[255.0, 3.0], median=[118.0, 0.1],
              robust_scale=[55.0, 1.0])
    quiet = check("data-unnormalized", Evidence(data_scan=scan_result(features=f)))
    assert quiet.severity == "warning" and quiet.evidence["largest_magnitude"] == pytest.approx(118.0)
    sick = Evidence(data_scan=scan_result(features=f),
                    overfit=ProbeResult(name="overfit", metrics={"memorised": False, "losses": [2.3, 2.2]}))
    assert check("data-unnormalized", sick).severity == "critical"


def test_a_few_outlier_rows_do_not_make_a_column_unnormalized():
    """The plain std is inflated by two corrupted rows; the robust spread is not."""
    f = feats(mean=[3.0], std=[95.0], min=[-3.0], max=[3000.0], median=[0.0], robust_scale=[1.0])
    assert check("data-unnormalized", Evidence(data_scan=scan_result(features=f))) is None


def test_a_counter_with_another_slope_is_only_a_warning():
    f = feats(mean=[50.0, 0.0], std=[29.0, 1.0], min=[0.0, -3.0], max=[99.9, 3.0], median=[50.0, 0.0],
              robust_scale=[29.0, 1.0], index_corr=[0.9995, 0.01], index_slope=[0.1, 0.0])
    found = check("csv-index-column", Evidence(data_scan=scan_result(features=f)))
    assert found.severity == "warning" and found.evidence["columns"][0]["position"] == 0


def test_class_imbalance_needs_the_ratio():
    def targets(hist):
        return {"kind": "class", "shape": [], "integer_valued": True, "histogram": hist, "n_classes": 3}
    assert check("class-imbalance", Evidence(data_scan=scan_result(targets=targets({0: 100, 1: 90, 2: 20})))) is None
    found = check("class-imbalance", Evidence(data_scan=scan_result(targets=targets({0: 500, 1: 450, 2: 5}))))
    assert found.evidence["ratio"] == pytest.approx(100.0) and found.evidence["rare_classes"] == {2: 5}


def test_many_far_out_samples_are_not_a_few_outliers():
    worst = [{"index": i, "loss": 500.0 - i} for i in range(10)]
    dist = {"median": 1.0, "mad": 0.5, "p99": 300.0, "max": 500.0, "worst": worst}
    found = check("sample-loss-outlier", Evidence(data_scan=scan_result(loss={"init": dist, "nonfinite": {"count": 0}})))
    assert found.severity == "info"
    dist["p99"] = 3.0
    found = check("sample-loss-outlier", Evidence(data_scan=scan_result(loss={"init": dist, "nonfinite": {"count": 0}})))
    assert found.severity == "warning" and found.evidence["sample_indices"][0] == 0


def test_a_few_samples_set_apart_by_a_jump_are_named_even_when_they_reach_p99():
    """Four wrapped boxes among 192 samples: p99 is one of them (over 1% of the set is 100x the median), but
    a jump of ~1900x separates them from the next sample: a few bad samples, not a heavy tail."""
    worst = [{"index": i, "loss": 512.0 - i} for i in (7, 50, 91, 130)] + \
        [{"index": 200 + i, "loss": 0.266 - 0.01 * i} for i in range(6)]
    dist = {"median": 0.106, "mad": 0.05, "p99": 509.0, "max": 512.0, "next": 0.2, "worst": worst}
    found = check("sample-loss-outlier", Evidence(data_scan=scan_result(loss={"init": dist, "nonfinite": {"count": 0}})))
    assert found.severity == "warning" and found.evidence["many_outliers"] is False
    assert found.evidence["sample_indices"][:4] == [7, 50, 91, 130] and len(found.evidence["worst_at_init"]) == 4


def test_every_data_code_has_a_full_doc_page():
    for code in ("data-nonfinite", "target-out-of-range", "data-unnormalized", "data-constant-feature",
                 "csv-index-column", "class-imbalance", "sample-loss-outlier", "sample-load-error"):
        page = diagnoses.get(code).page()
        assert all(f"## {s}" in page for s in diagnoses.DOC_SECTIONS), code


# --- per-sample magnitudes and gradient norms ---------------------------------------------------------
def test_feature_stats_of_float32_chunks_match_float64():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5000, 3, generator=gen) * torch.tensor([1.0, 50.0, 0.01]) + torch.tensor([1e4, -3.0, 0.5])
    x[123, 0] = float("inf")
    fs = FeatureStats(with_index=True)
    for s in range(0, 5000, 1024):
        fs.update(x[s:s + 1024], torch.arange(s, min(s + 1024, 5000)))
    r, ok = fs.result(), torch.isfinite(x.double())
    for j in range(3):
        col = x.double()[ok[:, j], j]
        assert r["mean"][j] == pytest.approx(float(col.mean()), rel=1e-6)
        assert r["std"][j] == pytest.approx(float(col.std()), rel=1e-4)
    assert r["nonfinite"] == [1, 0, 0] and r["max"][0] == float(x[torch.isfinite(x[:, 0]), 0].max())


def test_magnitude_is_the_largest_robust_z_score_and_a_rare_flag_is_not_extreme():
    gen = torch.Generator().manual_seed(2)
    ref = torch.cat([torch.randn(512, 2, generator=gen), torch.zeros(512, 1)], 1)  # a flag never set in the reference
    mag = Magnitude(ref)
    rows = torch.tensor([[0.0, 0.0, 1.0],          # the flag set: one unit, not a corrupted row
                         [1e6, -2e6, 0.0],         # scaled by 1e6
                         [float("nan"), 3.0, 0.0]])  # NaN left out, 3 sigma left
    z = mag.score(rows, finite=False)
    assert z[0] == pytest.approx(1.0) and z[1] > 5e5 and 2.0 < z[2] < 5.0


def test_topk_carries_extra_numbers_with_its_samples():
    top = TopK(2)
    top.add(torch.tensor([1.0, 5.0, 3.0]), torch.tensor([7, 8, 9]), extra=torch.tensor([[0.1], [0.5], [0.3]]))
    assert top.rows() == [(8, 5.0, [0.5]), (9, 3.0, [pytest.approx(0.3)])]


@pytest.mark.parametrize("model", [
    pytest.param(lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)), id="mlp"),
    pytest.param(lambda: nn.Sequential(nn.Linear(5, 7, bias=False), nn.ReLU(), nn.Dropout(0.5), nn.Linear(7, 3)),
                 id="no-bias-dropout"),
])
def test_batched_gradient_norms_of_an_mlp_equal_torch_func_per_sample_norms(model):
    torch.manual_seed(0)
    net = model().eval()
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    loss = PerSampleLoss(nn.CrossEntropyLoss())
    assert linear_only(net)
    losses, fast = linear_grad_norms(net, loss, x, y)
    slow, method = per_sample_grad_norms(net, loss, x, y)
    assert method.startswith("torch.func")
    assert torch.allclose(fast, slow, rtol=1e-4) and torch.allclose(losses, loss(net(x), y).detach())


def test_batched_gradient_norms_refuse_what_they_cannot_factor():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(self.lin(x))
    loss = PerSampleLoss(nn.MSELoss())
    with pytest.raises(NotFactorable):
        linear_grad_norms(Twice().eval(), loss, torch.randn(3, 4), torch.randn(3, 4))
    assert not linear_only(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2)))
    tied = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    assert not linear_only(tied)


def magnitude_evidence(values, losses=None, p99=4.0, scanned=200_000):
    worst = [{"index": 1000 + k, "magnitude": v, "loss_init": (losses or [2.3] * len(values))[k], "loss_trained": 2.2}
             for k, v in enumerate(values)]
    dist = {"median": 2.3, "mad": 0.3, "p99": 2.5, "max": 3.0, "worst": [{"index": 1, "loss": 3.0}]}
    return Evidence(data_scan=scan_result(samples_scanned=scanned, samples_total=scanned, loss={"init": dist},
                                          magnitude={"median": 2.6, "p99": p99, "max": max(values), "worst": worst}))


def test_rows_set_apart_by_their_magnitude_are_named_whatever_their_loss():
    tail = [5.7, 5.5, 5.4, 5.3, 5.2, 5.1, 5.0, 4.9]
    ev = magnitude_evidence([2.6e6, 2.5e6, 1e5] + tail, losses=[0.0, 0.0, 1e4] + [2.3] * 8)
    found = check("sample-loss-outlier", ev)
    assert found.severity == "critical" and found.evidence["sample_indices"] == [1000, 1001, 1002]
    assert [w["loss_small"] for w in found.evidence["extreme_inputs"]] == [True, True, False]
    assert found.evidence["extreme_inputs"][0]["next_magnitude"] == 5.7


@pytest.mark.parametrize("values", [
    pytest.param([3000.0, 2100.0, 1500.0, 1100.0, 800.0, 640.0, 500.0, 420.0, 380.0, 300.0], id="heavy-tail"),
    pytest.param([2e6] * 24, id="too-many-to-be-a-few"),
    pytest.param([500.0, 4.0, 3.9], id="jump-but-not-far"),
])
def test_a_smooth_heavy_tail_many_extreme_rows_or_a_small_jump_are_not_named(values):
    assert check("sample-loss-outlier", magnitude_evidence(values)) is None


def test_labels_the_model_has_no_output_for_are_not_a_rare_class():
    targets = {"kind": "class", "shape": [], "integer_valued": True, "histogram": {0: 500, 1: 450, 2: 480, 3: 1},
               "n_classes": 3}
    assert check("class-imbalance", Evidence(data_scan=scan_result(targets=targets))) is None


def _moments(values):
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()), "min": float(t.min()), "max": float(t.max())}


def test_a_shuffled_saved_index_holds_every_row_number_once():
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    m = _moments(perm)
    f = feats(mean=[m["mean"], 0.0], std=[m["std"], 1.0], min=[m["min"], -3.0], max=[m["max"], 3.0],
              median=[500.0, 0.0], robust_scale=[370.0, 1.0], integer_valued=[True, False],
              index_corr=[0.03, 0.0], index_slope=[0.03, 0.0])
    found = check("csv-index-column", Evidence(data_scan=scan_result(features=f)))
    assert found.severity == "critical" and found.evidence["columns"][0]["position"] == 0
    assert "every row number once" in found.title
    # integer values over the same span with repeats and gaps (a real count feature) are not
    counts = [min(999, int(i * 1.3) % 1000) for i in range(1000)]
    m = _moments(counts)
    f.update(mean=[m["mean"], 0.0], std=[m["std"], 1.0], min=[m["min"], -3.0], max=[m["max"], 3.0])
    assert check("csv-index-column", Evidence(data_scan=scan_result(features=f))) is None
    # nor a permutation seen in a sample of a larger set
    m = _moments(perm)
    f.update(mean=[m["mean"], 0.0], std=[m["std"], 1.0], min=[m["min"], -3.0], max=[m["max"], 3.0])
    sampled = scan_result(features=f)
    sampled.metrics.update(samples_total=5000, whole_set=False)
    assert check("csv-index-column", Evidence(data_scan=sampled)) is None


def test_a_code_for_unknown_stored_as_a_number_is_named_from_the_moments():
    """One row in seven holds -10000 ("unknown"): the robust statistics ignore it, the mean and the variance are
    those of that mass over the rest."""
    from nandoctor.diagnoses.data_scale import sentinel
    gen = torch.Generator().manual_seed(0)
    col = torch.randn(700, generator=gen, dtype=torch.float64)
    col[::7] = -10000.0
    f = {"mean": float(col.mean()), "std": float(col.std()), "min": float(col.min()), "max": float(col.max()),
         "median": float(col.median()), "robust_scale": 1.0}
    found = sentinel(f)
    assert found["value"] == -10000.0 and found["share"] == pytest.approx(1 / 7, abs=0.01)
    # a heavy tail (a few huge values, not one repeated code) does not match a two-point mass
    tail = torch.randn(700, generator=gen, dtype=torch.float64)
    tail[:5] = torch.tensor([-9000.0, -3000.0, -500.0, -20000.0, -7000.0], dtype=torch.float64)
    g = {"mean": float(tail.mean()), "std": float(tail.std()), "min": float(tail.min()), "max": float(tail.max()),
         "median": float(tail.median()), "robust_scale": 1.0}
    assert sentinel(g) is None
    ev = Evidence(data_scan=scan_result(features=feats(mean=[f["mean"], 0.0], std=[f["std"], 1.0],
                                                       min=[f["min"], -3.0], max=[f["max"], 3.0],
                                                       median=[f["median"], 0.0], robust_scale=[1.0, 1.0])))
    finding = check("data-unnormalized", ev)
    assert finding.evidence["sentinels"][0]["value"] == -10000.0 and "a code for a missing value" in finding.title


def test_a_rescaling_cure_that_brings_a_huge_first_loss_back_to_its_expected_value_proves_itself():
    """Huge inputs, huge logits: the loss at init 50x its expected ln 3. A cure that starts near ln 3 and trains no
    worse is proven by that, though both arms end alike on the stream; without the huge start it is not."""
    from nandoctor.diagnoses.data_scale import starts_repaired
    from nandoctor.probes.training import Run
    from nandoctor.treatments import Outcome

    def arm(losses):
        return Outcome(Run(losses=losses))

    def outputs(first):
        return Evidence(outputs=ProbeResult("outputs", "ok", metrics={"initial_loss": first,
                                                                       "expected_initial_loss": 1.0986}))
    untreated, treated = arm([50.0] + [0.45] * 20), arm([1.11] + [0.46] * 20)
    (judge,) = starts_repaired(outputs(50.0))
    assert judge(untreated, treated)
    assert not judge(untreated, arm([1.11] + [0.6] * 20))     # it trains worse
    assert not judge(untreated, arm([4.0] + [0.4] * 20))      # it still starts far off
    # two runs stuck at the same loss (every ReLU dead at a far too high LR) prove nothing
    assert not judge(arm([7.7] + [1.75] * 20), arm([1.78] + [1.75] * 20))
    assert starts_repaired(outputs(1.3)) == ()                # a start that was fine proves nothing
