// The console's shell: sign in, choose tenants (with the role in each), and the open tenants side
// by side, each in its own panel with its own client (clients.ts). The URL hash lists the open
// tenants (#/t/<id>,<id>), so a browser tab per tenant is a bookmark away.
import { useCallback, useEffect, useState, type FormEvent } from "react";
import { graphql } from "./gql";
import type { MeQuery } from "./gql/graphql";
import { accessToken, ApiError, load, login, logout, onSessionChange, post, type Stored } from "./session";
import { forgetClients } from "./clients";
import { TenantPanel } from "./Tenant";

const ME = graphql(`
  query Me { me { user { id email } memberships { role tenant { id domain company kind status } } } }
`);

export type Membership = MeQuery["me"]["memberships"][number];

function openFromHash(): string[] {
  const match = /^#\/t\/(.+)$/.exec(window.location.hash);
  return match?.[1] ? match[1].split(",").filter(Boolean).map(decodeURIComponent) : [];
}

export function App() {
  const [session, setSession] = useState<Stored | null>(load());
  useEffect(() => onSessionChange((stored) => { if (!stored) forgetClients(); setSession(stored); }), []);
  const signedOut = useCallback(() => { forgetClients(); setSession(null); }, []);
  if (!session) return <SignIn onSignedIn={setSession} />;
  return <Console email={session.email} onSignedOut={signedOut} />;
}

function SignIn({ onSignedIn }: { onSignedIn: (stored: Stored) => void }) {
  const [error, setError] = useState<string | null>(null);
  const submit = async (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    try {
      onSignedIn(await login(String(form.get("email")), String(form.get("password"))));
    } catch (caught) {
      setError(caught instanceof Error ? caught.message : String(caught));
    }
  };
  return (
    <main>
      <div className="card" style={{ maxWidth: "24em", margin: "4em auto" }}>
        <h1>Tenantry</h1>
        <form onSubmit={submit} aria-label="sign in">
          <p><label>Email<br /><input name="email" type="email" autoComplete="username" required /></label></p>
          <p><label>Password<br /><input name="password" type="password" autoComplete="current-password" required /></label></p>
          <button type="submit">Sign in</button>
          {error && <p className="error" role="alert">{error}</p>}
        </form>
      </div>
    </main>
  );
}

function Console({ email, onSignedOut }: { email: string; onSignedOut: () => void }) {
  const [memberships, setMemberships] = useState<Membership[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [open, setOpen] = useState<string[]>(openFromHash());

  useEffect(() => {
    accessToken().then((token) => post("/graphql", ME, {}, token))
      .then((data) => setMemberships(data.me.memberships))
      .catch((caught: unknown) => {
        if (caught instanceof ApiError && caught.code === "UNAUTHENTICATED") onSignedOut();
        else setError(String(caught));
      });
  }, [onSignedOut]);
  useEffect(() => {
    const listener = () => setOpen(openFromHash());
    window.addEventListener("hashchange", listener);
    return () => window.removeEventListener("hashchange", listener);
  }, []);
  const show = (ids: string[]) => { window.location.hash = ids.length ? `#/t/${ids.map(encodeURIComponent).join(",")}` : ""; setOpen(ids); };

  return (
    <>
      <header className="top">
        <strong>Tenantry</strong><span className="grow" />
        <span data-testid="signed-in-as">{email}</span>
        <button onClick={() => { void logout().then(onSignedOut); }}>Sign out</button>
      </header>
      <main>
        {error && <p className="error">{error}</p>}
        <section className="card" aria-label="choose a tenant">
          <h2>Choose a tenant</h2>
          {memberships === null ? <p className="muted">Loading…</p> : (
            <table data-testid="tenant-chooser">
              <thead><tr><th>Tenant</th><th>Kind</th><th>Your role</th><th /></tr></thead>
              <tbody>
                {memberships.map((m) => (
                  <tr key={m.tenant.id} data-tenant={m.tenant.id}>
                    <td>{m.tenant.company} <span className="muted">{m.tenant.domain}</span></td>
                    <td>{m.tenant.kind}</td><td>{m.role}</td>
                    <td>
                      <button disabled={open.includes(m.tenant.id)} onClick={() => show([...open, m.tenant.id])}>Open</button>{" "}
                      <a href={`#/t/${encodeURIComponent(m.tenant.id)}`} target="_blank" rel="noreferrer">new tab</a>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </section>
        <div className="panels">
          {open.map((id) => {
            const membership = memberships?.find((m) => m.tenant.id === id);
            return <TenantPanel key={id} tenantId={id} membership={membership}
                                onClose={() => show(open.filter((other) => other !== id))} />;
          })}
        </div>
      </main>
    </>
  );
}
