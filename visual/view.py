"""The one return type of every inspection view."""
from __future__ import annotations

from dataclasses import dataclass, field

import plotly.graph_objects as go


@dataclass
class View:
    """A Plotly figure and the JSON-able numbers behind it (what tests and `--out x.json` read)."""
    figure: go.Figure
    data: dict = field(default_factory=dict)
