// Job cards: live progress, positions and ETAs that count down, the tab title, and the
// card buttons (cancel, retry, again). Small events update a card in place; a change of
// state fetches the card again from the server (/jobs/<id>/card/), so the page and the
// live updates render the same template; socket.js says which event does which. Every
// request goes through `send()`, which never throws: a failure becomes a notice to read.
import { timeLeft, waitingTime } from "./duration.js";

export const role = (el, name) => el.querySelector(`[data-role="${name}"]`);
export const known = (value) => value !== null && value !== undefined && value !== "";
export const card = (jobId) => document.getElementById(`job-${jobId}`);

let baseTitle = "";
let doneMark = false;

function setText(el, name, text) {
  const target = role(el, name);
  if (target && target.textContent !== text) target.textContent = text;
}

export function showNotice(el, text, kind = "") {
  const target = el && role(el, "notice");
  if (!target) return;
  target.textContent = text;
  target.className = `card-notice ${kind}`.trim();
  target.hidden = !text;
}

// --- Requests --------------------------------------------------------------------------

const FETCH_HEADERS = { "X-Requested-With": "fetch" };
const OFFLINE_TEXT = "Could not reach the server. Nothing was changed; please try again in a moment.";

/** fetch that never throws: {response, html} or {error}. */
export async function send(url, options = {}) {
  try {
    const response = await fetch(url, { ...options, headers: FETCH_HEADERS });
    return { response, html: await response.text() };
  } catch (error) {
    return { error };
  }
}

export function fromHtml(html) {
  const holder = document.createElement("div");
  holder.innerHTML = html.trim();
  return holder;
}

// --- Clocks: ETAs count down from the server's latest estimate, and a running job's
// time left follows its progress events -------------------------------------------------

// Said when a running job's estimate has run out while its progress is not near the end.
const LATE_TEXT = "Taking longer than expected…";

// job id -> what the page knows, with the moment (ms) it learnt it: the server's
// estimates (`eta`: seconds until done, `startEta`: until it starts, at `etaAt`), the
// job's progress, and the first and the latest progress events of its steps.
const clocks = new Map();

function clockFor(jobId) {
  if (!clocks.has(jobId)) clocks.set(jobId, {});
  return clocks.get(jobId);
}

function readCard(el) {
  const clock = clockFor(el.dataset.jobId);
  const now = Date.now();
  clock.progress = Number(el.dataset.progress || 0);
  if (el.dataset.status !== "processing") Object.assign(clock, { first: null, last: null, stepSeen: false });
  if (known(el.dataset.elapsed)) clock.startedAt = now - Number(el.dataset.elapsed) * 1000;
  if (known(el.dataset.eta)) Object.assign(clock, { eta: Number(el.dataset.eta), etaAt: now });
  if (known(el.dataset.startEta)) clock.startEta = Number(el.dataset.startEta);
  if (clock.progress > 0) clock.stepSeen = true;
  tickCard(el, now);
  showTitle();
}

function setEta(jobId, startSeconds, doneSeconds) {
  const clock = clockFor(String(jobId));
  if (known(doneSeconds)) Object.assign(clock, { eta: Number(doneSeconds), etaAt: Date.now() });
  if (known(startSeconds)) clock.startEta = Number(startSeconds);
}

/** Seconds left of a running job, counted down from the last thing learnt: the rate of
 * its progress events once they span 5 % and a second, else the server's estimate;
 * null if unknown. */
function remainingSeconds(clock, now) {
  const { first, last } = clock;
  if (first && last && last.progress - first.progress >= 5 && last.at - first.at >= 1000) {
    const perPercent = (last.at - first.at) / 1000 / (last.progress - first.progress);
    return perPercent * (100 - last.progress) - (now - last.at) / 1000;
  }
  if (known(clock.eta)) return clock.eta - (now - clock.etaAt) / 1000;
  // A card without the server's estimate: the time since it started, for its progress.
  const p = clock.progress || 0;
  if (clock.startedAt && p >= 5) return ((now - clock.startedAt) / 1000 / p) * (100 - p);
  return null;
}

function tickCard(el, now) {
  const clock = clockFor(el.dataset.jobId);
  if (el.dataset.status === "queued" && known(clock.eta) && known(clock.startEta)) {
    const gone = (now - clock.etaAt) / 1000;
    // Not started when it should have: it is still ready no sooner than its own pass takes.
    const ready = Math.max(clock.eta - gone, clock.eta - clock.startEta, 0);
    setText(el, "eta", waitingTime(Math.max(clock.startEta - gone, 0), ready));
  } else if (el.dataset.status === "processing") {
    const starting = !clock.stepSeen;
    const progress = clock.progress || 0;
    el.classList.toggle("starting", starting);
    // A card whose model is downloading or loading says so (the server wrote it): left as it is.
    if (starting && !el.dataset.downloading && !el.dataset.loading) setText(el, "step", "Starting… the model may be loading, which can take a moment.");
    const left = remainingSeconds(clock, now);
    let text = "";
    if (starting) text = known(left) && left >= 4.5 ? timeLeft(left, progress) : "";
    else if (known(left)) text = left <= 0 && progress < 90 ? LATE_TEXT : timeLeft(Math.max(left, 0), progress);
    setText(el, "remaining", text);
  }
}

/** The tab shows the running jobs' progress, and a done mark until the page is looked at
 * again; it follows the cards at once (a hidden tab's timers may wait a minute). */
function showTitle() {
  let progress = null;
  document.querySelectorAll('.job-card[data-status="processing"]').forEach((el) => {
    progress = Math.max(progress ?? 0, clockFor(el.dataset.jobId).progress || 0);
  });
  let title = baseTitle;
  if (progress !== null) title = `(${progress}%) ${baseTitle}`;
  else if (doneMark) title = `✓ ${baseTitle}`;
  if (baseTitle && document.title !== title) document.title = title;
}

function tick() {
  const now = Date.now();
  document.querySelectorAll(".job-card").forEach((el) => tickCard(el, now));
  showTitle();
}

/** The conversation's title changed (its first prompt names it): the tab follows. */
export function setTitle(title) {
  baseTitle = `${title} · Imagegen`;
  showTitle();
}

// --- Cards -----------------------------------------------------------------------------

function nearBottom() {
  return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 80;
}

function scrollToNewest() {
  const last = [...document.querySelectorAll("#messages > .message")].pop();
  if (last) last.scrollIntoView({ block: "end" });
  window.scrollTo(0, document.documentElement.scrollHeight);
}

function replaceCard(current, html) {
  const fresh = fromHtml(html).querySelector(".job-card");
  if (!current || !fresh) return null;
  const stick = nearBottom();
  current.replaceWith(fresh);
  readCard(fresh);
  if (stick) scrollToNewest();
  return fresh;
}

const refreshing = new Map();
export async function refreshCard(jobId) {
  // One fetch at a time per card; a request during a fetch asks for one more.
  if (refreshing.has(jobId)) {
    refreshing.set(jobId, true);
    return;
  }
  refreshing.set(jobId, false);
  try {
    const { response, html } = await send(`/jobs/${jobId}/card/`);
    // A failed fetch is repaired by the snapshot on the next (re)connect.
    if (response && response.ok) replaceCard(card(jobId), html);
  } finally {
    const again = refreshing.get(jobId);
    refreshing.delete(jobId);
    if (again) refreshCard(jobId);
  }
}

// As generation.texts.images_ahead says it: the queue is everyone's.
function imagesAhead(position) {
  if (position === 1) return "Next in the shared queue.";
  const ahead = position - 1;
  return `${ahead} image${ahead === 1 ? "" : "s"} ahead of yours in the shared queue.`;
}

export function showPosition(el, position, startSeconds, doneSeconds) {
  if (known(position)) {
    setText(el, "position", `Position: ${position}`);
    setText(el, "ahead", imagesAhead(position));
  }
  setEta(el.dataset.jobId, startSeconds, doneSeconds);
  tickCard(el, Date.now());
}

function showProgress(el, event) {
  const clock = clockFor(el.dataset.jobId);
  const now = Date.now();
  const bar = el.querySelector("progress");
  if (bar) bar.value = event.progress;
  setText(el, "percent", `${event.progress}%`);
  clock.progress = event.progress;
  if (!clock.startedAt) clock.startedAt = now;
  if (event.step > 0) {
    clock.stepSeen = true;
    clock.last = { at: now, progress: event.progress };
    if (!clock.first) clock.first = clock.last;
  }
  if (event.total && event.step > 0) setText(el, "step", `Step ${event.step} of ${event.total}`);
  tickCard(el, now);
  showTitle();
}

export function notifyDone(event) {
  if (document.hidden) doneMark = true;
  if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
  try {
    const text = event.type === "job.complete" ? "Your image is ready." : "An image could not be made.";
    new Notification(text, { body: baseTitle, tag: `job-${event.job_id}` });
  } catch (error) {
    // Some browsers only allow notifications from a service worker; the tab title still shows it.
  }
}

// Events can outrun the answer to the POST that made a card (a fast worker claims
// the job first): what arrives for a job without a card is kept for a while, and
// applied when its card is added.
const early = new Map();
export function keepEarly(jobId, what) {
  const seen = early.get(String(jobId)) || {};
  early.set(String(jobId), { ...seen, ...what });
  while (early.size > 200) early.delete(early.keys().next().value);
}

function applyEarly(el) {
  const seen = early.get(el.dataset.jobId);
  if (!seen) return;
  early.delete(el.dataset.jobId);
  if (seen.changed) refreshCard(el.dataset.jobId);
  else if (seen.position && el.dataset.status === "queued") {
    const job = seen.position;
    showPosition(el, job.position, job.estimated_start_seconds, job.estimated_seconds);
  }
}

/** Messages (and their cards) the server rendered for a submit: added at the end. */
export function addMessages(html) {
  const empty = document.getElementById("empty-state");
  empty?.setAttribute("hidden", "");
  empty?.insertAdjacentHTML("beforebegin", html);
  document.querySelectorAll(".job-card").forEach((el) => {
    if (clocks.has(el.dataset.jobId)) return;
    readCard(el);
    applyEarly(el);
  });
  scrollToNewest();
}

// --- What the live events change (socket.js says which event does what) ---------------

/** A running job as a snapshot has it: its ETA, and progress that never goes back. */
export function showRunning(el, job) {
  setEta(job.job_id, null, job.estimated_seconds);
  const clock = clockFor(String(job.job_id));
  showProgress(el, { progress: Math.max(job.progress, clock.progress || 0), step: 0 });
}

export function applyProgress(el, event) {
  if (el.dataset.status !== "processing") {
    clockFor(String(event.job_id)).startedAt = Date.now();
    refreshCard(event.job_id);
  } else showProgress(el, event);
}

export function showPreview(el, image) {
  const img = role(el, "preview");
  if (img) Object.assign(img, { src: image, hidden: false });
}

// --- Card buttons: cancel and retry swap the card; "again" adds a new one --------------

function errorsIn(html) {
  const holder = fromHtml(html);
  const texts = [...holder.querySelectorAll(".errorlist li")].map((li) => li.textContent.trim());
  return texts.join(" ") || "The request was refused.";
}

async function onSubmit(event) {
  const form = event.target;
  if (form.matches("[data-confirm]") && !confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  if (!form.matches("[data-live], [data-submit]")) return;
  event.preventDefault();
  const current = form.closest(".job-card, .job-group");
  const buttons = form.querySelectorAll("button");
  buttons.forEach((button) => (button.disabled = true));
  const { response, html, error } = await send(form.action, { method: "POST", body: new FormData(form) });
  buttons.forEach((button) => (button.disabled = false));
  if (error) return showNotice(current, OFFLINE_TEXT);
  if (form.matches("[data-submit]")) {
    if (response.status === 201) return addMessages(html);
    return showNotice(current, response.status === 400 ? errorsIn(html) : `Sorry, that did not work (error ${response.status}).`);
  }
  if (response.ok || response.status === 409) {
    const fresh = replaceCard(current, html);
    if (response.headers.get("X-Error")) showNotice(fresh, response.headers.get("X-Error"));
  } else {
    showNotice(current, `Sorry, that did not work (error ${response.status}). Please try again.`);
  }
}

/** The cards on the page come alive: their clocks tick and their buttons answer in place. */
export function startCards() {
  baseTitle = document.title;
  document.addEventListener("submit", onSubmit);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      doneMark = false;
      tick();
    }
  });
  document.querySelectorAll(".job-card").forEach(readCard);
  if (!location.hash) scrollToNewest();
  setInterval(tick, 1000);
  tick();
}
