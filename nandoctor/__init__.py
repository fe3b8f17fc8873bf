"""nandoctor: a doctor for PyTorch training runs that go wrong.

    nandoctor diagnose config.yaml

From Python: ``nandoctor.diagnose(config_path_or_patient, budget=60) -> Report``.
"""

__version__ = "0.1.0"


def diagnose(*args, **kwargs):
    """Run the whole battery; see ``nandoctor.pipeline.diagnose``."""
    from nandoctor.pipeline import diagnose as _diagnose
    return _diagnose(*args, **kwargs)


def __getattr__(name):
    if name == "Patient":
        from nandoctor.patient import Patient
        return Patient
    raise AttributeError(name)
