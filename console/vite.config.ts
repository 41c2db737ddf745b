import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// Served by `tenantry serve` at /console (app/http/console.py). `npm run dev` proxies the API to a
// server on :8000, so the dev server and the API share an origin as they do in production.
export default defineConfig({
  base: "/console/",
  plugins: [react()],
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false },
  server: {
    proxy: {
      "/graphql": { target: "http://127.0.0.1:8000", ws: true },
      "/t/": { target: "http://127.0.0.1:8000", ws: true },
      "/export/": "http://127.0.0.1:8000",
    },
  },
});
