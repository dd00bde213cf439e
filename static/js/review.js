// The review screen: keyboard-first verdicts, server-rendered DICOM window/level, zoom,
// frames, masked-box overlay, region marking. No inline scripts (CSP); data comes from
// data-* attributes and json_script blocks.
(function () {
  "use strict";
  const root = document.getElementById("review");
  if (!root) return;
  const live = root.dataset.live === "1";
  const form = document.getElementById("verdict-form");
  const help = document.getElementById("help");
  const hint = document.getElementById("hint");
  const regionInput = document.getElementById("region");
  const regionReadout = document.getElementById("region-readout");
  let failMode = false;

  function say(text) { if (hint) hint.textContent = text; }
  function go(url) { if (url) window.location.assign(url); }

  // --- verdicts ---------------------------------------------------------------------------
  function chosenCategory() {
    const el = form && form.querySelector("input[name=category]:checked");
    return el ? el.value : "";
  }
  function submit(decision) {
    if (!form || form.dataset.sent) return;
    if (decision === "fail" && !chosenCategory()) {
      setFailMode(true);
      say(document.documentElement.lang.startsWith("zh") ? "请选择类别 (1–8)" : "Choose a category (1–8)");
      return;
    }
    form.dataset.sent = "1";  // one verdict per screen, even when a key repeats
    const button = document.getElementById(decision === "pass" ? "btn-pass" : "btn-fail");
    form.requestSubmit(button);
  }
  function setFailMode(on) {
    failMode = on;
    const panel = document.getElementById("fail-panel");
    if (panel) panel.classList.toggle("active", on);
    root.classList.toggle("failing", on);
  }
  function chooseCategory(n) {
    const el = form && form.querySelector(`input[name=category][data-key="${n}"]`);
    if (!el) return;
    el.checked = true;
    if (failMode) submit("fail"); else setFailMode(true);
  }
  function setRegion(value, label) {
    if (!regionInput) return;
    regionInput.value = value ? JSON.stringify(value) : "";
    if (regionReadout) regionReadout.textContent = label || "";
  }

  // A text selection inside the note becomes the fail's span (offsets in the note's text).
  const note = document.getElementById("note-text");
  if (note) {
    document.addEventListener("selectionchange", () => {
      const sel = window.getSelection();
      if (!sel || sel.rangeCount === 0 || sel.isCollapsed) return;
      const range = sel.getRangeAt(0);
      if (!note.contains(range.startContainer) || !note.contains(range.endContainer)) return;
      const pre = document.createRange();
      pre.selectNodeContents(note);
      pre.setEnd(range.startContainer, range.startOffset);
      const start = Array.from(pre.toString()).length;
      const end = start + Array.from(range.toString()).length;
      if (end > start) setRegion({ start: start, end: end }, `span ${start}–${end}`);
    });
  }

  // --- DICOM viewer -------------------------------------------------------------------------
  const viewer = document.getElementById("viewer");
  const img = document.getElementById("dicom-img");
  const canvas = document.getElementById("canvas");
  let presets = [];
  let presetIndex = 0;
  let center = null, width = null, frame = 0, zoom = 1;
  const frames = viewer ? parseInt(viewer.dataset.frames || "1", 10) : 1;

  function readout() {
    const wl = document.getElementById("wl-readout");
    if (wl) wl.textContent = center === null ? "auto" : `C ${Math.round(center)} / W ${Math.round(width)}`;
    const fr = document.getElementById("frame-readout");
    if (fr) fr.textContent = `${frame + 1} / ${frames}`;
    const zr = document.getElementById("zoom-readout");
    if (zr) zr.textContent = `${Math.round(zoom * 100)}%`;
  }
  let inflight = false, queued = null;
  function load(url) {
    inflight = true;
    img.onload = img.onerror = () => {
      inflight = false;
      if (queued) { const next = queued; queued = null; load(next); }
    };
    img.src = url;
  }
  function refresh() {
    if (!img) return;
    const q = new URLSearchParams({ frame: String(frame) });
    if (center !== null && width !== null) { q.set("c", String(Math.round(center))); q.set("w", String(Math.max(1, Math.round(width)))); }
    const url = `${viewer.dataset.imageUrl}?${q}`;
    // Coalesce drags: one request in flight, only the latest position queued behind it.
    if (inflight) queued = url; else load(url);
    document.querySelectorAll(".box").forEach((b) => { b.hidden = parseInt(b.dataset.frame, 10) !== frame || !overlayOn(); });
    readout();
  }
  function overlayOn() { const o = document.getElementById("overlay"); return !o || o.checked; }
  function applyPreset(i) {
    if (!presets.length) return;
    presetIndex = (i + presets.length) % presets.length;
    const p = presets[presetIndex];
    center = p.c; width = p.w;
    document.querySelectorAll(".preset").forEach((b, k) => b.classList.toggle("on", k === presetIndex));
    refresh();
  }
  function setZoom(z) {
    zoom = Math.min(8, Math.max(0.25, z));
    if (canvas) canvas.style.transform = `scale(${zoom})`;
    readout();
  }
  function setFrame(f) {
    frame = Math.min(frames - 1, Math.max(0, f));
    const slider = document.getElementById("frame");
    if (slider) slider.value = String(frame);
    refresh();
  }
  if (viewer && img) {
    const data = document.getElementById("presets-data");
    presets = data ? JSON.parse(data.textContent) : [];
    applyPreset(0);
    document.querySelectorAll(".preset").forEach((b) => b.addEventListener("click", () => applyPreset(parseInt(b.dataset.preset, 10))));
    document.querySelectorAll("[data-zoom]").forEach((b) => b.addEventListener("click", () => setZoom(zoom * (b.dataset.zoom === "1" ? 1.25 : 0.8))));
    const slider = document.getElementById("frame");
    if (slider) slider.addEventListener("input", () => setFrame(parseInt(slider.value, 10)));
    const overlay = document.getElementById("overlay");
    if (overlay) overlay.addEventListener("change", refresh);

    // Drag adjusts window (x) and level (y); shift-drag marks a region for the verdict.
    const box = document.getElementById("region-box");
    let drag = null;
    const toImage = (ev) => {
      const r = img.getBoundingClientRect();
      const cols = parseInt(canvas.dataset.cols, 10), rows = parseInt(canvas.dataset.rows, 10);
      return {
        x: Math.max(0, Math.min(cols, Math.round((ev.clientX - r.left) / r.width * cols))),
        y: Math.max(0, Math.min(rows, Math.round((ev.clientY - r.top) / r.height * rows))),
        cols: cols, rows: rows,
      };
    };
    img.addEventListener("mousedown", (ev) => {
      ev.preventDefault();
      if (center === null) { center = 40; width = 400; if (presets[0] && presets[0].c !== null) { center = presets[0].c; width = presets[0].w; } }
      drag = { x: ev.clientX, y: ev.clientY, c: center, w: width, region: ev.shiftKey, start: toImage(ev) };
    });
    window.addEventListener("mousemove", (ev) => {
      if (!drag) return;
      if (drag.region) {
        const a = drag.start, b = toImage(ev);
        const x0 = Math.min(a.x, b.x), y0 = Math.min(a.y, b.y), x1 = Math.max(a.x, b.x), y1 = Math.max(a.y, b.y);
        box.hidden = false;
        box.style.left = `${100 * x0 / a.cols}%`; box.style.top = `${100 * y0 / a.rows}%`;
        box.style.width = `${100 * (x1 - x0) / a.cols}%`; box.style.height = `${100 * (y1 - y0) / a.rows}%`;
        drag.box = { frame: frame, x0: x0, y0: y0, x1: x1, y1: y1 };
        return;
      }
      width = Math.max(1, drag.w + (ev.clientX - drag.x) * 4);
      center = drag.c + (ev.clientY - drag.y) * 2;
      refresh();
    });
    window.addEventListener("mouseup", () => {
      if (drag && drag.region && drag.box && drag.box.x1 > drag.box.x0 && drag.box.y1 > drag.box.y0) {
        const b = drag.box;
        setRegion(b, `box ${b.x0},${b.y0}–${b.x1},${b.y1} (frame ${b.frame + 1})`);
      }
      drag = null;
    });
  }

  // --- help ---------------------------------------------------------------------------------
  function toggleHelp(show) {
    if (!help) return;
    help.hidden = show === undefined ? !help.hidden : !show;
  }
  document.querySelectorAll("[data-help]").forEach((b) => b.addEventListener("click", () => toggleHelp()));
  if (help) help.addEventListener("click", (ev) => { if (ev.target === help) toggleHelp(false); });

  // --- the keyboard -------------------------------------------------------------------------
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t instanceof HTMLInputElement && t.type !== "radio" && t.type !== "checkbox" && t.type !== "range") return;
    if (t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement) return;
    const key = ev.key;
    let handled = true;
    if (key === "?") toggleHelp();
    else if (key === "Escape") { toggleHelp(false); setFailMode(false); setRegion(null); }
    else if (help && !help.hidden) handled = false;
    else if (live && key === "p") submit("pass");
    else if (live && key === "f") submit("fail");
    else if (live && /^[1-8]$/.test(key)) chooseCategory(key);
    else if (live && key === "Enter" && failMode) submit("fail");
    else if (key === "n" || key === "j") {
      if (live) say(document.documentElement.lang.startsWith("zh") ? "请先给出结论 (p 或 f)" : "Give a verdict first (p or f)");
      else go(root.dataset.nextUrl);
    }
    else if (key === "k") go(root.dataset.prevUrl);
    else if (key === "+" || key === "=") setZoom(zoom * 1.25);
    else if (key === "-") setZoom(zoom * 0.8);
    else if (key === "w") applyPreset(presetIndex + 1);
    else if (key === "ArrowRight" && viewer) setFrame(frame + 1);
    else if (key === "ArrowLeft" && viewer) setFrame(frame - 1);
    else if (key === "o") { const o = document.getElementById("overlay"); if (o) { o.checked = !o.checked; refresh(); } }
    else handled = false;
    if (handled) ev.preventDefault();
  });
})();
