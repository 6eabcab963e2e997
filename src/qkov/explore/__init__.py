"""`qkov explore`: a local web app to read any text through a model, live.

session.py      Explorer: models by name; run (tokens, patterns, predictions,
                attributions), roles and head panels, cached per model
attribution.py  the paths pushing each next token (from paths.path_expansion)
app.py          the Starlette app and its JSON API (needs the `explore` extra)
assets/         the page: index.html, explore.js, explore.css (no CDN, no network)
"""

from qkov.explore.session import Explorer, RequestError

__all__ = ["Explorer", "RequestError"]
