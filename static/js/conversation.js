// Live job cards on the conversation page.
//
// One WebSocket per page. Small events (position, progress, preview) update the card
// in place; a change of state fetches the card again from the server, so the page and
// the live updates render the same template. On every (re)connect the server sends a
// snapshot, which repairs whatever was missed while disconnected.
(() => {
  "use strict";

  const root = document.querySelector("[data-conversation-id]");
  if (!root) return;
  const notice = document.getElementById("service-notice");
  const connection = document.getElementById("connection-status");
  let attempt = 0;
  // The version of the newest queue positions applied; an older broadcast that
  // arrives late is ignored.
  let queueVersion = -1;

  const card = (jobId) => document.getElementById(`job-${jobId}`);

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    seconds = Math.max(Math.round(seconds), 0);
    if (seconds < 5) return "a few seconds";
    if (seconds < 90) return `about ${seconds} s`;
    if (seconds < 5400) return `about ${Math.round(seconds / 60)} min`;
    return `about ${Math.round(seconds / 360) / 10} h`;
  }

  function setText(el, role, text) {
    const target = el.querySelector(`[data-role="${role}"]`);
    if (target && target.textContent !== text) target.textContent = text;
  }

  const refreshing = new Map();
  async function refreshCard(jobId) {
    // One fetch at a time per card; a request during a fetch asks for one more.
    if (refreshing.has(jobId)) {
      refreshing.set(jobId, true);
      return;
    }
    refreshing.set(jobId, false);
    try {
      const response = await fetch(`/jobs/${jobId}/card/`, { headers: { "X-Requested-With": "fetch" } });
      const current = card(jobId);
      if (response.ok && current) {
        const holder = document.createElement("div");
        holder.innerHTML = (await response.text()).trim();
        current.replaceWith(holder.firstElementChild);
      }
    } finally {
      const again = refreshing.get(jobId);
      refreshing.delete(jobId);
      if (again) refreshCard(jobId);
    }
  }

  function showPosition(el, position, startSeconds, doneSeconds) {
    if (position !== null && position !== undefined) setText(el, "position", `Position: ${position}`);
    if (startSeconds !== null && startSeconds !== undefined) {
      setText(el, "eta", `Starts in ${duration(startSeconds)}, ready in ${duration(doneSeconds)}`);
    }
  }

  function showProgress(el, event) {
    const bar = el.querySelector("progress");
    if (bar) bar.value = event.progress;
    setText(el, "percent", `${event.progress}%`);
    if (event.total) setText(el, "step", `Step ${event.step} of ${event.total}`);
  }

  function showService(service) {
    if (!notice) return;
    notice.textContent = service.message;
    notice.hidden = !service.message;
  }

  // A card the page shows as pending whose status differs from the server's is
  // fetched again; any other pending card the snapshot no longer lists has finished.
  function applySnapshot(event) {
    queueVersion = Math.max(queueVersion, event.version);
    const listed = new Set();
    for (const job of event.jobs) {
      listed.add(String(job.job_id));
      const el = card(job.job_id);
      if (!el) continue;
      if (el.dataset.status !== job.status) {
        refreshCard(job.job_id);
      } else if (job.status === "queued") {
        showPosition(el, job.position, job.estimated_start_seconds, job.estimated_seconds);
      } else {
        showProgress(el, { progress: job.progress });
      }
    }
    document.querySelectorAll(".job-card").forEach((el) => {
      const pending = el.dataset.status === "queued" || el.dataset.status === "processing";
      if (pending && !listed.has(el.dataset.jobId)) refreshCard(el.dataset.jobId);
    });
    showService(event.service);
  }

  function applyPositions(event) {
    if (event.version <= queueVersion) return;
    queueVersion = event.version;
    for (const job of event.jobs) {
      const el = card(job.job_id);
      if (el && el.dataset.status === "queued") {
        showPosition(el, job.position, job.estimated_start_seconds, job.estimated_seconds);
      }
    }
  }

  function apply(event) {
    if (event.type === "snapshot") return applySnapshot(event);
    if (event.type === "queue.positions") return applyPositions(event);
    if (event.type === "service.status") return showService(event);
    if (event.type === "error") return console.warn("Live updates:", event.message);
    const el = card(event.job_id);
    if (!el) return; // a job of another conversation
    switch (event.type) {
      case "job.progress":
        if (el.dataset.status !== "processing") refreshCard(event.job_id);
        else showProgress(el, event);
        break;
      case "job.preview": {
        const img = el.querySelector('[data-role="preview"]');
        if (img) {
          img.src = event.image;
          img.hidden = false;
        }
        break;
      }
      case "job.queued":
      case "job.complete":
      case "job.error":
      case "job.cancelled":
        if (el.dataset.status !== event.status || event.type !== "job.queued") refreshCard(event.job_id);
        break;
    }
  }

  // --- Forms: the prompt posts without a reload; card buttons swap the card. -----------

  const csrfHeaders = { "X-Requested-With": "fetch" };

  function bindPromptForm(form) {
    const input = form.querySelector("#prompt-input");
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("#submit-button");
      button.disabled = true;
      try {
        const response = await fetch(form.action, { method: "POST", body: new FormData(form), headers: csrfHeaders });
        const html = await response.text();
        if (response.status === 201) {
          document.getElementById("empty-state")?.setAttribute("hidden", "");
          document.getElementById("empty-state")?.insertAdjacentHTML("beforebegin", html);
          input.value = "";
          form.querySelectorAll(".errorlist, .form-errors").forEach((el) => el.remove());
          form.querySelectorAll(".has-error").forEach((el) => el.classList.remove("has-error"));
          input.focus();
        } else if (response.status === 400) {
          const holder = document.createElement("div");
          holder.innerHTML = html.trim();
          const fresh = holder.firstElementChild;
          form.replaceWith(fresh);
          bindPromptForm(fresh);
          fresh.querySelector(".has-error input, .has-error select, #prompt-input")?.focus();
        } else {
          alert("Sorry, the prompt could not be sent. Please try again.");
        }
      } catch (error) {
        alert("The server could not be reached. Please try again.");
      } finally {
        button.disabled = false;
      }
    });
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (form.matches("[data-confirm]") && !confirm(form.dataset.confirm)) {
      event.preventDefault();
      return;
    }
    if (!form.matches("[data-live]")) return;
    event.preventDefault();
    const current = form.closest(".job-card");
    const response = await fetch(form.action, { method: "POST", body: new FormData(form), headers: csrfHeaders });
    if (response.headers.get("X-Error")) alert(response.headers.get("X-Error"));
    if (current && (response.ok || response.status === 409)) {
      const holder = document.createElement("div");
      holder.innerHTML = (await response.text()).trim();
      current.replaceWith(holder.firstElementChild);
    }
  });

  const promptForm = document.getElementById("prompt-form");
  if (promptForm) bindPromptForm(promptForm);

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/events/`);
    socket.addEventListener("open", () => {
      attempt = 0;
      if (connection) connection.hidden = true;
    });
    socket.addEventListener("message", (message) => {
      try {
        apply(JSON.parse(message.data));
      } catch (error) {
        console.error("Could not apply a live update", error);
      }
    });
    socket.addEventListener("close", () => {
      if (connection) connection.hidden = false;
      // Exponential backoff with jitter, capped at 15 s.
      const delay = Math.min(15000, 500 * 2 ** attempt) * (0.5 + Math.random() / 2);
      attempt += 1;
      setTimeout(connect, delay);
    });
  }

  connect();
})();
