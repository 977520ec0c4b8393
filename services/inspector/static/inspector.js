// The GRM inspector's page script: draws charts with uPlot from JSON the page carries
// (or, for a training run, re-fetches), and writes text only through textContent.
"use strict";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

function readJSON(id) {
  const el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : null;
}

function width(el) {
  return Math.max(320, Math.min(900, (el.parentElement || document.body).clientWidth - 20));
}

// Accuracy against k: one line per aggregation with its interval as thin dashed lines.
function accuracyChart(el, spec) {
  const series = [{ label: spec.xlabel }];
  const data = [spec.x];
  spec.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    series.push({ label: s.label, stroke: color, width: 2, dash: s.dash ? [6, 4] : undefined,
                  points: { show: !s.dash } });
    data.push(s.values);
    if (s.lo) {
      series.push({ label: s.label + " 95% low", stroke: color, width: 1, dash: [2, 3], points: { show: false } });
      series.push({ label: s.label + " 95% high", stroke: color, width: 1, dash: [2, 3], points: { show: false } });
      data.push(s.lo, s.hi);
    }
  });
  const x = spec.log2x ? { time: false, distr: 3, log: 2 } : { time: false };
  new uPlot({ width: width(el), height: 320, scales: { x: x, y: { range: [0, 1] } }, series: series,
              axes: [{ label: spec.xlabel, values: (u, vals) => vals.map(String) },
                     { label: spec.ylabel, values: (u, vals) => vals.map(v => Math.round(v * 100) + "%") }] },
            data, el);
}

// A training run: one chart per logged metric, refreshed by polling the run's JSON.
const runCharts = {};

function runCurve(root, key, label, steps, values, i) {
  let el = root.querySelector('[data-run-curve="' + CSS.escape(key) + '"]');
  if (!el) {
    el = document.createElement("div");
    el.className = "chart";
    el.dataset.runCurve = key;
    root.appendChild(el);
  }
  if (runCharts[key]) {
    runCharts[key].setData([steps, values]);
    return;
  }
  runCharts[key] = new uPlot({ title: label, width: width(el), height: 220, scales: { x: { time: false } },
                               series: [{ label: "step" }, { label: label, stroke: COLORS[i % COLORS.length], width: 2,
                                                             spanGaps: true }] },
                             [steps, values], el);
}

function drawRun(root, data) {
  data.curves.forEach((c, i) => runCurve(root, c.key, c.label, data.steps, c.values, i));
  const steps = document.getElementById("steps");
  if (steps) steps.textContent = String(data.steps.length);
  const last = document.getElementById("last-reward");
  if (last) last.textContent = data.last && typeof data.last.reward === "number" ? data.last.reward.toFixed(3) : "\u2014";
}

function pollRun(root) {
  const every = Number(root.dataset.pollMs) || 3000;
  const tick = () => fetch(root.dataset.poll, { cache: "no-store" })
    .then(r => (r.ok ? r.json() : null))
    .then(data => { if (data) drawRun(root, data); })
    .catch(() => {})  // the server may restart; the next tick tries again
    .finally(() => setTimeout(tick, every));
  setTimeout(tick, every);
}

window.addEventListener("DOMContentLoaded", () => {
  if (typeof uPlot === "undefined") return;  // pages without charts do not load it
  document.querySelectorAll("[data-chart]").forEach(el => accuracyChart(el, readJSON(el.dataset.chart)));
  const run = document.getElementById("run");
  if (run) {
    drawRun(run, readJSON("run-data"));
    pollRun(run);
  }
});
