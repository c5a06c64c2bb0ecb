/* fglens view: the run list, a layer x step heat map, word maps over the reference image, two runs compared.
 * Data come from the local server (api/<endpoint>?...) or, in an exported page, from the answers embedded in
 * <script id="fglens-data">, looked up by the same request key as fglens.view.data.request_key.
 * Text from the store is only ever set with textContent (never parsed as HTML). */
(function () {
  "use strict";
  const embedded = document.getElementById("fglens-data");
  const EMBED = embedded ? JSON.parse(embedded.textContent) : null;
  const OPTIONS = (EMBED && EMBED.options) || {};
  const WEAK_SCORES = ["similarity", "morans_i", "similarity_morans_i", "response", "response_morans_i"];
  const MAGMA = [[0, "#000004"], [0.13, "#1c1044"], [0.25, "#4f127b"], [0.38, "#812581"], [0.5, "#b5367a"],
    [0.63, "#e55064"], [0.75, "#fb8761"], [0.88, "#fec287"], [1, "#fcfdbf"]];
  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["sendDataToCloud"] };
  const $ = (id) => document.getElementById(id);
  const state = { runs: [], run: null, info: null, layer: null, stepIndex: 0, playing: null, other: null };

  function requestKey(endpoint, params) {
    const items = Object.entries(params).map(([k, v]) => [String(k), String(v)]);
    items.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
    return JSON.stringify([endpoint, items]);
  }

  async function api(endpoint, params) {
    params = params || {};
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

  function status(text, error) {
    const el = $("status");
    el.textContent = text || "";
    el.className = error ? "error" : "";
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

  /* ---------- the run list ---------- */
  function runMatches(row, words) {
    if ($("complete-only").checked && !row.complete) return false;
    const text = [row.id, row.prompt, row.seed, row.intervention, row.words.join(" ")].join(" ").toLowerCase();
    return words.every((w) => text.includes(w));
  }

  function drawRunTable() {
    const words = $("run-filter").value.toLowerCase().split(/\s+/).filter(Boolean);
    const shown = state.runs.filter((r) => runMatches(r, words));
    const limit = 500;
    const body = document.querySelector("#run-table tbody");
    body.replaceChildren();
    for (const row of shown.slice(0, limit)) {
      const tr = document.createElement("tr");
      tr.dataset.run = row.id;
      if (!row.complete) tr.classList.add("incomplete");
      if (row.id === state.run) tr.classList.add("selected");
      const steps = row.num_steps === null ? String(row.steps) : row.steps + "/" + row.num_steps;
      const cells = row.problem
        ? [row.id, row.problem, "", "", "UNREADABLE", "", ""]
        : [row.id, row.prompt, row.seed === null ? "" : String(row.seed), row.intervention,
          row.complete ? "yes" : "no", steps, row.words.join(", ")];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (i === 1) td.className = "prompt";
        tr.appendChild(td);
      });
      if (!row.problem) tr.addEventListener("click", () => selectRun(row.id));
      body.appendChild(tr);
    }
    $("run-count").textContent = shown.length + " of " + state.runs.length + " runs" +
      (shown.length > limit ? " (first " + limit + " shown: refine the filter)" : "");
  }

  /* ---------- one run: the heat map ---------- */
  function heatParams() {
    const info = state.info;
    const params = { run: state.run, var: $("var-select").value, branch: $("branch-select").value };
    const word = $("heat-word-select").value;
    if (info.per_word.includes(params.var) && word) params.word = word;
    return params;
  }

  function stepLabels(info) {
    return info.steps_list.map((s, j) => {
      const t = info.timesteps[j];
      return t === null || t === undefined ? String(s) : s + " (t=" + Math.round(t) + ")";
    });
  }

  function heatTrace(answer, info, extra) {
    const [nl, ns] = answer.shape;
    const z = rows(unpack(answer), nl, ns);
    const custom = answer.layers.map((l) => answer.steps.map((s) => [l, s]));
    const signed = answer.min !== null && answer.min < 0 && answer.max > 0;
    const trace = {
      type: "heatmap", z: z, x: answer.steps.map((_, j) => j), y: answer.layers.map((_, i) => i),
      customdata: custom, colorscale: signed ? "RdBu" : "Viridis",
      hovertemplate: "layer %{customdata[0]}<br>step %{customdata[1]}<br>%{z:.5g}<extra></extra>",
      colorbar: { thickness: 12 },
    };
    if (signed) trace.zmid = 0;
    return Object.assign(trace, extra || {});
  }

  function heatLayout(answer, info, title, weak) {
    const labels = stepLabels(info);
    const ticktext = answer.layers.map((l) => {
      if (weak && weak.weak.includes(l)) return l + " ● weak";
      if (weak && weak.responsive.includes(l)) return l + " ○ resp.";
      return l;
    });
    const shapes = [];
    if (weak) {
      answer.layers.forEach((l, i) => {
        const isWeak = weak.weak.includes(l);
        if (!isWeak && !weak.responsive.includes(l)) return;
        shapes.push({ type: "rect", xref: "x", yref: "y", x0: -0.5, x1: answer.steps.length - 0.5, y0: i - 0.5,
          y1: i + 0.5, line: { color: isWeak ? "#d62728" : "#2ca02c", width: 2, dash: isWeak ? "solid" : "dot" } });
      });
    }
    const every = Math.max(1, Math.ceil(answer.steps.length / 16));
    return {
      title: { text: title, font: { size: 13 } }, margin: { l: 130, r: 10, t: 40, b: 50 },
      height: Math.min(900, 140 + 18 * answer.layers.length),
      xaxis: { title: { text: "denoising step" }, tickvals: answer.steps.map((_, j) => j).filter((j) => j % every === 0),
        ticktext: labels.filter((_, j) => j % every === 0), showgrid: false, zeroline: false },
      yaxis: { autorange: "reversed", tickvals: answer.layers.map((_, i) => i), ticktext: ticktext, showgrid: false,
        zeroline: false, title: { text: "layer (depth order)" } },
      shapes: shapes,
    };
  }

  function selectedCellShape() {
    const info = state.info;
    const li = info.layers.indexOf(state.layer);
    if (li < 0) return null;
    return { type: "rect", xref: "x", yref: "y", x0: state.stepIndex - 0.5, x1: state.stepIndex + 0.5,
      y0: li - 0.5, y1: li + 0.5, line: { color: "#000", width: 3 }, name: "selected" };
  }

  async function drawHeatmap() {
    const info = state.info;
    const params = heatParams();
    const score = WEAK_SCORES.includes(params.var) ? params.var : "similarity";
    const [answer, weak] = await Promise.all([api("heatmap", params), api("weak", { run: state.run, score: score, branch: params.branch })]);
    state.heat = answer;
    state.weak = weak;
    const over = answer.mean_over.length ? ", mean over " + answer.mean_over.join(", ") : "";
    const title = answer.long_name + " — " + params.branch + (params.word ? ", word " + params.word : "") + over;
    const layout = heatLayout(answer, info, title, weak);
    const cell = selectedCellShape();
    if (cell) layout.shapes.push(cell);
    const el = $("heatmap");
    el.dataset.run = state.run;
    el.dataset.var = params.var;
    el.dataset.branch = params.branch;
    el.dataset.word = params.word || "";
    el.dataset.weak = JSON.stringify(weak.weak);
    el.dataset.responsive = JSON.stringify(weak.responsive);
    await Plotly.react(el, [heatTrace(answer, info)], layout, CONFIG);
    if (!el.dataset.bound) {
      el.dataset.bound = "1";
      el.on("plotly_click", (event) => {
        const point = event.points && event.points[0];
        if (!point) return;
        selectCell(state.info.layers[Math.round(point.y)], Math.round(point.x)).catch(report);
      });
    }
    const marks = "weak layers (red, ●): " + (weak.weak.join(", ") || "none") + "; responsive (green, ○): " +
      (weak.responsive.join(", ") || "none") + " — fg.find_weak_layers(score=" + JSON.stringify(weak.score) +
      ", branch=" + JSON.stringify(weak.branch) + ", default rule)" + (weak.note ? ". " + weak.note : "") +
      ". Click a cell for its word maps.";
    $("weak-note").textContent = marks;
    if (state.other) await drawCompare();
  }

  async function selectCell(layer, stepIndex) {
    state.layer = layer;
    state.stepIndex = stepIndex;
    $("map-layer-select").value = layer;
    $("map-step").value = String(stepIndex);
    const el = $("heatmap");
    const shapes = (el.layout.shapes || []).filter((s) => s.name !== "selected");
    const cell = selectedCellShape();
    if (cell) shapes.push(cell);
    await Plotly.relayout(el, { shapes: shapes });
    await drawMaps();
  }

  /* ---------- word maps over the reference image ---------- */
  async function drawMaps() {
    const info = state.info;
    const panels = $("maps-panels");
    if (!info.has_maps) {
      $("maps-note").textContent = "This run has no word maps (record them with fg.Record(maps=True)).";
      panels.replaceChildren();
      return;
    }
    const step = info.steps_list[state.stepIndex];
    const params = { run: state.run, layer: state.layer, step: step, word: $("map-word-select").value,
      branch: $("branch-select").value };
    $("map-step-label").textContent = stepLabels(info)[state.stepIndex] + " of " + info.steps_list.length + " steps";
    let answer;
    try {
      answer = await api("maps", params);
    } catch (err) {
      $("maps-note").textContent = String(err.message || err);
      panels.replaceChildren();
      return;
    }
    const [nf, ny, nx] = answer.shape;
    const values = unpack(answer);
    $("maps-note").textContent = "“" + params.word + "” at layer " + params.layer + ", step " + stepLabels(info)[state.stepIndex] +
      ", " + params.branch + " branch: one panel per latent frame, colours shared (" +
      (answer.min === null ? "no values" : answer.min.toPrecision(4) + " to " + answer.max.toPrecision(4)) + ")" +
      (info.image ? ", over the reference image in grey." : "; the run kept no reference image.");
    panels.replaceChildren();
    for (let f = 0; f < nf; f++) {
      const div = document.createElement("div");
      div.className = "map-panel" + (f === nf - 1 ? " with-scale" : "");
      Object.assign(div.dataset, { run: state.run, layer: params.layer, step: String(step), word: params.word,
        branch: params.branch, frame: String(f) });
      const flat = Array.from(values.subarray(f * ny * nx, (f + 1) * ny * nx));
      div.dataset.values = flat.map((v) => (Number.isFinite(v) ? String(v) : "NaN")).join(",");
      panels.appendChild(div);
      const traces = [];
      if (info.image) {
        const [h, w] = info.image_size;
        traces.push({ type: "image", source: info.image, x0: -0.5 + nx / w / 2, y0: -0.5 + ny / h / 2, dx: nx / w,
          dy: ny / h, hoverinfo: "skip" });
      }
      traces.push({ type: "heatmap", z: rows(values, ny, nx, f * ny * nx), colorscale: MAGMA,
        zmin: answer.min === null ? 0 : answer.min, zmax: answer.max === null ? 1 : answer.max, opacity: info.image ? 0.6 : 1,
        showscale: f === nf - 1, colorbar: { thickness: 10 }, hovertemplate: "y %{y}, x %{x}<br>%{z:.5g}<extra></extra>" });
      const layout = { title: { text: "frame " + f, font: { size: 12 } }, margin: { l: 25, r: 10, t: 28, b: 20 },
        xaxis: { range: [-0.5, nx - 0.5], showgrid: false, zeroline: false, constrain: "domain", dtick: 1, tick0: 0 },
        yaxis: { range: [ny - 0.5, -0.5], showgrid: false, zeroline: false, scaleanchor: "x", dtick: 1, tick0: 0 } };
      await Plotly.newPlot(div, traces, layout, { displayModeBar: false, responsive: true });
    }
    panels.dataset.layer = params.layer;
    panels.dataset.step = String(step);
    panels.dataset.word = params.word;
  }

  function togglePlay() {
    const button = $("map-play");
    if (state.playing) {
      clearInterval(state.playing);
      state.playing = null;
      button.textContent = "play steps";
      return;
    }
    button.textContent = "pause";
    state.playing = setInterval(() => {
      const n = state.info.steps_list.length;
      selectCell(state.layer, (state.stepIndex + 1) % n).catch(report);
    }, 900);
  }

  /* ---------- two runs of the same seed ---------- */
  async function drawCompare() {
    const plots = $("compare-plots");
    const other = state.other;
    if (!other) {
      plots.replaceChildren();
      $("compare-note").textContent = "";
      return;
    }
    const params = heatParams();
    let a;
    let b;
    let otherInfo;
    try {
      otherInfo = await api("run", { run: other });
      [a, b] = await Promise.all([api("heatmap", params), api("heatmap", Object.assign({}, params, { run: other }))]);
    } catch (err) {
      plots.replaceChildren();
      $("compare-note").textContent = String(err.message || err);
      return;
    }
    if (JSON.stringify(a.layers) !== JSON.stringify(b.layers)) {
      plots.replaceChildren();
      $("compare-note").textContent = "The two runs have different layers: no difference drawn.";
      return;
    }
    const ns = Math.min(a.steps.length, b.steps.length);
    const va = unpack(a);
    const vb = unpack(b);
    const diff = [];
    const flat = [];
    let reach = 0;
    for (let i = 0; i < a.layers.length; i++) {
      const row = [];
      for (let j = 0; j < ns; j++) {
        const d = vb[i * b.steps.length + j] - va[i * a.steps.length + j];
        row.push(Number.isFinite(d) ? d : null);
        flat.push(Number.isFinite(d) ? String(d) : "NaN");
        if (Number.isFinite(d)) reach = Math.max(reach, Math.abs(d));
      }
      diff.push(row);
    }
    const cut = { layers: a.layers, steps: a.steps.slice(0, ns), shape: [a.layers.length, ns] };
    const info = state.info;
    const label = (id, row) => id + (row ? " (" + row.intervention + ")" : "");
    const rowOf = (id) => state.runs.find((r) => r.id === id);
    $("compare-note").textContent = "B − A of " + a.long_name + " (" + params.branch + (params.word ? ", " + params.word : "") +
      "). A: " + label(state.run, rowOf(state.run)) + "; B: " + label(other, rowOf(other)) + ". B prompt: " + otherInfo.prompt;
    plots.replaceChildren();
    const intervention = (id) => (rowOf(id) || { intervention: "?" }).intervention;
    const specs = [["A (" + intervention(state.run) + ")", a, null], ["B (" + intervention(other) + ")", b, null],
      ["B − A", null, diff]];
    const lows = [a.min, b.min].filter((v) => v !== null);
    const highs = [a.max, b.max].filter((v) => v !== null);
    let shared = lows.length ? { zmin: Math.min(...lows), zmax: Math.max(...highs) } : {};  // A and B: one scale
    if (lows.length && shared.zmin < 0 && shared.zmax > 0) {
      const r = Math.max(-shared.zmin, shared.zmax);
      shared = { zmin: -r, zmax: r };  // signed: symmetric about 0, as each heat map alone
    }
    const divs = specs.map(() => {
      const div = document.createElement("div");
      div.className = "compare-panel";
      plots.appendChild(div);
      return div;
    });  // all placed before any is drawn: plotly sizes a figure to its div as it is when drawn
    for (let k = 0; k < specs.length; k++) {
      const [title, answer, z] = specs[k];
      const div = divs[k];
      let trace;
      if (answer) {
        trace = heatTrace(answer, info, shared);
      } else {
        div.id = "compare-diff";
        div.dataset.values = flat.join(",");
        div.dataset.shape = JSON.stringify(cut.shape);
        trace = { type: "heatmap", z: z, x: cut.steps.map((_, j) => j), y: cut.layers.map((_, i) => i),
          colorscale: "RdBu", zmid: 0, zmin: -reach || -1, zmax: reach || 1,
          hovertemplate: "step %{x}, layer %{y}<br>Δ %{z:.5g}<extra></extra>", colorbar: { thickness: 12 } };
      }
      const layout = heatLayout(answer || cut, info, title, null);
      layout.height = 360;
      layout.margin = { l: 90, r: 10, t: 40, b: 50 };
      await Plotly.newPlot(div, [trace], layout, Object.assign({}, CONFIG, { displayModeBar: false }));
    }
  }

  function sameSeed(info) {
    return state.runs.filter((r) => r.id !== state.run && !r.problem && r.seed !== null && r.seed === info.seed);
  }

  /* ---------- choosing a run ---------- */
  async function selectRun(id) {
    status("loading " + id + " …");
    const info = await api("run", { run: id });
    state.run = id;
    state.info = info;
    state.other = null;
    drawRunTable();
    $("run-section").hidden = false;
    $("run-title").textContent = id + " — " + info.model + ", " + info.steps + (info.num_steps ? "/" + info.num_steps : "") +
      " steps, " + (info.complete ? "complete" : "INCOMPLETE") + ", intervention: " + info.intervention;
    $("run-prompt").textContent = "“" + info.prompt + "” (seed " + (info.seed === null ? "?" : info.seed) + ")";
    const preferred = info.variables.includes("similarity") ? "similarity" : info.variables[0];
    fill($("var-select"), info.variables, null, preferred);
    fill($("branch-select"), info.branches, null, info.branches.includes("cond") ? "cond" : info.branches[0]);
    fill($("heat-word-select"), [""].concat(info.words), ["mean over words"].concat(info.words));
    const word = OPTIONS.word && info.words.includes(OPTIONS.word) ? OPTIONS.word : info.words[0];
    fill($("map-word-select"), info.words, null, word);
    fill($("map-layer-select"), info.layers);
    const slider = $("map-step");
    slider.max = String(Math.max(0, info.steps_list.length - 1));
    $("maps-section").hidden = false;
    const others = sameSeed(info);
    $("compare-section").hidden = others.length === 0;
    fill($("compare-select"), [""].concat(others.map((r) => r.id)),
      ["—"].concat(others.map((r) => r.id + " (" + r.intervention + ")")));
    syncWordSelect();
    state.layer = null;
    await drawHeatmap();
    const weak = state.weak.weak;
    const layer = weak.length ? weak[0] : info.layers[Math.floor(info.layers.length / 2)];
    await selectCell(layer, 0);
    status("");
  }

  function syncWordSelect() {
    const perWord = state.info.per_word.includes($("var-select").value);
    $("heat-word-select").disabled = !perWord;
    if (!perWord) $("heat-word-select").value = "";
  }

  function report(err) {
    console.error(err);
    status(String(err.message || err), true);
  }

  async function start() {
    if (EMBED) $("footer").textContent = "Exported by fglens " + (OPTIONS.version || "") + " on " + (OPTIONS.created || "") +
      ": " + OPTIONS.summary;
    else $("footer").textContent = "Served from this machine by fglens view; nothing is fetched from elsewhere.";
    state.runs = await api("runs");
    drawRunTable();
    $("run-filter").addEventListener("input", drawRunTable);
    $("complete-only").addEventListener("change", drawRunTable);
    $("var-select").addEventListener("change", () => { syncWordSelect(); drawHeatmap().catch(report); });
    $("branch-select").addEventListener("change", () => drawHeatmap().then(drawMaps).catch(report));
    $("heat-word-select").addEventListener("change", () => drawHeatmap().catch(report));
    $("map-word-select").addEventListener("change", () => drawMaps().catch(report));
    $("map-layer-select").addEventListener("change", (e) => selectCell(e.target.value, state.stepIndex).catch(report));
    $("map-step").addEventListener("input", (e) => selectCell(state.layer, Number(e.target.value)).catch(report));
    $("map-play").addEventListener("click", togglePlay);
    $("compare-select").addEventListener("change", (e) => { state.other = e.target.value || null; drawCompare().catch(report); });
    const first = OPTIONS.run && state.runs.some((r) => r.id === OPTIONS.run) ? OPTIONS.run
      : (state.runs.find((r) => !r.problem) || {}).id;
    if (first) await selectRun(first);
    document.body.dataset.ready = "1";
  }

  start().catch(report);
})();
