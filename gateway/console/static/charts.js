// Time-series charts over the vendored uPlot (window.uPlot, from vendor/): one series per
// name; rebuilt when the names change (a model or team appears).
import {h} from "./util.js";

const PALETTE = ["#4fa3ff", "#3fb950", "#d29922", "#f85149", "#a371f7", "#39c5cf",
                 "#ff7b72", "#e3b341", "#56d364", "#79c0ff"];

export class Chart {
  constructor(title, {format = (v) => v, bars = false, height = 200} = {}) {
    this.title = title;
    this.format = format;
    this.bars = bars;
    this.height = height;
    this.names = [];
    this.plot = null;
    this.body = h("div", {class: "chart"});
    this.el = h("div", {class: "panel"}, h("h2", {}, title), this.body);
    this.resize = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({width: this.width(), height: this.height});
    });
    this.resize.observe(this.body);
  }

  width() {
    return Math.max(300, this.body.clientWidth || 600);
  }

  // xs: unix seconds; columns: one array per name, aligned with xs (null: a gap).
  set(xs, names, columns) {
    if (!window.uPlot || !this.body.isConnected) return;
    if (!this.plot || names.join("\n") !== this.names.join("\n")) this.build(names);
    this.plot.setData([xs, ...columns]);
  }

  build(names) {
    if (this.plot) this.plot.destroy();
    this.names = names;
    const axis = {stroke: "#8b97a5", grid: {stroke: "#27313c"}, ticks: {stroke: "#27313c"}};
    const paths = this.bars ? window.uPlot.paths.bars({size: [0.6, 40]}) : undefined;
    this.plot = new window.uPlot({
      width: this.width(), height: this.height,
      scales: {x: {time: true}},
      axes: [axis, {...axis, values: (u, ticks) => ticks.map((v) => this.format(v)), size: 70}],
      series: [{}, ...names.map((name, i) => ({
        label: name, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: false,
        fill: this.bars ? PALETTE[i % PALETTE.length] + "99" : undefined, paths,
        value: (u, v) => (v === null || v === undefined ? "—" : this.format(v)),
      }))],
    }, [[], ...names.map(() => [])], this.body);
  }

  destroy() {
    this.resize.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

// Columns for `names` from points: pick(point, name) → a number or null.
export function columns(points, names, pick) {
  return names.map((name) => points.map((p) => {
    const v = pick(p, name);
    return v === undefined ? null : v;
  }));
}
