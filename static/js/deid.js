// Findings and file-kind bar charts on the de-identification run page (plotly.js, vendored).
// The data comes from a json_script block; the tables next to the charts hold the same
// numbers, so the page works without this script. No inline scripts (CSP).
(function () {
  "use strict";
  function draw() {
    const node = document.getElementById("deid-chart-data");
    if (!node || typeof window.Plotly === "undefined") return;
    const data = JSON.parse(node.textContent);
    const layout = (title) => ({
      title: { text: title },
      margin: { t: 40, l: 50, r: 10, b: 90 },
      height: 320,
    });
    const config = { displaylogo: false, responsive: true };
    const findings = document.getElementById("deid-findings-chart");
    if (findings && data.findings.x.length) {
      window.Plotly.newPlot(findings, [{ type: "bar", x: data.findings.x, y: data.findings.y }],
        layout(data.title_findings), config);
    }
    const kinds = document.getElementById("deid-kinds-chart");
    if (kinds && data.kinds.x.length) {
      window.Plotly.newPlot(kinds, [{ type: "bar", x: data.kinds.x, y: data.kinds.y }],
        layout(data.title_kinds), config);
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
