// Keys and teams, changed through the admin API (as the CLI does): create a team or
// change its limits and budget; create, rotate and revoke keys. A new key's plaintext is
// shown here once and never again.
import {api, clear, h, num, session, usd} from "./util.js";

let root, teams = [], selected = null, secret = null, message = null;

const enc = encodeURIComponent;
const admin = () => session.role === "admin";
const value = (form, name) => form.elements[name].value.trim();
const intOr0 = (form, name) => parseInt(value(form, name) || "0", 10);

function field(name, label, attrs = {}) {
  return h("label", {}, label, h("input", {name, disabled: !admin(), ...attrs}));
}

function periodSelect(name, current) {
  return h("label", {}, "period", h("select", {name, disabled: !admin()},
    ["monthly", "daily"].map((p) => h("option", {value: p, selected: p === current}, p))));
}

function budgetOf(form, prefix = "") {
  const usdValue = value(form, `${prefix}budget`);
  return usdValue === "" ? null : {usd: parseFloat(usdValue), period: value(form, `${prefix}period`)};
}

async function run(what, work) {
  message = null;
  try {
    await work();
    message = h("p", {class: "dim", role: "status"}, `${what}: done`);
  } catch (err) {
    message = h("p", {class: "error", role: "alert"}, `${what}: ${err.message}`);
  }
  await load();
}

function teamForm(t) {
  const form = h("form", {class: "inline", "data-testid": "team-form", onsubmit: (e) => {
    e.preventDefault();
    run(`team ${t.name}`, () => api("PUT", `/console/api/admin/teams/${enc(t.name)}`, {
      priority: intOr0(form, "priority"),
      limits: {rpm: intOr0(form, "rpm"), tpm: intOr0(form, "tpm")},
      key_limits: {rpm: intOr0(form, "key_rpm"), tpm: intOr0(form, "key_tpm")},
      budget: budgetOf(form)}));
  }},
    field("priority", "priority", {type: "number", value: t.priority}),
    field("rpm", "team RPM (0: none)", {type: "number", min: 0, value: t.limits.rpm}),
    field("tpm", "team TPM", {type: "number", min: 0, value: t.limits.tpm}),
    field("key_rpm", "each key's RPM", {type: "number", min: 0, value: t.key_limits.rpm}),
    field("key_tpm", "each key's TPM", {type: "number", min: 0, value: t.key_limits.tpm}),
    field("budget", "budget USD (empty: none)", {type: "number", min: 0, step: "0.01",
                                                 value: t.budget ? t.budget.usd : ""}),
    periodSelect("period", t.budget ? t.budget.period : "monthly"),
    h("button", {type: "submit", disabled: !admin()}, "Save team"));
  return form;
}

function keyRow(t, k) {
  const revoke = h("button", {class: "danger", type: "button", disabled: !admin(),
                              "data-testid": `revoke-${k.id}`, onclick: () => {
    if (revoke.dataset.armed) {
      run(`revoke ${k.id}`, () => api("DELETE",
        `/console/api/admin/teams/${enc(t.name)}/keys/${enc(k.id)}`));
    } else {
      revoke.dataset.armed = "1";
      revoke.textContent = "Confirm revoke";
    }
  }}, "Revoke");
  const rotate = h("button", {class: "quiet", type: "button", disabled: !admin(),
                              "data-testid": `rotate-${k.id}`, onclick: () =>
    run(`rotate ${k.id}`, async () => {
      secret = await api("POST",
        `/console/api/teams/${enc(t.name)}/keys/${enc(k.id)}/rotate`);
    })}, "Rotate");
  const limits = k.limits ? `${num(k.limits.rpm, 0)} RPM, ${num(k.limits.tpm, 0)} TPM`
    : "team's key limits";
  return h("tr", {"data-testid": `keyrow-${k.id}`}, h("td", {}, k.id), h("td", {}, k.name),
    h("td", {}, new Date(k.created * 1000).toISOString().slice(0, 16).replace("T", " ")),
    h("td", {}, limits), h("td", {}, k.budget ? `${usd(k.budget.usd, 2)} ${k.budget.period}` : "—"),
    h("td", {}, rotate, " ", revoke));
}

function newKeyForm(t) {
  const form = h("form", {class: "inline", "data-testid": "new-key", onsubmit: (e) => {
    e.preventDefault();
    const spec = {name: value(form, "name")};
    if (value(form, "id")) spec.id = value(form, "id");
    if (value(form, "rpm") || value(form, "tpm")) {
      spec.limits = {rpm: intOr0(form, "rpm"), tpm: intOr0(form, "tpm")};
    }
    const budget = budgetOf(form);
    if (budget) spec.budget = budget;
    run("create key", async () => {
      secret = await api("POST", `/console/api/admin/teams/${enc(t.name)}/keys`, spec);
    });
  }},
    field("id", "id (empty: generated)"), field("name", "name"),
    field("rpm", "RPM (empty: team's)", {type: "number", min: 0}),
    field("tpm", "TPM", {type: "number", min: 0}),
    field("budget", "budget USD", {type: "number", min: 0, step: "0.01"}),
    periodSelect("period", "monthly"),
    h("button", {type: "submit", disabled: !admin()}, "Create key"));
  return form;
}

function secretPanel() {
  if (!secret) return null;
  const shown = secret;
  return h("div", {class: "notice", "data-testid": "new-secret"},
    h("p", {}, `New key ${shown.id} of team ${shown.team}. Copy it now: it is not shown again.`),
    h("div", {class: "secret", "data-testid": "secret-value"}, shown.key),
    h("p", {}, h("button", {type: "button", class: "quiet", onclick: async () => {
      await navigator.clipboard.writeText(shown.key).catch(() => null);
    }}, "Copy"), " ", h("button", {type: "button", "data-testid": "secret-done", onclick: () => {
      secret = null;
      render();
    }}, "Done")));
}

function newTeamForm() {
  const form = h("form", {class: "inline", onsubmit: (e) => {
    e.preventDefault();
    const name = value(form, "team");
    run(`create team ${name}`, async () => {
      await api("PUT", `/console/api/admin/teams/${enc(name)}`, {});
      selected = name;
    });
  }}, field("team", "new team", {required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]*"}),
  h("button", {type: "submit", disabled: !admin()}, "Create team"));
  return form;
}

function render() {
  if (!root) return;
  clear(root);
  root.append(h("h2", {}, "Keys and teams"));
  if (!admin()) {
    root.append(h("p", {class: "notice", "data-testid": "read-only"},
                  "You are logged in read-only: changes are disabled."));
  }
  if (message) root.append(message);
  const panel = secretPanel();
  if (panel) root.append(panel);
  const team = teams.find((t) => t.name === selected) || teams[0];
  selected = team ? team.name : null;
  const picker = h("select", {"data-testid": "team-picker", onchange: (e) => {
    selected = e.target.value;
    secret = null;
    render();
  }}, teams.map((t) => h("option", {value: t.name, selected: t.name === selected}, t.name)));
  root.append(h("div", {class: "panel row"}, h("form", {class: "inline"},
    h("label", {}, "team", picker)), newTeamForm()));
  if (!team) return;
  root.append(h("div", {class: "panel"}, h("h2", {}, `Team ${team.name}`), teamForm(team)),
    h("div", {class: "panel"}, h("h2", {}, "Keys"), h("table", {"data-testid": "keys"},
      h("thead", {}, h("tr", {}, ["id", "name", "created (UTC)", "limits", "budget", ""].map(
        (c) => h("th", {}, c)))),
      h("tbody", {}, team.keys.map((k) => keyRow(team, k)))),
      h("h2", {}, "New key"), newKeyForm(team)));
}

async function load() {
  try {
    const list = (await api("GET", "/console/api/admin/teams")).data;
    teams = await Promise.all(list.map(async (t) => ({
      ...t, keys: (await api("GET", `/console/api/admin/teams/${enc(t.name)}/keys`)).data})));
  } catch (err) {
    message = h("p", {class: "error"}, `could not load teams: ${err.message}`);
  }
  render();
}

export default {
  mount(el) {
    root = el;
    secret = null;
    message = null;
    load();
  },
  update() {},
  unmount() {
    root = null;
    secret = null;  // the plaintext leaves the page with it
  },
};
