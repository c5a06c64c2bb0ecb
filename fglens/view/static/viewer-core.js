/* fglens view, shared helpers (loaded first): window.fglensView holds the data access (api, unpack), the
 * drawing helpers shared by the panels (overlay panels over the reference image) and Player, the play/pause
 * control of a sequence (steps, latent frames, video frames). Data come from the local server
 * (api/<endpoint>?...), in an exported page from the answers embedded in <script id="fglens-data">, looked
 * up by the same request key as fglens.view.data.request_key, or, in the notebook widget (EMBED.bridge), from
 * the kernel: each request is posted to the parent frame, which the widget forwards to Python and answers by
 * the request's id (fglens/view/widget.py). Store text is only ever set with textContent. */
(function () {
  "use strict";
  const embedded = document.getElementById("fglens-data");
  const EMBED = embedded ? JSON.parse(embedded.textContent) : null;
  const MAGMA = [[0, "#000004"], [0.13, "#1c1044"], [0.25, "#4f127b"], [0.38, "#812581"], [0.5, "#b5367a"],
    [0.63, "#e55064"], [0.75, "#fb8761"], [0.88, "#fec287"], [1, "#fcfdbf"]];
  const CIVIDIS = [[0, "#00224e"], [0.25, "#414d6b"], [0.5, "#7c7b78"], [0.75, "#bcaf6f"], [1, "#fee838"]];
  const $ = (id) => document.getElementById(id);

  function requestKey(endpoint, params) {
    const items = Object.entries(params).map(([k, v]) => [String(k), String(v)]);
    items.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
    return JSON.stringify([endpoint, items]);
  }

  const pending = new Map();
  let nextId = 0;
  if (EMBED && EMBED.bridge) {
    window.addEventListener("message", (event) => {
      const m = event.data;
      if (event.source !== window.parent || !m || m.fglens !== 1 || !pending.has(m.id)) return;
      const { resolve, reject } = pending.get(m.id);
      pending.delete(m.id);
      if ("error" in m) reject(new Error(m.error));
      else resolve(m.answer);
    });
  }

  function ask(endpoint, params) {  // the widget's transport: one message to the parent frame per request
    return new Promise((resolve, reject) => {
      const id = ++nextId;
      pending.set(id, { resolve, reject });
      window.parent.postMessage({ fglens: 1, id, endpoint, params }, "*");
    });
  }

  async function api(endpoint, params) {
    params = params || {};
    if (EMBED && EMBED.bridge) return ask(endpoint, params);
    if (EMBED) {
      const key = requestKey(endpoint, params);
      if (!(key in EMBED.answers)) throw new Error("not in this export: " + endpoint + " " + JSON.stringify(params));
      return EMBED.answers[key];
    }
    const response = await fetch("api/" + endpoint + "?" + new URLSearchParams(params).toString());
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  function unpack(packed) {
    const bin = atob(packed.b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }

  function rows(values, nrows, ncols, offset) {
    const out = [];
    for (let i = 0; i < nrows; i++) {
      const row = [];
      for (let j = 0; j < ncols; j++) {
        const v = values[(offset || 0) + i * ncols + j];
        row.push(Number.isFinite(v) ? v : null);
      }
      out.push(row);
    }
    return out;
  }

  /* the values as text, exactly (NaN kept): what the browser tests read back from data-values */
  function valuesText(values) {
    return Array.from(values).map((v) => (Number.isFinite(v) ? String(v) : "NaN")).join(",");
  }

  function status(text, error) {
    const el = $("status");
    el.textContent = text || "";
    el.className = error ? "error" : "";
  }

  function report(err) {
    console.error(err);
    status(String(err.message || err), true);
  }

  function fill(select, values, labels, chosen) {
    select.replaceChildren();
    values.forEach((v, i) => {
      const option = document.createElement("option");
      option.value = v;
      option.textContent = labels ? labels[i] : v;
      select.appendChild(option);
    });
    if (chosen !== undefined && values.includes(chosen)) select.value = chosen;
  }

  /* One map (ny x nx values) over the run's reference image in grey: traces and layout for plotly. */
  function overlayFigure(info, z, ny, nx, opts) {
    const traces = [];
    if (info.image) {
      const [h, w] = info.image_size;
      traces.push({ type: "image", source: info.image, x0: -0.5 + nx / w / 2, y0: -0.5 + ny / h / 2, dx: nx / w,
        dy: ny / h, hoverinfo: "skip" });
    }
    traces.push({ type: "heatmap", z: z, colorscale: opts.colorscale || MAGMA, zmin: opts.zmin, zmax: opts.zmax,
      opacity: info.image ? 0.6 : 1, showscale: !!opts.showscale, colorbar: { thickness: 10 },
      hovertemplate: "y %{y}, x %{x}<br>%{z:.5g}<extra></extra>" });
    const layout = { title: { text: opts.title, font: { size: 12 } }, margin: { l: 25, r: 10, t: 28, b: 20 },
      xaxis: { range: [-0.5, nx - 0.5], showgrid: false, zeroline: false, constrain: "domain", dtick: 1, tick0: 0 },
      yaxis: { range: [ny - 0.5, -0.5], showgrid: false, zeroline: false, scaleanchor: "x", dtick: 1, tick0: 0 } };
    return [traces, layout];
  }

  /* Play/pause over a sequence: a button, a range slider and a label; show(i) draws item i (may be async). */
  class Player {
    constructor(button, slider, label, show, ms) {
      Object.assign(this, { button, slider, label, show, ms: ms || 700, timer: null, count: 0, labels: [] });
      this.text = button.textContent;
      button.addEventListener("click", () => this.toggle());
      slider.addEventListener("input", () => this.go(Number(slider.value)).catch(report));
    }

    /* a new sequence of n items (labels: their names); keeps the position when it is still inside */
    reset(n, labels) {
      this.count = n;
      this.labels = labels || [];
      this.slider.max = String(Math.max(0, n - 1));
      const index = Math.min(Number(this.slider.value) || 0, Math.max(0, n - 1));
      this.button.disabled = n < 2;
      return this.go(index);
    }

    async go(index) {
      if (!this.count) return;
      this.index = index;
      this.slider.value = String(index);
      this.label.textContent = (this.labels[index] || String(index)) + " of " + this.count;
      await this.show(index);
    }

    toggle() {
      if (this.timer) return this.pause();
      this.button.textContent = "pause";
      this.timer = setInterval(() => this.go((this.index + 1) % this.count).catch(report), this.ms);
    }

    pause() {
      clearInterval(this.timer);
      this.timer = null;
      this.button.textContent = this.text;
    }
  }

  window.fglensView = { EMBED, OPTIONS: (EMBED && EMBED.options) || {}, MAGMA, CIVIDIS, $, api, unpack, rows,
    valuesText, status, report, fill, overlayFigure, Player,
    CONFIG: { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["sendDataToCloud"] } };
})();
