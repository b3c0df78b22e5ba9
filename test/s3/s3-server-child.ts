/**
 * The S3-compatible server of test/s3/s3-server.ts in a process of its own, for a caller that
 * must count its CPU apart from its own (bench:cluster): `tsx test/s3/s3-server-child.ts <bucket>…`
 * prints `endpoint <url>` once it listens and closes (removing its directory) on SIGTERM.
 */
import { startS3 } from "./s3-server.js";

const s3 = await startS3(process.argv.slice(2));
process.stdout.write(`endpoint ${s3.endpoint}\n`);
process.once("SIGTERM", () => {
  s3.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
});
