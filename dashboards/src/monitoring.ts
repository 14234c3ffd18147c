// The prometheus-operator objects in deploy/monitoring/: how Prometheus finds the
// controller, the holders and the Envoys, and the alert rules as a PrometheusRule.
// Written with the typed models of @kubernetes-models/prometheus-operator, so a field
// the CRD does not have fails `tsc` (kubectl applies with strict field validation), and
// each object is checked against the CRD's schema when it is built.

import { PodMonitor, PrometheusRule, ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';

const PART_OF = { 'app.kubernetes.io/part-of': 'zenvoy' };

// The dashboards and alerts select targets by job: zenvoy-controller, zenvoy-holder and
// zenvoy-envoy. A ServiceMonitor's job is its Service's name; a PodMonitor's would be
// `<namespace>/<name>`, so those set it.
function job(name: string) {
  return [{ action: 'replace' as const, targetLabel: 'job', replacement: name }];
}

export function monitors(): Array<ServiceMonitor | PodMonitor> {
  const objects = [
    new ServiceMonitor({
      metadata: { name: 'zenvoy-controller', labels: PART_OF },
      spec: {
        // Both replicas: the follower's zenvoy_leader 0 is what the leader alerts count.
        selector: { matchLabels: { 'app.kubernetes.io/name': 'zenvoy-controller' } },
        endpoints: [{ port: 'admin', path: '/metrics', interval: '15s' }],
      },
    }),
    new PodMonitor({
      metadata: { name: 'zenvoy-holder', labels: PART_OF },
      spec: {
        selector: { matchLabels: { 'app.kubernetes.io/name': 'zenvoy-proxy' } },
        podMetricsEndpoints: [{ port: 'holder-admin', path: '/metrics', interval: '15s', relabelings: job('zenvoy-holder') }],
      },
    }),
    new PodMonitor({
      metadata: { name: 'zenvoy-envoy', labels: PART_OF },
      spec: {
        selector: { matchLabels: { 'app.kubernetes.io/name': 'zenvoy-proxy' } },
        // Envoy's admin listens on loopback only; deploy/base/proxy.yaml exposes its
        // /stats/prometheus on this port (and the probes' paths, nothing else).
        podMetricsEndpoints: [
          { port: 'envoy-metrics', path: '/stats/prometheus', interval: '15s', relabelings: job('zenvoy-envoy') },
        ],
      },
    }),
  ];
  for (const o of objects) o.validate();
  return objects;
}

/** The rules file's groups as a PrometheusRule, checked against its schema. */
export function prometheusRule(groups: unknown): PrometheusRule {
  const rule = new PrometheusRule({
    metadata: { name: 'zenvoy', labels: PART_OF },
    spec: { groups: groups as PrometheusRule['spec']['groups'] },
  });
  rule.validate();
  return rule;
}
