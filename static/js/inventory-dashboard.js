// Renders the inventory dashboard's charts from the json_script data (CSP: no inline scripts).
(function () {
  "use strict";
  function draw() {
    const source = document.getElementById("inventory-dashboard-data");
    const labels = document.getElementById("inventory-chart-labels");
    if (!source || !labels || typeof Plotly === "undefined") return;
    const data = JSON.parse(source.textContent);
    const names = labels.dataset;
    const layout = (title) => ({
      title: { text: title },
      barmode: "group",
      margin: { t: 40, r: 10, b: 80, l: 60 },
      legend: { orientation: "h" },
    });
    const bars = (group) => [
      { type: "bar", name: names.planned, x: group.labels, y: group.planned_mb },
      { type: "bar", name: names.scanned, x: group.labels, y: group.scanned_mb },
    ];
    const config = { responsive: true, displaylogo: false };
    Plotly.newPlot("chart-by-type", bars(data.by_type), layout(names.byType), config);
    Plotly.newPlot("chart-by-source", bars(data.by_source), layout(names.bySource), config);
    Plotly.newPlot(
      "chart-by-consent",
      [{ type: "pie", labels: data.by_consent.labels, values: data.by_consent.planned_mb, hole: 0.4 }],
      layout(names.byConsent),
      config
    );
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
