// Tenantry's GraphiQL: the headers editor starts with the two headers every request needs, and
// subscriptions run over graphql-transport-ws (graphql-ws), authenticated with those same headers.
(function () {
  var base = window.location.origin;
  var http = GraphiQL.createFetcher({ url: base + "/graphql" });
  var wsBase = base.replace(/^http/, "ws") + "/graphql";
  var sockets = {};  // one WebSocket per set of headers: editing them opens a new, re-authenticated one

  function socketFor(headers) {
    var key = JSON.stringify(headers || {});
    if (!sockets[key]) {
      sockets[key] = graphqlWs.createClient({ url: wsBase, lazy: true, connectionParams: headers || {} });
    }
    return sockets[key];
  }

  function isSubscription(params, opts) {
    var ast = opts && opts.documentAST;
    var operations = ast ? ast.definitions.filter(function (d) { return d.kind === "OperationDefinition"; }) : [];
    var chosen = operations.filter(function (d) {
      return !params.operationName || (d.name && d.name.value === params.operationName);
    })[0];
    if (chosen) return chosen.operation === "subscription";
    return /^\s*subscription\b/.test(params.query || "");
  }

  function fetcher(params, opts) {
    if (!isSubscription(params, opts)) return http(params, opts);
    return socketFor(opts && opts.headers).iterate({
      query: params.query, variables: params.variables, operationName: params.operationName
    });
  }

  var headers = JSON.stringify({ "Authorization": "Bearer <access token from login>", "X-Tenant-ID": "<tenant id>" },
                               null, 2);
  // A link may carry the document to show (/graphiql/?query=…), as links into the docs do.
  var linked = new URLSearchParams(window.location.search).get("query");
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(React.createElement(GraphiQL, {
    fetcher: fetcher,
    query: linked || undefined,
    defaultHeaders: headers,
    headerEditorEnabled: true,
    shouldPersistHeaders: true,
    defaultEditorToolsVisibility: true
  }));
})();
