"""report.html of the tiny end-to-end run, opened in headless Chromium (`make test-browser`: it
installs Debian's chromium and chromium-driver, and selenium): every figure loads, the verdict and
the tables are visible, and a screenshot is saved into the run directory."""
import base64
import json
import shutil

import pytest

from experiments import youtube_faces

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  run = tmp_path_factory.mktemp("run")
  youtube_faces.main(["--preset", "tiny", "--workdir", str(run)])
  return run


def _driver():
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  opts = webdriver.ChromeOptions()
  for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
            "--allow-file-access-from-files"):
    opts.add_argument(a)
  opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
  return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                          options=opts)


def test_the_report_renders_in_a_browser(report):
  m = json.loads((report / "metrics.json").read_text())
  d = _driver()
  try:
    d.get((report / "report.html").as_uri())
    images = d.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete,"
        " i.naturalWidth, i.naturalHeight]);")
    assert len(images) == 6, images  # the six figures of evaluate_run
    broken = [i for i in images if not (i[1] and i[2] > 0 and i[3] > 0)]
    assert not broken, broken
    text = d.execute_script("return document.body.innerText;")
    assert m["verdict"] in text  # rendered, not only in the source
    tables = d.execute_script(
        "return Array.from(document.querySelectorAll('table')).map(t => [t.innerText,"
        " t.getBoundingClientRect().height]);")
    controls = [t for t, h in tables if "random_weights" in t and "logistic_regression" in t]
    assert controls and all(h > 0 for t, h in tables if t in controls)
    height = d.execute_script("return document.body.scrollHeight;")
    d.set_window_size(1200, min(height + 100, 6000))
    png = base64.b64decode(d.get_screenshot_as_base64())
    (report / "report.png").write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
  finally:
    d.quit()
