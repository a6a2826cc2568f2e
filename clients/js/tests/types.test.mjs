import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

test("the generated types match openapi/openapi.json (npm run generate)", () => {
  const script = fileURLToPath(new URL("../scripts/openapi-types.mjs", import.meta.url));
  // Throws, with the script's message on stderr, when they are stale.
  const out = execFileSync(process.execPath, [script, "--check"], { encoding: "utf8" });
  assert.match(out, /matches/);
});
