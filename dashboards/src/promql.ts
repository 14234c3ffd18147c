// PromQL shared by the dashboards, and the metric names a query reads (from the parse
// tree of Prometheus' own PromQL grammar for its UI, not from a regex).

import type { LRParser } from '@lezer/lr';

// The package ships CommonJS beside its ES module; this project compiles to CommonJS.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { parser } = require('@prometheus-io/lezer-promql') as { parser: LRParser };

/** Keeps only series scraped from the controller replica that serves: the Lease holder,
 * or the one Envoys and holders are connected to (a follower refuses their streams, so
 * its zenvoy_xds_streams is 0). Followers get no stats and keep whatever state they last
 * believed, so a service's state is taken from the serving replica only. */
export const ON_SERVING = 'and on (instance) (zenvoy_leader == 1 or zenvoy_xds_streams > 0)';

/** The state names `zenvoy_service_state` uses, with the number a state timeline gets
 * for each (the value mappings turn them back into names and colours). */
export const STATES: Array<[string, number, string]> = [
  ['parked', 0, 'blue'],
  ['waking', 1, 'orange'],
  ['awake', 2, 'green'],
  ['parking', 3, 'purple'],
];

export const STATE_MAPPINGS: Record<number, [string, string]> = Object.fromEntries(
  STATES.map(([name, code, color]) => [code, [name, color]]),
);

/** One number per service for its current state (see STATES), for state timelines:
 * the `state` series that reads 1, times its code. `matchers` narrows the services
 * (e.g. `service="$service"`). */
export function stateCode(matchers: string): string {
  const sel = (state: string) =>
    `zenvoy_service_state{${[matchers, `state="${state}"`].filter(Boolean).join(', ')}}`;
  const terms = STATES.map(([state, code]) => `(${sel(state)} == 1) * ${code}`);
  return `max by (service) (\n  (\n    ${terms.join('\n    or ')}\n  )\n  ${ON_SERVING}\n)`;
}

/** `histogram_quantile` over a rate, for p50/p90/p99 lines. */
export function quantile(q: number, bucket: string, by: string[], window: string): string {
  const labels = ['le', ...by].join(', ');
  return `histogram_quantile(${q}, sum by (${labels}) (rate(${bucket}[${window}])))`;
}

/** Grafana's variables as Prometheus would see them once Grafana has substituted them;
 * used only to parse a query here (the test substitutes them the same way). */
function withoutVariables(expr: string): string {
  return expr
    .replace(/\$__rate_interval|\$__interval|\$__range/g, '5m')
    .replace(/\$\{?(\w+)\}?/g, 'x');
}

/** The metric names `expr` selects, sorted; throws on a syntax error. */
export function metricNames(expr: string): string[] {
  const text = withoutVariables(expr);
  const tree = parser.parse(text);
  const names = new Set<string>();
  let error: number | undefined;
  tree.iterate({
    enter(node) {
      if (node.type.isError && error === undefined) error = node.from;
      if (node.name === 'VectorSelector') {
        const id = node.node.getChild('Identifier');
        if (id) names.add(text.slice(id.from, id.to));
      }
    },
  });
  if (error !== undefined) {
    throw new Error(`PromQL syntax error at offset ${error}: ${text.slice(error, error + 40)}\nin: ${expr}`);
  }
  return [...names].sort();
}
