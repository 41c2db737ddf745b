// Tenantry's GraphiQL: the headers editor starts with the two headers every request needs.
(function () {
  var fetcher = GraphiQL.createFetcher({ url: window.location.origin + "/graphql" });
  var headers = JSON.stringify({ "Authorization": "Bearer <access token from login>", "X-Tenant-ID": "<tenant id>" },
                               null, 2);
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(React.createElement(GraphiQL, {
    fetcher: fetcher,
    defaultHeaders: headers,
    headerEditorEnabled: true,
    shouldPersistHeaders: true,
    defaultEditorToolsVisibility: true
  }));
})();
