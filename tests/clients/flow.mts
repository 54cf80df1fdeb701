// A first flow through a TypeScript client: types that openapi-typescript generates from Keel's
// served /openapi.json (keel.d.ts), calls made with openapi-fetch; type-checked by tsc (strict)
// against the generated types, then run by node. Run by tests/it/clients.rs:
// node flow.mjs BASE_URL EMAIL.
import createClient from "openapi-fetch";
import type { paths } from "./keel.js";

const [baseUrl, email] = process.argv.slice(2);
const password = "correct horse battery staple";

function ok<T>(step: string, result: { data?: T; error?: unknown }): T {
  if (result.data === undefined) {
    throw new Error(`${step}: ${JSON.stringify(result.error)}`);
  }
  return result.data;
}

const anonymous = createClient<paths>({ baseUrl });
const user = ok(
  "register",
  await anonymous.POST("/api/v1/auth/register", {
    body: { email, password, full_name: "TS Client" },
  }),
);
const tokens = ok(
  "sign in",
  await anonymous.POST("/api/v1/auth/login", { body: { email, password } }),
);

const client = createClient<paths>({
  baseUrl,
  headers: { Authorization: `Bearer ${tokens.access_token}` },
});
const me = ok("me", await client.GET("/api/v1/auth/me"));
if (me.id !== user.id) throw new Error(`me is ${me.id}, registered ${user.id}`);

const organization = ok(
  "create organization",
  await client.POST("/api/v1/organizations", { body: { name: "TS Corp", slug: "ts-corp" } }),
);
const listed = ok(
  "list members",
  await client.GET("/api/v1/organizations/{organization_id}/members", {
    params: { path: { organization_id: organization.id ?? "" } },
  }),
);
const members = (listed.members ?? []).map((member) => [member.email, member.roles]);
if (JSON.stringify(members) !== JSON.stringify([[email, ["owner"]]])) {
  throw new Error(`members: ${JSON.stringify(members)}`);
}
console.log("typescript client flow: ok");
