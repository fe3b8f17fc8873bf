"""Broken module trees: layers outside the model, parameters outside the optimizer, nothing trainable.

All three read the ``structure`` probe (one traced step at LR zero, the autograd graph
walked from the loss) and, where it helps, the ``overfit`` probe's outcome.
"""

from __future__ import annotations

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, judges
from nandoctor.treatments.rewire import (REWIRED, add_missing_params, keep_first_instance, registered_containers,
                                       reused_strays, unfrozen)

DRIFT_CHANGED = 1e-3   # outputs of two calls on the same input differ by more than 0.1%: not a fixed function
DRIFT_SAME = 1e-6      # ... and at most this after the cure
SYMPTOMS = ("cannot-overfit-batch", "training-crashed", "exploding-gradients", "train-eval-gap", "lr-too-low", "lr-too-high")


def output_layer(rec) -> str | None:
    """The leaf module whose output the model returns; None when the output comes from no module (``h @ W2 +
    b2`` after a tanh module): then every module's units are hidden ones. The last module called when the
    recorder could not tell."""
    if getattr(rec, "output_known", False):
        return rec.output_module
    return rec.forward_order[-1] if getattr(rec, "forward_order", None) else None


def not_memorised(ev: Evidence) -> bool:
    """True when the overfit probe ran (or crashed) without memorising its batch."""
    r = ev.get("overfit")
    if r is None or r.status == "skipped":
        return False
    return r.status == "failed" or not r.metrics.get("memorised", False)


def describe(group: dict) -> str:
    """``adjBlock (Conv2d(32, 64, kernel_size=(1, 1), stride=(2, 2)))`` or a tensor's shape."""
    name = group.get("name")
    module = group.get("module")
    if name and module:
        return f"`{name}` ({module})"
    if module:
        return module
    shapes = group.get("shapes") or []
    return f"`{name}` (tensor {shapes[0]})" if name else f"a tensor of shape {shapes[0] if shapes else '?'}"


MIN_ZERO_STEPS = 10   # a gradient must stay exactly zero for at least this many steps to count
PINNED_SHARE = 0.9    # ... unless the sigmoid/tanh its output feeds has this share of its outputs at a bound


def zero_grad_layers(ev: Evidence) -> list[dict]:
    """Layers (with trainable parameters) whose gradient norm was exactly 0 at every step of the overfit probe.

    Not reported when some ReLU layer is dead, or the output layer is a ReLU: those are the likelier
    reasons (``dead-relu``, ``bounded-output-activation``); nor for a layer whose output goes straight into a
    sigmoid/tanh pinned at its bounds (``PINNED_SHARE`` of its outputs on average: a saturated unit passes back
    a gradient that underflows to exactly 0, and ``saturated-activation`` names that).
    """
    from nandoctor.diagnoses import REGISTRY
    r = ev.ok("overfit")
    rec = r.data.get("recorder") if r is not None else None
    if rec is None or ("dead-relu" in REGISTRY and REGISTRY["dead-relu"].check(ev) is not None):
        return []
    output = output_layer(rec)
    if output is not None and rec.layer_types.get(output) in ("ReLU", "ReLU6"):
        return []
    order = rec.forward_order
    after = {a: b for a, b in zip(order, order[1:])}   # the leaf each leaf's output went to next

    def pinned(layer: str) -> bool:
        shares = rec.saturated.get(after.get(layer, ""))
        return bool(shares) and sum(shares) / len(shares) >= PINNED_SHARE
    out = []
    for name, norms in rec.grad_norms.items():
        finite = [v for v in norms if v == v]  # NaN: no gradient at all that step (judged elsewhere)
        if len(finite) >= MIN_ZERO_STEPS and len(finite) == len(norms) and all(v == 0.0 for v in finite) \
                and not pinned(name):
            layer = rec.layers.get("" if name == "(model)" else name)
            numel = sum(p.numel() for p in layer.parameters(recurse=False) if p.requires_grad) if layer is not None else 0
            if numel:
                out.append({"module": name, "numel": numel, "steps": len(norms)})
    return out


class UnregisteredModule(Diagnosis):
    observed = True   # seen in the set-up itself
    code = "unregistered-module"
    title = "Layers take part in the loss but are not registered in the model"
    severity = "critical"
    role = "cause"
    requires = ("structure",)
    explains = SYMPTOMS + ("params-not-in-optimizer",)
    thresholds = {"confidence_fresh": 0.97,   # weights new on every call: certain and always harmful
                  "confidence_fixed": 0.92}   # same weights each call, but outside parameters() and the optimizer
    fix = ("Create every layer once in `__init__` and assign it to `self` (use nn.ModuleList / nn.ModuleDict "
           "instead of Python lists and dicts, nn.Parameter instead of plain tensors); forward() should only "
           "call layers, never build them. Then build the optimizer from model.parameters().")
    doc = """
    ## What it detects
    Tensors that accumulate a gradient from the loss (the `AccumulateGrad` leaves of the autograd
    graph, walked back from the tensor `backward()` is called on) but are not among the model's
    registered parameters as they were when the optimizer was built. Three shapes of the bug:
    a layer built inside `forward()` (`self.adj = nn.Conv2d(...)` or `nn.Linear(...)(x)`), a layer kept
    in a plain Python list or dict instead of `nn.ModuleList`/`nn.ModuleDict`, and a plain tensor with
    `requires_grad=True` instead of an `nn.Parameter`. A second traced call tells whether the
    weights are new on every call.

    ## Why it breaks training
    The optimizer never sees these weights: they stay at their random initialisation. When they are
    built in `forward()` they are *re-drawn on every call*, so the model computes a different random
    function each step and on evaluation; the loss cannot go down and may blow up. They are also
    missing from `state_dict()`, `.to(device)` and checkpoints.

    ## Evidence
    Per unregistered module or tensor: its name (the attribute it ended up under, or its path in the
    plain container), the module's repr, the parameter shapes, the number of values, how it is held
    (built in forward, plain container, plain tensor) and whether it is new on every call.

    ## Fix
    Build the layer once in `__init__` (`self.adj = nn.Conv2d(c, 2 * c, 1, stride=2)`), keep lists of
    layers in `nn.ModuleList`, wrap learnable tensors in `nn.Parameter`, and make the optimizer after
    the model is complete. The cure tried on a copy (for layers assigned to `self` inside forward)
    keeps the first instance of each such layer and trains it.

    ## Known false positives
    Deliberately frozen random projections kept outside the tree with `requires_grad=True` (set it to
    False, or register them as buffers); hypernetwork-style code that builds weights from other
    parameters is not flagged (those are not leaves).
    """

    def check(self, ev: Evidence):
        r = ev.ok("structure")
        groups = (r.metrics.get("unregistered") or []) if r is not None else []
        if not groups:
            return None
        fresh = [g for g in groups if g.get("fresh_each_call")]
        numel = sum(g["numel"] for g in groups)
        registered = r.metrics.get("parameters") or 0
        top = (fresh or groups)[0]
        confidence = self.thresholds["confidence_fresh" if fresh else "confidence_fixed"]
        evidence = {"unregistered": groups, "unregistered_values": numel, "registered_values": registered,
                    "unregistered_share": numel / max(1, numel + registered),
                    "new_every_call": [describe(g) for g in fresh],
                    "call_to_call_change": r.metrics.get("call_to_call_change"),
                    "step_error": r.metrics.get("step_error")}
        how = "built anew in forward() on every call" if top.get("fresh_each_call") else top.get("kind")
        drift = r.metrics.get("call_to_call_change")
        shown = f"; the same input gives outputs {drift:.0%} apart from one call to the next" \
            if fresh and drift is not None and drift > DRIFT_CHANGED else ""
        return self.finding(confidence, evidence,
                            title=f"{describe(top)} is not a registered part of the model ({how}): "
                                  f"its {top['numel']} weights are never trained{shown}")

    def cures(self, ctx, finding):
        groups = finding.evidence.get("unregistered") or []
        if not groups or ctx.patient.train_step is not None or finding.evidence.get("step_error"):
            return []  # nothing to keep, a custom step, or a step that raises anyway
        kinds = [str(g.get("kind", "")) for g in groups]
        # cured: the model becomes a function (the same input, the same output) and trains
        drift = "call_to_call_change"
        # the observed symptom is the drift itself (fresh weights every call): the cure must make the model a
        # function, and then memorise the batch, or at least train no worse (an LR far too low, a second fault,
        # can keep any copy from training in a short run)
        function = judges.both(judges.measured(drift, at_least=DRIFT_CHANGED, arm="before"),
                               judges.measured(drift, at_most=DRIFT_SAME))
        fresh = judges.either(
            judges.both(function, judges.either(judges.repairs(judges.memorised), judges.not_worse(1.05))),
            judges.both(judges.unmeasured(drift), REWIRED))
        cures = []
        assigned = [g for g, k in zip(groups, kinds) if k.startswith("created in forward() and assigned")]
        if assigned:
            names = ", ".join(str(g.get("name")) for g in assigned)
            variant = ctx.patient.variant(f"kept the first instance of {names}",
                                          model_factory=keep_first_instance(ctx.patient))
            cures.append(Cure(f"built {names} once and trained it (first instance kept)", variant, judge=fresh,
                              measure=drift))
        if any(k == "created in forward()" for k in kinds):
            variant = ctx.patient.variant("the layers forward() builds reuse the first call's weights",
                                          model_factory=reused_strays(ctx.patient))
            cures.append(Cure("built the layers forward() creates once and trained them (the first call's kept)",
                              variant, judge=fresh, measure=drift))
        contained = [g for g, k in zip(groups, kinds) if k == "held in a plain Python container"]
        if contained:
            names = ", ".join(sorted({str(g.get("name")).split("[")[0] for g in contained}))
            variant = ctx.patient.variant(f"{names} registered (nn.ModuleList/nn.ModuleDict)",
                                          model_factory=registered_containers(ctx.patient))
            # the layers were fixed, not fresh: the model was already a function; now they train
            cures.append(Cure(f"registered {names} as nn.ModuleList/nn.ModuleDict so the optimizer trains them",
                              variant, judge=judges.either(judges.repairs(judges.memorised), REWIRED)))
        return cures


class ParamsNotInOptimizer(Diagnosis):
    observed = True   # seen in the set-up itself
    code = "params-not-in-optimizer"
    title = "Trainable parameters are missing from the optimizer"
    severity = "critical"
    role = "cause"
    requires = ("structure",)
    explains = SYMPTOMS
    thresholds = {"critical_share": 0.5,   # critical when at least this share of the trainable values is left out
                  "confidence": 0.9}
    fix = ("Build the optimizer from model.parameters() after the model is complete (or list every param "
           "group); freeze on purpose with requires_grad_(False) instead of leaving parameters out.")
    doc = """
    ## What it detects
    Registered parameters with `requires_grad=True` that appear in none of the optimizer's param
    groups, as the optimizer is built from the config (a custom optimizer factory that filters
    parameters, param groups listed by hand, a model extended after the optimizer was made).

    ## Why it breaks training
    Those parameters get gradients but are never updated: they stay at their initial values. When
    they are most of the model, the loss barely moves.

    ## Evidence
    The parameters left out (names, shapes), how many values that is, and their share of all
    trainable values; the overfit probe's outcome.

    ## Fix
    Pass `model.parameters()` (or groups that together cover every parameter) to the optimizer. If
    some layers should stay fixed, freeze them with `requires_grad_(False)`, which says so explicitly.
    The cure tried on a copy adds the missing parameters as an extra param group.

    ## Known false positives
    Parameters updated by other means on purpose (EMA copies, a second optimizer in the user's own
    step): freeze them or keep them out of the model.
    """

    def check(self, ev: Evidence):
        r = ev.ok("structure")
        if r is None or not r.metrics.get("not_in_optimizer_numel"):
            return None
        m = r.metrics
        share = m["not_in_optimizer_numel"] / max(1, m.get("trainable_parameters") or 1)
        severity = "critical" if share >= self.thresholds["critical_share"] or not_memorised(ev) else "warning"
        names = [p["name"] for p in m["not_in_optimizer"]]
        evidence = {"left_out": m["not_in_optimizer"], "left_out_values": m["not_in_optimizer_numel"],
                    "trainable_values": m.get("trainable_parameters"), "left_out_share": share,
                    "memorised_batch": None if ev.ok("overfit") is None else ev.ok("overfit").metrics.get("memorised")}
        shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
        return self.finding(self.thresholds["confidence"], evidence, severity=severity,
                            title=f"{m['not_in_optimizer_count']} trainable parameter(s) ({share:.0%} of the "
                                  f"trainable values) are not in the optimizer: {shown}")

    def cures(self, ctx, finding):
        return [Cure("added the missing parameters to the optimizer",
                     ctx.patient.variant("every trainable parameter in the optimizer"), hooks=add_missing_params,
                     judge=REWIRED)]


class NoTrainableParams(Diagnosis):
    observed = True   # seen in the set-up itself
    code = "no-trainable-params"
    title = "Nothing (or too little) of the model can learn"
    severity = "critical"
    role = "cause"
    requires = ("structure",)
    explains = SYMPTOMS
    thresholds = {"critical_share": 0.5,     # critical when gradients miss at least this share of trainable values
                  "tiny_trainable_share": 0.01}  # "almost all frozen": below 1% of the values trainable
    fix = ("Unfreeze the layers that should learn (requires_grad_(True)); remove .detach(), .item(), "
           "torch.no_grad() and numpy round-trips from forward(); call zero_grad() before backward(), not between "
           "backward() and step().")
    doc = """
    ## What it detects
    One of: every parameter has `requires_grad=False` (or the model has none); the loss is not
    connected to any parameter (among them a loss made anew from its value, a leaf tensor such as
    `torch.tensor(loss.item(), requires_grad=True)` makes to silence "does not require grad");
    gradients exist after `backward()` but none reaches `optimizer.step()`; or layers that forward() does call get no gradient (their output is detached,
    computed under `torch.no_grad()`, or goes through numpy), covering a large share of the model.
    Also, as warnings, layers whose gradient stays exactly zero for the whole overfit probe (when no
    ReLU layer is dead and the sigmoid/tanh the layer feeds is not pinned at its bounds, 90% of its
    outputs, either of which would explain it; measured in training, such a finding ranks as
    suspected, not as a defect seen in the set-up) and a model that is almost entirely frozen (under 1%
    trainable) that cannot fit one batch; and, as info, layers forward() never calls.

    ## Why it breaks training
    Parameters without a gradient never change. With everything frozen `loss.backward()` raises
    ("element 0 of tensors does not require grad"); with part of the model cut off from the loss,
    only the layers after the cut learn.

    ## Evidence
    Counts of parameters and trainable values; the modules with no gradient path and whether
    forward() calls them; whether any gradient was present at `optimizer.step()`; the error the
    step raised, if any.

    ## Fix
    `requires_grad_(True)` on what should learn; keep the whole computation in torch with autograd
    on; call `optimizer.zero_grad()` at the start of the step. For a frozen model the cure tried on
    a copy makes every parameter trainable; where the user's `train_step` loses the gradient (the
    rebuilt loss, nothing or zeros at `optimizer.step()`), the cure trains the same model, loss and
    optimizer with the standard step in its place: confirmed when that memorises the batch or
    trains clearly better.

    ## Known false positives
    Deliberate fine-tuning of a small head on a frozen backbone is only reported when the set-up
    cannot fit one batch; auxiliary layers that are unused on purpose are reported as info.
    """

    def check(self, ev: Evidence):
        r = ev.ok("structure")
        if r is None:
            return None
        m = r.metrics
        # 1. nothing trainable at all
        if not m.get("parameters") or not m.get("trainable_tensors"):
            return self._nothing(m)
        # 2. the loss does not reach any parameter, or no gradient reaches optimizer.step()
        if m.get("loss_requires_grad") is False or m.get("grads_at_step") is False or m.get("loss_rebuilt"):
            return self._no_gradients(m)
        # 3. layers forward() calls but the loss does not reach
        cut = [e for e in m.get("no_grad_path") or [] if e.get("called")]
        trainable = max(1, m.get("trainable_parameters") or 1)
        if cut:
            share = sum(e["numel"] for e in cut) / trainable
            severity = "critical" if share >= self.thresholds["critical_share"] else "warning"
            return self.finding(0.85, {"cut_off": cut, "cut_off_share": share, "step_error": m.get("step_error")},
                                severity=severity,
                                title=f"No gradient reaches {', '.join(e['module'] for e in cut[:4])} "
                                      f"({share:.0%} of the trainable values) although forward() uses it")
        # 4. layers whose gradient stayed exactly zero over the whole overfit probe (dead ReLUs aside)
        stuck = zero_grad_layers(ev)
        if stuck:
            share = sum(e["numel"] for e in stuck) / trainable
            f = self.finding(0.7, {"zero_gradient": stuck, "zero_gradient_share": share}, severity="warning",
                             title=f"The gradient of {', '.join(e['module'] for e in stuck[:4])} stays exactly zero "
                                   f"for the whole probe ({share:.0%} of the trainable values)")
            f.observed = False   # measured in a training run, not seen in the set-up: it ranks as suspected
            return f
        # 5. almost everything frozen and the batch is not memorised
        share = (m.get("trainable_parameters") or 0) / max(1, m.get("parameters") or 1)
        if share < self.thresholds["tiny_trainable_share"] and not_memorised(ev):
            return self.finding(0.7, {"trainable_values": m.get("trainable_parameters"),
                                      "values": m.get("parameters"), "trainable_share": share, "frozen": True},
                                severity="warning",
                                title=f"Only {share:.2%} of the model's values are trainable and it cannot fit one batch")
        # 6. layers forward() never calls
        unused = [e for e in m.get("no_grad_path") or [] if not e.get("called")]
        if unused:
            return self.finding(0.5, {"unused": unused}, severity="info",
                                title=f"{len(unused)} layer(s) with trainable parameters are never used by forward(): "
                                      f"{', '.join(e['module'] for e in unused[:4])}")
        return None

    def _nothing(self, m: dict):
        evidence = {"parameters": m.get("parameters"), "trainable_parameters": m.get("trainable_parameters", 0),
                    "step_error": m.get("step_error"), "optimizer_error": m.get("optimizer_error")}
        if not m.get("parameters"):
            return self.finding(0.95, evidence, title="The model has no parameters at all")
        evidence["frozen"] = True
        return self.finding(0.97, evidence,
                            title=f"Every one of the model's {m['parameters']} values is frozen (requires_grad=False)")

    def cures(self, ctx, finding):
        e = finding.evidence
        if e.get("custom_train_step") and ctx.patient.train_step is not None and \
                (e.get("loss_rebuilt") or e.get("grads_at_step") is False or e.get("grads_all_zero")):
            # the gradient is lost between the user's backward() and step(): the standard step on the same model,
            # loss and optimizer (zero_grad, forward, loss, backward, step) must then train
            variant = ctx.patient.variant("the standard step (zero_grad, forward, loss, backward, step) in place of "
                                          "train_step", train_step=None)
            return [Cure("trained with the standard step in place of train_step", variant,
                         judge=judges.either(judges.repairs(judges.memorised), REWIRED))]
        if not e.get("frozen"):
            return []  # detached graphs and dead code have no generic cure
        variant = ctx.patient.variant("every parameter trainable", model_factory=unfrozen(ctx.patient.model_factory))
        return [Cure("set requires_grad=True on every parameter", variant, judge=REWIRED)]

    def _no_gradients(self, m: dict):
        evidence = {"trainable_parameters": m.get("trainable_parameters"),
                    "loss_requires_grad": m.get("loss_requires_grad"), "grads_at_step": m.get("grads_at_step"),
                    "step_error": m.get("step_error"), "custom_train_step": m.get("custom_train_step")}
        if m.get("loss_rebuilt"):
            evidence["loss_rebuilt"] = True
            return self.finding(0.97, evidence, title="backward() runs on a loss made anew from its value (a leaf "
                                                      "tensor, as torch.tensor(loss.item(), requires_grad=True) "
                                                      "makes): it is cut from the model, no parameter gets a gradient")
        if m.get("loss_requires_grad") is False:
            return self.finding(0.95, evidence, title="The loss is not connected to any trainable parameter "
                                                      "(detached outputs, .item(), numpy, torch.no_grad())")
        if m.get("grads_all_zero"):
            # the gradients are there and exactly zero: no structural fact says why (zero_grad(set_to_none=False)
            # between backward() and step(), or an output ReLU that is 0 for every sample), a warning to explain
            evidence["grads_all_zero"] = True
            found = self.finding(0.6, evidence, severity="warning",
                                 title="Every gradient is exactly zero when optimizer.step() runs (zeroed between "
                                       "backward() and step(), or an output that does not move with the weights, such "
                                       "as a ReLU output that is 0 for every sample)")
            found.observed = False
            return found
        return self.finding(0.9, evidence, title="No gradient is present when optimizer.step() runs "
                                                 "(zero_grad() between backward() and step()?)")
