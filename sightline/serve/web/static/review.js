// Keyboard labelling for /ui/review: 1-9 label with a class (a button each for classes past the ninth),
// u = unknown, s = skip, z = undo the last label.
"use strict";
(function () {
  const list = document.getElementById("items");
  if (!list) return;
  const items = Array.from(list.querySelectorAll(".item"));
  const classes = JSON.parse(list.dataset.classes);
  const unknown = list.dataset.unknown;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const status = document.getElementById("status");
  const done = [];  // ids labelled in this page, most recent last
  let current = 0;
  // "50 of 178 waiting": counted down as this page's items are labelled (and up on undo), not left as loaded
  const count = document.getElementById("queue-count");

  function recount() {
    if (!count) return;
    const open = items.length - done.length;
    const waiting = Number(count.dataset.total) - done.length;
    count.textContent = open + " of " + waiting + " waiting; label these, then reload for the next.";
  }

  function show(index) {
    if (items.length === 0) return;
    current = Math.max(0, Math.min(index, items.length - 1));
    items.forEach((el, i) => el.classList.toggle("current", i === current));
    const el = items[current];
    const id = el.dataset.id;
    const hasImage = el.dataset.image === "1";
    document.getElementById("focus-image").src = hasImage ? "/ui/image/" + id : "data:,";
    document.getElementById("focus-cam").src = hasImage ? "/ui/cam/" + id + ".png" : "data:,";
    const details = document.getElementById("focus-details");
    details.replaceChildren(el.querySelector(".details").cloneNode(true));
    el.scrollIntoView({ block: "nearest" });
  }

  function nextOpen(from) {
    for (let i = from + 1; i < items.length; i++) if (!items[i].classList.contains("done")) return i;
    return from;
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) throw new Error(data.detail || ("HTTP " + response.status));
    return data;
  }

  let busy = false;
  async function label(value) {
    const el = items[current];
    if (busy || el.classList.contains("done")) return;
    busy = true;
    try {
      await post("/ui/label", { id: Number(el.dataset.id), label: value });
      el.classList.add("done");
      el.querySelector(".done-label").textContent = value;
      done.push(current);
      recount();
      status.textContent = "#" + el.dataset.id + " labelled " + value;
      show(nextOpen(current));
    } catch (err) {
      status.textContent = err.message;
    } finally {
      busy = false;
    }
  }

  async function undo() {
    if (busy || done.length === 0) return;
    busy = true;
    const index = done[done.length - 1];
    const el = items[index];
    try {
      const data = await post("/ui/undo", { id: Number(el.dataset.id) });
      done.pop();
      recount();
      el.classList.remove("done");
      el.querySelector(".done-label").textContent = "";
      status.textContent = "#" + el.dataset.id + " undone (now " + (data.label || "unlabelled") + ")";
      show(index);
    } catch (err) {
      status.textContent = err.message;
    } finally {
      busy = false;
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target instanceof HTMLInputElement) return;
    const key = event.key;
    if (key >= "1" && key <= "9" && Number(key) <= classes.length) label(classes[Number(key) - 1]);
    else if (key >= "1" && key <= "9") status.textContent = "no class on key " + key + "; keys 1-" + classes.length + " label";
    else if (key === "u") label(unknown);
    else if (key === "s") show(nextOpen(current));
    else if (key === "z") undo();
    else return;
    event.preventDefault();
  });
  // classes past the ninth have no key: a button each
  document.querySelectorAll(".label-button").forEach((b) => b.addEventListener("click", () => label(b.dataset.label)));
  items.forEach((el, i) => el.addEventListener("click", () => show(i)));
  show(0);
})();
