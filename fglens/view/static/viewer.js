/* fglens view: the run list, a layer x step heat map, word maps over the reference image, two runs compared;
 * the panels of viewer-panels.js (condition balance, anchor mask, video, frame player) are called from here.
 * Helpers and data access are in viewer-core.js. Text from the store is only ever set with textContent. */
(function () {
  "use strict";
  const V = window.fglensView;
  const { EMBED, OPTIONS, CONFIG, $, api, unpack, rows, valuesText, status, report, fill, overlayFigure } = V;
  const WEAK_SCORES = ["similarity", "morans_i", "similarity_morans_i", "response", "response_morans_i"];
  const state = { runs: [], run: null, info: null, layer: null, stepIndex: 0, playing: null, other: null };

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
      await V.panels.setMapFrames(null);
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
      await V.panels.setMapFrames(null);
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
        branch: params.branch, frame: String(f), values: valuesText(values.subarray(f * ny * nx, (f + 1) * ny * nx)) });
      panels.appendChild(div);
      const [traces, layout] = overlayFigure(info, rows(values, ny, nx, f * ny * nx), ny, nx, { title: "frame " + f,
        zmin: answer.min === null ? 0 : answer.min, zmax: answer.max === null ? 1 : answer.max, showscale: f === nf - 1 });
      await Plotly.newPlot(div, traces, layout, { displayModeBar: false, responsive: true });
    }
    await V.panels.setMapFrames(answer, params, info);
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
    V.panels.fillBalanceSteps(info, stepLabels(info));
    $("balance-section").hidden = false;
    $("anchor-section").hidden = false;
    $("video-section").hidden = false;
    state.layer = null;
    await Promise.all([drawHeatmap(), V.panels.drawBalance(state), V.panels.drawAnchor(state), V.panels.drawVideo(state)]);
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

  async function start() {
    if (EMBED && EMBED.bridge) $("footer").textContent = "Read from this notebook's kernel by fglens " +
      (OPTIONS.version || "") + ", one view at a time; nothing is fetched from elsewhere.";
    else if (EMBED) $("footer").textContent = "Exported by fglens " + (OPTIONS.version || "") + " on " + (OPTIONS.created || "") +
      ": " + OPTIONS.summary;
    else $("footer").textContent = "Served from this machine by fglens view; nothing is fetched from elsewhere.";
    state.runs = await api("runs");
    drawRunTable();
    $("run-filter").addEventListener("input", drawRunTable);
    $("complete-only").addEventListener("change", drawRunTable);
    $("var-select").addEventListener("change", () => { syncWordSelect(); drawHeatmap().catch(report); });
    $("branch-select").addEventListener("change", () => drawHeatmap().then(drawMaps)
      .then(() => V.panels.drawBalance(state)).catch(report));
    $("balance-first").addEventListener("change", () => V.panels.drawBalance(state).catch(report));
    $("balance-last").addEventListener("change", () => V.panels.drawBalance(state).catch(report));
    V.panels.init();
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
