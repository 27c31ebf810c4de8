// Decisions: a sample of recent requests (a few a second per gateway process), newest
// first: where each went, why, what else was considered, and what it cost.
import {badge, clear, h, ms, num, time, usd} from "./util.js";

let body, note, paused = false, latest = null;

function candidates(d) {
  if (!d.candidates) return "—";
  const unit = d.score_kind === "predicted_ttft_ms" ? " ms" : "";
  const items = d.candidates.map((c) => `${c.id}${c.score === null ? " (no data)"
    : ` ${num(c.score, 1)}${unit}`}`);
  if (d.more_candidates) items.push(`+${d.more_candidates} more`);
  return items.join(" · ");
}

function status(d) {
  const ok = d.status === 200;
  const el = badge(ok ? "ok" : "bad");
  el.textContent = String(d.status);
  return el;
}

function rows(d) {
  const out = [h("tr", {"data-testid": "decision"},
    h("td", {}, time(d.t)),
    h("td", {}, d.team, h("span", {class: "dim"}, ` / ${d.key || "—"}`)),
    h("td", {}, d.model, d.stream ? h("span", {class: "dim"}, " (stream)") : ""),
    h("td", {"data-testid": "decision-deployment"}, d.deployment || "—"),
    h("td", {}, status(d)),
    h("td", {class: "wrap"}, `${d.policy || "—"}; ${d.reason || ""}`),
    h("td", {class: "wrap"}, candidates(d)),
    h("td", {class: "num"}, `${d.attempts}${d.hedged ? " +hedge" : ""}`),
    h("td", {}, d.cache || "—"),
    h("td", {class: "num"}, `${num(d.prompt_tokens, 0)} / ${num(d.completion_tokens, 0)}`),
    h("td", {class: "num"}, usd(d.cost_usd, 6)),
    h("td", {class: "num"}, ms(d.latency_ms)),
    h("td", {class: "num"}, ms(d.ttft_ms)),
  )];
  if (d.prompt !== undefined) {
    out.push(h("tr", {class: "sub"}, h("td", {}), h("td", {class: "wrap", colspan: 12},
      h("span", {class: "dim"}, "prompt (team opted in): "), d.prompt)));
  }
  return out;
}

function render() {
  if (!latest) return;
  const shown = latest.slice().reverse();
  clear(body).append(...shown.flatMap(rows));
  note.textContent = `${shown.length} sampled requests`;
}

export default {
  mount(root) {
    const cols = ["time", "team / key", "model", "went to", "status", "route", "candidates",
                  "attempts", "cache", "tokens in / out", "cost", "latency", "TTFT"];
    body = h("tbody");
    note = h("span", {class: "dim"});
    const pause = h("button", {class: "quiet", type: "button", onclick: () => {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
      if (!paused) render();
    }}, paused ? "Resume" : "Pause");
    root.append(
      h("h2", {}, "Decisions"),
      h("p", {class: "dim"}, "A sample of recent requests. Prompt text appears only for",
        " teams listed in telemetry.tracing.capture_content. ", note, " ", pause),
      h("div", {class: "panel"}, h("table", {},
        h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))), body)));
  },

  update(state) {
    latest = state.decisions;
    if (!paused) render();
  },
};
