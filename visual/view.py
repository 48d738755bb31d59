"""The one return type of every inspection view."""
from __future__ import annotations

from dataclasses import dataclass, field

import plotly.graph_objects as go


TOP_MARGIN = 64   # px above the plot area: titles sit below Plotly's toolbar (≈ 30 px), not under it


@dataclass
class View:
    """A Plotly figure and the JSON-able numbers behind it (what tests and `--out x.json` read).
    A figure with a title or subplot titles gets a top margin that keeps them clear of
    Plotly's toolbar, which otherwise covers a right-hand subplot's title."""
    figure: go.Figure
    data: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        layout = self.figure.layout
        if (layout.title.text or layout.annotations) and (layout.margin.t or 0) < TOP_MARGIN:
            self.figure.update_layout(margin_t=TOP_MARGIN)
