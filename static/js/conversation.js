// The conversation page: live job cards, the composer, the image viewer.
//
// One WebSocket per page. Small events (positions, progress, preview) update the card
// in place; a change of state fetches the card again from the server, so the page and
// the live updates render the same template. On every (re)connect the server sends a
// snapshot, which repairs whatever was missed while disconnected. Every request goes
// through `send()`, which never throws: a failure becomes a notice the user can read.
(() => {
  "use strict";

  const root = document.querySelector("[data-conversation-id]");
  if (!root) return;
  const notice = document.getElementById("service-notice");
  const connection = document.getElementById("connection-status");
  let baseTitle = document.title;
  let attempt = 0;
  // The highest queue version applied (from a queue.positions or a snapshot): an older
  // queue.positions that arrives late must not overwrite newer positions.
  let queueVersion = null;
  let doneMark = false;

  const card = (jobId) => document.getElementById(`job-${jobId}`);
  const role = (el, name) => el.querySelector(`[data-role="${name}"]`);
  const known = (value) => value !== null && value !== undefined && value !== "";

  function duration(seconds) {
    if (!known(seconds)) return "";
    seconds = Math.max(Math.round(seconds), 0);
    if (seconds < 5) return "a few seconds";
    // Coarse steps, so the countdown does not chatter for screen readers.
    if (seconds < 90) return `about ${Math.ceil(seconds / 5) * 5} s`;
    if (seconds < 5400) return `about ${Math.round(seconds / 60)} min`;
    return `about ${Math.round(seconds / 360) / 10} h`;
  }

  function setText(el, name, text) {
    const target = role(el, name);
    if (target && target.textContent !== text) target.textContent = text;
  }

  function showNotice(el, text, kind = "") {
    const target = el && role(el, "notice");
    if (!target) return;
    target.textContent = text;
    target.className = `card-notice ${kind}`.trim();
    target.hidden = !text;
  }

  // --- Requests ------------------------------------------------------------------------

  const FETCH_HEADERS = { "X-Requested-With": "fetch" };
  const OFFLINE_TEXT = "Could not reach the server. Nothing was changed; please try again in a moment.";

  /** fetch that never throws: {response} or {error}. */
  async function send(url, options = {}) {
    try {
      const response = await fetch(url, { ...options, headers: FETCH_HEADERS });
      return { response, html: await response.text() };
    } catch (error) {
      return { error };
    }
  }

  function fromHtml(html) {
    const holder = document.createElement("div");
    holder.innerHTML = html.trim();
    return holder;
  }

  // --- Clocks: ETAs count down and time remaining is estimated between events ----------

  // job id -> what the page knows, with the moment (ms) it learnt it.
  const clocks = new Map();

  function clockFor(jobId) {
    if (!clocks.has(jobId)) clocks.set(jobId, {});
    return clocks.get(jobId);
  }

  function readCard(el) {
    const clock = clockFor(el.dataset.jobId);
    const now = Date.now();
    clock.progress = Number(el.dataset.progress || 0);
    if (known(el.dataset.elapsed)) clock.startedAt = now - Number(el.dataset.elapsed) * 1000;
    if (known(el.dataset.eta)) Object.assign(clock, { eta: Number(el.dataset.eta), etaAt: now });
    if (known(el.dataset.startEta)) clock.startEta = Number(el.dataset.startEta);
    if (clock.progress > 0) clock.stepSeen = true;
    tickCard(el, now);
  }

  function setEta(jobId, startSeconds, doneSeconds) {
    const clock = clockFor(String(jobId));
    if (known(doneSeconds)) Object.assign(clock, { eta: doneSeconds, etaAt: Date.now() });
    if (known(startSeconds)) clock.startEta = startSeconds;
  }

  function remainingSeconds(clock, now) {
    const p = clock.progress || 0;
    // Measured from this page's own observations once a few steps have passed...
    if (clock.rateFrom && p - clock.rateFrom.progress >= 5) {
      const perPercent = (now - clock.rateFrom.at) / 1000 / (p - clock.rateFrom.progress);
      return perPercent * (100 - p);
    }
    // ...else from the time since the job started (reload), else the server's estimate.
    if (clock.startedAt && p >= 5) return ((now - clock.startedAt) / 1000 / p) * (100 - p);
    if (known(clock.eta)) return clock.eta - (now - clock.etaAt) / 1000;
    return null;
  }

  function tickCard(el, now) {
    const clock = clockFor(el.dataset.jobId);
    if (el.dataset.status === "queued" && known(clock.eta) && known(clock.startEta)) {
      const gone = (now - clock.etaAt) / 1000;
      const start = clock.startEta - gone;
      const ready = duration(Math.max(clock.eta - gone, 0));
      setText(el, "eta", start > 0 ? `Starts in ${duration(start)}, ready in ${ready}` : `Starting soon, ready in ${ready}`);
    } else if (el.dataset.status === "processing") {
      const starting = !clock.stepSeen;
      el.classList.toggle("starting", starting);
      if (starting) setText(el, "step", "Starting… the model may be loading, which can take a moment.");
      const left = remainingSeconds(clock, now);
      if (starting) setText(el, "remaining", known(left) && left > 3 ? `About ${duration(left)} left` : "");
      else if (known(left)) setText(el, "remaining", left > 3 ? `About ${duration(left)} left` : "Almost done…");
    }
  }

  function tick() {
    const now = Date.now();
    let progress = null;
    document.querySelectorAll(".job-card").forEach((el) => {
      tickCard(el, now);
      if (el.dataset.status === "processing") {
        progress = Math.max(progress ?? 0, clockFor(el.dataset.jobId).progress || 0);
      }
    });
    // The tab shows progress, and a done mark until the page is looked at again.
    let title = baseTitle;
    if (progress !== null) title = `(${progress}%) ${baseTitle}`;
    else if (doneMark) title = `✓ ${baseTitle}`;
    if (document.title !== title) document.title = title;
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
  async function refreshCard(jobId) {
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

  function showPosition(el, position, startSeconds, doneSeconds) {
    if (known(position)) setText(el, "position", `Position: ${position}`);
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
      if (!clock.rateFrom) clock.rateFrom = { at: now, progress: event.progress };
    }
    if (event.total && event.step > 0) setText(el, "step", `Step ${event.step} of ${event.total}`);
    tickCard(el, now);
  }

  function showService(service) {
    if (!notice || !service) return;
    notice.textContent = service.message;
    notice.hidden = !service.message;
  }

  function notifyDone(event) {
    if (document.hidden) doneMark = true;
    if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
    try {
      const text = event.type === "job.complete" ? "Your image is ready." : "An image could not be made.";
      new Notification(text, { body: baseTitle, tag: `job-${event.job_id}` });
    } catch (error) {
      // Some browsers only allow notifications from a service worker; the tab title still shows it.
    }
  }

  // A snapshot at version V was read after broadcast V: that broadcast is no newer.
  function newerQueue(version) {
    if (!known(version)) return true;
    if (queueVersion !== null && version <= queueVersion) return false;
    queueVersion = version;
    return true;
  }

  // Events can outrun the answer to the POST that made a card (a fast worker claims
  // the job first): what arrives for a job without a card is kept for a while, and
  // applied when its card is added.
  const early = new Map();
  function keepEarly(jobId, what) {
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

  function applyPositions(event) {
    if (!newerQueue(event.version)) return;
    for (const job of event.jobs) {
      const el = card(job.job_id);
      if (!el) keepEarly(job.job_id, { position: job });
      if (el && el.dataset.status === "queued") {
        showPosition(el, job.position, job.estimated_start_seconds, job.estimated_seconds);
      }
    }
  }

  // A card the page shows as pending whose status differs from the server's is
  // fetched again; any other pending card the snapshot no longer lists has finished.
  function applySnapshot(event) {
    // A snapshot is the whole truth at the moment it was made: it sets the version.
    if (known(event.version)) queueVersion = event.version;
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
        setEta(job.job_id, null, job.estimated_seconds);
        const clock = clockFor(String(job.job_id));
        showProgress(el, { progress: Math.max(job.progress, clock.progress || 0), step: 0 });
      }
    }
    document.querySelectorAll(".job-card").forEach((el) => {
      const pending = el.dataset.status === "queued" || el.dataset.status === "processing";
      if (pending && !listed.has(el.dataset.jobId)) refreshCard(el.dataset.jobId);
    });
    showService(event.service);
  }

  function apply(event) {
    if (event.type === "snapshot") return applySnapshot(event);
    if (event.type === "queue.positions") return applyPositions(event);
    if (event.type === "service.status") return showService(event);
    if (event.type === "error") return console.warn("Live updates:", event.message);
    const el = card(event.job_id);
    if (!el) {
      // A job of another conversation, or one whose card is on its way.
      if (event.type !== "job.preview" && event.type !== "job.queued") keepEarly(event.job_id, { changed: true });
      return;
    }
    switch (event.type) {
      case "job.progress":
        if (el.dataset.status !== "processing") {
          clockFor(String(event.job_id)).startedAt = Date.now();
          refreshCard(event.job_id);
        } else showProgress(el, event);
        break;
      case "job.preview": {
        const img = role(el, "preview");
        if (img) {
          img.src = event.image;
          img.hidden = false;
        }
        break;
      }
      case "job.complete":
      case "job.error":
        if (el.dataset.status !== event.status) notifyDone(event);
        refreshCard(event.job_id);
        break;
      case "job.queued":
      case "job.cancelled":
        if (el.dataset.status !== event.status || event.type !== "job.queued") refreshCard(event.job_id);
        break;
    }
  }

  // --- The composer --------------------------------------------------------------------

  const FIELDS = ["prompt", "negative_prompt", "model", "width", "height", "steps", "guidance", "seed", "scheduler", "count"];
  let lastPrompt = [...document.querySelectorAll(".message.role-user .content")].pop()?.textContent || "";

  function formNotice(form, text) {
    const target = role(form, "form-notice");
    if (!target) return;
    target.textContent = text;
    target.hidden = !text;
  }

  function promptInput(form) {
    return form.querySelector('[data-testid="prompt-input"]');
  }

  function updateCounter(form) {
    const input = promptInput(form);
    const counter = form.querySelector(".counter");
    const limit = Number(input.dataset.maxLength);
    const length = input.value.trim().length;
    counter.textContent = `${length} / ${limit}`;
    counter.classList.toggle("over", length > limit);
    if (length <= limit && role(form, "form-notice").dataset.kind === "length") formNotice(form, "");
    return length <= limit ? null : length;
  }

  function updateSummary(form) {
    const parts = [];
    const field = (name) => form.elements[name];
    const differs = (name) => {
      const value = field(name)?.value.trim();
      const fallback = field(name)?.dataset.default;
      if (!value) return false;
      const [a, b] = [Number(value), Number(fallback)];
      return Number.isNaN(a) || Number.isNaN(b) ? value !== fallback : a !== b;
    };
    if (differs("width") || differs("height")) parts.push(`${field("width").value || 512}×${field("height").value || 512}`);
    if (differs("steps")) parts.push(`${field("steps").value} steps`);
    if (differs("guidance")) parts.push(`CFG ${field("guidance").value}`);
    if (differs("scheduler")) parts.push(field("scheduler").selectedOptions[0]?.textContent || field("scheduler").value);
    if (differs("model")) parts.push(field("model").value);
    if (differs("count")) parts.push(`${field("count").value} images`);
    if (field("seed")?.value.trim()) parts.push(`seed ${field("seed").value.trim()}`);
    if (field("negative_prompt")?.value.trim()) parts.push("negative prompt");
    const summary = role(form, "settings-summary");
    if (summary) summary.textContent = parts.length ? `· ${parts.join(" · ")}` : "· defaults (512×512, 20 steps, CFG 7)";
    form.querySelectorAll(".preset").forEach((preset) => {
      const active = preset.dataset.width === field("width").value && preset.dataset.height === field("height").value;
      preset.classList.toggle("active", active);
    });
  }

  function fillForm(form, params) {
    for (const name of FIELDS) {
      const field = form.elements[name];
      if (field && known(params[name])) field.value = params[name];
    }
    updateCounter(form);
    updateSummary(form);
  }

  function showTitle(response) {
    const title = response.headers.get("X-Conversation-Title");
    if (!title) return;
    const decoded = decodeURIComponent(title);
    baseTitle = `${decoded} · Imagegen`;
    const input = document.getElementById("conversation-title");
    if (input && document.activeElement !== input) input.value = decoded;
    tick();
  }

  function addMessages(html) {
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

  function bindPromptForm(form) {
    const input = promptInput(form);
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      } else if (event.key === "ArrowUp" && input.value === "" && lastPrompt) {
        event.preventDefault();
        input.value = lastPrompt;
        updateCounter(form);
      }
    });
    input.addEventListener("input", () => updateCounter(form));
    form.addEventListener("input", (event) => event.target !== input && updateSummary(form));
    form.addEventListener("change", () => updateSummary(form));
    form.querySelectorAll(".preset").forEach((preset) =>
      preset.addEventListener("click", () => fillForm(form, { width: preset.dataset.width, height: preset.dataset.height })),
    );
    updateCounter(form);
    updateSummary(form);

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const tooLong = updateCounter(form);
      if (tooLong) {
        const limit = input.dataset.maxLength;
        formNotice(form, `The prompt has ${tooLong} characters; the limit is ${limit}. Please shorten it by ${tooLong - limit}.`);
        role(form, "form-notice").dataset.kind = "length";
        input.focus();
        return;
      }
      const button = form.querySelector('[data-testid="submit-button"]');
      button.disabled = true;
      const { response, html, error } = await send(form.action, { method: "POST", body: new FormData(form) });
      button.disabled = false;
      if (error) {
        formNotice(form, "Could not reach the server. Your prompt is still here; please send it again in a moment.");
      } else if (response.status === 201) {
        lastPrompt = input.value.trim();
        input.value = "";
        formNotice(form, "");
        // The open settings would cover the conversation; the summary shows what is set.
        form.querySelector("details.advanced")?.removeAttribute("open");
        form.querySelectorAll(".errorlist, .form-errors").forEach((el) => el.remove());
        form.querySelectorAll(".has-error").forEach((el) => el.classList.remove("has-error"));
        form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
        updateCounter(form);
        showTitle(response);
        addMessages(html);
        input.focus();
      } else if (response.status === 400 && html.includes('id="prompt-form"')) {
        const fresh = fromHtml(html).querySelector("form");
        form.replaceWith(fresh);
        bindPromptForm(fresh);
        // Focus the first field that is wrong, in the order the form shows them.
        const bad = fresh.querySelector('[aria-invalid="true"], .has-error textarea, .has-error input, .has-error select');
        (bad || promptInput(fresh)).focus();
      } else {
        formNotice(form, `Sorry, the prompt could not be sent (error ${response.status}). Please try again.`);
      }
    });
  }

  const promptForm = document.getElementById("prompt-form");
  if (promptForm) bindPromptForm(promptForm);

  // --- Card buttons: cancel and retry swap the card; "again" adds a new one -----------

  function errorsIn(html) {
    const holder = fromHtml(html);
    const texts = [...holder.querySelectorAll(".errorlist li")].map((li) => li.textContent.trim());
    return texts.join(" ") || "The request was refused.";
  }

  document.addEventListener("submit", async (event) => {
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
  });

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (error) {
      // No clipboard permission (or not a secure context): the old way.
      const area = Object.assign(document.createElement("textarea"), { value: text });
      document.body.append(area);
      area.select();
      const copied = document.execCommand("copy");
      area.remove();
      return copied;
    }
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-action]");
    if (!button) return;
    const current = button.closest(".job-card, .job-group");
    const params = JSON.parse(button.closest("[data-params]").dataset.params);
    const form = document.getElementById("prompt-form");
    if (button.dataset.action === "copy") {
      const copied = await copyText(params.prompt);
      showNotice(current, copied ? "Prompt copied." : "Could not copy; select the prompt above instead.", copied ? "ok" : "");
    } else if (button.dataset.action === "reuse" && form) {
      fillForm(form, params);
      showNotice(current, "Settings copied into the form below.", "ok");
      promptInput(form).focus();
    }
  });

  // --- The image viewer ----------------------------------------------------------------

  const viewer = document.querySelector("dialog.lightbox");
  let shown = 0;

  function viewerItems() {
    return [...document.querySelectorAll("a[data-lightbox]")];
  }

  function showImage(index) {
    const items = viewerItems();
    if (!items.length) return viewer.close();
    shown = Math.min(Math.max(index, 0), items.length - 1);
    const link = items[shown];
    role(viewer, "image").src = link.href;
    role(viewer, "image").alt = link.querySelector("img")?.alt || "";
    role(viewer, "download").href = link.dataset.download;
    role(viewer, "caption").textContent = link.dataset.caption;
    role(viewer, "count").textContent = `${shown + 1} of ${items.length}`;
    role(viewer, "prev").disabled = shown === 0;
    role(viewer, "next").disabled = shown === items.length - 1;
    role(viewer, "image").parentElement.classList.remove("zoomed");
    role(viewer, "zoom").textContent = "Zoom";
  }

  function toggleZoom() {
    const zoomed = role(viewer, "image").parentElement.classList.toggle("zoomed");
    role(viewer, "zoom").textContent = zoomed ? "Fit" : "Zoom";
  }

  if (viewer) {
    document.addEventListener("click", (event) => {
      const link = event.target.closest("a[data-lightbox]");
      if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      viewer.showModal();
      showImage(viewerItems().indexOf(link));
    });
    role(viewer, "prev").addEventListener("click", () => showImage(shown - 1));
    role(viewer, "next").addEventListener("click", () => showImage(shown + 1));
    role(viewer, "close").addEventListener("click", () => viewer.close());
    role(viewer, "zoom").addEventListener("click", toggleZoom);
    role(viewer, "image").addEventListener("click", toggleZoom);
    viewer.addEventListener("click", (event) => event.target === viewer && viewer.close());
    // On the document: a disabled button (the last image's "next") drops the focus out of the dialog.
    document.addEventListener("keydown", (event) => {
      if (!viewer.open) return;
      if (event.key === "ArrowLeft") showImage(shown - 1);
      else if (event.key === "ArrowRight") showImage(shown + 1);
      else if (event.key === "z") toggleZoom();
    });
    viewer.addEventListener("close", () => role(viewer, "image").removeAttribute("src"));
  }

  // --- Notifications, opt-in -----------------------------------------------------------

  const notifyButton = document.querySelector('[data-role="notify"]');
  if (notifyButton && "Notification" in window && Notification.permission === "default") {
    notifyButton.hidden = false;
    notifyButton.addEventListener("click", async () => {
      try {
        const answer = await Notification.requestPermission();
        notifyButton.textContent = answer === "granted" ? "Notifications on" : "Notifications blocked";
      } catch (error) {
        notifyButton.textContent = "Notifications unavailable";
      }
      notifyButton.disabled = true;
    });
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      doneMark = false;
      tick();
    }
  });

  // --- Live updates --------------------------------------------------------------------

  function setOnline(online) {
    if (connection) connection.hidden = online;
    root.classList.toggle("offline", !online);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/events/`);
    socket.addEventListener("open", () => {
      attempt = 0;
      setOnline(true);
    });
    socket.addEventListener("message", (message) => {
      try {
        apply(JSON.parse(message.data));
      } catch (error) {
        console.warn("Could not apply a live update", error);
      }
    });
    socket.addEventListener("close", () => {
      setOnline(false);
      // Exponential backoff with jitter, capped at 10 s.
      const delay = Math.min(10000, 500 * 2 ** attempt) * (0.5 + Math.random() / 2);
      attempt += 1;
      setTimeout(connect, delay);
    });
  }

  document.querySelectorAll(".job-card").forEach(readCard);
  if (!location.hash) scrollToNewest();
  setInterval(tick, 1000);
  tick();
  connect();
})();
