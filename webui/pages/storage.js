import { BarController, BarElement, CategoryScale, Chart, Legend, LinearScale, Tooltip } from 'chart.js';
import { useEffect, useRef } from 'preact/hooks';
import { call, useApi } from '../api.js';
import { Err, fmtBytes, html, Loading } from '../parts.js';
import { href } from '../router.js';

// Chart.js (maintained, canvas, tree-shaken to the bar chart): only the parts registered here are bundled.
Chart.register(BarController, BarElement, CategoryScale, LinearScale, Legend, Tooltip);

/** Logical (used) beside stored bytes per row, as horizontal bars; the table below says the same in text. */
function UsageChart({ rows, label }) {
  const canvas = useRef(null);
  useEffect(() => {
    const chart = new Chart(canvas.current, {
      type: 'bar',
      data: {
        labels: rows.map((r) => r.name),
        datasets: [
          { label: 'used (logical)', data: rows.map((r) => r.usedBytes), backgroundColor: '#8aa4c8' },
          { label: 'stored', data: rows.map((r) => r.storedBytes), backgroundColor: '#2d6a4f' },
        ],
      },
      options: {
        indexAxis: 'y',
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales: { x: { ticks: { callback: (v) => fmtBytes(v) } } },
        plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${fmtBytes(c.raw)}` } } },
      },
    });
    return () => chart.destroy();
  }, [rows]);
  return html`<div class="chart" style=${{ height: `${60 + rows.length * 34}px` }}><canvas ref=${canvas} role="img" aria-label=${label}></canvas></div>`;
}

function UsageTable({ rows, kind }) {
  return html`<table data-usage=${kind}><thead><tr><th>${kind === 'image' ? 'Image' : 'Project'}</th><th>Versions</th><th>Used</th><th>Stored</th><th>Saved</th><th>Dedup</th></tr></thead>
    <tbody>${rows.map(
      (
        r,
      ) => html`<tr><td>${kind === 'image' ? r.name : html`<a href=${href(['storage'], { project: r.name })}>${r.name}</a>`}</td>
        <td>${r.versions}</td><td>${fmtBytes(r.usedBytes)}</td><td>${fmtBytes(r.storedBytes)}</td>
        <td>${fmtBytes(Math.max(0, r.usedBytes - r.storedBytes))}</td><td>${r.dedupRatio.toFixed(2)}x</td></tr>`,
    )}</tbody></table>`;
}

export function StoragePage({ query }) {
  const project = query.project ?? '';
  const st = useApi(() => call('/v1/storage', { project }), [project]);
  if (st.loading) return html`<h1>Storage</h1><${Loading} />`;
  if (st.error) return html`<h1>Storage</h1><${Err} error=${st.error} />`;
  const { images, projects, total } = st.value;
  const byUse = (a, b) => b.usedBytes - a.usedBytes;
  return html`<h1>Storage${project ? `: ${project}` : ''}</h1>
    <p data-total>${total.versions} versions hold ${fmtBytes(total.usedBytes)} of used data in ${fmtBytes(total.storedBytes)} stored: ${total.dedupRatio.toFixed(2)}x, ${fmtBytes(Math.max(0, total.usedBytes - total.storedBytes))} saved.</p>
    ${project && html`<p><a href=${href(['storage'])}>All projects</a></p>`}
    <section><h2>Per project</h2>
      <${UsageChart} rows=${[...projects].sort(byUse)} label="used and stored bytes per project" />
      <${UsageTable} rows=${[...projects].sort(byUse)} kind="project" />
    </section>
    <section><h2>Per image</h2>
      <${UsageChart} rows=${[...images].sort(byUse).slice(0, 40)} label="used and stored bytes per image" />
      <${UsageTable} rows=${[...images].sort(byUse)} kind="image" />
    </section>`;
}
