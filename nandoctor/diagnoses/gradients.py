"""exploding-gradients and vanishing-gradients: what the gradient norms did, by step and by depth."""

from __future__ import annotations

import math
import statistics

import torch

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, judges
from nandoctor.treatments.rewire import relu_stack


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def clip_hook(max_norm: float):
    """A cure's ``hooks``: clip the global gradient norm before every optimizer step.

    A step pre-hook runs between the backward pass and the update, also inside the user's own
    ``train_step``, so the user's code is unchanged.
    """
    def attach(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        params = [p for p in model.parameters() if p.requires_grad]

        def clip(opt, args, kwargs) -> None:  # a step pre-hook must return None
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.register_step_pre_hook(clip)
    return attach


class ExplodingGradients(Diagnosis):
    code = "exploding-gradients"
    title = "Gradient norms grow by orders of magnitude"
    severity = "critical"
    role = "symptom"
    requires = ("gradients",)
    thresholds = {
        "growth_warning": 1e3,     # peak global grad norm / its median over the first steps
        "growth_critical": 1e5,    # ... this much growth is a blow-up whatever the loss does
        "nonfinite_min_growth": 10.0,  # a non-finite gradient counts when the norm had grown this much before it
        "min_finite_steps": 3,     # ... after at least this many finite steps (else it was born non-finite)
        "first_update_ratio": 1.0, # ... or fewer, after a first SGD step (lr x |g|) larger than the weights' norm
        "harmless_loss_ratio": 0.5,  # growth alone does not count when the loss still halved meanwhile ...
        "spike": 10.0,               # ... and the peak is within this factor of where the norm settled (the median
                                     # of the run's second half): a rise to a plateau, not a spike the run survived
    }
    fix = ("Clip the gradient norm (torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) between "
           "backward() and step()); lower the learning rate; check the initialisation and add normalisation "
           "layers or residual scaling. The findings ranked above this one may name the cause.")
    doc = """
    ## What it detects
    The global gradient norm (all parameters together) grows by orders of magnitude during a short
    training of a fresh model with the user's optimizer and learning rate, or turns NaN/Inf after
    having grown. Each layer's norm is recorded every step (plots/gradients.png: a layer x step
    heatmap of log10 norms). When the gradient turns NaN/Inf before `min_finite_steps` finite
    steps (too few to see it grow), plain SGD's first step is measured instead: lr x the first
    gradient norm over the weights' norm, `first_update_ratio` or more (one step moves the weights
    further than their own size) is the explosion; the cure then clips to a hundredth of that.

    ## Why it breaks training
    Each update is proportional to the gradient: once it is a thousand times its usual size the
    weights jump far from where the loss was low, which makes the next gradient larger still. The
    loss explodes and ends as Inf or NaN; the run cannot recover.

    ## Evidence
    The early norm (median of the first steps), the peak norm and their ratio, the step where the
    gradient turned non-finite and the layer where it did first, the loss at the start and end.
    The treatment re-runs the same training with `clip_grad_norm_` (max norm = the early norm),
    attached as an optimizer step pre-hook, and says whether that alone cures it.

    ## Fix
    Gradient clipping stops the blow-up; if clipping cures it the set-up is sound but has steep
    cliffs in its loss (deep/recurrent nets). Otherwise lower the learning rate, use a standard
    initialisation, add BatchNorm/LayerNorm, and check the inputs' scale.

    ## Known false positives
    A short early transient (e.g. the first steps of a warm-up) that settles by itself; losses
    whose scale grows by design (sum reduction over growing batches). Growth from a tiny start
    (zero-initialised last layers) while the loss keeps falling is not reported, as long as the peak
    is within `spike` times the median norm of the run's second half (a rise to where the norm
    settles); a peak far above it is a spike the run survived this time (Adam's moments absorb one
    step of 1e6x the usual gradient; the next one, or plain SGD, does not), reported whatever the
    loss did.
    """

    def check(self, ev: Evidence):
        r = ev.ok("gradients")
        if r is None:
            return None
        m, t = r.metrics, self.thresholds
        norms = [v for v in m.get("total_grad_norms", [])]
        bad_step = m.get("nonfinite_grad_step")
        growth = m.get("growth")
        # 1. growth before a non-finite gradient (a NaN born at step 0 is the data's or an op's doing)
        finite_before = norms[:bad_step] if bad_step is not None else norms
        pre = [v for v in finite_before if _finite(v)]
        pre_growth = (max(pre) / min(pre[:3])) if len(pre) >= 2 and min(pre[:3]) > 0 else None
        went_nonfinite = bad_step is not None and bad_step >= t["min_finite_steps"] \
            and pre_growth is not None and pre_growth >= t["nonfinite_min_growth"]
        grew = _finite(growth) and growth >= t["growth_warning"]
        first, last = m.get("initial_loss"), m.get("final_loss")
        settled = [v for v in norms[len(norms) // 2:] if _finite(v)]
        level = statistics.median(settled) if settled else None
        spike = m["grad_norm_peak"] / level if level and _finite(m.get("grad_norm_peak")) else None
        if grew and not went_nonfinite and _finite(first) and _finite(last) and first > 0 \
                and last <= t["harmless_loss_ratio"] * first and (spike is None or spike < t["spike"]):
            grew = False  # the norm rose from a tiny start to where it settled while the loss kept falling
        # 1b. too few finite steps to see growth: a first SGD step larger than the weights themselves, then NaN
        leap = m.get("first_update_ratio")
        leapt = not went_nonfinite and bad_step is not None and 1 <= bad_step < t["min_finite_steps"] \
            and _finite(leap) and leap >= t["first_update_ratio"]
        if leapt:
            evidence = {"grad_norm_initial": None, "first_grad_norm": norms[0], "first_update_ratio": leap,
                        "nonfinite_grad_step": bad_step, "nonfinite_grad_layer": (m.get("nonfinite_grad") or {}).get("module"),
                        "initial_loss": m.get("initial_loss"), "final_loss": m.get("final_loss"),
                        "steps": m.get("steps"), "lr": ev.facts.get("lr")}
            return self.finding(0.8, evidence, severity="critical", plots=r.plots,
                                title=f"Gradient norms turn non-finite at step {bad_step}, after a first step "
                                      f"{leap:.3g}x the size of the weights (gradient norm {norms[0]:.3g})")
        if not (went_nonfinite or grew):
            return None
        # 2. severity and confidence
        critical = went_nonfinite or growth >= t["growth_critical"] or not _finite(m.get("final_loss"))
        confidence = 0.9 if went_nonfinite else min(0.9, 0.55 + 0.08 * math.log10(growth / t["growth_warning"] + 1))
        evidence = {"grad_norm_initial": m.get("grad_norm_initial"), "grad_norm_peak": m.get("grad_norm_peak"),
                    "growth": growth, "growth_before_nonfinite": pre_growth, "nonfinite_grad_step": bad_step,
                    "nonfinite_grad_layer": (m.get("nonfinite_grad") or {}).get("module"),
                    "initial_loss": m.get("initial_loss"), "final_loss": m.get("final_loss"),
                    "spike_over_settled": spike, "steps": m.get("steps"), "lr": ev.facts.get("lr")}
        what = f"turn non-finite at step {bad_step}" if went_nonfinite else f"grow {growth:.3g}x"
        return self.finding(confidence, evidence, severity="critical" if critical else "warning", plots=r.plots,
                            title=f"Gradient norms {what} (from {m.get('grad_norm_initial'):.3g})")

    def cures(self, ctx, finding):
        base = finding.evidence.get("grad_norm_initial")
        if not (_finite(base) and base > 0) and _finite(finding.evidence.get("first_update_ratio")):
            # one step as large as the weights: clip to the norm that makes it a hundredth of them
            base = finding.evidence["first_grad_norm"] / (100 * finding.evidence["first_update_ratio"])
        max_norm = float(base) if _finite(base) and base > 0 else 1.0
        tried = f"clip_grad_norm_(max_norm={max_norm:.3g}) before every optimizer step"
        return [Cure(tried, ctx.patient.variant(tried), hooks=clip_hook(max_norm))]

    def gone_with(self, finding, cause_treatment):
        """Gradients that blew up to NaN/Inf: the cause's untreated run broke too, its cured run stayed finite."""
        before, after, protocol = judges.arms_of(cause_treatment)
        if protocol is None or finding.evidence.get("nonfinite_grad_step") is None or not judges.arm_broke(before) \
                or not judges.arm_clean(after):
            return None
        return "the untreated run broke (non-finite); the cure's run stayed finite to the end"


class VanishingGradients(Diagnosis):
    code = "vanishing-gradients"
    title = "Early layers get gradients orders of magnitude below later ones"
    severity = "warning"
    role = "cause"
    requires = ("gradients",)
    explains = ("cannot-overfit-batch",)
    thresholds = {
        "ratio_warning": 1e-3,    # RMS grad of the first weight layer / the largest hidden one after it
        "ratio_critical": 1e-5,   # ... below this the first layers do not learn at all
        "min_weight_layers": 3,   # too shallow a model has no depth profile to read
        "ratio_candidate": 1e-2,  # a stalled sigmoid/tanh stack below this is a candidate its cure decides
        "min_saturating": 3,      # ... with this many hidden sigmoid/tanh modules
    }
    fix = ("Use ReLU-family activations instead of sigmoid/tanh in deep stacks, a standard init (Kaiming for "
           "ReLU, Xavier for tanh), normalisation layers (BatchNorm/LayerNorm) or residual connections.")
    doc = """
    ## What it detects
    The gradient that reaches each weight layer, as an RMS per parameter (norm / sqrt(count)),
    median over the first steps of a short training, plotted by depth from input to output
    (plots/gradients.png, right panel). The first layer's value is orders of magnitude below the
    largest hidden layer after it (the output layer is left out: its gradient is the largest in
    healthy networks too).

    ## Why it breaks training
    The update a layer gets is proportional to its gradient. When the first layers receive a
    thousandth of what the last ones get, they stay at their random initial values: the network
    behaves like a shallow one on random features, trains slowly or not at all.

    A model that stalls on one batch with at least `min_saturating` hidden sigmoid/tanh modules
    and a ratio below `ratio_candidate` is a candidate too (`evidence.candidate_only`): an `info`
    note that its cure raises when it trains the model.

    ## Evidence
    The weight layers in depth order, the RMS gradient of each, the first/largest ratio, and
    whether the single-batch training made progress; the hidden sigmoid/tanh modules.

    ## Cure
    When the model has hidden `nn.Sigmoid`/`nn.Tanh` modules: the same single-batch training with
    them replaced by ReLU and the weight layers (but the last) re-initialised for ReLU (Kaiming).
    Confirmed when that copy memorises the batch or trains clearly better than the untreated run
    (same batch, same steps); then critical if the untreated run did not memorise.

    ## Fix
    Replace saturating activations (sigmoid, tanh) in deep stacks by ReLU/GELU; use the init that
    matches the activation; add BatchNorm/LayerNorm between layers or residual connections.

    ## Known false positives
    A first layer that is frozen on purpose (it then has no gradient and is not compared), huge
    sparse input layers (one-hot features) whose RMS gradient is naturally small, and embeddings
    (excluded).
    """

    def check(self, ev: Evidence):
        r = ev.ok("gradients")
        if r is None:
            return None
        m, t = r.metrics, self.thresholds
        ratio, layers, profile = m.get("depth_ratio"), m.get("layers") or [], m.get("depth_profile") or []
        over = ev.ok("overfit")
        stuck = over is not None and not over.metrics.get("memorised")
        saturating = saturating_modules(over)
        candidate = stuck and len(saturating) >= t["min_saturating"] and _finite(ratio) and ratio < t["ratio_candidate"]
        if not _finite(ratio) or len(layers) < t["min_weight_layers"] or (ratio >= t["ratio_warning"] and not candidate):
            return None
        if ratio <= 0:
            return None  # no gradient at all reaches the first layer: dead units or a cut path, not a vanishing one
        # 1. stronger when the single-batch training did not progress either
        critical = ratio < t["ratio_critical"] and (stuck or over is None)
        confidence = min(0.9, 0.6 + 0.1 * math.log10(t["ratio_warning"] / ratio))
        if not stuck and over is not None:
            confidence -= 0.15  # the batch was memorised all the same
        evidence = {"ratio_first_to_largest": ratio, "first_layer": layers[0],
                    "depth_profile": dict(zip(layers, profile)), "memorised_batch": None if over is None
                    else over.metrics.get("memorised"), "saturating_hidden_modules": saturating,
                    "candidate_only": ratio >= t["ratio_warning"]}
        severity = "info" if evidence["candidate_only"] else "critical" if critical else "warning"
        return self.finding(confidence, evidence, severity=severity, plots=r.plots,
                            title=f"The first layer ({layers[0]}) gets {ratio:.1e} of the gradient of deeper "
                                  f"hidden layers" + (f", through {len(saturating)} sigmoid/tanh layers"
                                                      if saturating else ""))

    def cures(self, ctx, finding):
        """A deep sigmoid/tanh stack: the same batch with ReLU in their place and the init that matches it."""
        saturating = finding.evidence.get("saturating_hidden_modules") or []
        if not saturating:
            return []
        tried = (f"the {len(saturating)} hidden sigmoid/tanh modules replaced by ReLU, the weight layers "
                 f"re-initialised for it (Kaiming)")
        stuck = finding.evidence.get("memorised_batch") is False
        return [Cure(tried, ctx.patient.variant(tried, model_factory=relu_stack(ctx.patient)),
                     judge=judges.beats_control, severity="critical" if stuck else "warning")]


def saturating_modules(over) -> list[str]:
    """The sigmoid/tanh modules the overfit run called before its last weight layer (its hidden ones)."""
    rec = over.data.get("recorder") if over is not None else None
    order, types = getattr(rec, "forward_order", None) or [], getattr(rec, "layer_types", None) or {}
    weights = [i for i, name in enumerate(order) if name in getattr(rec, "layers", {})]
    if not weights:
        return []
    return [name for name in order[:weights[-1]] if types.get(name) in ("Sigmoid", "Tanh")]
