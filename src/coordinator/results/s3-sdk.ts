import type { S3Client } from "@aws-sdk/client-s3";
import type { CoordinatorConfig } from "../config.js";

/** The AWS SDK's S3 module, as `import()` yields it. */
export type S3Sdk = typeof import("@aws-sdk/client-s3");

export interface S3Connection {
  sdk: S3Sdk;
  client: S3Client;
}

/**
 * Loads the AWS SDK and makes a client for the `[s3]` endpoint and credentials. Called on first
 * use only, never at start: the SDK is large and, on Node 20, prints an eight-line support
 * warning as it loads, which a coordinator without S3 results or destinations has no use for.
 */
export async function connectS3(config: CoordinatorConfig["s3"], maxAttempts: number): Promise<S3Connection> {
  const sdk = await import("@aws-sdk/client-s3");
  const client = new sdk.S3Client({
    region: config.region,
    ...(config.endpoint === "" ? {} : { endpoint: config.endpoint }),
    forcePathStyle: config.forcePathStyle,
    ...(config.accessKeyId === "" ? {} : { credentials: { accessKeyId: config.accessKeyId, secretAccessKey: config.secretAccessKey } }),
    maxAttempts,
    // S3-compatible servers (s3rver, older MinIO) store aws-chunked checksummed bodies verbatim.
    requestChecksumCalculation: "WHEN_REQUIRED",
  });
  return { sdk, client };
}
