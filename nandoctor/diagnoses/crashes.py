"""Crashes as evidence: the user's code raised during a probe, or a probe itself failed."""

from __future__ import annotations

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence
from nandoctor.treatments.judges import arm_clean, arms_of


class TrainingCrashed(Diagnosis):
    code = "training-crashed"
    title = "Training raises an exception"
    severity = "critical"
    role = "symptom"
    generic = True
    requires = ()
    accepts_failed = True
    fix = "Fix the error at the line shown; the findings ranked above this one may name its cause."
    doc = """
    ## What it detects
    The user's own code (model forward, loss, `train_step`, dataset `__getitem__`) raised an
    exception while a probe was training a copy of the model.

    ## Why it breaks training
    Training cannot run at all, or dies part-way (e.g. only on some batches).

    Also the last batch of an epoch: with `len(data) % batch_size` samples left over, the
    structure probe runs one step (learning rate zero) on exactly those samples, since a
    DataLoader keeps that smaller batch unless `drop_last=True`. A model that fixes the batch size
    in a `view` (`scores.view(64, 10)`) or a BatchNorm layer handed one sample trains every full
    batch and dies at the end of the first epoch, where no probe's run of full batches looks.

    ## Evidence
    The exception type and message, the file and line in the user's code where it was raised,
    the probe and the step; for the last batch, its size against the dataset and the batch size.

    ## Fix
    Read the message and fix the code at the line shown. Specific diagnoses (`target-out-of-range`,
    `probability-loss-on-logits`, `loss-shape-mismatch`, ...) explain common causes and rank above this.

    ## Known false positives
    None: the exception is real. It may however be a consequence of an earlier NaN.
    """

    def check(self, ev: Evidence):
        crashed = [(name, r) for name, r in ev.items()
                   if r.status == "failed" and r.error and not r.error.get("internal")]
        if not crashed:
            return self._last_batch(ev)
        name, r = crashed[0]
        e = r.error
        evidence = {"exception": e.get("type"), "message": e.get("message"), "where": e.get("where"),
                    "probe": name, "step": e.get("step"), "phase": e.get("phase"),
                    "also_in": [n for n, _ in crashed[1:]]}
        return self.finding(0.95, evidence, probes=[name],
                            title=f"Training raises {e.get('type')}: {e.get('message', '')[:120]}")

    def _last_batch(self, ev: Evidence):
        """Every full batch trains, the last one of the epoch (fewer samples) raises: the run dies at the end of
        its first epoch, after the probes' own runs (full batches) saw nothing wrong."""
        r = ev.ok("structure")
        last = r.metrics.get("last_batch") if r is not None else None
        e = (last or {}).get("error")
        if not e or e.get("internal"):
            return None
        k, n, size = last["samples"], last["dataset"], last["batch_size"]
        evidence = {"exception": e.get("type"), "message": e.get("message"), "where": e.get("where"),
                    "probe": "structure", "phase": "the last batch of an epoch", "last_batch_samples": k,
                    "dataset_samples": n, "batch_size": size, "also_in": []}
        f = self.finding(0.9, evidence, probes=["structure"],  # seen: the user's own step raised on that batch
                         title=f"Training raises {e.get('type')} on the last batch of every epoch ({k} sample{'s' * (k != 1)}: "
                               f"{n} % {size}), every full batch trains: {e.get('message', '')[:100]}")
        f.fix = (f"Make the code at {e.get('where') or 'the line shown'} follow the batch it gets (x.size(0), "
                 f"view(-1, ...), reshape(len(x), ...)) instead of the configured batch size, or give the "
                 f"DataLoader drop_last=True (a BatchNorm layer cannot train on a batch of one sample).")
        f.observed = True   # the user's own step raised on that batch: seen, not inferred
        return f

    def gone_with(self, finding, cause_treatment):
        """The cause's untreated run raised the same exception; its cured run trained without one."""
        before, after, protocol = arms_of(cause_treatment)
        raised = str(before.get("error") or "")
        if protocol is None or not raised or not arm_clean(after):
            return None
        message = str(finding.evidence.get("message") or "")
        if message and message[:60] not in raised and raised[:60] not in message:
            return None  # the control raised something else: not this crash
        return f"the untreated run raised it; the cure's run trained {after.get('steps')} steps without an exception"


class ProbeFailed(Diagnosis):
    code = "probe-failed"
    title = "A probe could not run"
    severity = "info"
    role = "symptom"
    requires = ()
    accepts_failed = True
    fix = "Nothing to fix in your set-up; the evidence this probe would have given is missing from the report."
    doc = """
    ## What it detects
    One of nandoctor's probes failed for a reason inside nandoctor rather than in the user's code
    (an unsupported model output type, say).

    ## Why it breaks training
    It does not; it only means the diagnoses that needed that probe were not evaluated.

    ## Evidence
    The probe, the exception type and message.

    ## Fix
    Run again with `--probes` excluding it, and report the message to the nandoctor maintainers.

    ## Known false positives
    None.
    """

    def check(self, ev: Evidence):
        failed = [(n, r) for n, r in ev.items() if r.status == "failed" and r.error and r.error.get("internal")]
        return [self.finding(0.5, {"probe": n, "exception": r.error.get("type"), "message": r.error.get("message")},
                             probes=[n], title=f"The {n} probe could not run: {r.error.get('type')}")
                for n, r in failed] or None
