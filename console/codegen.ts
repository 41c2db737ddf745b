import type { CodegenConfig } from "@graphql-codegen/cli";

// Types for every document in src/ from the committed schema.graphql. The scalar mapping is the one
// docs/frontends.md gives: without it every custom scalar is `unknown`.
const config: CodegenConfig = {
  schema: "../schema.graphql",
  documents: ["src/**/*.tsx", "src/**/*.ts", "!src/gql/**/*"],
  ignoreNoDocuments: false,
  generates: {
    "src/gql/": {
      preset: "client",
      config: {
        useTypeImports: true,
        enumsAsTypes: true,
        strictScalars: true,
        scalars: {
          DateTime: "string",
          Date: "string",
          JSON: "unknown",
          Long: "number",
          ChangePosition: "string",
        },
      },
      presetConfig: { fragmentMasking: false },
    },
  },
};

export default config;
