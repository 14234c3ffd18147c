// Validates deploy/monitoring/ offline, as the cluster would see it: rendered by
// kustomize (kubectl from the project venv), each prometheus-operator object checked
// against its CRD's schema (@kubernetes-models/prometheus-operator), and the rest (the
// dashboards ConfigMap) by kubernetes-validate --strict against the Kubernetes schemas.
// Run by `npm run validate` (and so by `make test`).

import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { PodMonitor, PrometheusRule, ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import YAML from 'yaml';

const ROOT = path.resolve(__dirname, '..', '..');
const VENV = path.join(ROOT, '.venv', 'bin');

const MODELS: Record<string, (doc: never) => { validate(): void }> = {
  ServiceMonitor: (d) => new ServiceMonitor(d),
  PodMonitor: (d) => new PodMonitor(d),
  PrometheusRule: (d) => new PrometheusRule(d),
};

function tool(name: string): string {
  const p = path.join(VENV, name);
  if (!fs.existsSync(p)) throw new Error(`${p} is missing: run \`make setup\``);
  return p;
}

function main(): void {
  const rendered = execFileSync(tool('kubectl'), ['kustomize', path.join(ROOT, 'deploy', 'monitoring')], {
    encoding: 'utf8',
  });
  const docs = YAML.parseAllDocuments(rendered).map((d) => d.toJS() as Record<string, any>);
  const errors: string[] = [];
  const kinds = new Map<string, number>();

  for (const doc of docs) {
    const id = `${doc.kind}/${doc.metadata?.name}`;
    kinds.set(doc.kind, (kinds.get(doc.kind) ?? 0) + 1);
    if (doc.metadata?.namespace !== 'zenvoy-system') errors.push(`${id}: not in zenvoy-system`);
    const model = MODELS[doc.kind];
    if (model) {
      try {
        model(doc as never).validate();
      } catch (e) {
        errors.push(`${id}: ${(e as Error).message}`);
      }
    }
    if (doc.kind === 'ConfigMap') {
      if (doc.metadata?.labels?.grafana_dashboard !== '1') errors.push(`${id}: no grafana_dashboard: "1" label`);
      for (const [key, text] of Object.entries<string>(doc.data ?? {})) {
        const d = JSON.parse(text);
        if (`${d.uid}.json` !== key) errors.push(`${id}: ${key} holds dashboard ${d.uid}`);
      }
    }
  }
  for (const [kind, n] of [
    ['ServiceMonitor', 1],
    ['PodMonitor', 2],
    ['PrometheusRule', 1],
    ['ConfigMap', 1],
  ] as const) {
    if (kinds.get(kind) !== n) errors.push(`expected ${n} ${kind}, rendered ${kinds.get(kind) ?? 0}`);
  }

  // The Kubernetes schemas for what has one; the CRD kinds above are reported as
  // having none, which is expected (they were checked against the operator's).
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'zenvoy-monitoring-')), 'rendered.yaml');
  fs.writeFileSync(file, rendered);
  let report: string;
  try {
    report = execFileSync(tool('kubernetes-validate'), ['--strict', file], { encoding: 'utf8', stdio: 'pipe' });
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    report = `${err.stdout ?? ''}${err.stderr ?? ''}`;
    errors.push(`kubernetes-validate failed:\n${report}`);
  } finally {
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  }
  for (const line of report.split('\n')) {
    if (line.startsWith('ERROR')) errors.push(line);
    const missing = /Couldn't find schema for kind (\w+)/.exec(line);
    if (missing && !MODELS[missing[1]]) errors.push(`no schema checked ${missing[1]}: ${line}`);
  }

  if (errors.length) {
    console.error(`deploy/monitoring/ is not valid:\n  ${errors.join('\n  ')}`);
    process.exit(1);
  }
  console.log(`deploy/monitoring/: ${docs.length} objects valid (${[...kinds.keys()].join(', ')})`);
}

main();
