// The service's page: submit URLs, watch a job live, act on it. Plain DOM, no framework.
// Everything shown is set with textContent or setAttribute: nothing from the API or the
// person is ever parsed as HTML. Only the public JSON API is used (docs/api.md).
"use strict";

const API = "/v1/images/upload";
const KEY_STORE = "image-service.api-key"; // sessionStorage: this tab only
const POLL_MS = 1000;
const RECENT_PAGE = 20;
const BUSY_TRIES = 5; // a refused POST/DELETE is retried this often; reads retry for ever

const $ = (id) => document.getElementById(id);

// -- small helpers -------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function show(node, visible) {
  node.hidden = !visible;
}

function say(node, message) {
  node.textContent = message || "";
  show(node, Boolean(message));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Only http(s) links become href/src: a link is data, never a "javascript:" URL.
function httpUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function plural(n, one, many = one + "s") {
  return `${n} ${n === 1 ? one : many}`;
}

function bytes(n) {
  if (n < 1024) return plural(n, "byte");
  const units = ["KB", "MB", "GB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

// The reader's local time, with its zone: the API's times are UTC, the reader's may not be.
function when(stamp) {
  if (!stamp) return "";
  const date = new Date(stamp);
  return Number.isNaN(date.getTime()) ? stamp : date.toLocaleString(undefined, { timeZoneName: "short" });
}

function timeEl(stamp) {
  return stamp ? el("time", { datetime: stamp, text: when(stamp) }) : "";
}

// -- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function notice(message) {
  say($("notice"), message);
}

async function readError(answer) {
  try {
    const body = await answer.json();
    if (body && typeof body.error === "string") return body.error;
  } catch {
    // not JSON: fall through to the status line
  }
  return `the service answered ${answer.status} ${answer.statusText}`.trim();
}

// One call to the API: JSON in and out, the key if there is one, a key form on 401,
// patient retries on 503 with Retry-After. Throws ApiError (status 0: unreachable).
async function api(method, path, body) {
  for (let attempt = 1; ; attempt += 1) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.Authorization = `Bearer ${key}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let answer;
    try {
      answer = await fetch(path, init);
    } catch {
      throw new ApiError(0, "Cannot reach the service. Is it running? Check your connection.");
    }
    if (answer.status === 401) {
      await askForKey(await readError(answer), Boolean(key));
      continue;
    }
    const retryAfter = Number.parseInt(answer.headers.get("Retry-After"), 10);
    if (answer.status === 503 && retryAfter >= 0 && (method === "GET" || attempt < BUSY_TRIES)) {
      const seconds = Math.min(Math.max(retryAfter, 1), 30);
      notice(`The service is busy or stopping; retrying in ${plural(seconds, "second")}…`);
      await sleep(seconds * 1000);
      continue;
    }
    notice("");
    if (!answer.ok) throw new ApiError(answer.status, await readError(answer));
    if (answer.status === 204) return null;
    return answer.json();
  }
}

// -- API keys ------------------------------------------------------------------------------

let keyWaiters = [];

function askForKey(error, hadKey) {
  say($("key-message"), hadKey
    ? `The service refused this key (${error}). Enter another one.`
    : `The service asks for an API key (${error}).`);
  show($("key"), true);
  $("key-input").focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

function useKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  $("key-input").value = "";
  show($("key"), false);
  show($("key-forget"), true);
  const waiters = keyWaiters;
  keyWaiters = [];
  waiters.forEach((resolve) => resolve());
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORE);
  show($("key-forget"), false);
  $("urls").focus();
}

// -- submitting ----------------------------------------------------------------------------

async function submitUrls(event) {
  event.preventDefault();
  const urls = $("urls").value.split(/\r?\n/).map((line) => line.trim()).filter(Boolean);
  const button = $("upload-button");
  say($("upload-error"), "");
  button.disabled = true;
  try {
    const answer = await api("POST", API, { urls });
    $("urls").value = "";
    refreshRecent();
    go(answer.jobId, true);
  } catch (error) {
    say($("upload-error"), error.message);
    $("urls").focus();
  } finally {
    button.disabled = false;
  }
}

// -- the job on show -----------------------------------------------------------------------

const STATUS = { pending: "Waiting to start", "in-progress": "In progress", complete: "Finished" };
const STATE = { queued: "Waiting", in_flight: "Working on it", complete: "Uploaded", failed: "Failed" };

let view = null; // {id, rows: Map(url -> {node, signature}), token, job}

function go(jobId, focus) {
  const hash = `#/jobs/${encodeURIComponent(jobId)}`;
  if (location.hash === hash) openJob(jobId, focus);
  else {
    pendingFocus = focus;
    location.hash = hash;
  }
}

let pendingFocus = false;

function route() {
  const match = /^#\/jobs\/([^/]+)$/.exec(location.hash);
  const focus = pendingFocus;
  pendingFocus = false;
  if (match) openJob(decodeURIComponent(match[1]), focus);
  else closeJob();
}

function closeJob() {
  view = null;
  show($("job"), false);
  document.title = "Image service";
}

function openJob(jobId, focus) {
  view = { id: jobId, rows: new Map(), job: null };
  $("job-urls").replaceChildren();
  $("job-id").textContent = jobId;
  $("job-link").setAttribute("href", `#/jobs/${encodeURIComponent(jobId)}`);
  for (const id of ["job-status", "job-created", "job-finished", "job-counts"]) $(id).replaceChildren();
  delete $("job-status").dataset.status; // the previous job's, until this one is read
  show($("job-retry-of"), false);
  closeConfirm($("job-cancel"));
  closeConfirm($("job-retry"));
  show($("job-cancel"), false);
  show($("job-retry"), false);
  showCallback(null);
  $("job-progress").removeAttribute("value");
  say($("job-error"), "");
  show($("job"), true);
  markRecent();
  if (focus) $("job-title").focus();
  poll(view);
}

// Read the job about every second until it is complete (slower when reads are slow).
async function poll(current) {
  let pause = POLL_MS;
  while (view === current) {
    const started = performance.now();
    let job = null;
    try {
      job = await api("GET", `${API}/${encodeURIComponent(current.id)}`);
    } catch (error) {
      if (view !== current) return;
      if (error.status !== 0) {
        say($("job-error"), error.message);
        return;
      }
      notice(`${error.message} Retrying…`);
      pause = Math.min(pause * 2, 10 * POLL_MS);
    }
    if (view !== current) return;
    if (job) {
      render(job);
      if (job.status === "complete") return;
      pause = Math.max(POLL_MS, 3 * (performance.now() - started));
    }
    await sleep(pause);
  }
}

function render(job) {
  const sawItRun = Boolean(view.job) && view.job.status !== "complete";
  view.job = job;
  const urls = Array.isArray(job.urls) ? job.urls : [];
  const count = (state) => urls.filter((entry) => entry.state === state).length;
  const done = count("complete") + count("failed");
  // A deleted image was uploaded, then deleted: counted once, as deleted, so the parts add up.
  const deleted = urls.filter((entry) => entry.state === "complete" && entry.deleted).length;

  const status = $("job-status");
  status.textContent = STATUS[job.status] || job.status;
  status.dataset.status = job.status;
  $("job-created").replaceChildren(timeEl(job.created));
  $("job-finished").replaceChildren(job.finished ? timeEl(job.finished) : "not yet");
  const parts = [`${count("complete") - deleted} uploaded`];
  if (deleted) parts.push(`${deleted} deleted`);
  parts.push(`${count("failed")} failed`);
  if (done < urls.length) parts.push(`${urls.length - done} to go`);
  $("job-counts").textContent = `${done} of ${plural(urls.length, "image")} done: ${parts.join(", ")}`;
  const bar = $("job-progress");
  bar.max = Math.max(urls.length, 1);
  bar.value = done;
  document.title = `${STATUS[job.status] || job.status} · job ${job.id.slice(0, 8)} · Image service`;

  const retryOf = typeof job.retry_of === "string" ? job.retry_of : null;
  show($("job-retry-of"), Boolean(retryOf));
  if (retryOf) {
    $("job-retry-of-link").textContent = retryOf;
    $("job-retry-of-link").setAttribute("href", `#/jobs/${encodeURIComponent(retryOf)}`);
  }
  showCallback(job.callback || null);
  const complete = job.status === "complete";
  show($("job-cancel"), !complete && !confirming($("job-cancel")));
  if (complete) closeConfirm($("job-cancel"));
  show($("job-retry"), complete && count("failed") > 0 && !confirming($("job-retry")));

  const list = $("job-urls");
  let before = list.firstChild;
  for (const entry of urls) {
    const signature = JSON.stringify(entry);
    let row = view.rows.get(entry.url);
    if (!row || row.signature !== signature) {
      const node = entryNode(entry);
      if (row) {
        if (before === row.node) before = node;
        row.node.replaceWith(node);
      }
      row = { node, signature };
      view.rows.set(entry.url, row);
    }
    if (row.node !== before) list.insertBefore(row.node, before);
    before = row.node.nextSibling;
  }
  if (complete && sawItRun) refreshRecent();
}

function showCallback(callback) {
  show($("job-callback-label"), Boolean(callback));
  show($("job-callback"), Boolean(callback));
  if (!callback) return;
  let text = `${callback.url}: ${callback.state}, ${plural(callback.attempts || 0, "attempt")}`;
  if (callback.last_error) text += `; last error: ${callback.last_error}`;
  $("job-callback").textContent = text;
}

function entryNode(entry) {
  const link = entry.state === "complete" && !entry.deleted ? httpUrl(entry.link) : null;
  const state = entry.deleted ? "deleted" : entry.state;
  const item = el("li", { class: "entry", "data-state": state });

  if (link) {
    const img = el("img", { src: link, alt: `Uploaded copy of ${entry.url}`, loading: "lazy" });
    img.addEventListener("error", () => img.replaceWith(el("span", { text: "No preview" })));
    item.append(el("a", { class: "thumb", href: link, target: "_blank", rel: "noopener" }, img));
  } else {
    const placeholder = { failed: "No image", deleted: "Deleted" }[state] || "…";
    item.append(el("span", { class: "thumb empty", "aria-hidden": "true", text: placeholder }));
  }

  const info = el("div", { class: "info" });
  info.append(el("p", { class: "source", text: entry.url }));
  const facts = [entry.deleted ? "Deleted" : STATE[entry.state] || entry.state];
  if (entry.attempts) facts.push(plural(entry.attempts, "attempt"));
  if (entry.reused) facts.push("same image as before: its link was reused");
  info.append(el("p", { class: "state" }, el("span", { class: "badge", text: facts[0] }),
    facts.length > 1 ? ` · ${facts.slice(1).join(" · ")}` : ""));

  if (link) info.append(el("p", { class: "link" }, el("a", { href: link, target: "_blank", rel: "noopener", text: link })));
  if (entry.state === "failed" && entry.reason) {
    info.append(el("p", { class: "reason" }, el("span", { class: "label", text: "Reason: " }), el("span", { class: "why", text: entry.reason })));
  }
  if (entry.progress && entry.state === "in_flight") info.append(progressNode(entry.progress));
  if (entry.waiting) {
    info.append(el("p", { class: "waiting", text: `Waiting until ${when(entry.waiting.until)}: ${entry.waiting.reason || "the image host's limits"}` }));
  }
  if (link && entry.image_id) {
    const remove = el("button", { type: "button", class: "quiet", text: "Delete image" });
    const error = el("p", { class: "error", role: "alert", hidden: true });
    remove.addEventListener("click", () => askConfirm(remove, "Delete this image for good?", "Yes, delete it",
      () => deleteImage(entry, error)));
    info.append(el("div", { class: "entry-actions" }, remove), error);
  }
  item.append(info);
  return item;
}

function progressNode(progress) {
  const got = Number(progress.bytes) || 0;
  const total = Number(progress.total) || 0;
  const bar = el("progress", { "aria-label": "Downloaded" });
  if (total) {
    bar.max = total;
    bar.value = Math.min(got, total);
  }
  const text = total ? `${bytes(got)} of ${bytes(total)}` : `${bytes(got)} so far`;
  return el("p", { class: "bytes" }, bar, ` ${text}`);
}

// -- actions -------------------------------------------------------------------------------

// Destructive actions ask first, in the page (no dialog): the button gives way to a question.
function askConfirm(button, question, yes, action) {
  const box = el("span", { class: "confirm" });
  const close = (refocus) => {
    box.remove();
    show(button, true);
    if (refocus) button.focus();
  };
  const yesButton = el("button", { type: "button", class: "danger", text: yes });
  yesButton.addEventListener("click", () => {
    close(false);
    action();
  });
  const noButton = el("button", { type: "button", text: "No" });
  noButton.addEventListener("click", () => close(true));
  box.append(el("span", { text: question }), " ", yesButton, " ", noButton);
  button.confirmBox = box;
  show(button, false);
  button.after(box);
  yesButton.focus();
}

function confirming(button) {
  return Boolean(button.confirmBox && button.confirmBox.isConnected);
}

function closeConfirm(button) {
  if (confirming(button)) button.confirmBox.remove();
}

async function deleteImage(entry, error) {
  const current = view;
  say(error, "");
  try {
    await api("DELETE", `/v1/images/${encodeURIComponent(entry.image_id)}`);
    const job = await api("GET", `${API}/${encodeURIComponent(current.id)}`);
    if (view === current) render(job);
  } catch (failure) {
    say(error, failure.message);
  }
}

async function cancelJob() {
  const current = view;
  say($("job-error"), "");
  try {
    const job = await api("DELETE", `${API}/${encodeURIComponent(current.id)}`);
    if (view === current) render(job);
    refreshRecent();
  } catch (error) {
    if (view === current) say($("job-error"), error.message);
  }
}

async function retryJob() {
  const current = view;
  say($("job-error"), "");
  try {
    const answer = await api("POST", `${API}/${encodeURIComponent(current.id)}/retry`, {});
    refreshRecent();
    go(answer.jobId, true);
  } catch (error) {
    if (view === current) say($("job-error"), error.message);
  }
}

// -- recent jobs ---------------------------------------------------------------------------

let recentNext = null;
let recentListed = null; // a promise of whether this service can list jobs

// The listing is newer than the rest of the API: ask the API description whether this
// service has it, so an older service costs no failing request (and no console error).
function canListJobs() {
  if (recentListed === null) {
    recentListed = api("GET", "/openapi.json")
      .then((spec) => Boolean(spec && spec.paths && spec.paths[API] && spec.paths[API].get))
      .catch(() => false);
  }
  return recentListed;
}

async function refreshRecent() {
  recentNext = null;
  await loadRecent(true);
}

async function loadRecent(first) {
  if (!(await canListJobs())) return;
  const query = new URLSearchParams({ limit: String(RECENT_PAGE) });
  if (!first && recentNext !== null) query.set("before", String(recentNext));
  try {
    const page = await api("GET", `${API}?${query}`);
    const items = (page.jobs || []).map(recentItem);
    if (first) $("recent-list").replaceChildren(...items);
    else $("recent-list").append(...items);
    recentNext = page.next ?? null;
    show($("recent-more"), recentNext !== null);
    say($("recent-error"), "");
    show($("recent"), true);
    markRecent();
  } catch (error) {
    if (error.status === 404 || error.status === 405) {
      recentListed = Promise.resolve(false);
      show($("recent"), false);
    } else {
      say($("recent-error"), error.message);
    }
  }
}

// A row tells its job apart: when it was made (with the zone), whether it retries another
// job, its status, how many images it holds and how they went.
function recentItem(job) {
  const counts = job.counts || {};
  const total = (counts.complete || 0) + (counts.failed || 0) + (counts.pending || 0);
  const parts = [`${counts.complete || 0} uploaded`, `${counts.failed || 0} failed`];
  if (counts.pending) parts.push(`${counts.pending} to go`);
  const link = el("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, "data-job": job.id },
    timeEl(job.created) || job.id);
  const retry = typeof job.retry_of === "string"
    ? el("span", { class: "retry-mark", title: `Retry of job ${job.retry_of}`, text: "retry" }) : null;
  return el("li", {}, link, retry,
    el("span", { class: "badge", "data-status": job.status, text: STATUS[job.status] || job.status }),
    el("span", { class: "counts", text: `${plural(total, "image")}: ${parts.join(", ")}` }));
}

function markRecent() {
  for (const link of $("recent-list").querySelectorAll("a[data-job]")) {
    if (view && link.dataset.job === view.id) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// -- start ---------------------------------------------------------------------------------

function start() {
  $("upload-form").addEventListener("submit", submitUrls);
  $("key-form").addEventListener("submit", useKey);
  $("key-forget").addEventListener("click", forgetKey);
  show($("key-forget"), Boolean(sessionStorage.getItem(KEY_STORE)));
  $("job-cancel").addEventListener("click", () =>
    askConfirm($("job-cancel"), "Stop this job? Images not done yet will not be uploaded.", "Yes, cancel it", cancelJob));
  $("job-retry").addEventListener("click", () => {
    const urls = view && view.job && Array.isArray(view.job.urls) ? view.job.urls : [];
    const failed = urls.filter((entry) => entry.state === "failed").length;
    askConfirm($("job-retry"), `Upload the ${plural(failed, "failed image")} again, as a new job?`,
      "Yes, retry", retryJob);
  });
  $("recent-more").addEventListener("click", () => loadRecent(false));
  window.addEventListener("hashchange", route);
  route();
  refreshRecent();
}

start();
