"""The run viewer's data, server, export and notebook display (fglens.view); the browser tests are in
test_view_browser.py. Every value the viewer serves is checked against fg.open_run of the same store."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import fglens as fg
from fglens.view.data import BadRequest, NotAStore, StoreSource, request_key, unpack

pytest.importorskip("plotly", reason="the viewer's extra: pip install 'fglens[view]'")


@pytest.fixture(scope="module")
def store(tmp_path_factory, wan_i2v) -> Path:
    """Two runs of seed 0 (without and with an intervention) and one of seed 1 without maps."""
    path = tmp_path_factory.mktemp("view") / "runs.zarr"
    fg.testing.tiny_run("wan", words=("dog", "fence"), store=path, pipe=wan_i2v)
    fg.testing.tiny_run("wan", words=("dog", "fence"), store=path, pipe=wan_i2v,
                        edit=fg.Scale(["dog"], 3.0, where=fg.Where(layers=[1])))
    fg.testing.tiny_run("wan", words=("dog",), store=path, pipe=wan_i2v, seed=1, maps=False)
    return path


@pytest.fixture(scope="module")
def server(store):
    from fglens.view import ViewServer

    srv = ViewServer(store).start()
    yield srv
    srv.stop()


def _get(server, path: str, host: str | None = None) -> tuple[int, bytes, str]:
    """A raw GET (the path sent as is, no normalisation by the client)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body, response.getheader("Content-Type") or ""


def _api(server, endpoint: str, **params):
    status, body, _ = _get(server, f"/api/{endpoint}?" + urllib.parse.urlencode(params))
    assert status == 200, body
    return json.loads(body)


def test_runs_endpoint_matches_run_table(server, store):
    rows = _api(server, "runs")
    table = fg.store.run_table(store)
    assert [r["id"] for r in rows] == list(table["id"])
    for row, ref in zip(rows, table.itertuples(), strict=True):
        assert row["prompt"] == ref.prompt and row["seed"] == ref.seed and row["complete"] == ref.complete
        assert row["steps"] == ref.steps_written and row["num_steps"] == ref.num_steps and row["words"] == ref.words
    assert [r["intervention"] for r in rows] == ["none", "Scale", "none"]


def test_run_endpoint_labels(server, store):
    name = fg.store.list_runs(store)[0]
    ds = fg.open_run(store, name)
    info = _api(server, "run", run=name)
    assert info["layers"] == [str(v) for v in ds.layer.values]
    assert info["words"] == ["dog", "fence"] and info["branches"] == ["cond"]
    assert info["steps_list"] == ds.step.values.tolist() and info["timesteps"] == ds.timestep.values.tolist()
    assert info["frames"] == ds.sizes["frame"] and info["grid"] == [ds.sizes["y"], ds.sizes["x"]]
    assert info["has_maps"] and info["image"].startswith("data:image/png;base64,")
    assert info["image_size"] == list(ds.reference_image.shape[:2])
    assert set(info["variables"]) == {"entropy", "morans_i", "similarity", "text_share", "word_mass"}


@pytest.mark.parametrize(("var", "word"), [("word_mass", "dog"), ("word_mass", ""), ("entropy", ""),
                                           ("similarity", "fence")])
def test_heatmap_endpoint_exact(server, store, var, word):
    name = fg.store.list_runs(store)[1]
    ds = fg.open_run(store, name)
    params = {"run": name, "var": var, "branch": "cond", **({"word": word} if word else {})}
    answer = _api(server, "heatmap", **params)
    da = ds[var].sel(branch="cond").astype(np.float64)  # the viewer averages in float64, then sends float32
    da = da.sel(word=word) if word else da
    expected = da.mean([d for d in da.dims if d not in ("layer", "step")]).transpose("layer", "step").values
    got = unpack(answer)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    assert answer["layers"] == [str(v) for v in ds.layer.values] and answer["steps"] == ds.step.values.tolist()


def test_maps_endpoint_exact(server, store):
    name = fg.store.list_runs(store)[0]
    ds = fg.open_run(store, name)
    for layer in ("blocks.0", "blocks.2"):
        for step in (0, 1):
            answer = _api(server, "maps", run=name, layer=layer, step=step, word="fence", branch="cond")
            expected = ds.word_map.sel(branch="cond", layer=layer, step=step, word="fence").transpose("frame", "y", "x")
            np.testing.assert_array_equal(unpack(answer), expected.values)
            assert answer["min"] == float(np.nanmin(expected.values))


def test_weak_endpoint_is_find_weak_layers(server, store):
    name = fg.store.list_runs(store)[0]
    weak = fg.find_weak_layers(fg.open_run(store, name))
    answer = _api(server, "weak", run=name, score="similarity", branch="cond")
    assert answer["weak"] == weak.weak and answer["responsive"] == weak.responsive


def test_bad_requests_are_refused(server, store):
    name = fg.store.list_runs(store)[0]
    no_maps = fg.store.list_runs(store)[2]
    for path in (f"/api/heatmap?run={name}&var=nope&branch=cond", f"/api/heatmap?run={name}&var=entropy&branch=x",
                 f"/api/maps?run={no_maps}&layer=blocks.0&step=0&word=dog&branch=cond",
                 f"/api/maps?run={name}&layer=blocks.0&step=9&word=dog&branch=cond",
                 "/api/run?run=nope", "/api/nope?run=x", f"/api/heatmap?run={name}"):
        status, body, _ = _get(server, path)
        assert status == 400, path
        assert json.loads(body)["error"]


@pytest.mark.parametrize("path", [
    "/../zarr.json", "/assets/../../zarr.json", "/assets/..%2f..%2fzarr.json", "/%2e%2e/%2e%2e/etc/passwd",
    "/assets/%2E%2E/data.py", "/api/run?run=../etc", "/api/run?run=..", "/assets/data.py", "/zarr.json",
    "/assets/..\\..\\zarr.json", "/static/viewer.js", "//etc/passwd",
])
def test_path_traversal_refused(server, path):
    status, body, _ = _get(server, path)
    assert status in (400, 404), (path, status)
    assert b"fglens_store" not in body and b"root:" not in body and b"import" not in body


def test_only_the_page_and_its_assets_are_served(server):
    status, body, kind = _get(server, "/")
    assert status == 200 and kind.startswith("text/html") and b'src="assets/plotly.min.js"' in body
    assert b"cdn" not in body.lower() and b"https://" not in body
    status, body, kind = _get(server, "/assets/plotly.min.js")
    assert status == 200 and kind.startswith("text/javascript") and len(body) > 1_000_000
    status, _, _ = _get(server, "/assets/viewer.js")
    assert status == 200


def test_foreign_host_header_refused(server):
    status, _, _ = _get(server, "/api/runs", host="evil.example:80")
    assert status == 403
    status, _, _ = _get(server, "/api/runs", host=f"localhost:{server.port}")
    assert status == 200


def test_binds_localhost_on_a_free_port(store):
    from fglens.view import ViewServer

    a, b = ViewServer(store), ViewServer(store)
    try:
        assert a.httpd.server_address[0] == "127.0.0.1" and a.port != b.port and a.port > 0
        assert a.url == f"http://127.0.0.1:{a.port}/"
    finally:
        a.httpd.server_close()
        b.httpd.server_close()


def test_non_fglens_directory_refused(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(NotAStore, match="is not an fglens store"):
        StoreSource(tmp_path / "plain")
    with pytest.raises(NotAStore, match="does not exist"):
        StoreSource(tmp_path / "missing.zarr")
    other = tmp_path / "other.zarr"  # a zarr group fglens did not write
    other.mkdir()
    (other / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    with pytest.raises(NotAStore, match="not an fglens store"):
        StoreSource(other)
    result = subprocess.run([sys.executable, "-m", "fglens.cli", "view", str(tmp_path / "plain"), "--no-open"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "fglens view:" in result.stderr and "is not an fglens store" in result.stderr


class _ChunkCounter:
    """Counts the chunk reads (keys with /c/) zarr's LocalStore makes, by array name."""

    def __init__(self, monkeypatch):
        import zarr.storage

        self.reads: list[str] = []
        original = zarr.storage.LocalStore.get

        async def get(store, key, prototype=None, byte_range=None):
            if "/c/" in key or key.endswith("/c"):
                self.reads.append(key)
            return await original(store, key, prototype, byte_range)

        monkeypatch.setattr(zarr.storage.LocalStore, "get", get)

    def arrays(self) -> set[str]:
        return {k.split("/c", 1)[0] for k in self.reads}


def test_heatmap_reads_only_its_variable(store, monkeypatch):
    source = StoreSource(store)
    name = source.run_ids()[0]
    run_dir = Path(store) / name
    chunks = [p for p in run_dir.rglob("*") if p.is_file() and "/c/" in str(p.relative_to(store)).replace(os.sep, "/")]
    counter = _ChunkCounter(monkeypatch)
    answer = source.answer("heatmap", {"run": name, "var": "word_mass", "branch": "cond", "word": "dog"})
    assert answer["shape"] == [4, 2]
    data_vars = {"entropy", "morans_i", "similarity", "text_share", "word_map", "word_mass", "reference_image"}
    assert counter.arrays() & data_vars == {"word_mass"}, counter.reads   # coordinates, and word_mass only
    assert sum(k.startswith("word_mass/") for k in counter.reads) == 2     # one chunk per step
    assert len(counter.reads) < len(chunks) / 2, (len(counter.reads), len(chunks))

    counter.reads.clear()
    source.answer("maps", {"run": name, "layer": "blocks.1", "step": "1", "word": "dog", "branch": "cond"})
    assert [k for k in counter.reads if k.startswith("word_map/")] == ["word_map/c/0/1/0/0/0/0/0"]
    assert counter.arrays() & data_vars == {"word_map"}


def test_request_key_is_the_pages():
    assert request_key("maps", {"step": 1, "run": "a"}) == '["maps",[["run","a"],["step","1"]]]'
    with pytest.raises(BadRequest):
        StoreSource.check_run(type("S", (), {"run_ids": lambda self: ["a"]})(), "../a")


def test_export_embeds_what_its_views_need(store, tmp_path):
    from fglens.view import export_html

    name = fg.store.list_runs(store)[0]
    report = export_html(store, tmp_path / "run.html", runs=[name], steps=[1])
    html = (tmp_path / "run.html").read_text()
    assert report.total_bytes == (tmp_path / "run.html").stat().st_size
    assert report.runs == 1 and report.maps == 4 * 2  # 1 step x 4 layers x 2 words
    assert "<script src" not in html and '<link rel="stylesheet"' not in html  # every asset inline
    start = html.index('<script type="application/json" id="fglens-data">') + len(
        '<script type="application/json" id="fglens-data">')
    data = json.loads(html[start:html.index("</script>", start)])
    answers = data["answers"]
    assert [r["id"] for r in answers[request_key("runs", {})]] == [name]
    ds = fg.open_run(store, name)
    maps = answers[request_key("maps", {"run": name, "layer": "blocks.3", "step": 1, "word": "dog", "branch": "cond"})]
    np.testing.assert_array_equal(unpack(maps), ds.word_map.sel(branch="cond", layer="blocks.3", step=1,
                                                                 word="dog").transpose("frame", "y", "x").values)
    assert request_key("maps", {"run": name, "layer": "blocks.3", "step": 0, "word": "dog", "branch": "cond"}) \
        not in answers
    assert "2 runs" not in report.summary() and "wrote" in report.summary()


def test_cli_html(store, tmp_path):
    out = tmp_path / "cli.html"
    result = subprocess.run([sys.executable, "-m", "fglens.cli", "view", str(store), "--html", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert out.exists() and f"wrote {out}" in result.stdout and "MB" in result.stdout and "data" in result.stdout


def test_cli_serves(store):
    proc = subprocess.Popen([sys.executable, "-m", "fglens.cli", "view", str(store), "--no-open"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving" in line and "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "api/runs", timeout=10) as response:
            assert len(json.load(response)) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_notebook_display(store):
    ds = fg.open_run(store, fg.store.list_runs(store)[0])
    viewer = fg.view(ds, word="fence")
    html = viewer._repr_html_()
    assert html.startswith("<iframe srcdoc=") and html.endswith("</iframe>") and 'sandbox="allow-scripts"' in html
    assert "&lt;script" in html and "<script" not in html  # the page is escaped inside the attribute
    import html as html_lib

    inner = html_lib.unescape(html.split('srcdoc="', 1)[1].split('" style=', 1)[0])
    assert inner == viewer.html and '"word":"fence"' in inner
    assert viewer.counts["runs"] == 1 and viewer.counts["heatmaps"] == 11 and viewer.counts["maps"] == 16
    from html.parser import HTMLParser

    HTMLParser().feed(html)  # well-formed enough for the standard parser (raises on nothing)


def test_notebook_display_in_a_kernel(store, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import fglens as fg\n"
        f"ds = fg.open_run({str(store)!r}, fg.store.list_runs({str(store)!r})[0])\n"
        "fg.view(ds, word='dog')")]
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error"], outputs
    html = [o for o in outputs if o.output_type == "execute_result"][0]["data"]["text/html"]
    assert html.startswith("<iframe") and "fglens-data" in html


def test_run_dataset_summary_in_a_kernel(store, tmp_path):
    """``%load_ext fglens.view.notebook``: a run's Dataset shows its summary (a line, the viewer, xarray's repr);
    any other Dataset keeps xarray's repr; ``%unload_ext`` restores it."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    name = fg.store.list_runs(store)[1]
    cells = ["%load_ext fglens.view.notebook",
             f"import fglens as fg, xarray as xr\nds = fg.open_run({str(store)!r}, {name!r})\nds",
             "xr.Dataset({'a': ('x', [1.0, 2.0])})",
             "%unload_ext fglens.view.notebook",
             "ds"]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    assert not [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
    html = [[o["data"].get("text/html", "") for o in c.outputs if o.output_type == "execute_result"] for c in nb.cells]
    summary = html[1][0]
    line = f'<div class="fglens-summary"><p>fglens run {name}: “a dog jumps over the red fence”'
    assert summary.startswith(line)
    assert "intervention Scale" in summary and "<iframe srcdoc=" in summary and "fglens-data" in summary
    assert "<details><summary>xarray.Dataset</summary>" in summary and "xr-wrap" in summary
    assert "fglens-summary" not in html[2][0] and "xr-wrap" in html[2][0]  # a plain Dataset: xarray's repr
    assert "fglens-summary" not in html[4][0] and "xr-wrap" in html[4][0]  # unloaded: xarray's repr again
