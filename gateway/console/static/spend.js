// Spend: per team and key, spend against budget and rate limits against use (from the
// ledger, refreshed every 10 s), live spend rate (from the stream), daily history, CSV.
import {Chart, columns} from "./charts.js";
import {api, bar, clear, h, num, usd} from "./util.js";

const REFRESH_MS = 10000;
let body, error, timer, rateChart, dailyChart, savings;

function usage(u) {
  return u ? h("div", {}, bar(u.used, u.limit), h("span", {class: "dim"},
    `${num(u.used, 0)} / ${num(u.limit, 0)}`)) : h("span", {class: "dim"}, "unlimited");
}

function spendCell(s) {
  if (s.budget_usd === null) {
    return h("div", {}, usd(s.spent_usd), h("span", {class: "dim"}, ` ${s.period}, no budget`));
  }
  return h("div", {}, bar(s.spent_usd, s.budget_usd),
    h("span", {}, `${usd(s.spent_usd)} of ${usd(s.budget_usd, 2)}`),
    h("span", {class: "dim"}, ` ${s.period}`));
}

// Every day from `since` to `today` (YYYY-MM-DD, UTC), so the chart spans the period.
function daysBetween(since, today) {
  const out = [];
  for (let t = Date.parse(`${since}T00:00:00Z`); t <= Date.parse(`${today}T00:00:00Z`);
       t += 86400000) {
    out.push(new Date(t).toISOString().slice(0, 10));
  }
  return out;
}

function saved(daily, team) {
  return daily.filter((r) => r.team === team).reduce((a, r) => a + r.saved_cost_usd, 0);
}

function render(data, live) {
  clear(body);
  for (const t of data.teams) {
    const rate = live[t.name];
    body.append(h("tr", {class: "model", "data-testid": `team-${t.name}`},
      h("td", {}, t.name), h("td", {"data-testid": `team-${t.name}-spend`}, spendCell(t.spend)),
      h("td", {}, usage(t.usage.rpm)), h("td", {}, usage(t.usage.tpm)),
      h("td", {class: "num"}, rate ? `${usd((rate.cost_nanos_ps || 0) * 60 / 1e9, 4)}/min` : "—"),
      h("td", {class: "num"}, usd(saved(data.daily, t.name)))));
    for (const k of t.keys) {
      body.append(h("tr", {class: "sub", "data-testid": `key-${t.name}-${k.id}`},
        h("td", {}, k.id, k.name ? h("span", {class: "dim"}, ` ${k.name}`) : ""),
        h("td", {}, spendCell(k.spend)), h("td", {}, usage(k.usage.rpm)),
        h("td", {}, usage(k.usage.tpm)), h("td"), h("td")));
    }
  }
  const days = daysBetween(data.since, data.today);
  const teams = [...new Set(data.daily.map((r) => r.team))].sort();
  const xs = days.map((d) => Date.parse(`${d}T12:00:00Z`) / 1000);
  const cost = (day, team) => data.daily.find((r) => r.day === day && r.team === team)?.cost_usd;
  dailyChart.set(xs, teams, teams.map((t) => days.map((d) => cost(d, t) ?? null)));
  const total = data.daily.reduce((a, r) => a + r.saved_cost_usd, 0);
  savings.textContent = `${usd(total)} saved by the response cache over the last 30 days`;
}

export default {
  last: null,

  mount(root) {
    body = h("tbody");
    error = h("p", {class: "error"});
    savings = h("p", {class: "dim"});
    rateChart = new Chart("Spend rate by team, USD per minute", {format: (v) => usd(v, 4)});
    dailyChart = new Chart("Spend per day by team, USD (last 30 days)",
                           {format: (v) => usd(v, 2), bars: true});
    const cols = ["team / key", "spend this period", "requests / min", "tokens / min",
                  "spend rate", "cache savings (30 d)"];
    root.append(
      h("h2", {}, "Spend"),
      h("p", {}, "Export: ",
        h("a", {href: "/console/api/admin/usage?format=csv&by=team,model,day",
                download: "turnout-usage.csv"}, "daily usage (CSV)"), " · ",
        h("a", {href: "/console/api/admin/events?format=csv&limit=100000",
                download: "turnout-events.csv"}, "usage events (CSV)")),
      error, savings,
      h("div", {class: "panel"}, h("table", {}, h("thead", {}, h("tr", {},
        cols.map((c) => h("th", {}, c)))), body)),
      h("div", {class: "grid"}, rateChart.el, dailyChart.el));
    const load = async () => {
      try {
        this.last = await api("GET", "/console/api/spend");
        error.textContent = "";
        render(this.last, this.liveTeams || {});
      } catch (err) {
        error.textContent = `could not load spend: ${err.message}`;
      }
    };
    load();
    timer = setInterval(load, REFRESH_MS);
  },

  update(state) {
    const frame = state.frame;
    if (!frame || frame.error) return;
    this.liveTeams = frame.teams || {};
    const names = Object.keys(this.liveTeams).sort();
    const xs = state.points.map((p) => p.t);
    rateChart.set(xs, names, columns(state.points, names, (p, n) => {
      const v = p.teams[n]?.cost_ps;
      return v === null || v === undefined ? null : v * 60 / 1e9;
    }));
  },

  unmount() {
    clearInterval(timer);
    rateChart.destroy();
    dailyChart.destroy();
  },
};
