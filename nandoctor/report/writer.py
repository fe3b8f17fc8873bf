"""Write every report format into the output folder, and put the folder in place as a whole.

A run writes into a staging folder beside ``--out`` (``.NAME.partial-XXXX``: plots while the probes
run, then the reports) and only a finished run moves it into place. An older report in ``--out``
is replaced as a whole, never mixed with the new one (its stale plots go with it), and a run that
dies leaves the older report untouched. A folder that holds anything nandoctor does not write is
never removed: the new report's files are moved into it one by one, and nothing else is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from nandoctor.errors import ConfigError, NandoctorError
from nandoctor.report import figures, html, json_report, markdown

REPORT_FILES = ("report.json", "report.md", "report.html", figures.EVIDENCE_FILE)
PLOTS = "plots"
_STAGING: set[Path] = set()   # staging folders of runs in progress (removed on a second Ctrl-C)


class ReportError(NandoctorError):
    """``nandoctor report`` was given something that is not a saved nandoctor report."""


def write_all(report, out: Path, elapsed: Callable[[], float] | None = None) -> None:
    """The plots drawn from the evidence, then the letter (report.md, report.html), evidence.json and
    report.json last. ``elapsed_seconds`` is read from ``elapsed`` once the plots are drawn (they are the
    slow part), so the letter and report.json carry the same number and ``nandoctor report`` renders
    the letter again to the byte."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    evidence = figures.collect(report)
    figures.draw_all(report.to_json(), evidence, out)
    if elapsed is not None:
        report.elapsed_seconds = elapsed()
    doc = json_report.document(report)
    render_letter(doc, out)
    figures.write_evidence(evidence, out)
    json_report.write(report, out)


def render_letter(doc: dict, out: Path) -> None:
    markdown.write(doc, out)
    html.write(doc, out)


def read_report(path: Path) -> dict:
    """A saved report.json, checked to be nandoctor's; else a ``ReportError`` that says what to do."""
    path = Path(path)
    hint = ("give the report.json that `nandoctor diagnose` wrote (in its --out folder, "
            "nandoctor-report/report.json by default), or run `nandoctor diagnose CONFIG` to make one.")
    if path.is_dir():
        if not (path / "report.json").is_file():
            raise ReportError("this folder holds no report.json.", where=str(path), hint=hint)
        path = path / "report.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError("no such file.", where=str(path), hint=hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read it: {getattr(exc, 'strerror', None) or exc}.", where=str(path),
                          hint=hint) from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ReportError(f"not JSON ({exc.msg} at line {exc.lineno}), so not a nandoctor report.",
                          where=str(path), hint=hint) from None
    if not isinstance(doc, dict) or doc.get("tool") != "nandoctor":
        raise ReportError('not a nandoctor report (it has no "tool": "nandoctor").', where=str(path), hint=hint)
    missing = [k for k in ("verdict", "findings", "probes") if k not in doc]
    if missing or not isinstance(doc.get("findings"), list) or not isinstance(doc.get("probes"), dict):
        raise ReportError(f"a nandoctor report without {', '.join(missing) or 'a findings list and probes'}: "
                          "it cannot be rendered.", where=str(path), hint=hint)
    return doc


def rerender(report_json: Path, out: Path | None = None) -> Path:
    """Write report.md, report.html and the plots again from a saved report.json (and the evidence.json
    beside it) into ``out`` (default: the report's own folder); returns the folder. Plots the report step
    draws are drawn again; the probes' own plots are copied from beside the report. Rendering the same
    report twice gives the same files."""
    source = Path(report_json)
    doc = read_report(source)
    src = source if source.is_dir() else source.parent
    target = Path(out) if out is not None else src
    evidence = figures.read_evidence(src)
    with staged(target) as stage:
        (stage / PLOTS).mkdir(parents=True, exist_ok=True)
        for plot_id in figures.named_plots(doc):   # the probes' plots, as they are
            name = figures.plot_name(plot_id)
            found = src / PLOTS / f"{name}.png"
            if not figures.drawn_here(plot_id) and found.is_file() and not found.is_symlink():
                shutil.copyfile(found, stage / PLOTS / f"{name}.png")
        figures.draw_all(doc, evidence, stage)
        for plot_id in figures.named_plots(doc):   # an older report's plot that cannot be drawn again
            name = figures.plot_name(plot_id)
            found, made = src / PLOTS / f"{name}.png", stage / PLOTS / f"{name}.png"
            if not made.exists() and found.is_file() and not found.is_symlink():
                shutil.copyfile(found, made)
        render_letter(doc, stage)
        shutil.copyfile(src / "report.json" if source.is_dir() else source, stage / "report.json")
        if (src / figures.EVIDENCE_FILE).is_file():
            shutil.copyfile(src / figures.EVIDENCE_FILE, stage / figures.EVIDENCE_FILE)
    return target


def is_report_folder(folder: Path) -> bool:
    """Only what nandoctor writes: the three reports and a ``plots/`` folder of files (or nothing)."""
    for entry in folder.iterdir():
        if entry.name in REPORT_FILES and entry.is_file():
            continue
        if entry.name == PLOTS and entry.is_dir() and all(p.is_file() for p in entry.iterdir()):
            continue
        return False
    return True


@contextlib.contextmanager
def staged(out: str | Path | None) -> Iterator[Path | None]:
    """A fresh staging folder beside ``out`` to write the whole report into; moved into place when the
    block finishes, removed when it raises. ``None`` when there is no ``out``."""
    if out is None:
        yield None
        return
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"'{out}' is a file, not a folder.", key="--out",
                          hint="give --out a folder name (it is created when missing).")
    created = [p for p in out.absolute().parents if not p.exists()]  # folders made for it, innermost first
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        stage.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the report folder is an ordinary one
    except OSError as exc:
        raise ConfigError(f"cannot write the report beside '{out}': {exc.strerror or exc}.", key="--out",
                          hint="choose a folder you can write to.") from None
    _STAGING.add(stage)
    published = False
    try:
        yield stage
        publish(stage, out)
        published = True
    finally:
        _STAGING.discard(stage)
        shutil.rmtree(stage, ignore_errors=True)
        if not published:  # bad input or a crash: leave no empty folders behind either
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def publish(stage: Path, out: Path) -> None:
    """Put the staged report at ``out``: a rename when ``out`` is new, empty or an older report (whole),
    else file by file into the folder, leaving everything else in it as it is."""
    if not out.exists():
        os.rename(stage, out)
        return
    if is_report_folder(out):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
        try:
            os.rename(stage, out)
        except OSError:
            os.rename(old / out.name, out)  # put the older report back rather than lose both
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    # a folder of the user's own: add (and overwrite) the report's files, remove nothing
    for entry in stage.rglob("*"):
        if entry.is_file():
            target = out / entry.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(entry, target)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def discard_staging() -> None:
    """Remove the staging folders of runs in progress (on exit without a report)."""
    for stage in list(_STAGING):
        shutil.rmtree(stage, ignore_errors=True)
