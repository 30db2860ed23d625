// The "points" renderer of the gradient map: every example a point, drawn by regl-scatterplot
// (WebGL; bundled into regl-scatterplot.min.js by ../build.sh). Per run the frame fetches every
// snapshot's positions once (float32, n_snapshots x n_samples x 2); per epoch it fetches only the
// snapshot's colour codes (uint8 per example; kept by URL, so unchanged codes are not fetched
// again) and moves the points there with a short transition. Overlay groups (poisons, drops,
// the selection, the looked-up example, the target) are drawn on a 2-D canvas above the points
// and follow pan and zoom. Lasso and box come back to the server as the shape, in data
// coordinates (the server finds the examples inside); a click as the example's index.
"use strict";

const P = {
  scatter: null, canvas: null, overlay: null, legend: null, tip: null, bar: null,
  n: 0, slot: -1, colors: null, codes: null, args: null, xy: null, view: null, lassoing: false,
  width: 0, height: 0,
};
const codeFiles = {};  // URL -> Promise of a Uint8Array
const BAR = 30;        // the toolbar's height in pixels
// epochs animate into each other up to this many points; past it a transition's frames (each a
// full redraw, in software where WebGL is) cost more than they show
const ANIMATE_UP_TO = 500000;

function loadCodes(url) {
  if (!codeFiles[url]) {
    codeFiles[url] = fetch(mediaUrl(url)).then(r => {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.arrayBuffer();
    }).then(b => new Uint8Array(b, 16));  // after the 16-byte digest
    codeFiles[url].catch(() => delete codeFiles[url]);
  }
  return codeFiles[url];
}

function rgba(hex) {
  const h = hex.replace("#", "");
  const v = i => parseInt(h.slice(i, i + 2), 16) / 255;
  return [v(0), v(2), v(4), h.length >= 8 ? v(6) : 1];
}

function toGl(value, range) {
  return 2 * (value - range[0]) / (range[1] - range[0]) - 1;
}

function fromGl(value, range) {
  return range[0] + (value + 1) / 2 * (range[1] - range[0]);
}

function screenOf(gx, gy) {
  // what regl-scatterplot's getScreenPosition computes: projection * view * model (model = identity)
  const v = P.view;
  if (!v) return null;
  const aspect = P.width / P.height;
  const x = (v[0] * gx + v[4] * gy + v[12]) / aspect;
  const y = v[1] * gx + v[5] * gy + v[13];
  return [P.width * (x + 1) / 2, P.height * (0.5 - y / 2)];
}

function glOf(sx, sy) {
  // the inverse of screenOf: a screen position (pixels in the canvas) to the points' GL space
  const v = P.view, aspect = P.width / P.height;
  const vx = (2 * sx / P.width - 1) * aspect - v[12], vy = 1 - 2 * sy / P.height - v[13];
  const det = v[0] * v[5] - v[4] * v[1];
  return [(v[5] * vx - v[4] * vy) / det, (v[0] * vy - v[1] * vx) / det];
}

function toolbar(root) {
  const bar = document.createElement("div");
  bar.className = "pl-bar";
  bar.style.cssText = `height:${BAR}px;display:flex;gap:6px;align-items:center;font:12px sans-serif;color:#555`;
  const modes = [["panZoom", "Pan / zoom", "freeform"], ["lasso", "Lasso", "freeform"], ["box", "Box", "rectangle"]];
  for (const [mode, label, type] of modes) {
    const b = document.createElement("button");
    b.textContent = label;
    b.dataset.mode = mode;
    b.style.cssText = "font:12px sans-serif;padding:2px 8px;border:1px solid #ccc;border-radius:4px;background:#fff;cursor:pointer";
    b.onclick = () => {
      P.scatter.set({mouseMode: mode === "panZoom" ? "panZoom" : "lasso", lassoType: type});
      P.mode = mode;
      for (const other of bar.querySelectorAll("button")) other.style.background = other === b ? "#e8eefc" : "#fff";
    };
    bar.appendChild(b);
  }
  const reset = document.createElement("button");
  reset.textContent = "Whole map";
  reset.style.cssText = "font:12px sans-serif;padding:2px 8px;border:1px solid #ccc;border-radius:4px;background:#fff;cursor:pointer";
  reset.onclick = () => P.scatter.reset();
  bar.appendChild(reset);
  const note = document.createElement("span");
  note.className = "pl-count";
  note.style.marginLeft = "auto";
  bar.appendChild(note);
  root.appendChild(bar);
  bar.querySelector("button").style.background = "#e8eefc";
  return bar;
}

function setup(args) {
  const root = document.getElementById("points");
  root.style.display = "block";
  document.getElementById("map").style.display = "none";
  P.bar = toolbar(root);
  const box = document.createElement("div");
  box.style.cssText = "position:relative;width:100%";
  P.width = Math.max(200, root.clientWidth || document.body.clientWidth || 800);
  P.height = Math.max(200, args.height - BAR - 60);
  box.style.height = P.height + "px";
  P.canvas = document.createElement("canvas");
  P.canvas.style.cssText = `position:absolute;left:0;top:0;width:${P.width}px;height:${P.height}px`;
  P.overlay = document.createElement("canvas");
  P.overlay.width = P.width;
  P.overlay.height = P.height;
  P.overlay.style.cssText = `position:absolute;left:0;top:0;width:${P.width}px;height:${P.height}px;pointer-events:none`;
  P.tip = document.createElement("div");
  P.tip.className = "pl-tip";
  P.tip.style.cssText = "position:absolute;display:none;pointer-events:none;background:rgba(255,255,255,.95);" +
    "border:1px solid #999;border-radius:3px;padding:2px 6px;font:12px sans-serif;white-space:nowrap";
  box.append(P.canvas, P.overlay, P.tip);
  root.appendChild(box);
  P.legend = document.createElement("div");
  P.legend.className = "pl-legend";
  P.legend.style.cssText = "font:12px sans-serif;color:#333;display:flex;flex-wrap:wrap;gap:4px 14px;padding:4px 0";
  root.appendChild(P.legend);
  P.n = args.n_samples;
  const big = P.n > 500000;
  P.scatter = window.createScatterplot({
    canvas: P.canvas, width: P.width, height: P.height, pixelRatio: 1,
    backgroundColor: [0.98, 0.98, 0.98, 1], pointSize: big ? 2 : 3, pointSizeSelected: 0,
    pointOutlineWidth: 0, opacity: big ? 0.7 : 0.8, colorBy: "valueA", performanceMode: big,
    lassoColor: [0.1, 0.3, 0.8, 0.9], lassoMinDelay: 5, lassoMinDist: 4, deselectOnDblClick: false,
  });
  P.scatter.subscribe("view", event => { P.view = event.view; drawOverlays(); });
  P.scatter.subscribe("pointOver", i => hover(i));
  P.scatter.subscribe("pointOut", () => { P.tip.style.display = "none"; });
  P.scatter.subscribe("lassoStart", () => { P.lassoing = true; });
  // a box is taken from where the mouse went down and up (the lasso's own outline gains a vertex
  // per animation frame, and a frame of a million points in software WebGL can outlast the drag)
  P.canvas.addEventListener("mousedown", e => { P.down = [e.offsetX, e.offsetY]; });
  window.addEventListener("mouseup", e => {
    const r = P.canvas.getBoundingClientRect();
    P.up = [e.clientX - r.left, e.clientY - r.top];
  });
  P.scatter.subscribe("lassoEnd", ({coordinates}) => {
    P.lassoing = false;
    const a = P.args;
    performance.mark("map:lasso-end");
    if (P.mode === "box" && P.down && P.up) {
      const [x0, y0] = glOf(P.down[0], P.down[1]), [x1, y1] = glOf(P.up[0], P.up[1]);
      send({points: [], lasso: [], box: [{xref: "x", yref: "y", x: [fromGl(x0, a.x_range), fromGl(x1, a.x_range)],
                                          y: [fromGl(y0, a.y_range), fromGl(y1, a.y_range)]}]});
    } else {
      const x = coordinates.map(c => fromGl(c[0], a.x_range));
      const y = coordinates.map(c => fromGl(c[1], a.y_range));
      if (x.length >= 3) send({points: [], box: [], lasso: [{xref: "x", yref: "y", x: x, y: y}]});
    }
    setTimeout(() => P.scatter.deselect({preventEvent: true}), 0);
  });
  P.scatter.subscribe("select", ({points}) => {
    if (P.lassoing || points.length !== 1) return;
    const i = points[0];
    if (P.codes && P.codes[i] === P.args.palette.length - 1) return;  // not shown
    send({points: [{curve_number: 0, point_index: i, customdata: i}], box: [], lasso: []});
    setTimeout(() => P.scatter.deselect({preventEvent: true}), 0);
  });
  P.view = P.scatter.get("cameraView");
}

function hover(i) {
  const a = P.args;
  if (!a || !P.codes || P.codes[i] === a.palette.length - 1) return;
  const off = P.slot * P.n * 2;
  const s = screenOf(toGl(P.xy[off + 2 * i], a.x_range), toGl(P.xy[off + 2 * i + 1], a.y_range));
  if (!s) return;
  P.tip.textContent = "example " + i + " · " + (a.names[P.codes[i]] || "");
  P.tip.style.left = Math.min(P.width - 160, s[0] + 10) + "px";
  P.tip.style.top = Math.max(0, s[1] - 28) + "px";
  P.tip.style.display = "block";
}

function indices(value) {
  return Array.isArray(value) ? value : decode(value);
}

function symbol(ctx, kind, x, y, r) {
  ctx.beginPath();
  if (kind === "square-open") ctx.rect(x - r, y - r, 2 * r, 2 * r);
  else if (kind === "diamond") { ctx.moveTo(x, y - r); ctx.lineTo(x + r, y); ctx.lineTo(x, y + r); ctx.lineTo(x - r, y); ctx.closePath(); }
  else if (kind === "x") { ctx.moveTo(x - r, y - r); ctx.lineTo(x + r, y + r); ctx.moveTo(x + r, y - r); ctx.lineTo(x - r, y + r); }
  else if (kind === "star") {
    for (let k = 0; k < 10; k++) {
      const rr = k % 2 ? r * 0.45 : r, t = Math.PI / 2 + k * Math.PI / 5;
      ctx[k ? "lineTo" : "moveTo"](x + rr * Math.cos(t), y - rr * Math.sin(t));
    }
    ctx.closePath();
  } else ctx.arc(x, y, r, 0, 2 * Math.PI);
}

function drawOverlays() {
  const a = P.args;
  if (!a || !P.xy || !P.overlay) return;
  const ctx = P.overlay.getContext("2d");
  ctx.clearRect(0, 0, P.width, P.height);
  const off = P.slot * P.n * 2;
  for (const group of a.overlays) {
    const open = group.symbol.endsWith("-open") || group.symbol === "x";
    const kind = group.symbol.replace("circle-open", "circle");
    ctx.strokeStyle = group.color;
    ctx.fillStyle = group.color;
    ctx.lineWidth = group.line || 1.5;
    const r = group.size / 2;
    for (const i of indices(group.index)) {
      const s = screenOf(toGl(P.xy[off + 2 * i], a.x_range), toGl(P.xy[off + 2 * i + 1], a.y_range));
      if (!s || !isFinite(s[0]) || s[0] < -r || s[1] < -r || s[0] > P.width + r || s[1] > P.height + r) continue;
      symbol(ctx, kind, s[0], s[1], r);
      if (open) ctx.stroke(); else { ctx.fill(); if (group.edge) { ctx.strokeStyle = group.edge; ctx.stroke(); ctx.strokeStyle = group.color; } }
    }
  }
  if (a.target) {
    const s = screenOf(toGl(a.target[0], a.x_range), toGl(a.target[1], a.y_range));
    if (s) {
      ctx.fillStyle = "#ffd700"; ctx.strokeStyle = "#111"; ctx.lineWidth = 1.5;
      symbol(ctx, "star", s[0], s[1], 12); ctx.fill(); ctx.stroke();
    }
  }
}

function drawLegend(a) {
  P.legend.textContent = "";
  const entries = a.legend.concat(a.overlays.map(g => ({name: g.name, color: g.color, symbol: g.symbol})));
  for (const e of entries) {
    const item = document.createElement("span");
    item.style.cssText = "display:inline-flex;align-items:center;gap:4px";
    if (e.colorbar) {
      const bar = document.createElement("span");
      bar.style.cssText = `display:inline-block;width:120px;height:10px;background:linear-gradient(to right,${e.colorbar.join(",")})`;
      item.append(e.name + " " + e.low.toPrecision(3) + " ", bar, " " + e.high.toPrecision(3));
    } else {
      const sw = document.createElement("span");
      const open = e.symbol && (e.symbol.endsWith("-open") || e.symbol === "x");
      sw.style.cssText = `display:inline-block;width:10px;height:10px;border-radius:${e.symbol && e.symbol.startsWith("square") ? 0 : 5}px;` +
        (open ? `border:2px solid ${e.color}` : `background:${e.color}`);
      item.append(sw, e.name);
    }
    P.legend.appendChild(item);
  }
}

async function renderPoints(args, id) {
  if (!window.createScatterplot) await loadScript("regl-scatterplot.min.js");
  const [xy, codes] = await Promise.all([loadPositions(args.positions), loadCodes(args.colors)]);
  if (id !== latest) return;
  performance.mark("map:data-" + id);
  if (!P.scatter) setup(args);
  const first = P.slot < 0;
  const moved = args.slot !== P.slot || args.positions !== P.posUrl || args.x_range.join() !== (P.args && P.args.x_range.join());
  P.args = args;
  P.xy = xy;
  P.codes = codes;
  if (moved || args.colors !== P.colorUrl) {
    const n = args.n_samples, off = args.slot * n * 2;
    const x = new Float32Array(n), y = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const px = xy[off + 2 * i], py = xy[off + 2 * i + 1];
      // examples without a position are moved far outside the view
      x[i] = isFinite(px) ? toGl(px, args.x_range) : 9;
      y[i] = isFinite(py) ? toGl(py, args.y_range) : 9;
    }
    P.scatter.set({pointColor: args.palette.map(rgba)});
    await P.scatter.draw({x: x, y: y, valueA: codes},
                         {zDataType: "categorical", transition: !first && moved && n <= ANIMATE_UP_TO,
                          transitionDuration: 300});
  }
  P.slot = args.slot;
  P.posUrl = args.positions;
  P.colorUrl = args.colors;
  drawOverlays();
  drawLegend(args);
  P.bar.querySelector(".pl-count").textContent = args.n_samples.toLocaleString() + " examples, every one a point";
  document.body.dataset.mapState = args.slot + "|" + args.colors + "|" + id;
  performance.mark("map:drawn-" + id);
  post("streamlit:setFrameHeight", {height: document.body.scrollHeight});
}
