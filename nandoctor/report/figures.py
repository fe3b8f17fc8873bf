"""The plots the report step draws from what the report saves, not on the probes' time.

A probe keeps the numbers its plot needs (``ProbeResult.data``) and names the plot (``plots/NAME.png``
in its ``plots``); ``collect`` turns those numbers into plain JSON (``evidence.json``, beside
report.json) and ``draw_all`` draws every plot the report names that it knows how to draw, from
report.json and evidence.json alone. ``nandoctor report`` therefore redraws them from a saved report.

Drawn here: the LR sweep (``lr_sweep``), the overfit run (``overfit``), every cure's before/after
(``treatment-CODE``, from ``treatment.curves`` in report.json), gradient health (``gradients``: the
layer x step heatmap from evidence.json, the depth profile from the metrics), the init comparison
(``init``), the BatchNorm comparison (``bn_freeze``: the variants' curves from evidence.json, their
eval-mode scores from the metrics), the two precisions (``precision``: loss and largest activation per
step), the LR schedule (``schedule``), the train/eval comparison (``train_eval``, from its metrics alone)
and the data scan's three plots (``data-sample-loss`` from evidence.json, ``data-classes`` and
``data-features`` from its metrics). No probe draws while it runs.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from nandoctor.records import jsonable

EVIDENCE_FILE = "evidence.json"
EVIDENCE_VERSION = 1
MAX_CURVE = 600          # points kept of a loss curve (thinned evenly, the last one always kept)
MAX_LAYERS = 8           # layers kept of the per-layer gradient norms (the largest)
MAX_SAMPLES = 1500       # rows kept of the per-sample losses (a uniform sample already)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,120}")
DRAWN = ("lr_sweep", "overfit", "gradients", "init", "bn_freeze", "precision", "schedule", "train_eval",
         "data-sample-loss", "data-classes", "data-features")  # and ``treatment-*``


# ------------------------------------------------------------------------------ the evidence beside

def _thin(values: list) -> tuple[list[int], list]:
    """(steps, values), at most ``MAX_CURVE`` of them, evenly spread, the last kept."""
    n = len(values)
    if n <= MAX_CURVE:
        return list(range(n)), list(values)
    idx = sorted({int(i * n / MAX_CURVE) for i in range(MAX_CURVE)} | {n - 1})
    return idx, [values[i] for i in idx]


def _finite_max(values) -> float:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return max(vals) if vals else 0.0


def collect(report) -> dict:
    """The numbers behind the plots drawn here, from the probes' in-memory data, as plain JSON."""
    probes: dict = {}
    evidence = getattr(report, "evidence", None) or {}
    for name, fn in (("lr_sweep", _lr_sweep), ("overfit", _overfit), ("gradients", _gradients), ("init", _init),
                     ("bn_freeze", _bn_freeze), ("precision", _precision), ("schedule", _schedule),
                     ("data_scan", _data_scan)):
        result = evidence.get(name) if hasattr(evidence, "get") else None
        data = getattr(result, "data", None)
        if not data:
            continue
        try:
            kept = fn(data)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            kept = None  # a probe that keeps its numbers differently: its plot is simply not drawn
        if kept:
            probes[name] = jsonable(kept)
    return {"tool": "nandoctor", "evidence": EVIDENCE_VERSION, "probes": probes}


def _lr_sweep(data: dict) -> dict | None:
    lrs, losses = list(data.get("lrs") or []), list(data.get("losses") or [])
    if not lrs or not losses:
        return None
    return {"lrs": lrs, "losses": losses, "smoothed": list(data.get("smoothed") or losses)}


def _overfit(data: dict) -> dict | None:
    run = data.get("run")
    losses = list(getattr(run, "losses", None) or [])
    if not losses:
        return None
    steps, kept = _thin(losses)
    out = {"steps": steps, "losses": kept}
    norms = getattr(data.get("recorder"), "grad_norms", None) or {}
    if isinstance(norms, dict) and norms:
        top = sorted(norms.items(), key=lambda kv: -_finite_max(kv[1]))[:MAX_LAYERS]
        out["grad_norms"] = {str(k): dict(zip(("steps", "values"), _thin(list(v)))) for k, v in top}
    return out


def _gradients(data: dict) -> dict | None:
    from nandoctor.report.gradplots import heatmap_grid
    rec = data.get("recorder")
    norms = getattr(rec, "grad_norms", None)
    if not norms:
        return None
    rows = [k for k in rec.depth_order() if k in norms]
    grid, width = heatmap_grid(norms, rows)
    return {"rows": rows, "grid": grid, "width": width}


def _init(data: dict) -> dict | None:
    runs = data.get("runs")
    if not isinstance(runs, dict) or not runs:
        return None
    out = {}
    for scheme, run in runs.items():
        steps, losses = _thin(list(getattr(run, "losses", None) or []))
        out[str(scheme)] = {"steps": steps, "losses": losses}
    return {"losses": out}


def _bn_freeze(data: dict) -> dict | None:
    runs = data.get("runs")
    if not isinstance(runs, dict) or not runs:
        return None
    out = {}
    for label, run in runs.items():
        steps, losses = _thin(list(getattr(run, "losses", None) or []))
        out[str(label)] = {"steps": steps, "losses": losses}
    return {"losses": out}


def _precision(data: dict) -> dict | None:
    runs = data.get("runs")
    if not isinstance(runs, dict) or not runs:
        return None
    out = {}
    for label, prun in runs.items():
        run, watch = getattr(prun, "run", None), getattr(prun, "watch", None)
        steps, losses = _thin(list(getattr(run, "losses", None) or []))
        act_steps, act = _thin(list(getattr(watch, "per_step", None) or []))
        out[str(label)] = {"precision": getattr(prun, "precision", str(label)), "steps": steps, "losses": losses,
                           "act_steps": act_steps, "act_max": act}
    return {"runs": out} if any(r["losses"] for r in out.values()) else None


def _schedule(data: dict) -> dict | None:
    lrs = list(data.get("lrs") or [])
    if not lrs:
        return None
    steps, kept = _thin(lrs)
    return {"steps": steps, "lrs": kept}


def _data_scan(data: dict) -> dict | None:
    res = data.get("reservoir")
    rows = getattr(res, "rows", None)
    if rows is None or len(rows) == 0:
        return None
    return {"rows": rows[:MAX_SAMPLES].tolist()}


def write_evidence(evidence: dict, out: Path) -> Path:
    path = Path(out) / EVIDENCE_FILE
    path.write_text(json.dumps(evidence, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def read_evidence(folder: Path) -> dict:
    """evidence.json beside a report, or an empty one (an older report, or a file that is not ours)."""
    try:
        doc = json.loads((Path(folder) / EVIDENCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"probes": {}}
    return doc if isinstance(doc, dict) and isinstance(doc.get("probes"), dict) else {"probes": {}}


# ------------------------------------------------------------------------------------------ drawing

def _f(value) -> float:
    """A report.json number (NaN/Inf as strings) as a float; anything else NaN."""
    if isinstance(value, bool):
        return float("nan")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return float("nan")
    return float("nan")


def _floats(values) -> list[float]:
    return [_f(v) for v in values] if isinstance(values, list) else []


def plot_name(plot_id) -> str | None:
    """``plots/NAME.png`` -> NAME when NAME is a plain file name (never a path out of the folder)."""
    if not isinstance(plot_id, str) or not plot_id.startswith("plots/") or not plot_id.endswith(".png"):
        return None
    name = plot_id[len("plots/"):-len(".png")]
    return name if SAFE_NAME.fullmatch(name) and ".." not in name else None


def named_plots(doc: dict) -> list[str]:
    """Every plot id the report names: the findings', their cures', the probes'."""
    ids: list = []
    for f in doc.get("findings") or []:
        if isinstance(f, dict):
            ids += f.get("plots") or []
            if isinstance(f.get("treatment"), dict):
                ids.append(f["treatment"].get("plot"))
    for r in (doc.get("probes") or {}).values():
        if isinstance(r, dict):
            ids += r.get("plots") or []
    return sorted({p for p in ids if plot_name(p)})


def drawn_here(plot_id: str) -> bool:
    name = plot_name(plot_id)
    return name is not None and (name in DRAWN or name.startswith("treatment-"))


def draw_all(doc: dict, evidence: dict, out: Path) -> list[str]:
    """Draw, into ``out/plots``, every plot the report names and this module draws; return their ids."""
    probes = evidence.get("probes") if isinstance(evidence, dict) else None
    probes = probes if isinstance(probes, dict) else {}
    drawn = []
    for plot_id in named_plots(doc):
        if not drawn_here(plot_id):
            continue
        name = plot_name(plot_id)
        path = Path(out) / "plots" / f"{name}.png"
        if name == "lr_sweep":
            ok = draw_lr_sweep(path, doc, probes.get("lr_sweep"))
        elif name == "overfit":
            ok = draw_overfit(path, doc, probes.get("overfit"))
        elif name == "gradients":
            ok = draw_gradients(path, doc, probes.get("gradients"))
        elif name == "init":
            ok = draw_init(path, doc, probes.get("init"))
        elif name == "bn_freeze":
            ok = draw_bn_freeze(path, doc, probes.get("bn_freeze"))
        elif name == "precision":
            ok = draw_precision(path, doc, probes.get("precision"))
        elif name == "schedule":
            ok = draw_schedule(path, doc, probes.get("schedule"))
        elif name == "train_eval":
            ok = draw_train_eval(path, doc)
        elif name == "data-sample-loss":
            ok = draw_sample_loss(path, doc, probes.get("data_scan"))
        elif name in ("data-classes", "data-features"):
            from nandoctor.report import data_plots
            draw = data_plots.draw_classes if name == "data-classes" else data_plots.draw_features
            ok = draw(path, _metrics(doc, "data_scan"))
        else:
            ok = draw_treatment(path, doc, name[len("treatment-"):])
        if ok:
            drawn.append(plot_id)
    return drawn


def _metrics(doc: dict, probe: str) -> dict:
    r = (doc.get("probes") or {}).get(probe)
    m = r.get("metrics") if isinstance(r, dict) else None
    return m if isinstance(m, dict) else {}


def _opt(value) -> float | None:
    v = _f(value)
    return v if math.isfinite(v) and v > 0 else None


def draw_lr_sweep(path: Path, doc: dict, ev) -> bool:
    if not isinstance(ev, dict) or not ev.get("lrs"):
        return False
    from nandoctor.report import lr_plots, plots
    m = _metrics(doc, "lr_sweep")
    user = _opt(m.get("user_lr")) or _opt((doc.get("patient") or {}).get("lr"))
    suggestions = {str(k): _opt(v) for k, v in (m.get("suggestions") or {}).items()} \
        if isinstance(m.get("suggestions"), dict) else {}
    with plots.figure(path) as ax:
        lr_plots.lr_sweep_curve(ax, _floats(ev["lrs"]), _floats(ev.get("losses")), _floats(ev.get("smoothed")),
                                user_lr=user, suggested_lr=_opt(m.get("suggested_lr")),
                                divergence_lr=_opt(m.get("divergence_lr")),
                                suggestions={k: v for k, v in suggestions.items() if v})
    return True


def draw_overfit(path: Path, doc: dict, ev) -> bool:
    if not isinstance(ev, dict) or not ev.get("losses"):
        return False
    from nandoctor.report import plots
    lr_value = _opt(_metrics(doc, "overfit").get("lr")) or _opt((doc.get("patient") or {}).get("lr"))
    title = f"overfit one batch (lr={lr_value:g})" if lr_value else "overfit one batch"
    norms = ev.get("grad_norms") if isinstance(ev.get("grad_norms"), dict) else {}
    with plots.figure(path, ncols=2 if norms else 1) as axes:
        ax1 = axes[0] if norms else axes
        plots.loss_curve(ax1, _floats(ev["losses"]), title=title, steps=_floats(ev.get("steps")) or None)
        if norms:
            plots.grad_norm_lines(axes[1], {k: _floats(v.get("values")) for k, v in norms.items() if isinstance(v, dict)},
                                  steps={k: _floats(v.get("steps")) for k, v in norms.items() if isinstance(v, dict)})
    return True


def _strs(values) -> list[str]:
    return [str(v) for v in values] if isinstance(values, list) else []


def draw_gradients(path: Path, doc: dict, ev) -> bool:
    if not isinstance(ev, dict) or not isinstance(ev.get("grid"), list) or not isinstance(ev.get("width"), int):
        return False
    from nandoctor.report import gradplots, plots
    m = _metrics(doc, "gradients")
    rows, grid = _strs(ev.get("rows")), [_floats(r) for r in ev["grid"]]
    with plots.figure(path, ncols=2) as (ax1, ax2):
        gradplots.grad_heatmap(ax1, {}, rows, grid=grid, width=ev["width"])
        gradplots.depth_profile(ax2, {"median over early steps": _floats(m.get("depth_profile"))},
                                _strs(m.get("layers")))
    return True


def draw_init(path: Path, doc: dict, ev) -> bool:
    profiles = _metrics(doc, "init").get("profiles")
    if not isinstance(ev, dict) or not isinstance(ev.get("losses"), dict) or not isinstance(profiles, dict) \
            or not profiles or not all(isinstance(p, dict) for p in profiles.values()):
        return False
    from nandoctor.report import gradplots, plots
    layers = _strs(next(iter(profiles.values())).get("layers"))
    runs = {k: v for k, v in ev["losses"].items() if isinstance(v, dict)}
    with plots.figure(path, ncols=3, size=(4.4, 3.4)) as (ax1, ax2, ax3):
        plots.compare_curves(ax1, {k: _floats(v.get("losses")) for k, v in runs.items()}, title="loss by init scheme",
                             steps={k: _floats(v.get("steps")) for k, v in runs.items()})
        gradplots.depth_profile(ax2, {s: _floats(p.get("activation_std")) for s, p in profiles.items()}, layers,
                                ylabel="activation std", title="activations by depth at init")
        gradplots.depth_profile(ax3, {s: _floats(p.get("grad_rms")) for s, p in profiles.items()}, layers,
                                ylabel="RMS gradient", title="gradients by depth at init")
    return True


def draw_bn_freeze(path: Path, doc: dict, ev) -> bool:
    if not isinstance(ev, dict) or not isinstance(ev.get("losses"), dict) or not ev["losses"]:
        return False
    from nandoctor.report import gradplots, plots
    variants = _metrics(doc, "bn_freeze").get("variants")
    variants = variants if isinstance(variants, dict) else {}
    runs = {k: v for k, v in ev["losses"].items() if isinstance(v, dict)}
    scores = {k: _f((variants.get(k) or {}).get("eval_loss")) if isinstance(variants.get(k), dict) else math.nan
              for k in runs}
    with plots.figure(path, ncols=2) as (ax1, ax2):
        plots.compare_curves(ax1, {k: _floats(v.get("losses")) for k, v in runs.items()},
                             title="training loss (own batches)", steps={k: _floats(v.get("steps")) for k, v in runs.items()})
        gradplots.bar_compare(ax2, scores, ylabel="eval-mode loss", title="held-out batch, eval mode, after training")
    return True


def draw_precision(path: Path, doc: dict, ev) -> bool:
    runs = ev.get("runs") if isinstance(ev, dict) else None
    if not isinstance(runs, dict) or not runs:
        return False
    from nandoctor.patient import FP16_MAX
    from nandoctor.report import plots, setup_plots
    m = _metrics(doc, "precision")
    limit = _opt(m.get("fp16_max")) or FP16_MAX
    label = {k: (f"{v.get('precision')} as configured" if k == "as_configured" else str(v.get("precision") or k))
             for k, v in runs.items() if isinstance(v, dict)}
    overflows = {}
    for key, name in label.items():
        over = (m.get(key) or {}).get("overflow") if isinstance(m.get(key), dict) else None
        if isinstance(over, dict) and isinstance(over.get("step"), int):
            overflows[name] = (over["step"], str(over.get("module")))
    with plots.figure(path, ncols=2) as (ax1, ax2):
        plots.compare_curves(ax1, {label[k]: _floats(runs[k].get("losses")) for k in label},
                             title="the same training, two precisions",
                             steps={label[k]: _floats(runs[k].get("steps")) for k in label})
        setup_plots.activation_range(ax2, {label[k]: _floats(runs[k].get("act_max")) for k in label}, limit=limit,
                                     overflows=overflows or None,
                                     steps={label[k]: _floats(runs[k].get("act_steps")) for k in label})
    return True


def draw_schedule(path: Path, doc: dict, ev) -> bool:
    if not isinstance(ev, dict) or not ev.get("lrs"):
        return False
    from nandoctor.report import plots, setup_plots
    m = _metrics(doc, "schedule")
    with plots.figure(path) as ax:
        setup_plots.lr_schedule(ax, _floats(ev["lrs"]), configured_lr=_opt(m.get("configured_lr")),
                                divergence_lr=_opt(m.get("divergence_lr")), steps=_floats(ev.get("steps")) or None,
                                title=f"{m.get('scheduler')} stepped per {m.get('interval')}")
    return True


def draw_train_eval(path: Path, doc: dict) -> bool:
    m = _metrics(doc, "train_eval")
    train_loss = _f(m.get("train_mode_loss"))
    if not math.isfinite(train_loss):
        return False
    from nandoctor.report import gradplots, plots
    with plots.figure(path, size=(4.5, 3.5)) as ax:
        gradplots.bar_compare(ax, {"train()": train_loss, "eval()": _f(m.get("eval_mode_loss"))}, ylabel="loss",
                              title="the same batch in both modes")
    return True


def draw_treatment(path: Path, doc: dict, code: str) -> bool:
    f = next((f for f in doc.get("findings") or [] if isinstance(f, dict) and f.get("code") == code), None)
    t = f.get("treatment") if f else None
    curves = t.get("curves") if isinstance(t, dict) else None
    if not isinstance(curves, dict) or not (curves.get("before") or curves.get("after")):
        return False
    from nandoctor.report import plots
    status = f.get("status") or ("confirmed" if t.get("cured") else "refuted")
    first = f"cured of {t.get('on_cured_copy')}" if isinstance(t.get("on_cured_copy"), str) else "as configured"
    labelled = {first: _floats(curves.get("before")),
                f"with the cure: {str(t.get('tried'))[:60]}": _floats(curves.get("after"))}
    with plots.figure(path) as ax:
        plots.compare_curves(ax, labelled, title=f"{code}: {status}")
    return True


def draw_sample_loss(path: Path, doc: dict, ev) -> bool:
    if not isinstance(ev, dict) or not ev.get("rows"):
        return False
    import numpy as np

    from nandoctor.report import data_plots
    rows = np.array([_floats(r) for r in ev["rows"] if isinstance(r, list)], dtype=float)
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] < 3:
        return False
    return data_plots.draw_sample_loss(path, _metrics(doc, "data_scan"), rows)
