// One GraphQL client per tenant. Each talks to the tenant's own endpoint /t/<tenant>/graphql, so
// its normalised cache, its WebSocket and any HTTP cache key by tenant: one tenant's `devices` can
// never answer another's (two clients on one URL with different X-Tenant-ID headers would).
import { Client, cacheExchange, fetchExchange, subscriptionExchange } from "urql";
import { createClient as createWsClient, type Client as WsClient } from "graphql-ws";
import { accessToken } from "./session";

export type TenantClient = { tenantId: string; url: string; client: Client; ws: WsClient; connected: () => boolean };

const clients = new Map<string, TenantClient>();

function wsUrl(path: string): string {
  const { protocol, host } = window.location;
  return `${protocol === "https:" ? "wss" : "ws"}://${host}${path}`;
}

export function tenantClient(tenantId: string): TenantClient {
  const known = clients.get(tenantId);
  if (known) return known;
  const url = `/t/${encodeURIComponent(tenantId)}/graphql`;
  // Every (re)connection authenticates with a current token. No automatic retry here: the live
  // views resume from their last change-log position themselves (useLive), never from the start.
  const ws = createWsClient({
    url: wsUrl(url),
    lazy: true,
    retryAttempts: 0,
    connectionParams: async () => ({ Authorization: `Bearer ${await accessToken()}` }),
  });
  const client = new Client({
    url,
    preferGetMethod: false,
    requestPolicy: "cache-and-network",
    fetch: async (input, init) => {
      const headers = new Headers(init?.headers);
      headers.set("authorization", `Bearer ${await accessToken()}`);
      return fetch(input, { ...init, headers });
    },
    exchanges: [
      cacheExchange,
      fetchExchange,
      subscriptionExchange({
        forwardSubscription: (request) => ({
          subscribe: (sink) => ({ unsubscribe: ws.subscribe({ ...request, query: request.query ?? "" }, sink) }),
        }),
      }),
    ],
  });
  let open = false;
  ws.on("connected", () => { open = true; });
  ws.on("closed", () => { open = false; });
  const made = { tenantId, url, client, ws, connected: () => open };
  clients.set(tenantId, made);
  return made;
}

export function forgetClients(): void {
  for (const { ws } of clients.values()) void ws.dispose();
  clients.clear();
}
