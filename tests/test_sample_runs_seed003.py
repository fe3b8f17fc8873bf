"""The seed 003 sample runs: each config's patient ranks its code first (restricted probes, small budget)."""

from pathlib import Path

import pytest

import nandoctor

RUNS = Path(__file__).resolve().parent.parent / "sample_runs"


@pytest.mark.parametrize("name, probes, code", [
    ("seed003_bad_init", ["init"], "bad-init"),
    ("seed003_batchnorm_tiny_batch", ["bn_freeze", "train_eval"], "batchnorm-small-batch"),
    ("seed003_exploding_clip", ["overfit", "gradients"], "exploding-gradients"),
])
def test_sample_run_ranks_its_code_first(name, probes, code):
    report = nandoctor.diagnose(RUNS / name / "config.yaml", probes=probes, budget=15)
    top = report.findings[0]
    assert top.code == code, [(f.code, f.title) for f in report.findings]
    assert top.severity == "critical"
    assert top.treatment is not None and top.treatment["cured"] is True


@pytest.mark.parametrize("name", ["seed003_bad_init", "seed003_batchnorm_tiny_batch", "seed003_exploding_clip"])
def test_committed_report_ranks_the_same_code_first(name):
    import json
    report = json.loads((RUNS / name / "report" / "report.json").read_text())
    expected = {"seed003_bad_init": "bad-init", "seed003_batchnorm_tiny_batch": "batchnorm-small-batch",
                "seed003_exploding_clip": "exploding-gradients"}[name]
    if name == "seed003_exploding_clip":
        # the whole battery also finds the LR that makes the gradients explode (confirmed by a tenth of it):
        # the cause ranks above the symptom it explains; the explosion is still found, and either cured by
        # clipping or, once the LR is confirmed, folded under it (a confirmed cause's symptoms get no cure)
        top = report["findings"][0]
        assert top["code"] in ("exploding-gradients", "lr-too-high") and top["status"] == "confirmed"
        exploding = next(f for f in report["findings"] if f["code"] == expected)
        if top["code"] == "lr-too-high" and exploding["explained_by"] == "lr-too-high":
            return
        assert exploding["status"] == "confirmed" and "clip_grad_norm_" in exploding["treatment"]["tried"]
        return
    assert report["findings"][0]["code"] == expected
