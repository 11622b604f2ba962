// The composer's LoRA picker: a searchable list of the LoRAs that fit the chosen model,
// up to four chosen, each with a weight. What is chosen lives in the form's hidden
// `loras` field as "name:weight" pairs, which the server checks and stores.
import { role } from "./cards.js";

const MAX = 4;

function parse(text) {
  return (text || "")
    .split(/[\s,]+/)
    .filter(Boolean)
    .map((item) => {
      const at = item.lastIndexOf(":");
      return at > 0 ? { name: item.slice(0, at), weight: item.slice(at + 1) } : { name: item, weight: "1" };
    });
}

function familyOf(form) {
  const select = form.elements.model;
  const every = JSON.parse(select?.dataset.limits || "{}");
  return every[select?.value]?.family;
}

/** Bind the picker of `form` (the hidden field's value is the starting list). */
export function bindLoraPicker(form) {
  const picker = role(form, "lora-picker");
  if (!picker) return;
  const hidden = form.elements.loras;
  const search = picker.querySelector('[data-role="lora-search"]');
  const options = picker.querySelector("datalist");
  const list = role(picker, "lora-list");
  const add = role(picker, "lora-add");
  const note = role(picker, "lora-note");
  const every = JSON.parse(picker.dataset.loras || "[]");
  const fits = (lora, family) => lora.fits.includes(family);
  let chosen = parse(hidden.value);

  function save() {
    hidden.value = chosen.map(({ name, weight }) => `${name}:${weight}`).join(" ");
    hidden.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function say(text) {
    note.textContent = text;
    note.hidden = !text;
  }

  function render() {
    const family = familyOf(form);
    const offered = every.filter((lora) => fits(lora, family) && !chosen.some((c) => c.name === lora.name));
    options.replaceChildren(
      ...offered.map((lora) => Object.assign(document.createElement("option"), { value: lora.name })),
    );
    list.replaceChildren(
      ...chosen.map((item, index) => {
        const row = document.createElement("li");
        row.dataset.name = item.name;
        row.dataset.testid = "lora-row";
        const lora = every.find((l) => l.name === item.name);
        const misfit = lora && !fits(lora, family) ? ` (for ${lora.family_label} models)` : "";
        const label = Object.assign(document.createElement("span"), { className: "lora-name", textContent: item.name + misfit });
        const weight = Object.assign(document.createElement("input"), {
          type: "number",
          min: "-2",
          max: "2",
          step: "0.05",
          value: item.weight,
        });
        weight.setAttribute("aria-label", `Weight of ${item.name}`);
        weight.dataset.testid = "lora-weight";
        weight.addEventListener("input", () => {
          chosen[index].weight = weight.value.trim() || "1";
          save();
        });
        const remove = Object.assign(document.createElement("button"), { type: "button", className: "small", textContent: "Remove" });
        remove.setAttribute("aria-label", `Remove ${item.name}`);
        remove.addEventListener("click", () => {
          chosen.splice(index, 1);
          save();
          render();
        });
        row.append(label, weight, remove);
        return row;
      }),
    );
    const full = chosen.length >= MAX;
    search.disabled = add.disabled = full || !offered.length;
    const fitting = every.some((lora) => fits(lora, family));
    search.placeholder = full
      ? `${MAX} chosen (the most at once)`
      : offered.length
        ? "Search LoRAs…"
        : fitting
          ? "All of them are chosen"
          : "None for this model";
  }

  function addTyped() {
    const name = search.value.trim();
    if (!name) return;
    const lora = every.find((l) => l.name.toLowerCase() === name.toLowerCase());
    if (!lora || !fits(lora, familyOf(form))) {
      say(`No LoRA named "${name}" fits this model.`);
      return;
    }
    if (chosen.length >= MAX || chosen.some((c) => c.name === lora.name)) return;
    chosen.push({ name: lora.name, weight: "1" });
    search.value = "";
    say("");
    save();
    render();
  }

  if (!every.length) {
    // Nothing installed: say where LoRAs come from instead of an empty search.
    search.closest(".lora-add").hidden = true;
    say("No LoRAs are installed. An operator adds them to the LoRA folder (IMAGEGEN_LORA_DIR; see the README).");
    return;
  }
  add.addEventListener("click", addTyped);
  search.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault(); // not a submit of the prompt
      addTyped();
    }
  });
  // Picking from the list adds it at once.
  search.addEventListener("change", () => every.some((l) => l.name === search.value.trim()) && addTyped());
  form.elements.model?.addEventListener("change", render);
  // "Use these settings" on a card fills the hidden field: show what it holds.
  form.addEventListener("settings-filled", () => {
    chosen = parse(hidden.value);
    render();
  });
  render();
}
