// The now-playing page: snapshot from /flowsheet/recent, then live frames from
// /events/stream starting at the snapshot's last_event_id (contracts/live.py describes both).
"use strict";

const TOPIC = "live-fs-topic";
const SHOWN = 50;
const RETRY_MS = 3000;
const LINKS = [
  ["discogs_url", "Discogs"],
  ["spotify_url", "Spotify"],
  ["apple_music_url", "Apple Music"],
  ["youtube_music_url", "YouTube Music"],
  ["bandcamp_url", "Bandcamp"],
  ["soundcloud_url", "SoundCloud"],
  ["artist_wikipedia_url", "Wikipedia"],
];

const rows = new Map(); // id → projected row
const nodes = new Map(); // id → <li>
let source = null;
let lastEventId = null;
let loading = null; // frames received while a snapshot reload is in flight

const list = document.getElementById("plays");
const statusNode = document.getElementById("status");

function setStatus(state, text) {
  statusNode.dataset.state = state;
  statusNode.textContent = text;
}

// Same rule as core.live.frame_applies: never list a row twice nor roll it back to an older
// version (updated_at is fixed-width UTC text, so versions compare as strings).
function applies(frame) {
  const held = rows.get(frame.payload.id);
  if (frame.type === "delete") return held !== undefined;
  if (frame.type !== "insert" && frame.type !== "update") return false;
  if (held === undefined) return true;
  const [was, now] = [held.updated_at, frame.payload.updated_at];
  return typeof was !== "string" || typeof now !== "string" || now > was;
}

function apply(frame) {
  if (!applies(frame)) return;
  if (frame.type === "delete") rows.delete(frame.payload.id);
  else rows.set(frame.payload.id, frame.payload);
  render();
}

function safeUrl(value, allowImageData) {
  if (typeof value !== "string" || value === "") return null;
  if (allowImageData && value.startsWith("data:image/")) return value;
  try {
    const url = new URL(value);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

function fill(li, row) {
  const art = li.querySelector(".art");
  const artwork = safeUrl(row.artwork_url, true);
  if (artwork && art.getAttribute("src") !== artwork) art.src = artwork;
  if (!artwork) art.removeAttribute("src");
  art.alt = artwork ? `${row.album_title || row.track_title || "album"} artwork` : "";
  li.querySelector(".track").textContent = row.track_title || "(untitled)";
  li.querySelector(".artist").textContent = row.artist_name || "";
  const album = [row.album_title, row.record_label].filter(Boolean).join(" · ");
  li.querySelector(".album").textContent = album + (row.release_year ? ` (${row.release_year})` : "");
  const played = row.add_time ? new Date(row.add_time) : null;
  const flags = [row.request_flag ? "request" : "", row.dj_name ? `DJ ${row.dj_name}` : ""];
  li.querySelector(".meta").textContent = [
    played ? played.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "",
    ...flags,
  ].filter(Boolean).join(" · ");
  const links = li.querySelector(".links");
  links.replaceChildren();
  for (const [column, label] of LINKS) {
    const href = safeUrl(row[column], false);
    if (!href) continue;
    const a = element("a", "link", label);
    a.href = href;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    a.dataset.kind = column;
    links.append(a);
  }
  li.dataset.status = row.metadata_status || "";
}

function nodeFor(id) {
  let li = nodes.get(id);
  if (!li) {
    li = element("li", "play");
    li.dataset.id = String(id);
    const art = element("img", "art");
    art.loading = "lazy";
    const text = element("div", "text");
    text.append(element("div", "track"), element("div", "artist"), element("div", "album"),
      element("div", "meta"), element("div", "links"));
    li.append(art, text);
    nodes.set(id, li);
  }
  return li;
}

function newestFirst(a, b) {
  if (a.add_time !== b.add_time) return (a.add_time || "") < (b.add_time || "") ? 1 : -1;
  return b.id - a.id;
}

function render() {
  const shown = [...rows.values()].sort(newestFirst).slice(0, SHOWN);
  const keep = new Set(shown.map((row) => row.id));
  for (const [id, li] of nodes) {
    if (!keep.has(id)) {
      li.remove();
      nodes.delete(id);
    }
  }
  for (const id of [...rows.keys()]) if (!keep.has(id)) rows.delete(id);
  shown.forEach((row, index) => {
    const li = nodeFor(row.id);
    fill(li, row);
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] || null);
  });
  document.getElementById("empty").hidden = shown.length > 0;
}

async function loadSnapshot() {
  loading = [];
  try {
    const response = await fetch(`/flowsheet/recent?limit=${SHOWN}`, { cache: "no-store" });
    if (!response.ok) throw new Error(`snapshot: HTTP ${response.status}`);
    const body = await response.json();
    rows.clear();
    for (const row of body.entries) rows.set(row.id, row);
    // Frames that arrived during the reload may be older or newer than the snapshot.
    for (const frame of loading) if (applies(frame)) rows.set(frame.payload.id, frame.payload);
    render();
    return body.last_event_id;
  } finally {
    loading = null;
  }
}

function onFrame(event) {
  if (event.lastEventId) lastEventId = event.lastEventId;
  const frame = JSON.parse(event.data);
  if (frame.type === "connection-established") {
    setStatus("live", "live");
  } else if (frame.type === "refetch") {
    // The server could not replay what we missed: reload the list, stay on this stream.
    loadSnapshot().catch(() => setStatus("error", "could not reload the list"));
  } else if (loading !== null) {
    loading.push(frame);
  } else {
    apply(frame);
  }
}

function subscribe() {
  const query = new URLSearchParams({ topics: TOPIC });
  if (lastEventId) query.set("lastEventId", lastEventId);
  source = new EventSource(`/events/stream?${query}`);
  source.onmessage = onFrame;
  source.onerror = () => {
    setStatus("reconnecting", "reconnecting…");
    // EventSource retries by itself (sending Last-Event-ID) after a dropped stream; after a
    // refused connection (503) it gives up, so start again from the last id seen.
    if (source.readyState === EventSource.CLOSED) setTimeout(subscribe, RETRY_MS);
  };
}

async function start() {
  for (;;) {
    try {
      lastEventId = await loadSnapshot();
      break;
    } catch {
      setStatus("error", "cannot load plays; retrying…");
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }
  subscribe();
}

start();
