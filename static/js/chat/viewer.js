// The image viewer, on a conversation and in the gallery: an image of the page opens full
// size in a dialog, with previous and next through every image of the page, zoom to
// actual size and the keyboard; beside it its settings and what can be done with it
// (copy its prompt, use its settings, vary, upscale, inpaint). Where the image's card is
// on the page those act as the card's own buttons do; elsewhere (the gallery) they go to
// the image's conversation: Vary and Upscale are sent from here, then the page follows.
import { copyText, flash } from "../copy.js";
import { bindInpainting } from "./editing.js";

const items = () => [...document.querySelectorAll("a[data-lightbox]")];
const cardOf = (link) => link && document.getElementById(`job-${link.dataset.jobId}`);
const paramsOf = (link) => JSON.parse(link.dataset.params || "{}");

/** The settings a card shows, as label and value. */
function settingsOf(link) {
  const params = paramsOf(link);
  const rows = [
    ["Model", params.model],
    ["Size", `${params.width}×${params.height}`],
    ["Steps", params.steps],
    [link.dataset.guidanceLabel || "CFG", params.guidance],
    ["Sampler", link.dataset.sampler],
    ["Seed", params.seed],
  ];
  if (params.loras) rows.push(["LoRAs", params.loras]);
  if (params.negative_prompt) rows.push(["Negative prompt", params.negative_prompt]);
  return rows.filter(([, value]) => value !== undefined && value !== null && value !== "");
}

function showSettings(list, link) {
  list.replaceChildren(
    ...settingsOf(link).map(([label, value]) => {
      const row = document.createElement("div");
      row.append(Object.assign(document.createElement("dt"), { textContent: label }));
      row.append(Object.assign(document.createElement("dd"), { textContent: String(value) }));
      return row;
    }),
  );
}

const typing = (target) => target.closest?.("input, textarea, select, [contenteditable]");

/** Shows the page's images in `dialog` (generation/_viewer.html). */
export function bindViewer(dialog) {
  const part = (name) => dialog.querySelector(`[data-role="${name}"]`);
  const image = part("image");
  const frame = image.parentElement;
  let shown = 0;

  const current = () => items()[shown];
  const inpaint = bindInpainting(dialog, current, () => dialog.close());

  function setZoom(zoomed) {
    frame.classList.toggle("zoomed", zoomed);
    part("zoom").textContent = zoomed ? "Fit" : "Zoom";
    part("zoom").setAttribute("aria-pressed", String(zoomed));
    if (zoomed) {
      // Centred when smaller than the frame; from its top left, scrollable, when larger.
      frame.scrollLeft = (frame.scrollWidth - frame.clientWidth) / 2;
      frame.scrollTop = (frame.scrollHeight - frame.clientHeight) / 2;
    }
  }

  function show(index) {
    const links = items();
    if (!links.length) return dialog.close();
    shown = Math.min(Math.max(index, 0), links.length - 1);
    const link = links[shown];
    setZoom(false);
    image.src = link.href;
    image.alt = link.querySelector("img")?.alt || "";
    part("download").href = link.dataset.download;
    part("caption").textContent = link.dataset.prompt || "";
    showSettings(part("settings"), link);
    part("count").textContent = `${shown + 1} of ${links.length}`;
    part("prev").disabled = shown === 0;
    part("next").disabled = shown === links.length - 1;
    // "Use these settings": composer.js fills the form from data-params (the card is here),
    // or the link goes to the image's conversation, which does the same there.
    part("reuse-actions").dataset.params = link.dataset.params || "{}";
    part("reuse").href = `${link.dataset.conversation}#reuse-${link.dataset.jobId}`;
    const edits = (link.dataset.edits || "").split(" ");
    dialog.querySelector('[data-viewer-edit="vary-subtle"]').hidden = !edits.includes("img2img");
    dialog.querySelector('[data-viewer-edit="upscale"]').hidden = !edits.includes("upscale");
    part("inpaint").hidden = !edits.includes("inpaint");
    part("edits").hidden = !edits.some(Boolean);
    const where = part("where");
    where.hidden = !link.dataset.conversationTitle;
    part("conversation").textContent = link.dataset.conversationTitle || "";
    part("conversation").href = link.dataset.conversation || "#";
  }

  function open(link) {
    if (!dialog.open) dialog.showModal();
    show(items().indexOf(link));
  }

  // Sent from the viewer when the image's card is not on the page: a plain form post,
  // which answers with the image's conversation, the new job at its end.
  function sendEdit(link, kind, strength) {
    const form = part("edit-form");
    const params = paramsOf(link);
    const fields = {
      source_job: link.dataset.jobId,
      prompt: params.prompt,
      negative_prompt: params.negative_prompt,
      model: params.model,
      steps: params.steps,
      guidance: params.guidance,
      scheduler: params.scheduler,
      schedule: params.schedule,
      loras: params.loras,
      kind,
    };
    if (strength) fields.strength = strength;
    form.querySelectorAll('input:not([name="csrfmiddlewaretoken"])').forEach((input) => input.remove());
    for (const [name, value] of Object.entries(fields)) {
      form.append(Object.assign(document.createElement("input"), { type: "hidden", name, value: value ?? "" }));
    }
    form.action = link.dataset.submit;
    form.submit();
  }

  dialog.querySelectorAll("[data-viewer-edit]").forEach((button) =>
    button.addEventListener("click", () => {
      const link = current();
      if (!link) return;
      const edit = button.dataset.viewerEdit;
      const form = cardOf(link)?.querySelector(`[data-edit="${edit}"]`)?.form;
      if (form) {
        dialog.close();
        form.requestSubmit();
      } else {
        const kind = edit === "upscale" ? "upscale" : "img2img";
        sendEdit(link, kind, kind === "img2img" ? dialog.dataset.varySubtle : null);
      }
    }),
  );
  part("inpaint").addEventListener("click", () => {
    const link = current();
    if (cardOf(link) && part("inpaint-panel")) inpaint();
    else if (link) location.assign(`${link.dataset.conversation}#inpaint-${link.dataset.jobId}`);
  });
  part("reuse").addEventListener("click", (event) => {
    // The card is on this page: the composer's own handler (on the document, after this
    // one) fills the form; the dialog closes first so that the prompt can take the focus.
    if (!cardOf(current()) || !document.getElementById("prompt-form")) return;
    event.preventDefault();
    dialog.close();
  });
  part("copy-prompt").addEventListener("click", async (event) => {
    const button = event.currentTarget;
    const copied = await copyText(current()?.dataset.prompt || "", button);
    flash(button, copied ? "Copied" : "Could not copy");
  });

  // A card's "Inpaint…" opens its image here, with the brush in hand.
  document.addEventListener("click", (event) => {
    const button = event.target.closest('[data-action="inpaint"]');
    if (!button) return;
    const link = items().find((item) => item.dataset.jobId === button.dataset.jobId);
    if (!link) return;
    open(link);
    inpaint();
  });

  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-lightbox]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    open(link);
  });
  part("prev").addEventListener("click", () => show(shown - 1));
  part("next").addEventListener("click", () => show(shown + 1));
  part("close").addEventListener("click", () => dialog.close());
  const toggleZoom = () => dialog.classList.contains("inpainting") || setZoom(!frame.classList.contains("zoomed"));
  part("zoom").addEventListener("click", toggleZoom);
  image.addEventListener("click", toggleZoom);
  dialog.addEventListener("click", (event) => event.target === dialog && dialog.close());
  // On the document: a disabled button (the last image's "next") drops the focus out of the dialog.
  document.addEventListener("keydown", (event) => {
    if (!dialog.open || typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "ArrowLeft") show(shown - 1);
    else if (event.key === "ArrowRight") show(shown + 1);
    else if (event.key === "z") toggleZoom();
  });
  dialog.addEventListener("close", () => image.removeAttribute("src"));

  // Arriving from the gallery: #reuse-<id> fills the form with that image's settings,
  // #inpaint-<id> opens it with the brush in hand.
  const [, action, jobId] = location.hash.match(/^#(reuse|inpaint)-(\d+)$/) || [];
  const link = jobId && items().find((item) => item.dataset.jobId === jobId);
  if (link) {
    history.replaceState(null, "", location.pathname + location.search);
    if (action === "inpaint") {
      open(link);
      inpaint();
    } else {
      shown = items().indexOf(link);
      part("reuse-actions").dataset.params = link.dataset.params;
      part("reuse").click();
    }
  }
}
