// noduleflow viewer: plain JavaScript over the HTTP API (no framework, no build step, no network beyond this server).
// Images are fetched with fetch() so that the Authorization header goes with them, then drawn on one canvas:
// the slice, the candidate mask (optional), and a circle per finding on the slices it spans.
"use strict";

const TOKEN_KEY = "noduleflow.token";
const POLL_MS = 1000;          // job status while one of ours is queued or running
const CACHE_SLICES = 96;       // decoded slice/mask images kept, so scrolling back and forth stays smooth

const state = {
  job: null,                   // the open job (GET /v1/scans/{id}) once it is done
  slice: 0,
  window: "lung",
  showMask: false,
  showFindings: true,
  drawSeq: 0,                  // only the latest draw request paints (older fetches finish late while scrolling)
  cache: new Map(),            // url -> ImageBitmap (insertion order = age)
  jobsTimer: null,
};

const $ = (id) => document.getElementById(id);

// ---- HTTP -------------------------------------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function errorDetail(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  } catch (_) { /* not JSON */ }
  return `The server answered ${response.status} ${response.statusText}.`;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) askForToken();
  if (!response.ok) throw new HttpError(response.status, await errorDetail(response));
  return response;
}

const getJson = async (path) => (await api(path)).json();

async function getImage(url) {
  if (state.cache.has(url)) {
    const hit = state.cache.get(url);
    state.cache.delete(url);   // refresh its age
    state.cache.set(url, hit);
    return hit;
  }
  const bitmap = await createImageBitmap(await (await api(url)).blob());
  state.cache.set(url, bitmap);
  while (state.cache.size > CACHE_SLICES) {
    const [oldest, old] = state.cache.entries().next().value;
    old.close();
    state.cache.delete(oldest);
  }
  return bitmap;
}

function askForToken() {
  const form = $("token-form");
  if (!form.hidden) return;
  // a token we already sent was refused: say so rather than ask as if for the first time
  $("token-label").textContent = sessionStorage.getItem(TOKEN_KEY)
    ? "The server did not accept that access token. Enter it again:"
    : "This server needs an access token. Enter it to continue:";
  form.hidden = false;
  $("token").focus();
}

// ---- status line and model ---------------------------------------------------------------------------------------

function setStatus(text, kind = "") {
  const status = $("status");
  status.textContent = text;
  status.className = `status ${kind}`;
}

async function loadModel() {
  try {
    const model = await getJson("/v1/model");
    const malignancy = model.has_malignancy ? "with malignancy" : "without malignancy";
    $("model-info").textContent = `Model ${model.run} (${model.runtime}, ${malignancy})`;
  } catch (err) {
    $("model-info").textContent = err.status === 401 ? "Enter the access token to connect." : `Model unavailable: ${err.message}`;
  }
}

// ---- jobs ----------------------------------------------------------------------------------------------------------

function formatTime(created) {
  if (created === null || created === undefined) return "";
  const date = typeof created === "number" ? new Date(created * 1000) : new Date(created);
  return isNaN(date) ? String(created) : date.toLocaleString();
}

const STATUS_TEXT = { queued: "Queued", running: "Running", done: "Done", failed: "Failed" };

async function loadJobs() {
  let jobs;
  try {
    jobs = (await getJson("/v1/scans")).jobs;
  } catch (err) {
    if (err.status !== 401) setStatus(`Could not list the scans: ${err.message}`, "error");
    return;
  }
  const list = $("jobs");
  list.replaceChildren();
  $("jobs-empty").hidden = jobs.length > 0;
  for (const job of jobs) {
    const item = document.createElement("li");
    item.className = `job ${job.status}` + (state.job && state.job.id === job.id ? " current" : "");
    item.dataset.id = job.id;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "job-open";
    open.innerHTML = `<span class="job-name"></span><span class="job-meta"></span>`;
    open.querySelector(".job-name").textContent = job.filename || job.id;
    open.querySelector(".job-meta").textContent = formatTime(job.created);
    open.setAttribute("aria-label", `${job.filename || job.id}, ${STATUS_TEXT[job.status] || job.status}`);
    open.addEventListener("click", () => openJob(job.id, job.filename || job.id));
    const badge = document.createElement("span");
    badge.className = `badge ${job.status}`;
    badge.textContent = STATUS_TEXT[job.status] || job.status;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "job-delete";
    remove.textContent = "\u00d7";
    remove.title = "Delete this scan and its results";
    remove.setAttribute("aria-label", `Delete ${job.filename || job.id}`);
    remove.addEventListener("click", () => deleteJob(job));
    item.append(open, badge, remove);
    list.append(item);
  }
  // keep the list fresh while something is still being processed
  clearTimeout(state.jobsTimer);
  if (jobs.some((j) => j.status === "queued" || j.status === "running")) state.jobsTimer = setTimeout(loadJobs, 3000);
}

async function deleteJob(job) {
  if (!window.confirm(`Delete ${job.filename || job.id} and its results?`)) return;
  try {
    await api(`/v1/scans/${encodeURIComponent(job.id)}`, { method: "DELETE" });
    if (state.job && state.job.id === job.id) closeJob();
    setStatus(`Deleted ${job.filename || job.id}.`);
  } catch (err) {
    setStatus(`Could not delete it: ${err.message}`, "error");
  }
  loadJobs();
}

// ---- upload --------------------------------------------------------------------------------------------------------

function upload(file) {
  // XMLHttpRequest rather than fetch: only it reports upload progress
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/scans");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    const bar = $("upload-progress");
    bar.hidden = false;
    bar.value = 0;
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = Math.round((100 * e.loaded) / e.total);
    });
    xhr.addEventListener("load", () => {
      bar.hidden = true;
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 401) askForToken();
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new HttpError(xhr.status, typeof body.detail === "string" ? body.detail : `The server answered ${xhr.status}.`));
    });
    xhr.addEventListener("error", () => {
      bar.hidden = true;
      reject(new HttpError(0, "The upload did not reach the server; check that it is running."));
    });
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

async function onUpload(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  $("upload-button").disabled = true;
  setStatus(`Uploading ${file.name}\u2026`);
  try {
    const job = await upload(file);
    setStatus(`${file.name}: queued.`);
    loadJobs();
    await followJob(job.id, file.name);
  } catch (err) {
    setStatus(`Upload failed: ${err.message}`, "error");
  } finally {
    $("upload-button").disabled = !$("file").files.length;
  }
}

async function followJob(id, name) {
  for (;;) {
    const job = await getJson(`/v1/scans/${encodeURIComponent(id)}`);
    if (job.status === "done") {
      const n = job.findings ? job.findings.length : 0;
      const secs = job.seconds !== null && job.seconds !== undefined ? ` in ${job.seconds.toFixed(1)} s` : "";
      setStatus(`${name}: done${secs}, ${n} finding${n === 1 ? "" : "s"}.`, "ok");
      loadJobs();
      showJob(job);
      return;
    }
    if (job.status === "failed") {
      setStatus(`${name}: failed. ${job.error || ""}`, "error");
      loadJobs();
      return;
    }
    setStatus(`${name}: ${job.status === "running" ? "finding nodules" : "waiting in the queue"}\u2026`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

// ---- the open scan -------------------------------------------------------------------------------------------------

// A done job opens; a failed one says why; a queued or running one is followed and opens when it is done.
async function openJob(id, name) {
  try {
    const job = await getJson(`/v1/scans/${encodeURIComponent(id)}`);
    if (job.status === "done") {
      setStatus("");
      showJob(job);
    } else if (job.status === "failed") setStatus(`${job.filename || name}: failed. ${job.error || ""}`, "error");
    else await followJob(id, job.filename || name);
  } catch (err) {
    setStatus(`Could not open the scan: ${err.message}`, "error");
  }
}

function closeJob() {
  state.job = null;
  history.replaceState(null, "", location.pathname);
  $("slice-slider").disabled = true;
  $("slice-label").textContent = "\u2013";
  $("stage-empty").hidden = false;
  $("slice-canvas").setAttribute("aria-label", "No scan open");
  const ctx = $("slice-canvas").getContext("2d");
  ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
  $("findings").querySelector("tbody").replaceChildren();
  $("findings").hidden = true;
  $("findings-empty").hidden = true;
  $("scan-info").textContent = "No scan open.";
}

function showJob(job) {
  state.job = job;
  history.replaceState(null, "", `#job=${encodeURIComponent(job.id)}`);
  const [depth, rows, cols] = job.scan.shape;
  const slider = $("slice-slider");
  slider.max = depth - 1;
  slider.disabled = false;
  $("stage-empty").hidden = true;
  const spacing = job.scan.spacing_xyz.map((s) => s.toFixed(2)).join(" \u00d7 ");
  $("scan-info").textContent =
    `${job.filename || job.id}: ${cols} \u00d7 ${rows} \u00d7 ${depth} voxels of ${spacing} mm` +
    (job.candidates !== null && job.candidates !== undefined ? `, ${job.candidates} candidates checked` : "") + ".";
  renderFindings(job.findings || []);
  for (const item of $("jobs").children) item.classList.toggle("current", item.dataset.id === job.id);
  const first = (job.findings || [])[0];
  goTo(first ? Math.round(first.center_irc[0]) : Math.floor(depth / 2));
  $("stage").focus({ preventScroll: true });
}

function fmt(p) {
  return p === null || p === undefined ? "\u2013" : p.toFixed(2);
}

function renderFindings(findings) {
  const body = $("findings").querySelector("tbody");
  body.replaceChildren();
  $("findings").hidden = findings.length === 0;
  $("findings-empty").hidden = findings.length > 0;
  findings.forEach((f, n) => {
    const slice = Math.round(f.center_irc[0]);
    const row = document.createElement("tr");
    row.tabIndex = 0;
    row.dataset.slice = slice;
    row.setAttribute("aria-label", `Finding ${n + 1}, score ${fmt(f.probability)}, go to slice ${slice + 1}`);
    const cells = [
      String(n + 1), fmt(f.probability), fmt(f.malignancy), `${f.diameter_mm.toFixed(1)} mm`,
      `${f.coordX.toFixed(1)}, ${f.coordY.toFixed(1)}, ${f.coordZ.toFixed(1)}`, String(slice + 1),
    ];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    if (f.malignancy !== null && f.malignancy >= 0.5) row.cells[2].classList.add("high");
    const jump = () => goTo(slice);
    row.addEventListener("click", jump);
    row.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        jump();
      }
    });
    body.append(row);
  });
}

function goTo(k) {
  if (!state.job) return;
  const depth = state.job.scan.shape[0];
  state.slice = Math.max(0, Math.min(depth - 1, k));
  $("slice-slider").value = state.slice;
  $("slice-label").textContent = `${state.slice + 1} / ${depth}`;
  for (const row of $("findings").querySelector("tbody").rows) {
    row.classList.toggle("on-slice", Number(row.dataset.slice) === state.slice);
  }
  draw();
  prefetch(state.slice + 1);
  prefetch(state.slice - 1);
}

function sliceUrl(k) {
  return `/v1/scans/${encodeURIComponent(state.job.id)}/slices/${k}.png?window=${state.window}`;
}

function maskUrl(k) {
  return `/v1/scans/${encodeURIComponent(state.job.id)}/mask/${k}.png`;
}

function prefetch(k) {
  if (state.job && k >= 0 && k < state.job.scan.shape[0]) getImage(sliceUrl(k)).catch(() => {});
}

// Findings visible on slice k: those whose sphere (diameter_mm) reaches it; radius of its cross-section in pixels.
function findingsOn(k) {
  const [sx, , sz] = state.job.scan.spacing_xyz;
  const out = [];
  (state.job.findings || []).forEach((f, n) => {
    const [i, r, c] = f.center_irc;
    const radiusMm = f.diameter_mm / 2;
    const dz = Math.abs(k - i) * sz;
    if (Math.round(i) !== k && dz > radiusMm) return;
    const section = Math.sqrt(Math.max(radiusMm * radiusMm - dz * dz, 0)) / sx;
    out.push({ n, f, r, c, radius: Math.max(section, radiusMm / sx / 2, 2) });
  });
  return out;
}

async function draw() {
  const seq = ++state.drawSeq;
  const job = state.job;
  const k = state.slice;
  let slice, mask = null;
  try {
    [slice, mask] = await Promise.all([getImage(sliceUrl(k)), state.showMask ? getImage(maskUrl(k)) : null]);
  } catch (err) {
    if (seq === state.drawSeq) setStatus(`Could not load slice ${k + 1}: ${err.message}`, "error");
    return;
  }
  if (seq !== state.drawSeq || job !== state.job) return;
  const canvas = fitCanvas();
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(slice, 0, 0, canvas.width, canvas.height);
  if (mask) ctx.drawImage(mask, 0, 0, canvas.width, canvas.height);   // translucent already (its alpha channel)
  const shown = state.showFindings ? findingsOn(k) : [];
  drawFindings(ctx, shown);
  canvas.dataset.slice = k;
  canvas.dataset.loaded = "true";
  canvas.dataset.window = state.window;
  canvas.dataset.mask = mask ? "on" : "off";
  const on = shown.length ? `, ${shown.length} finding${shown.length === 1 ? "" : "s"} marked` : "";
  canvas.setAttribute("aria-label", `Axial slice ${k + 1} of ${job.scan.shape[0]}, ${state.window} window${on}`);
}

// The canvas fills the stage at the scan's aspect in millimetres, its backing store in device pixels, so that
// circles and labels stay sharp however few voxels the scan has.
function fitCanvas() {
  const canvas = $("slice-canvas");
  const stage = $("stage");
  const [, rows, cols] = state.job.scan.shape;
  const [sx, sy] = state.job.scan.spacing_xyz;
  const fit = Math.min(stage.clientWidth / (cols * sx), stage.clientHeight / (rows * sy));
  const width = Math.max(Math.floor(cols * sx * fit), 1);
  const height = Math.max(Math.floor(rows * sy * fit), 1);
  const dpr = window.devicePixelRatio || 1;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  if (canvas.width !== Math.round(width * dpr)) canvas.width = Math.round(width * dpr);
  if (canvas.height !== Math.round(height * dpr)) canvas.height = Math.round(height * dpr);
  return canvas;
}

function drawFindings(ctx, shown) {
  const [, rows, cols] = state.job.scan.shape;
  const px = ctx.canvas.width / cols;    // canvas pixels per voxel, across and down
  const py = ctx.canvas.height / rows;
  const scale = window.devicePixelRatio || 1;   // line widths and text in CSS pixels
  ctx.lineWidth = 1.5 * scale;
  ctx.font = `600 ${Math.round(12 * scale)}px system-ui, sans-serif`;
  ctx.textBaseline = "bottom";
  for (const item of shown) {
    const { n, f } = item;
    const c = (item.c + 0.5) * px;
    const r = (item.r + 0.5) * py;
    const radius = item.radius * px;
    const malignant = f.malignancy !== null && f.malignancy >= 0.5;
    const colour = malignant ? "#ff6b5e" : "#ffd23f";
    ctx.strokeStyle = colour;
    ctx.beginPath();
    ctx.arc(c, r, radius + 3 * scale, 0, 2 * Math.PI);
    ctx.stroke();
    const label = `#${n + 1} ${fmt(f.probability)}` + (f.malignancy !== null ? ` \u00b7 malig ${fmt(f.malignancy)}` : "");
    const x = Math.min(c + radius + 5 * scale, ctx.canvas.width - ctx.measureText(label).width - 2 * scale);
    const y = Math.max(r - radius - 2 * scale, 14 * scale);
    const w = ctx.measureText(label).width;
    ctx.fillStyle = "rgba(0, 0, 0, 0.65)";
    ctx.fillRect(x - 2 * scale, y - 14 * scale, w + 4 * scale, 15 * scale);
    ctx.fillStyle = colour;
    ctx.fillText(label, x, y);
  }
}

// ---- controls ------------------------------------------------------------------------------------------------------

function setWindow(name) {
  state.window = name;
  for (const b of document.querySelectorAll(".preset")) b.setAttribute("aria-pressed", String(b.dataset.window === name));
  draw();
}

function onKey(event) {
  if (!state.job) return;
  const steps = { ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1, PageUp: -10, PageDown: 10 };
  if (event.key in steps) goTo(state.slice + steps[event.key]);
  else if (event.key === "Home") goTo(0);
  else if (event.key === "End") goTo(state.job.scan.shape[0] - 1);
  else return;
  event.preventDefault();
}

function init() {
  $("file").addEventListener("change", () => { $("upload-button").disabled = !$("file").files.length; });
  $("upload-form").addEventListener("submit", onUpload);
  $("refresh-jobs").addEventListener("click", loadJobs);
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token-form").hidden = true;
    loadModel();
    loadJobs();
    if (state.job) draw();
  });
  for (const b of document.querySelectorAll(".preset")) b.addEventListener("click", () => setWindow(b.dataset.window));
  $("show-mask").addEventListener("change", (e) => { state.showMask = e.target.checked; draw(); });
  $("show-findings").addEventListener("change", (e) => { state.showFindings = e.target.checked; draw(); });
  $("slice-slider").addEventListener("input", (e) => goTo(Number(e.target.value)));
  $("stage").addEventListener("keydown", onKey);
  $("stage").addEventListener("wheel", (e) => {
    if (!state.job) return;
    e.preventDefault();
    goTo(state.slice + Math.sign(e.deltaY));
  }, { passive: false });
  window.addEventListener("resize", () => { if (state.job) draw(); });
  loadModel();
  loadJobs();
  const wanted = /^#job=(.+)$/.exec(location.hash);
  if (wanted) openJob(decodeURIComponent(wanted[1]));
}

document.addEventListener("DOMContentLoaded", init);
