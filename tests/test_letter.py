"""The doctor's letter: what it says (verdict, findings, cure, folded symptoms, what is still wrong),
rendered again from a saved report.json to the byte, bad input refused; nothing here trains."""

import json
import re

import pytest
from typer.testing import CliRunner

import letter_docs
from nandoctor.cli import app
from nandoctor.report import html, lr_plots, markdown
from nandoctor.report.letter import letter, verdict_sentence

runner = CliRunner()


def test_the_verdict_names_the_cause_the_fix_and_the_cure():
    sentence = verdict_sentence(letter_docs.seed000())
    assert sentence.startswith("Your loss goes negative because NLLLoss is fed raw scores")
    assert "add nn.LogSoftmax(dim=1)" in sentence and "Confirmed: with it the loss behaves" in sentence


def test_a_healthy_patient_is_told_so_plainly():
    doc = letter_docs.healthy()
    assert verdict_sentence(doc).startswith("Your set-up looks healthy")
    page = markdown.render(doc)
    assert "## 1." not in page and "Your set-up looks healthy" in page


def test_a_refuted_cause_says_the_cure_did_not_help():
    doc = letter_docs.seed000()
    doc["findings"][0].update(status="refuted")
    doc["findings"][0]["treatment"]["cured"] = False
    assert "Not confirmed: appended log-softmax(dim=1) to the model's output did not help" in verdict_sentence(doc)


def test_top_level_findings_lead_and_symptoms_fold_under_their_cause():
    L = letter(letter_docs.seed000())
    assert [f["code"] for f in L["findings"]] == ["nll-on-raw-logits", "lr-too-low", "class-imbalance"]
    first = L["findings"][0]
    assert [g["code"] for g in first["folded"]] == ["cannot-overfit-batch"]
    assert first["remaining"]["codes"][0][:2] == ("lr-too-low", "confirmed")
    md = markdown.render(letter_docs.seed000())
    assert "cannot-overfit-batch" not in re.findall(r"^## .*$", md, re.M)[0]
    assert "**What is still wrong after the fix:**" in md and "- `lr-too-low`" in md


def test_what_we_saw_carries_the_numbers_and_the_fix_the_users_names():
    first = letter(letter_docs.seed000())["findings"][0]
    assert "`fc3` (Linear)" in first["saw"] and "-0.2045" in first["saw"] and "-3.2" in first["saw"]
    assert "Net.forward" in first["snippet"]["code"] and "self.fc3(...)" in first["snippet"]["code"]
    imbalance = letter(letter_docs.seed000())["findings"][2]
    assert "216, 180, 4" in imbalance["snippet"]["code"] and "nn.NLLLoss(weight=" in imbalance["snippet"]["code"]


def test_the_cure_is_a_small_before_after_table_with_its_rule():
    cure = letter(letter_docs.seed000())["findings"][0]["cure"]
    rows = {name: (before, after) for name, before, after in cure["rows"]}
    assert rows["final loss"] == ("-3.2", "0.41") and rows["batch accuracy"] == ("56%", "88%")
    assert rows["steps"] == ("300", "300") and "error" not in rows
    assert cure["status"] == "confirmed" and "stays at or above zero" in cure["judged_by"]


def test_the_appendix_holds_every_probe_its_plan_and_the_evidence(tmp_path):
    md = markdown.render(letter_docs.seed000())
    appendix = md[md.index("<details>"):]
    assert "</details>" in appendix and "<summary>" in appendix
    for probe in ("warmup", "outputs", "overfit", "data_scan", "lr_sweep", "init"):
        assert f"| {probe} |" in appendix
    assert "300 steps planned (at least 30)" in appendix and "run with --budget 150" in appendix
    assert "| outputs min | -0.2045 |" in appendix  # the evidence, in readable units


def test_the_lr_sweep_axis_shows_the_informative_range():
    doc = letter_docs.evidence()["probes"]["lr_sweep"]
    lo, hi = lr_plots.informative_range(doc["lrs"], doc["smoothed"], 0.001322)
    assert -1 < lo < -0.05 and 0.1 < hi < 1  # the run-off to -1e24 past the divergence is not drawn


def _render(tmp_path, name, doc=None, evidence=True):
    path = letter_docs.write(tmp_path / f"src-{name}", doc or letter_docs.seed000(), with_evidence=evidence)
    out = tmp_path / name
    result = runner.invoke(app, ["report", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_report_draws_the_plots_from_the_evidence(tmp_path):
    out = _render(tmp_path, "a")
    for name in ("lr_sweep", "overfit", "data-sample-loss", "treatment-nll-on-raw-logits", "treatment-lr-too-low"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 5000, name
    assert (out / "report.json").exists() and (out / "evidence.json").exists()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5


def test_rendering_the_same_report_twice_gives_identical_files(tmp_path):
    a, b = _render(tmp_path, "a"), _render(tmp_path, "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert {"report.md", "report.html"} <= {str(p) for p in files}
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    again = runner.invoke(app, ["report", str(a / "report.json")])  # in place, beside the report
    assert again.exit_code == 0, again.output
    assert (a / "report.html").read_bytes() == (b / "report.html").read_bytes()


def test_a_report_without_its_evidence_keeps_the_plots_it_has(tmp_path):
    src = tmp_path / "src-old"
    letter_docs.write(src, letter_docs.seed000(), with_evidence=False)
    (src / "plots").mkdir()
    (src / "plots" / "lr_sweep.png").write_bytes((_render(tmp_path, "a") / "plots" / "lr_sweep.png").read_bytes())
    result = runner.invoke(app, ["report", str(src / "report.json"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "plots" / "lr_sweep.png").exists()
    assert (tmp_path / "o" / "plots" / "treatment-lr-too-low.png").exists()  # from treatment.curves


@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    ("{not json", "not JSON"),
    (json.dumps({"tool": "something-else"}), "not a nandoctor report"),
    (json.dumps({"tool": "nandoctor", "findings": []}), "without verdict, probes"),
])
def test_bad_input_is_refused_with_what_to_do(tmp_path, content, words):
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 2
    assert words in result.output and str(path) in result.output and "What to do:" in result.output
    assert "Traceback" not in result.output


def test_the_page_is_self_contained_responsive_and_printable(tmp_path):
    page = html.render(letter_docs.seed000(), tmp_path)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert 'name="viewport"' in page and "@media (max-width" in page and "@media print" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page


def test_the_terminal_gives_the_verdict_the_top_three_and_the_letter(tmp_path, monkeypatch):
    from rich.console import Console

    from nandoctor import cli
    from nandoctor.records import Finding, Report

    def finding(code, **kw):
        return Finding(code=code, severity="critical", confidence=0.9, title=f"title of {code}", evidence={},
                       fix="Do the thing.", **kw)

    cured = {"tried": "appended log-softmax(dim=1)", "cured": True, "before": {}, "after": {},
             "remaining": ["lr-too-low"]}
    findings = [finding("nll-on-raw-logits", treatment=cured), finding("a"), finding("b"), finding("c"),
                finding("folded", explained_by="nll-on-raw-logits")]
    report = Report(config="c.yaml", verdict="critical", elapsed_seconds=3.0, findings=findings, probes={},
                    patient={"loss": "NLLLoss"})
    console = Console(record=True, width=200)
    monkeypatch.setattr(cli, "out", console)
    cli.print_summary(report, tmp_path)
    text = console.export_text()
    assert "critical: Title of nll-on-raw-logits: do the thing. Confirmed: with it the loss behaves" in text
    assert "appended log-softmax(dim=1)" in text and "confirmed" in text and "explains: folded" in text
    assert "title of b" in text and "title of c" not in text and "and 1 more finding(s)" in text
    assert f"The letter: {tmp_path / 'report.html'}" in text


def test_the_gradient_and_init_plots_are_drawn_from_the_saved_numbers(tmp_path):
    from nandoctor.report import figures

    profiles = {s: {"layers": ["fc1", "fc2", "fc3"], "activation_std": [1.0, 0.5, 0.2], "grad_rms": [1e-3, 1e-2, "nan"]}
                for s in ("as configured", "kaiming")}
    doc = {"findings": [], "probes": {
        "gradients": {"status": "ok", "metrics": {"layers": ["fc1", "fc3"], "depth_profile": [1e-3, 1e-1]},
                      "plots": ["plots/gradients.png"]},
        "init": {"status": "ok", "metrics": {"profiles": profiles}, "plots": ["plots/init.png"]}}}
    evidence = {"probes": {
        "gradients": {"rows": ["fc1", "fc3"], "grid": [[0.1, -1.0, "nan"], [0.5, 0.2, 0.1]], "width": 3},
        "init": {"losses": {"as configured": {"steps": [0, 5, 9], "losses": [2.0, 1.5, 1.4]},
                            "kaiming": {"steps": [0, 5, 9], "losses": [2.0, 0.5, 0.1]}}}}}
    assert figures.draw_all(doc, evidence, tmp_path) == ["plots/gradients.png", "plots/init.png"]
    assert all((tmp_path / "plots" / n).stat().st_size > 5000 for n in ("gradients.png", "init.png"))
    assert figures.draw_all(doc, {"probes": {}}, tmp_path / "none") == []  # no numbers: nothing drawn, no error


def test_the_setup_probes_plots_are_drawn_by_the_report_from_what_the_probes_kept(tmp_path):
    """bn_freeze, precision, schedule and train_eval keep numbers and name their plot; the report draws it,
    from evidence.json and report.json alone (and draws nothing when a probe kept nothing)."""
    from types import SimpleNamespace as NS

    from nandoctor.report import figures

    def run(losses):
        return NS(losses=losses)

    data = {
        "bn_freeze": {"runs": {"as configured": run([2.0, 1.0, 0.9]), "frozen BN": run([2.0, 0.8, 0.5])}},
        "precision": {"runs": {"as_configured": NS(precision="fp16", run=run([2.0, float("nan")]),
                                                   watch=NS(per_step=[10.0, 7e4])),
                               "fp32": NS(precision="fp32", run=run([2.0, 1.5]), watch=NS(per_step=[10.0, 12.0]))}},
        "schedule": {"lrs": [0.1 * 0.5 ** i for i in range(40)]},
    }
    report = NS(evidence={k: NS(data=v) for k, v in data.items()})
    evidence = json.loads(json.dumps(figures.collect(report)))   # through JSON, as `nandoctor report` reads it
    assert set(evidence["probes"]) == {"bn_freeze", "precision", "schedule"}
    assert evidence["probes"]["precision"]["runs"]["as_configured"]["act_max"] == [10.0, 7e4]
    doc = {"findings": [], "patient": {"lr": 0.1}, "probes": {
        "bn_freeze": {"metrics": {"variants": {"as configured": {"eval_loss": 3.0}, "frozen BN": {"eval_loss": 0.6}}},
                      "plots": ["plots/bn_freeze.png"]},
        "precision": {"metrics": {"fp16_max": 65504.0, "as_configured": {"overflow": {"step": 1, "module": "fc2"}}},
                      "plots": ["plots/precision.png"]},
        "schedule": {"metrics": {"scheduler": "StepLR", "interval": "step", "configured_lr": 0.1},
                     "plots": ["plots/schedule.png"]},
        "train_eval": {"metrics": {"train_mode_loss": 0.4, "eval_mode_loss": 2.5}, "plots": ["plots/train_eval.png"]}}}
    names = ("bn_freeze", "precision", "schedule", "train_eval")
    assert figures.draw_all(doc, evidence, tmp_path) == sorted(f"plots/{n}.png" for n in names)
    assert all((tmp_path / "plots" / f"{n}.png").stat().st_size > 5000 for n in names)
    bare = {**doc, "probes": {**doc["probes"], "train_eval": {"metrics": {}, "plots": ["plots/train_eval.png"]}}}
    assert figures.draw_all(bare, {"probes": {}}, tmp_path / "none") == []
