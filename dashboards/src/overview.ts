// zenvoy / Overview: the whole system on one page. Every service's state, what wakes
// and parks cost, the holder's queues and relays, the control plane (xDS, stats
// ingest, leader) and whether every process is up.

import * as dashboard from '@grafana/grafana-foundation-sdk/dashboard';

import { datasourceVariable, links } from './common';
import { resetIds, row, stat, stateTimeline, tablePanel, timeseries } from './panels';
import { ON_SERVING, quantile, STATE_MAPPINGS, STATES, stateCode } from './promql';

const RATE = '$__rate_interval';
const PER_MIN = 'suffix: /min';
const STATE_COLORS = Object.fromEntries(STATES.map(([name, , color]) => [name, color]));

// Limits the thresholds and alerts are drawn against (the defaults; see
// alerts/zenvoy.rules.yml for the same numbers).
const WAKE_SLOW_S = 20; // under holdTimeout (30 s by default): held clients still wait
const MAX_PENDING = 1000; // per service: maxPending / --max-pending
const PARK_ACK_TIMEOUT_S = 5; // parkAckTimeout: a park waits this long for ACKs

export function overview(): dashboard.DashboardBuilder {
  resetIds();
  return new dashboard.DashboardBuilder('zenvoy / Overview')
    .uid('zenvoy-overview')
    .description('Every service\'s state, what wakes and parks cost, the holder, the control plane and process health.')
    .tags(['zenvoy'])
    .editable()
    .tooltip(dashboard.DashboardCursorSync.Crosshair)
    .refresh('30s')
    .time({ from: 'now-3h', to: 'now' })
    .timezone('browser')
    .withVariable(datasourceVariable())
    .links(links())

    .withRow(row('Services'))
    .withPanel(
      stat({
        title: 'Services by state',
        description:
          'How many services are in each state now, as the leading controller sees them. ' +
          'Waking and parking are passing states: a service that stays in one is stuck.',
        unit: 'short',
        steps: [],
        queries: [{ expr: `sum by (state) (zenvoy_service_state ${ON_SERVING})`, legend: '{{state}}', instant: true }],
        colors: STATE_COLORS,
        names: true,
        w: 6,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Services by state over time',
        description: 'Services in each state (stacked), from the leading controller.',
        unit: 'short',
        steps: [],
        queries: [{ expr: `sum by (state) (zenvoy_service_state ${ON_SERVING})`, legend: '{{state}}' }],
        colors: STATE_COLORS,
        stack: true,
        decimals: 0,
        w: 9,
        h: 8,
      }),
    )
    .withPanel(
      stateTimeline({
        title: 'Service states',
        description:
          'One row per service: parked (blue), waking (orange), awake (green), parking (purple). ' +
          'For a large fleet, pick one service on the Service dashboard instead.',
        unit: 'short',
        steps: [],
        queries: [{ expr: stateCode(''), legend: '{{service}}' }],
        mappings: STATE_MAPPINGS,
        w: 9,
        h: 8,
      }),
    )

    .withRow(row('Wakes and parks'))
    .withPanel(
      timeseries({
        title: 'Wakes and parks per minute',
        description:
          'Wakes started, parks completed, and parks cancelled by a connection that arrived ' +
          'while the holder was being published again (phase one of a park).',
        unit: PER_MIN,
        steps: [],
        queries: [
          { expr: `sum(rate(zenvoy_wakes_total[${RATE}])) * 60`, legend: 'wakes' },
          { expr: `sum(rate(zenvoy_parks_total[${RATE}])) * 60`, legend: 'parks' },
          { expr: `sum(rate(zenvoy_parks_cancelled_total[${RATE}])) * 60`, legend: 'parks cancelled' },
        ],
        colors: { wakes: 'orange', parks: 'blue', 'parks cancelled': 'purple' },
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Wake duration (ready)',
        description:
          `From the first held connection to ready endpoints, for wakes that succeeded: p50, p90, p99 over all services. ` +
          `A held client waits this long; past ${WAKE_SLOW_S} s (the alert) it gets close to holdTimeout (30 s by default) and is dropped.`,
        unit: 's',
        steps: [
          [WAKE_SLOW_S / 2, 'orange'],
          [WAKE_SLOW_S, 'red'],
        ],
        thresholdLines: true,
        points: true,
        queries: [0.5, 0.9, 0.99].map((q) => ({
          expr: quantile(q, 'zenvoy_wake_duration_seconds_bucket{outcome="ready"}', [], RATE),
          legend: `p${Math.round(q * 100)}`,
        })),
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Wake outcomes and scale errors per minute',
        description:
          'Finished wakes by outcome: ready, failed (the backend gave up: the command exited, the API refused) ' +
          'or timed_out (not ready within wakeTimeout). Scale errors are backend calls that failed, wakes and parks alike. ' +
          'Drift repairs: a workload found running while its service was parked (or stopped while awake), put right by reconciliation.',
        unit: PER_MIN,
        steps: [],
        bars: true,
        queries: [
          { expr: `sum by (outcome) (rate(zenvoy_wake_outcomes_total[${RATE}])) * 60`, legend: '{{outcome}}' },
          { expr: `sum(rate(zenvoy_scale_errors_total[${RATE}])) * 60`, legend: 'scale errors' },
          { expr: `sum(rate(zenvoy_drift_repairs_total[${RATE}])) * 60`, legend: 'drift repairs' },
        ],
        colors: { ready: 'green', failed: 'red', timed_out: 'orange', 'scale errors': 'dark-red', 'drift repairs': 'purple' },
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      tablePanel({
        title: 'Wake cost by service',
        description:
          'Over the dashboard\'s time range, per service: wakes, the p50 and p99 time a client waited for one, ' +
          'wakes that failed or timed out, and parks. Click a service for its own dashboard.',
        unit: 'short',
        steps: [],
        queries: [
          { expr: 'sum by (service) (increase(zenvoy_wakes_total[$__range]))', instant: true, table: true },
          {
            expr: 'histogram_quantile(0.5, sum by (le, service) (increase(zenvoy_wake_duration_seconds_bucket{outcome="ready"}[$__range])))',
            instant: true,
            table: true,
          },
          {
            expr: 'histogram_quantile(0.99, sum by (le, service) (increase(zenvoy_wake_duration_seconds_bucket{outcome="ready"}[$__range])))',
            instant: true,
            table: true,
          },
          {
            expr: 'sum by (service) (increase(zenvoy_wake_outcomes_total{outcome!="ready"}[$__range]))',
            instant: true,
            table: true,
          },
          { expr: 'sum by (service) (increase(zenvoy_parks_total[$__range]))', instant: true, table: true },
        ],
        columns: {
          'Value #A': 'wakes',
          'Value #B': 'wait p50',
          'Value #C': 'wait p99',
          'Value #D': 'failed or timed out',
          'Value #E': 'parks',
        },
        columnUnits: { 'wait p50': 's', 'wait p99': 's' },
        columnSteps: {
          'wait p99': [
            [WAKE_SLOW_S / 2, 'orange'],
            [WAKE_SLOW_S, 'red'],
          ],
          'failed or timed out': [[1, 'red']],
        },
        decimals: 1,
        serviceLink: true,
        sortBy: 'wakes',
        w: 24,
        h: 8,
      }),
    )

    .withRow(row('Holder'))
    .withPanel(
      timeseries({
        title: 'Held connections',
        description:
          `Connections the holders keep for parked or waking services, per service. ` +
          `Past maxPending (${MAX_PENDING} by default) a service's next connection is refused.`,
        unit: 'short',
        steps: [
          [MAX_PENDING * 0.8, 'orange'],
          [MAX_PENDING, 'red'],
        ],
        thresholdLines: true,
        queries: [{ expr: 'sum by (service) (zenvoy_holder_pending)', legend: '{{service}}' }],
        decimals: 0,
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Held connections ended, per minute',
        description:
          'How held connections ended: relayed to the woken service, or lost: timeout (holdTimeout passed), ' +
          'dial_failed (the service did not accept), client_closed (the client gave up) or rejected (over a limit).',
        unit: PER_MIN,
        steps: [],
        bars: true,
        queries: [
          { expr: `sum by (outcome) (rate(zenvoy_holder_held_seconds_count[${RATE}])) * 60`, legend: '{{outcome}}' },
        ],
        colors: { relayed: 'green', timeout: 'red', dial_failed: 'dark-red', client_closed: 'yellow', rejected: 'orange' },
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Time held, p99 by outcome',
        description: 'How long held connections waited before they ended, by outcome (p99). Relayed ones waited for a wake.',
        unit: 's',
        steps: [
          [WAKE_SLOW_S / 2, 'orange'],
          [WAKE_SLOW_S, 'red'],
        ],
        thresholdLines: true,
        points: true,
        queries: [
          { expr: quantile(0.99, 'zenvoy_holder_held_seconds_bucket', ['outcome'], RATE), legend: '{{outcome}}' },
        ],
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Refusals by reason, per minute',
        description:
          'Connections the holder refused at once: a bad or slow PROXY header (truncated, io, slow_header, ...), ' +
          'unknown_destination (transparent mode), or a limit: max_pending, max_pending_total, max_services.',
        unit: PER_MIN,
        steps: [[1, 'red']],
        bars: true,
        queries: [{ expr: `sum by (reason) (rate(zenvoy_holder_refused_total[${RATE}])) * 60`, legend: '{{reason}}' }],
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Relay throughput',
        description:
          'Bytes the holders relay between woken services and the clients they held, by direction. ' +
          'Only held connections pass the holder: once a service is awake Envoy connects straight to it.',
        unit: 'Bps',
        steps: [],
        queries: [
          { expr: `sum by (direction) (rate(zenvoy_holder_relay_bytes_total[${RATE}]))`, legend: '{{direction}}' },
        ],
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Descriptor waits and redials per minute',
        description:
          'Times a holder ran short of file descriptors and a connection waited for them instead of failing ' +
          '(any at all: raise its RLIMIT_NOFILE, see README, File descriptors), and held connections whose dial failed ' +
          'at every endpoint and was tried again before their hold ended (an upstream that accepts late or restarts).',
        unit: PER_MIN,
        steps: [[1, 'red']],
        bars: true,
        queries: [
          { expr: `sum by (instance) (rate(zenvoy_holder_fd_waits_total[${RATE}])) * 60`, legend: 'fd waits {{instance}}' },
          { expr: `sum by (instance) (rate(zenvoy_holder_redials_total[${RATE}])) * 60`, legend: 'redials {{instance}}' },
        ],
        w: 8,
        h: 8,
      }),
    )

    .withRow(row('Control plane'))
    .withPanel(
      timeseries({
        title: 'xDS push to ACK',
        description:
          `From a DiscoveryResponse sent to its ACK, by resource type (p50 and p99). ` +
          `A park waits for every Envoy's EDS ACK, at most parkAckTimeout (${PARK_ACK_TIMEOUT_S} s by default).`,
        unit: 's',
        steps: [
          [PARK_ACK_TIMEOUT_S / 5, 'orange'],
          [PARK_ACK_TIMEOUT_S, 'red'],
        ],
        thresholdLines: true,
        queries: [
          { expr: quantile(0.5, 'zenvoy_xds_push_ack_seconds_bucket', ['type'], RATE), legend: 'p50 {{type}}' },
          { expr: quantile(0.99, 'zenvoy_xds_push_ack_seconds_bucket', ['type'], RATE), legend: 'p99 {{type}}' },
        ],
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'xDS NACKs per minute',
        description:
          'Responses an Envoy or holder rejected, by type: it keeps its old config for that resource. ' +
          'The controller logs the rejection with the client\'s error.',
        unit: PER_MIN,
        steps: [[1, 'red']],
        bars: true,
        queries: [{ expr: `sum by (type) (rate(zenvoy_xds_nacks_total[${RATE}])) * 60`, legend: '{{type}}' }],
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'ADS streams',
        description: 'ADS streams connected to the controllers: one per Envoy and one per holder, on the leader only.',
        unit: 'short',
        base: 'red',
        steps: [[1, 'green']],
        queries: [{ expr: 'sum(zenvoy_xds_streams)', legend: 'streams' }],
        decimals: 0,
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Stats received per second',
        description:
          'Stats messages the controllers took in, by source: push (Envoy\'s metrics_service sink, holders\' pending ' +
          'counts) or scrape (scrape.targets). Activity and idleness are decided from these.',
        unit: 'suffix: /s',
        steps: [],
        queries: [
          { expr: `sum by (source) (rate(zenvoy_ingest_samples_total[${RATE}]))`, legend: '{{source}}' },
        ],
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Stats errors per minute',
        description:
          'Metric streams that failed (push) and scrapes that failed (scrape): the node behind a failure is forgotten until it answers again. ' +
          'Expired: nodes that sent nothing for the stats expiry (controller.peerTimeout) and were forgotten. ' +
          'Refused values: stats that cannot be counts (negative, NaN, infinite). ' +
          'Refused streams: xDS or metrics streams the controller turned away, by reason (over controller.maxStreams, ' +
          'or a client certificate that does not name the node it claims).',
        unit: PER_MIN,
        steps: [[1, 'red']],
        bars: true,
        queries: [
          { expr: `sum by (source) (rate(zenvoy_ingest_errors_total[${RATE}])) * 60`, legend: '{{source}}' },
          { expr: `sum(rate(zenvoy_ingest_nodes_expired_total[${RATE}])) * 60`, legend: 'expired nodes' },
          { expr: `sum(rate(zenvoy_ingest_rejected_total[${RATE}])) * 60`, legend: 'refused values' },
          { expr: `sum by (reason) (rate(zenvoy_streams_refused_total[${RATE}])) * 60`, legend: 'refused streams ({{reason}})' },
        ],
        w: 8,
        h: 8,
      }),
    )
    .withPanel(
      stat({
        title: 'Stale nodes',
        description:
          'Envoys with no connection to the controller (their stats and config have stopped: ' +
          'envoy_cluster_upstream_cx_active of cluster zenvoy_controller is 0), and scrape targets that are down.',
        unit: 'short',
        steps: [[1, 'red']],
        background: true,
        names: true,
        queries: [
          {
            expr: 'count(envoy_cluster_upstream_cx_active{envoy_cluster_name="zenvoy_controller"} == 0) or vector(0)',
            legend: 'Envoys cut off',
            instant: true,
          },
          {
            expr: 'count(up{job=~"zenvoy-controller|zenvoy-holder|zenvoy-envoy"} == 0) or vector(0)',
            legend: 'targets down',
            instant: true,
          },
        ],
        w: 8,
        h: 8,
      }),
    )

    .withRow(row('Health'))
    .withPanel(
      stat({
        title: 'Up',
        description:
          'Scrape targets up, per job: the controller replicas, the holders and the Envoys. Red: none of a kind is up.',
        unit: 'short',
        base: 'red',
        steps: [[1, 'green']],
        background: true,
        names: true,
        queries: [
          {
            expr: 'sum by (job) (up{job=~"zenvoy-controller|zenvoy-holder|zenvoy-envoy"})',
            legend: '{{job}}',
            instant: true,
          },
        ],
        w: 8,
        h: 6,
      }),
    )
    .withPanel(
      stat({
        title: 'Leaders',
        description:
          'Controller replicas that may scale (zenvoy_leader). Exactly one: 0 means nothing wakes or parks, ' +
          'more than 1 means two replicas both act.',
        unit: 'short',
        base: 'red',
        steps: [
          [1, 'green'],
          [2, 'red'],
        ],
        background: true,
        queries: [{ expr: 'sum(zenvoy_leader)', instant: true }],
        w: 4,
        h: 6,
      }),
    )
    .withPanel(
      stat({
        title: 'Config reloads',
        description:
          'Config file or ConfigMap changes over the time range: applied, or rejected (invalid, or needing a restart; ' +
          'the last good config stays and the controller logs the field).',
        unit: 'short',
        steps: [],
        names: true,
        queries: [
          {
            expr: 'sum by (result) (increase(zenvoy_config_reloads_total[$__range]))',
            legend: '{{result}}',
            instant: true,
          },
        ],
        colors: { applied: 'green', rejected: 'red' },
        decimals: 0,
        w: 4,
        h: 6,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Kubernetes API errors per minute',
        description: 'Kubernetes API calls that failed and were retried, by operation (scale_up, scale_down, lease).',
        unit: PER_MIN,
        steps: [[1, 'red']],
        bars: true,
        queries: [{ expr: `sum by (op) (rate(zenvoy_kube_api_errors_total[${RATE}])) * 60`, legend: '{{op}}' }],
        w: 8,
        h: 6,
      }),
    );
}
