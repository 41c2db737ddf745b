// The login session, shared by every browser tab of this origin: tokens live in localStorage, and
// a refresh runs once per session across tabs (a Web Lock), so two tabs never present one refresh
// token twice. (The server forgives that within 30 s anyway; outside it a reuse ends the session.)
import { graphql } from "./gql";
import type { TypedDocumentNode } from "@graphql-typed-document-node/core";
import { print } from "graphql";

const KEY = "tenantry.session";
const EARLY_MS = 60_000; // refresh a minute before the access token expires

export type Stored = { accessToken: string; refreshToken: string; expiresAt: number; email: string };

const LOGIN = graphql(`
  mutation Login($email: String!, $password: String!) {
    login(email: $email, password: $password) { accessToken refreshToken expiresIn user { email } }
  }
`);

const REFRESH = graphql(`
  mutation Refresh($refreshToken: String!) {
    refreshToken(refreshToken: $refreshToken) { accessToken refreshToken expiresIn user { email } }
  }
`);

const LOGOUT = graphql(`
  mutation Logout($refreshToken: String!) { logout(refreshToken: $refreshToken) }
`);

export class ApiError extends Error {
  constructor(message: string, readonly code: string | undefined) {
    super(message);
  }
}

/** One GraphQL request outside any tenant's client (login, refresh, logout). */
export async function post<R, V>(url: string, document: TypedDocumentNode<R, V>, variables: V,
                                 token?: string): Promise<R> {
  const headers: Record<string, string> = { "content-type": "application/json",
                                            accept: "application/graphql-response+json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(url, { method: "POST", headers,
                                      body: JSON.stringify({ query: print(document), variables }) });
  const body = (await response.json()) as { data?: R | null; errors?: { message: string; extensions?: { code?: string } }[] };
  const error = body.errors?.[0];
  if (error || !body.data) throw new ApiError(error?.message ?? `HTTP ${response.status}`, error?.extensions?.code);
  return body.data;
}

export function load(): Stored | null {
  const raw = localStorage.getItem(KEY);
  return raw ? (JSON.parse(raw) as Stored) : null;
}

function save(payload: { accessToken: string; refreshToken: string; expiresIn: number; user: { email: string } }): Stored {
  const stored = { accessToken: payload.accessToken, refreshToken: payload.refreshToken,
                   expiresAt: Date.now() + payload.expiresIn * 1000, email: payload.user.email };
  localStorage.setItem(KEY, JSON.stringify(stored));
  return stored;
}

export async function login(email: string, password: string): Promise<Stored> {
  return save((await post("/graphql", LOGIN, { email, password })).login);
}

export async function logout(): Promise<void> {
  const stored = load();
  localStorage.removeItem(KEY);
  if (stored) await post("/graphql", LOGOUT, { refreshToken: stored.refreshToken }).catch(() => undefined);
}

function fresh(stored: Stored): boolean {
  return stored.expiresAt - EARLY_MS > Date.now();
}

async function refreshed(): Promise<string> {
  const current = load(); // read again inside the lock: another tab may have refreshed meanwhile
  if (current === null) throw new ApiError("signed out", "UNAUTHENTICATED");
  if (fresh(current)) return current.accessToken;
  try {
    return save((await post("/graphql", REFRESH, { refreshToken: current.refreshToken })).refreshToken).accessToken;
  } catch (error) {
    if (error instanceof ApiError && error.code === "UNAUTHENTICATED") localStorage.removeItem(KEY);
    throw error;
  }
}

/** A valid access token: the stored one, or one refresh for all tabs. */
export async function accessToken(): Promise<string> {
  const stored = load();
  if (stored !== null && fresh(stored)) return stored.accessToken;
  if (navigator.locks) return navigator.locks.request("tenantry-refresh", refreshed);
  return refreshed();
}

/** Called with the new state whenever another tab signs in or out. */
export function onSessionChange(listener: (stored: Stored | null) => void): () => void {
  const handler = (event: StorageEvent) => { if (event.key === KEY) listener(load()); };
  window.addEventListener("storage", handler);
  return () => window.removeEventListener("storage", handler);
}
