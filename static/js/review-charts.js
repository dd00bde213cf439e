// Plotly charts of the review pages: the failures-by-category bar chart and waveform traces.
// Data come from json_script blocks named by each chart's data-source (no inline scripts).
(function () {
  "use strict";
  function draw() {
    if (typeof Plotly === "undefined") return;
    document.querySelectorAll("[data-chart]").forEach((el) => {
      const src = document.getElementById(el.dataset.source);
      if (!src) return;
      const data = JSON.parse(src.textContent);
      const config = { displaylogo: false, responsive: true, staticPlot: false };
      if (el.dataset.chart === "bar") {
        Plotly.newPlot(el, [{ type: "bar", x: data.x, y: data.y, marker: { color: "#b42318" } }],
          { title: { text: data.title }, margin: { t: 40, r: 10, b: 60, l: 40 }, height: 280,
            yaxis: { rangemode: "tozero", dtick: 1 } }, config);
      } else if (el.dataset.chart === "wave") {
        const n = data.length || 1;
        const traces = data.map((s, i) => ({ type: "scattergl", mode: "lines", x: s.t, y: s.y,
          name: s.unit ? `${s.label} (${s.unit})` : s.label, xaxis: "x", yaxis: i === 0 ? "y" : `y${i + 1}`,
          line: { width: 1 } }));
        const layout = { height: Math.max(240, 110 * n), margin: { t: 10, r: 10, b: 40, l: 60 },
          grid: { rows: n, columns: 1, pattern: "coupled" }, showlegend: true, xaxis: { title: { text: "s" } } };
        Plotly.newPlot(el, traces, layout, config);
      }
      el.dataset.drawn = "1";
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
