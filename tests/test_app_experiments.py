"""The app's experiment handlers without a browser: the Build tab's cost lab, the Train tab's
watch picker and its Ablate button (ui/cost.py, ui/train.py)."""
from __future__ import annotations

import gradio as gr
import plotly.graph_objects as go
import pytest

from ui.cost import on_cost
from ui.train import on_ablate, on_train

TINY = {"name": "tiny", "input": [3, 32, 32], "classes": 10, "width": 1.0, "layers": [
    {"block": "conv", "params": {"out": 8, "stride": 2}},
    {"block": "basic_residual", "params": {"out": 8, "attention": "cbam", "reduction": 4}},
    {"block": "global_avg_pool"}, {"block": "linear"}]}
ARGS = ("shapes", None, 64, 2, 32, "adam", 3e-3, "onecycle", 0, False, "cpu")


def test_cost_lab_table_and_chart(app_env, one_thread):
    rows, fig, note = on_cost(3, 30, 10, 32, 1, 2, "none", "cpu", True)
    params = {r[0]: r[2] for r in rows}
    assert (params["regular conv"], params["grouped g=3"], params["pointwise 1×1"],
            params["depthwise-separable"]) == ("9,030", "3,030", "120", "423")
    assert all(float(r[6]) > 0 for r in rows) and "median of 5" in note
    assert isinstance(fig, go.Figure) and fig.layout.yaxis.type == "log"
    with pytest.raises(gr.Error, match="batch"):
        on_cost(3, 30, 10, 32, 1, 10**6, "none", "cpu", False)


def test_watch_snapshots_stream_beside_the_curves(app_env, one_thread):
    outs = list(on_train(None, TINY, *ARGS, "cbam", 3))
    s = outs[0][0]
    watched = [o[7] for o in outs if isinstance(o[7], go.Figure)]
    assert watched and len(watched[-1].frames) >= 2          # a snapshot per epoch, replayable
    assert watched[-1].data[0].type == "image"               # the watched image beside the map
    rec = s.run(None)
    # epoch ends (a long epoch also gets snapshots inside it, at most every 5 s)
    assert [e["epoch"] for e in rec.events if e["type"] == "watch" and e["step"] is None] == [1.0, 2.0]
    assert outs[-1][-2]["interactive"] is True
    with pytest.raises(gr.Error, match="no SE excitation"):
        list(on_train(s, TINY, *ARGS, "se", 0))
    s.close()


def test_ablate_trains_each_variant_and_opens_compare(app_env, one_thread):
    outs = list(on_ablate(None, TINY, "shapes", None, 64, 1, 32, "adam", 3e-3, "onecycle", 0,
                          False, "cpu", "attention"))
    s, last = outs[0][0], outs[-1]
    assert "opened **Compare**" in last[3]
    ids = last[5]["value"]
    assert len(ids) == 3
    recs = [s.run(i) for i in ids]
    assert [r.spec["name"] for r in recs] == [f"tiny · attention {a}" for a in ("none", "se", "cbam")]
    assert all(r.settings == recs[0].settings for r in recs)
    params = [r.start["params"] for r in recs]
    assert params[0] < params[1] < params[2]
    assert last[7].selected == "compare"                            # the Compare tab opens
    assert [row[0] for row in last[9]] == ids                       # the Compare table
    with pytest.raises(gr.Error, match="no Ghost module"):
        list(on_ablate(s, TINY, "shapes", None, 64, 1, 32, "adam", 3e-3, "onecycle", 0, False,
                       "cpu", "ghost"))
    s.close()
