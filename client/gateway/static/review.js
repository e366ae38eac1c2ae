// The review page: lists held jobs, shows one (video, QA gates, content checks, contact sheet), approves or
// rejects it. Plain browser JavaScript served by the gateway: no build step, nothing fetched from elsewhere.
// The operator key stays in this tab's sessionStorage and goes out only as the Authorization header.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;
let objectUrls = [];

function key() { return sessionStorage.getItem("operatorKey") || ""; }

function say(text, error) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({}, options, {
    headers: Object.assign({"Authorization": "Bearer " + key()}, (options || {}).headers || {}),
  }));
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

// Replaces a table's body: one row per entry of `rows`, one cell per [text, class] of a row.
function fillTable(id, rows) {
  const body = $(id).tBodies[0];
  body.replaceChildren();
  for (const cells of rows) {
    const row = body.insertRow();
    for (const [text, className] of cells) cell(row, text, className);
  }
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

async function blobUrl(path) {
  const url = URL.createObjectURL(await (await api(path)).blob());
  objectUrls.push(url);
  return url;
}

async function loadQueue() {
  const jobs = (await (await api("/v1/review/jobs")).json()).jobs;
  const body = $("queue").tBodies[0];
  body.replaceChildren();
  for (const job of jobs) {
    const row = body.insertRow();
    row.className = "job";
    row.dataset.job = job.job_id;
    cell(row, job.job_id);
    cell(row, job.tenant);
    cell(row, job.reasons.join("; "));
    cell(row, new Date(job.held_at * 1000).toISOString());
    row.addEventListener("click", () => show(job.job_id).catch((e) => say(e.message, true)));
  }
  $("empty").hidden = jobs.length > 0;
  say(jobs.length + " held job(s)");
}

async function show(jobId) {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
  const data = await (await api("/v1/review/jobs/" + encodeURIComponent(jobId))).json();
  current = jobId;
  for (const row of $("queue").tBodies[0].rows) row.classList.toggle("selected", row.dataset.job === jobId);
  $("detail").hidden = false;
  $("job-id").textContent = jobId;
  $("reasons").textContent = "Held because: " + data.review.reasons.join("; ");
  const report = data.qa_report || {};
  $("verdict").textContent = report.verdict || "no QA report";
  $("verdict").className = report.verdict || "unavailable";
  fillTable("gates", Object.entries(report.gates || {}).map(
    ([name, gate]) => [[name], [gate.status, gate.status], [(gate.reasons || []).join("; ")]]));
  const decision = data.job.content_policy || {};
  $("profile").textContent = decision.profile || "?";
  fillTable("checks", Object.entries(decision.checks || {}).map(([name, status]) => [[name], [status, status]]));
  $("video").src = await blobUrl(data.links.content);
  if (data.links.contact_sheet) {
    $("sheet").src = await blobUrl(data.links.contact_sheet);
    $("sheet").hidden = false;
    $("no-sheet").hidden = true;
  } else {
    $("sheet").hidden = true;
    $("no-sheet").hidden = false;
  }
}

async function decide(action) {
  if (!current) return;
  const body = action === "approve" ? {note: $("reason").value} : {reason: $("reason").value};
  const job = await (await api("/v1/review/jobs/" + encodeURIComponent(current) + "/" + action, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  })).json();
  $("detail").hidden = true;
  $("video").removeAttribute("src");
  current = null;
  await loadQueue();
  say("video " + job.id + " is now " + job.status);
}

document.addEventListener("DOMContentLoaded", () => {
  $("key").value = key();
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("operatorKey", $("key").value.trim());
    loadQueue().catch((e) => say(e.message, true));
  });
  $("approve").addEventListener("click", () => decide("approve").catch((e) => say(e.message, true)));
  $("reject").addEventListener("click", () => decide("reject").catch((e) => say(e.message, true)));
  if (key()) loadQueue().catch((e) => say(e.message, true));
});
