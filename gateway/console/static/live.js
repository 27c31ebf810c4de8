// Live routing: per model and deployment, what the gateway sees now, every second.
import {Chart, columns} from "./charts.js";
import {badge, clear, h, ms, num, pct, time} from "./util.js";

let table, cards, rpsChart, ttftChart;

function latency(l, which) {
  return l ? ms(l[which]) : "—";
}

function replicaCells(d) {
  const r = d.replica;
  if (!r) return [h("td", {class: "dim", colspan: 5}, d.pool ? "not scraped yet" : "provider")];
  const health = r.healthy === null ? badge("warn") : badge(r.healthy ? "ok" : "bad");
  health.textContent = r.healthy === null ? "unprobed" : r.healthy ? "healthy" : "unhealthy";
  const age = r.age_s === null ? "never" : `${num(r.age_s, 1)} s ago`;
  return [
    h("td", {class: "num", "data-testid": `dep-${d.id}-queue`}, num(r.waiting, 0)),
    h("td", {class: "num"}, num(r.running, 0)),
    h("td", {class: "num"}, pct(r.kv_usage)),
    h("td", {class: "num"}, pct(r.prefix_hit_rate)),
    h("td", {}, health, " ", h("span", {class: r.stale ? "error" : "dim"},
                                r.stale ? `stale (${age})` : age)),
  ];
}

function row(d, sub) {
  const id = sub ? d.id : d.name;
  const prefix = sub ? `dep-${d.id}` : `model-${d.name}`;
  return h("tr", {class: sub ? "sub" : "model", "data-testid": prefix},
    h("td", {}, id),
    h("td", {}, sub ? h("span", {"data-testid": `${prefix}-circuit`}, badge(d.circuit))
      : d.circuits_open ? h("span", {class: "error"}, `${d.circuits_open} not closed`) : ""),
    h("td", {class: "num", "data-testid": `${prefix}-rps`}, num(d.rps, 1)),
    h("td", {class: "num", "data-testid": `${prefix}-requests`}, num(d.requests, 0)),
    h("td", {class: "num"}, latency(d.ttft, "p50_ms")),
    h("td", {class: "num"}, latency(d.ttft, "p99_ms")),
    h("td", {class: "num"}, latency(d.itl, "p50_ms")),
    h("td", {class: "num"}, latency(d.itl, "p99_ms")),
    h("td", {class: "num", "data-testid": `${prefix}-errors`}, pct(d.error_rate)),
    h("td", {class: "num", "data-testid": `${prefix}-inflight`}, num(d.in_flight, 0)),
    h("td", {class: "num"}, d.cost_per_m === null ? "—" : `$${num(d.cost_per_m, 3)}`),
    ...(sub ? replicaCells(d) : [h("td", {colspan: 5})]),
  );
}

function head() {
  const cols = ["model / deployment", "circuit", "req/s", "requests", "TTFT p50",
                "TTFT p99", "ITL p50", "ITL p99", "errors", "in flight", "$ / 1M tok",
                "queue", "running", "KV", "prefix hits", "health / scraped"];
  return h("thead", {}, h("tr", {}, cols.map((c, i) => h("th", {class: i > 1 && i < 15 ? "num" : ""}, c))));
}

function card(label, value, testid) {
  return h("div", {class: "card"}, h("div", {class: "label"}, label),
           h("div", {class: "value", "data-testid": testid}, value));
}

export default {
  mount(root) {
    cards = h("div", {class: "cards"});
    table = h("table", {}, head(), h("tbody"));
    rpsChart = new Chart("Requests per second, by model", {format: (v) => num(v, 1)});
    ttftChart = new Chart("P99 time to first token, by model",
                          {format: (v) => `${num(v, v < 100 ? 1 : 0)} ms`});
    root.append(h("h2", {}, "Live routing"), cards, h("div", {class: "panel"}, table),
                h("div", {class: "grid"}, rpsChart.el, ttftChart.el));
  },

  update(state) {
    const frame = state.frame;
    if (!frame || frame.error) return;
    const models = frame.models || [];
    const sum = (key) => models.reduce((a, m) => a + (m[key] || 0), 0);
    clear(cards).append(
      card("requests / s", num(sum("rps"), 1), "total-rps"),
      card("requests seen", num(sum("requests"), 0), "total-requests"),
      card("in flight", num(sum("in_flight"), 0), "total-inflight"),
      card("circuits not closed", num(sum("circuits_open"), 0), "total-open"),
      card("processes", num(frame.processes, 0), "processes"),
      card("updated", time(frame.at), "updated"));
    const body = clear(table.tBodies[0]);
    for (const m of models) {
      body.append(row(m, false));
      for (const d of m.deployments) body.append(row(d, true));
    }
    const names = models.map((m) => m.name);
    const xs = state.points.map((p) => p.t);
    rpsChart.set(xs, names, columns(state.points, names, (p, n) => p.models[n]?.rps));
    ttftChart.set(xs, names, columns(state.points, names, (p, n) => p.models[n]?.p99));
  },

  unmount() {
    rpsChart.destroy();
    ttftChart.destroy();
  },
};
