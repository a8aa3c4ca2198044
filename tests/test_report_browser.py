"""The exam HTML report in a real headless browser (Debian's chromium): it renders the verdict and every site,
the screenshot is not blank, and nothing is fetched from the network."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SPR_INTER = REPO.parent / "shared" / "data" / "sprsound" / "test2022_inter"
PATIENT = "40512331"
NO_NETWORK = "--host-resolver-rules=MAP * ~NOTFOUND"  # any host name fails to resolve


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/system-deps.sh, run by .ci/run, "
                    "installs it)")
    return exe


def browse(exe: str, page: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", NO_NETWORK,
                           *args, page.as_uri()], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    import json

    files = sorted(SPR_INTER.glob(f"{PATIENT}_*.flac")) if SPR_INTER.is_dir() else []
    if len(files) < 3:
        pytest.skip(f"real SPRSound recordings of patient {PATIENT} not present under {SPR_INTER}")
    out = tmp_path_factory.mktemp("report")
    picks = [next(f for f in files if f"_{s}_" in f.name) for s in ("p1", "p2", "p4")]
    proc = subprocess.run([sys.executable, "-m", "stethoedge", "exam", *map(str, picks), "--html",
                           str(out / "report.html"), "--json", str(out / "exam.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out / "report.html", json.loads((out / "exam.json").read_text())


def test_the_page_needs_no_network(report: tuple[Path, dict]) -> None:
    html = report[0].read_text()
    # nothing external: no http(s)/protocol-relative URL in any src/href/url(), no script, no font
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:|//)", html, re.I)
    assert "<script" not in html.lower() and "@font-face" not in html and "@import" not in html
    assert re.findall(r"<img[^>]+src=\"([^\"]{0,22})", html) == ["data:image/png;base64,"] * 3
    assert "default-src 'none'" in html  # and the page forbids itself any fetch


def requested_hosts(exe: str, page: Path, log: Path) -> set[str]:
    """Hosts of every URL request chromium logged (its net log) while loading ``page``."""
    proc = browse(exe, page, f"--log-net-log={log}", "--dump-dom")
    assert proc.returncode == 0 and log.is_file(), proc.stderr[-2000:]
    return {m.group(1) for m in re.finditer(r'"url":"[a-z]+://([^/":?]+)', log.read_text())}


def test_chromium_attempts_no_network_request(report: tuple[Path, dict], tmp_path: Path) -> None:
    """The browser itself calls home (updates, time) whatever the page: those hosts, from a blank local page,
    are the baseline; the report may add none. A page with one external image shows the check can fail."""
    exe = chromium()
    blank, external = tmp_path / "blank.html", tmp_path / "external.html"
    blank.write_text("<!DOCTYPE html><html><body>blank</body></html>")
    external.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png"></body></html>')
    baseline = requested_hosts(exe, blank, tmp_path / "blank.json")
    assert "example.invalid" in requested_hosts(exe, external, tmp_path / "external.json") - baseline
    assert requested_hosts(exe, report[0], tmp_path / "report.json") <= baseline


def test_chromium_renders_verdict_and_sites(report: tuple[Path, dict]) -> None:
    exe = chromium()
    page, exam = report
    proc = browse(exe, page, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    verdict = re.search(r'<span class="verdict" id="verdict"[^>]*>([^<]+)</span>', dom)
    assert verdict and verdict.group(1) == exam["label"].replace("_", " ").upper()
    for site in exam["sites"]:
        assert f'id="site-{site["site"]}"' in dom
        assert re.search(rf"Site {site['site']} <span class=\"finding\"[^>]*>{site['finding']}</span>", dom)
    assert dom.count("<img") == 3
    # the browser attempted no network request (a failed one is logged with the URL)
    assert not re.search(r"https?://", proc.stderr)


def test_chromium_screenshot_is_not_blank(report: tuple[Path, dict], tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.image as mpimg

    exe = chromium()
    shot = tmp_path / "shot.png"
    proc = browse(exe, report[0], f"--screenshot={shot}", "--window-size=1200,2000", "--hide-scrollbars")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    assert float(pixels.std()) > 0.05  # a white page has 0
    # the verdict badge is drawn in its colour near the top (red, green or grey): not all white there
    top = pixels[:200]
    assert float((np.abs(top - 1.0).sum(axis=-1) > 0.3).mean()) > 0.01
    # the spectrograms (dark "magma" images) cover a good part of the page
    assert float((pixels.sum(axis=-1) < 0.6).mean()) > 0.05
