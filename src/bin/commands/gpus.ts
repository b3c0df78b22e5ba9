import type { Command } from "commander";
import type { GpuDetection } from "../../miner/gpu/detect.js";

/**
 * `aitbc gpus [--json]`: what the miner would detect and use on this host, with the reason
 * for anything it would not use. Reads the [gpus] section of the miner config when present.
 */
export function registerGpusCommand(program: Command): void {
  program
    .command("gpus")
    .description("list the GPUs the miner detects on this host and which ones it would use")
    .option("-c, --config <file>", "miner config file", "config/miner.toml")
    .option("--json", "print JSON instead of a table", false)
    .action(async (opts: { config: string; json: boolean }, cmd: Command) => {
      const [{ loadMinerConfig }, { detectGpus }] = await Promise.all([import("../../miner/config.js"), import("../../miner/gpu/detect.js")]);
      const explicit = cmd.getOptionValueSource("config") === "cli";
      const config = loadMinerConfig({ file: opts.config, optional: !explicit });
      const detection = await detectGpus({ gpus: config.gpus });
      process.stdout.write(opts.json ? `${JSON.stringify(detection, null, 2)}\n` : formatDetection(detection));
    });
}

export function formatDetection(d: GpuDetection): string {
  const lines: string[] = [];
  if (d.gpus.length > 0) {
    const table = [
      ["INDEX", "NAME", "VRAM TOTAL", "VRAM FREE", "DRIVER", "STATUS"],
      ...d.gpus.map((g) => [
        String(g.index),
        g.name,
        `${g.vram_total_mb} MiB`,
        `${g.vram_free_mb} MiB`,
        g.driverVersion ?? "-",
        g.selected ? "used" : g.healthy ? "not selected" : `error: ${g.problem ?? "unknown"}`,
      ]),
    ];
    const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
    for (const row of table) lines.push(row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join("  "));
  } else {
    lines.push("no NVIDIA GPU detected");
  }
  for (const o of d.others) lines.push(`other: ${o.vendor} ${o.model}${o.vramMb === null ? "" : ` (${o.vramMb} MiB)`}: not used`);
  for (const p of d.problems) lines.push(`note: ${p}`);
  lines.push(d.mode === "gpu" ? `mode: GPU miner (${d.gpus.filter((g) => g.selected).length} GPU(s))` : "mode: CPU miner");
  return `${lines.join("\n")}\n`;
}
