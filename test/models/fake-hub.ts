import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";

/**
 * A local stand-in for the Hugging Face hub (which this machine cannot reach), serving one
 * model folder the way huggingface.co does:
 * - `GET /api/models/{repo}/tree/{rev}?recursive=true`: entries {type, path, size, oid} with
 *   `lfs: {oid: sha256, size}` for LFS files (*.onnx, *.onnx_data), oid = git blob sha1.
 * - `GET /{repo}/resolve/{rev}/{path}`: plain files directly; LFS files as a 302 to a CDN URL
 *   carrying `X-Linked-ETag: "<sha256>"` and `X-Linked-Size`. Range requests get 206.
 * Faults: cut a file's first response after N bytes; corrupt a file's next K responses.
 */
export interface FakeHub {
  url: string;
  requests: { path: string; range: string | undefined }[];
  /** Next response for `file` stops after `bytes` bytes (the socket is destroyed). */
  cutNext(file: string, bytes: number): void;
  /** The next `times` responses for `file` have one byte flipped. */
  corruptNext(file: string, times: number): void;
  /** Redirects for LFS files carry a wrong X-Linked-ETag (while set). */
  wrongLinkedEtag: boolean;
  close(): Promise<void>;
}

const isLfs = (p: string): boolean => p.endsWith(".onnx") || p.endsWith(".onnx_data");

export async function startFakeHub(repo: string, modelDir: string, revision = "main"): Promise<FakeHub> {
  const files = new Map<string, Buffer>();
  for (const entry of readdirSync(modelDir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) {
      const full = path.join(entry.parentPath, entry.name);
      files.set(path.relative(modelDir, full).split(path.sep).join("/"), readFileSync(full));
    }
  }
  const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");
  const gitOid = (b: Buffer): string => createHash("sha1").update(`blob ${b.length}\0`).update(b).digest("hex");
  const cuts = new Map<string, number>();
  const corrupt = new Map<string, number>();
  const requests: FakeHub["requests"] = [];
  const hub: FakeHub = {
    url: "",
    requests,
    cutNext: (file, bytes) => cuts.set(file, bytes),
    corruptNext: (file, times) => corrupt.set(file, times),
    wrongLinkedEtag: false,
    close: () => Promise.resolve(),
  };

  const send = (req: http.IncomingMessage, res: http.ServerResponse, file: string, body: Buffer): void => {
    requests.push({ path: file, range: req.headers.range });
    let data = body;
    const bad = corrupt.get(file) ?? 0;
    if (bad > 0) {
      corrupt.set(file, bad - 1);
      data = Buffer.from(body);
      const mid = Math.floor(data.length / 2);
      data[mid] = (data[mid] ?? 0) ^ 0xff;
    }
    let start = 0;
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (m) start = Number(m[1]);
    const part = data.subarray(start);
    res.writeHead(m ? 206 : 200, {
      "content-length": part.length,
      "accept-ranges": "bytes",
      ...(m ? { "content-range": `bytes ${start}-${data.length - 1}/${data.length}` } : {}),
    });
    const cut = cuts.get(file);
    if (cut !== undefined) {
      cuts.delete(file);
      res.write(part.subarray(0, cut), () => setTimeout(() => res.destroy(), 20));
      return;
    }
    res.end(part);
  };

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://hub");
    if (url.pathname === `/api/models/${repo}/tree/${revision}`) {
      const listing = [...files].map(([p, b]) => ({
        type: "file",
        path: p,
        size: b.length,
        oid: gitOid(isLfs(p) ? Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha256(b)}\nsize ${b.length}\n`) : b),
        ...(isLfs(p) ? { lfs: { oid: sha256(b), size: b.length, pointerSize: 134 } } : {}),
      }));
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(listing));
      return;
    }
    const prefix = `/${repo}/resolve/${revision}/`;
    if (url.pathname.startsWith(prefix)) {
      const file = decodeURIComponent(url.pathname.slice(prefix.length));
      const body = files.get(file);
      if (body === undefined) {
        res.writeHead(404).end("Entry not found");
        return;
      }
      if (isLfs(file)) {
        const etag = hub.wrongLinkedEtag ? sha256(Buffer.from("something else")) : sha256(body);
        res.writeHead(302, { location: `/cdn/${encodeURIComponent(file)}`, "x-linked-etag": `"${etag}"`, "x-linked-size": String(body.length) }).end();
        return;
      }
      send(req, res, file, body);
      return;
    }
    if (url.pathname.startsWith("/cdn/")) {
      const file = decodeURIComponent(url.pathname.slice(5));
      const body = files.get(file);
      if (body !== undefined) {
        send(req, res, file, body);
        return;
      }
    }
    res.writeHead(404, { "content-type": "application/json" }).end(JSON.stringify({ error: "Repository not found" }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  hub.url = `http://127.0.0.1:${port}`;
  hub.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return hub;
}
