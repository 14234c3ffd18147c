// zenvoy / Service: one service (the `service` variable). Its state over time, what its
// wakes cost, the connections held for it, and the activity Envoy sees against its idle
// timeout: the service parks once nothing moved for that long.

import * as dashboard from '@grafana/grafana-foundation-sdk/dashboard';

import { datasourceVariable, links } from './common';
import { DATASOURCE, resetIds, row, stat, stateTimeline, timeseries } from './panels';
import { quantile, STATE_MAPPINGS, stateCode } from './promql';

const RATE = '$__rate_interval';
const PER_MIN = 'suffix: /min';
const SVC = 'service="$service"';
// Envoy's cluster for a service has the service's name.
const CLUSTER = 'envoy_cluster_name="$service"';
const WAKE_SLOW_S = 20; // as on the Overview and in alerts/zenvoy.rules.yml
const MAX_PENDING = 1000;

function serviceVariable(): dashboard.QueryVariableBuilder {
  return new dashboard.QueryVariableBuilder('service')
    .label('Service')
    .description('A zenvoy service (its Envoy listener, cluster and assignment have this name)')
    .datasource(DATASOURCE)
    .query('label_values(zenvoy_service_state, service)')
    .refresh(dashboard.VariableRefresh.OnTimeRangeChanged)
    .sort(dashboard.VariableSort.AlphabeticalAsc);
}

export function service(): dashboard.DashboardBuilder {
  resetIds();
  return new dashboard.DashboardBuilder('zenvoy / Service')
    .uid('zenvoy-service')
    .description('One zenvoy service: its state, wakes, held connections and activity against its idle timeout.')
    .tags(['zenvoy'])
    .editable()
    .tooltip(dashboard.DashboardCursorSync.Crosshair)
    .refresh('30s')
    .time({ from: 'now-3h', to: 'now' })
    .timezone('browser')
    .withVariable(datasourceVariable())
    .withVariable(serviceVariable())
    .links(links())

    .withRow(row('State'))
    .withPanel(
      stateTimeline({
        title: 'State',
        description:
          'parked (blue: scaled to zero, the holder is its endpoint), waking (orange), awake (green), ' +
          'parking (purple: the holder is published again; waiting for every Envoy\'s ACK before stopping it).',
        unit: 'short',
        steps: [],
        queries: [{ expr: stateCode(SVC), legend: 'state' }],
        mappings: STATE_MAPPINGS,
        w: 24,
        h: 5,
      }),
    )
    .withPanel(
      stat({
        title: 'Wakes',
        description: 'Wakes started over the time range.',
        unit: 'short',
        steps: [],
        queries: [{ expr: `sum(increase(zenvoy_wakes_total{${SVC}}[$__range]))`, instant: true }],
        decimals: 0,
        w: 4,
        h: 4,
      }),
    )
    .withPanel(
      stat({
        title: 'Wake p99',
        description: `p99 of the time a client waited for this service to wake, over the time range. Red from ${WAKE_SLOW_S} s (the alert).`,
        unit: 's',
        steps: [
          [WAKE_SLOW_S / 2, 'orange'],
          [WAKE_SLOW_S, 'red'],
        ],
        queries: [
          {
            expr: `histogram_quantile(0.99, sum by (le) (increase(zenvoy_wake_duration_seconds_bucket{${SVC}, outcome="ready"}[$__range])))`,
            instant: true,
          },
        ],
        w: 4,
        h: 4,
      }),
    )
    .withPanel(
      stat({
        title: 'Failed or timed-out wakes',
        description: 'Wakes over the time range that did not end ready: the backend gave up, or wakeTimeout passed.',
        unit: 'short',
        steps: [[1, 'red']],
        queries: [
          {
            expr: `sum(increase(zenvoy_wake_outcomes_total{${SVC}, outcome!="ready"}[$__range])) or vector(0)`,
            instant: true,
          },
        ],
        decimals: 0,
        w: 4,
        h: 4,
      }),
    )
    .withPanel(
      stat({
        title: 'Parks',
        description: 'Parks completed over the time range.',
        unit: 'short',
        steps: [],
        queries: [{ expr: `sum(increase(zenvoy_parks_total{${SVC}}[$__range]))`, instant: true }],
        decimals: 0,
        w: 4,
        h: 4,
      }),
    )
    .withPanel(
      stat({
        title: 'Parks cancelled',
        description:
          'Parks cancelled over the time range: a connection arrived while the holder was being published again. ' +
          'Many: the idle timeout is shorter than the gaps in this service\'s traffic.',
        unit: 'short',
        steps: [[5, 'orange']],
        queries: [
          { expr: `sum(increase(zenvoy_parks_cancelled_total{${SVC}}[$__range])) or vector(0)`, instant: true },
        ],
        decimals: 0,
        w: 4,
        h: 4,
      }),
    )
    .withPanel(
      stat({
        title: 'Idle timeout',
        description: 'How long the service may go without activity before it is parked (idleTimeout).',
        unit: 's',
        steps: [],
        queries: [{ expr: `max(zenvoy_service_idle_timeout_seconds{${SVC}})`, instant: true }],
        w: 4,
        h: 4,
      }),
    )

    .withRow(row('Wakes'))
    .withPanel(
      timeseries({
        title: 'Wake duration',
        description:
          `From the first held connection to ready endpoints: p50, p90 and p99 of ready wakes, and p99 of the ones that ` +
          `failed or timed out. Points appear only where a wake finished.`,
        unit: 's',
        steps: [
          [WAKE_SLOW_S / 2, 'orange'],
          [WAKE_SLOW_S, 'red'],
        ],
        thresholdLines: true,
        points: true,
        queries: [
          ...[0.5, 0.9, 0.99].map((q) => ({
            expr: quantile(q, `zenvoy_wake_duration_seconds_bucket{${SVC}, outcome="ready"}`, [], RATE),
            legend: `p${Math.round(q * 100)}`,
          })),
          {
            expr: quantile(0.99, `zenvoy_wake_duration_seconds_bucket{${SVC}, outcome!="ready"}`, ['outcome'], RATE),
            legend: 'p99 {{outcome}}',
          },
        ],
        w: 12,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Wakes, parks and failures per minute',
        description:
          'Wakes started, finished wakes by outcome, parks completed, parks cancelled by a connection, ' +
          'and backend calls that failed (scale errors).',
        unit: PER_MIN,
        steps: [],
        bars: true,
        queries: [
          { expr: `sum(rate(zenvoy_wakes_total{${SVC}}[${RATE}])) * 60`, legend: 'wakes' },
          { expr: `sum by (outcome) (rate(zenvoy_wake_outcomes_total{${SVC}}[${RATE}])) * 60`, legend: '{{outcome}}' },
          { expr: `sum(rate(zenvoy_parks_total{${SVC}}[${RATE}])) * 60`, legend: 'parks' },
          { expr: `sum(rate(zenvoy_parks_cancelled_total{${SVC}}[${RATE}])) * 60`, legend: 'parks cancelled' },
          { expr: `sum(rate(zenvoy_scale_errors_total{${SVC}}[${RATE}])) * 60`, legend: 'scale errors' },
        ],
        colors: {
          wakes: 'orange',
          ready: 'green',
          failed: 'red',
          timed_out: 'dark-orange',
          parks: 'blue',
          'parks cancelled': 'purple',
          'scale errors': 'dark-red',
        },
        w: 12,
        h: 8,
      }),
    )

    .withRow(row('Held connections'))
    .withPanel(
      timeseries({
        title: 'Held connections',
        description:
          `Connections the holders keep for this service while it is parked or waking (summed over holders). ` +
          `Past its maxPending (${MAX_PENDING} by default) the next one is refused.`,
        unit: 'short',
        steps: [
          [MAX_PENDING * 0.8, 'orange'],
          [MAX_PENDING, 'red'],
        ],
        queries: [{ expr: `sum(zenvoy_holder_pending{${SVC}})`, legend: 'held' }],
        decimals: 0,
        w: 12,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Relayed by the holder per minute',
        description:
          'Held connections the holders handed to the woken service (spliced). Connections made while the service is ' +
          'awake go straight to it and do not count here.',
        unit: PER_MIN,
        steps: [],
        bars: true,
        queries: [{ expr: `sum(rate(zenvoy_holder_relayed_total{${SVC}}[${RATE}])) * 60`, legend: 'relayed' }],
        w: 12,
        h: 8,
      }),
    )

    .withRow(row('Activity against idle timeout'))
    .withPanel(
      timeseries({
        title: 'Connections and requests',
        description:
          'What Envoy sees for this service\'s cluster, summed over Envoys. The service parks once nothing moved for ' +
          'its idle timeout (dashed, right axis): for a TCP service an open connection or any new connection or byte ' +
          'is activity; for an HTTP service only requests are (Envoy keeps idle keep-alive connections).',
        unit: 'short',
        steps: [],
        queries: [
          { expr: `sum(envoy_cluster_upstream_cx_active{${CLUSTER}})`, legend: 'open connections' },
          { expr: `sum(envoy_cluster_upstream_rq_active{${CLUSTER}})`, legend: 'requests in flight' },
          { expr: `sum(rate(envoy_cluster_upstream_cx_total{${CLUSTER}}[${RATE}]))`, legend: 'new connections /s' },
          { expr: `sum(rate(envoy_cluster_upstream_rq_total{${CLUSTER}}[${RATE}]))`, legend: 'requests /s' },
          { expr: `max(zenvoy_service_idle_timeout_seconds{${SVC}})`, legend: 'idle timeout' },
        ],
        right: { names: ['idle timeout'], unit: 's' },
        w: 12,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Bytes',
        description:
          'Bytes between Envoy and this service, summed over Envoys: sent to it (requests) and received from it (responses). ' +
          'For a TCP service any byte is activity that keeps it awake.',
        unit: 'Bps',
        steps: [],
        queries: [
          { expr: `sum(rate(envoy_cluster_upstream_cx_tx_bytes_total{${CLUSTER}}[${RATE}]))`, legend: 'to the service' },
          {
            expr: `sum(rate(envoy_cluster_upstream_cx_rx_bytes_total{${CLUSTER}}[${RATE}]))`,
            legend: 'from the service',
          },
        ],
        w: 12,
        h: 8,
      }),
    );
}
