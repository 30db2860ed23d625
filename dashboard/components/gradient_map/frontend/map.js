// The gradient map, kept mounted: Streamlit sends new arguments per epoch and this frame updates
// the same drawing, so its WebGL context is made once, not per epoch. Two renderers:
// - "figure": a plotly graph updated with Plotly.react (plotly.js from the URL the server gives);
// - "points": every example a point, drawn by the WebGL2 program of points.js.
// The protocol is Streamlit's components v1 (postMessage), written out here.
"use strict";

const gd = document.getElementById("map");
const binaries = {};    // URL -> Promise of a typed array (positions, colour codes), fetched once
let drawn = false;      // whether Plotly.newPlot ran (then Plotly.react)
let queue = Promise.resolve();
let latest = 0;         // the newest render message; older ones still waiting are skipped
let revision = 0;       // changes every figure, so a user's box or lasso does not dim the next one
let sent = 0;

// Streamlit's root, where its media files are served: this frame is at <root>/component/...
const ROOT = window.location.pathname.split("/component/")[0];

function mediaUrl(url) {
  return url.startsWith("/") ? ROOT + url : url;
}

const scripts = {};
function loadScript(url) {
  // plotly.js (4.8 MB) is parsed while the positions file downloads, once per frame
  if (!scripts[url]) {
    scripts[url] = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = mediaUrl(url);
      script.onload = () => { performance.mark("map:script-loaded"); resolve(); };
      script.onerror = () => { delete scripts[url]; reject(new Error(url + " could not be loaded")); };
      document.head.appendChild(script);
    });
  }
  return scripts[url];
}

function post(type, data) {
  window.parent.postMessage(Object.assign({isStreamlitMessage: true, type: type}, data), "*");
}

let height = -1;
function setHeight(value) {
  // Streamlit answers a frame height with another render message of the same arguments: say it
  // only when it changed (each answer redrew the overlays once more)
  if (value === height) return;
  height = value;
  post("streamlit:setFrameHeight", {height: value});
}

function send(selection) {
  // the shape of Streamlit's own plotly selection event, so the server reads both the same way
  sent += 1;
  post("streamlit:setComponentValue", {value: {selection: selection, n: sent}, dataType: "json"});
}

const TYPED = {i1: Int8Array, u1: Uint8Array, i2: Int16Array, u2: Uint16Array, i4: Int32Array,
               u4: Uint32Array, f4: Float32Array, f8: Float64Array};

function decode(value) {
  // plotly.py sends numpy arrays as {dtype, bdata: base64}; plain lists pass through
  if (!value || value.bdata === undefined) return value;
  const raw = atob(value.bdata);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return new TYPED[value.dtype](bytes.buffer);
}

function loadBinary(url, Type) {
  // a binary media file (positions: Float32Array; colour codes: Uint8Array), fetched once per URL
  if (!binaries[url]) {
    binaries[url] = fetch(mediaUrl(url)).then(r => {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.arrayBuffer();
    }).then(b => new Type(b, 16));  // after the 16-byte digest
    binaries[url].catch(() => delete binaries[url]);  // a later render tries again
  }
  return binaries[url];
}

function fill(trace, xy, offset) {
  // positions of the examples this trace draws (its customdata) from the snapshot's row
  const index = decode(trace.customdata);
  const n = index.length;
  const x = new Float32Array(n), y = new Float32Array(n);
  for (let k = 0; k < n; k++) {
    const at = offset + 2 * index[k];
    x[k] = xy[at];
    y[k] = xy[at + 1];
  }
  trace.customdata = index;
  trace.x = x;
  trace.y = y;
}

async function render(args, theme, id) {
  if (id !== latest) return;  // a newer figure is already waiting
  performance.mark("map:render-" + id);
  if (args.renderer === "points") return renderPoints(args, id);  // points.js
  const fig = JSON.parse(args.figure);
  const [xy] = await Promise.all([args.positions ? loadBinary(args.positions, Float32Array) : null, loadScript(args.plotly)]);
  if (id !== latest) return;
  performance.mark("map:data-" + id);
  if (xy) {
    const offset = args.slot * args.n_samples * 2;
    for (const number of args.fill) fill(fig.data[number], xy, offset);
  }
  const layout = fig.layout || {};
  layout.height = args.height;
  layout.autosize = true;
  if (theme && theme.font) layout.font = Object.assign({family: theme.font}, layout.font || {});
  revision += 1;
  layout.selectionrevision = revision;
  layout.datarevision = revision;
  const config = Object.assign({responsive: true}, args.config || {});
  if (drawn) {
    await Plotly.react(gd, fig.data, layout, config);
  } else {
    await Plotly.newPlot(gd, fig.data, layout, config);
    drawn = true;
    listen();
  }
  performance.mark("map:drawn-" + id);  // timings for the benchmark (bench/dashboard.py)
  setHeight(args.height);
}

function listen() {
  gd.on("plotly_selected", event => {
    if (!event) return;  // a double click clears the drawn shape: nothing to report
    const selection = {points: [], box: [], lasso: []};
    if (event.range && event.range.x) {
      selection.box.push({xref: "x", yref: "y", x: event.range.x, y: event.range.y});
    }
    if (event.lassoPoints && event.lassoPoints.x) {
      selection.lasso.push({xref: "x", yref: "y", x: event.lassoPoints.x, y: event.lassoPoints.y});
    }
    // the examples inside are computed on the server from the shape: no point list is sent
    if (selection.box.length || selection.lasso.length) send(selection);
  });
  gd.on("plotly_click", event => {
    const point = event && event.points && event.points[0];
    if (!point || point.customdata === undefined) return;
    send({points: [{curve_number: point.curveNumber, point_index: point.pointIndex,
                    customdata: Number(point.customdata)}], box: [], lasso: []});
  });
}

window.addEventListener("message", event => {
  const data = event.data;
  if (!data || data.type !== "streamlit:render") return;
  const id = ++latest;
  queue = queue.then(() => render(data.args, data.theme, id)).catch(err => {
    console.error(err);
    if (window.Plotly && drawn) Plotly.purge(gd);
    drawn = false;
    gd.textContent = "The map could not be drawn: " + err;
    setHeight(60);
  });
});

post("streamlit:componentReady", {apiVersion: 1});
setHeight(620);
