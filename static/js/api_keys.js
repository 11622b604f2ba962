// The API keys page: a Copy button beside the new key and beside each ready-to-paste
// setting. Loaded as a module (deferred): the page is parsed when this runs.
import { copyText, flash } from "./copy.js";

const status = document.querySelector('[data-role="copy-status"]');

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const text = source.value ?? source.textContent;
  if (await copyText(text, button)) {
    flash(button, "Copied", status);
  } else {
    // Selected, so that Ctrl+C (or the phone's own menu) copies it.
    if (source.select) source.select();
    else getSelection().selectAllChildren(source);
    flash(button, "Select and copy", status);
  }
});

document.getElementById("new-api-key")?.addEventListener("focus", (event) => event.target.select());
