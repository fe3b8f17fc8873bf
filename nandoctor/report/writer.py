"""Write every report format into the output folder, and put the folder in place as a whole.

A run writes into a staging folder beside ``--out`` (``.NAME.partial-XXXX``: plots while the probes
run, then the reports) and only a finished run moves it into place. An older report in ``--out``
is replaced as a whole, never mixed with the new one (its stale plots go with it), and a run that
dies leaves the older report untouched. A folder that holds anything nandoctor does not write is
never removed: the new report's files are moved into it one by one, and nothing else is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from nandoctor.errors import ConfigError
from nandoctor.report import html, json_report, markdown

REPORT_FILES = ("report.json", "report.md", "report.html")
PLOTS = "plots"
_STAGING: set[Path] = set()   # staging folders of runs in progress (removed on a second Ctrl-C)


def write_all(report, out: Path, elapsed: Callable[[], float] | None = None) -> None:
    """report.md and report.html, then report.json last, its ``elapsed_seconds`` read from ``elapsed``
    once the other files are written (so the contract's number counts the whole run)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    markdown.write(report, out)
    html.write(report, out)
    if elapsed is not None:
        report.elapsed_seconds = elapsed()
    json_report.write(report, out)


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
