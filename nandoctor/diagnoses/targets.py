"""target-out-of-range (labels the loss cannot take) and class-imbalance (a class far rarer than the others)."""

from __future__ import annotations

import math
import re

from nandoctor.diagnoses import Diagnosis
from nandoctor.diagnoses.data_common import LABEL_ERROR_PATTERNS, LOSS_FILES, SCAN, SHOWN, coverage, plot, scan
from nandoctor.records import Evidence
from nandoctor.patient import split_batch
from nandoctor.treatments import Cure, judges  # beats_control by default: a crash is cured when it then trains


def label_error(error: dict | None) -> str | None:
    """``range`` / ``dtype`` when an exception record is a loss refusing its targets, else None."""
    if not error or error.get("internal"):
        return None
    message = error.get("message") or ""
    for pattern, kind in LABEL_ERROR_PATTERNS:
        if re.search(pattern, message):
            return kind
    frame = (error.get("last_frame") or "").replace("\\", "/")
    if error.get("type") == "IndexError" and ("target" in message.lower() or any(f in frame for f in LOSS_FILES)):
        return "range"
    return None


def crashes(ev: Evidence) -> list[tuple[str, str, dict]]:
    """(probe, kind, error) for every probe whose run died on the targets, the data scan's loss errors included."""
    found = []
    for name, r in ev.items():
        kind = label_error(r.error)
        if kind:
            found.append((name, kind, r.error))
        if name == SCAN and r.ok:
            loss_error = (r.metrics.get("loss") or {}).get("error")
            kind = label_error(loss_error)
            if kind:
                found.append((name, kind, loss_error))
            for e in (r.metrics.get("load_errors") or {}).get("first", []):
                kind = label_error(e) if e.get("stage") == "loss" else None
                if kind:
                    found.append((name, kind, e))
    return found


class TargetOutOfRange(Diagnosis):
    observed = True   # seen in the set-up itself
    code = "target-out-of-range"
    title = "Labels the loss cannot take (out of range or of the wrong dtype)"
    severity = "critical"
    role = "cause"
    requires = ()            # reads the data scan when it ran, and the crash of any probe
    accepts_failed = True
    explains = ("training-crashed", "cannot-overfit-batch", "sample-loss-outlier", "probe-failed",
                "initial-loss-mismatch")
    thresholds = {"min_samples": 1}  # one label out of range crashes (CPU) or corrupts (GPU) training
    fix = ("Class labels must be int64 (torch.long) indices in [0, number of model outputs): convert them with "
           "torch.as_tensor(y, dtype=torch.long), shift 1-based labels by -1, or give the last layer as many "
           "outputs as there are classes. BCE targets must be floats in [0, 1].")
    doc = """
    ## What it detects
    Targets the loss cannot take: class labels outside `[0, C)` for a model with `C` outputs
    (`CrossEntropyLoss`, `NLLLoss`), labels of a dtype the loss refuses (float labels for
    `CrossEntropyLoss`, integer targets for `BCEWithLogitsLoss`), and BCE targets outside `[0, 1]`.
    It fires from the data scan (which checks every label against the model's output size and the
    loss; not when a custom `train_step` may convert the labels itself) and from a crash of any
    probe whose message says the same ("Target 3 is out of bounds",
    "expected target dtype to be Long", "Found dtype Long but expected Float", ...).

    ## Why it breaks training
    On CPU the loss raises on the first batch with such a label; on GPU it is a device-side assert
    that kills the process with a message far from the cause, or, for BCE, a loss that goes
    negative. Labels stored as float (pandas turns an integer column with a missing value into
    float) make `CrossEntropyLoss` refuse every batch.

    ## Evidence
    The loss, the model's number of outputs, the label dtype and the dtype expected, the number of
    labels out of range with their values and sample indices, and the exception message of the probe
    that crashed on them.

    ## Fix
    Convert labels with `torch.as_tensor(y, dtype=torch.long)` (or `target_dtype: long` for
    `nandoctor.datasets.CSVDataset`); map labels to `0..C-1` (1-based labels: subtract 1); make the
    model output one score per class; use float targets in `[0, 1]` for BCE (a PNG mask read as 0/255:
    `mask > 0`; BCE on a target of 255 runs below zero without bound). When the cure is simple (cast
    to long, shift by one, 0/255 to 0/1) nandoctor tries it on a copy and says whether training then
    runs.

    ## Known false positives
    A loss that maps labels itself (a custom loss that one-hot encodes with a larger C) is judged by
    the model's output size; the crash-based evidence has no false positives.
    """

    def check(self, ev: Evidence):
        r = scan(ev)
        t = (r.metrics.get("targets") or {}) if r is not None else {}
        trust_scan = not t.get("custom_step")  # a train_step may fix the labels itself: only its crash counts
        oor = (t.get("out_of_range") or {}) if trust_scan else {}
        dtype = t.get("dtype_problem") if trust_scan else None
        crashed = [c for c in crashes(ev) if trust_scan or c[0] != SCAN]
        if not (dtype or oor.get("count", 0) >= self.thresholds["min_samples"] or crashed):
            return None
        evidence = {"loss": t.get("loss") or ev.facts.get("loss"), "model_outputs": t.get("n_outputs"),
                    "label_dtype": t.get("dtype"), "label_min": t.get("min"), "label_max": t.get("max")}
        if dtype:
            evidence["expected_dtype"] = dtype.get("expected")
        if oor.get("count"):
            evidence.update(labels_out_of_range=oor["count"], values=oor.get("values"),
                            sample_indices=oor.get("indices", [])[:SHOWN],
                            valid_range=f"[0, {t.get('n_classes')})" if t.get("kind") == "class" else "[0, 1]")
        if crashed:
            name, kind, err = crashed[0]
            evidence.update(crashed_in=sorted({c[0] for c in crashed}), exception=err.get("type"),
                            message=err.get("message"), where=err.get("where"))
        if r is not None:
            evidence.update(coverage(r.metrics))
        return self.finding(0.96 if (crashed and (dtype or oor.get("count"))) else 0.93,
                            evidence, title=self._title(evidence, dtype, crashed),
                            probes=sorted({c[0] for c in crashed} | ({SCAN} if r is not None else set())),
                            plots=plot(r, "data-classes") if r is not None and oor.get("count") else [])

    @staticmethod
    def _title(e: dict, dtype: dict | None, crashed: list) -> str:
        if e.get("labels_out_of_range"):
            vals = ", ".join(str(v) for v in list(e.get("values") or {})[:4])
            return (f"{e['labels_out_of_range']} label(s) outside {e.get('valid_range')} for {e.get('loss')} "
                    f"(values {vals})")
        if dtype:
            return f"Labels are {e.get('label_dtype')}; {e.get('loss')} expects {dtype.get('expected')}"
        return f"The loss refuses the labels: {crashed[0][2].get('message', '')[:120]}"

    def cures(self, ctx, finding):
        """Cast the labels to long, shift 1-based (or -1-based) labels to 0-based, or map a 0/255 binary mask to
        0/1, on a copy; only where a probe crashed on them, but for a 0/255 mask under a BCE loss (no crash: the
        loss takes any float, and runs below zero), tried where the overfit batch holds such a target."""
        e = finding.evidence
        loss = ctx.patient.loss_fn
        n, lo, hi = e.get("model_outputs"), e.get("label_min"), e.get("label_max")
        if e.get("valid_range") == "[0, 1]" and lo == 0 and isinstance(hi, (int, float)) and hi > 1 and \
                _batch_exceeds(ctx.patient, 1.0):
            # a binary mask saved as 0/255 under a BCE loss (no crash: the loss takes any float): foreground is
            # every value above 0. A target of 255 sends the loss below zero without bound (never clean): the copy
            # must memorise the batch, or train clean where the untreated run did not
            variant = ctx.patient.variant(f"targets mapped 0/{hi:g} to 0/1",
                                          loss_fn=lambda out, y: loss(out, (y > 0).to(y.dtype)))
            return [Cure(f"targets mapped from 0/{hi:g} to 0/1 (y > 0)", variant,
                         judge=judges.either(judges.repairs(judges.memorised), judges.fixes(judges.trains)))]
        if not e.get("crashed_in"):
            return []  # without a crash the fixed batch may hold no bad label: the cure would prove nothing
        if e.get("expected_dtype", "").startswith("int64") and not e.get("labels_out_of_range"):
            variant = ctx.patient.variant("labels cast to torch.long", loss_fn=lambda out, y: loss(out, y.long()))
            return [Cure("labels cast to torch.long", variant)]
        if e.get("expected_dtype", "").startswith("float"):
            variant = ctx.patient.variant("targets cast to float", loss_fn=lambda out, y: loss(out, as_float(y, out)))
            return [Cure("targets cast to float", variant)]
        if n and lo == 1 and hi == n:
            variant = ctx.patient.variant("labels shifted by -1", loss_fn=lambda out, y: loss(out, y.long() - 1))
            return [Cure("labels shifted by -1 (1-based to 0-based)", variant)]
        if n and lo == -1 and hi == n - 2:
            variant = ctx.patient.variant("labels shifted by +1", loss_fn=lambda out, y: loss(out, y.long() + 1))
            return [Cure("labels shifted by +1 (from -1-based to 0-based)", variant)]
        if n == 2 and lo == 0 and isinstance(hi, (int, float)) and hi > 1:
            # a binary mask saved as 0/255 (or 0/hi): foreground is every value above 0
            variant = ctx.patient.variant(f"labels mapped 0/{hi:g} to 0/1",
                                          loss_fn=lambda out, y: loss(out, (y > 0).long()))
            return [Cure(f"labels mapped from 0/{hi:g} to 0/1 (y > 0)", variant)]
        return []


class ClassImbalance(Diagnosis):
    code = "class-imbalance"
    title = "A class is far rarer than the others"
    severity = "warning"
    role = "cause"
    requires = (SCAN,)
    explains = ("sample-loss-outlier",)
    thresholds = {
        "ratio": 10.0,          # most common / least common class count at or above this is a warning by itself
        "cure_ratio": 3.0,      # from this ratio up (below `ratio`) a candidate whose cure decides: info unless
                                # it confirms it (only for a loss the cure can weigh)
        "min_samples": 50,      # fewer scanned labels say nothing about balance
        "min_rare": 8,          # fewer samples of the rare class than this: no cure (its recall would say nothing)
        "min_cure_steps": 120,  # the fewest steps each arm of the cure trains (the plan's, when it gives more)
        "ignored_recall": 0.2,  # the untreated run ignores the rare class: its recall at most this ...
        "ignored_share": 0.33,  # ... or at most this share of the other classes' mean recall
        "balanced_gain": 0.1,   # where the class-weighted run first leads the untreated one by this balanced accuracy
    }
    reweightable = ("CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss")  # the losses its cure gives class weights
    fix = ("Weight the loss by inverse class frequency (CrossEntropyLoss(weight=...), BCEWithLogitsLoss(pos_weight=...)) "
           "or draw batches with torch.utils.data.WeightedRandomSampler; judge the model by per-class recall or F1, "
           "not accuracy.")
    doc = """
    ## What it detects
    The class histogram of the training labels (from the data scan) has a class whose count is at
    least `ratio` times smaller than the most common class's: a warning from the histogram alone.
    From `cure_ratio` up to `ratio` the histogram only raises a candidate, for a loss the cure can
    weigh (`CrossEntropyLoss`, `NLLLoss`, `BCEWithLogitsLoss` without `weight=`/`pos_weight=`): it is
    an `info` note unless its cure shows the harm, and a warning only then. Classes the model has an
    output for but that never occur are listed too; labels it has no output for are
    `target-out-of-range`'s.

    ## Why it breaks training
    The loss is dominated by the common classes: the model learns to predict them and reaches a high
    accuracy while never predicting the rare class; the loss stalls at the entropy of the majority.
    With batches smaller than the imbalance ratio, most batches hold no rare sample at all.

    ## Evidence
    Samples per class, the ratio of the most to the least common class, the rare classes, classes
    never seen, and the class histogram plot. The cure's record adds what the imbalance does to a
    model trained the user's way: both arms (the loss as configured, and the same loss weighted by
    inverse class frequency) train on the user's data stream from the same init for the same steps
    (the plan's, at least `min_cure_steps`), scored every few steps on the same stratified batch of
    training samples (up to 64 of each class): the rare class's id, its recall, the other classes'
    mean recall and the balanced accuracy (mean per-class recall) of both arms along the run and at
    its end, the size of that batch and its rare samples. Confirmed when, at the end of the run, the
    weighted run leads by `balanced_gain` in balanced accuracy and the untreated run still ignores
    the rare class (recall at most `ignored_recall`, or `ignored_share` of the other classes');
    refuted otherwise: a rare class the user's training learns, even late, within the steps.

    ## Fix
    A weighted loss, a weighted sampler, or more data for the rare class; per-class metrics.

    ## Known false positives
    Imbalance that is real and handled: a loss given `weight=` or `pos_weight=` makes the finding an
    `info` note; a sampler that re-balances the batches is not seen (nandoctor looks at the dataset,
    not the sampler). On a scanned share of a very large set
    a very rare class can be missed or its count be noisy. The cure trains for the plan's steps (a
    few hundred): a model that would learn the rare class only after many more (a long training
    where the majority dominates for epochs) is refuted here. A ratio of `ratio` or more stays a
    warning when its cure refutes it (the status says so); below it, a candidate is `info` unless
    its cure confirms it, also without treatments.
    """

    def check(self, ev: Evidence):
        r = scan(ev)
        if r is None:
            return None
        th = self.thresholds
        t = r.metrics.get("targets") or {}
        hist = {int(k): int(v) for k, v in (t.get("histogram") or {}).items()}
        if not labels_like(t) or len(hist) < 2 or sum(hist.values()) < th["min_samples"]:
            return None
        n_classes = t.get("n_classes") if t.get("kind") == "class" else None
        if n_classes:  # a label the model has no output for is target-out-of-range's, not a rare class
            hist = {c: k for c, k in hist.items() if 0 <= c < n_classes}
            if len(hist) < 2:
                return None
        common, rare = max(hist.values()), min(hist.values())
        ratio = common / rare
        weighted = ev.facts.get("loss_weighted")
        loss = t.get("loss") or ev.facts.get("loss")
        below = ratio < th["ratio"]
        # below `ratio` only a cure can tell harm from a mild imbalance: a candidate only where it can be tried
        if below and (ratio < th["cure_ratio"] or weighted or loss not in self.reweightable):
            return None
        limit = th["cure_ratio"] if below else th["ratio"]
        rare_classes = {c: k for c, k in sorted(hist.items(), key=lambda kv: kv[1]) if common / k >= limit}
        never = [c for c in range(n_classes or 0) if c not in hist]
        evidence = {"samples_per_class": hist, "ratio": ratio, "rare_classes": dict(list(rare_classes.items())[:SHOWN]),
                    "most_common_class": max(hist, key=hist.get), "classes_never_seen": never[:SHOWN],
                    **coverage(r.metrics)}
        confidence = 0.6 + 0.3 * min(1.0, math.log10(ratio / th["ratio"]) / 2)
        first = next(iter(rare_classes))
        if weighted:  # the imbalance is real and the loss already weighs it: a note, not a warning
            evidence["loss_weighted_by"] = weighted
        if below:  # a candidate for the cure to decide: info until the cure confirms it
            evidence["candidate_only"] = True
        return self.finding(confidence, evidence, plots=plot(r, "data-classes"),
                            severity="info" if weighted or below else None,
                            title=f"Class {first} has {hist[first]} samples, {ratio:.0f}x fewer than class "
                                  f"{evidence['most_common_class']} ({common})")

    def cures(self, ctx, finding):
        """The same training with the loss weighted by inverse class frequency (``weight=`` of CrossEntropyLoss or
        NLLLoss, ``pos_weight=`` of BCEWithLogitsLoss), both arms on the user's data stream from the same init,
        scored along the run on the same stratified batch (the ``class_recall`` protocol): confirmed where the
        untreated run ignores the rare class while the weighted one does not (``judges.rescues_rare_class``).

        A candidate below the ``ratio`` threshold is ``info`` (``evidence.candidate_only``: the pipeline tries its
        cure all the same) and a warning only when this cure confirms it: not when the cure is refuted, cannot
        be judged or is not tried (for want of time, or without treatments)."""
        e = finding.evidence
        th = self.thresholds
        from nandoctor.treatments import judges
        if e.get("loss_weighted_by"):
            return []
        hist = {int(k): int(v) for k, v in (e.get("samples_per_class") or {}).items()}
        if len(hist) < 2 or min(hist.values()) < th["min_rare"]:
            return []   # too few rare samples to score its recall
        r = scan(ctx.evidence) if ctx.evidence is not None else None
        t = (r.metrics.get("targets") or {}) if r is not None else {}
        n_outputs = t.get("n_classes") if t.get("kind") == "class" else None
        patient = ctx.patient
        loss, how = self.rebalanced_loss(patient.loss_fn, hist, n_outputs, patient.device)
        if loss is None:
            return []
        variant = patient.variant(f"loss {how}", loss_fn=loss)
        steps = max(int(ctx.planned_steps or 0), int(th["min_cure_steps"]))
        judge = judges.rescues_rare_class(recall=th["ignored_recall"], share=th["ignored_share"],
                                          gain=th["balanced_gain"])
        tried = (f"{patient.loss_name or 'the loss'}({how}), trained on the data stream against the loss as "
                 f"configured, both scored on the same stratified batch")
        fix = (f"Weight the loss by inverse class frequency: {patient.loss_name or 'the loss'}({how}) (or draw "
               "batches with torch.utils.data.WeightedRandomSampler); judge the model by per-class recall or F1, "
               "not accuracy.")
        return [Cure(tried, variant, train="class_recall", steps=steps, judge=judge, severity="warning",
                     refuted_severity="info" if e.get("candidate_only") else None, fix=fix,
                     extra={"judged_at": "the end of the run"})]

    @staticmethod
    def rebalanced_loss(loss_fn, hist: dict[int, int], n_outputs: int | None, device) -> tuple[object, str | None]:
        """A copy of ``loss_fn`` weighted by inverse class frequency (``weight[c] = N / (classes * n_c)`` for
        CrossEntropyLoss/NLLLoss, ``pos_weight = n_0 / n_1`` for BCEWithLogitsLoss on 0/1 labels), and what was
        set; (None, None) for another loss, or one that weighs the classes already."""
        import copy

        import torch
        from torch import nn
        if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)) and n_outputs and loss_fn.weight is None:
            counts = [hist.get(c, 0) for c in range(int(n_outputs))]
            present = sum(1 for k in counts if k)
            weights = [sum(counts) / (present * k) if k else 1.0 for k in counts]
            loss = copy.deepcopy(loss_fn)   # a copy: the user's loss (and its buffers) stays as it is
            loss.weight = torch.tensor(weights, dtype=torch.float32, device=device)
            shown = ", ".join(f"{w:.3g}" for w in weights[:8]) + (", ..." if len(weights) > 8 else "")
            return loss, f"weight=[{shown}]"
        if isinstance(loss_fn, nn.BCEWithLogitsLoss) and set(hist) == {0, 1} and loss_fn.pos_weight is None \
                and loss_fn.weight is None:
            loss = copy.deepcopy(loss_fn)
            loss.pos_weight = torch.tensor([hist[0] / hist[1]], dtype=torch.float32, device=device)
            return loss, f"pos_weight={hist[0] / hist[1]:.3g}"
        return None, None


def as_float(y, out):
    """Targets as float, shaped like the outputs when they hold as many values."""
    y = y.float()
    return y.reshape(out.shape) if hasattr(out, "shape") and y.numel() == out.numel() else y


def labels_like(t: dict) -> bool:
    """Whether the targets are class labels: a class/binary loss, or integer targets with a loss we do not know."""
    if t.get("kind") in ("class", "binary"):
        return (len(t.get("shape") or []) == 0 or t.get("shape") == [1]) and bool(t.get("integer_valued"))
    return t.get("kind") == "unknown" and str(t.get("dtype", "")).startswith(("int", "uint")) and not t.get("shape")


def _batch_exceeds(patient, bound: float) -> bool:
    """The overfit probe's batch holds a target above ``bound`` (so a cure trained on it can show something)."""
    try:
        targets = split_batch(patient.fixed_batch())[1]
        return bool((targets.float() > bound).any())
    except Exception:   # no tensor targets, a batch that does not load: nothing to show on it
        return False
