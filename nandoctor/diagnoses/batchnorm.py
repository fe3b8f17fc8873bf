"""batchnorm-small-batch and train-eval-gap: layers that behave differently in train() and eval() mode."""

from __future__ import annotations

import math

import torch

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, Outcome, judges


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def better(before, after, scale, ratio: float, gap: float) -> bool:
    """``after`` clearly beats ``before``: non-finite/failed -> finite, or ``ratio`` x lower by ``gap`` x scale."""
    if not _finite(after):
        return False
    if not _finite(before):
        return True
    return before >= ratio * after and before - after >= gap * abs(scale or 1.0)


class BatchNormSmallBatch(Diagnosis):
    code = "batchnorm-small-batch"
    title = "BatchNorm's batch statistics do not describe the data: too few samples, or one class, per batch"
    severity = "critical"
    role = "cause"
    requires = ("bn_freeze",)
    explains = ("train-eval-gap", "exploding-gradients", "cannot-overfit-batch", "training-crashed")
    thresholds = {
        "small_batch": 8,          # samples per batch below which BatchNorm statistics are noise
        "min_values": 8,           # values averaged per channel (N x spatial) below which they are noise
        "cure_ratio": 2.0,         # frozen BN / larger batch: held-out eval loss at least 2x lower ...
        "cure_gap": 0.2,           # ... and lower by 20% of the fresh model's eval loss
        "one_class": 0.9,          # stream batches whose most common class is 90% of the batch (median) ...
        "mixed": 0.75,             # ... where a random batch of the same size is at most 75% one class
        "shuffle_cure": 0.5,       # shuffled: the held-out eval-mode loss at most half the configured one
    }
    fix = ("Use a larger batch (gradient accumulation keeps memory flat but does NOT help BatchNorm), freeze "
           "BatchNorm (model.eval() on the BN layers and requires_grad=False on their weights, as when "
           "fine-tuning), or replace it by GroupNorm/LayerNorm, which do not depend on the batch.")
    doc = """
    ## What it detects
    BatchNorm normalises with the mean and variance of the current batch. With a handful of samples
    per batch those estimates are noise; with batches that each hold one class (rows sorted by
    class, loaded with `shuffle: false`) they are the class's own statistics, and normalising by them
    removes the very signal the model should learn. The `bn_freeze` probe counts the values each BatchNorm layer
    averages per channel at the user's batch size, and trains three fresh copies for the same steps:
    as configured, with BatchNorm frozen (eval-mode statistics, affine weights frozen), and with a
    larger batch; each is then scored in eval mode on the same held-out batch. It also counts the
    classes in the first 16 batches of the user's stream against a random batch of the same size.

    ## Why it breaks training
    Tiny-batch statistics make every step's normalisation different: the loss is noisy, the running
    statistics used at evaluation do not match what the layers saw in training (a large train/eval
    gap), and with one sample per channel BatchNorm cannot normalise at all (it raises, or outputs
    zeros). One-class batches are worse: in `train()` mode every batch is centred on itself, so the
    features that tell the classes apart are subtracted away, and the model learns nothing it can
    use in `eval()` mode.

    ## Evidence
    The batch size, the values per channel of each BatchNorm layer, and the held-out eval-mode loss
    of each variant (plots/bn_freeze.png). The larger batch trains for the same number of steps, so
    it also sees more samples (the factor is in the evidence); the frozen-BatchNorm copy sees exactly
    the user's batches. The treatment record is the probe's comparison: the user's
    set-up against the frozen-BatchNorm (or larger-batch) copy. For one-class batches the median
    share of the most common class in the stream's batches and in a random batch, and first the
    user's own fix as the cure: the same training with the stream shuffled, judged on the held-out
    batch in eval mode.

    ## Fix
    A batch of 16 or more per BatchNorm layer; otherwise freeze BatchNorm or use GroupNorm/LayerNorm.
    Batches of one class: `shuffle=True` in the DataLoader (or shuffle the rows once).

    ## Known false positives
    Very short runs where neither variant has learned anything yet (no cure is then claimed and the
    finding stays a warning); pretrained BatchNorm fine-tuned on purpose with tiny batches.
    """

    def check(self, ev: Evidence):
        r = ev.ok("bn_freeze")
        if r is None:
            return None
        m, t = r.metrics, self.thresholds
        bs, per_channel = m.get("batch_size"), m.get("min_values_per_channel")
        small = (bs is not None and bs < t["small_batch"]) \
            or (per_channel is not None and per_channel < t["min_values"])
        stream, mixed = m.get("stream_majority_share"), m.get("random_majority_share")
        one_class = _finite(stream) and _finite(mixed) and stream >= t["one_class"] and mixed <= t["mixed"]
        if not small and not one_class:
            return None
        # 1. did freezing BatchNorm or a larger batch clearly beat the configured run?
        variants = m.get("variants") or {}
        mine = variants.get("as configured", {})
        before = mine.get("eval_loss") if not mine.get("error") else math.nan
        cures = {k: v.get("eval_loss") for k, v in variants.items() if k != "as configured"
                 and better(before, v.get("eval_loss"), m.get("initial_eval_loss"), t["cure_ratio"], t["cure_gap"])}
        confidence = 0.9 if cures else 0.55
        evidence = {"batch_size": bs, "min_values_per_channel": per_channel,
                    "values_per_channel": m.get("values_per_channel"), "configured_error": mine.get("error"),
                    "eval_loss": {k: v.get("eval_loss") for k, v in variants.items()},
                    "cured_by": sorted(cures), "steps": m.get("steps"),
                    # the larger batch trains the same steps, so it also sees this many times the samples
                    "larger_batch_sample_factor": m["larger_batch"] / bs if m.get("larger_batch") and bs else None,
                    "small_batch": small, "one_class_batches": one_class,
                    "stream_majority_share": stream, "random_majority_share": mixed,
                    "stream_classes_per_batch": m.get("stream_classes_per_batch"),
                    "random_classes_per_batch": m.get("random_classes_per_batch")}
        how = f"; {' and '.join(sorted(cures))} fixes it" if cures else ""
        severity = "critical" if cures or mine.get("error") else "warning"
        if one_class and not small:
            return self.finding(
                confidence, evidence, severity=severity, plots=r.plots,
                fix=("Shuffle the training data (DataLoader(..., shuffle=True), or shuffle the rows once): every "
                     "batch should hold a mix of classes. Otherwise freeze BatchNorm or use GroupNorm/LayerNorm."),
                title=(f"Every batch of your data stream is {stream:.0%} one class (a random batch of {bs}: "
                       f"{mixed:.0%}): BatchNorm normalises the classes away{how}"))
        return self.finding(confidence, evidence, severity=severity, plots=r.plots,
                            title=f"BatchNorm sees {bs} samples per batch ({per_channel} values per channel){how}")

    def cures(self, ctx, finding):
        """The probe already trained the cures on copies (frozen BN, a larger batch, GroupNorm): its
        comparison, judged by ``better`` on the held-out eval-mode loss, is the treatment."""
        r = ctx.evidence.ok("bn_freeze")
        if r is None:
            return []
        variants = r.metrics["variants"]
        cured_by = finding.evidence["cured_by"]
        pick = "frozen BN" if "frozen BN" in cured_by or not cured_by else cured_by[0]
        tried = "froze BatchNorm (eval-mode statistics, affine weights frozen)" if pick == "frozen BN" \
            else f"trained with {pick}"
        keep = ("eval_loss", "final_loss", "tail_loss", "steps", "nonfinite_step", "error")
        arms = tuple(Outcome.reported({k: variants[v].get(k) for k in keep}) for v in ("as configured", pick))
        t = self.thresholds
        by = f"the bn_freeze probe: eval-mode loss {t['cure_ratio']:g}x lower by {t['cure_gap']:g}x the fresh loss"
        frozen = Cure(tried, done=arms, judge=judges.decided(pick in cured_by, by))
        if not finding.evidence.get("one_class_batches") or ctx.patient.shuffle:
            return [frozen]
        # one class per batch: the user's own fix first, the same training with the stream shuffled
        shuffled = ctx.patient.variant("the data stream shuffled", shuffle=True)
        return [Cure("trained on the same data shuffled (shuffle=True)", shuffled, train="held_out",
                     steps=r.metrics.get("steps"), judge=judges.measure_lower("held_out_loss", t["shuffle_cure"])),
                frozen]


class TrainEvalGap(Diagnosis):
    code = "train-eval-gap"
    title = "The same batch scores very differently in train() and eval() mode"
    severity = "warning"
    role = "cause"
    requires = ("train_eval",)
    thresholds = {
        "ratio": 3.0,           # eval-mode loss at least 3x the train-mode loss ...
        "gap": 0.5,             # ... and above it by half the fresh model's loss ...
        "noise_sigmas": 5.0,    # ... and by this many train-mode standard deviations (Dropout noise)
        "critical_ratio": 10.0,  # 10x (or a non-finite eval loss): critical ...
        "trusted_steps": 30,     # ... once the model trained this many steps (running statistics settle)
        "stale_memory": 0.5,     # a gap that re-estimating closes is a fault all the same when the momentum leaves
                                 # the running statistics this much of their initial values after the steps trained
    }
    fix = ("Look at the layers that differ between modes: BatchNorm running statistics that do not match the "
           "batches (unshuffled or class-sorted data, tiny batches, a momentum too high), a custom layer that "
           "branches on self.training, or Dropout that is not rescaled. Shuffle the data, use larger batches "
           "or GroupNorm/LayerNorm, and evaluate with the same preprocessing as training.")
    doc = """
    ## What it detects
    After a short training on the user's data stream, one batch of the user's size is scored in
    `train()` mode (several times: Dropout is random, the spread is the noise) and in `eval()` mode.
    The eval-mode loss is far above the train-mode loss, beyond that noise.

    ## Why it breaks training
    Validation, early stopping and deployment all run in eval mode. A model that is good only in
    train mode looks like it overfits or never learned: BatchNorm's running statistics describe other
    data than the batches it normalised during training (class-sorted or unshuffled batches,
    distribution shift between batches, tiny batches), or a custom layer behaves differently.

    ## Evidence
    The train-mode loss (mean and spread), the eval-mode loss, their ratio, the layers that depend
    on the mode, and plots/train_eval.png.

    ## Fix
    Shuffle the training data; use batches of 16+ per BatchNorm layer or GroupNorm/LayerNorm;
    recompute BatchNorm statistics on representative data; check custom `self.training` branches.

    ## Known false positives
    Heavy Dropout makes the train-mode loss *higher* than eval (not flagged: only eval-worse is).
    Early in training BatchNorm's running statistics lag behind the weights: the probe re-estimates
    them over a few stream batches on a copy (a cumulative average) and scores eval mode again; a
    gap that this closes is that lag, not a fault, and is not reported, unless the momentum is so low
    that the statistics still hold `stale_memory` of their initial values after the steps trained
    (`(1 - momentum) ** steps`): then training keeps them stale, and the cure (momentum 0.1, on the
    data stream, eval loss on a held-out batch) decides.
    """

    def gap(self, tr: float, ev_loss, std, scale) -> bool:
        """The eval-mode loss is far above the train-mode one (or non-finite), beyond the Dropout noise."""
        t = self.thresholds
        if ev_loss is not None and not _finite(ev_loss):
            return True
        if not _finite(ev_loss) or ev_loss < t["ratio"] * max(tr, 1e-12):
            return False
        # a gap of half the fresh model's loss; a quarter when eval is already critical_ratio times worse
        gap = t["gap"] * (0.5 if ev_loss >= t["critical_ratio"] * max(tr, 1e-12) else 1.0)
        return ev_loss - tr >= max(gap * abs(scale if _finite(scale) else 1.0), t["noise_sigmas"] * (std or 0.0))

    def check(self, ev: Evidence):
        r = ev.ok("train_eval")
        if r is None:
            return None
        m, t = r.metrics, self.thresholds
        tr, ev_loss, std, scale = m.get("train_mode_loss"), m.get("eval_mode_loss"), m.get("train_mode_std"), \
            m.get("initial_loss")
        if not _finite(tr) or not self.gap(tr, ev_loss, std, scale):
            return None
        nonfinite = ev_loss is not None and not _finite(ev_loss)
        recal = m.get("eval_mode_loss_recalibrated")
        memory, momentum = m.get("stats_memory"), m.get("bn_momentum")
        slow = _finite(memory) and memory >= t["stale_memory"]
        if _finite(recal) and not self.gap(tr, recal, std, scale) and not slow:
            return None  # BatchNorm's running statistics only lagged behind the weights: re-estimated, no gap
        ratio = ev_loss / max(tr, 1e-12) if not nonfinite else math.inf
        settled = (m.get("trained_steps") or 0) >= t["trusted_steps"]
        critical = (nonfinite or ratio >= t["critical_ratio"]) and settled
        confidence = 0.85 if critical else 0.7 if settled else 0.5
        evidence = {"train_mode_loss": tr, "train_mode_std": std, "eval_mode_loss": ev_loss, "ratio": ratio,
                    "batch_size": m.get("batch_size"), "mode_layers": m.get("mode_layers"),
                    "initial_loss": scale, "trained_steps": m.get("trained_steps"),
                    "eval_mode_loss_recalibrated": recal, "recalibration_batches": m.get("recalibration_batches"),
                    "bn_momentum": momentum, "stats_memory": memory}
        title = f"Eval-mode loss {ev_loss:.4g} vs train-mode {tr:.4g} on the same batch"
        if slow and _finite(recal) and not self.gap(tr, recal, std, scale):
            evidence["stale_running_stats"] = True   # re-estimated, the gap closes: the momentum keeps them stale
            title += (f": BatchNorm momentum {momentum:.3g} leaves the running statistics {memory:.0%} at their "
                      f"initial values after {m.get('trained_steps')} steps")
        return self.finding(confidence, evidence, severity="critical" if critical else "warning", plots=r.plots,
                            title=title)

    def cures(self, ctx, finding):
        """Running statistics kept stale by a low momentum: the same training on the data stream with PyTorch's
        default momentum (0.1), scored in eval mode on the same held-out batch; the eval loss must halve."""
        if not finding.evidence.get("stale_running_stats"):
            return []
        factory = ctx.patient.model_factory

        def build():
            model = factory()
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.momentum is not None:
                    m.momentum = 0.1
            return model
        tried = f"BatchNorm momentum {finding.evidence.get('bn_momentum'):.3g} -> 0.1 (PyTorch's default)"
        return [Cure(tried + " (on the data stream, scored in eval mode on a held-out batch)",
                     ctx.patient.variant(tried, model_factory=build), train="held_out",
                     judge=judges.measure_lower("held_out_loss", 0.5),
                     fix=("Raise the BatchNorm momentum (PyTorch's default is 0.1; a bn_decay schedule that drives it "
                          "towards 0 leaves the running statistics at what they were long ago), or re-estimate them "
                          "over a few training batches before evaluating."))]
