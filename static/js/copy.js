// Copy to the clipboard, with the page saying so on the button that was pressed.

/** Puts `text` on the clipboard; true when it got there. `near` is the element that asked. */
export async function copyText(text, near = document.body) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (error) {
    // No clipboard API here (a plain-HTTP address other than localhost) or no permission:
    // the old way. Inside an open modal dialog the rest of the page is inert, so the
    // hidden field goes next to the button.
    const area = Object.assign(document.createElement("textarea"), { value: text, readOnly: true });
    area.style.cssText = "position: fixed; top: 0; left: 0; opacity: 0;";
    (near.closest("dialog") || document.body).append(area);
    area.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (ignored) {
      copied = false;
    }
    area.remove();
    return copied;
  }
}

const timers = new WeakMap();

/** The button reads `text` ("Copied") for a moment, then its own label again. */
export function flash(button, text, status = null) {
  if (!button.dataset.label) button.dataset.label = button.textContent;
  button.textContent = text;
  if (status) status.textContent = text;
  clearTimeout(timers.get(button));
  timers.set(
    button,
    setTimeout(() => {
      button.textContent = button.dataset.label;
    }, 2500),
  );
}
