// The image viewer: a finished card's image opens full size in a dialog, with previous
// and next through every image of the page, zoom to actual size, and the keyboard; and
// the image's edits (vary, upscale through its card's forms; inpaint, painted here).
import { bindInpainting } from "./editing.js";

/** Shows the page's images in `dialog` (its `dialog.lightbox`). */
export function bindViewer(dialog) {
  const part = (name) => dialog.querySelector(`[data-role="${name}"]`);
  const image = part("image");
  let shown = 0;

  const items = () => [...document.querySelectorAll("a[data-lightbox]")];

  function show(index) {
    const links = items();
    if (!links.length) return dialog.close();
    shown = Math.min(Math.max(index, 0), links.length - 1);
    const link = links[shown];
    image.src = link.href;
    image.alt = link.querySelector("img")?.alt || "";
    part("download").href = link.dataset.download;
    part("caption").textContent = link.dataset.caption;
    part("count").textContent = `${shown + 1} of ${links.length}`;
    part("prev").disabled = shown === 0;
    part("next").disabled = shown === links.length - 1;
    image.parentElement.classList.remove("zoomed");
    part("zoom").textContent = "Zoom";
  }

  const current = () => items()[shown];
  const inpaint = bindInpainting(dialog, current, () => dialog.close());

  // Vary and upscale are the shown image's card's own forms.
  dialog.querySelectorAll("[data-viewer-edit]").forEach((button) =>
    button.addEventListener("click", () => {
      const link = current();
      const card = link && document.getElementById(`job-${link.dataset.jobId}`);
      const form = card?.querySelector(`[data-edit="${button.dataset.viewerEdit}"]`)?.form;
      if (!form) return;
      dialog.close();
      form.requestSubmit();
    }),
  );
  part("inpaint")?.addEventListener("click", inpaint);
  // A card's "Inpaint…" opens its image here, with the brush in hand.
  document.addEventListener("click", (event) => {
    const button = event.target.closest('[data-action="inpaint"]');
    if (!button) return;
    const link = items().find((item) => item.dataset.jobId === button.dataset.jobId);
    if (!link) return;
    dialog.showModal();
    show(items().indexOf(link));
    inpaint();
  });

  function toggleZoom() {
    const zoomed = image.parentElement.classList.toggle("zoomed");
    part("zoom").textContent = zoomed ? "Fit" : "Zoom";
  }

  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-lightbox]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    dialog.showModal();
    show(items().indexOf(link));
  });
  part("prev").addEventListener("click", () => show(shown - 1));
  part("next").addEventListener("click", () => show(shown + 1));
  part("close").addEventListener("click", () => dialog.close());
  part("zoom").addEventListener("click", toggleZoom);
  image.addEventListener("click", toggleZoom);
  dialog.addEventListener("click", (event) => event.target === dialog && dialog.close());
  // On the document: a disabled button (the last image's "next") drops the focus out of the dialog.
  document.addEventListener("keydown", (event) => {
    if (!dialog.open) return;
    if (event.key === "ArrowLeft") show(shown - 1);
    else if (event.key === "ArrowRight") show(shown + 1);
    else if (event.key === "z") toggleZoom();
  });
  dialog.addEventListener("close", () => image.removeAttribute("src"));
}
