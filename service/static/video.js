"use strict";
// Videos on the page: a video chosen as the content becomes a job (POST jobs) instead of a
// /stylize request. Its progress streams from GET jobs/{id}/events (read with fetch, so that
// the API key header goes along; polling takes over if the stream breaks), Cancel deletes it,
// and the finished MP4 is fetched once to be watched and downloaded.
// Uses app.js's helpers: api, errorMessage, showError, setStatus, weightOf, baseName.

const VIDEO_SUFFIX = /\.(mp4|m4v|mov|webm|mkv|gif|avi|3gp)$/i;
const POLL_MS = 500;
const FINISHED = new Set(["succeeded", "failed", "canceled"]);

const video = { job: null, url: null, reader: null };

function isVideoFile(file) {
  // GIFs are animated more often than not, and /stylize does not take them.
  return file.type.startsWith("video/") || file.type === "image/gif" || VIDEO_SUFFIX.test(file.name);
}

function showJob(state) {
  const percent = Math.round(state.progress * 100);
  $("video-progress").value = state.progress;
  $("video-progress-text").textContent =
    `${state.status} · ${state.frames_done} of ${state.frames_total} frames (${percent}%)`;
  $("video-cancel").hidden = FINISHED.has(state.status);
}

async function submitVideo(file, styles) {
  const form = new FormData();
  form.append("video", file);
  appendStyleFields(form, styles);
  form.append("stabilize", String($("stabilize").checked));
  form.append("stability", $("stability").value);

  setStatus("Uploading the video…");
  const response = await api("jobs", { method: "POST", body: form });
  if (!response.ok) throw new Error(await errorMessage(response));
  const job = await response.json();
  video.job = { id: job.id, name: baseName(file.name) };
  $("video-result").hidden = true;
  $("video-job").hidden = false;
  // The newest result is this video's: an earlier image (and its "failed" note) gives way.
  $("result").hidden = true;
  markResultStale(false);
  showJob(job);
  setStatus("Stylizing the video…");
  await follow(job.id);
}

// Reads the job's server-sent events until the final state; polls if the stream ends early.
async function follow(jobId) {
  let state = null;
  try {
    const response = await api(`jobs/${jobId}/events`);
    if (!response.ok) throw new Error(await errorMessage(response));
    video.reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await video.reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      const events = buffered.split("\n\n");
      buffered = events.pop();
      for (const event of events) {
        const data = event.split("\n").filter((line) => line.startsWith("data: "));
        if (!data.length) continue;
        state = JSON.parse(data.map((line) => line.slice(6)).join("\n"));
        showJob(state);
      }
    }
  } catch {
    state = null; // the stream broke: the job goes on, polling follows it
  } finally {
    video.reader = null;
  }
  while (!state || !FINISHED.has(state.status)) {
    if (!video.job || video.job.id !== jobId) return;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    const response = await api(`jobs/${jobId}`);
    if (!response.ok) throw new Error(await errorMessage(response));
    state = await response.json();
    showJob(state);
  }
  await finished(jobId, state);
}

async function finished(jobId, state) {
  if (state.status === "failed") {
    setStatus("");
    showError(state.error ? state.error.detail : "The video job failed.");
    return;
  }
  if (state.status === "canceled") {
    setStatus("Canceled.");
    return;
  }
  // Through the service, never a redirect to the store: fetch would send the key on to it.
  const response = await api(`jobs/${jobId}/result?redirect=false`);
  if (!response.ok) throw new Error(await errorMessage(response));
  if (video.url) URL.revokeObjectURL(video.url);
  video.url = URL.createObjectURL(await response.blob());
  $("video-player").src = video.url;
  $("video-download").href = video.url;
  $("video-download").download = `${video.job.name}-stylized.mp4`;
  $("video-result").hidden = false;
  setStatus("Done.");
}

async function cancelVideo() {
  if (!video.job) return;
  const jobId = video.job.id;
  $("video-cancel").disabled = true;
  try {
    const response = await api(`jobs/${jobId}`, { method: "DELETE" });
    if (!response.ok) throw new Error(await errorMessage(response));
  } catch (error) {
    showError(`Could not cancel: ${error.message}`);
  } finally {
    $("video-cancel").disabled = false;
  }
}

$("video-cancel").addEventListener("click", cancelVideo);
