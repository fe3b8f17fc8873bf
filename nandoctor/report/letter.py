"""The doctor's letter, as data: what report.md and report.html say, built from report.json alone.

``letter(doc)`` reads a report document (the dict of report.json) and returns plain strings, numbers and
plot ids, in reading order: the verdict sentence; each top-level finding (``explained_by: null``) with
what we saw, the plot that shows it, the fix (a snippet in the user's own names where it can be), the
cure tried and its before/after table, the symptoms folded under it and what is still wrong after the
cure; then the appendix (every probe and its plan, every finding's evidence in readable units). The
Markdown and HTML writers only lay this out, so both say the same thing, and a report re-rendered from
its report.json says what the first rendering said.

Nothing here trusts the document's types: a report.json edited by hand (or a hostile one) renders,
with what it holds shown as text.
"""

from __future__ import annotations

import math
import re

STATUS_WORDS = {"confirmed": "confirmed by its cure", "refuted": "refuted: its cure was tried and did not help",
                "suspected": "suspected", "inconclusive": "inconclusive: its cure could not be judged in time"}
NONNEGATIVE_LOSSES = {"NLLLoss", "CrossEntropyLoss", "BCELoss", "BCEWithLogitsLoss", "MSELoss", "L1Loss",
                      "SmoothL1Loss", "HuberLoss", "KLDivLoss", "nll_loss", "cross_entropy", "mse_loss"}
STUCK_DROP = 0.05        # the overfit run's loss fell by less than this share of its start: "barely moves"
EXPLODES = 10.0          # ... ended above this many times its start: "explodes"
CURE_ROWS = ("initial_loss", "final_loss", "tail_loss", "start_loss", "end_loss", "end_loss_at_init",
             "relative_drop", "steps", "accuracy", "nonfinite_step", "lr")   # the cure table's first rows
LABELS = {"initial_loss": "initial loss", "final_loss": "final loss", "tail_loss": "loss over the last steps",
          "start_loss": "start loss", "end_loss": "end loss", "end_loss_at_init": "end loss of the untrained model",
          "relative_drop": "loss drop (share of the start)", "steps": "steps", "accuracy": "batch accuracy",
          "nonfinite_step": "first non-finite step", "lr": "learning rate", "error": "error"}
MAX_LIST = 12            # list items shown in a table cell
MAX_CELL = 400           # characters in a table cell


# ---------------------------------------------------------------------------------------------- units

def _float(value) -> float | None:
    """A number from report.json (where NaN/Inf are the strings "nan", "inf", "-inf"), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def num(value) -> str:
    """A number as people read it: 4 significant digits, integers whole, NaN/Inf named; "—" for none."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return f"{value:.4g}"
    if value in ("nan", "inf", "-inf"):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[value]
    return text(value)


def pct(value) -> str:
    v = _float(value)
    if v is None or not math.isfinite(v):
        return num(value)
    return f"{100 * v:.1f}%" if abs(v) < 0.1 else f"{100 * v:.0f}%"


def lr(value) -> str:
    v = _float(value)
    return f"{v:.2g}" if v is not None and math.isfinite(v) else num(value)


def text(value) -> str:
    """Any value as one line of text (the renderers escape it)."""
    if isinstance(value, str):
        s = value
    elif isinstance(value, (list, tuple)):
        shown = ", ".join(readable(v) for v in list(value)[:MAX_LIST])
        s = shown + (f", … ({len(value)} in all)" if len(value) > MAX_LIST else "")
    elif isinstance(value, dict):
        s = "; ".join(f"{k}: {readable(v)}" for k, v in list(value.items())[:MAX_LIST])
        s += f"; … ({len(value)} in all)" if len(value) > MAX_LIST else ""
    else:
        s = str(value)
    s = " ".join(s.split())
    return s if len(s) <= MAX_CELL else s[:MAX_CELL - 1] + "…"


def readable(value, key: str = "") -> str:
    """A value in the units its name says: shares and accuracies as percentages, LRs short, seconds with s."""
    k = key.lower()
    if _float(value) is not None and not isinstance(value, bool):
        if "share" in k or k in ("accuracy", "relative_drop") or k.endswith("_drop") or k.endswith("drop"):
            return pct(value)
        if k == "lr" or k.endswith("_lr") or k.startswith("lr_"):
            return lr(value)
        if "seconds" in k:
            return f"{num(value)} s"
        return num(value)
    return num(value) if not isinstance(value, (list, tuple, dict)) else text(value)


def label(key) -> str:
    key = str(key)
    return LABELS.get(key, key.replace("_", " "))


def rows_of(mapping, prefix: str = "") -> list[tuple[str, str]]:
    """A mapping as (name, readable value) rows; nested mappings one level down as ``outer · inner``."""
    out: list[tuple[str, str]] = []
    if not isinstance(mapping, dict):
        return [("value", text(mapping))] if mapping not in (None, "", [], {}) else []
    for k, v in mapping.items():
        name = f"{prefix}{label(k)}"
        if isinstance(v, dict) and v and not prefix and len(v) <= 16:
            out.extend(rows_of(v, prefix=f"{name} · "))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            out.append((name, " | ".join(", ".join(f"{label(a)} {readable(b, str(a))}" for a, b in x.items())
                                         for x in v[:6]) + (f" | … ({len(v)} in all)" if len(v) > 6 else "")))
        else:
            out.append((name, readable(v, str(k))))
    return [(n, v if len(v) <= MAX_CELL else v[:MAX_CELL - 1] + "…") for n, v in out]


# ------------------------------------------------------------------------------------------ the parts

def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _str(value, default: str = "") -> str:
    return value if isinstance(value, str) else (default if value is None else str(value))


def metrics(doc: dict, probe: str) -> dict:
    return _dict(_dict(_dict(doc.get("probes")).get(probe)).get("metrics"))


def findings(doc: dict) -> list[dict]:
    return [f for f in _list(doc.get("findings")) if isinstance(f, dict)]


def top_level(doc: dict) -> list[dict]:
    """The findings the letter leads with: those no other finding explains, in rank order."""
    return [f for f in findings(doc) if not f.get("explained_by")]


def status_of(f: dict) -> str:
    status = _str(f.get("status"), "suspected")
    return status if status in STATUS_WORDS else "suspected"


def _lower_first(s: str) -> str:
    """``The model ...`` -> ``the model ...``; ``NLLLoss ...`` stays (a name, not a capital)."""
    return s[0].lower() + s[1:] if len(s) > 1 and s[0].isupper() and s[1].islower() else s


def _first_clause(fix: str) -> str:
    """The fix's first sentence, without its final full stop."""
    first = re.split(r"(?<=[a-z0-9)\]`'])\.\s|;\s", fix.strip(), maxsplit=1)[0].strip()
    return first.rstrip(".")


def loss_symptom(doc: dict, f: dict) -> str | None:
    """What the loss visibly does, from the overfit run and the LR sweep: non-finite, negative, exploding, stuck."""
    ov, sw = metrics(doc, "overfit"), metrics(doc, "lr_sweep")
    ev = _dict(f.get("evidence"))
    step = ov.get("nonfinite_step", ev.get("overfit_nonfinite_step"))
    if isinstance(step, int) and not isinstance(step, bool):
        kind = "NaN" if _str(ov.get("final_loss", ev.get("overfit_final_loss"))) == "nan" else "non-finite"
        return f"Your loss turns {kind} at step {step}"
    loss_name = _str(_dict(doc.get("patient")).get("loss"))
    checks = [_dict(c).get("end_loss") for c in _dict(sw.get("check")).values()]  # the LR check's runs
    lows = [_float(v) for v in (ov.get("min_loss"), sw.get("best_loss"), ev.get("overfit_min_loss"),
                                _dict(ev.get("check_suggested")).get("end_loss"), *checks)]
    if loss_name in NONNEGATIVE_LOSSES and any(v is not None and v < 0 for v in lows):
        return "Your loss goes negative"
    first, last = _float(ov.get("initial_loss")), _float(ov.get("final_loss"))
    if first is not None and last is not None and math.isfinite(first) and math.isfinite(last) and first > 0:
        if last > EXPLODES * first:
            return "Your loss explodes"
        if (first - last) / first < STUCK_DROP:
            return "Your loss barely moves"
    return None


def status_sentence(f: dict) -> str:
    t = _dict(f.get("treatment"))
    tried = _str(t.get("tried"))
    status = status_of(f)
    if status == "confirmed":
        return f"Confirmed: with it the loss behaves (tried on a copy: {tried})." if tried else \
            "Confirmed: with it the loss behaves."
    if status == "refuted":
        return f"Not confirmed: {tried or 'its cure'} did not help on a copy, so the cause may lie further down."
    if status == "inconclusive":
        return f"Not yet judged: {_str(t.get('note')) or 'the cure could not be judged within the budget'}."
    note = _str(f.get("treatment_note")).removeprefix("not tried: ").rstrip(".")
    if note:
        return f"Suspected: its cure was not tried ({note})."
    return "Suspected: there is no cure to try on a copy, so this is what the evidence says."


def healthy_sentence(doc: dict) -> str:
    """What "no finding" means for this run: every probe ran, or only those that did say so."""
    probes = _dict(doc.get("probes"))
    unjudged = [n for n, r in probes.items() if _dict(r).get("status") == "inconclusive"]
    ran = [n for n, r in probes.items() if _dict(r).get("status") == "ok"]
    if not unjudged:
        return f"Your set-up looks healthy: the {len(ran)} probe(s) that ran found nothing wrong with it."
    return (f"No problem found by the probes that ran; {', '.join(unjudged)} could not reach the steps their "
            f"verdicts need in this budget, so what they check is not judged.")


def verdict_sentence(doc: dict) -> str:
    """The letter in one sentence: the root cause and its fix, then whether a cure confirmed it."""
    serious = [f for f in top_level(doc) if f.get("severity") in ("critical", "warning")]
    if not serious:
        notes = len(top_level(doc))
        return healthy_sentence(doc) + (f" {notes} note(s) below." if notes else "")
    f = serious[0]
    title = _str(f.get("title")).strip().rstrip(".") or _str(f.get("code"))
    fix = _lower_first(_first_clause(_str(f.get("fix"))).split(", or ")[0])
    symptom = loss_symptom(doc, f)
    if symptom and symptom.split()[-1].lower() in title.lower():  # the title already says what the loss does
        symptom = None
    lead = f"{symptom} because {_lower_first(title)}" if symptom else title[:1].upper() + title[1:]
    return f"{lead}: {fix}. {status_sentence(f)}" if fix else f"{lead}. {status_sentence(f)}"


# ------------------------------------------------------------------------------ what we saw, the fix

def _last(ev: dict) -> tuple[str, str]:
    m = _dict(ev.get("last_module"))
    return _str(m.get("name")), _str(m.get("type"))


def saw(doc: dict, f: dict) -> str:
    """One sentence with the numbers: layer names, sample indices, loss values from the finding's evidence."""
    code, ev = _str(f.get("code")), _dict(f.get("evidence"))
    loss = _str(ev.get("loss") or _dict(doc.get("patient")).get("loss"), "the loss")
    if code in ("nll-on-raw-logits", "double-softmax", "bounded-output-activation", "probability-loss-on-logits"):
        name, kind = _last(ev)
        where = f"`{name}` ({kind})" if name else "the model's last layer"
        s = (f"The outputs of {where} range from {num(ev.get('outputs_min'))} to {num(ev.get('outputs_max'))} "
             f"and go straight into {loss}, which wants {'log-probabilities' if 'nll' in code else 'other values'}")
        if ev.get("overfit_initial_loss") is not None:
            s += (f"; overfitting one batch took the loss from {num(ev.get('overfit_initial_loss'))} to "
                  f"{num(ev.get('overfit_min_loss'))}")
        return s + "."
    if code in ("lr-too-low", "lr-too-high"):
        cu, cs = _dict(ev.get("check_user")), _dict(ev.get("check_suggested"))
        s = f"Your learning rate is {lr(ev.get('user_lr'))}; the LR sweep suggests {lr(ev.get('suggested_lr'))}"
        if ev.get("divergence_lr") is not None:
            s += f" and diverges from {lr(ev.get('divergence_lr'))}"
        if cu and cs:
            s += (f"; from the same start, {num(cu.get('end_loss'))} is where your LR ends and "
                  f"{num(cs.get('end_loss'))} where the suggestion ends")
        return s + "."
    if code == "class-imbalance":
        counts = ", ".join(f"class {k}: {num(v)}" for k, v in list(_dict(ev.get("samples_per_class")).items())[:10])
        return f"Samples per class in {num(ev.get('samples_scanned'))} scanned: {counts} (ratio {num(ev.get('ratio'))})."
    if code == "cannot-overfit-batch":
        return (f"On one batch of {num(ev.get('batch_size'))}, {num(ev.get('steps'))} steps at LR {lr(ev.get('lr'))} "
                f"took the loss from {num(ev.get('initial_loss'))} to {num(ev.get('final_loss'))} "
                f"(a {pct(ev.get('relative_drop'))} drop), accuracy {pct(ev.get('accuracy'))}.")
    if code == "exploding-gradients":
        s = (f"The gradient norm grew from {num(ev.get('grad_norm_initial'))} to {num(ev.get('grad_norm_peak'))} "
             f"({num(ev.get('growth'))}x)")
        if ev.get("nonfinite_grad_step") is not None:
            s += f" and turned non-finite at step {num(ev.get('nonfinite_grad_step'))} in layer `{_str(ev.get('nonfinite_grad_layer'))}`"
        return s + f"; the loss went from {num(ev.get('initial_loss'))} to {num(ev.get('final_loss'))}."
    if code == "sample-loss-outlier":
        worst = [w for w in _list(ev.get("worst_at_init")) if isinstance(w, dict)][:5]
        if worst:
            return ("The samples with the highest loss at initialisation: " +
                    ", ".join(f"#{num(w.get('index'))} (loss {num(w.get('loss'))}, {num(w.get('ratio'))}x the median)"
                              for w in worst) + ".")
    if code == "data-nonfinite":
        return (f"{num(ev.get('samples_with_nonfinite'))} of {num(ev.get('samples_scanned'))} samples hold NaN/Inf, "
                f"e.g. sample(s) {text(_list(ev.get('sample_indices'))[:8])}.")
    if code == "nonfinite-source":
        return (f"The first NaN/Inf appears at step {num(ev.get('step'))} in `{_str(ev.get('op'))}` "
                f"({_str(ev.get('module'))}, {_str(ev.get('phase'))}) at {_str(ev.get('where'), 'an unknown line')}.")
    # any other finding: its first few numbers and names
    parts = [f"{label(k)} {readable(v, k)}" for k, v in ev.items()
             if isinstance(v, (int, float, str)) and not isinstance(v, bool) and len(str(v)) < 60][:4]
    return ("We measured " + ", ".join(parts) + ".") if parts else _str(f.get("title"))


def snippet(doc: dict, f: dict) -> dict | None:
    """The fix as code in the user's own names (their model class, last layer, loss, LR), where it can be."""
    code, ev = _str(f.get("code")), _dict(f.get("evidence"))
    facts = _dict(doc.get("patient"))
    model = _str(facts.get("model"), "Net")
    loss = _str(ev.get("loss") or facts.get("loss"), "NLLLoss")
    name, _ = _last(ev)
    if code == "nll-on-raw-logits":
        layer = f"self.{name}" if name.isidentifier() else (f"the output of {name}" if name else "the last layer")
        call = f"{layer}(...)" if name.isidentifier() else "out"
        return {"lang": "python", "code": (
            f"# in {model}.forward: return log-probabilities, not the raw scores of {name or 'the last layer'}\n"
            f"return torch.log_softmax({call}, dim=1)\n\n"
            f"# or keep {model} as it is and give the raw scores to the loss that expects them (config.yaml):\n"
            f"# loss:\n#   _target_: torch.nn.CrossEntropyLoss")}
    if code == "double-softmax" and name:
        return {"lang": "python", "code": f"# in {model}: drop the final `{name}`; {loss} applies it itself\n"
                                          f"return logits   # the output before {name}"}
    if code in ("lr-too-low", "lr-too-high") and ev.get("suggested_lr") is not None:
        return {"lang": "yaml", "code": f"optimizer:   # {_str(ev.get('optimizer') or facts.get('optimizer'), 'yours')}, "
                                        f"the rest as you have it\n  lr: {lr(ev.get('suggested_lr'))}   # was {lr(ev.get('user_lr'))}"}
    if code == "exploding-gradients":
        return {"lang": "yaml", "code": "grad_clip: 1.0   # clip_grad_norm_(model.parameters(), 1.0) after backward()"}
    if code == "class-imbalance":
        counts = _dict(ev.get("samples_per_class"))
        try:
            ordered = [float(counts[k]) for k in sorted(counts, key=int)]
        except (TypeError, ValueError):
            return None
        if not ordered or len(ordered) > 20:
            return None
        arg = "pos_weight" if loss == "BCEWithLogitsLoss" else "weight"
        return {"lang": "python", "code": (f"counts = torch.tensor([{', '.join(num(c) for c in ordered)}])   # samples per class\n"
                                           f"loss_fn = nn.{loss if loss.isidentifier() else 'CrossEntropyLoss'}"
                                           f"({arg}=counts.sum() / (len(counts) * counts))")}
    if code == "missing-zero-grad":
        return {"lang": "python", "code": "def step(model, batch, loss_fn, optimizer):\n    optimizer.zero_grad()   # first\n"
                                          "    ...\n    loss.backward()\n    optimizer.step()"}
    return None


def cure(f: dict) -> dict | None:
    """The cure that was tried: what, the verdict, the rule, and before/after as rows of a small table."""
    t = f.get("treatment")
    if not isinstance(t, dict):
        return None
    before, after = _dict(t.get("before")), _dict(t.get("after"))
    keys = [k for k in CURE_ROWS if k in before or k in after]
    keys += [k for k in list(before) + [k for k in after if k not in before] if k not in keys and k != "error"]
    rows = [(label(k), readable(before.get(k), k), readable(after.get(k), k)) for k in keys
            if before.get(k) is not None or after.get(k) is not None]
    errors = [(label("error"), text(before.get("error") or "—"), text(after.get("error") or "—"))]
    status = status_of(f)
    return {"tried": _str(t.get("tried")), "status": status,
            "verdict": {"confirmed": "cured: the cure removed the symptom", "refuted": "not cured",
                        "inconclusive": "not judged"}.get(status, "cured" if t.get("cured") else "not cured"),
            "judged_by": _str(t.get("judged_by")), "rows": rows + (errors if any(e != "—" for e in errors[0][1:]) else []),
            "note": _str(t.get("note")), "plot": _str(t.get("plot")) or None,
            # a cure tried on the copy already cured of another finding: its control is that copy
            "columns": ((f"cured of {_str(t.get('on_cured_copy'))}", "and with this cure") if t.get("on_cured_copy")
                        else ("as configured", "with the cure")),
            "attempts": [(_str(a.get("tried")), "cured" if a.get("cured") else "not cured")
                         for a in _list(t.get("attempts")) if isinstance(a, dict)]}


def remaining(doc: dict, f: dict) -> dict | None:
    """What is still wrong on the copy cured of this cause (the pipeline checks the top cause only)."""
    t = _dict(f.get("treatment"))
    if "remaining" not in t and not t.get("remaining_note"):
        return None
    titles = {g.get("code"): _str(g.get("title")) for g in findings(doc)}
    status = _dict(t.get("remaining_status"))
    items = [(_str(c), _str(status.get(c), "?"), titles.get(c, "")) for c in _list(t.get("remaining"))]
    return {"codes": items, "note": _str(t.get("remaining_note"))}


def finding_view(doc: dict, f: dict, n: int) -> dict:
    code = _str(f.get("code"))
    plots = [p for p in _list(f.get("plots")) if isinstance(p, str)]
    c = cure(f)
    folded = [{"code": _str(g.get("code")), "title": _str(g.get("title")), "status": status_of(g),
               "severity": _str(g.get("severity"))} for g in findings(doc) if g.get("explained_by") == f.get("code")]
    return {"n": n, "code": code, "severity": _str(f.get("severity"), "info"), "status": status_of(f),
            "status_words": STATUS_WORDS[status_of(f)], "title": _str(f.get("title")), "saw": saw(doc, f),
            "plot": next((p for p in plots if not c or p != c.get("plot")), None), "fix": _str(f.get("fix")),
            "snippet": snippet(doc, f), "cure": c, "treatment_note": _str(f.get("treatment_note")),
            "folded": folded, "remaining": remaining(doc, f), "after_cure": _str(f.get("after_cure")),
            "confidence": num(_float(f.get("confidence")))}


# ---------------------------------------------------------------------------------------- the appendix

def probe_views(doc: dict) -> list[dict]:
    plan = _dict(doc.get("plan"))
    planned = _dict(_dict(plan.get("steps")).get("steps"))
    views = []
    for name, r in _dict(doc.get("probes")).items():
        r = _dict(r)
        entry = _dict(_dict(plan.get("probes")).get(name))
        facts = []
        if entry.get("seconds_allowed") is not None:
            facts.append(f"{num(_float(entry.get('seconds_used')))} s used of {num(_float(entry.get('seconds_allowed')))} s allowed")
        steps = entry.get("planned_steps", planned.get(name))
        if steps is not None:
            facts.append(f"{num(steps)} steps planned" + (f" (at least {num(entry['min_steps'])})"
                                                          if entry.get("min_steps") is not None else ""))
        err = _dict(r.get("error"))
        m = {k: v for k, v in _dict(r.get("metrics")).items() if v is not None and k not in ("summary", "warnings")}
        views.append({"name": _str(name), "status": _str(r.get("status"), "?"),
                      "seconds": num(_float(r.get("seconds"))), "plan": "; ".join(facts),
                      "reason": _str(r.get("reason") or entry.get("inconclusive")),
                      "error": f"{_str(err.get('type'))}: {_str(err.get('message'))}" + (
                          f" ({_str(err.get('where'))})" if err.get("where") else "") if err else "",
                      "summary": _str(_dict(r.get("metrics")).get("summary")),
                      "warnings": [text(w) for w in _list(_dict(r.get("metrics")).get("warnings"))][:5],
                      "plots": [p for p in _list(r.get("plots")) if isinstance(p, str)], "metrics": rows_of(m)})
    return views


def letter(doc: dict) -> dict:
    """Everything the letter says, in reading order (see the module's docstring)."""
    facts = _dict(doc.get("patient"))
    plan = _dict(doc.get("plan"))
    top = top_level(doc)
    elapsed = _float(doc.get("elapsed_seconds"))
    patient = (f"model {_str(facts.get('model'), '?')} ({num(facts.get('parameters'))} parameters), "
               f"loss {_str(facts.get('loss'), '?')}, optimizer {_str(facts.get('optimizer'), '?')} "
               f"at LR {lr(facts.get('lr'))}, batch size {num(facts.get('batch_size'))}")
    run = (f"{num(elapsed)} s of a {num(_float(plan.get('budget_seconds')) or plan.get('budget_seconds'))} s budget"
           if elapsed is not None else "")
    notes = []
    if doc.get("interrupted") is True:
        notes.append("Interrupted: this is a partial report.")
    if plan.get("note"):
        notes.append(f"Inconclusive: {_str(plan.get('note'))}.".replace("..", "."))
    if facts.get("device_note"):
        notes.append(f"Device: {_str(facts.get('device_note'))}")
    shown = {p for f in findings(doc) for p in _list(f.get("plots"))}
    return {"verdict": _str(doc.get("verdict"), "?"), "sentence": verdict_sentence(doc),
            "config": _str(doc.get("config")), "version": _str(doc.get("version")), "patient": patient, "run": run,
            "notes": notes, "findings": [finding_view(doc, f, i) for i, f in enumerate(top, 1)],
            "probes": probe_views(doc), "shown_plots": sorted(p for p in shown if isinstance(p, str)),
            "evidence": [{"code": _str(f.get("code")), "title": _str(f.get("title")), "status": status_of(f),
                          "explained_by": _str(f.get("explained_by")), "rows": rows_of(_dict(f.get("evidence"))),
                          "probes": ", ".join(_str(p) for p in _list(f.get("probes")))} for f in findings(doc)],
            "not_evaluated": [{"code": _str(_dict(n).get("code")), "reason": text(
                {k: v for k, v in _dict(n).items() if k != "code"})} for n in _list(doc.get("not_evaluated"))]}
