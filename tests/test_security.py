"""Security: YAML read safely, checkpoints without pickled code, every user string escaped in the HTML
and the terminal, no network at any point."""

import re
import socket
import textwrap
from pathlib import Path

import markupsafe
from torch import nn
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.records import Finding, ProbeResult, Report
from patients import battery, make_patient

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = "<script>alert('x')</script>"
SOURCES = sorted((ROOT / "nandoctor").rglob("*.py"))

NET = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3))
        def forward(self, x):
            return self.fc(x)

    def data(n=96):
        g = torch.Generator().manual_seed(0)
        return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
''')
CONFIG = "model: net.py:Net\ndata: {train: net.py:data, batch_size: 16}\nloss: torch.nn.CrossEntropyLoss\n" \
         "optimizer: {_target_: torch.optim.Adam, lr: 0.01}\n"


def test_yaml_tags_that_run_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "c.yaml").write_text(CONFIG + f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    result = CliRunner().invoke(app, ["diagnose", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not marker.exists()


def test_nandoctor_reads_yaml_only_with_the_safe_loader_and_checkpoints_only_as_weights():
    unsafe_yaml = re.compile(r"yaml\.(unsafe_load|full_load|load_all)\(|yaml\.load\((?![^)]*SafeLoader)|"
                             r"Loader=yaml\.(Unsafe|Full)?Loader\b")
    loads = []
    for path in SOURCES:
        text = path.read_text()
        assert not unsafe_yaml.search(text), path
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            loads.append((path.name, call.group(1)))
    assert all("weights_only=True" in args for _, args in loads), loads  # (today nandoctor loads no checkpoint)


def synthetic_report(tmp_path) -> Report:
    finding = Finding(code=PAYLOAD, severity="critical", confidence=0.9, title=PAYLOAD,
                      evidence={PAYLOAD: PAYLOAD, "where": f"{PAYLOAD}.py:3"}, fix=PAYLOAD, probes=[PAYLOAD],
                      plots=["plots/../../secret.png"],
                      treatment={"tried": PAYLOAD, "cured": True, "before": {PAYLOAD: 1.0}, "after": PAYLOAD})
    probe = ProbeResult(name=PAYLOAD, status="failed", error={"type": PAYLOAD, "message": PAYLOAD},
                        metrics={"summary": PAYLOAD})
    facts = {k: PAYLOAD for k in ("model", "loss", "optimizer", "lr", "batch_size", "parameters", "device_note")}
    return Report(config=PAYLOAD, verdict="critical", elapsed_seconds=1.0, findings=[finding],
                  probes={PAYLOAD: probe, "ok": ProbeResult(name="ok", reason=PAYLOAD)}, plan={"budget_seconds": PAYLOAD},
                  not_evaluated=[{"code": PAYLOAD}], interrupted=True, patient=facts)


def test_every_user_string_in_the_html_is_text(tmp_path):
    from nandoctor.report import html

    (tmp_path.parent / "secret.png").write_bytes(b"\x89PNG not yours")
    page = html.render(synthetic_report(tmp_path / "out"), tmp_path / "out")
    assert PAYLOAD not in page and "<script" not in page
    assert str(markupsafe.escape(PAYLOAD)) in page
    assert "base64" not in page  # a plot path that leaves the report folder is never embedded


def test_a_model_class_named_script_shows_as_text(tmp_path):
    Evil = type(PAYLOAD, (nn.Module,), {"__init__": lambda self: (nn.Module.__init__(self),
                                                                 setattr(self, "fc", nn.Linear(10, 3)))[0],
                                        "forward": lambda self, x: self.fc(x)})
    battery(make_patient(model=Evil), probes=["overfit"], budget=5, out=tmp_path / "r")
    page = (tmp_path / "r" / "report.html").read_text()
    assert PAYLOAD not in page and "&lt;script&gt;" in page
    letter = (tmp_path / "r" / "report.md").read_text()  # pasted into an issue, it is text there too
    assert "<script" not in re.sub(r"`[^`]*`", "", letter)
    # and again when the letter is written from the saved report.json
    result = CliRunner().invoke(app, ["report", str(tmp_path / "r" / "report.json"), "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    again = (tmp_path / "again" / "report.html").read_text()
    assert PAYLOAD not in again and "&lt;script&gt;" in again


def test_a_hostile_report_json_renders_as_text_and_writes_only_its_folder(tmp_path):
    """``nandoctor report`` on a report.json that someone else wrote: every string text, plot ids that leave
    the folder neither read nor written."""
    import json

    import letter_docs

    doc = letter_docs.seed000()
    doc["config"] = doc["patient"]["model"] = PAYLOAD
    first = doc["findings"][0]
    first.update(title=PAYLOAD, fix=PAYLOAD, code=f"../../{PAYLOAD}", plots=["plots/../../secret.png"])
    first["evidence"]["last_module"]["name"] = PAYLOAD
    first["treatment"].update(tried=PAYLOAD, judged_by=PAYLOAD, plot=f"plots/../../{PAYLOAD}.png")
    doc["findings"][1]["explained_by"] = PAYLOAD
    doc["probes"][PAYLOAD] = {"status": PAYLOAD, "seconds": PAYLOAD, "metrics": {PAYLOAD: PAYLOAD},
                              "plots": ["plots/../../secret.png"], "reason": PAYLOAD}
    (tmp_path / "secret.png").write_bytes(b"\x89PNG not yours")
    src = letter_docs.write(tmp_path / "in" / "deep", doc)
    before = sorted(p for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["report", str(src), "--out", str(tmp_path / "in" / "out")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "in" / "out" / "report.html").read_text()
    assert PAYLOAD not in page and "<script" not in page and str(markupsafe.escape(PAYLOAD)) in page
    assert "PNG not yours" not in page and "iVBORw0KGgpub3QgeW91cnM" not in page
    md = (tmp_path / "in" / "out" / "report.md").read_text()
    assert "<script" not in re.sub(r"`[^`]*`", "", md)  # in a code span it is shown as it is: text
    made = sorted(set(tmp_path.rglob("*")) - set(before))
    assert all(p.is_relative_to(tmp_path / "in" / "out") for p in made), made
    assert json.loads((tmp_path / "in" / "out" / "report.json").read_text())["config"] == PAYLOAD


def test_user_text_never_becomes_terminal_markup():
    from rich.console import Console

    from nandoctor.cli import summary_table

    report = synthetic_report(Path("."))
    report.findings[0].title = "ValueError: bad [/red] tag [bold]x[/bold] [link=http://x]y"
    console = Console(record=True, width=200)
    console.print(summary_table(report))  # a MarkupError here would end the CLI with a traceback
    assert "[/red] tag [bold]x[/bold]" in console.export_text()


def test_a_diagnosis_never_touches_the_network(tmp_path, monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise OSError("network access in a test")

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "c.yaml").write_text(CONFIG)
    result = CliRunner().invoke(app, ["diagnose", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"),
                                      "--budget", "12", "-q"])
    assert result.exit_code == 0, result.output
    assert attempts == []
    assert (tmp_path / "o" / "report.html").exists()


def test_the_readme_says_whose_code_runs():
    text = (ROOT / "README.md").read_text()
    assert "imports and runs your code" in text and "trust" in text
