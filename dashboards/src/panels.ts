// Panel builders shared by both dashboards. Each one takes a title, a description, a
// unit and thresholds as required fields, so no panel can be added without them; the
// generator also checks the built JSON (see `checkPanels` in main.ts).

import * as common from '@grafana/grafana-foundation-sdk/common';
import * as dashboard from '@grafana/grafana-foundation-sdk/dashboard';
import * as prometheus from '@grafana/grafana-foundation-sdk/prometheus';
import * as statPanel from '@grafana/grafana-foundation-sdk/stat';
import * as statetimeline from '@grafana/grafana-foundation-sdk/statetimeline';
import * as table from '@grafana/grafana-foundation-sdk/table';
import * as timeseriesPanel from '@grafana/grafana-foundation-sdk/timeseries';

/** Every panel reads from the dashboard's `datasource` variable: no datasource UID is
 * written into the JSON, so the dashboards import into any Grafana. */
export const DATASOURCE = { type: 'prometheus', uid: '${datasource}' };

/** A PromQL query of a panel. `legend` is a Grafana legend template (`{{service}}`). */
export interface Query {
  expr: string;
  legend?: string;
  /** One value at the end of the range (stat and table panels), not a series. */
  instant?: boolean;
  /** Rows of a table rather than series. */
  table?: boolean;
}

/** Threshold steps above the base colour: `[[20, 'red']]` turns values of 20 and more red. */
export type Steps = Array<[number, string]>;

interface Common {
  title: string;
  description: string;
  /** A Grafana unit id (`s`, `short`, `Bps`, `suffix:/min`, ...). */
  unit: string;
  /** Colour below the first step. */
  base?: string;
  steps: Steps;
  queries: Query[];
  /** Grid width (of 24) and height. */
  w: number;
  h: number;
  /** Colours by series name, e.g. `{ failed: 'red' }`. */
  colors?: Record<string, string>;
  /** Field values shown as text with a colour, e.g. `{ 0: ['parked', 'blue'] }`. */
  mappings?: Record<number, [string, string]>;
  min?: number;
  decimals?: number;
}

// Grafana assigns panel ids on load when they are missing, which makes them differ
// between imports; numbering them here keeps links like `viewPanel=3` stable.
let nextId = 1;
export function resetIds(): void {
  nextId = 1;
}

function thresholds(base: string, steps: Steps): dashboard.ThresholdsConfigBuilder {
  return new dashboard.ThresholdsConfigBuilder()
    .mode(dashboard.ThresholdsMode.Absolute)
    .steps([{ value: null, color: base }, ...steps.map(([value, color]) => ({ value, color }))]);
}

function targets(queries: Query[]): prometheus.DataqueryBuilder[] {
  return queries.map((q, i) => {
    const t = new prometheus.DataqueryBuilder()
      .refId(String.fromCharCode(65 + i))
      .expr(q.expr)
      .datasource(DATASOURCE);
    if (q.legend !== undefined) t.legendFormat(q.legend);
    if (q.instant) t.instant();
    else t.range();
    if (q.table) t.format(prometheus.PromQueryFormat.Table);
    return t;
  });
}

function valueMappings(m: Record<number, [string, string]>): dashboard.ValueMapping[] {
  const options: Record<string, dashboard.ValueMappingResult> = {};
  Object.entries(m).forEach(([value, [text, color]], index) => {
    options[value] = { text, color, index };
  });
  return [{ type: dashboard.MappingType.ValueToText, options }];
}

/** The parts every panel type shares, applied to any of the SDK's panel builders. */
function apply<
  B extends {
    id(n: number): B;
    title(t: string): B;
    description(d: string): B;
    datasource(d: { type: string; uid: string }): B;
    unit(u: string): B;
    thresholds(t: dashboard.ThresholdsConfigBuilder): B;
    span(w: number): B;
    height(h: number): B;
    withTarget(t: prometheus.DataqueryBuilder): B;
    overrideByName(name: string, props: dashboard.DynamicConfigValue[]): B;
    mappings(m: dashboard.ValueMapping[]): B;
    min(n: number): B;
    decimals(n: number): B;
  },
>(b: B, o: Common): B {
  b.id(nextId++)
    .title(o.title)
    .description(o.description)
    .datasource(DATASOURCE)
    .unit(o.unit)
    .thresholds(thresholds(o.base ?? 'green', o.steps))
    .span(o.w)
    .height(o.h);
  for (const t of targets(o.queries)) b.withTarget(t);
  for (const [name, color] of Object.entries(o.colors ?? {})) {
    b.overrideByName(name, [{ id: 'color', value: { mode: 'fixed', fixedColor: color } }]);
  }
  if (o.mappings) b.mappings(valueMappings(o.mappings));
  if (o.min !== undefined) b.min(o.min);
  if (o.decimals !== undefined) b.decimals(o.decimals);
  return b;
}

export interface TimeseriesOptions extends Common {
  /** Stack the series (counts that add up, like services per state). */
  stack?: boolean;
  /** Draw the threshold steps as dashed lines (where a step is a limit worth seeing). */
  thresholdLines?: boolean;
  /** Bars for rare events (failures, refusals) that a line would smear. */
  bars?: boolean;
  /** Points as well as lines: series that exist only around rare events (a wake). */
  points?: boolean;
  /** Series (by name) drawn on a right-hand axis with this unit. */
  right?: { names: string[]; unit: string };
}

export function timeseries(o: TimeseriesOptions): timeseriesPanel.PanelBuilder {
  const b = apply(new timeseriesPanel.PanelBuilder(), { min: 0, ...o })
    .legend(
      new common.VizLegendOptionsBuilder()
        .showLegend(true)
        .displayMode(common.LegendDisplayMode.List)
        .placement(common.LegendPlacement.Bottom),
    )
    .tooltip(new common.VizTooltipOptionsBuilder().mode(common.TooltipDisplayMode.Multi).sort(common.SortOrder.Descending))
    .lineWidth(1)
    .fillOpacity(o.stack ? 60 : 10)
    .lineInterpolation(o.stack ? common.LineInterpolation.StepAfter : common.LineInterpolation.Linear)
    .showPoints(o.points ? common.VisibilityMode.Always : common.VisibilityMode.Never)
    .pointSize(5)
    .spanNulls(false)
    .drawStyle(o.bars ? common.GraphDrawStyle.Bars : common.GraphDrawStyle.Line)
    .thresholdsStyle(
      new common.GraphThresholdsStyleConfigBuilder().mode(
        o.thresholdLines ? common.GraphThresholdsStyleMode.Dashed : common.GraphThresholdsStyleMode.Off,
      ),
    );
  if (o.stack) b.stacking(new common.StackingConfigBuilder().mode(common.StackingMode.Normal));
  if (o.right) {
    for (const name of o.right.names) {
      b.overrideByName(name, [
        { id: 'custom.axisPlacement', value: common.AxisPlacement.Right },
        { id: 'unit', value: o.right.unit },
        { id: 'custom.lineStyle', value: { fill: 'dash', dash: [10, 10] } },
      ]);
    }
  }
  return b;
}

export interface StatOptions extends Common {
  /** Colour the background rather than the number (for health: up, leader). */
  background?: boolean;
  /** Show each series' name above its value. */
  names?: boolean;
}

export function stat(o: StatOptions): statPanel.PanelBuilder {
  return apply(new statPanel.PanelBuilder(), o)
    .reduceOptions(new common.ReduceDataOptionsBuilder().calcs(['lastNotNull']).values(false))
    .colorMode(o.background ? common.BigValueColorMode.Background : common.BigValueColorMode.Value)
    .graphMode(common.BigValueGraphMode.None)
    .textMode(o.names ? common.BigValueTextMode.ValueAndName : common.BigValueTextMode.Value)
    .justifyMode(common.BigValueJustifyMode.Auto)
    .orientation(common.VizOrientation.Auto);
}

export function stateTimeline(o: Common): statetimeline.PanelBuilder {
  return apply(new statetimeline.PanelBuilder(), o)
    .colorScheme(new dashboard.FieldColorBuilder().mode(dashboard.FieldColorModeId.Thresholds))
    .showValue(common.VisibilityMode.Auto)
    .mergeValues(true)
    .rowHeight(0.8)
    .fillOpacity(80)
    .lineWidth(0)
    .legend(
      new common.VizLegendOptionsBuilder()
        .showLegend(true)
        .displayMode(common.LegendDisplayMode.List)
        .placement(common.LegendPlacement.Bottom),
    );
}

export interface TableOptions extends Common {
  /** Column names, by the query's refId value column (`Value #A`), in order. */
  columns: Record<string, string>;
  /** Units of some columns (by their new name) where they differ from `unit`. */
  columnUnits?: Record<string, string>;
  /** Thresholds of some columns, coloring their cells. */
  columnSteps?: Record<string, Steps>;
  /** Links on the `service` column: to the Service dashboard for that row. */
  serviceLink?: boolean;
  sortBy?: string;
}

export function tablePanel(o: TableOptions): table.PanelBuilder {
  const indexByName: Record<string, number> = { service: 0 };
  Object.values(o.columns).forEach((name, i) => (indexByName[name] = i + 1));
  const b = apply(new table.PanelBuilder(), o)
    // One row per service: the queries' frames joined on their labels, the
    // timestamps dropped, the value columns named.
    .withTransformation({ id: 'merge', options: {} })
    .withTransformation({
      id: 'organize',
      options: { excludeByName: { Time: true }, renameByName: o.columns, indexByName },
    })
    .showHeader(true)
    .cellHeight(common.TableCellHeight.Sm);
  if (o.sortBy) b.sortBy([new common.TableSortByFieldStateBuilder().displayName(o.sortBy).desc(true)]);
  for (const [name, unit] of Object.entries(o.columnUnits ?? {})) {
    b.overrideByName(name, [{ id: 'unit', value: unit }]);
  }
  for (const [name, steps] of Object.entries(o.columnSteps ?? {})) {
    b.overrideByName(name, [
      { id: 'thresholds', value: thresholds('green', steps).build() },
      { id: 'custom.cellOptions', value: { type: 'color-text' } },
    ]);
  }
  if (o.serviceLink) {
    b.overrideByName('service', [
      {
        id: 'links',
        value: [
          {
            title: 'Service dashboard for ${__value.text}',
            url: '/d/zenvoy-service/zenvoy-service?var-service=${__value.text}&${datasource:queryparam}&${__url_time_range}',
          },
        ],
      },
    ]);
  }
  return b;
}

export function row(title: string): dashboard.RowBuilder {
  return new dashboard.RowBuilder(title).id(nextId++);
}
