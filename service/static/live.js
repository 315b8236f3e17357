"use strict";

// Live mode: the camera (getUserMedia) stylized through WebSocket /live (docs/live.md).
// Uses app.js's helpers: $, element, api, errorMessage, storedKey, askForKey.

const LIVE_MARKUP = `
  <h2 id="live-heading">Live camera</h2>
  <div class="live-layout">
    <div class="live-controls">
      <div class="field">
        <label for="live-style">Live style</label>
        <select id="live-style"></select>
      </div>
      <div class="field">
        <label for="live-style-file">Upload a style for live</label>
        <input id="live-style-file" type="file" accept="image/*">
      </div>
      <div class="field">
        <label for="live-alpha">Strength of the live style α <output id="live-alpha-value" for="live-alpha">1.00</output></label>
        <input id="live-alpha" type="range" min="0" max="1" step="0.05" value="1">
      </div>
      <div class="field">
        <label for="live-model">Live model</label>
        <select id="live-model"></select>
      </div>
      <div class="row">
        <div class="field">
          <label for="live-size">Live size</label>
          <select id="live-size">
            <option value="128">128 px</option>
            <option value="256" selected>256 px</option>
            <option value="384">384 px</option>
            <option value="512">512 px</option>
          </select>
        </div>
        <div class="field">
          <label for="live-style-size">Scale of the live style</label>
          <select id="live-style-size">
            <option value="0">Original</option>
            <option value="256">256 px</option>
            <option value="512" selected>512 px</option>
          </select>
        </div>
      </div>
      <label class="check"><input id="live-stabilize" type="checkbox" checked> Steady (no flicker)</label>
      <div class="field">
        <label for="live-stability">Steadiness <output id="live-stability-value" for="live-stability">0.50</output></label>
        <input id="live-stability" type="range" min="0" max="1" step="0.05" value="0.5">
      </div>
      <div class="row">
        <button id="live-start" type="button">Start camera</button>
        <button id="live-stop" type="button" class="secondary" disabled>Stop</button>
      </div>
      <p id="live-status" role="status" aria-live="polite"></p>
      <p id="live-error" class="error" role="alert" hidden></p>
      <figure>
        <video id="live-camera" muted playsinline></video>
        <figcaption>Camera</figcaption>
      </figure>
    </div>
    <figure id="live-output-figure">
      <figcaption>
        <span id="live-fps">0.0</span> frames/s ·
        latency <span id="live-latency">–</span> ms ·
        <span id="live-frames">0</span> frames ·
        <span id="live-dropped">0</span> dropped ·
        model <span id="live-answering">–</span>
      </figcaption>
      <div class="live-stage">
        <p id="live-placeholder">Start the camera: its stylized picture appears here.</p>
        <img id="live-output" alt="Stylized camera picture" hidden>
      </div>
    </figure>
  </div>`;

// Frames sent and not answered yet: two keep the server busy (one stylized while the next
// travels) without building a queue; the server drops what arrives late anyway.
const LIVE_IN_FLIGHT = 2;
const LIVE_QUALITY = 0.8;

const live = {
  socket: null,
  stream: null,
  sentAt: new Map(), // frame index -> performance.now() when sent
  nextIndex: 0,
  inFlight: 0,
  header: null, // the JSON of the result whose image comes next
  shownUrl: null,
  resultTimes: [], // performance.now() of the recent results, for frames/s
  frames: 0,
  ready: false,
  starting: false, // from Start's click until the stream is open or given up
  hasStyles: false,
  canvas: document.createElement("canvas"),
};

// One stream at a time: Start is enabled only while none runs or starts (and a style exists).
function liveButtons() {
  const running = Boolean(live.starting || live.socket || live.stream);
  $("live-start").disabled = running || !live.hasStyles;
  $("live-stop").disabled = !running;
}

// What each model is for, as app.js's MODEL_LABELS; live prefers the fast one.
async function loadLiveModels() {
  const response = await api("models");
  if (!response.ok) throw new Error(await errorMessage(response));
  const loaded = await response.json();
  const select = $("live-model");
  const current = select.value;
  select.replaceChildren(...loaded.models.map((name) => element("option", { value: name }, MODEL_LABELS[name] || name)));
  if (loaded.models.includes(current)) select.value = current;
  else select.value = loaded.models.includes("lite") ? "lite" : loaded.default;
}

function showAnsweringModel(model) {
  if (model) $("live-answering").textContent = model;
}

function liveError(message) {
  $("live-error").textContent = message;
  $("live-error").hidden = !message;
}

function liveStatus(message) {
  $("live-status").textContent = message;
}

function liveUrl() {
  const url = new URL("live", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

async function loadLiveStyles(selectId = null) {
  const response = await api("styles");
  if (!response.ok) throw new Error(await errorMessage(response));
  const styles = (await response.json()).styles;
  const select = $("live-style");
  const current = selectId || select.value;
  select.replaceChildren(...styles.map((style) => element("option", { value: style.id }, style.name)));
  if (styles.some((style) => style.id === current)) select.value = current;
  live.hasStyles = styles.length > 0;
  liveButtons();
  if (!styles.length) liveStatus("Upload a style to start.");
}

async function uploadLiveStyle() {
  const file = $("live-style-file").files[0];
  if (!file) return;
  liveError("");
  const form = new FormData();
  form.append("file", file);
  form.append("name", file.name.replace(/\.[^.]+$/, ""));
  try {
    const response = await api("styles", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorMessage(response));
    const style = await response.json();
    await loadLiveStyles(style.id);
    liveStatus(`Style “${style.name}” ready.`);
    changeLiveSettings({ style_id: style.id });
  } catch (error) {
    liveError(`Could not upload the style: ${error.message}`);
  } finally {
    $("live-style-file").value = "";
  }
}

function liveSettings() {
  return {
    style_id: $("live-style").value,
    alpha: Number($("live-alpha").value),
    size: Number($("live-size").value),
    style_size: Number($("live-style-size").value),
    stabilize: $("live-stabilize").checked,
    stability: Number($("live-stability").value),
    format: "jpeg",
    ...($("live-model").value ? { model: $("live-model").value } : {}),
  };
}

function changeLiveSettings(change) {
  if (live.socket && live.ready) live.socket.send(JSON.stringify(change));
}

async function startLive() {
  if (live.starting || live.socket || live.stream) return; // one stream at a time
  liveError("");
  if (!$("live-style").value) {
    liveError("Choose or upload a style first.");
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    liveError("This browser gives no camera to this page (it needs https or localhost).");
    return;
  }
  live.starting = true;
  liveButtons();
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (error) {
    live.starting = false;
    liveButtons();
    liveError(`No camera: ${error.message}`);
    return;
  }
  const video = $("live-camera");
  video.srcObject = live.stream;
  await video.play();
  Object.assign(live, { sentAt: new Map(), nextIndex: 0, inFlight: 0, header: null, resultTimes: [], frames: 0, ready: false });
  liveStatus("Connecting…");
  const socket = new WebSocket(liveUrl());
  live.socket = socket;
  live.starting = false;
  liveButtons();
  socket.binaryType = "blob";
  let opened = false;
  let lastError = null;
  socket.addEventListener("open", () => {
    opened = true;
    const key = storedKey();
    socket.send(JSON.stringify({ ...liveSettings(), ...(key ? { key } : {}) }));
  });
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") {
      showLiveFrame(event.data);
      return;
    }
    const message = JSON.parse(event.data);
    if (message.ready) {
      // Each settings change is answered "ready" too: only the first says the stream is live,
      // so that a later message ("Style … ready.") stays.
      if (!live.ready) liveStatus("Live.");
      live.ready = true;
      showAnsweringModel(message.settings && message.settings.model);
      sendFrames();
    } else if ("frame" in message) {
      live.header = message;
    } else if ("detail" in message) {
      lastError = message;
      liveError(message.detail);
      if (message.status === 401) askForKey(Boolean(storedKey()));
      if ("failed_frame" in message) frameAnswered(message.failed_frame);
    }
  });
  socket.addEventListener("close", (event) => {
    if (live.socket !== socket) return;
    if (!opened) {
      liveError("The server refused the live stream: too many streams open (retry in a few seconds), or this page is not allowed.");
    } else if (event.code >= 4000 && !lastError) {
      liveError(event.reason || `The stream was closed (${event.code}).`);
    }
    stopLive(false);
  });
}

function frameAnswered(index) {
  if (live.sentAt.has(index)) {
    live.sentAt.delete(index);
    live.inFlight = Math.max(0, live.inFlight - 1);
  }
  // Frames the server dropped are never answered: earlier ones no longer count as in flight.
  for (const sent of [...live.sentAt.keys()]) {
    if (sent < index) {
      live.sentAt.delete(sent);
      live.inFlight = Math.max(0, live.inFlight - 1);
    }
  }
  sendFrames();
}

function showLiveFrame(blob) {
  const header = live.header;
  live.header = null;
  if (!header) return;
  const now = performance.now();
  const sentAt = live.sentAt.get(header.frame);
  if (live.shownUrl) URL.revokeObjectURL(live.shownUrl);
  live.shownUrl = URL.createObjectURL(blob);
  $("live-output").src = live.shownUrl;
  $("live-output").hidden = false;
  $("live-placeholder").hidden = true;
  showAnsweringModel(header.model);
  live.frames += 1;
  live.resultTimes.push(now);
  while (live.resultTimes.length && now - live.resultTimes[0] > 2000) live.resultTimes.shift();
  const span = (now - live.resultTimes[0]) / 1000;
  const fps = live.resultTimes.length > 1 && span > 0 ? (live.resultTimes.length - 1) / span : 0;
  $("live-fps").textContent = fps.toFixed(1);
  if (sentAt !== undefined) $("live-latency").textContent = String(Math.round(now - sentAt));
  $("live-frames").textContent = String(live.frames);
  $("live-dropped").textContent = String(header.dropped);
  frameAnswered(header.frame);
}

// Captures the camera at the working size (no more pixels than the server uses) and sends it.
function sendFrames() {
  const socket = live.socket;
  const video = $("live-camera");
  if (!socket || !live.ready || socket.readyState !== WebSocket.OPEN) return;
  while (live.inFlight < LIVE_IN_FLIGHT && video.videoWidth) {
    const size = Number($("live-size").value);
    const scale = Math.min(1, size / Math.min(video.videoWidth, video.videoHeight));
    live.canvas.width = Math.round(video.videoWidth * scale);
    live.canvas.height = Math.round(video.videoHeight * scale);
    live.canvas.getContext("2d").drawImage(video, 0, 0, live.canvas.width, live.canvas.height);
    const index = live.nextIndex++;
    live.inFlight += 1;
    live.canvas.toBlob((blob) => {
      if (live.socket !== socket || socket.readyState !== WebSocket.OPEN) return;
      if (!blob) { // nothing to send: the place is free for the next picture
        live.inFlight -= 1;
        setTimeout(sendFrames, 50);
        return;
      }
      live.sentAt.set(index, performance.now());
      socket.send(blob);
    }, "image/jpeg", LIVE_QUALITY);
  }
  if (!video.videoWidth) setTimeout(sendFrames, 50); // the camera's first picture is not there yet
}

function stopLive(closeSocket = true) {
  const socket = live.socket;
  live.socket = null;
  live.ready = false;
  if (socket && closeSocket) socket.close(1000, "stopped");
  if (live.stream) for (const track of live.stream.getTracks()) track.stop();
  live.stream = null;
  $("live-camera").srcObject = null;
  liveButtons();
  liveStatus("Stopped.");
}

function setMode(mode) {
  const liveMode = mode === "live";
  document.body.classList.toggle("live-mode", liveMode);
  $("mode-image").setAttribute("aria-pressed", String(!liveMode));
  $("mode-live").setAttribute("aria-pressed", String(liveMode));
  if (liveMode) {
    loadLiveStyles().catch((error) => liveError(`Could not load the registered styles: ${error.message}`));
    loadLiveModels().catch((error) => liveError(`Could not load the models: ${error.message}`));
  } else if (live.socket || live.stream) {
    stopLive();
  }
}

function initLive() {
  const main = document.querySelector("main");
  const modes = element("nav", { id: "modes", "aria-label": "Mode" });
  modes.append(
    element("button", { id: "mode-image", type: "button", "aria-pressed": "true" }, "Image"),
    element("button", { id: "mode-live", type: "button", "aria-pressed": "false" }, "Live"),
  );
  const section = element("section", { id: "live", "aria-labelledby": "live-heading" });
  section.innerHTML = LIVE_MARKUP; // static markup: no user data
  main.prepend(modes);
  main.append(section);
  $("mode-image").addEventListener("click", () => setMode("image"));
  $("mode-live").addEventListener("click", () => setMode("live"));
  $("live-start").addEventListener("click", startLive);
  $("live-stop").addEventListener("click", () => stopLive());
  $("live-style-file").addEventListener("change", uploadLiveStyle);
  $("live-style").addEventListener("change", () => changeLiveSettings({ style_id: $("live-style").value }));
  $("live-alpha").addEventListener("input", () => {
    $("live-alpha-value").textContent = Number($("live-alpha").value).toFixed(2);
    changeLiveSettings({ alpha: Number($("live-alpha").value) });
  });
  $("live-size").addEventListener("change", () => changeLiveSettings({ size: Number($("live-size").value) }));
  $("live-style-size").addEventListener("change", () => changeLiveSettings({ style_size: Number($("live-style-size").value) }));
  $("live-stabilize").addEventListener("change", () => changeLiveSettings({ stabilize: $("live-stabilize").checked }));
  $("live-stability").addEventListener("input", () => {
    $("live-stability-value").textContent = Number($("live-stability").value).toFixed(2);
    changeLiveSettings({ stability: Number($("live-stability").value) });
  });
  $("live-model").addEventListener("change", () => changeLiveSettings({ model: $("live-model").value }));
}

initLive();
