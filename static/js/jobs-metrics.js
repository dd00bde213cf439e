// Loss / gradient norm and tokens/s / learning rate over steps on the run page (plotly.js,
// vendored). The series come from a json_script block; while the run is active they are
// fetched again every 15 s from the run's metrics.json. The "Latest metrics" list next to the
// charts holds the last values, so the page works without this script. No inline scripts (CSP).
(function () {
  "use strict";
  const REFRESH_MS = 15000;
  const config = { displaylogo: false, responsive: true };

  function layout(title, left, right, stepTitle) {
    return {
      title: { text: title },
      height: 300,
      margin: { t: 40, l: 70, r: 80, b: 40 },
      xaxis: { title: { text: stepTitle } },
      yaxis: { title: { text: left }, automargin: true },
      yaxis2: { title: { text: right }, overlaying: "y", side: "right", automargin: true },
      legend: { orientation: "h", y: -0.25 },
    };
  }

  function line(series, key, name, axis) {
    return { type: "scatter", mode: "lines", x: series.step, y: series[key], name: name, yaxis: axis };
  }

  function draw(series, titles) {
    const loss = document.getElementById("run-loss-chart");
    const speed = document.getElementById("run-speed-chart");
    if (!loss || !speed || typeof window.Plotly === "undefined") return;
    const t = titles;
    window.Plotly.react(loss, [
      line(series, "training_loss", t.training_loss, "y"),
      line(series, "training_gradient_norm", t.training_gradient_norm, "y2"),
    ], layout(t.loss, t.training_loss, t.training_gradient_norm, t.step), config);
    window.Plotly.react(speed, [
      line(series, "training_tokens_per_second", t.training_tokens_per_second, "y"),
      line(series, "training_learning_rate", t.training_learning_rate, "y2"),
    ], layout(t.speed, t.training_tokens_per_second, t.training_learning_rate, t.step), config);
  }

  function start() {
    const node = document.getElementById("run-chart-data");
    if (!node) return;
    const data = JSON.parse(node.textContent);
    draw(data.series, data.titles);
    if (!data.live) return;
    const timer = window.setInterval(function () {
      fetch(data.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (body) {
          if (!body) return;
          draw(body.series, data.titles);
          if (!body.live) window.clearInterval(timer);
        })
        .catch(function () {});
    }, REFRESH_MS);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
