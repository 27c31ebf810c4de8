// The console's shell: the session, one live stream (server-sent events) shared by every
// page, and a page per hash route (#/live, #/decisions, ...).
import {api, clear, session} from "./util.js";
import decisions from "./decisions.js";
import incidents from "./incidents.js";
import keys from "./keys.js";
import live from "./live.js";
import spend from "./spend.js";

const pages = {live, decisions, incidents, spend, keys};
const HISTORY = 600;  // chart points: ten minutes of frames
const KEPT = 200;  // decisions and circuit transitions kept in the page

// What the stream has brought; pages read it on every update.
const state = {frame: null, points: [], decisions: [], incidents: []};
const main = document.getElementById("main");
let current = null;

function route() {
  const name = location.hash.replace(/^#\//, "") || "live";
  const page = pages[name] || pages.live;
  if (current && current.unmount) current.unmount();
  clear(main);
  current = page;
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.page === name);
  }
  page.mount(main, state);
  if (state.frame) page.update(state);
}

function status(text, live) {
  document.getElementById("status-text").textContent = text;
  document.getElementById("status").classList.toggle("live", live);
}

function trimmed(list, limit) {
  return list.length > limit ? list.slice(list.length - limit) : list;
}

function apply(frame) {
  state.frame = frame;
  if (frame.error) {
    status(frame.error, false);
  } else {
    const n = frame.processes;
    status(`live · ${n} gateway process${n === 1 ? "" : "es"}`, n > 0);
  }
  if (current) current.update(state);
}

function connect() {
  const events = new EventSource("/console/api/live");
  events.addEventListener("hello", (event) => {
    const hello = JSON.parse(event.data);
    state.points = hello.history;
    state.decisions = hello.decisions;
    state.incidents = hello.incidents;
    if (hello.frame) apply(hello.frame);
  });
  events.addEventListener("frame", (event) => {
    const frame = JSON.parse(event.data);
    if (frame.point) state.points = trimmed([...state.points, frame.point], HISTORY);
    state.decisions = trimmed([...state.decisions, ...(frame.decisions || [])], KEPT);
    state.incidents = trimmed([...state.incidents, ...(frame.incidents || [])], KEPT);
    apply(frame);
  });
  events.addEventListener("error", async () => {
    status("reconnecting", false);
    if (events.readyState === EventSource.CLOSED) {  // refused: the session is gone?
      await api("GET", "/console/api/session").catch(() => null);
      setTimeout(connect, 2000);
    }
  });
}

async function start() {
  Object.assign(session, await api("GET", "/console/api/session"));
  document.getElementById("who").textContent = `${session.user} · ${session.role}`;
  document.getElementById("logout").addEventListener("click", async () => {
    await api("POST", "/console/api/logout").catch(() => null);
    location.replace("/console/login");
  });
  window.addEventListener("hashchange", route);
  route();
  connect();
}

start();
