// What a tenant's admin manages: subtenants with their first admin, limits, the subtree's usage with
// a CSV export (parents), invitations and API tokens. Nothing here reads a child's data.
import { useState, type FormEvent } from "react";
import { useMutation, useQuery } from "urql";
import { graphql } from "./gql";
import type { TenantKind } from "./gql/graphql";
import { accessToken } from "./session";

const ADMIN = graphql(`
  query AdminHome($from: Date!, $to: Date!, $parent: Boolean!) {
    tenant { id limits { maxDevices deviceCount maxUsers userCount maxSubtenants subtenantCount storageBytes storageUsed } }
    tenants(first: 50) @include(if: $parent) { edges { node { id domain company kind status } } }
    subtenantUsage(from: $from, to: $to) @include(if: $parent) {
      tenantId tenantDomain deviceCount requestCount measurementsCreatedCount storageSize }
    invitations(first: 20) { edges { node { id email role status expiresAt } } }
    apiTokens { id name permissions createdAt lastUsedAt }
  }
`);

const CREATE_SUBTENANT = graphql(`
  mutation CreateSubtenant($input: CreateSubtenantInput!) { createSubtenant(input: $input) { id domain company kind } }
`);
const INVITE = graphql(`
  mutation Invite($email: String!, $role: String!) { inviteMember(email: $email, role: $role) { id email role status } }
`);
const CREATE_TOKEN = graphql(`
  mutation CreateToken($name: String!, $permissions: [String!]!) {
    createApiToken(name: $name, permissions: $permissions) { token apiToken { id name } }
  }
`);
const REVOKE_TOKEN = graphql(`mutation RevokeToken($id: ID!) { revokeApiToken(id: $id) }`);

function fields(event: FormEvent<HTMLFormElement>): Record<string, string> {
  event.preventDefault();
  return Object.fromEntries([...new FormData(event.currentTarget)].map(([k, v]) => [k, String(v)]));
}

const day = (date: Date) => date.toISOString().slice(0, 10);

export function Admin({ tenantId, kind }: { tenantId: string; kind: TenantKind }) {
  const parent = kind !== "STANDARD";
  const today = new Date();
  const range = { from: day(new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), 1))), to: day(today) };
  const [{ data, error }, refetch] = useQuery({ query: ADMIN, variables: { ...range, parent } });
  const again = () => refetch({ requestPolicy: "network-only" });
  if (error) return <p className="error">{error.message}</p>;
  if (!data) return null;
  const limits = data.tenant.limits;
  const shown = (used: number, max: number | null | undefined) => `${used} of ${max ?? "unlimited"}`;
  return (
    <>
      <div className="card" data-testid="limits">
        <h3>Limits</h3>
        <table><tbody>
          <tr><td>Devices</td><td>{shown(limits.deviceCount, limits.maxDevices)}</td></tr>
          <tr><td>Users</td><td>{shown(limits.userCount, limits.maxUsers)}</td></tr>
          <tr><td>Subtenants</td><td>{shown(limits.subtenantCount, limits.maxSubtenants)}</td></tr>
          <tr><td>Storage (bytes)</td><td>{shown(limits.storageUsed, limits.storageBytes)}</td></tr>
        </tbody></table>
      </div>
      {parent && <Subtenants tenants={data.tenants?.edges.map((e) => e.node) ?? []} onCreated={again} />}
      {parent && (
        <div className="card" data-testid="usage">
          <h3>Usage {range.from} – {range.to} <ExportButton tenantId={tenantId} {...range} /></h3>
          <table>
            <thead><tr><th>Tenant</th><th>Devices</th><th>Requests</th><th>Measurements</th><th>Storage</th></tr></thead>
            <tbody>{(data.subtenantUsage ?? []).map((u) => (
              <tr key={u.tenantId}><td>{u.tenantDomain}</td><td>{u.deviceCount}</td><td>{u.requestCount}</td>
                <td>{u.measurementsCreatedCount}</td><td>{u.storageSize}</td></tr>))}</tbody>
          </table>
        </div>
      )}
      <Invitations invitations={data.invitations.edges.map((e) => e.node)} onInvited={again} />
      <Tokens tokens={data.apiTokens} onChanged={again} />
    </>
  );
}

function Subtenants({ tenants, onCreated }: {
    tenants: { id: string; domain: string; company: string; kind: TenantKind; status: string }[]; onCreated: () => void }) {
  const [{ error, fetching }, create] = useMutation(CREATE_SUBTENANT);
  const submit = (event: FormEvent<HTMLFormElement>) => {
    const form = event.currentTarget;
    const f = fields(event);
    void create({ input: { domain: f.domain ?? "", company: f.company ?? "", kind: (f.kind ?? "STANDARD") as TenantKind,
                           adminEmail: f.adminEmail ?? "", adminPassword: f.adminPassword || null } })
      .then((r) => { if (r.data) { form.reset(); onCreated(); } });
  };
  return (
    <div className="card" data-testid="subtenants">
      <h3>Subtenants</h3>
      <table><tbody>{tenants.map((t) => (
        <tr key={t.id} data-subtenant={t.domain}><td>{t.company}</td><td className="muted">{t.domain}</td>
          <td>{t.kind}</td><td>{t.status}</td></tr>))}</tbody></table>
      <form className="inline" onSubmit={submit} aria-label="create subtenant">
        <input name="domain" placeholder="domain" required pattern="[a-z0-9-]{2,63}" />
        <input name="company" placeholder="company" required />
        <select name="kind" defaultValue="STANDARD"><option>STANDARD</option><option>ENTERPRISE</option></select>
        <input name="adminEmail" type="email" placeholder="first admin's email" required />
        <input name="adminPassword" type="password" placeholder="password (else invited)" />
        <button type="submit" disabled={fetching}>Create subtenant</button>
      </form>
      {error && <p className="error" role="alert">{error.graphQLErrors[0]?.message ?? error.message}</p>}
    </div>
  );
}

function ExportButton({ tenantId, from, to }: { tenantId: string; from: string; to: string }) {
  const [error, setError] = useState<string | null>(null);
  const download = async () => {
    // A plain link cannot carry the Authorization header: fetch it, then hand the browser a blob.
    const response = await fetch(`/export/usage.csv?from=${from}&to=${to}`, {
      headers: { authorization: `Bearer ${await accessToken()}`, "x-tenant-id": tenantId } });
    if (!response.ok) { setError(`export failed: HTTP ${response.status}`); return; }
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = `usage-${tenantId}-${from}-${to}.csv`;
    link.click();
    URL.revokeObjectURL(link.href);
  };
  return <>{" "}<button onClick={() => void download()}>Export CSV</button>{error && <span className="error">{error}</span>}</>;
}

function Invitations({ invitations, onInvited }: {
    invitations: { id: string; email: string; role: string; status: string }[]; onInvited: () => void }) {
  const [{ error }, invite] = useMutation(INVITE);
  const submit = (event: FormEvent<HTMLFormElement>) => {
    const form = event.currentTarget;
    const f = fields(event);
    void invite({ email: f.email ?? "", role: f.role ?? "READER" }).then((r) => { if (r.data) { form.reset(); onInvited(); } });
  };
  return (
    <div className="card" data-testid="invitations">
      <h3>Invitations</h3>
      <table><tbody>{invitations.map((i) => (
        <tr key={i.id}><td>{i.email}</td><td>{i.role}</td><td>{i.status}</td></tr>))}</tbody></table>
      <form className="inline" onSubmit={submit} aria-label="invite">
        <input name="email" type="email" placeholder="email" required />
        <select name="role" defaultValue="READER">{["ADMIN", "MANAGER", "OPERATOR", "READER"].map((r) =>
          <option key={r}>{r}</option>)}</select>
        <button type="submit">Invite</button>
      </form>
      {error && <p className="error" role="alert">{error.graphQLErrors[0]?.message ?? error.message}</p>}
    </div>
  );
}

function Tokens({ tokens, onChanged }: {
    tokens: { id: string; name: string; permissions: string[]; lastUsedAt?: string | null }[]; onChanged: () => void }) {
  const [created, setCreated] = useState<string | null>(null);
  const [{ error }, create] = useMutation(CREATE_TOKEN);
  const [, revoke] = useMutation(REVOKE_TOKEN);
  const submit = (event: FormEvent<HTMLFormElement>) => {
    const form = event.currentTarget;
    const f = fields(event);
    void create({ name: f.name ?? "", permissions: (f.permissions ?? "").split(",").map((p) => p.trim()).filter(Boolean) })
      .then((r) => { if (r.data) { setCreated(r.data.createApiToken.token); form.reset(); onChanged(); } });
  };
  return (
    <div className="card" data-testid="api-tokens">
      <h3>API tokens</h3>
      <table><tbody>{tokens.map((t) => (
        <tr key={t.id}><td>{t.name}</td><td className="muted">{t.permissions.join(", ")}</td>
          <td><button onClick={() => void revoke({ id: t.id }).then(onChanged)}>Revoke</button></td></tr>))}</tbody></table>
      <form className="inline" onSubmit={submit} aria-label="create API token">
        <input name="name" placeholder="name" required />
        <input name="permissions" placeholder="devices:read, alarms:write" defaultValue="devices:read" required />
        <button type="submit">Create token</button>
      </form>
      {created && <p>Shown once: <span className="secret" data-testid="new-token">{created}</span></p>}
      {error && <p className="error" role="alert">{error.graphQLErrors[0]?.message ?? error.message}</p>}
    </div>
  );
}
