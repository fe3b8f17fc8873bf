"""Streaming statistics and the data diagnoses on hand-built evidence: nothing trains here."""


import pytest
import torch

from nandoctor import diagnoses
from nandoctor.probes.scan_stats import FeatureStats, Reservoir, TargetStats, TopK
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


def test_every_data_code_has_a_full_doc_page():
    for code in ("data-nonfinite", "target-out-of-range", "data-unnormalized", "data-constant-feature",
                 "csv-index-column", "class-imbalance", "sample-loss-outlier", "sample-load-error"):
        page = diagnoses.get(code).page()
        assert all(f"## {s}" in page for s in diagnoses.DOC_SECTIONS), code
