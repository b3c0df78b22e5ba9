/**
 * The SSE clients of bench:streaming, in a process of their own (so that following 8 streams
 * costs the miner's process nothing): follows each job id given on stdin's first line (JSON
 * {url, key, ids}) and prints one JSON line per token event, `{id, index, length, at}` with `at`
 * on the machine's clock (performance.timeOrigin + now, comparable across processes), then
 * `{id, text, completed}` when a stream ends.
 */
import { createInterface } from "node:readline";

const line = await new Promise<string>((resolve) => createInterface({ input: process.stdin }).once("line", resolve));
const { url, key, ids } = JSON.parse(line) as { url: string; key: string; ids: string[] };
const out = (o: unknown): void => void process.stdout.write(`${JSON.stringify(o)}\n`);

await Promise.all(
  ids.map(async (id) => {
    const res = await fetch(`${url}/v1/jobs/${id}/events`, { headers: { authorization: `Bearer ${key}` } });
    const decoder = new TextDecoder();
    let buf = "";
    let text = "";
    let completed = false;
    let opened = false;
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      const at = performance.timeOrigin + performance.now();
      buf += decoder.decode(chunk, { stream: true });
      let i: number;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (data === undefined) continue;
        if (!opened) {
          opened = true;
          out({ id, opened: true });
        }
        const d = JSON.parse(data) as { index?: number; text?: string };
        if (event === "token") {
          const index = d.index ?? 0;
          const live = index === text.length;
          text = text.slice(0, index) + (d.text ?? "");
          out({ id, index, length: (d.text ?? "").length, at, live });
        }
        if (event === "completed") completed = true;
      }
    }
    out({ id, text, completed });
  }),
);
