"""Figure builders: each takes DataFrames and returns a plotly figure (or, for the points
renderer, the arrays it draws), testable without a server. One module per page, and the map's
shared style:

- :mod:`.map_style`: overlay groups and their styles, class colours, colour fields, the map's
  view options (``MapView``) and marks (``MapMarks``)
- :mod:`.gradient_map`: the Gradient space map as a plotly figure (``MapFrame``: its area),
  and a class's cluster sizes
- :mod:`.points`: the colour codes and overlays of the WebGL points renderer (very large runs)
- :mod:`.overview`: a run's metrics epoch by epoch
- :mod:`.drift`: followed examples across epochs, poisons against clean per snapshot
- :mod:`.compare`: defenses side by side over a grid of runs
"""
