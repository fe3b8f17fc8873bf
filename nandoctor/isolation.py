"""placeholder"""
from nandoctor.faults import run_guarded


def run_probe(probe, ctx):
    return run_guarded(probe, ctx)
