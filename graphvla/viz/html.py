"""A standalone HTML page: the Graphviz SVG inline, block details on hover, no network."""
from __future__ import annotations

import html
import json

from .model import VizGraph
from .svg import render_svg

CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 0; display: flex; height: 100vh; }
#graph { flex: 1; overflow: auto; padding: 12px; }
#graph svg { max-width: 100%; height: auto; }
#details { width: 360px; border-left: 1px solid #ccc; padding: 12px; overflow: auto; background: #fafafa; }
#details h2 { font-size: 16px; margin: 0 0 8px 0; }
#details table { border-collapse: collapse; font-size: 12px; width: 100%; }
#details td { border-top: 1px solid #e4e4e4; padding: 3px 4px; vertical-align: top; word-break: break-word; }
#details td:first-child { color: #555; white-space: nowrap; }
g.node { cursor: pointer; }
g.node.hover polygon, g.node.hover ellipse, g.node.hover path { stroke-width: 3; }
.legend span { display: inline-block; padding: 1px 6px; margin: 2px; border: 1px solid #999; font-size: 12px; }
"""

JS = """
(function () {
  var details = JSON.parse(document.getElementById('node-details').textContent);
  var panel = document.getElementById('details-body');
  var title = document.getElementById('details-title');
  function cell(value) {
    if (value !== null && typeof value === 'object') {
      return Object.keys(value).map(function (k) { return k + ': ' + JSON.stringify(value[k]); }).join('\\n');
    }
    return String(value);
  }
  function show(id) {
    var d = details[id];
    if (!d) { return; }
    title.textContent = d.name;
    panel.innerHTML = '';
    Object.keys(d.info).forEach(function (k) {
      var row = document.createElement('tr');
      var key = document.createElement('td');
      var val = document.createElement('td');
      key.textContent = k;
      val.textContent = cell(d.info[k]);
      val.style.whiteSpace = 'pre-wrap';
      row.appendChild(key); row.appendChild(val); panel.appendChild(row);
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll('g.node'), function (g) {
    g.addEventListener('mouseenter', function () { g.classList.add('hover'); show(g.id); });
    g.addEventListener('mouseleave', function () { g.classList.remove('hover'); });
  });
})();
"""


def render_html(v: VizGraph) -> str:
    svg = render_svg(v)
    svg = svg[svg.index("<svg"):]  # drop the XML prologue and DOCTYPE (it names a URL)
    details = {n.id: {"name": n.name, "info": n.details} for n in v.nodes}
    data = json.dumps(details, default=str).replace("</", "<\\/")  # never close the script tag early
    legend = ("<div class='legend'><span style='background:#d4edda'>trainable</span><span style='background:#dcdcdc'>frozen</span>"
              "<span style='background:#d6e9f8'>shared</span><span style='background:#fff4cc'>input</span>"
              "<span style='background:#fde2cf'>loss</span><span style='background:#ede3f7'>pipeline step</span><span style='border-style:dashed'>train only</span>"
              "<span style='border-color:#1f6feb;color:#1f6feb'>inference graph</span></div>")
    title = html.escape(f"{v.name} — GraphVLA graph")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{CSS}</style>
</head>
<body>
<div id="graph">
<h1 style="font-size:18px;margin:0 0 6px 0">{html.escape(v.name)} <small style="color:#777">{v.fingerprint[:16]}</small></h1>
{legend}
{svg}
</div>
<div id="details"><h2 id="details-title">hover over a node</h2><table><tbody id="details-body"></tbody></table></div>
<script type="application/json" id="node-details">{data}</script>
<script>{JS}</script>
</body>
</html>
"""
