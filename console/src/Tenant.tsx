// One tenant's panel: its own client (and so its own cache and WebSocket), its devices with their
// live alarms and latest measurements, and what an admin of that tenant manages (Admin.tsx).
import { useCallback, useMemo, useState } from "react";
import { Provider, useMutation, useQuery } from "urql";
import { graphql } from "./gql";
import type { AlarmFieldsFragment, LiveAlarmsSubscription, LiveMeasurementsSubscription } from "./gql/graphql";
import type { Membership } from "./App";
import { tenantClient, type TenantClient } from "./clients";
import { useLive } from "./live";
import { Admin } from "./Admin";

const TENANT = graphql(`
  query TenantHome {
    tenant { id domain company kind status }
    devices(first: 50) { totalCount edges { node { id name type availability } } }
    alarms(filter: { status: [ACTIVE, ACKNOWLEDGED] }, first: 50) { edges { node { ...AlarmFields } } }
  }
`);

graphql(`
  fragment AlarmFields on Alarm { id deviceId type severity status text count lastRaisedAt }
`);

const LIVE_ALARMS = graphql(`
  subscription LiveAlarms($after: ChangePosition) {
    alarms(after: $after) { kind position alarm { ...AlarmFields } }
  }
`);

const ACKNOWLEDGE = graphql(`
  mutation Acknowledge($id: ID!) { updateAlarmStatus(id: $id, status: ACKNOWLEDGED) { ...AlarmFields } }
`);

const MEASUREMENTS = graphql(`
  query DeviceMeasurements($deviceId: ID!) {
    measurements(deviceId: $deviceId, first: 100) { edges { node { id time type series value unit } } }
  }
`);

const LIVE_MEASUREMENTS = graphql(`
  subscription LiveMeasurements($deviceId: ID!, $after: ChangePosition) {
    measurements(deviceId: $deviceId, after: $after) { id time type series value unit position }
  }
`);

export function TenantPanel({ tenantId, membership, onClose }:
    { tenantId: string; membership: Membership | undefined; onClose: () => void }) {
  const tenant = useMemo(() => tenantClient(tenantId), [tenantId]);
  return (
    <Provider value={tenant.client}>
      <section className="panel" data-testid={`panel-${tenantId}`} aria-label={`tenant ${tenantId}`}>
        <h2>
          <span data-testid="tenant-name">{membership?.tenant.company ?? tenantId}</span>
          <span className="badge">{membership?.tenant.kind}</span>
          <span className="muted">{membership?.role}</span>
          <span style={{ flex: 1 }} /><button onClick={onClose} aria-label="close">×</button>
        </h2>
        <Home tenant={tenant} />
        {membership?.role === "ADMIN" && <Admin tenantId={tenantId} kind={membership.tenant.kind} />}
      </section>
    </Provider>
  );
}

function Home({ tenant }: { tenant: TenantClient }) {
  const [{ data, error }] = useQuery({ query: TENANT });
  const [live, setLive] = useState<Map<string, AlarmFieldsFragment>>(new Map());
  const [selected, setSelected] = useState<string | null>(null);
  const [, acknowledge] = useMutation(ACKNOWLEDGE);
  const merge = useCallback((alarm: AlarmFieldsFragment) => setLive((m) => new Map(m).set(alarm.id, alarm)), []);
  const feed = useLive(tenant, LIVE_ALARMS, {}, (r: LiveAlarmsSubscription) => r.alarms.position,
                       (r: LiveAlarmsSubscription) => merge(r.alarms.alarm));

  const alarms = useMemo(() => {
    const all = new Map<string, AlarmFieldsFragment>();
    for (const edge of data?.alarms.edges ?? []) all.set(edge.node.id, edge.node);
    for (const [id, alarm] of live) all.set(id, alarm);
    return [...all.values()].filter((a) => a.status !== "CLEARED")
      .sort((a, b) => b.lastRaisedAt.localeCompare(a.lastRaisedAt));
  }, [data, live]);
  const names = new Map((data?.devices.edges ?? []).map((e) => [e.node.id, e.node.name]));
  if (error) return <p className="error">{error.message}</p>;
  if (!data) return <p className="muted">Loading…</p>;

  return (
    <>
      <div className="card">
        <h3>Devices <span className="muted">{data.devices.totalCount}</span></h3>
        <table data-testid="devices">
          <tbody>
            {data.devices.edges.map(({ node }) => (
              <tr key={node.id} data-device={node.name}>
                <td><button className="link" onClick={() => setSelected(node.id)}>{node.name}</button></td>
                <td className="muted">{node.type}</td><td><span className="badge">{node.availability}</span></td>
              </tr>
            ))}
          </tbody>
        </table>
        {selected && <Chart tenant={tenant} deviceId={selected} name={names.get(selected) ?? selected} />}
      </div>
      <div className="card">
        <h3>Alarms <span className={feed.state} data-testid="alarm-feed">{feed.state}</span>
          {feed.reconnects > 0 && <span className="muted"> resumed {feed.reconnects}×</span>}</h3>
        <table data-testid="alarms">
          <tbody>
            {alarms.map((alarm) => (
              <tr key={alarm.id} data-alarm={alarm.type}>
                <td><span className={`badge ${alarm.severity}`}>{alarm.severity}</span></td>
                <td>{alarm.text} <span className="muted">{names.get(alarm.deviceId) ?? ""} ×{alarm.count}</span></td>
                <td data-testid="alarm-status">{alarm.status}</td>
                <td>{alarm.status === "ACTIVE" && (
                  <button onClick={() => { void acknowledge({ id: alarm.id }).then((r) => {
                    if (r.data) merge(r.data.updateAlarmStatus); }); }}>Acknowledge</button>)}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {alarms.length === 0 && <p className="muted">No open alarms.</p>}
      </div>
    </>
  );
}

type Point = { time: string; value: number; series: string; unit?: string | null | undefined };

function Chart({ tenant, deviceId, name }: { tenant: TenantClient; deviceId: string; name: string }) {
  const [{ data }] = useQuery({ query: MEASUREMENTS, variables: { deviceId } });
  const [fresh, setFresh] = useState<Point[]>([]);
  useLive(tenant, LIVE_MEASUREMENTS, { deviceId },
          (r: LiveMeasurementsSubscription) => r.measurements.at(-1)?.position,
          (r: LiveMeasurementsSubscription) => setFresh((p) => [...p, ...r.measurements].slice(-500)));
  const points = [...(data?.measurements.edges.map((e) => e.node) ?? []), ...fresh]
    .sort((a, b) => a.time.localeCompare(b.time)).slice(-100);
  const latest = points.at(-1);
  if (points.length === 0) return <p className="muted" data-testid="chart">{name}: no measurements yet.</p>;
  const values = points.map((p) => p.value);
  const [low, high] = [Math.min(...values), Math.max(...values)];
  const x = (i: number) => (points.length === 1 ? 150 : (i / (points.length - 1)) * 300);
  const y = (v: number) => (high === low ? 40 : 75 - ((v - low) / (high - low)) * 70);
  return (
    <figure data-testid="chart" style={{ margin: ".5em 0" }}>
      <svg viewBox="0 0 300 80" width="100%" height="80" role="img" aria-label={`${name} measurements`}>
        <polyline fill="none" stroke="#1a73e8" strokeWidth="1.5"
                  points={points.map((p, i) => `${x(i).toFixed(1)},${y(p.value).toFixed(1)}`).join(" ")} />
      </svg>
      <figcaption className="muted">{name} · latest <strong data-testid="latest">{latest?.value}</strong>
        {latest?.unit ?? ""} ({latest?.series}) · {points.length} points</figcaption>
    </figure>
  );
}
