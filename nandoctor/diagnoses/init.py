"""bad-init: the configured initialisation trains far worse than a standard one."""

from __future__ import annotations

import math

from nandoctor import treatments
from nandoctor.diagnoses import Diagnosis
from nandoctor.probes.init_compare import scheme_factory
from nandoctor.records import Evidence


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


class BadInit(Diagnosis):
    code = "bad-init"
    title = "The configured initialisation trains far worse than a standard one"
    severity = "critical"
    role = "cause"
    requires = ("init",)
    explains = ("exploding-gradients", "vanishing-gradients", "cannot-overfit-batch", "dead-relu",
                "saturated-activation", "initial-loss-mismatch")
    thresholds = {
        "tail_ratio": 3.0,        # the user's final loss at least 3x the best standard init's ...
        "min_gap": 0.25,          # ... and above it by 25% of the best scheme's initial loss (not noise near 0)
        "critical_ratio": 10.0,   # 10x worse (or non-finite while a standard init stays finite): critical
    }
    fix = ("Remove the custom initialisation (PyTorch's default reset_parameters() is sound) or use the standard "
           "init named in the evidence: nn.init.kaiming_normal_(w, nonlinearity='relu') for ReLU nets, "
           "nn.init.xavier_uniform_(w) for tanh/sigmoid, biases zero.")
    doc = """
    ## What it detects
    The `init` probe trains the user's architecture several times for the same short number of
    steps on the same batches: once as the user's factory initialises it, and once each with
    PyTorch's default (`reset_parameters()` on every module), Kaiming, Xavier and orthogonal
    weights (biases zero). The finding fires when the user's init is a custom one (its weight
    scale differs from the default's) and ends far above the best standard init, or goes
    non-finite while that one stays finite.

    ## Why it breaks training
    Weights too large make activations and gradients grow layer after layer (overflow, NaN,
    saturated units); too small makes them shrink to nothing (vanishing gradients, a network stuck
    at its initial loss); constant weights make all units identical forever. The optimizer then
    starts far from any region where it can make progress.

    ## Evidence
    The final loss of every scheme, the best standard scheme, the ratio and gap to the user's,
    each layer's weight std relative to the default's, and plots/init.png: loss curves and the
    activation/gradient profiles by depth of every scheme side by side. The treatment re-runs the
    single-batch training with the best standard init.

    ## Fix
    Drop the custom init or replace it by the best scheme found.

    ## Known false positives
    Inits that start slow on purpose (zero-initialised last layers or residual branches) can lose a
    very short race; the thresholds ask for a 3x gap. Pretrained weights loaded in the factory are
    reported as a custom init and should win, not lose.
    """

    def check(self, ev: Evidence):
        r = ev.ok("init")
        if r is None:
            return None
        m, t = r.metrics, self.thresholds
        schemes, best = m.get("schemes") or {}, m.get("best_standard")
        user = schemes.get("as configured")
        if best is None or user is None or m.get("user_is_default"):
            return None  # no standard init trained, or the user's init is PyTorch's own
        ref = schemes[best]
        user_tail, best_tail, best_init = user.get("tail_loss"), ref.get("tail_loss"), ref.get("initial_loss")
        # 1. non-finite while the standard init stays finite, or far above it
        nonfinite = user.get("nonfinite_step") is not None or not _finite(user_tail)
        ratio = None
        if not nonfinite:
            if not (_finite(best_tail) and _finite(best_init)):
                return None
            gap = user_tail - best_tail
            ratio = user_tail / best_tail if best_tail > 0 else math.inf
            if ratio < t["tail_ratio"] or gap < t["min_gap"] * abs(best_init):
                return None
        critical = nonfinite or ratio >= t["critical_ratio"]
        confidence = 0.9 if nonfinite else min(0.9, 0.6 + 0.15 * math.log10(ratio / t["tail_ratio"] + 1))
        evidence = {"best_standard_init": best, "user_final_loss": user_tail, "best_final_loss": best_tail,
                    "ratio": ratio, "user_nonfinite_step": user.get("nonfinite_step"),
                    "final_loss_by_scheme": {s: v.get("tail_loss") for s, v in schemes.items()},
                    "weight_std_vs_default": m.get("user_std_over_default"), "steps": m.get("steps"),
                    "mode": m.get("mode")}
        what = f"goes non-finite where the {best} init trains" if nonfinite else \
            f"ends {ratio:.3g}x higher than the {best} init"
        return self.finding(confidence, evidence, severity="critical" if critical else "warning", plots=r.plots,
                            title=f"The configured init {what} (loss {_fmt(user_tail)} vs {_fmt(best_tail)})")

    def treat(self, ctx, finding):
        """The single-batch training again with the best standard init; cured when it ends far lower."""
        scheme = finding.evidence["best_standard_init"]
        tried = f"re-initialised with the {scheme} init"
        variant = ctx.patient.variant(tried, model_factory=scheme_factory(ctx.patient, scheme))
        # 1. the untreated run first: the cure must beat it by the same ratio the probe asked for
        steps = ctx.steps(lo=treatments.MIN_STEPS, hi=treatments.MAX_STEPS, per_step=ctx.step_time * 1.1)
        before, before_acc = treatments.overfit_run(ctx, ctx.patient, steps)
        target = before.tail() / self.thresholds["tail_ratio"] if _finite(before.tail()) and \
            before.nonfinite_step is None else math.inf

        def judge(run, accuracy) -> bool:
            if math.isinf(target):  # the untreated run went non-finite: the cure must train properly
                return treatments.healthy_run(run, accuracy)
            return not run.error and run.nonfinite_step is None and bool(run.losses) \
                and min(run.losses) >= -1e-6 and run.tail() <= target
        return treatments.try_cure(ctx, variant, tried, code=self.code, judge=judge, before=before,
                                   before_accuracy=before_acc)


def _fmt(x) -> str:
    return f"{x:.4g}" if _finite(x) else str(x)
