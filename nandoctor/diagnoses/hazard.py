"""numerical-hazard: an op that yields NaN/Inf for values training will reach, found before it fires."""

from __future__ import annotations

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence, severity_rank
from nandoctor.treatments import Cure, judges
from nandoctor.treatments.hazards import (DIV_EPS, EXP_MAX, SQRT_EPS, STRESS_LR_FACTOR, STRESS_STEPS,
                                          hazard_count, rewritten, stress_run)

NONFINITE_SYMPTOMS = ("loss-nonfinite", "nonfinite-source", "cannot-overfit-batch", "training-crashed",
                      "sample-loss-outlier")   # samples with finite inputs whose loss the op made NaN
FIRING_KINDS = ("log-of-probability", "sqrt-at-zero")   # the kinds that are critical near their edge
KIND_WORDS = {"log-of-probability": "log of a probability", "exp-unbounded": "exp of an unbounded value",
              "division-by-zeroable": "division by a value that can be zero",
              "sqrt-at-zero": "square root at zero"}


@judges.judge("stayed finite (and never below zero)")
def stays_finite(o) -> bool:
    return judges.clean(o)


@judges.judge("clean, and it trains (memorised, or 25% off its loss) wherever the untreated run trains")
def trains_as_before(before, after) -> bool:
    """The rewrite must not cost the training anything: where the untreated run trains, so does the treated."""
    return judges.clean(after) and (judges.trains(after) or not judges.trains(before))


class NumericalHazard(Diagnosis):
    code = "numerical-hazard"
    title = "An op that turns NaN or Inf once training reaches its edge"
    severity = "warning"
    role = "cause"
    requires = ("hazards",)
    explains = NONFINITE_SYMPTOMS
    thresholds = {
        "near_edge_margin": 4.0,     # log of a probability: critical when its argument is this close (in nats,
                                     #   ~ logit units) to the value where log returns -inf in its dtype
        "near_zero_ratio": 1e-6,     # sqrt/pow argument: critical when its smallest value is at most this share of
                                     #   its largest (exactly 0 included): the backward is (almost) infinite now
        "confidence_log": 0.75,      # log of a sigmoid/softmax output, far from its edge for now
        "confidence_sqrt": 0.7,
        "confidence_division": 0.6,
        "confidence_exp": 0.55,
        "confidence_near_edge": 0.9,
        "confidence_fired": 0.95,    # the op already returns NaN/Inf, or the first NaN of the overfit run was born there
        "exp_far_share": 0.25,       # exp whose largest argument is under this share of its dtype's overflow point
                                     #   (22 of 88.7 in float32, 2.8 of 11.1 in float16): a note, far from its edge
    }
    fix = ("Use the stable form of the op named here: F.logsigmoid(x) for log(sigmoid(x)), torch.log_softmax(x, dim) "
           "for log(softmax(x, dim)) (or BCEWithLogitsLoss / CrossEntropyLoss on the logits), "
           "torch.clamp(d, min=eps) under a division, torch.sqrt(x + eps) for a distance, and bound x before exp(x).")
    doc = """
    ## What it detects
    One step of the user's own training (a fresh model, the fixed batch, the optimizer at learning
    rate zero) is traced call by call (the `hazards` probe), following what each tensor is. At the
    user's own lines (the model's `forward`, the loss, the `train_step`; not torch's or a library's
    internals), on the autograd path, four patterns are reported:
    - `log`, `log2`, `log10` of a `sigmoid`/`softmax` output, directly or through views, indexing,
      `gather` and constant factors, including `log(1 - p)` and `log1p(-p)`;
    - `exp` of a tensor nothing bounds above (not the output of clamp, tanh, sigmoid, log_softmax,
      nor `x - x.max()`);
    - division by a sum, mean, norm, std, variance or count computed in the step, or by the sum of
      two of them (a Dice denominator, `p.sum() + mask.sum()`), not clamped and with no eps added
      (sums of strictly positive constants, such as class weights, excepted);
    - `sqrt`, `rsqrt` or `pow(x, p < 1)` of a quantity that can be exactly zero: squared
      differences and their sums, variances, norms, ReLU outputs.
    Fused ops (`cross_entropy`, `binary_cross_entropy_with_logits`, `log_softmax`, `logsumexp`,
    `layer_norm`, `batch_norm`, `softmax` itself) are safe and never reported.

    ## Why it breaks training
    These ops are finite for the values a fresh model produces and stop being finite for values
    training pushes towards. `log(1 - sigmoid(x))` returns -inf once a logit passes about 17 in
    float32 (1 - p rounds to 0), `log(softmax(x))` once a logit gap passes about 87; `0 * -inf` is
    NaN, so even the term a target switches off poisons the loss. `exp(x)` overflows at x ~ 88.7
    (11 in float16). A divisor that is a count of valid entries is zero for a batch with none; a
    norm is zero for a zero vector. `sqrt(s)` has slope `1 / (2 sqrt(s))`: at `s = 0` (two equal
    points, a sample paired with itself) the gradient is infinite and, through the square under it,
    NaN. Such a run trains for thousands of steps and then turns NaN, long after a short check.

    ## Evidence
    Each hazard: the op, its pattern (`log(1 - sigmoid(x))`, `x / sum(...)`), the op that made its
    operand and where, the module it ran in, whether it is in the model, the loss or the
    `train_step`, the user's `file:line` and source line, and how close it is to firing now: for a
    log, the smallest argument and the margin in nats before log returns -inf (`margin`, about the
    distance in logits); for exp, its largest argument and the margin before overflow; for a
    division, the divisor's smallest value and zeros; for a square root, the argument's smallest
    value and how many entries are exactly zero. When the overfit probe's first NaN was born at the
    same line, `fired_in_training` says so; when the data scan found samples with finite inputs whose
    loss at init is already NaN/Inf, a hazard in the loss is `fires on samples` (critical: scored one
    by one, a Dice denominator of an empty mask predicted empty is 0 now). The cure rewrites the
    hazards on the fly on a copy (`log(sigmoid(x))` -> `logsigmoid(x)`, `log(softmax(x))` -> `log_softmax(x)`, an eps under
    divisions and square roots, a clamp before exp; with or without a gradient, so the copy's
    eval-mode and per-sample scores are rewritten too), checks that a traced step of the copy shows
    none and that it still trains; for a log or a square root it first trains both copies at
    {factor:g}x the learning rate for {steps} steps, where the untreated one reaches its NaN and the
    treated one does not (no more steps than the plan gives a cure).

    ## Fix
    Write the stable form: `F.logsigmoid(x)` for `log(sigmoid(x))`, `F.logsigmoid(-x)` for
    `log(1 - sigmoid(x))` (or the whole hand-written binary cross-entropy as
    `nn.BCEWithLogitsLoss()(x, y)`), `torch.log_softmax(x, dim)` for `log(softmax(x, dim))` (or
    `nn.CrossEntropyLoss` on the logits); `torch.clamp(d, min=eps)` under a division (a count:
    `mask.sum().clamp(min=1)`); `torch.sqrt(x + eps)` for a distance; `exp(x - x.max(dim,
    keepdim=True).values)`, `torch.logsumexp`, `F.softplus` or a clamp before `exp`.

    ## Known false positives
    An operand that can never reach the edge for reasons the trace cannot see: a divisor that is a
    count of entries every batch is guaranteed to have, a distance between points that can never
    coincide, an `exp` of a parameter that a schedule keeps small. The rewrite then changes nothing
    that matters and the finding stays a warning. An `exp` whose largest argument is under
    `exp_far_share` of its dtype's overflow point (a VAE's `log_var.exp()` at 1.3, a flow's scale at
    0.5, against 88.7 in float32) is only a note: such a value reaches the edge once training has
    diverged for other reasons, where a log of a probability reaches it as the model sharpens. In
    float16 the edge is 11: the same exp is a warning from 2.8 up.
    Library code under `site-packages` is not traced
    as the user's, and a hazard written inside a custom `train_step` (outside the model and the
    loss) is reported but its cure is not tried.
    """.format(factor=STRESS_LR_FACTOR, steps=STRESS_STEPS)

    def check(self, ev: Evidence):
        r = ev.ok("hazards")
        if r is None:
            return None
        hazards = [dict(h) for h in r.metrics.get("hazards") or []]
        if not hazards:
            return None
        # 1. did one of them already fire in the overfit run (its first NaN born at the same line)?
        birth = _birth(ev)
        on_samples = _nonfinite_sample_losses(ev)
        for h in hazards:
            self._grade(h, birth)
            if on_samples and h.get("in") == "loss" and h.get("state") == "not yet":
                # single samples with finite inputs already get a NaN/Inf loss at init (the data scan): the op fires
                h.update(severity="critical", confidence=self.thresholds["confidence_fired"],
                         state="fires on samples", samples=on_samples)
        ranked = sorted(hazards, key=lambda h: (-severity_rank(h["severity"]), -h["confidence"], _margin(h)))
        top = ranked[0]
        fired = [h for h in ranked if h.get("state") == "fired in training"]
        evidence = {"kind": top["kind"], "op": top["op"], "pattern": top.get("pattern"), "where": top["where"],
                    "code": top.get("code"), "state": top.get("state"), "hazards": ranked,
                    "hazard_count": r.metrics.get("hazard_count") or len(ranked),
                    "fired_in_training": birth if fired else None,
                    "overfit_nonfinite_step": _overfit_nonfinite(ev)}
        finding = self.finding(top["confidence"], evidence, severity=top["severity"], title=title(top, len(ranked)),
                               fix=fix_text(ranked))
        if not self._explains(ranked, birth, ev):
            finding.explains = ()   # it has not fired, and no NaN here is unaccounted for: it explains nothing seen
        return finding

    def _grade(self, h: dict, birth: dict | None) -> None:
        t, kind = self.thresholds, h["kind"]
        base = {"log-of-probability": t["confidence_log"], "sqrt-at-zero": t["confidence_sqrt"],
                "division-by-zeroable": t["confidence_division"], "exp-unbounded": t["confidence_exp"]}[kind]
        lines = {h.get("where"), h.get("producer_where"), h.get("origin_where")} - {None}
        if birth is not None and birth.get("where") in lines:   # the NaN was born at the op, or at the square under it
            h.update(severity="critical", confidence=t["confidence_fired"], state="fired in training")
        elif h.get("fires_now"):
            h.update(severity="critical", confidence=t["confidence_fired"], state="fires now")
        elif kind in FIRING_KINDS and self._near_edge(h):
            h.update(severity="critical", confidence=t["confidence_near_edge"], state="near its edge")
        elif kind == "exp-unbounded" and self._far_from_overflow(h):
            h.update(severity="info", confidence=base, state="far from its edge")
        else:
            h.update(severity="warning", confidence=base, state="not yet")

    def _far_from_overflow(self, h: dict) -> bool:
        """An exp whose largest argument is a small share of the overflow point: a log of a probability reaches
        its edge as training sharpens the model; an exp of a pre-activation in float32 only once training diverged."""
        hi, limit = h.get("arg_max"), h.get("overflow_at")
        return isinstance(hi, (int, float)) and isinstance(limit, (int, float)) and limit > 0 \
            and hi < self.thresholds["exp_far_share"] * limit

    def _near_edge(self, h: dict) -> bool:
        t = self.thresholds
        if h["kind"] == "log-of-probability":
            margin = h.get("margin")
            return isinstance(margin, (int, float)) and margin <= t["near_edge_margin"]
        lo, hi, zeros = h.get("arg_min"), h.get("arg_max"), h.get("zeros")
        if zeros:
            return True
        return isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and hi > 0 \
            and lo <= t["near_zero_ratio"] * hi

    @staticmethod
    def _explains(hazards: list[dict], birth: dict | None, ev: Evidence) -> bool:
        """A hazard accounts for the NaN symptoms when it fired, or when a NaN came from a place nobody
        located and a hazard that makes NaN (a log, a square root) sits on the path."""
        if any(h.get("state") in ("fired in training", "fires now", "fires on samples") for h in hazards):
            return True
        if _overfit_nonfinite(ev) is None:
            return False
        return (birth is None or not birth.get("where")) and any(h["kind"] in FIRING_KINDS for h in hazards)

    def cures(self, ctx, finding):
        hazards = finding.evidence.get("hazards") or []
        if not hazards or any(h.get("in") == "step" for h in hazards):
            return []   # written in the user's own train_step: the rewrite only reaches the model and the loss
        tried = "rewrote " + "; ".join(dict.fromkeys(f"{rewrite_of(h)} at {h.get('where')}" for h in hazards))
        variant = rewritten(ctx.patient, tried, loss=any(h.get("in") == "loss" for h in hazards))
        measured = judges.measured("hazards", at_most=0)
        kept = judges.measured("hazards", at_least=1, arm="before")
        cures = []
        if ctx.patient.lr and any(h["kind"] in FIRING_KINDS for h in hazards):
            # no longer than the plan's cure (both arms train here, the control is not the overfit probe's)
            steps = min(STRESS_STEPS, int(ctx.planned_steps)) if ctx.planned_steps else STRESS_STEPS
            cures.append(Cure(f"{tried}; both copies trained at {STRESS_LR_FACTOR:g}x the learning rate for "
                              f"{steps} steps", variant, judge=judges.both(measured, kept, judges.fixes(stays_finite)),
                              measure=hazard_count, train=stress_run, steps=steps, severity="critical"))
        cures.append(Cure(tried, variant, judge=judges.both(measured, kept, trains_as_before), measure=hazard_count))
        return cures


def _birth(ev: Evidence) -> dict | None:
    nf = ev.ok("nonfinite")
    birth = nf.metrics.get("birth") if nf is not None else None
    if not birth:
        return None
    return {"op": birth.get("op"), "where": birth.get("where"), "phase": birth.get("phase"),
            "step": nf.metrics.get("step")}


def _nonfinite_sample_losses(ev: Evidence) -> int:
    """How many samples with finite inputs and targets the data scan found with a NaN/Inf loss at init (0 when
    none, or when the samples themselves hold NaN: then the data is the source)."""
    r = ev.ok("data_scan")
    if r is None or (r.metrics.get("nonfinite") or {}).get("count"):
        return 0
    return int(((r.metrics.get("loss") or {}).get("nonfinite") or {}).get("count") or 0)


def _overfit_nonfinite(ev: Evidence) -> int | None:
    over = ev.ok("overfit")
    return over.metrics.get("nonfinite_step") if over is not None else None


def _margin(h: dict) -> float:
    """How far a hazard is from firing, where its kind has a margin (smaller first)."""
    m = h.get("margin")
    return float(m) if isinstance(m, (int, float)) else float("inf")


def _num(x, fmt: str = ".3g") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else "?"


def title(h: dict, n: int) -> str:
    """The finding's title from its worst hazard, in numbers."""
    kind, where, pat = h["kind"], h.get("where") or "an unknown line", h.get("pattern") or h["op"]
    if h.get("state") == "fired in training":
        state = "its NaN already came in the overfit run"
    elif h.get("state") == "fires now":
        state = "it returns NaN/Inf already"
    elif kind == "log-of-probability":
        state = f"-inf once its argument moves {_num(h.get('margin'))} nats further (smallest now {_num(h.get('arg_min'))})"
    elif kind == "exp-unbounded":
        state = f"Inf once its argument passes {_num(h.get('overflow_at'))} (largest now {_num(h.get('arg_max'))})"
    elif kind == "division-by-zeroable":
        state = f"Inf/NaN when the divisor is 0 (smallest now {_num(h.get('divisor_min'))})"
    else:
        zeros = h.get("zeros")
        state = (f"infinite gradient at 0 ({zeros} of {h.get('numel')} entries are 0 now)" if zeros else
                 f"infinite gradient at 0 (smallest now {_num(h.get('arg_min'))})")
    more = f" (+{n - 1} more)" if n > 1 else ""
    return f"{pat} at {where}: {state}{more}"


def rewrite_of(h: dict) -> str:
    """What the cure writes instead, in the user's terms."""
    kind = h["kind"]
    if kind == "log-of-probability":
        if h.get("producer_kind") == "sigmoid":
            return f"{h.get('pattern')} as logsigmoid({'-' if h.get('complement') else ''}x)"
        if not h.get("complement"):
            return f"{h.get('pattern')} as log_softmax(x, dim={h.get('dim')})"
        return f"{h.get('pattern')} with its argument clamped at 1e-12"
    if kind == "exp-unbounded":
        return f"{h.get('pattern')} as exp(clamp(x, max={EXP_MAX:g}))"
    if kind == "division-by-zeroable":
        return f"{h.get('pattern')} with the divisor clamped at {1 if h.get('divisor_is_count') else DIV_EPS:g}"
    return f"{h.get('pattern')} with {SQRT_EPS:g} added under the root"


def snippet(h: dict) -> str:
    """The stable form of one hazard, in the user's terms (x the logits, d the divisor)."""
    kind, pat, made = h["kind"], h.get("pattern"), h.get("producer")
    if kind == "log-of-probability":
        if h.get("producer_kind") == "sigmoid":
            return f"{'F.logsigmoid(-x)' if h.get('complement') else 'F.logsigmoid(x)'} instead of {pat}"
        if not h.get("complement"):
            return f"torch.log_softmax(x, dim={h.get('dim')}) instead of {pat}"
        return f"torch.log(torch.clamp(1 - p, min=1e-12)) instead of {pat}"
    if kind == "exp-unbounded":
        return (f"torch.exp(torch.clamp(x, max={EXP_MAX:g})) instead of {pat} (for a softmax, "
                "x - x.max(dim, keepdim=True).values, or torch.logsumexp)")
    if kind == "division-by-zeroable":
        if h.get("divisor_is_count"):
            return f"x / d.clamp(min=1) instead of {pat} (d the count: a {made})"
        return f"x / torch.clamp(d, min={DIV_EPS:g}) instead of {pat} (d the {made})"
    return f"torch.sqrt(d + {SQRT_EPS:g}) instead of {pat} (d the {made}; F.pairwise_distance adds its own eps)"


ALTERNATIVES = {"sigmoid": "A binary cross-entropy written by hand is nn.BCEWithLogitsLoss()(x, y) on the logits.",
                "softmax": "A cross-entropy written by hand is nn.CrossEntropyLoss()(x, y) on the logits."}


def fix_text(hazards: list[dict]) -> str:
    """One sentence per line of the user's code, then the fused loss that replaces a hand-written one."""
    by_where: dict = {}
    for h in hazards:
        by_where.setdefault(h.get("where"), []).append(snippet(h))
    parts = [f"at {where}: " + " and ".join(dict.fromkeys(snips)) for where, snips in by_where.items()]
    alts = dict.fromkeys(ALTERNATIVES[h["producer_kind"]] for h in hazards
                         if h["kind"] == "log-of-probability" and h.get("producer_kind") in ALTERNATIVES)
    return "Write the stable form " + "; ".join(parts) + "." + "".join(" " + a for a in alts)
