// Tiny hand-drawn SVG line charts (0..100 %) for the resource history.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 300;
const HEIGHT = 42;

function svg(tag, attrs) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  return element;
}

/**
 * A line chart of values in percent over time.
 * points: [{t: epoch ms, v: percent}], oldest first.
 */
export function lineChart(points, { color = "#2f6fde", label = "" } = {}) {
  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    preserveAspectRatio: "none",
    role: "img",
    "aria-label": label,
  });
  for (const level of [25, 50, 75]) {
    const y = HEIGHT - (level / 100) * HEIGHT;
    chart.append(svg("line", { x1: 0, x2: WIDTH, y1: y, y2: y, stroke: "#e3e5ea", "stroke-width": 1 }));
  }
  if (points.length === 0) return chart;
  const first = points[0].t;
  const span = Math.max(points[points.length - 1].t - first, 1);
  const xy = points.map(({ t, v }) => [
    points.length === 1 ? WIDTH : ((t - first) / span) * WIDTH,
    HEIGHT - (Math.max(0, Math.min(100, v)) / 100) * (HEIGHT - 2) - 1,
  ]);
  if (xy.length === 1) xy.unshift([0, xy[0][1]]);
  const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  chart.append(
    svg("polygon", { points: `0,${HEIGHT} ${line} ${WIDTH},${HEIGHT}`, fill: color, "fill-opacity": 0.12 }),
    svg("polyline", {
      points: line,
      fill: "none",
      stroke: color,
      "stroke-width": 1.5,
      "vector-effect": "non-scaling-stroke",
      "stroke-linejoin": "round",
    }),
  );
  return chart;
}
