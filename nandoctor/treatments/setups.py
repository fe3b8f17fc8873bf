"""What cures of the training set-up need to know about it: how long the precision runs are, whether
the device can autocast to bf16 (the precision probe's definitions, in one place)."""

from nandoctor.probes.precision import CALIBRATION, IDEAL_STEPS, MIN_STEPS, bf16_available

__all__ = ["CALIBRATION", "IDEAL_STEPS", "MIN_STEPS", "bf16_available"]
