"""Thin typer commands: parse options, call the pipeline, map errors to exit codes.

Exit status: 0 a report was written; 1 ``--fail-on`` matched a finding; 2 bad input;
130 interrupted (Ctrl-C: the partial report is written; a second Ctrl-C exits at once).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from nandoctor.errors import NandoctorError

app = typer.Typer(
    name="nandoctor", add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
    help="A doctor for PyTorch training runs that go wrong: loss that turns NaN, explodes, goes negative "
         "or will not move.\n\nPoint it at one YAML file naming your model, data, loss and optimizer "
         "(see configs/ for examples). It runs short probe trainings on copies of your set-up and writes "
         "a ranked diagnosis: report.md, report.html, report.json and plots/.",
)
err = Console(stderr=True)
out = Console()

SEVERITIES = ("info", "warning", "critical")

ConfigArg = Annotated[Path, typer.Argument(help="The YAML config naming your model, data, loss and optimizer.",
                                           show_default=False)]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder for report.md/.html/.json and plots/.")]
BudgetOpt = Annotated[float, typer.Option("--budget", "-b", min=1.0,
                                          help="Seconds the whole run may take; probes are sized to fit.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N (default: the config's).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", min=0, max=2 ** 32 - 1,
                                                help="Seed for every probe (default: the config's, else 0).")]
FailOpt = Annotated[Optional[str], typer.Option("--fail-on", help="Exit 1 when a finding at or above this severity "
                                                                  "(info, warning, critical) is found: for CI.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; only the summary.")]


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C


def _exit_now(signum, frame) -> None:
    """The second Ctrl-C: no report, no clean-up of the patient's copies, just out."""
    from nandoctor.report.writer import discard_staging
    discard_staging()
    os.write(2, b"\ninterrupted twice: exiting without a report\n")
    os._exit(EXIT_INTERRUPTED)


def _first_interrupt(signum, frame) -> None:
    """The first Ctrl-C stops the probe that runs (a partial report is written); the next one exits at once."""
    signal.signal(signal.SIGINT, _exit_now)
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts():
    """Ctrl-C as the CLI promises it, for the length of one command (the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _first_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def fail(message: str, code: int = 2):
    """Print one unwrapped paragraph to stderr and exit (2: bad input)."""
    typer.secho("error: ", fg=typer.colors.RED, err=True, nl=False)
    typer.echo(message, err=True)
    raise typer.Exit(code)


class RichProgress:
    """Live progress: one bar per probe."""

    def __init__(self, console: Console):
        self.bar = Progress(TextColumn("{task.description:<34}"), BarColumn(), TaskProgressColumn(),
                            TimeElapsedColumn(), console=console, transient=False)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def start(self, name, title, total=None):
        self.tasks[name] = self.bar.add_task(title, total=total)

    def update(self, name, done, total=None):
        task = self.tasks.get(name)
        if task is None:
            return
        if total is not None:
            self.bar.update(task, total=total, completed=done)
        else:
            self.bar.advance(task, done)

    def finish(self, name, result):
        task = self.tasks.get(name)
        if task is not None:
            total = self.bar.tasks[task].total or 1
            mark = {"ok": "", "failed": " [red](failed)", "skipped": " [yellow](skipped)",
                    "inconclusive": " [yellow](inconclusive)"}.get(result.status, "")
            self.bar.update(task, total=total, completed=total,
                            description=self.bar.tasks[task].description + mark)


class Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def start(self, *a, **k): ...
    def update(self, *a, **k): ...
    def finish(self, *a, **k): ...


def summary_table(report, top: int = 8) -> Table:
    colors = {"critical": "red", "warning": "yellow", "info": "blue"}
    table = Table(title=f"verdict: {report.verdict}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("severity")
    table.add_column("code")
    table.add_column("finding")
    table.add_column("status")
    # the top level only: a symptom folded under its cause is shown under that cause's row
    shown = [f for f in report.findings if f.explained_by is None][:top]
    for i, f in enumerate(shown, 1):
        folded = [g.code for g in report.findings if g.explained_by == f.code]
        title = escape(f.title) + (f"\n[dim]explains: {escape(', '.join(folded))}[/dim]" if folded else "")
        still = (f.treatment or {}).get("remaining")
        if still:
            title += f"\n[dim]still wrong after the cure: {escape(', '.join(still))}[/dim]"
        # titles carry the user's names and messages: shown as text, never read as rich markup
        table.add_row(str(i), f"[{colors.get(f.severity, 'white')}]{escape(f.severity)}", escape(f.code),
                      title, f.status)
    return table


def run_command(config: Path, outdir: Path, budget: float, probes, device, seed, fail_on, quiet,
                probe_options=None) -> None:
    """The shared body of the three commands."""
    from nandoctor.pipeline import diagnose

    if fail_on is not None and fail_on not in SEVERITIES:
        fail(f"--fail-on {fail_on!r} is not a severity.\nWhat to do: use one of {', '.join(SEVERITIES)}.")
    progress = Silent() if quiet or not sys.stderr.isatty() else RichProgress(err)
    try:
        with interrupts(), progress:
            report = diagnose(config, budget=budget, probes=probes, device=device, seed=seed, out=outdir,
                              progress=progress, probe_options=probe_options)
    except NandoctorError as exc:
        fail(exc.render(), exc.exit_code)
    except KeyboardInterrupt:  # before the battery started, or while the report was written
        fail("interrupted before a report was written.", EXIT_INTERRUPTED)
    finally:
        from nandoctor import isolation
        isolation.close_all()  # probe worker processes, when probes ran isolated
    if report.interrupted:
        err.print("[yellow]interrupted:[/yellow] the report below is partial.")
    if report.findings:
        out.print(summary_table(report))
    else:
        from nandoctor.report.markdown import healthy_sentence
        out.print(f"[green]verdict: healthy[/green] — {healthy_sentence(report)}")
    if report.plan.get("note"):
        out.print(f"[yellow]inconclusive:[/yellow] {report.plan['note']}", highlight=False)
    for name, result in report.probes.items():  # one-line answers of probes that give one (the LR sweep's)
        if result.ok and result.metrics.get("summary"):
            out.print(f"{name}: {result.metrics['summary']}", markup=False, highlight=False)
    out.print(f"Report: {outdir / 'report.html'} (also report.md, report.json)  "
              f"[{report.elapsed_seconds:.1f} s]", markup=False, highlight=False)
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if fail_on is not None and any(SEVERITIES.index(f.severity) >= SEVERITIES.index(fail_on)
                                   for f in report.findings):
        raise typer.Exit(1)


@app.command()
def diagnose(config: ConfigArg, out_dir: OutOpt = Path("nandoctor-report"), budget: BudgetOpt = 120.0,
             probes: Annotated[Optional[str], typer.Option(
                 "--probes", help="Comma-separated probes to run (default: all). See `nandoctor probes`.")] = None,
             device: DeviceOpt = None, seed: SeedOpt = None, fail_on: FailOpt = None, quiet: QuietOpt = False):
    """Run the whole battery and write a ranked diagnosis, most likely root cause first.

    Example: nandoctor diagnose configs/classification.yaml --budget 60 --out report/
    """
    names = [p for p in probes.split(",") if p.strip()] if probes else None
    run_command(config, out_dir, budget, names, device, seed, fail_on, quiet)


@app.command("scan-data")
def scan_data(config: ConfigArg, out_dir: OutOpt = Path("nandoctor-report"), budget: BudgetOpt = 120.0,
              device: DeviceOpt = None, seed: SeedOpt = None, fail_on: FailOpt = None, quiet: QuietOpt = False):
    """Find the dirty samples: NaN/Inf, labels out of range, unnormalised or constant features, outliers.

    Example: nandoctor scan-data configs/csv.yaml
    """
    run_command(config, out_dir, budget, ["data_scan"], device, seed, fail_on, quiet)


@app.command("lr-sweep")
def lr_sweep(config: ConfigArg, out_dir: OutOpt = Path("nandoctor-report"), budget: BudgetOpt = 120.0,
             min_lr: Annotated[float, typer.Option("--min-lr", help="Lowest learning rate of the sweep.")] = 1e-7,
             max_lr: Annotated[float, typer.Option("--max-lr", help="Highest learning rate of the sweep.")] = 10.0,
             steps: Annotated[Optional[int], typer.Option("--steps", help="Sweep steps (default: fit the budget).")] = None,
             device: DeviceOpt = None, seed: SeedOpt = None, fail_on: FailOpt = None, quiet: QuietOpt = False):
    """Sweep the learning rate: where training works, where it diverges, and which LR to use.

    Example: nandoctor lr-sweep configs/classification.yaml --min-lr 1e-6 --max-lr 1
    """
    if not 0 < min_lr < max_lr:
        fail("--min-lr must be positive and below --max-lr.\nWhat to do: e.g. --min-lr 1e-7 --max-lr 10.")
    run_command(config, out_dir, budget, ["lr_sweep"], device, seed, fail_on, quiet,
                probe_options={"min_lr": min_lr, "max_lr": max_lr, "steps": steps})


@app.command()
def explain(code: Annotated[Optional[str], typer.Argument(help="A diagnosis code, e.g. nll-on-raw-logits.",
                                                          show_default=False)] = None,
            list_: Annotated[bool, typer.Option("--list", help="List every diagnosis code.")] = False):
    """Explain a diagnosis: what it detects, why it breaks training, the evidence, the fix, false positives."""
    from nandoctor import diagnoses

    registry = diagnoses.load_all()
    if list_ or code is None:
        table = Table(title="diagnosis codes")
        table.add_column("code")
        table.add_column("severity")
        table.add_column("title")
        for c, d in sorted(registry.items()):
            table.add_row(c, d.severity, d.title)
        out.print(table)
        return
    diag = registry.get(code)
    if diag is None:
        import difflib
        close = difflib.get_close_matches(code, registry, n=3)
        fail(f"no diagnosis code {code!r}." + (f" Did you mean {', '.join(close)}?" if close else "")
             + "\nWhat to do: `nandoctor explain --list` lists every code.")
    typer.echo(diag.page())  # plain text: no re-wrapping of the page


@app.command("probes")
def list_probes():
    """List the probes of the battery, in the order they run."""
    from nandoctor import probes as probe_pkg

    table = Table(title="probes")
    table.add_column("name")
    table.add_column("what it does")
    table.add_column("in default battery")
    for name, p in probe_pkg.load_all().items():
        table.add_row(name, p.title, "yes" if p.default else "no")
    out.print(table)


@app.command()
def version():
    """Print the version."""
    from nandoctor import __version__
    out.print(f"nandoctor {__version__}")


def main() -> None:
    sys.dont_write_bytecode = True  # importing the user's files leaves no __pycache__ beside them
    try:
        app()
    except SystemExit as exc:  # typer always ends this way: the report is written, only the exit is left
        exit_fast(exc.code)


def exit_fast(code) -> None:
    """Exit with ``code`` once the exit handlers have run and the output is flushed, without tearing the
    interpreter down: freeing torch's modules and objects one by one takes 1-2 s, for nothing."""
    import atexit
    import os

    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # logging.shutdown and the user's own handlers
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken pipe: nothing more to say
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    main()
