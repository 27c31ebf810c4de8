// Incidents: circuit states and transitions, failover activity over time, retry budget.
import {Chart, columns} from "./charts.js";
import {badge, clear, h, num, time} from "./util.js";

const EVENTS = ["failovers_total", "fallbacks_total", "hedges_total", "hedge_wins_total",
                "continuations_total", "least_bad_total"];
let circuits, log, budget, counters, chart;

function label(name) {
  return name.replace(/_total$/, "").replace(/_/g, " ");
}

export default {
  mount(root) {
    circuits = h("tbody");
    log = h("tbody");
    budget = h("div", {class: "cards"});
    counters = h("div", {class: "cards"});
    chart = new Chart("Failover events per second", {format: (v) => num(v, 2)});
    root.append(
      h("h2", {}, "Circuits"),
      h("div", {class: "panel"}, h("table", {}, h("thead", {}, h("tr", {},
        ["deployment", "state", "times opened", "req/s", "errors/s", "last error"].map(
          (c) => h("th", {}, c)))), circuits)),
      h("h2", {}, "Circuit transitions"),
      h("div", {class: "panel"}, h("table", {}, h("thead", {}, h("tr", {},
        ["time", "deployment", "from", "to", "seen by", "after"].map((c) => h("th", {}, c)))),
        log)),
      h("h2", {}, "Retry budget (all processes, current window)"), budget,
      h("h2", {}, "Failover counters (since each process started)"), counters,
      chart.el);
  },

  update(state) {
    const frame = state.frame;
    if (!frame || frame.error) return;
    const deps = (frame.models || []).flatMap((m) => m.deployments);
    const seen = new Set();
    clear(circuits);
    for (const d of deps) {
      if (seen.has(d.id)) continue;
      seen.add(d.id);
      circuits.append(h("tr", {"data-testid": `circuit-${d.id}`},
        h("td", {}, d.id), h("td", {"data-testid": `circuit-${d.id}-state`}, badge(d.circuit)),
        h("td", {class: "num"}, num(d.opened_total, 0)), h("td", {class: "num"}, num(d.rps, 1)),
        h("td", {class: "num"}, num(d.fps, 1)), h("td", {class: "wrap"}, d.last_error || "")));
    }
    clear(log).append(...state.incidents.slice().reverse().map((e) => h("tr",
      {"data-testid": "transition"}, h("td", {}, time(e.t)), h("td", {}, e.deployment),
      h("td", {}, badge(e.from)), h("td", {}, badge(e.to)),
      h("td", {class: "dim"}, (e.proc || "").split(":").slice(0, 2).join(":")),
      h("td", {class: "wrap"}, e.reason || ""))));
    const fo = frame.failover || {};
    const card = (name, value) => h("div", {class: "card"}, h("div", {class: "label"}, name),
                                    h("div", {class: "value"}, value));
    clear(budget);
    clear(counters);
    if (!fo.enabled) {
      budget.append(h("span", {class: "dim"}, "failover is switched off"));
      return;
    }
    const b = fo.budget || {};
    budget.append(card("requests in window", num(b.window_requests, 0)),
                  card("retries in window", num(b.window_retries, 0)),
                  card("retries allowed", num(b.allowed, 0)),
                  card("retries refused (total)", num(b.refused_total, 0)));
    counters.append(...EVENTS.map((k) => card(label(k), num((fo.counters || {})[k], 0))));
    const xs = state.points.map((p) => p.t);
    const names = EVENTS.map(label);
    chart.set(xs, names, columns(state.points, EVENTS, (p, k) => p.failover[k]));
  },

  unmount() {
    chart.destroy();
  },
};
