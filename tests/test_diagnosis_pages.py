"""Every registered diagnosis carries a complete doc page and sane metadata."""

import pytest

from nandoctor import diagnoses, probes
from nandoctor.diagnoses import DOC_SECTIONS
from nandoctor.records import SEVERITIES

REGISTRY = diagnoses.load_all()
PROBES = probes.load_all()


@pytest.mark.parametrize("code", sorted(REGISTRY))
def test_page_has_every_section(code):
    diag = REGISTRY[code]
    page = diag.page()
    for section in DOC_SECTIONS:
        assert f"## {section}" in page, f"{code}: missing section {section!r}"
    assert diag.title and diag.fix
    assert diag.severity in SEVERITIES and diag.role in ("cause", "symptom")
    assert all(p in PROBES for p in diag.requires), f"{code} requires an unknown probe"
    assert all(c in REGISTRY for c in diag.explains), f"{code} explains an unknown code"
