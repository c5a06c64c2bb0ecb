"""The run viewer end to end in a real headless browser: Debian's chromium driven through its chromedriver
(`make test` installs both; no browser is ever downloaded). The served page and the exported file (file://)
are loaded, a heat-map cell is clicked with the mouse, and the word-map panels must then hold exactly the
store's values for that layer and step; screenshots must not be blank.

Set FGLENS_SCREENSHOTS=DIR to keep the screenshots."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import fglens as fg

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytest.importorskip("plotly", reason="the viewer's extra: pip install 'fglens[view]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test dependency (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
    "apt-get install -y chromium chromium-driver (make test does it)")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory, wan_i2v) -> Path:
    path = tmp_path_factory.mktemp("view-browser") / "runs.zarr"
    fg.testing.tiny_run("wan", words=("dog", "fence"), store=path, pipe=wan_i2v)
    fg.testing.tiny_run("wan", words=("dog", "fence"), store=path, pipe=wan_i2v,
                        edit=fg.Scale(["dog"], 3.0, where=fg.Where(layers=[1])))
    return path


@pytest.fixture(scope="module")
def driver():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,2200", "--no-first-run", "--disable-extensions",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # nothing but this machine resolves
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(60)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def server(store):
    from fglens.view import ViewServer

    srv = ViewServer(store).start()
    yield srv
    srv.stop()


def _wait(driver, condition, timeout: float = 60):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(condition))


def _ready(driver) -> None:
    _wait(driver, "return document.body.dataset.ready === '1'")
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def _click_cell(driver, layer_index: int, step_index: int) -> None:
    """A real mouse click at the centre of a heat-map cell (its position from plotly's axes)."""
    element = driver.find_element(By.ID, "heatmap")
    x, y = driver.execute_script(
        "const gd = document.getElementById('heatmap'); const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;"
        "return [xa._offset + xa.l2p(arguments[1]), ya._offset + ya.l2p(arguments[0])];", layer_index, step_index)
    size = element.size
    ActionChains(driver).move_to_element_with_offset(element, x - size["width"] / 2, y - size["height"] / 2) \
        .pause(0.3).click().perform()


def _panels(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#maps-panels .map-panel')).map(p => Object.assign({}, p.dataset,"
        " {drawn: p.querySelectorAll('.heatmaplayer image, .hm image, image').length}));")


def _check_panels(driver, ds, layer: str, step: int, word: str) -> None:
    _wait(driver, f"const p = document.getElementById('maps-panels').dataset; return p.layer === '{layer}' && "
          f"p.step === '{step}' && p.word === '{word}' && "
          "document.querySelectorAll('#maps-panels .map-panel .main-svg').length > 0")
    panels = _panels(driver)
    expected = ds.word_map.sel(branch="cond", layer=layer, step=step, word=word).transpose("frame", "y", "x").values
    assert len(panels) == expected.shape[0]
    for f, panel in enumerate(panels):
        assert (panel["layer"], panel["step"], panel["word"], panel["frame"]) == (layer, str(step), word, str(f))
        values = np.array([float(v) for v in panel["values"].split(",")], dtype=np.float32)
        np.testing.assert_array_equal(values, expected[f].reshape(-1))
        assert panel["drawn"] >= 1  # plotly drew the map (and the reference image) as images in the SVG


def _not_blank(png: bytes, name: str, min_colours: int = 64) -> None:
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    assert image.std() > 10 and colours >= min_colours, (name, image.std(), colours)
    keep = os.environ.get("FGLENS_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / name).write_bytes(png)


def _nothing_from_elsewhere(driver, allowed: str) -> None:
    names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert all(n.startswith(allowed) or n.startswith("data:") for n in names), names


def _exercise(driver, store: Path, prefix: str) -> None:
    """The checks shared by the served page and the exported file."""
    names = fg.store.list_runs(store)
    ds, other_ds = (fg.open_run(store, name) for name in names)
    _ready(driver)
    rows = driver.find_elements(By.CSS_SELECTOR, "#run-table tbody tr")
    assert [r.get_attribute("data-run") for r in rows] == names
    _click_cell(driver, 2, 1)
    _check_panels(driver, ds, "blocks.2", 1, "dog")
    _not_blank(driver.get_screenshot_as_png(), f"{prefix}-page.png")
    _not_blank(driver.find_element(By.ID, "maps-panels").screenshot_as_png, f"{prefix}-maps.png")
    _not_blank(driver.find_element(By.ID, "heatmap").screenshot_as_png, f"{prefix}-heatmap.png")

    Select(driver.find_element(By.ID, "map-word-select")).select_by_value("fence")  # the word picker
    _check_panels(driver, ds, "blocks.2", 1, "fence")
    driver.execute_script("const s = document.getElementById('map-step'); s.value = '0';"
                          "s.dispatchEvent(new Event('input'));")  # the step slider
    _check_panels(driver, ds, "blocks.2", 0, "fence")
    _click_cell(driver, 3, 1)
    _check_panels(driver, ds, "blocks.3", 1, "fence")

    Select(driver.find_element(By.ID, "var-select")).select_by_value("word_mass")
    Select(driver.find_element(By.ID, "compare-select")).select_by_value(other_ds.attrs["run"])
    _wait(driver, "const d = document.getElementById('compare-diff'); return d && d.dataset.values;")
    diff = driver.execute_script("return document.getElementById('compare-diff').dataset.values;")
    got = np.array([float(v) for v in diff.split(",")]).reshape(4, 2)
    mean = [d.word_mass.sel(branch="cond").astype(np.float64).mean(["word", "frame"]).transpose("layer", "step")
            .values.astype(np.float32).astype(np.float64) for d in (ds, other_ds)]
    np.testing.assert_allclose(got, mean[1] - mean[0], rtol=0, atol=1e-12)
    assert np.abs(got[1]).max() > 0  # the intervention acted on blocks.1
    _not_blank(driver.find_element(By.ID, "compare-plots").screenshot_as_png, f"{prefix}-compare.png")
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_served_page(driver, server, store):
    driver.get(server.url)
    _exercise(driver, store, "served")
    _nothing_from_elsewhere(driver, server.url)
    heat = driver.find_element(By.ID, "heatmap")
    weak = fg.find_weak_layers(fg.open_run(store, fg.store.list_runs(store)[0]), score="similarity")
    Select(driver.find_element(By.ID, "var-select")).select_by_value("similarity")
    _wait(driver, "return document.getElementById('heatmap').dataset.var === 'similarity'")
    assert json.loads(heat.get_attribute("data-weak")) == weak.weak


def test_exported_file(driver, store, tmp_path):
    from fglens.view import export_html

    target = tmp_path / "run.html"
    export_html(store, target)
    driver.get(target.as_uri())
    _exercise(driver, store, "exported")
    _nothing_from_elsewhere(driver, target.as_uri())


def test_chromium_is_debians():
    assert shutil.which("chromium") in (CHROMIUM, None) and os.path.realpath(CHROMEDRIVER).startswith("/usr/")


@pytest.fixture(scope="module")
def panel_store(tmp_path_factory, wan_i2v) -> Path:
    """An anchored run with maps whose video is kept beside the store (`fglens eval run`'s layout)."""
    from test_view_panels import anchored_edit, keep_video

    path = tmp_path_factory.mktemp("view-browser-panels") / "runs.zarr"
    ds = fg.testing.tiny_run("wan", words=("dog", "fence"), store=path, pipe=wan_i2v, edit=anchored_edit())
    keep_video(path, ds.attrs["run"], np.random.default_rng(1).random((4, 32, 48, 3)))
    return path


def _values(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.split(",")], dtype=np.float32)


def _check_balance(driver, ds, first: int, last: int) -> None:
    from test_view_panels import expected_mean

    _wait(driver, f"const b = document.getElementById('balance').dataset; return b.first === '{first}' && "
          f"b.last === '{last}' && !!b.series")
    series = dict(json.loads(driver.execute_script("return document.getElementById('balance').dataset.series;")))
    drawn = driver.execute_script("return document.getElementById('balance').data.map(t => [t.name, t.y]);")
    text = expected_mean(ds, "text_share", "cond", range(first, last + 1))
    expected = {"text": text.astype(np.float32), "image": (1.0 - text).astype(np.float32)}
    assert list(series) == ["text", "image"] and [name for name, _ in drawn] == ["text", "image"]
    for name, y in drawn:  # the bars plotly drew, and the page's record of them: the store's float32 values
        np.testing.assert_array_equal(np.array(y, dtype=np.float64), expected[name].astype(np.float64))
        np.testing.assert_array_equal(_values(series[name]), expected[name])


def _exercise_panels(driver, store: Path, prefix: str) -> None:
    from PIL import Image

    from fglens.eval.runner import load_video
    from fglens.store.image import reference_thumbnail

    ds = fg.open_run(store, fg.store.list_runs(store)[0])
    _ready(driver)
    _check_balance(driver, ds, 0, 1)  # the condition balance over all steps, then over step 1 alone
    Select(driver.find_element(By.ID, "balance-first")).select_by_value("1")
    _check_balance(driver, ds, 1, 1)
    _not_blank(driver.find_element(By.ID, "balance").screenshot_as_png, f"{prefix}-balance.png", min_colours=16)

    _wait(driver, "return document.getElementById('anchor-panels').dataset.count === '1'")  # the anchor mask
    panel = driver.find_element(By.CSS_SELECTOR, "#anchor-panels .anchor-panel")
    np.testing.assert_array_equal(_values(panel.get_attribute("data-values")), MASK_VALUES)
    assert panel.get_attribute("data-word") == "dog"
    _not_blank(panel.screenshot_as_png, f"{prefix}-anchor.png", min_colours=16)

    _wait(driver, "return document.getElementById('frame-player').dataset.frame === '0'")  # the frame player
    layer = driver.execute_script("return document.getElementById('frame-player').dataset.layer;")
    driver.execute_script("const s = document.getElementById('frame-slider'); s.value = '1';"
                          "s.dispatchEvent(new Event('input'));")
    _wait(driver, "return document.getElementById('frame-player').dataset.frame === '1'")
    shown = driver.find_element(By.ID, "frame-player").get_attribute("data-values")
    expected = ds.word_map.sel(branch="cond", layer=layer, step=0, word="dog").isel(frame=1).values.reshape(-1)
    np.testing.assert_array_equal(_values(shown), expected)
    driver.find_element(By.ID, "frame-play").click()  # play: frame 1 -> 0 (two latent frames) and on
    _wait(driver, "return document.getElementById('frame-player').dataset.frame === '0'", timeout=10)
    driver.find_element(By.ID, "frame-play").click()  # pause
    assert driver.find_element(By.ID, "frame-play").text == "play frames"

    stored = (load_video(next((store.parent / "videos").rglob("*.npz"))) * 255).round().astype(np.uint8)
    driver.find_element(By.ID, "video-play").click()  # the video plays through its frames
    _wait(driver, "return document.getElementById('video-frame').dataset.frame === '3'", timeout=10)
    driver.find_element(By.ID, "video-play").click()
    frame = int(driver.find_element(By.ID, "video-frame").get_attribute("data-frame"))
    src = driver.find_element(By.ID, "video-frame").get_attribute("src")
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
    np.testing.assert_array_equal(png, reference_thumbnail(stored[frame]))
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


MASK_VALUES = np.array([0.0, 1.0, 1.0, 0.0, 0.25, 1.0], dtype=np.float32)


def test_panels_served(driver, panel_store):
    from fglens.view import ViewServer

    srv = ViewServer(panel_store).start()
    try:
        driver.get(srv.url)
        _exercise_panels(driver, panel_store, "served")
        _nothing_from_elsewhere(driver, srv.url)
    finally:
        srv.stop()


def test_panels_exported(driver, panel_store, tmp_path):
    from fglens.view import export_html

    target = tmp_path / "panels.html"
    export_html(panel_store, target)
    driver.get(target.as_uri())
    _exercise_panels(driver, panel_store, "exported")
    _nothing_from_elsewhere(driver, target.as_uri())


def test_no_anchor_and_no_video_said_so(driver, server, store):
    driver.get(server.url)
    _ready(driver)
    _wait(driver, "return document.getElementById('anchor-panels').dataset.count === '0'")
    assert driver.find_element(By.ID, "anchor-note").text == \
        "No anchor mask: this run had no intervention, so no anchor mask."
    assert "no video was recorded with this run" in driver.find_element(By.ID, "video-note").text
    assert not driver.find_element(By.ID, "video-box").is_displayed()


_HARNESS = """<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>widget harness</title></head><body>
<div id="out"></div>
<script type="module">
import widget from "/widget.js";
const page = await (await fetch("/page")).text();
const listeners = [];
const model = {  // what Jupyter's widget manager gives a widget's render(): its traits, send and custom messages
  get: (name) => ({ page, height: 2000 })[name],
  send: (content) => fetch("/msg", { method: "POST", body: JSON.stringify(content) })
    .then((r) => r.json()).then((reply) => listeners.forEach((f) => f(reply))),
  on: (event, f) => { if (event === "msg:custom") listeners.push(f); },
  off: (event, f) => { const i = listeners.indexOf(f); if (i >= 0) listeners.splice(i, 1); },
};
widget.render({ model, el: document.getElementById("out") });
</script></body></html>"""


def test_lazy_widget(driver, store):
    """fg.view(..., lazy=True) in a real browser: the widget's own front end (widget.js, an ES module) renders
    into a page standing in for Jupyter's widget manager, whose model sends each message to a local endpoint that
    calls the widget's Python side and delivers its reply as the custom message Jupyter would. The viewer in the
    widget's iframe must then behave as the served page does, every answer having come from the kernel side."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    widget = fg.view(str(store), lazy=True)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            files = {"/": (_HARNESS, "text/html"), "/widget.js": (widget._esm, "text/javascript"),
                     "/page": (widget.page, "text/plain; charset=utf-8")}
            text, kind = files[self.path]
            self._send(text.encode(), kind)

        def do_POST(self):  # noqa: N802
            message = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._send(json.dumps(widget.answer(message)).encode(), "application/json")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        driver.get(f"http://127.0.0.1:{httpd.server_address[1]}/")
        _wait(driver, "return document.querySelector('#out iframe') !== null")
        driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "#out iframe"))
        _exercise(driver, store, "widget")
        footer = driver.find_element(By.ID, "footer").text
        assert "kernel" in footer, footer
        driver.switch_to.default_content()
        assert widget.requests >= 8  # the run list, the run, heat maps, weak layers, word maps: all asked
        _nothing_from_elsewhere(driver, f"http://127.0.0.1:{httpd.server_address[1]}/")
    finally:
        driver.switch_to.default_content()
        httpd.shutdown()
