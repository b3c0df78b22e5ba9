import http from "node:http";
import { expect } from "vitest";

/**
 * A raw HTTP request with node:http, so the fuzzers can send what fetch would normalise or
 * refuse: unnormalised paths (`/v1/jobs/../x`, `%2f`), any Content-Type, raw bytes, odd headers.
 * An event stream is cut after its headers (the status is all the properties need).
 */
export interface RawResponse {
  status: number;
  contentType: string;
  text: string;
  head: boolean;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

export function rawRequest(
  base: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: Buffer | string,
): Promise<RawResponse> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: u.hostname, port: u.port, method, path, headers: { ...headers, ...(body === undefined ? {} : { "content-length": String(Buffer.byteLength(body)) }) }, agent },
      (res) => {
        const contentType = String(res.headers["content-type"] ?? "");
        if (contentType.startsWith("text/event-stream")) {
          res.destroy();
          resolve({ status: res.statusCode ?? 0, contentType, text: "", head: method === "HEAD" });
          return;
        }
        const parts: Buffer[] = [];
        res.on("data", (c: Buffer) => parts.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, contentType, text: Buffer.concat(parts).toString("utf8"), head: method === "HEAD" }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/**
 * The property every answer must have: never a 5xx, and any error is RFC 9457
 * application/problem+json with a string `code` and the same `status`.
 */
export function expectWellFormed(res: RawResponse, what: string): void {
  expect(res.status, `${what}: ${res.text.slice(0, 300)}`).toBeLessThan(500);
  if (res.status >= 400) {
    expect(res.contentType, `${what}: ${res.status} ${res.text.slice(0, 300)}`).toMatch(/^application\/problem\+json/);
    if (res.head) return; // A HEAD answer has the headers of the GET and no body.
    const body = JSON.parse(res.text) as { code?: unknown; status?: unknown };
    expect(typeof body.code, what).toBe("string");
    expect(body.status, what).toBe(res.status);
  }
}

export function closeRawAgent(): void {
  agent.destroy();
}
