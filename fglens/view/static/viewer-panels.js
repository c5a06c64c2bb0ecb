/* fglens view, one run's further panels (loaded after viewer-core.js, before viewer.js): the condition balance
 * per layer, the anchor mask over the reference image, the video when one was kept, and the frame player of
 * the word maps. Each draw function takes the page's state ({run, info}); values come from the api unchanged. */
(function () {
  "use strict";
  const V = window.fglensView;
  const { $, api, unpack, rows, valuesText, fill, overlayFigure, Player, CIVIDIS, CONFIG } = V;
  const COLOURS = { text: "#0173b2", image: "#de8f05", "image-derived": "#de8f05", "reference frame": "#029e73",
    video: "#949494" };
  let framePlayer = null;
  let videoPlayer = null;
  let frames = null;  // the word maps the frame player moves through: {values, shape, min, max, params, info}
  let video = null;

  function finite(values) {
    return Array.from(values).map((v) => (Number.isFinite(v) ? v : null));
  }

  /* ---------- the condition balance per layer ---------- */
  function fillBalanceSteps(info, labels) {
    const steps = info.steps_list.map(String);
    fill($("balance-first"), steps, labels, steps[0]);
    fill($("balance-last"), steps, labels, steps[steps.length - 1]);
  }

  async function drawBalance(state) {
    const info = state.info;
    const el = $("balance");
    const note = $("balance-note");
    if (!info.has_balance) {
      Plotly.purge(el);
      el.dataset.series = "";
      note.textContent = "This run recorded neither text_share (Wan) nor text_mass / image_mass (joint attention): " +
        "no condition balance.";
      return;
    }
    const params = { run: state.run, branch: $("branch-select").value, first: $("balance-first").value,
      last: $("balance-last").value };
    if (Number(params.first) > Number(params.last)) {
      note.textContent = "Choose a first step at or before the last step.";
      return;
    }
    const answer = await api("balance", params);
    const x = answer.layers.map((_, i) => i);
    const traces = answer.stacked.map((s) => ({ type: "bar", name: s.name, x: x, y: finite(unpack(s)),
      customdata: answer.layers, marker: { color: COLOURS[s.name] },
      hovertemplate: s.name + "<br>layer %{customdata}<br>%{y:.5g}<extra></extra>" }));
    answer.lines.forEach((s) => traces.push({ type: "scatter", mode: "lines+markers", name: s.name + " (apart)", x: x,
      y: finite(unpack(s)), customdata: answer.layers, line: { color: COLOURS[s.name] },
      hovertemplate: s.name + "<br>layer %{customdata}<br>%{y:.5g}<extra></extra>" }));
    const span = answer.first === answer.last ? "step " + answer.first : "steps " + answer.first + "–" + answer.last;
    const layout = { barmode: "stack", height: 340, margin: { l: 60, r: 10, t: 40, b: 90 },
      title: { text: "Condition balance per layer — " + answer.branch + ", " + span + ", mean over steps and frames",
        font: { size: 13 } },
      xaxis: { tickvals: x, ticktext: answer.layers, title: { text: "layer (depth order)" }, tickangle: -45 },
      yaxis: { range: [0, 1], title: { text: answer.family === "separate" ? "share of output norm" : "share of attention" } },
      legend: { orientation: "h", y: 1.12, traceorder: "normal" },
      shapes: answer.family === "separate" ? [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 0.5, y1: 0.5,
        line: { color: "#333", dash: "dash", width: 1 } }] : [] };
    await Plotly.react(el, traces, layout, CONFIG);
    Object.assign(el.dataset, { run: state.run, branch: answer.branch, first: String(answer.first),
      last: String(answer.last) });
    el.dataset.series = JSON.stringify(answer.stacked.concat(answer.lines).map((s) => [s.name, valuesText(unpack(s))]));
    note.textContent = answer.note || (answer.family === "separate"
      ? "Wan: each layer's text share ‖O_text‖ / (‖O_text‖ + ‖O_image‖) of its text and image attention outputs, and " +
        "the image's, 1 − that (dashed: equal)." + (answer.lines.length ? " The reference-frame line is the " +
        "self-attention's mass on frame 0, not part of the stack." : "")
      : "Joint attention: each layer's attention mass on the text, image-derived" +
        (answer.stacked.some((s) => s.name === "reference frame") ? ", reference-frame" : "") +
        " and other video tokens (video = 1 − the others).");
  }

  /* ---------- the anchor mask over the reference image ---------- */
  async function drawAnchor(state) {
    const info = state.info;
    const panels = $("anchor-panels");
    const answer = await api("anchor", { run: state.run });
    panels.replaceChildren();
    if (!answer.anchors.length) {
      $("anchor-note").textContent = "No anchor mask: " + answer.note + ".";
      panels.dataset.count = "0";
      return;
    }
    const parts = [];
    const divs = [];
    answer.anchors.forEach((a, k) => {
      const [nw, ny, nx] = a.shape;
      const values = unpack(a);
      parts.push("AnchorMask " + (k + 1) + ": words " + a.words.join(", ") + ", strength λ = " + a.strength + ", frames " +
        JSON.stringify(a.frames) + ", targets " + JSON.stringify(a.targets) + ", mask " + ny + "×" + nx);
      for (let w = 0; w < nw; w++) {
        const div = document.createElement("div");
        div.className = "map-panel with-scale anchor-panel";
        Object.assign(div.dataset, { anchor: String(k), word: a.words[w], shape: JSON.stringify([ny, nx]),
          values: valuesText(values.subarray(w * ny * nx, (w + 1) * ny * nx)) });
        panels.appendChild(div);
        divs.push([div, rows(values, ny, nx, w * ny * nx), ny, nx, a.words[w]]);
      }
    });
    panels.dataset.count = String(divs.length);
    $("anchor-note").textContent = parts.join("; ") + ". The mask (0 to 1) is drawn over the reference image" +
      (info.image ? " in grey." : "; this run kept no reference image.") + (answer.note ? " " + answer.note : "");
    for (const [div, z, ny, nx, word] of divs) {
      const [traces, layout] = overlayFigure(info, z, ny, nx, { colorscale: CIVIDIS, zmin: 0, zmax: 1, showscale: true,
        title: "“" + word + "” anchor mask" });
      await Plotly.newPlot(div, traces, layout, { displayModeBar: false, responsive: true });
    }
  }

  /* ---------- the video ---------- */
  async function showVideoFrame(i) {
    const img = $("video-frame");
    img.src = video.frames[i];
    img.dataset.frame = String(i);
  }

  async function drawVideo(state) {
    videoPlayer.pause();
    video = await api("video", { run: state.run });
    const box = $("video-box");
    const img = $("video-frame");
    img.dataset.run = state.run;
    if (!video.frames.length) {
      box.hidden = true;
      img.removeAttribute("src");
      img.dataset.frame = "";
      $("video-note").textContent = video.note;
      return;
    }
    box.hidden = false;
    const n = video.shape[0];
    $("video-note").textContent = "The video kept with this run (" + video.source + ": item " + video.item + ", seed " +
      video.seed + ", " + video.condition + "), " + n + " frames, shown at most 256 px.";
    await videoPlayer.reset(n, video.frames.map((_, i) => "frame " + i));
  }

  /* ---------- the frame player of the word maps ---------- */
  async function showMapFrame(f) {
    if (!frames) return;
    const { values, shape, params, info } = frames;
    const [, ny, nx] = shape;
    const el = $("frame-player");
    const [traces, layout] = overlayFigure(info, rows(values, ny, nx, f * ny * nx), ny, nx, { showscale: true,
      zmin: frames.min === null ? 0 : frames.min, zmax: frames.max === null ? 1 : frames.max,
      title: "“" + params.word + "” " + params.layer + ", step " + params.step + " — latent frame " + f });
    await Plotly.react(el, traces, layout, { displayModeBar: false, responsive: true });
    Object.assign(el.dataset, { layer: params.layer, step: String(params.step), word: params.word, frame: String(f),
      values: valuesText(values.subarray(f * ny * nx, (f + 1) * ny * nx)) });
  }

  /* the word maps just drawn (one answer of api("maps")): the player keeps its frame and redraws it */
  async function setMapFrames(answer, params, info) {
    frames = answer ? { values: unpack(answer), shape: answer.shape, min: answer.min, max: answer.max, params, info }
      : null;
    $("frame-box").hidden = !frames;
    if (!frames) return;
    await framePlayer.reset(answer.shape[0], Array.from({ length: answer.shape[0] }, (_, f) => "latent frame " + f));
  }

  function init() {
    framePlayer = new Player($("frame-play"), $("frame-slider"), $("frame-label"), showMapFrame, 600);
    videoPlayer = new Player($("video-play"), $("video-slider"), $("video-label"), showVideoFrame, 125);
  }

  V.panels = { init, fillBalanceSteps, drawBalance, drawAnchor, drawVideo, setMapFrames };
})();
