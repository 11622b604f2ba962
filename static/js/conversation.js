// The conversation page: live job cards, the composer, the image viewer, one module
// each in chat/. Loaded as a module (deferred): the page is parsed when this runs.
import { startCards } from "./chat/cards.js";
import { bindComposer } from "./chat/composer.js";
import { connect } from "./chat/socket.js";
import { bindStrip } from "./chat/strip.js";
import { bindViewer } from "./chat/viewer.js";

// Notifications are opt-in: the button shows where the browser has not been asked yet.
function offerNotifications(button) {
  if (!button || !("Notification" in window) || Notification.permission !== "default") return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    try {
      const answer = await Notification.requestPermission();
      button.textContent = answer === "granted" ? "Notifications on" : "Notifications blocked";
    } catch (error) {
      button.textContent = "Notifications unavailable";
    }
    button.disabled = true;
  });
}

const root = document.querySelector("[data-conversation-id]");
if (root) {
  bindComposer(document.getElementById("prompt-form"));
  const viewer = document.querySelector("dialog.lightbox");
  if (viewer) bindViewer(viewer);
  offerNotifications(document.querySelector('[data-role="notify"]'));
  startCards();
  bindStrip(document.querySelector('[data-role="running-strip"]'));
  connect({
    root,
    banner: document.getElementById("connection-status"),
    notice: document.getElementById("service-notice"),
  });
  // Until now a key press in the composer was the browser's own (a newline, not a send).
  root.dataset.ready = "true";
}
