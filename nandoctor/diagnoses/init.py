"""bad-init: the configured initialisation trains far worse than a standard one."""

from __future__ import annotations

import math

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, Outcome, judges
from nandoctor.treatments.rewire import reinitialised


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
        "tail_ratio": 3.0,        # the user's final (or held-out) loss at least 3x the best standard init's ...
        "min_gap": 0.25,          # ... and above it by 25% of the best scheme's initial loss (not noise near 0)
        "critical_ratio": 10.0,   # 10x worse (or non-finite while a standard init stays finite): critical
        "start_ratio": 2.0,       # the configured init's first loss at least 2x the best standard init's ...
        "start_excess": 1.0,      # ... and 1 nat above it, ending no lower: a warning, confirmed by its cure
        "stall_drop": 0.1,        # the configured init takes less than 10% off its first loss where the best
                                  # standard init trains (25% off): a warning, confirmed by its cure
    }
    fix = ("Remove the custom initialisation (PyTorch's default reset_parameters() is sound) or use the standard "
           "init named in the evidence: nn.init.kaiming_normal_(w, nonlinearity='relu') for ReLU nets, "
           "nn.init.xavier_uniform_(w) for tanh/sigmoid, biases zero.")
    doc = """
    ## What it detects
    The `init` probe trains the user's architecture several times for the same short number of
    steps on the same batches: once as the user's factory initialises it, and once each with
    PyTorch's default (`reset_parameters()` on every module), Kaiming, Xavier and orthogonal
    weights (biases zero), then scores each on held-out samples in eval mode. The finding fires
    when the user's init is a custom one (its weight scale differs from the default's, or a bias lies outside
    the range the default draws it from) and ends
    far above the best standard init on the training batches or on the held-out samples (an init
    that memorises but does not generalise), or goes non-finite while that one stays finite. As a
    warning, also when it starts far above where every standard init starts (`start_ratio` times
    the best one's first loss and `start_excess` nats above: over-confident outputs) and ends no
    lower; its cure (the standard init, starting near that first loss and training no worse)
    confirms it. As a warning too when the configured init does not train at all (less than
    `stall_drop` off its first loss) where the best standard init trains (25% off), however close
    their losses are (a 0/1 target under MSE ends near 0.25 from anywhere): a negative output bias
    under a ReLU zeroes every gradient. Its cure must then train where the configured init did not.

    ## Why it breaks training
    Weights too large make activations and gradients grow layer after layer (overflow, NaN,
    saturated units); too small makes them shrink to nothing (vanishing gradients, a network stuck
    at its initial loss); constant weights make all units identical forever. The optimizer then
    starts far from any region where it can make progress.

    ## Evidence
    The final and held-out loss of every scheme, the best standard scheme, the ratio to the user's,
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
        m = r.metrics
        schemes, best = m.get("schemes") or {}, m.get("best_standard")
        user = schemes.get("as configured")
        if best is None or user is None or m.get("user_is_default"):
            return None  # no standard init trained, or the user's init is PyTorch's own
        scale = schemes[best].get("initial_loss")
        if not _finite(scale):
            return None
        # 1. training loss: non-finite while the standard init stays finite, or far above it
        trained = self._worse(user.get("tail_loss"), schemes[best].get("tail_loss"), scale,
                              nonfinite=user.get("nonfinite_step") is not None)
        # 2. held-out loss after the same training: an init that memorises but does not generalise
        held = {s: v.get("held_out_loss") for s, v in schemes.items() if s != "as configured"}
        best_held = min((s for s, v in held.items() if _finite(v)), key=lambda s: held[s], default=None)
        general = self._worse(user.get("held_out_loss"), held.get(best_held), scale) if best_held else None
        # 3. the start: the configured init begins far above where every standard init begins (over-confident
        #    logits) and does not end any better for it (only a warning; its cure decides)
        u0, u_end, b_end = user.get("initial_loss"), user.get("tail_loss"), schemes[best].get("tail_loss")
        starts = (_finite(u0) and scale > 0 and u0 >= self.thresholds["start_ratio"] * scale
                  and u0 - scale >= self.thresholds["start_excess"] and _finite(u_end) and _finite(b_end)
                  and u_end >= b_end)
        # 4. the configured init does not train at all where the best standard init does (a negative output bias
        #    under a ReLU: every gradient zero), however close the two losses (a 0/1 target under MSE)
        u_drop = 1 - u_end / u0 if _finite(u0) and u0 > 0 and _finite(u_end) else None
        b_drop = 1 - b_end / scale if scale > 0 and _finite(b_end) else None
        stalls = u_drop is not None and b_drop is not None and u_drop < self.thresholds["stall_drop"] \
            and b_drop >= judges.TRAINS_DROP and u_end > b_end
        if m.get("user_weights_default"):   # only biases differ from the default: blamed only where the model does
            if not stalls:                  # not train at all (a bias that sets a loss or kills a layer has a more
                return None                 # specific name: initial-loss-mismatch, dead-relu)
            trained = general = None
            starts = False
        # the warnings (a stalled init, an over-confident start): what both arms did, then the scheme's losses
        common = {"best_standard_init": best, "user_initial_loss": u0, "best_initial_loss": scale,
                  "user_final_loss": u_end, "best_final_loss": b_end,
                  "final_loss_by_scheme": {s: v.get("tail_loss") for s, v in schemes.items()},
                  "weight_std_vs_default": m.get("user_std_over_default"), "steps": m.get("steps"), "mode": m.get("mode")}
        if trained is None and general is None and stalls and not starts:
            evidence = {**common, "worse_on": ["training: stalls"], "user_drop": u_drop, "best_drop": b_drop,
                        "ratio": u_end / max(b_end, 1e-12)}
            return self.finding(0.6, evidence, severity="warning", plots=r.plots,
                                title=f"With the configured init the loss does not move ({_fmt(u0)} -> {_fmt(u_end)} "
                                      f"in {m.get('steps')} steps) where the {best} init takes {b_drop:.0%} off it")
        if trained is None and general is None:
            if not starts:
                return None
            evidence = {**common, "worse_on": ["initial loss"], "ratio": u0 / scale,
                        "initial_loss_by_scheme": {s: v.get("initial_loss") for s, v in schemes.items()}}
            return self.finding(0.6, evidence, severity="warning", plots=r.plots,
                                title=f"The configured init starts at a loss of {_fmt(u0)}, {u0 / scale:.1f}x where "
                                      f"the {best} init starts ({_fmt(scale)}), and ends no better")
        ratio = max(x for x in (trained, general) if x is not None)
        nonfinite = math.isinf(ratio)
        critical = nonfinite or ratio >= self.thresholds["critical_ratio"]
        confidence = 0.9 if nonfinite else min(0.9, 0.6 + 0.15 * math.log10(ratio / self.thresholds["tail_ratio"] + 1))
        evidence = {"best_standard_init": best if trained is not None else best_held,
                    "worse_on": [w for w, x in (("training loss", trained), ("held-out loss", general))
                                 if x is not None],
                    "user_final_loss": user.get("tail_loss"), "best_final_loss": schemes[best].get("tail_loss"),
                    "user_held_out_loss": user.get("held_out_loss"),
                    "best_held_out_loss": held.get(best_held) if best_held else None,
                    "ratio": ratio, "user_nonfinite_step": user.get("nonfinite_step"),
                    "final_loss_by_scheme": {s: v.get("tail_loss") for s, v in schemes.items()},
                    "held_out_loss_by_scheme": {s: v.get("held_out_loss") for s, v in schemes.items()},
                    "weight_std_vs_default": m.get("user_std_over_default"), "steps": m.get("steps"),
                    "mode": m.get("mode")}
        return self.finding(confidence, evidence, severity="critical" if critical else "warning", plots=r.plots,
                            title=self._title(evidence, trained is not None, nonfinite))

    def _worse(self, user, best, scale: float, nonfinite: bool = False) -> float | None:
        """How many times worse the user's loss is (inf: non-finite), or None when not clearly worse."""
        if nonfinite or (user is not None and not _finite(user)):
            return math.inf if _finite(best) else None
        if not (_finite(user) and _finite(best)):
            return None
        ratio = user / best if best > 0 else math.inf
        clear = ratio >= self.thresholds["tail_ratio"] and user - best >= self.thresholds["min_gap"] * abs(scale)
        return ratio if clear else None

    @staticmethod
    def _title(e: dict, on_training: bool, nonfinite: bool) -> str:
        best = e["best_standard_init"]
        if nonfinite:
            return f"The configured init goes non-finite where the {best} init trains"
        mine, theirs, where = (e["user_final_loss"], e["best_final_loss"], "training") if on_training else \
            (e["user_held_out_loss"], e["best_held_out_loss"], "held-out")
        return f"The configured init ends with a {where} loss of {_fmt(mine)} where the {best} init " \
               f"reaches {_fmt(theirs)}"

    def cures(self, ctx, finding):
        """The single-batch training again with the best standard init; cured when it ends far lower.

        When the held-out loss is what differs (an init that memorises one batch as well as any
        other), the init probe's own comparison (same steps, same batches, held-out loss) is the
        treatment: a single-batch re-run cannot show it.
        """
        scheme = finding.evidence["best_standard_init"]
        tried = f"re-initialised with the {scheme} init"
        if finding.evidence["worse_on"] == ["initial loss"]:
            # cured: the run starts near the standard init's first loss and trains no worse
            variant = ctx.patient.variant(tried, model_factory=reinitialised(ctx.patient, scheme))
            start = finding.evidence["best_initial_loss"]
            return [Cure(tried, variant, judge=judges.both(judges.starts_near(start, 1.5), judges.trains_no_worse(1.05)))]
        if "held-out loss" in finding.evidence["worse_on"]:
            keep = ("held_out_loss", "tail_loss", "steps", "nonfinite_step")
            schemes = ctx.evidence["init"].metrics["schemes"]
            arms = tuple(Outcome.reported({k: schemes[s].get(k) for k in keep}) for s in ("as configured", scheme))
            by = f"the init probe: held-out loss {self.thresholds['tail_ratio']:g}x lower on the same steps and batches"
            return [Cure(tried + " (the init probe's run: same steps, same batches)", done=arms,
                         judge=judges.decided(True, by))]
        variant = ctx.patient.variant(tried, model_factory=reinitialised(ctx.patient, scheme))
        # where the configured init does not move at all, training at all is the cure's proof
        starts_training = judges.both(judges.fixes(judges.trains), untreated_stalls(self.thresholds["stall_drop"]))
        if finding.evidence["worse_on"] == ["training: stalls"]:
            return [Cure(tried, variant, judge=starts_training)]
        return [Cure(tried, variant, judge=judges.either(judges.tail_ratio(self.thresholds["tail_ratio"]),
                                                         starts_training))]


def untreated_stalls(share: float):
    """The untreated run takes less than ``share`` off its first loss (it does not move)."""
    @judges.judge(f"the untreated run took under {share:.0%} off its loss")
    def j(before, after) -> bool:
        drop = judges.relative_drop(before)
        return drop is not None and drop < share
    return j


def _fmt(x) -> str:
    return f"{x:.4g}" if _finite(x) else str(x)
