import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { ModelError } from "../../common/errors.js";

/**
 * Writes a folder atomically: the caller fills a temporary sibling, then it is renamed into
 * place, so readers never see a half-written model. With `replace`, an existing folder is
 * moved aside first and removed only after the new one is in place.
 */
export async function writeDirAtomically(target: string, replace: boolean, fill: (tmpDir: string) => Promise<void>): Promise<void> {
  const abs = path.resolve(target);
  if (existsSync(abs) && !replace) {
    throw new ModelError("model_exists", `the model folder ${abs} already exists (use --force to replace it)`, { dir: abs });
  }
  mkdirSync(path.dirname(abs), { recursive: true });
  const tmp = `${abs}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  mkdirSync(tmp);
  try {
    await fill(tmp);
    if (existsSync(abs)) {
      const old = `${abs}.old-${process.pid}-${randomBytes(4).toString("hex")}`;
      renameSync(abs, old);
      renameSync(tmp, abs);
      rmSync(old, { recursive: true, force: true });
    } else {
      renameSync(tmp, abs);
    }
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
}
