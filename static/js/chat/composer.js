// The prompt form: sent with fetch, with a live character count and a one-line summary
// of the settings that differ from the model's defaults; and the cards' "Copy prompt"
// and "Use these settings", which take a card's prompt and settings back.
import { addMessages, fromHtml, known, role, send, setTitle, showNotice } from "./cards.js";
import { bindSourceBox, clearSource } from "./editing.js";
import { bindLoraPicker } from "./loras.js";

const FIELDS = ["prompt", "negative_prompt", "model", "width", "height", "steps", "guidance", "seed", "scheduler", "schedule", "count"];
let lastPrompt = "";

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
  if (differs("width") || differs("height")) {
    parts.push(`${field("width").value || field("width").dataset.default}×${field("height").value || field("height").dataset.default}`);
  }
  if (differs("steps")) parts.push(`${field("steps").value} steps`);
  if (differs("guidance")) parts.push(`CFG ${field("guidance").value}`);
  if (differs("scheduler")) parts.push(field("scheduler").selectedOptions[0]?.textContent || field("scheduler").value);
  if (differs("schedule")) parts.push(field("schedule").selectedOptions[0]?.textContent || field("schedule").value);
  if (differs("model")) parts.push(field("model").value);
  const loras = field("loras")?.value.trim();
  if (loras) parts.push(`LoRA ${loras.split(/\s+/).join(", ")}`);
  if (differs("count")) parts.push(`${field("count").value} images`);
  if (field("seed")?.value.trim()) parts.push(`seed ${field("seed").value.trim()}`);
  if (field("negative_prompt")?.value.trim()) parts.push("negative prompt");
  const summary = role(form, "settings-summary");
  if (summary) {
    const d = (name) => field(name)?.dataset.default;
    summary.textContent = parts.length
      ? `· ${parts.join(" · ")}`
      : `· defaults (${d("width")}×${d("height")}, ${d("steps")} steps, CFG ${d("guidance")})`;
  }
  showSize(form);
}

// The Size list next to the prompt: a preset, or "Custom" when the panel's width and
// height are another size (the model's default, one typed or one a card's settings gave).
function showSize(form) {
  const choice = role(form, "size-choice");
  if (!choice) return;
  const value = (name) => form.elements[name].value || form.elements[name].dataset.default;
  const size = `${value("width")}x${value("height")}`;
  const preset = [...choice.options].some((option) => option.value === size);
  choice.value = preset ? size : "custom";
  const custom = choice.querySelector('option[value="custom"]');
  custom.textContent = preset ? "Custom…" : `${size.replace("x", "×")} (custom)`;
}

function bindSizeChoice(form) {
  const choice = role(form, "size-choice");
  choice?.addEventListener("change", () => {
    if (choice.value === "custom") {
      // The exact size is typed in the panel.
      const panel = form.querySelector("details.advanced");
      panel.open = true;
      form.elements.width.focus();
      return;
    }
    const [width, height] = choice.value.split("x");
    fillForm(form, { width, height });
  });
}

// The settings are remembered for the person (server-side), so the next page, in any
// conversation, starts from them; a change is sent once the person pauses.
let rememberTimer = null;

function remember(form) {
  clearTimeout(rememberTimer);
  rememberTimer = setTimeout(() => {
    const body = new FormData();
    for (const name of [...FIELDS, "loras"]) {
      const field = form.elements[name];
      if (field && name !== "prompt" && name !== "seed") body.set(name, field.value);
    }
    body.set("csrfmiddlewaretoken", form.elements.csrfmiddlewaretoken.value);
    // A setting that is not valid yet is not remembered; the form says why on sending.
    send(form.dataset.settingsUrl, { method: "POST", body });
  }, 400);
}

function fillForm(form, params) {
  for (const name of FIELDS) {
    const field = form.elements[name];
    if (field && known(params[name])) field.value = params[name];
  }
  // A card's settings without LoRAs clear the chosen ones.
  if ("loras" in params && form.elements.loras) form.elements.loras.value = params.loras || "";
  form.dispatchEvent(new Event("settings-filled"));
  updateCounter(form);
  updateSummary(form);
}

// The Sampler and Schedule lists offer what the model's family runs: a sampler it does
// not run moves to its default, a schedule the sampler does not take to Automatic.
function offerSamplers(form, limits) {
  const sampler = form.elements.scheduler;
  const schedule = form.elements.schedule;
  if (!sampler || !limits?.schedulers) return;
  for (const option of sampler.options) option.hidden = option.disabled = !limits.schedulers.includes(option.value);
  if (!limits.schedulers.includes(sampler.value)) sampler.value = limits.default_scheduler;
  if (!schedule) return;
  const takes = limits.schedules[sampler.value] || ["automatic"];
  for (const option of schedule.options) option.hidden = option.disabled = !takes.includes(option.value);
  if (!takes.includes(schedule.value)) schedule.value = "automatic";
}

// Another model: its family's sizes, steps, guidance and sampler. A setting the person
// changed from the previous model's default is kept; the bounds follow the model.
function bindModelChoice(form) {
  const select = form.elements.model;
  if (!select?.dataset.limits) return;
  const every = JSON.parse(select.dataset.limits);
  let previous = every[select.value];
  const offer = () => offerSamplers(form, every[select.value]);
  offer();
  form.elements.scheduler?.addEventListener("change", offer);
  form.addEventListener("settings-filled", offer);
  select.addEventListener("change", () => {
    const limits = every[select.value];
    if (!limits || !previous) return;
    for (const [name, value] of Object.entries(limits.defaults)) {
      const field = form.elements[name];
      if (!field) continue;
      const before = previous.defaults[name];
      const untouched = field.value === "" || field.value === String(before) || Number(field.value) === before;
      if (untouched) field.value = value;
      field.dataset.default = value;
    }
    for (const name of ["width", "height"]) {
      Object.assign(form.elements[name], { min: limits.min_size, max: limits.max_size, step: limits.size_step });
    }
    const negative = form.elements.negative_prompt;
    if (negative) negative.disabled = !limits.negative_prompt;
    offer();
    previous = limits;
    updateSummary(form);
  });
}

// An instruction-edit model (Flux Kontext) edits the newest finished image with the
// prompt, unless the person asks for a new image or brings one of their own.
let followUpOff = false;

function followUpSource(form) {
  const limits = JSON.parse(form.elements.model?.dataset.limits || "{}")[form.elements.model?.value];
  if (!limits?.instruction || followUpOff || form.elements.image?.files.length) return null;
  const done = [...document.querySelectorAll('.job-card[data-status="complete"]')];
  return done.length ? done[done.length - 1].dataset.jobId : null;
}

function showFollowUp(form) {
  const note = role(form, "follow-up");
  if (!note) return;
  const source = followUpSource(form);
  note.hidden = !source;
  if (source) {
    const link = role(form, "follow-up-link");
    link.href = `#job-${source}`;
    link.textContent = `image ${source}`;
  }
}

function bindFollowUp(form) {
  role(form, "follow-up-off")?.addEventListener("click", () => {
    followUpOff = true;
    showFollowUp(form);
  });
  form.addEventListener("change", () => showFollowUp(form));
  const messages = document.getElementById("messages");
  if (messages) new MutationObserver(() => showFollowUp(form)).observe(messages, { childList: true, subtree: true });
  showFollowUp(form);
}

function showTitle(response) {
  const title = response.headers.get("X-Conversation-Title");
  if (!title) return;
  const decoded = decodeURIComponent(title);
  const input = document.getElementById("conversation-title");
  if (input && document.activeElement !== input) input.value = decoded;
  setTitle(decoded);
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
  // The size list sets the size itself (bindSizeChoice); the summary follows from there.
  const own = (event) => event.target === input || event.target.dataset.role === "size-choice";
  form.addEventListener("input", (event) => own(event) || updateSummary(form));
  form.addEventListener("change", (event) => own(event) || updateSummary(form));
  bindModelChoice(form);
  bindLoraPicker(form);
  bindSizeChoice(form);
  if (form.dataset.settingsUrl) {
    form.addEventListener("change", (event) => event.target !== input && remember(form));
    form.addEventListener("settings-filled", () => remember(form));
  }
  updateCounter(form);
  updateSummary(form);
  bindSourceBox(form);
  bindFollowUp(form);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const tooLong = updateCounter(form);
    if (tooLong) {
      const limit = input.dataset.maxLength;
      // One message about the prompt at a time: an earlier refusal's ("describe the image") is stale.
      form.querySelector(".prompt-row")?.classList.remove("has-error");
      form.querySelector(".prompt-row + .errorlist")?.remove();
      input.removeAttribute("aria-invalid");
      formNotice(form, `The prompt has ${tooLong} characters; the limit is ${limit}. Please shorten it by ${tooLong - limit}.`);
      role(form, "form-notice").dataset.kind = "length";
      input.focus();
      return;
    }
    const button = form.querySelector('[data-testid="submit-button"]');
    button.disabled = true;
    const body = new FormData(form);
    const followUp = followUpSource(form);
    if (followUp) body.set("source_job", followUp);
    if (form.elements.image?.files.length || followUp) {
      // An edit keeps its image's shape unless the size was set by hand.
      for (const name of ["width", "height"]) {
        if (form.elements[name].value === form.elements[name].dataset.default) body.delete(name);
      }
    }
    const { response, html, error } = await send(form.action, { method: "POST", body });
    button.disabled = false;
    if (error) {
      formNotice(form, "Could not reach the server. Your prompt is still here; please send it again in a moment.");
    } else if (response.status === 201) {
      lastPrompt = input.value.trim();
      input.value = "";
      clearSource(form);
      followUpOff = false;
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
    } else if ((response.status === 400 || response.status === 503) && html.includes('id="prompt-form"')) {
      // Refused (400), or the server could not reach its database (503): the form comes
      // back with the prompt in it and the reason on it.
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

// The form is looked up on every click: a refused prompt replaces it with a fresh one.
async function onAction(event) {
  const button = event.target.closest('[data-action="copy"], [data-action="reuse"]');
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
}

/** The composer (when the page has one) and the cards' copy and reuse buttons. */
export function bindComposer(form) {
  // Up in an empty composer brings back the last prompt, from before a reload too.
  lastPrompt = [...document.querySelectorAll(".message.role-user .content")].pop()?.textContent || "";
  if (form) bindPromptForm(form);
  document.addEventListener("click", onAction);
}
