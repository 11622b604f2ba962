// The page's one WebSocket: it reconnects with backoff, says when the page is offline,
// and hands each event to the cards it concerns. On every (re)connect the server sends
// a snapshot, which repairs whatever was missed while disconnected.
import * as cards from "./cards.js";

let attempt = 0;
// The highest queue version applied (from a queue.positions or a snapshot): an older
// queue.positions that arrives late must not overwrite newer positions.
let queueVersion = null;

// A snapshot at version V was read after broadcast V: that broadcast is no newer.
function newerQueue(version) {
  if (!cards.known(version)) return true;
  if (queueVersion !== null && version <= queueVersion) return false;
  queueVersion = version;
  return true;
}

function applyPositions(jobs) {
  for (const job of jobs) {
    const el = cards.card(job.job_id);
    if (!el) cards.keepEarly(job.job_id, { position: job });
    if (el && el.dataset.status === "queued") {
      cards.showPosition(el, job.position, job.estimated_start_seconds, job.estimated_seconds);
    }
  }
}

// A card the page shows as pending whose status differs from the server's is
// fetched again; any other pending card the snapshot no longer lists has finished.
function applySnapshot(jobs) {
  const listed = new Set();
  for (const job of jobs) {
    listed.add(String(job.job_id));
    const el = cards.card(job.job_id);
    if (!el) continue;
    if (el.dataset.status !== job.status) {
      cards.refreshCard(job.job_id);
    } else if (job.status === "queued") {
      cards.showPosition(el, job.position, job.estimated_start_seconds, job.estimated_seconds);
    } else {
      cards.showRunning(el, job);
    }
  }
  document.querySelectorAll(".job-card").forEach((el) => {
    const pending = el.dataset.status === "queued" || el.dataset.status === "processing";
    if (pending && !listed.has(el.dataset.jobId)) cards.refreshCard(el.dataset.jobId);
  });
}

function showService(notice, service) {
  if (!notice || !service) return;
  notice.textContent = service.message;
  notice.hidden = !service.message;
}

function apply(event, page) {
  if (event.type === "snapshot") {
    // A snapshot is the whole truth at the moment it was made: it sets the version.
    if (cards.known(event.version)) queueVersion = event.version;
    applySnapshot(event.jobs);
    return showService(page.notice, event.service);
  }
  if (event.type === "queue.positions") return newerQueue(event.version) && applyPositions(event.jobs);
  if (event.type === "service.status") return showService(page.notice, event);
  if (event.type === "error") return console.warn("Live updates:", event.message);
  const el = cards.card(event.job_id);
  if (!el) {
    // A job of another conversation, or one whose card is on its way.
    if (event.type !== "job.preview" && event.type !== "job.queued") cards.keepEarly(event.job_id, { changed: true });
    return;
  }
  switch (event.type) {
    case "job.progress":
      cards.applyProgress(el, event);
      break;
    case "job.downloading":
    case "job.loading":
      cards.refreshCard(event.job_id);
      break;
    case "job.preview":
      cards.showPreview(el, event.image);
      break;
    case "job.complete":
    case "job.error":
      if (el.dataset.status !== event.status) cards.notifyDone(event);
      cards.refreshCard(event.job_id);
      break;
    case "job.queued":
    case "job.cancelled":
      if (el.dataset.status !== event.status || event.type !== "job.queued") cards.refreshCard(event.job_id);
      break;
  }
}

function setOnline(page, online) {
  if (page.banner) page.banner.hidden = online;
  page.root.classList.toggle("offline", !online);
}

/** Connect, and reconnect whenever the connection drops.
 *
 * `page`: the conversation's `root`, the offline `banner` and the service `notice`. */
export function connect(page) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/events/`);
  socket.addEventListener("open", () => {
    attempt = 0;
    setOnline(page, true);
  });
  socket.addEventListener("message", (message) => {
    try {
      apply(JSON.parse(message.data), page);
    } catch (error) {
      console.warn("Could not apply a live update", error);
    }
  });
  socket.addEventListener("close", () => {
    setOnline(page, false);
    // Exponential backoff with jitter, capped at 10 s.
    const delay = Math.min(10000, 500 * 2 ** attempt) * (0.5 + Math.random() / 2);
    attempt += 1;
    setTimeout(() => connect(page), delay);
  });
}
