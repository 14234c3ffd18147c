// Dashboard-level pieces both dashboards share: the datasource variable and links.

import * as dashboard from '@grafana/grafana-foundation-sdk/dashboard';

/** Which Prometheus to read: every panel uses `${datasource}`, so no datasource UID is
 * written into the JSON and the dashboards work in any Grafana. */
export function datasourceVariable(): dashboard.DatasourceVariableBuilder {
  return new dashboard.DatasourceVariableBuilder('datasource')
    .label('Data source')
    .description('The Prometheus that scrapes the zenvoy controller, holders and Envoys')
    .type('prometheus');
}

/** Both zenvoy dashboards (by tag) from either one, keeping the time range and variables. */
export function links(): dashboard.DashboardLinkBuilder[] {
  return [
    new dashboard.DashboardLinkBuilder('zenvoy')
      .type(dashboard.DashboardLinkType.Dashboards)
      .tags(['zenvoy'])
      .asDropdown(true)
      .includeVars(true)
      .keepTime(true),
  ];
}
