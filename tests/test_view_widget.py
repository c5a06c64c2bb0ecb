"""The lazy notebook viewer (fg.view(..., lazy=True), fglens.view.widget): its answers against the server's and
fg.open_run, its page without data, the chunks one request reads, bad requests, and the round trip through a
real Jupyter kernel's widget comm. The same widget driven in a real browser is in test_view_browser.py."""

from __future__ import annotations

import json
import queue
import time

import numpy as np
import pytest

import fglens as fg
from fglens.view.data import unpack

pytest.importorskip("plotly", reason="the viewer's extra: pip install 'fglens[view]'")
pytest.importorskip("anywidget", reason="the viewer's extra: pip install 'fglens[view]'")

import test_view  # noqa: E402  (the server tests' store, server and helpers, shared)
from test_view import _api, _ChunkCounter  # noqa: E402

store, server = test_view.store, test_view.server  # the same fixtures: two runs of seed 0, one of seed 1


def _ask(widget, endpoint: str, **params) -> dict:
    reply = widget.answer({"fglens": 1, "id": 3, "view": "t", "endpoint": endpoint, "params": params})
    assert (reply["id"], reply["view"]) == (3, "t")
    return reply


def test_answers_equal_the_servers(store, server):
    widget = fg.view(str(store), lazy=True)
    name = fg.store.list_runs(store)[0]
    requests = [("runs", {}), ("run", {"run": name}),
                ("heatmap", {"run": name, "var": "word_mass", "branch": "cond", "word": "dog"}),
                ("heatmap", {"run": name, "var": "similarity", "branch": "cond"}),
                ("weak", {"run": name, "score": "similarity", "branch": "cond"}),
                ("maps", {"run": name, "layer": "blocks.2", "step": "1", "word": "fence", "branch": "cond"}),
                ("balance", {"run": name, "branch": "cond", "first": "0", "last": "1"})]
    for endpoint, params in requests:
        reply = _ask(widget, endpoint, **params)
        assert "error" not in reply, (endpoint, reply)
        assert json.loads(json.dumps(reply["answer"])) == _api(server, endpoint, **params), endpoint
    assert widget.requests == len(requests)
    maps = _ask(widget, "maps", run=name, layer="blocks.2", step=1, word="fence", branch="cond")["answer"]
    expected = fg.open_run(store, name).word_map.sel(branch="cond", layer="blocks.2", step=1, word="fence")
    np.testing.assert_array_equal(unpack(maps).reshape(-1),
                                  expected.transpose("frame", "y", "x").values.reshape(-1))


def test_page_embeds_no_answers(store):
    widget = fg.view(str(store), word="fence", lazy=True)
    text = widget.page.split('id="fglens-data">', 1)[1].split("</script>", 1)[0]
    data = json.loads(text)
    assert data["bridge"] is True and data["answers"] == {} and data["options"]["word"] == "fence"
    embedded = fg.view(str(store), word="fence")
    assert len(widget.page) < len(embedded.html) - 10_000  # the embedded viewer carries every answer


def test_one_request_reads_one_chunk(store, monkeypatch):
    counter = _ChunkCounter(monkeypatch)
    widget = fg.view(str(store), lazy=True)
    name = fg.store.list_runs(store)[0]
    assert not [k for k in counter.reads if k.startswith(("word_map/", "word_mass/", "similarity/"))]
    _ask(widget, "maps", run=name, layer="blocks.1", step=1, word="dog", branch="cond")
    assert [k for k in counter.reads if k.startswith("word_map/")] == ["word_map/c/0/1/0/0/0/0/0"]


def test_bad_requests_say_what_is_accepted(store):
    widget = fg.view(str(store), lazy=True)
    assert "endpoints" in _ask(widget, "secrets")["error"]
    assert "run" in _ask(widget, "run", run="../etc")["error"]
    assert "needs the parameters" in _ask(widget, "heatmap", run=fg.store.list_runs(store)[0])["error"]
    bad = widget.answer({"fglens": 1, "id": 1, "view": "t", "endpoint": "runs", "params": [1]})
    assert "params must be an object" in bad["error"]
    with pytest.raises(ValueError, match="runs= and steps="):
        fg.view(str(store), lazy=True, steps=[0])


def test_round_trip_through_a_kernels_widget_comm(store):
    """A real kernel: the widget is created and displayed, a custom message is sent to its comm as a front end
    sends it, and the kernel's reply (a custom comm message on iopub) carries the store's word maps."""
    pytest.importorskip("ipykernel")
    from jupyter_client.manager import start_new_kernel

    name = fg.store.list_runs(store)[0]
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        kc.execute(f"import fglens as fg\nw = fg.view({str(store)!r}, lazy=True)\ndisplay(w)\nw.model_id")
        model_id, view_shown = None, False
        deadline = time.time() + 240
        while model_id is None and time.time() < deadline:
            msg = kc.get_iopub_msg(timeout=240)
            content = msg["content"]
            if msg["msg_type"] == "error":
                pytest.fail("\n".join(content["traceback"]))
            if msg["msg_type"] == "display_data":
                view_shown = "application/vnd.jupyter.widget-view+json" in content["data"]
            if msg["msg_type"] == "execute_result":
                model_id = content["data"]["text/plain"].strip("'")
        assert model_id and view_shown
        request = {"fglens": 1, "id": 5, "view": "v1", "endpoint": "maps",
                   "params": {"run": name, "layer": "blocks.2", "step": 1, "word": "dog", "branch": "cond"}}
        kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": model_id,
                                                          "data": {"method": "custom", "content": request}}))
        reply = None
        while reply is None and time.time() < deadline:
            try:
                msg = kc.get_iopub_msg(timeout=30)
            except queue.Empty:
                continue
            data = msg["content"].get("data", {})
            if msg["msg_type"] == "comm_msg" and data.get("method") == "custom":
                reply = data["content"]
        assert reply is not None and (reply["id"], reply["view"]) == (5, "v1")
        expected = fg.open_run(store, name).word_map.sel(branch="cond", layer="blocks.2", step=1, word="dog")
        np.testing.assert_array_equal(unpack(reply["answer"]).reshape(-1),
                                      expected.transpose("frame", "y", "x").values.reshape(-1))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
