// A subscription that survives reconnects without losing or repeating an event: each event carries
// its change-log position, and after a dropped connection the subscription starts again with
// `after:` the last position seen, so the server replays exactly what was missed (docs/changes.md).
import { useEffect, useRef, useState } from "react";
import { print } from "graphql";
import type { TypedDocumentNode } from "@graphql-typed-document-node/core";
import type { TenantClient } from "./clients";

export type LiveState = "connecting" | "live" | "reconnecting";

export function useLive<R, V extends { after?: string | null }>(
  tenant: TenantClient,
  document: TypedDocumentNode<R, V>,
  variables: Omit<V, "after">,
  position: (result: R) => string | null | undefined,
  onEvent: (result: R) => void,
): { state: LiveState; reconnects: number; last: string | null } {
  const [state, setState] = useState<LiveState>("connecting");
  const [reconnects, setReconnects] = useState(0);
  const last = useRef<string | null>(null);
  const handler = useRef(onEvent);
  handler.current = onEvent;
  const key = JSON.stringify(variables);

  useEffect(() => {
    let stopped = false;
    let unsubscribe: (() => void) | null = null;
    let timer: number | undefined;
    const start = () => {
      const payload = { query: print(document), variables: { ...variables, after: last.current } };
      unsubscribe = tenant.ws.subscribe<R>(payload, {
        next: (message) => {
          setState("live");
          if (!message.data) return;
          const at = position(message.data as R);
          if (at) last.current = at;
          handler.current(message.data as R);
        },
        error: () => again(),
        complete: () => again(),
      });
      // Acknowledged connection: live even before the first event.
      if (tenant.connected()) setState("live");
      else { const off = tenant.ws.on("connected", () => { setState("live"); off(); }); }
    };
    const again = () => {
      if (stopped) return;
      setState("reconnecting");
      setReconnects((n) => n + 1);
      timer = window.setTimeout(start, 1000);
    };
    start();
    return () => {
      stopped = true;
      window.clearTimeout(timer);
      unsubscribe?.();
    };
    // `variables` enter through `key` (their JSON): a new object with the same values is the same subscription.
  }, [tenant, document, key]);

  return { state, reconnects, last: last.current };
}
