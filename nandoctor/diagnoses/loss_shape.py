"""loss-shape-mismatch: outputs and targets broadcast to a different shape inside the loss."""

from __future__ import annotations

import torch

from nandoctor.diagnoses import Diagnosis
from nandoctor.diagnoses.pairing_evidence import SHAPE_ERROR, Pairing, crash
from nandoctor.records import Evidence, Finding
from nandoctor.treatments import Cure, judges
from nandoctor.treatments.pairing import outputs_shaped_like_targets

TARGET_SIZE_WARNING = "target size"   # PyTorch's UserWarning for mismatched elementwise losses


def broadcast_shape(a: list[int], b: list[int]) -> list[int] | None:
    try:
        return list(torch.broadcast_shapes(torch.Size(a), torch.Size(b)))
    except RuntimeError:
        return None


def numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class LossShapeMismatch(Diagnosis):
    observed = True   # seen in the set-up itself
    code = "loss-shape-mismatch"
    title = "Outputs and targets broadcast to a different shape inside the loss"
    severity = "critical"
    requires = ()           # also judged from a crash alone
    accepts_failed = True
    explains = ("training-crashed", "cannot-overfit-batch", "initial-loss-mismatch", "lr-too-low",
                "exploding-gradients", "sample-loss-outlier")
    fix = ("Make the outputs and the targets the same shape before the loss "
           "(e.g. outputs.squeeze(1) or targets.view(-1, 1)).")
    thresholds = {"partial_broadcast_confidence": 0.6}
    doc = """
    ## What it detects
    The model's outputs and the targets have different shapes where the loss compares them element
    by element, and broadcasting silently turns them into something else: `[N, 1]` outputs against
    `[N]` targets in `MSELoss` become an `[N, N]` matrix of every output minus every target. Found
    by tracing the loss on a fresh model (built-in elementwise losses, and the subtract/multiply ops
    of a hand-written loss where outputs meet targets), from PyTorch's "target size that is
    different to the input size" warning, or from the loss's exception (BCELoss "Target size ...
    must be the same as input size", "size of tensor a must match the size of tensor b",
    "Expected input batch_size to match target batch_size", "multi-target not supported").

    ## Why it breaks training
    With the `[N, N]` broadcast every output is pulled toward the mean of all targets in the batch:
    the loss stalls at the target variance and the model predicts a constant. The shapes look
    plausible, nothing raises, and the loss curve is merely disappointing. Other mismatches raise
    and training cannot start.

    ## Evidence
    The op, the output and target shapes, the shape they broadcast to, PyTorch's warning or the
    exception with the user's line.

    Also the class axis: `CrossEntropyLoss`/`NLLLoss` on outputs of 3 or more dims read the classes
    on dim 1 (`[N, C, T]`), while an `nn.Linear` output layer puts them last (`[N, T, C]`). Where
    the loss gets the Linear's output directly and the targets have the shape it then expects (`T`
    equal to `C`, or it raises), it scores every position against the wrong axis silently; the
    cure moves the class axis to dim 1 before the loss and must memorise the batch or train clearly
    better.

    ## Fix
    Give the loss equal shapes: `outputs.squeeze(1)` or `targets.unsqueeze(1)` / `view(-1, 1)` in
    the dataset. The treatment reshapes the outputs to the targets' shape on a copy (when they hold
    as many numbers) and re-runs the overfit probe.

    ## Known false positives
    A hand-written loss that broadcasts on purpose (pairwise/contrastive losses comparing every
    output with every target).
    """

    def check(self, ev: Evidence) -> Finding | None:
        # 1. the loss raised a shape error: that is the finding
        #    (the outputs probe calls forward and loss apart; without it, trust a loss-only message)
        err = crash(ev, SHAPE_ERROR)
        if err is not None and (err.get("probe") == "outputs" or ev.ok("outputs") is None):
            return self._crash_finding(ev, err)
        p = Pairing.of(ev)
        if p is None:
            return None
        axis = self._classes_on_last_dim(p)
        if axis is not None:
            return axis
        # 2. a broadcast that grows the tensor, in a traced op or in a built-in elementwise loss
        grown = list(p.trace.get("broadcast") or [])
        partial = []
        for e in p.trace.get("elementwise_shapes") or []:
            a, b = e["shapes"]
            if a == b:
                continue
            shape = broadcast_shape(a, b)
            item = {"op": e["op"], "shapes": [a, b], "result": shape}
            (grown if shape is not None and numel(shape) > max(numel(a), numel(b)) else partial).append(item)
        warned = [w for w in p.metrics.get("loss_warnings") or [] if TARGET_SIZE_WARNING in w.lower()]
        if not grown and not partial and not warned:
            return None
        confidence = 0.9 if grown or warned else self.thresholds["partial_broadcast_confidence"]
        first = (grown or partial or [{}])[0]
        evidence = {"op": first.get("op"), "outputs_shape": p.outputs.get("shape"),
                    "targets_shape": (p.metrics.get("targets") or {}).get("shape"),
                    "broadcast_to": first.get("result"), "pytorch_warning": warned[0] if warned else None,
                    "loss": p.loss_name, "initial_loss": p.metrics.get("initial_loss")}
        title = (f"Outputs {evidence['outputs_shape']} and targets {evidence['targets_shape']} broadcast to "
                 f"{evidence['broadcast_to']} in {evidence['op'] or p.loss_name}")
        return self.finding(confidence, evidence, title=title, probes=["outputs"],
                            severity="critical" if confidence >= 0.9 else "warning")

    def _classes_on_last_dim(self, p: Pairing) -> Finding | None:
        """CrossEntropyLoss/NLLLoss on outputs of 3 or more dims read the classes on dim 1 (``[N, C, T]``); an
        nn.Linear puts its outputs on the last dim (``[N, T, C]``). Straight from a Linear, with targets of the
        shape the loss then expects (``[N, T]``: dim 1 and the last the same size, else the loss raises), every
        position is scored against the wrong axis and nothing says so."""
        shape, targets = p.outputs.get("shape") or [], (p.metrics.get("targets") or {}).get("shape") or []
        last = p.metrics.get("last_module") or {}
        if p.applies not in ("cross_entropy", "nll_loss") or len(shape) < 3 or not last.get("is_output") or \
                last.get("type") != "Linear" or list(targets) != [shape[0]] + list(shape[2:]):
            return None
        evidence = {"outputs_shape": shape, "targets_shape": targets, "loss": p.loss_name,
                    "output_layer": last.get("name"), "classes_read_on": 1, "classes_made_on": len(shape) - 1}
        return self.finding(0.9, evidence, probes=["outputs"],
                            title=f"{p.loss_name} reads the classes on dim 1 of the outputs {shape}, but the output "
                                  f"layer `{last.get('name')}` (nn.Linear) puts them on the last dim: every "
                                  f"position is scored against the wrong axis",
                            fix="Move the class axis to dim 1 before the loss: loss_fn(outputs.permute(0, 2, 1), "
                                "targets) for [N, T, C] (outputs.movedim(-1, 1) for any rank), or flatten both: "
                                "loss_fn(outputs.reshape(-1, C), targets.reshape(-1)).")

    def _crash_finding(self, ev: Evidence, err: dict) -> Finding:
        p = Pairing.of(ev)
        evidence = {"exception": err.get("type"), "message": err.get("message"), "where": err.get("where"),
                    "probe": err.get("probe"), "step": err.get("step"),
                    "outputs_shape": p.outputs.get("shape") if p else None,
                    "targets_shape": (p.metrics.get("targets") or {}).get("shape") if p else None}
        return self.finding(0.9, evidence, probes=[err.get("probe") or "warmup"],
                            title=f"The loss raises on mismatched shapes: {(err.get('message') or '')[:120]}")

    def cures(self, ctx, finding: Finding) -> list:
        if finding.evidence.get("classes_made_on") is not None:
            loss = ctx.patient.loss_fn
            tried = "moved the class axis of the outputs from the last dim to dim 1 before the loss"
            variant = ctx.patient.variant("class axis moved to dim 1",
                                          loss_fn=lambda out, y: loss(out.movedim(-1, 1), y))
            return [Cure(tried, variant, judge=judges.either(judges.repairs(judges.memorised), judges.beats_control))]
        a, b = finding.evidence.get("outputs_shape"), finding.evidence.get("targets_shape")
        if not a or not b or numel(a) != numel(b):
            return []
        tried = f"reshaped the outputs {a} to the targets' shape {b} before the loss"
        variant = ctx.patient.variant(tried, loss_fn=outputs_shaped_like_targets(ctx.patient.loss_fn))
        return [Cure(tried, variant, judge=judges.repairs(judges.trains))]
