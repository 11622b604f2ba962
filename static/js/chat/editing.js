// Keep working on an image: the composer's "start from an image" (pick, drop or paste),
// and the viewer's inpainting (paint a mask with a mouse, a pen or a finger, then say
// what goes there). The cards' Vary, Upscale and Edit are plain forms (cards.js sends them).
import { addMessages, fromHtml, send } from "./cards.js";

const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp"];

// --- The composer: start from your own image -------------------------------------------

function showSource(form) {
  const input = form.elements.image;
  const file = input?.files?.[0];
  const box = form.querySelector('[data-role="source-box"]');
  if (!box) return;
  const chosen = box.querySelector('[data-role="source-chosen"]');
  const thumb = box.querySelector('[data-role="source-thumb"]');
  const strength = box.querySelector('input[name="strength"]');
  if (thumb.src) URL.revokeObjectURL(thumb.src);
  chosen.hidden = !file;
  strength.disabled = !file; // a new image from the prompt sends no strength
  if (file) {
    thumb.src = URL.createObjectURL(file);
    box.querySelector('[data-role="source-name"]').textContent = file.name || "pasted image";
  } else thumb.removeAttribute("src");
}

function takeFile(form, file) {
  if (!file || !IMAGE_TYPES.includes(file.type)) return false;
  const transfer = new DataTransfer();
  transfer.items.add(file);
  form.elements.image.files = transfer.files;
  showSource(form);
  return true;
}

/** The composer takes an image picked, dropped on it or pasted into it. */
export function bindSourceBox(form) {
  const input = form?.elements.image;
  if (!input) return;
  input.addEventListener("change", () => showSource(form));
  form.querySelector('[data-role="source-clear"]')?.addEventListener("click", () => {
    input.value = "";
    showSource(form);
  });
  form.addEventListener("dragover", (event) => {
    if ([...event.dataTransfer.types].includes("Files")) {
      event.preventDefault();
      form.classList.add("dropping");
    }
  });
  form.addEventListener("dragleave", () => form.classList.remove("dropping"));
  form.addEventListener("drop", (event) => {
    form.classList.remove("dropping");
    if (takeFile(form, event.dataTransfer.files[0])) event.preventDefault();
  });
  form.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((item) => IMAGE_TYPES.includes(item.type));
    if (file && takeFile(form, file)) event.preventDefault();
  });
  showSource(form);
}

/** After a prompt is sent the image goes too: the next prompt starts from nothing. */
export function clearSource(form) {
  if (form?.elements.image) {
    form.elements.image.value = "";
    showSource(form);
  }
}

// --- The viewer: paint a mask, then inpaint ----------------------------------------------

class MaskPainter {
  constructor(canvas) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.history = [];
    this.erasing = false;
    this.size = 24;
    this.drawing = null;
    canvas.addEventListener("pointerdown", (event) => this.start(event));
    canvas.addEventListener("pointermove", (event) => this.move(event));
    for (const name of ["pointerup", "pointercancel", "lostpointercapture"]) {
      canvas.addEventListener(name, () => this.end());
    }
  }

  reset(width, height) {
    Object.assign(this.canvas, { width, height });
    this.history = [];
    this.painted = false;
  }

  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) / box.width) * this.canvas.width,
      y: ((event.clientY - box.top) / box.height) * this.canvas.height,
      scale: this.canvas.width / box.width,
    };
  }

  start(event) {
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    this.history.push(this.context.getImageData(0, 0, this.canvas.width, this.canvas.height));
    if (this.history.length > 30) this.history.shift();
    this.drawing = this.point(event);
    this.dab(this.drawing, this.drawing);
  }

  move(event) {
    if (!this.drawing) return;
    event.preventDefault();
    const next = this.point(event);
    this.dab(this.drawing, next);
    this.drawing = next;
  }

  end() {
    this.drawing = null;
  }

  dab(from, to) {
    const ctx = this.context;
    ctx.globalCompositeOperation = this.erasing ? "destination-out" : "source-over";
    ctx.strokeStyle = "rgba(255, 64, 160, 1)";
    ctx.lineWidth = this.size * to.scale;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x + 0.01, to.y);
    ctx.stroke();
    this.painted = true;
  }

  undo() {
    const last = this.history.pop();
    if (last) this.context.putImageData(last, 0, 0);
  }

  clear() {
    this.history.push(this.context.getImageData(0, 0, this.canvas.width, this.canvas.height));
    this.context.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  isEmpty() {
    const { data } = this.context.getImageData(0, 0, this.canvas.width, this.canvas.height);
    for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) return false;
    return true;
  }

  blob() {
    return new Promise((resolve) => this.canvas.toBlob(resolve, "image/png"));
  }
}

/** The viewer's inpainting tools; `current()` is the link of the image shown. */
export function bindInpainting(dialog, current, closeViewer) {
  const part = (name) => dialog.querySelector(`[data-role="${name}"]`);
  const panel = part("inpaint-panel");
  const canvas = part("mask");
  if (!panel || !canvas) return () => {};
  const painter = new MaskPainter(canvas);
  const tools = part("inpaint-tools");
  const image = part("image");
  let source = null;

  // The mask lies exactly over the picture: both get the same on-screen size.
  function fit() {
    if (!source) return;
    const frame = image.parentElement.getBoundingClientRect();
    const scale = Math.min(frame.width / canvas.width, frame.height / canvas.height);
    for (const el of [image, canvas]) {
      el.style.width = `${Math.floor(canvas.width * scale)}px`;
      el.style.height = `${Math.floor(canvas.height * scale)}px`;
    }
  }

  function open() {
    const link = current();
    if (!link?.dataset.jobId) return;
    source = link;
    painter.reset(Number(link.dataset.width), Number(link.dataset.height));
    panel.hidden = false;
    canvas.hidden = false;
    dialog.classList.add("inpainting");
    part("inpaint-error").hidden = true;
    const prompt = part("inpaint-prompt");
    prompt.value = link.dataset.prompt || "";
    setMode(false);
    fit();
  }

  function close() {
    panel.hidden = true;
    canvas.hidden = true;
    dialog.classList.remove("inpainting");
    source = null;
    for (const el of [image, canvas]) el.style.width = el.style.height = "";
  }

  function setMode(erasing) {
    painter.erasing = erasing;
    part("brush").setAttribute("aria-pressed", String(!erasing));
    part("eraser").setAttribute("aria-pressed", String(erasing));
  }

  function fail(text) {
    const target = part("inpaint-error");
    target.textContent = text;
    target.hidden = false;
  }

  part("brush").addEventListener("click", () => setMode(false));
  part("eraser").addEventListener("click", () => setMode(true));
  part("brush-size").addEventListener("input", (event) => (painter.size = Number(event.target.value)));
  part("undo").addEventListener("click", () => painter.undo());
  part("clear").addEventListener("click", () => painter.clear());
  part("inpaint-cancel").addEventListener("click", close);
  tools.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!source) return;
    if (painter.isEmpty()) return fail("Paint over the part of the image to change first.");
    const composer = document.getElementById("prompt-form");
    const body = new FormData(tools);
    body.set("csrfmiddlewaretoken", composer.elements.csrfmiddlewaretoken.value);
    body.set("source_job", source.dataset.jobId);
    body.set("kind", "inpaint");
    body.set("mask", await painter.blob(), "mask.png");
    const button = tools.querySelector('button[type="submit"]');
    button.disabled = true;
    const { response, html, error } = await send(composer.action, { method: "POST", body });
    button.disabled = false;
    if (error) return fail("Could not reach the server. Your mask is still here; please try again.");
    if (response.status === 201) {
      close();
      closeViewer();
      addMessages(html);
      return;
    }
    const reasons = [...fromHtml(html).querySelectorAll(".errorlist li")].map((li) => li.textContent.trim());
    fail(reasons.join(" ") || `Sorry, that did not work (error ${response.status}).`);
  });
  dialog.addEventListener("close", close);
  window.addEventListener("resize", fit);
  return open;
}
