// Small helpers shared by the pages: DOM building (text only: never HTML from data),
// number formats, and calls to the gateway with the session's CSRF token.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

const dash = "—";

export function num(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return dash;
  return Number(value).toLocaleString("en-US", {maximumFractionDigits: digits,
                                                minimumFractionDigits: 0});
}

export function ms(value) {
  if (value === null || value === undefined) return dash;
  return value >= 1000 ? `${num(value / 1000, 2)} s` : `${num(value, value < 10 ? 1 : 0)} ms`;
}

export function pct(value) {
  return value === null || value === undefined ? dash : `${num(value * 100, 1)}%`;
}

export function usd(value, digits = 4) {
  if (value === null || value === undefined) return dash;
  return `$${Number(value).toLocaleString("en-US", {maximumFractionDigits: digits,
                                                    minimumFractionDigits: 2})}`;
}

export function time(t) {
  return new Date(t * 1000).toLocaleTimeString("en-GB", {hour12: false});
}

export function badge(state) {
  const label = {half_open: "half-open"}[state] || state;
  return h("span", {class: `badge ${state}`}, label);
}

// A bar for used of limit (null limit: unlimited).
export function bar(used, limit) {
  if (!limit) return h("span", {class: "dim"}, "unlimited");
  const share = Math.min(1, (used || 0) / limit);
  const fill = h("span");
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  return h("div", {class: `bar${share >= 1 ? " over" : share >= 0.8 ? " hot" : ""}`,
                   title: `${num(used)} of ${num(limit)}`}, fill);
}

export const session = {user: "", role: "read-only", csrf: ""};

// A console API call; JSON in and out. Changes carry the CSRF token.
export async function api(method, path, body) {
  const headers = {"x-csrf-token": session.csrf};
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {method, headers, credentials: "same-origin",
                                 body: body === undefined ? undefined : JSON.stringify(body)});
  if (res.status === 401) {
    location.replace("/console/login");
    throw new Error("not logged in");
  }
  const data = (res.headers.get("content-type") || "").includes("json")
    ? await res.json() : await res.text();
  if (!res.ok) {
    const err = data && data.error;
    throw new Error((err && (err.message || err)) || `${res.status} ${res.statusText}`);
  }
  return data;
}
