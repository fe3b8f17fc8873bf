"""The letter as a person sees it: report.html opened in headless Chromium (screenshot and DOM).

Skips where no Chromium is installed (`make test` installs Debian's `chromium` when it can)."""

import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

import letter_docs
from nandoctor.cli import app

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium on this machine: `apt-get install chromium` "
                                                        "(or `make test` as root) to run the browser test")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--hide-scrollbars"]


def _browser(*args, timeout=90) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, *FLAGS, *args], capture_output=True, text=True, timeout=timeout)


def _letter(tmp_path, doc):
    src = letter_docs.write(tmp_path / "src", doc)
    result = CliRunner().invoke(app, ["report", str(src), "--out", str(tmp_path / "letter")])
    assert result.exit_code == 0, result.output
    return tmp_path / "letter" / "report.html"


def _variance(png) -> float:
    from PIL import Image, ImageStat
    with Image.open(png) as img:
        return max(ImageStat.Stat(img.convert("L")).var[0], 0.0)


@pytest.mark.parametrize("kind", ["seed000", "healthy"])
def test_the_letter_in_a_browser(tmp_path, kind):
    doc = getattr(letter_docs, kind)()
    page = _letter(tmp_path, doc)
    shot = tmp_path / f"{kind}.png"
    ran = _browser(f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert shot.exists(), ran.stderr[-2000:]
    assert _variance(shot) > 100  # not a blank page
    dom = _browser("--dump-dom", page.as_uri()).stdout
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    from nandoctor.report.letter import verdict_sentence
    assert verdict_sentence(doc) in text.replace("&amp;", "&").replace("&#39;", "'")
    if kind == "seed000":
        assert "1. NLLLoss is fed raw scores, not log-probabilities" in text
        assert "What is still wrong after the fix" in text and "lr-too-low" in text
    # nothing is fetched: no URL with a scheme or host in any src/href, and the page forbids requests
    assert not re.search(r"""\b(src|href)\s*=\s*["']?\s*(https?:|//)""", dom)
    assert "default-src 'none'" in dom


def test_the_letter_reads_on_a_phone(tmp_path):
    page = _letter(tmp_path, letter_docs.seed000())
    shot = tmp_path / "phone.png"
    _browser(f"--screenshot={shot}", "--window-size=390,1400", page.as_uri())
    from PIL import Image
    with Image.open(shot) as img:
        assert img.size[0] == 390
    assert _variance(shot) > 100
