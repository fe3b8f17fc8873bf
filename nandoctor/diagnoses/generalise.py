"""no-generalisation: the model fits the samples it trains on, and nothing carries to unseen ones."""

from __future__ import annotations

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence


class NoGeneralisation(Diagnosis):
    code = "no-generalisation"
    title = "What the model learns from its training samples does not carry to unseen ones"
    severity = "warning"
    role = "cause"
    requires = ("generalise",)
    thresholds = {
        "pool_drop": 0.08,    # the loss on the pool fell by at least 8% of its start (defined at the probe's
                              # minimum of 60 steps; longer runs only fall further) ...
        "carry_share": 0.1,   # ... while the unseen samples' loss fell by at most 10% of that fall
    }
    fix = ("Check that each input still sits beside its own label: a shuffle, sort or filter applied to the "
           "inputs but not to the targets (or a join on the wrong key) leaves labels that do not depend on the "
           "inputs. Then check that the held-out samples come from the same distribution as the training ones.")
    doc = """
    ## What it detects
    The `generalise` probe trains a fresh model on a pool of up to 256 training samples for a few
    epochs and scores, before and after, both the pool and up to 256 samples the model never saw
    (the config's val set, else training samples left out of the pool). The finding fires when the
    pool's loss falls clearly while the unseen samples' loss does not follow.

    ## Why it breaks training
    Training loss goes down (the model memorises), validation loss never does: the labels carry no
    information the inputs can predict, so nothing learnt from one sample helps on another. The
    usual cause is a pipeline bug that separates inputs from their labels (targets shuffled on
    their own, a misaligned merge, labels read from another file or in another order).

    ## Evidence
    The pool and held-out sizes, the steps and epochs over the pool, and the loss on both before
    and after training.

    ## Fix
    Print a few (input, label) pairs and check them by eye; make every shuffle, sort and filter act
    on inputs and labels together (shuffle indices, not columns); check the val set's source.

    ## Known false positives
    Tasks that need far more than 256 samples before anything generalises (large images, many
    classes): there the unseen loss moves only a little, and this warning may fire. It is never
    critical for that reason.
    """

    def check(self, ev: Evidence):
        r = ev.ok("generalise")
        if r is None or not r.metrics.get("finite"):
            return None
        m, t = r.metrics, self.thresholds
        pool_fall = m["pool_loss_before"] - m["pool_loss_after"]
        held_fall = m["held_out_loss_before"] - m["held_out_loss_after"]
        if m["pool_loss_before"] <= 0 or pool_fall < t["pool_drop"] * m["pool_loss_before"]:
            return None
        if held_fall > t["carry_share"] * pool_fall:
            return None
        evidence = {k: m[k] for k in ("pool_samples", "held_out_samples", "held_out_from", "steps",
                                      "pool_loss_before", "pool_loss_after", "held_out_loss_before",
                                      "held_out_loss_after")}
        evidence["share_carried"] = held_fall / pool_fall
        return self.finding(0.6, evidence, title=f"The model fits its training samples (loss {m['pool_loss_before']:.3g}"
                            f" -> {m['pool_loss_after']:.3g}) but unseen samples do not follow "
                            f"({m['held_out_loss_before']:.3g} -> {m['held_out_loss_after']:.3g})")
