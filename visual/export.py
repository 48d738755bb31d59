"""Write a View to a file chosen by extension: .html (always works, plotly.js embedded so it
opens offline), .json (the View's data) or .png (through Kaleido, which needs a Chrome or
Chromium; without one a ValueError says to use .html)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from visual.view import View

FORMATS = (".html", ".json", ".png")
BROWSER_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def find_browser() -> str | None:
    """A Chrome/Chromium for Kaleido: $BROWSER_PATH, a Debian chromium, one on PATH, or one
    choreographer downloaded (`kaleido_get_chrome`); None when there is none."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).is_file():
        return env
    for path in BROWSER_CANDIDATES:
        if Path(path).is_file():
            return path
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    try:
        from choreographer.browsers.chromium import Chromium
        found = Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 - any failure to look means "no browser"
        return None
    return str(found) if found else None


def png_bytes(view: View, browser: str | None = None, scale: float = 2.0) -> bytes:
    """The figure as PNG bytes. Raises ValueError when no browser can be found."""
    browser = browser or find_browser()
    if browser is None:
        raise ValueError("PNG needs Chrome or Chromium for Kaleido and none was found "
                         "(install chromium or set BROWSER_PATH); write .html or .json instead")
    import kaleido
    layout = view.figure.layout
    opts = {"format": "png", "width": layout.width or 1100, "height": layout.height or 500, "scale": scale}
    return kaleido.calc_fig_sync(view.figure, opts=opts, kopts={"path": browser, "mathjax": False})


def write_view(view: View, path: str | Path) -> Path:
    """Write `view` to `path` (.html, .json or .png); returns the path."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in FORMATS:
        raise ValueError(f"--out must end in {', '.join(FORMATS)}, got '{path.name}'")
    if ext == ".png":
        data = png_bytes(view)   # before touching the file system: no empty file on failure
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext == ".json":
        path.write_text(json.dumps(view.data, allow_nan=False) + "\n", encoding="utf-8")
    else:
        view.figure.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path
