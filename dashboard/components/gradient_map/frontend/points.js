// The "points" renderer of the gradient map: every example a point, drawn by a small WebGL2
// program of this file, or, where the browser's WebGL is itself software (SwiftShader, llvmpipe:
// no GPU) or missing, by this file's own CPU rasterizer into a 2-D canvas: a million 2-pixel
// points take tens of milliseconds in JavaScript against 1-2.3 s through emulated WebGL. Per run the frame fetches every snapshot's positions once (float32,
// n_snapshots x n_samples x 2) and uploads them to the GPU once, as one buffer; an epoch change
// only points the shader at another snapshot's rows of that buffer (and, when the colour codes
// changed, uploads their 1 byte per example). Nothing per point runs in JavaScript on a redraw:
// a general scatter library (regl-scatterplot, used before) rebuilt a million small arrays, a
// state texture and a k-d tree on every draw, 1.6-5.5 s per epoch in software WebGL. Overlay
// groups (poisons, drops, the selection, the looked-up example, the target) are drawn on a 2-D
// canvas above the points and follow pan and zoom. Hover and click find the nearest point in a
// grid built per snapshot the first time the pointer needs it. Lasso and box come back to the
// server as the shape, in data coordinates (the server finds the examples inside); a click as
// the example's index.
"use strict";

const P = {
  gl: null, program: null, loc: null, buffers: null, canvas: null, overlay: null, lasso: null, legend: null,
  tip: null, bar: null, n: 0, slot: -1, codes: null, args: null, xy: null, posUrl: null, colorUrl: null,
  palette: "", width: 0, height: 0, view: {s: 1, tx: 0, ty: 0}, mode: "panZoom", drag: null, grids: {},
  drawn: 0, frames: 0, frameMs: Infinity, area: "", uploads: {positions: 0, codes: 0},
  raster: "", rendererName: "", ctx: null, raw: null, image: null, pixels: null, cpuPalette: null,
};
const BACKGROUND = [250, 250, 250];  // the map's background (GL clears to 0.98 grey)
const BAR = 30;          // the toolbar's height in pixels
const ANIMATE_MS = 250;  // an epoch change moves the points over this long (frames as they come)...
const ANIMATE_BELOW_MS = 40;  // ...where the last whole frame took less than this
const CLICK_PX = 3;      // a press and release closer than this is a click, not a drag
const HOVER_PX = 6;      // hover and click find the nearest point within this many pixels

const VERTEX = `#version 300 es
in vec2 a_from;
in vec2 a_to;
in float a_code;
uniform float u_mix, u_aspect, u_size, u_hidden, u_missing;
uniform vec4 u_quant;   // x0, dx, y0, dy: a position is (x0 + a.x * dx, y0 + a.y * dy)
uniform vec4 u_range;   // x0, x1, y0, y1: the data area mapped to [-1, 1]
uniform vec3 u_view;    // scale, x and y translation (pan and zoom)
uniform sampler2D u_palette;
out vec4 v_color;
void main() {
  if (a_code >= u_hidden || max(max(a_from.x, a_from.y), max(a_to.x, a_to.y)) > u_missing) { gl_Position = vec4(2.0, 2.0, 2.0, 1.0); gl_PointSize = 0.0; v_color = vec4(0.0); return; }
  vec2 p = u_quant.xz + mix(a_from, a_to, u_mix) * u_quant.yw;
  vec2 g = 2.0 * (p - u_range.xz) / (u_range.yw - u_range.xz) - 1.0;
  gl_Position = vec4((u_view.x * g.x + u_view.y) / u_aspect, u_view.x * g.y + u_view.z, 0.0, 1.0);
  gl_PointSize = u_size;
  v_color = texelFetch(u_palette, ivec2(int(a_code), 0), 0);
}`;
const FRAGMENT = `#version 300 es
precision mediump float;
in vec4 v_color;
out vec4 color;
void main() { color = v_color; }`;

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
  // GL space ([-1, 1] over the data area) to pixels in the canvas; the square data area fills
  // the canvas's height, centred, as the vertex shader draws it
  const v = P.view, aspect = P.width / P.height;
  const x = (v.s * gx + v.tx) / aspect, y = v.s * gy + v.ty;
  return [P.width * (x + 1) / 2, P.height * (0.5 - y / 2)];
}

function glOf(sx, sy) {
  // the inverse of screenOf
  const v = P.view, aspect = P.width / P.height;
  return [((2 * sx / P.width - 1) * aspect - v.tx) / v.s, (1 - 2 * sy / P.height - v.ty) / v.s];
}

// --- WebGL -------------------------------------------------------------------------------------

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
  return shader;
}

function webglRenderer() {
  // the name of the browser's WebGL2 renderer, or "" without WebGL2 (asked on a throwaway canvas:
  // a canvas keeps the first kind of context it is asked for)
  const gl = document.createElement("canvas").getContext("webgl2");
  if (!gl) return "";
  const info = gl.getExtension("WEBGL_debug_renderer_info");
  const name = String(info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER));
  const lose = gl.getExtension("WEBGL_lose_context");
  if (lose) lose.loseContext();
  return name || "WebGL2";
}

function chooseRaster(asked) {
  // "gpu": the WebGL2 program; "cpu": the JavaScript rasterizer. "auto" takes the CPU where WebGL
  // would run on the CPU anyway (a software renderer) or is missing
  P.rendererName = webglRenderer();
  const software = !P.rendererName || /swiftshader|llvmpipe|softpipe|software|basic render/i.test(P.rendererName);
  if (asked === "gpu" && P.rendererName) return "gpu";
  if (asked === "cpu") return "cpu";
  return software ? "cpu" : "gpu";
}

function setupCpu() {
  P.ctx = P.canvas.getContext("2d");
}

function setupGl() {
  const gl = P.canvas.getContext("webgl2", {antialias: false, premultipliedAlpha: false});
  if (!gl) throw new Error("this browser has no WebGL2, which the points renderer needs");
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
  gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT));
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
  P.gl = gl;
  P.program = program;
  P.loc = {};
  for (const name of ["a_from", "a_to", "a_code"]) P.loc[name] = gl.getAttribLocation(program, name);
  for (const name of ["u_mix", "u_aspect", "u_size", "u_hidden", "u_missing", "u_quant", "u_range", "u_view", "u_palette"]) {
    P.loc[name] = gl.getUniformLocation(program, name);
  }
  P.buffers = {xy: gl.createBuffer(), codes: gl.createBuffer(), palette: gl.createTexture()};
  gl.bindTexture(gl.TEXTURE_2D, P.buffers.palette);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
  gl.enable(gl.BLEND);
  gl.blendFuncSeparate(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA, gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
}

function uploadPositions(raw, scale) {
  // uint16 codes go to the GPU as they came (the shader scales them; 65535: no position); float32
  // NaN (no position) is moved far outside the view: the GPU never sees a NaN
  let gpu = raw;
  for (let i = 0; !scale && i < raw.length; i++) {
    if (raw[i] !== raw[i]) {
      gpu = raw.slice();
      for (let k = i; k < gpu.length; k++) if (gpu[k] !== gpu[k]) gpu[k] = 1e20;
      break;
    }
  }
  P.scale = scale || null;
  P.raw = gpu;
  if (P.raster === "cpu") return;  // the rasterizer reads them where they are
  const gl = P.gl;
  gl.bindBuffer(gl.ARRAY_BUFFER, P.buffers.xy);
  gl.bufferData(gl.ARRAY_BUFFER, gpu, gl.STATIC_DRAW);
  P.uploads.positions += 1;
}

const decoded = {};  // URL -> float32 positions decoded from uint16 codes (for overlays, hover, picking)
function positionsOf(url, raw, scale) {
  if (!scale) return raw;
  if (!decoded[url]) {
    const xy = new Float32Array(raw.length), [x0, dx, y0, dy] = scale;
    for (let i = 0; i < raw.length; i += 2) {
      const missing = raw[i] === 65535 || raw[i + 1] === 65535;
      xy[i] = missing ? NaN : x0 + raw[i] * dx;
      xy[i + 1] = missing ? NaN : y0 + raw[i + 1] * dy;
    }
    decoded[url] = xy;
  }
  return decoded[url];
}

function uploadCodes(codes) {
  if (P.raster === "cpu") return;
  const gl = P.gl;
  gl.bindBuffer(gl.ARRAY_BUFFER, P.buffers.codes);
  gl.bufferData(gl.ARRAY_BUFFER, codes, gl.DYNAMIC_DRAW);
  P.uploads.codes += 1;
}

function uploadPalette(palette, opacity) {
  // one RGBA texel per colour code (at most 256); the last code is "not shown"
  const data = new Uint8Array(256 * 4);
  palette.forEach((hex, k) => {
    const c = rgba(hex);
    data.set([c[0] * 255, c[1] * 255, c[2] * 255, c[3] * opacity * 255].map(Math.round), 4 * k);
  });
  if (P.raster === "cpu") {
    // per code: the colour times its alpha (in 1/256ths) and what is left of the pixel below
    const r = new Int32Array(256), g = new Int32Array(256), b = new Int32Array(256), keep = new Int32Array(256);
    for (let k = 0; k < 256; k++) {
      const alpha = Math.round(data[4 * k + 3] * 256 / 255);
      r[k] = data[4 * k] * alpha; g[k] = data[4 * k + 1] * alpha; b[k] = data[4 * k + 2] * alpha;
      keep[k] = 256 - alpha;
    }
    P.cpuPalette = {r, g, b, keep};
    return;
  }
  const gl = P.gl;
  gl.bindTexture(gl.TEXTURE_2D, P.buffers.palette);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, 256, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, data);
}

function splat(from, to, t) {
  // the CPU's frame: every shown example a size x size square of pixels, blended over the ones
  // drawn before it in index order, as the GPU blends them; then one putImageData
  const w = P.width, h = P.height, n = P.n, a = P.args, q = P.scale, raw = P.raw, codes = P.codes;
  if (!P.image || P.image.width !== w || P.image.height !== h) {
    P.image = P.ctx.createImageData(w, h);
    P.pixels = new Uint32Array(P.image.data.buffer);
  }
  const px = P.pixels, pal = P.cpuPalette, hidden = a.palette.length - 1;
  px.fill((255 << 24 | BACKGROUND[2] << 16 | BACKGROUND[1] << 8 | BACKGROUND[0]) >>> 0);  // RGBA bytes, little-endian
  // screen x = kx * x + cx and screen y = ky * y + cy (screenOf, written out for a data position)
  const v = P.view, aspect = w / h, xw = a.x_range[1] - a.x_range[0], yw = a.y_range[1] - a.y_range[0];
  const kx = w * v.s / (aspect * xw), cx = w / 2 * ((v.s * (-2 * a.x_range[0] / xw - 1) + v.tx) / aspect + 1);
  const ky = -h * v.s / yw, cy = h / 2 - h / 2 * (v.s * (-2 * a.y_range[0] / yw - 1) + v.ty);
  // codes: x = x0 + code * dx, folded into the same two numbers
  const ax = q ? kx * q[1] : kx, bx = q ? kx * q[0] + cx : cx, ay = q ? ky * q[3] : ky, by = q ? ky * q[2] + cy : cy;
  const size = n > 500000 ? 2 : 3, half = size / 2, missing = q ? 65535 : NaN;
  const f0 = from * n * 2, t0 = to * n * 2, moving = from !== to && t < 1;
  let drawn = 0;
  for (let i = 0; i < n; i++) {
    const c = codes[i];
    if (c >= hidden) continue;
    let x = raw[f0 + 2 * i], y = raw[f0 + 2 * i + 1];
    if (x === missing || y === missing || x !== x || y !== y) continue;
    if (moving) {
      const x2 = raw[t0 + 2 * i], y2 = raw[t0 + 2 * i + 1];
      if (x2 === missing || y2 === missing || x2 !== x2 || y2 !== y2) continue;
      x += (x2 - x) * t; y += (y2 - y) * t;
    }
    const X = Math.round(ax * x + bx - half), Y = Math.round(ay * y + by - half);
    if (X <= -size || Y <= -size || X >= w || Y >= h) continue;
    const sr = pal.r[c], sg = pal.g[c], sb = pal.b[c], keep = pal.keep[c];
    for (let yy = Math.max(0, Y); yy < Math.min(h, Y + size); yy++) {
      for (let p = yy * w + Math.max(0, X), end = yy * w + Math.min(w, X + size); p < end; p++) {
        const d = px[p];
        px[p] = (0xff000000 | ((sb + (d >>> 16 & 255) * keep) >> 8) << 16 | ((sg + (d >>> 8 & 255) * keep) >> 8) << 8
                 | (sr + (d & 255) * keep) >> 8) >>> 0;
      }
    }
    drawn += 1;
  }
  P.ctx.putImageData(P.image, 0, 0);
  P.drawn = n;
  P.splatted = drawn;  // the shown points inside the view
  P.frames += 1;
}

function drawPoints(from, to, t) {
  // one draw call of every example: the positions of snapshot `from` moved `t` of the way to `to`
  if (P.raster === "cpu") return splat(from, to, t);
  const gl = P.gl, loc = P.loc, a = P.args, n = P.n;
  gl.viewport(0, 0, P.width, P.height);
  gl.clearColor(0.98, 0.98, 0.98, 1);
  gl.clear(gl.COLOR_BUFFER_BIT);
  gl.useProgram(P.program);
  gl.bindBuffer(gl.ARRAY_BUFFER, P.buffers.xy);
  gl.enableVertexAttribArray(loc.a_from);
  const q = P.scale, type = q ? gl.UNSIGNED_SHORT : gl.FLOAT, row = n * (q ? 4 : 8);  // bytes per snapshot
  gl.vertexAttribPointer(loc.a_from, 2, type, false, 0, from * row);
  gl.enableVertexAttribArray(loc.a_to);
  gl.vertexAttribPointer(loc.a_to, 2, type, false, 0, to * row);
  gl.bindBuffer(gl.ARRAY_BUFFER, P.buffers.codes);
  gl.enableVertexAttribArray(loc.a_code);
  gl.vertexAttribPointer(loc.a_code, 1, gl.UNSIGNED_BYTE, false, 0, 0);
  gl.activeTexture(gl.TEXTURE0);
  gl.bindTexture(gl.TEXTURE_2D, P.buffers.palette);
  gl.uniform1i(loc.u_palette, 0);
  gl.uniform1f(loc.u_mix, t);
  gl.uniform1f(loc.u_aspect, P.width / P.height);
  gl.uniform1f(loc.u_size, n > 500000 ? 2 : 3);
  gl.uniform1f(loc.u_hidden, a.palette.length - 1);
  gl.uniform1f(loc.u_missing, q ? 65534.5 : 1e19);
  if (q) gl.uniform4f(loc.u_quant, q[0], q[1], q[2], q[3]); else gl.uniform4f(loc.u_quant, 0, 1, 0, 1);
  gl.uniform4f(loc.u_range, a.x_range[0], a.x_range[1], a.y_range[0], a.y_range[1]);
  gl.uniform3f(loc.u_view, P.view.s, P.view.tx, P.view.ty);
  gl.drawArrays(gl.POINTS, 0, n);
  P.drawn = n;
  P.frames += 1;
}

function settle() {
  // wait until the GPU (software, in a headless browser) has really drawn the frame: reading a
  // pixel back blocks until then, so "drawn" in the timings means drawn
  if (P.raster === "cpu") return;  // putImageData has written the pixels already
  const pixel = new Uint8Array(4);
  P.gl.readPixels(0, 0, 1, 1, P.gl.RGBA, P.gl.UNSIGNED_BYTE, pixel);
}

let pending = false;
function redraw() {
  // pan, zoom and resets: one frame per animation frame at most
  if (pending || !P.raster) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    drawPoints(P.slot, P.slot, 1);
    drawOverlays();
  });
}

function animate(from, to) {
  return new Promise(resolve => {
    const start = performance.now();
    const step = () => {
      const t = Math.min(1, (performance.now() - start) / ANIMATE_MS);
      drawPoints(from, to, t * t * (3 - 2 * t));
      if (t < 1) requestAnimationFrame(step); else resolve();
    };
    step();
  });
}

// --- hover and click: the nearest point ---------------------------------------------------------

function grid(slot) {
  // the examples of one snapshot bucketed by a square grid over their extent (a counting sort):
  // built once per snapshot, the first time hover or click needs it
  if (P.grids[slot]) return P.grids[slot];
  const n = P.n, off = slot * n * 2, xy = P.xy;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = xy[off + 2 * i], y = xy[off + 2 * i + 1];
    if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
  }
  const size = Math.max(16, Math.min(1024, Math.ceil(Math.sqrt(n / 8))));
  const sx = size / ((x1 - x0) || 1), sy = size / ((y1 - y0) || 1);
  const cellOf = new Int32Array(n), start = new Uint32Array(size * size + 1);
  for (let i = 0; i < n; i++) {
    const x = xy[off + 2 * i], y = xy[off + 2 * i + 1];
    if (!(x === x && y === y)) { cellOf[i] = -1; continue; }
    const c = Math.min(size - 1, Math.floor((y - y0) * sy)) * size + Math.min(size - 1, Math.floor((x - x0) * sx));
    cellOf[i] = c;
    start[c + 1] += 1;
  }
  for (let c = 0; c < size * size; c++) start[c + 1] += start[c];
  const fill = start.slice(0, size * size), order = new Uint32Array(start[size * size]);
  for (let i = 0; i < n; i++) if (cellOf[i] >= 0) order[fill[cellOf[i]]++] = i;
  P.grids[slot] = {x0, y0, sx, sy, size, start, order};
  return P.grids[slot];
}

function nearest(px, py) {
  // the shown example drawn nearest to the canvas pixel (px, py), within HOVER_PX (or -1)
  const a = P.args, g = grid(P.slot), off = P.slot * P.n * 2, hidden = a.palette.length - 1;
  const [gx, gy] = glOf(px, py);
  const x = fromGl(gx, a.x_range), y = fromGl(gy, a.y_range);
  // data units per pixel along each axis at this zoom
  const ux = (a.x_range[1] - a.x_range[0]) * (P.width / P.height) / P.width / P.view.s;
  const uy = (a.y_range[1] - a.y_range[0]) / P.height / P.view.s;
  const rx = HOVER_PX * ux, ry = HOVER_PX * uy;
  const cx0 = Math.max(0, Math.floor((x - rx - g.x0) * g.sx)), cx1 = Math.min(g.size - 1, Math.floor((x + rx - g.x0) * g.sx));
  const cy0 = Math.max(0, Math.floor((y - ry - g.y0) * g.sy)), cy1 = Math.min(g.size - 1, Math.floor((y + ry - g.y0) * g.sy));
  let best = -1, bestD = HOVER_PX * HOVER_PX;
  for (let cy = cy0; cy <= cy1; cy++) {
    for (let cx = cx0; cx <= cx1; cx++) {
      const c = cy * g.size + cx;
      for (let k = g.start[c]; k < g.start[c + 1]; k++) {
        const i = g.order[k];
        if (P.codes[i] >= hidden) continue;
        const dx = (P.xy[off + 2 * i] - x) / ux, dy = (P.xy[off + 2 * i + 1] - y) / uy;
        const d = dx * dx + dy * dy;
        if (d <= bestD) { bestD = d; best = i; }  // ties: the later example, drawn on top
      }
    }
  }
  return best;
}

function hover(px, py) {
  const a = P.args;
  const i = a && P.codes ? nearest(px, py) : -1;
  if (i < 0) { P.tip.style.display = "none"; return; }
  const off = P.slot * P.n * 2;
  const s = screenOf(toGl(P.xy[off + 2 * i], a.x_range), toGl(P.xy[off + 2 * i + 1], a.y_range));
  P.tip.textContent = "example " + i + " · " + (a.names[P.codes[i]] || "");
  P.tip.style.left = Math.min(P.width - 160, s[0] + 10) + "px";
  P.tip.style.top = Math.max(0, s[1] - 28) + "px";
  P.tip.style.display = "block";
}

// --- the mouse: pan, zoom, lasso, box, click --------------------------------------------------

function canvasXY(event) {
  const r = P.canvas.getBoundingClientRect();
  return [event.clientX - r.left, event.clientY - r.top];
}

function drawLasso() {
  const ctx = P.lasso.getContext("2d");
  ctx.clearRect(0, 0, P.width, P.height);
  const d = P.drag;
  if (!d || d.mode === "panZoom") return;
  ctx.strokeStyle = "rgba(25, 76, 204, 0.9)";
  ctx.fillStyle = "rgba(25, 76, 204, 0.08)";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  if (d.mode === "box") {
    ctx.rect(d.start[0], d.start[1], d.last[0] - d.start[0], d.last[1] - d.start[1]);
  } else {
    d.path.forEach(([x, y], k) => ctx[k ? "lineTo" : "moveTo"](x, y));
    ctx.closePath();
  }
  ctx.fill();
  ctx.stroke();
}

function toData([px, py]) {
  const [gx, gy] = glOf(px, py);
  return [fromGl(gx, P.args.x_range), fromGl(gy, P.args.y_range)];
}

function release(event) {
  const d = P.drag;
  P.drag = null;
  if (!d) return;
  const end = canvasXY(event);
  drawLasso();
  const moved = Math.abs(end[0] - d.start[0]) + Math.abs(end[1] - d.start[1]);
  if (moved < CLICK_PX && !d.panned) {
    const i = nearest(end[0], end[1]);
    if (i >= 0) send({points: [{curve_number: 0, point_index: i, customdata: i}], box: [], lasso: []});
    return;
  }
  performance.mark("map:lasso-end");
  if (d.mode === "box") {
    const [x0, y0] = toData(d.start), [x1, y1] = toData(end);
    send({points: [], lasso: [], box: [{xref: "x", yref: "y", x: [x0, x1], y: [y0, y1]}]});
  } else if (d.mode === "lasso" && d.path.length >= 3) {
    const corners = d.path.map(toData);
    send({points: [], box: [], lasso: [{xref: "x", yref: "y", x: corners.map(c => c[0]), y: corners.map(c => c[1])}]});
  }
}

function listenMouse() {
  P.canvas.addEventListener("mousedown", event => {
    const at = canvasXY(event);
    P.drag = {mode: event.shiftKey ? "lasso" : P.mode, start: at, last: at, path: [at], panned: false};
    P.tip.style.display = "none";
    event.preventDefault();
  });
  window.addEventListener("mousemove", event => {
    const d = P.drag, at = canvasXY(event);
    if (!d) {
      if (event.target === P.canvas) hover(at[0], at[1]); else P.tip.style.display = "none";
      return;
    }
    if (d.mode === "panZoom") {
      const aspect = P.width / P.height;
      P.view.tx += 2 * (at[0] - d.last[0]) / P.width * aspect;
      P.view.ty -= 2 * (at[1] - d.last[1]) / P.height;
      d.panned = true;
      redraw();
    } else if (d.mode === "box" || Math.hypot(at[0] - d.last[0], at[1] - d.last[1]) >= 4) {
      d.path.push(at);
    } else {
      return;
    }
    d.last = at;
    drawLasso();
  });
  window.addEventListener("mouseup", release);
  P.canvas.addEventListener("mouseleave", () => { P.tip.style.display = "none"; });
  P.canvas.addEventListener("wheel", event => {
    // zoom about the pointer: the point under it stays put
    event.preventDefault();
    const [px, py] = canvasXY(event), [gx, gy] = glOf(px, py), aspect = P.width / P.height;
    const s = Math.min(1000, Math.max(0.2, P.view.s * Math.exp(-event.deltaY * 0.002)));
    P.view = {s: s, tx: (2 * px / P.width - 1) * aspect - s * gx, ty: 1 - 2 * py / P.height - s * gy};
    redraw();
  }, {passive: false});
}

// --- the frame's parts ------------------------------------------------------------------------

function button(label, onclick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.style.cssText = "font:12px sans-serif;padding:2px 8px;border:1px solid #ccc;border-radius:4px;background:#fff;cursor:pointer";
  b.onclick = onclick;
  return b;
}

function toolbar(root) {
  const bar = document.createElement("div");
  bar.className = "pl-bar";
  bar.style.cssText = `height:${BAR}px;display:flex;gap:6px;align-items:center;font:12px sans-serif;color:#555`;
  for (const [mode, label] of [["panZoom", "Pan / zoom"], ["lasso", "Lasso"], ["box", "Box"]]) {
    const b = button(label, () => {
      P.mode = mode;
      for (const other of bar.querySelectorAll("button[data-mode]")) {
        other.style.background = other === b ? "#e8eefc" : "#fff";
      }
    });
    b.dataset.mode = mode;
    bar.appendChild(b);
  }
  bar.appendChild(button("Whole map", () => { P.view = {s: 1, tx: 0, ty: 0}; redraw(); }));
  const note = document.createElement("span");
  note.className = "pl-count";
  note.style.marginLeft = "auto";
  bar.appendChild(note);
  root.appendChild(bar);
  bar.querySelector("button").style.background = "#e8eefc";
  return bar;
}

function layer(pointer) {
  const canvas = document.createElement("canvas");
  canvas.width = P.width;
  canvas.height = P.height;
  canvas.style.cssText = `position:absolute;left:0;top:0;width:${P.width}px;height:${P.height}px` +
    (pointer ? "" : ";pointer-events:none");
  return canvas;
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
  P.canvas = layer(true);
  P.overlay = layer(false);
  P.lasso = layer(false);
  P.tip = document.createElement("div");
  P.tip.className = "pl-tip";
  P.tip.style.cssText = "position:absolute;display:none;pointer-events:none;background:rgba(255,255,255,.95);" +
    "border:1px solid #999;border-radius:3px;padding:2px 6px;font:12px sans-serif;white-space:nowrap";
  box.append(P.canvas, P.overlay, P.lasso, P.tip);
  root.appendChild(box);
  P.legend = document.createElement("div");
  P.legend.className = "pl-legend";
  P.legend.style.cssText = "font:12px sans-serif;color:#333;display:flex;flex-wrap:wrap;gap:4px 14px;padding:4px 0";
  root.appendChild(P.legend);
  P.raster = chooseRaster(args.raster);
  if (P.raster === "cpu") setupCpu(); else setupGl();
  listenMouse();
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
  const t0 = performance.now();
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
    for (const i of group.ids) {
      const s = screenOf(toGl(P.xy[off + 2 * i], a.x_range), toGl(P.xy[off + 2 * i + 1], a.y_range));
      if (!isFinite(s[0]) || s[0] < -r || s[1] < -r || s[0] > P.width + r || s[1] > P.height + r) continue;
      symbol(ctx, kind, s[0], s[1], r);
      if (open) ctx.stroke(); else { ctx.fill(); if (group.edge) { ctx.strokeStyle = group.edge; ctx.stroke(); ctx.strokeStyle = group.color; } }
    }
  }
  if (a.target) {
    const s = screenOf(toGl(a.target[0], a.x_range), toGl(a.target[1], a.y_range));
    ctx.fillStyle = "#ffd700"; ctx.strokeStyle = "#111"; ctx.lineWidth = 1.5;
    symbol(ctx, "star", s[0], s[1], 12); ctx.fill(); ctx.stroke();
  }
  P.overlayMs = performance.now() - t0;  // the bench reads it
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
  // Streamlit sends the same arguments again after a rerun at times: nothing to draw then
  const same = JSON.stringify(args);
  if (same === P.same && P.raster) {
    document.body.dataset.mapState = args.slot + "|" + args.colors + "|" + id;
    performance.mark("map:drawn-" + id);
    return;
  }
  // overlay groups come as URLs of int32 example indices: a group that did not change (the
  // poisons, across epochs) has the same URL and is not fetched again
  const [raw, codes, ...groups] = await Promise.all([
    loadBinary(args.positions, args.scale ? Uint16Array : Float32Array), loadBinary(args.colors, Uint8Array),
    ...args.overlays.map(g => typeof g.index === "string" ? loadBinary(g.index, Int32Array) : indices(g.index))]);
  if (id !== latest) return;
  args.overlays.forEach((g, k) => { g.ids = groups[k]; });
  const xy = positionsOf(args.positions, raw, args.scale);
  performance.mark("map:data-" + id);
  if (!P.raster) setup(args);
  const newRun = args.positions !== P.posUrl;
  if (newRun) {
    P.n = args.n_samples;
    P.grids = {};
    uploadPositions(raw, args.scale);
  }
  const recoloured = args.colors !== P.colorUrl, palette = args.palette.join();
  if (recoloured) uploadCodes(codes);
  if (palette !== P.palette) uploadPalette(args.palette, P.n > 500000 ? 0.7 : 0.8);
  const area = args.x_range.join() + "|" + args.y_range.join();
  // the GPU draws again only when what it draws changed (a rerun often changes only overlays)
  const changed = newRun || recoloured || palette !== P.palette || args.slot !== P.slot || area !== P.area;
  const from = !newRun && P.slot >= 0 && args.slot !== P.slot ? P.slot : -1;
  P.args = args;
  P.xy = xy;
  P.codes = codes;
  P.slot = args.slot;
  P.posUrl = args.positions;
  P.colorUrl = args.colors;
  P.palette = palette;
  P.area = area;
  drawLegend(args);
  P.bar.querySelector(".pl-count").textContent = args.n_samples.toLocaleString() + " examples, every one a point" +
    (P.raster === "cpu" ? " (drawn by the CPU: this browser's WebGL is " + (P.rendererName ? "software" : "missing") + ")" : " (WebGL)");
  drawOverlays();
  if (changed) {
    // the points move from one snapshot to the next where a frame is cheap (a GPU, or the CPU at
    // up to some 100,000 points); where it is not they jump there in one
    if (from >= 0 && P.frameMs < ANIMATE_BELOW_MS) {
      await animate(from, args.slot);
    } else {
      const t0 = performance.now();
      drawPoints(args.slot, args.slot, 1);
      settle();
      P.frameMs = performance.now() - t0;
    }
    settle();
  }
  P.same = same;  // only once drawn: a render that failed is tried again
  document.body.dataset.mapState = args.slot + "|" + args.colors + "|" + id;
  performance.mark("map:drawn-" + id);
  setHeight(document.body.scrollHeight);
}
