"use strict";

const $ = (id) => document.getElementById(id);

// Uploaded style files: { file, name, thumbnailUrl, weight }.
let uploads = [];
// Registered styles from GET /styles: { id, name, width, height }.
let registered = [];
// Ticked registered styles: id -> weight.
const chosenIds = new Map();
// Mask files, in the order sent: { file, name }.
let masks = [];
// Object URLs owned by the page, revoked when replaced so long sessions do not leak blobs.
let contentPreviewUrl = null;
let resultUrl = null;
let beforeUrl = null; // the content of the result on display, for the before / after view
// Registered styles' thumbnails: id -> promise of an object URL (null when it could not load).
const thumbnails = new Map();
const THUMBNAIL_PX = 96;
// What the error on display is about, so that it goes once the form no longer matches it:
// a local check's message (`missingShown`), or the API field the server named (`errorField`).
let missingShown = "";
let errorField = null;

function baseName(fileName) {
  return fileName.replace(/\.[^.]+$/, "") || fileName;
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

// The form control for each API field, to mark the one an error names.
const FIELD_INPUTS = {
  content: "content", style: "style-files", style_id: "registered", alpha: "alpha",
  weights: "chosen-list", preserve_color: "preserve-color", crop: "crop",
  content_size: "content-size", style_size: "style-size", format: "format", model: "model",
  mask: "mask-files",
};

// Every API error is JSON {detail: "text", field: "name" or null}; anything else is a proxy's page.
async function errorMessage(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    return `The server answered ${response.status} ${response.statusText}.`;
  }
  const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body);
  markInvalid(body.field);
  errorField = body.field || null;
  return body.field && !detail.includes(body.field) ? `${body.field}: ${detail}` : detail;
}

// API keys (when the server has them on): asked for after a 401, kept for the tab
// (sessionStorage) or, if the user ticks "Remember", on this device (localStorage).
const KEY_STORAGE = "adain-api-key";

function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE) || localStorage.getItem(KEY_STORAGE);
}

// fetch() with the stored key in X-API-Key; a 401 opens the key form.
async function api(url, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = storedKey();
  if (key) headers.set("X-API-Key", key);
  const response = await fetch(url, { ...options, headers });
  if (response.status === 401) askForKey(Boolean(key));
  return response;
}

function askForKey(rejected) {
  $("key-hint").textContent = rejected
    ? "The server did not accept the stored key: enter another."
    : "This server needs an API key.";
  $("key-panel").hidden = false;
  $("api-key").focus();
}

function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  const [keep, drop] = $("remember-key").checked ? [localStorage, sessionStorage] : [sessionStorage, localStorage];
  keep.setItem(KEY_STORAGE, key);
  drop.removeItem(KEY_STORAGE);
  $("api-key").value = "";
  $("key-panel").hidden = true;
  showError("");
  loadRegistered().catch((error) => showError(`Could not load the registered styles: ${error.message}`));
  loadModels().catch((error) => showError(`Could not load the models: ${error.message}`));
}

function markInvalid(field) {
  for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  // Repeated fields are named with their index, e.g. "style[1]".
  const id = FIELD_INPUTS[(field || "").replace(/\[\d+\]$/, "")];
  if (id) $(id).setAttribute("aria-invalid", "true");
}

function showError(message) {
  if (!message) {
    markInvalid(null);
    missingShown = "";
    errorField = null;
  } else {
    setStatus(""); // an earlier "Done." or "Saved" no longer describes where things stand
  }
  $("error").textContent = message;
  $("error").hidden = !message;
}

function missingInput() {
  if (!$("content").files[0]) return "Choose a content photo first.";
  if (!chosenStyles().length) return "Choose at least one style.";
  return "";
}

// The fields a change of style choices feeds: an error about any of them is about the styles.
const STYLE_FIELDS = ["style", "style_id", "weights", "mask"];

// Called when the user changes inputs that feed the API `fields`: an error shown about the
// form as it was goes once it no longer describes the form as it is.
function inputsChanged(fields) {
  if ($("error").hidden) return;
  const field = (errorField || "").replace(/\[\d+\]$/, "");
  const outdated = missingShown ? missingInput() !== missingShown : fields.includes(field);
  if (outdated) showError("");
}

// A failed request leaves the previous result on screen only dimmed, marked as an earlier one.
function markResultStale(stale) {
  $("result").classList.toggle("stale", stale);
  $("result-stale").hidden = !stale;
}

function thumbnailUrl(id) {
  if (!thumbnails.has(id)) {
    const load = api(`styles/${encodeURIComponent(id)}/image?size=${THUMBNAIL_PX}`)
      .then((response) => (response.ok ? response.blob() : null))
      .then((blob) => (blob ? URL.createObjectURL(blob) : null))
      .catch(() => null);
    thumbnails.set(id, load);
  }
  return thumbnails.get(id);
}

// A registered style's thumbnail (fetched with the key, so not a plain src); its initial
// while it loads or if it cannot.
function registeredThumbnail(style) {
  const initial = element("span", { class: "thumb initial", "aria-hidden": "true" }, style.name[0] || "?");
  thumbnailUrl(style.id).then((url) => {
    if (url && initial.isConnected) initial.replaceWith(element("img", { src: url, alt: "", class: "thumb" }));
  });
  return initial;
}

function forgetThumbnails(keptIds) {
  for (const [id, load] of thumbnails) {
    if (keptIds.has(id)) continue;
    thumbnails.delete(id);
    load.then((url) => url && URL.revokeObjectURL(url));
  }
}

function setStatus(message) {
  $("status").textContent = message;
}

// Styles in request order: uploaded files first, then registered ids (the form field order).
function chosenStyles() {
  const fromFiles = uploads.map((upload) => ({ kind: "file", key: upload, name: upload.name }));
  const fromRegistry = registered
    .filter((style) => chosenIds.has(style.id))
    .map((style) => ({ kind: "id", key: style.id, name: style.name }));
  return [...fromFiles, ...fromRegistry];
}

// The style fields /stylize and /jobs share: the styles, their weights and the controls.
function appendStyleFields(form, styles) {
  for (const style of styles) {
    if (style.kind === "file") form.append("style", style.key.file);
    else form.append("style_id", style.key);
  }
  if (styles.length > 1) for (const style of styles) form.append("weights", weightOf(style));
  form.append("alpha", $("alpha").value);
  form.append("preserve_color", String($("preserve-color").checked));
  form.append("crop", String($("crop").checked));
  form.append("content_size", $("content-size").value);
  form.append("style_size", $("style-size").value);
  if ($("model").value) form.append("model", $("model").value);
  for (const mask of masks) form.append("mask", mask.file);
}

// What each model is for, as the choice shows it (GET /models lists the loaded ones).
const MODEL_LABELS = { full: "Full: best quality", lite: "Lite: fast, for laptops and live" };

async function loadModels() {
  const response = await api("models");
  if (!response.ok) throw new Error(await errorMessage(response));
  const loaded = await response.json();
  const select = $("model");
  select.replaceChildren(...loaded.models.map((name) => element("option", { value: name }, MODEL_LABELS[name] || name)));
  select.value = loaded.default;
  $("model-field").hidden = loaded.models.length < 2;
}

function weightOf(style) {
  return style.kind === "file" ? style.key.weight : chosenIds.get(style.key);
}

function setWeight(style, weight) {
  if (style.kind === "file") style.key.weight = weight;
  else chosenIds.set(style.key, weight);
}

function button(text, ariaLabel, onClick, variant = "", title = "") {
  const node = element("button", { type: "button", class: `small ${variant}`, "aria-label": ariaLabel }, text);
  if (title) node.title = title;
  node.addEventListener("click", () => onClick(node));
  return node;
}

// A style's name that wraps only between its parts ("adain__la_muse" after an underscore or a
// hyphen), never inside a word.
function nameNode(name) {
  const node = element("span", { class: "name" });
  for (const part of name.split(/(?<=[_\-.])/)) node.append(part, element("wbr"));
  return node;
}

const SAVE_TITLE = "Register this style on the server: it joins the gallery above, and later "
  + "runs (and the Live mode) use it without uploading it again.";

function renderChosen() {
  const list = $("chosen-list");
  list.replaceChildren();
  const styles = chosenStyles();
  const mixing = styles.length > 1;
  styles.forEach((style, index) => {
    const item = element("li", { class: "chosen" });
    item.append(
      style.kind === "file"
        ? element("img", { src: style.key.thumbnailUrl, alt: "", class: "thumb" })
        : registeredThumbnail({ id: style.key, name: style.name }),
      nameNode(style.name),
    );
    // Weight and buttons wrap onto their own line together on narrow screens.
    const controls = element("span", { class: "controls" });
    if (mixing) {
      const input = element("input", {
        type: "number", min: "0", step: "0.1", value: String(weightOf(style)),
        "aria-label": `Weight for ${style.name}`,
      });
      input.addEventListener("input", () => setWeight(style, input.value));
      const label = element("label", { class: "weight" }, "Weight ");
      label.append(input);
      controls.append(label);
    }
    if (style.kind === "file") {
      controls.append(
        button("Save to gallery", `Save ${style.name} to the registered styles`,
          (node) => registerUpload(style.key, node), "", SAVE_TITLE),
        button("Remove", `Remove ${style.name}`, () => removeUpload(style.key), "secondary"),
      );
    } else {
      controls.append(button("Remove", `Remove ${style.name}`, () => {
        chosenIds.delete(style.key);
        renderRegistered();
        renderChosen();
        inputsChanged(STYLE_FIELDS);
      }, "secondary"));
    }
    item.append(controls);
    list.append(item);
  });
  $("chosen-empty").hidden = styles.length > 0;
  $("weights-hint").hidden = !mixing;
}

function renderRegistered() {
  const list = $("registered-list");
  list.replaceChildren();
  for (const style of registered) {
    const item = element("li", { class: "registered" });
    const checkboxId = `style-id-${style.id}`;
    const checkbox = element("input", { id: checkboxId, type: "checkbox", value: style.id });
    checkbox.checked = chosenIds.has(style.id);
    checkbox.addEventListener("change", () => {
      if (checkbox.checked) chosenIds.set(style.id, 1);
      else chosenIds.delete(style.id);
      renderChosen();
      inputsChanged(STYLE_FIELDS);
    });
    const label = element("label", { for: checkboxId, class: "tile" });
    const caption = element("span", { class: "caption" });
    caption.append(checkbox, nameNode(style.name));
    label.append(registeredThumbnail(style), caption,
      element("small", {}, `${style.width}×${style.height}`));
    item.append(label, button("×", `Delete registered style ${style.name}`,
      () => deleteRegistered(style), "secondary delete", "Delete this style from the server"));
    list.append(item);
  }
  $("registered-empty").hidden = registered.length > 0;
}

// Every page of GET /styles, oldest first.
async function loadRegistered() {
  const styles = [];
  let cursor = null;
  do {
    const query = cursor ? `?cursor=${encodeURIComponent(cursor)}` : "";
    const response = await api(`styles${query}`);
    if (!response.ok) throw new Error(await errorMessage(response));
    const page = await response.json();
    styles.push(...page.styles);
    cursor = page.next_cursor;
  } while (cursor);
  registered = styles;
  forgetThumbnails(new Set(registered.map((style) => style.id)));
  for (const id of [...chosenIds.keys()]) {
    if (!registered.some((style) => style.id === id)) chosenIds.delete(id);
  }
  renderRegistered();
  renderChosen();
}

function renderMasks() {
  $("mask-list").replaceChildren(...masks.map((mask, index) => {
    const item = element("li", { class: "chosen" });
    item.append(element("span", { class: "name" }, `Mask ${index + 1}: ${mask.name}`),
      button("Remove", `Remove mask ${mask.name}`, () => {
        masks = masks.filter((other) => other !== mask);
        renderMasks();
        inputsChanged(["mask"]);
      }, "secondary"));
    return item;
  }));
}

// The before / after view: the content photo over the result, shown left of the split.
function setSplit(percent) {
  $("compare").style.setProperty("--split", `${percent}%`);
  $("compare-value").textContent = `${percent}% before`;
}

function showBefore(content) {
  if (beforeUrl) URL.revokeObjectURL(beforeUrl);
  beforeUrl = URL.createObjectURL(content);
  $("before-image").src = beforeUrl;
  $("before-image").hidden = false;
  $("compare-field").hidden = false;
}

function removeUpload(upload) {
  URL.revokeObjectURL(upload.thumbnailUrl);
  uploads = uploads.filter((other) => other !== upload);
  renderChosen();
  inputsChanged(STYLE_FIELDS);
}

// Registering turns the upload into a ticked registered style, so later runs reuse its cached statistics.
async function registerUpload(upload, saveButton) {
  showError("");
  saveButton.disabled = true;
  const form = new FormData();
  form.append("file", upload.file); // named after the file by the server, made unique if taken
  try {
    const response = await api("styles", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorMessage(response));
    const style = await response.json();
    chosenIds.set(style.id, upload.weight);
    removeUpload(upload);
    await loadRegistered();
    setStatus(`Saved “${style.name}” to the registered styles.`);
  } catch (error) {
    saveButton.disabled = false;
    showError(`Could not save the style: ${error.message}`);
  }
}

async function deleteRegistered(style) {
  showError("");
  try {
    const response = await api(`styles/${encodeURIComponent(style.id)}`, { method: "DELETE" });
    if (!response.ok) throw new Error(await errorMessage(response));
    chosenIds.delete(style.id);
    await loadRegistered();
    setStatus(`Deleted “${style.name}”.`);
  } catch (error) {
    showError(`Could not delete the style: ${error.message}`);
  }
}

function cacheSummary(header, styles) {
  if (!header) return "";
  const states = header.split(",").map((state) => state.trim());
  if (states.length === styles.length && styles.length > 1) {
    return states.map((state, index) => `${state} (${styles[index].name})`).join(", ");
  }
  return states.join(", ");
}

async function stylize(event) {
  event.preventDefault();
  showError("");
  const content = $("content").files[0];
  const styles = chosenStyles();
  const missing = missingInput();
  if (missing) {
    showError(missing);
    missingShown = missing;
    return;
  }
  if (isVideoFile(content)) { // static/video.js: a job instead of one request
    $("stylize").disabled = true;
    try {
      await submitVideo(content, styles);
    } catch (error) {
      setStatus("");
      showError(error.message);
    } finally {
      $("stylize").disabled = false;
    }
    return;
  }

  const form = new FormData();
  form.append("content", content);
  appendStyleFields(form, styles);
  form.append("format", $("format").value);

  const stylizeButton = $("stylize");
  stylizeButton.disabled = true;
  $("result").setAttribute("aria-busy", "true");
  setStatus("Stylizing…");
  try {
    const response = await api("stylize", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorMessage(response));
    const blob = await response.blob();
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(blob);
    const image = $("result-image");
    image.src = resultUrl;
    await image.decode();
    const milliseconds = response.headers.get("X-Inference-Time-Ms");
    const cache = cacheSummary(response.headers.get("X-Style-Cache"), styles);
    const parts = [`${image.naturalWidth}×${image.naturalHeight}`];
    if (milliseconds !== null) parts.push(`${Math.round(Number(milliseconds))} ms`);
    const model = response.headers.get("X-Adain-Model");
    if (model) parts.push(`model: ${model}`);
    if (cache) parts.push(`style cache: ${cache}`);
    $("result-info").textContent = parts.join(" · ");
    showBefore(content);
    $("video-job").hidden = true; // the newest result is this image
    const extension = $("format").value === "jpeg" ? "jpg" : $("format").value;
    $("download").href = resultUrl;
    $("download").download = `${baseName(content.name)}-stylized.${extension}`;
    $("result").hidden = false;
    markResultStale(false);
    setStatus("Done.");
  } catch (error) {
    setStatus("");
    showError(error.message);
    markResultStale(!$("result").hidden);
  } finally {
    stylizeButton.disabled = false;
    $("result").removeAttribute("aria-busy");
  }
}

function init() {
  $("content").addEventListener("change", () => {
    const file = $("content").files[0];
    if (contentPreviewUrl) URL.revokeObjectURL(contentPreviewUrl);
    contentPreviewUrl = file ? URL.createObjectURL(file) : null;
    const moving = Boolean(file) && isVideoFile(file); // static/video.js
    $("content-preview").hidden = !file || moving;
    $("content-video").hidden = !moving;
    if (moving) $("content-video").src = contentPreviewUrl;
    else if (file) $("content-preview").src = contentPreviewUrl;
    if (!moving) $("content-video").removeAttribute("src");
    inputsChanged(["content", "content_size", "crop"]);
  });
  $("content-video").addEventListener("error", () => { $("content-video").hidden = true; });
  $("mask-files").addEventListener("change", () => {
    for (const file of $("mask-files").files) masks.push({ file, name: file.name });
    $("mask-files").value = "";
    renderMasks();
    inputsChanged(["mask"]);
  });
  $("compare-split").addEventListener("input", () => setSplit($("compare-split").value));
  // A content the browser cannot show: no before / after, the result alone.
  $("before-image").addEventListener("error", () => {
    $("before-image").hidden = true;
    $("compare-field").hidden = true;
  });
  // A file the browser cannot decode gets no broken-image icon; the server explains the error.
  $("content-preview").addEventListener("error", () => { $("content-preview").hidden = true; });
  $("style-files").addEventListener("change", () => {
    for (const file of $("style-files").files) {
      uploads.push({ file, name: baseName(file.name), thumbnailUrl: URL.createObjectURL(file), weight: 1 });
    }
    $("style-files").value = ""; // so picking the same file again fires `change`
    renderChosen();
    inputsChanged(STYLE_FIELDS);
  });
  $("alpha").addEventListener("input", () => {
    $("alpha-value").textContent = Number($("alpha").value).toFixed(2);
    inputsChanged(["alpha"]);
  });
  $("stability").addEventListener("input", () => {
    $("stability-value").textContent = Number($("stability").value).toFixed(2);
  });
  for (const [id, field] of [["content-size", "content_size"], ["style-size", "style_size"],
    ["format", "format"], ["preserve-color", "preserve_color"], ["crop", "crop"], ["model", "model"]]) {
    $(id).addEventListener("change", () => inputsChanged([field]));
  }
  $("stylize-form").addEventListener("submit", stylize);
  $("key-form").addEventListener("submit", useKey);
  setSplit($("compare-split").value);
  renderChosen();
  loadRegistered().catch((error) => showError(`Could not load the registered styles: ${error.message}`));
  loadModels().catch((error) => showError(`Could not load the models: ${error.message}`));
}

init();
