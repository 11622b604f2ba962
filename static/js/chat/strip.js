// The strip at the top of the conversation: the image of this conversation that is
// running now (its progress and time left) and the next one waiting (its place in the
// shared queue), each a link to its card. It reads the cards, which the live events keep
// up to date, so it says what they say, wherever the page is scrolled.
import { role } from "./cards.js";

function text(el, name) {
  return role(el, name)?.textContent.trim() || "";
}

// The prompt a card belongs to: its message's, or the user message just before it.
function promptOf(card) {
  const message = card.closest(".message");
  const own = message?.querySelector(":scope > .job-group .job-group-prompt, :scope > .job-card > .job-head .content");
  const asked = message?.previousElementSibling?.querySelector(".content")?.textContent.trim();
  const said = asked || own?.textContent.trim() || "";
  return said.length > 60 ? `${said.slice(0, 57)}…` : said;
}

function position(card) {
  const number = Number((text(card, "position").match(/\d+/) || [])[0]);
  return Number.isFinite(number) && number > 0 ? number : Infinity;
}

function label(card) {
  const number = card.querySelector('[data-testid="image-number"]')?.textContent.trim();
  const prompt = promptOf(card);
  return [prompt && `“${prompt}”`, number].filter(Boolean).join(", ") || "Your image";
}

function show(link, card, parts) {
  link.hidden = !card;
  if (!card) return;
  link.href = `#${card.id}`;
  const line = parts.filter(Boolean).join(" · ");
  if (link.textContent !== line) link.textContent = line;
}

function update(strip) {
  const cards = [...document.querySelectorAll("#messages .job-card")];
  const running = cards.find((card) => card.dataset.status === "processing");
  const queued = cards.filter((card) => card.dataset.status === "queued").sort((a, b) => position(a) - position(b));
  const next = queued[0];
  show(role(strip, "strip-running"), running, [
    "Running now",
    running && label(running),
    running && text(running, "percent"),
    running && text(running, "remaining"),
  ]);
  const waiting = queued.length > 1 ? `${queued.length} of yours waiting` : "";
  show(role(strip, "strip-next"), next, [
    "Your next",
    next && text(next, "position"),
    next && text(next, "ahead").replace(/\.$/, ""),
    next && text(next, "eta"),
    waiting,
  ]);
  strip.hidden = !running && !next;
}

/** Keep `strip` in step with the cards on the page. */
export function bindStrip(strip) {
  if (!strip) return;
  let queued = false;
  const soon = () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      update(strip);
    });
  };
  const messages = document.getElementById("messages");
  new MutationObserver(soon).observe(messages, { childList: true, subtree: true, characterData: true, attributes: true });
  // A link scrolls its card into view below the sticky strip (the cards' scroll margin).
  strip.addEventListener("click", (event) => {
    const link = event.target.closest("a[href^='#']");
    if (!link) return;
    event.preventDefault();
    document.querySelector(link.getAttribute("href"))?.scrollIntoView({ block: "center", behavior: "smooth" });
  });
  update(strip);
}
