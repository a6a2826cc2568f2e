// The client's types come from herald's OpenAPI document:
//   node scripts/openapi-types.mjs          writes src/openapi.ts (npm run generate)
//   node scripts/openapi-types.mjs --check  fails when src/openapi.ts is stale
// openapi-typescript's own CLI does the work; this only compares.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const spec = join(root, "../../openapi/openapi.json");
const target = join(root, "src/openapi.ts");
const cli = join(root, "node_modules/openapi-typescript/bin/cli.js");

const check = process.argv.includes("--check");
const dir = mkdtempSync(join(tmpdir(), "herald-client-types-"));
const out = check ? join(dir, "openapi.ts") : target;
try {
  // Defaults make no field required: a request may leave them out.
  execFileSync(process.execPath, [cli, spec, "--default-non-nullable=false", "--output", out], { stdio: ["ignore", "ignore", "inherit"] });
  if (check && readFileSync(out, "utf8") !== readFileSync(target, "utf8")) {
    console.error(
      "src/openapi.ts is stale: openapi/openapi.json changed since it was generated. " +
        "Run `npm run generate` in clients/js and commit the result.",
    );
    process.exitCode = 1;
  } else if (check) {
    console.log("src/openapi.ts matches openapi/openapi.json");
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
