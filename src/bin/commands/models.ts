import { existsSync, readdirSync } from "node:fs";
import path from "node:path";
import cliProgress from "cli-progress";
import { InvalidArgumentError, type Command } from "commander";
import { ModelError, toAppError } from "../../common/errors.js";
import { WEIGHT_FORMATS, weightFormatOf, type WeightFormat } from "../../inference/models/gpt2-graph.js";
import type { PullProgress } from "../../inference/models/pull-model.js";
import { INT8_BLOCK_SIZES, INT8_DEFAULTS } from "../../inference/models/quantize-int8.js";
import { RECIPES, recipeNames } from "../../inference/models/recipes.js";
import { UsageError } from "../exit-codes.js";

/**
 * `aitbc models build|list|pull|quantize`: make the built-in random-weight GPT-2 models, show
 * what a models folder holds (and whether each folder is a valid layout), fetch real exports,
 * write the int8 variant of any float32 one.
 */
export function registerModelsCommand(program: Command): void {
  const models = program.command("models").description("build, list and pull GPT-2 models (Hugging Face optimum ONNX layout)");

  models
    .command("build")
    .description(`build a built-in model with seeded random weights (${recipeNames().join(", ")})`)
    .argument("<name>", "recipe name")
    .option("--models-dir <dir>", "folder that holds model folders", "models")
    .option("--seed <n>", "weight seed (same seed, same bytes)", parseSeed)
    .option("--force", "replace an existing model folder", false)
    .option("--weights <format>", `matmul weights: ${WEIGHT_FORMATS.join(" or ")} (8-bit blocks, about 2.5× faster decoding on CPU; outputs differ slightly)`, parseWeights, "float32")
    .option("--name <folder>", "folder name under the models dir (default: the recipe's name, with -int8 for int8 weights)")
    .action(async (name: string, opts: { modelsDir: string; seed?: number; force: boolean; weights: WeightFormat; name?: string }) => {
      const recipe = RECIPES[name];
      if (recipe === undefined) {
        throw new UsageError(`no built-in model named ${name} (known: ${recipeNames().join(", ")})`, { name });
      }
      const folder = opts.name ?? (opts.weights === "float32" ? name : `${name}-${opts.weights}`);
      const { buildModel } = await import("../../inference/models/build-model.js");
      const started = Date.now();
      const result = await buildModel(recipe, path.join(opts.modelsDir, folder), {
        ...(opts.seed === undefined ? {} : { seed: opts.seed }),
        force: opts.force,
        weights: opts.weights,
      });
      const seconds = ((Date.now() - started) / 1000).toFixed(1);
      process.stdout.write(
        `built ${folder} in ${result.dir}: ${formatCount(result.parameters)} parameters, ${result.weights} weights, ${formatBytes(result.sizeBytes)}, seed ${result.seed}, ${seconds} s\n`,
      );
    });

  models
    .command("pull")
    .description("download an optimum ONNX export (onnx/decoder_model_merged.onnx + json files) from a Hugging Face-compatible hub")
    .argument("<repo-id>", 'repo on the hub, e.g. "Xenova/gpt2"')
    .option("--hub <url>", "hub base URL", process.env.AITBC_HUB_URL ?? "https://huggingface.co")
    .option("--revision <rev>", "branch, tag or commit", "main")
    .option("--name <name>", "folder name under the models dir (default: the repo's last segment)")
    .option("--models-dir <dir>", "folder that holds model folders", "models")
    .option("--force", "replace an existing model folder", false)
    .action(async (repo: string, opts: { hub: string; revision: string; name?: string; modelsDir: string; force: boolean }) => {
      const { pullModel } = await import("../../inference/models/pull-model.js");
      const progress = new ProgressReporter(process.stderr);
      try {
        const result = await pullModel({
          repo,
          hub: opts.hub,
          revision: opts.revision,
          modelsDir: opts.modelsDir,
          force: opts.force,
          ...(opts.name === undefined ? {} : { name: opts.name }),
          ...(process.env.HF_TOKEN === undefined ? {} : { token: process.env.HF_TOKEN }),
          onProgress: (p) => progress.update(p),
        });
        progress.stop();
        const { info } = result;
        process.stdout.write(`pulled ${repo} into ${info.dir}: ${formatCount(info.parameters)} parameters, ${formatBytes(info.sizeBytes)}, ${result.files.length} files verified\n`);
      } finally {
        progress.stop();
      }
    });

  models
    .command("quantize")
    .description("write the int8 variant of a float32 GPT-2 model folder (ours or a real export): its matmul weights as 8-bit blocks run by MatMulNBits")
    .argument("<model>", "a model folder under --models-dir, or a path to one (anything with a /)")
    .option("--models-dir <dir>", "folder that holds model folders", "models")
    .option("--out <dir>", "output folder (default: the model's folder with -int8 appended, beside it)")
    .option("--force", "replace an existing output folder", false)
    .option("--block-size <n>", `weights per scale: ${INT8_BLOCK_SIZES.join(", ")} (smaller is closer to float32; a matmul it does not divide gets the largest smaller one)`, parseBlockSize, INT8_DEFAULTS.blockSize)
    .option("--accuracy-level <n>", "MatMulNBits accuracy_level 0-4 (4: int8 activations too, integer dot products, fastest on CPU)", parseAccuracyLevel, INT8_DEFAULTS.accuracyLevel)
    .option("--float32-layers <n>", "keep the matmuls of the first n transformer blocks float32 (the first carries half of int8's error; 0: quantize every one)", parseFloat32Layers, INT8_DEFAULTS.float32Layers)
    .action(async (model: string, opts: { modelsDir: string; out?: string; force: boolean; blockSize: number; accuracyLevel: number; float32Layers: number }) => {
      const source = model.includes("/") || model.includes(path.sep) ? path.resolve(model) : path.resolve(opts.modelsDir, model);
      const out = opts.out ?? `${source}-int8`;
      if (path.resolve(out) === source) throw new UsageError("--out names the model folder itself: the int8 variant needs a folder of its own", { out });
      const { quantizeModel } = await import("../../inference/models/quantize-model.js");
      const started = Date.now();
      const result = await quantizeModel(source, out, { force: opts.force, blockSize: opts.blockSize, accuracyLevel: opts.accuracyLevel, float32Layers: opts.float32Layers }).catch((err: unknown) => {
        if (!(err instanceof ModelError)) throw err;
        const cause = typeof err.details?.cause === "string" ? ` (${err.details.cause})` : "";
        throw new ModelError(err.code, `cannot quantize ${source}: ${err.message}${cause}`, err.details);
      });
      const seconds = ((Date.now() - started) / 1000).toFixed(1);
      const blocks = [...new Set(result.matmuls.map((m) => m.blockSize))].sort((a, b) => b - a).join("/");
      // Optimum's merged decoder runs the same weights in both branches of its If.
      const weights = new Set(result.matmuls.map((m) => m.weight)).size;
      const shared = weights === result.matmuls.length ? "" : ` over ${weights} weights`;
      const kept = result.float32Layers === 0 ? "" : `, ${result.keptFloat32.length} of the first ${result.float32Layers === 1 ? "layer" : `${result.float32Layers} layers`} kept float32`;
      process.stdout.write(
        `quantized ${path.basename(source)} into ${result.dir}: ${result.matmuls.length} matmuls${shared} to int8 (block ${blocks}, accuracy level ${result.accuracyLevel}${kept}), ` +
          `${formatBytes(result.sizeBeforeBytes)} → ${formatBytes(result.sizeAfterBytes)}, ${seconds} s\n`,
      );
    });

  models
    .command("list")
    .description("list model folders with their size and whether their layout is valid")
    .option("--models-dir <dir>", "folder that holds model folders", "models")
    .option("--json", "print a JSON array of {name, parameters, weights, size_bytes, layout} instead of a table", false)
    .action(async (opts: { modelsDir: string; json: boolean }) => {
      const rows = await listModels(opts.modelsDir);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(rows.map(modelJson), null, 2)}\n`);
        return;
      }
      if (rows.length === 0) {
        process.stdout.write(`no models in ${path.resolve(opts.modelsDir)} (try: aitbc models build tiny-gpt2)\n`);
        return;
      }
      const table = [
        ["NAME", "PARAMETERS", "WEIGHTS", "SIZE", "LAYOUT"],
        ...rows.map((r) => [r.name, r.parameters === null ? "-" : formatCount(r.parameters), r.weights ?? "-", r.sizeBytes === null ? "-" : formatBytes(r.sizeBytes), r.layout]),
      ];
      const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
      for (const row of table) process.stdout.write(`${row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join("  ")}\n`);
    });
}

export interface ModelListRow {
  name: string;
  parameters: number | null;
  weights: WeightFormat | null;
  sizeBytes: number | null;
  /** "ok", or the reason the folder is refused. */
  layout: string;
}

/** A row as `--json` prints it: snake_case, like the REST API and `keys list --json`. */
function modelJson(r: ModelListRow): Record<string, unknown> {
  return { name: r.name, parameters: r.parameters, weights: r.weights, size_bytes: r.sizeBytes, layout: r.layout };
}

/** One row per model folder (hidden and in-progress temporary folders are skipped). */
export async function listModels(modelsDir: string): Promise<ModelListRow[]> {
  if (!existsSync(modelsDir)) return [];
  const { loadModelInfo } = await import("../../inference/models/model-info.js");
  return readdirSync(modelsDir, { withFileTypes: true })
    .filter((e) => e.isDirectory() && !e.name.startsWith(".") && !/\.(tmp|old)-\d+-[0-9a-f]+$/.test(e.name))
    .map((e) => e.name)
    .sort()
    .map((name) => {
      try {
        const info = loadModelInfo(path.join(modelsDir, name));
        return { name, parameters: info.parameters, weights: info.weights, sizeBytes: info.sizeBytes, layout: "ok" };
      } catch (err) {
        return { name, parameters: null, weights: null, sizeBytes: null, layout: `invalid: ${toAppError(err).message}` };
      }
    });
}

/** A cli-progress bar per file on a terminal; plain lines (start, each quarter, done) otherwise. */
class ProgressReporter {
  private bar: cliProgress.SingleBar | undefined;
  private file: string | undefined;
  private lastQuarter = -1;

  constructor(private readonly out: NodeJS.WriteStream) {}

  update(p: PullProgress): void {
    if (p.file !== this.file) {
      this.stop();
      this.file = p.file;
      this.lastQuarter = -1;
      if (this.out.isTTY) {
        this.bar = new cliProgress.SingleBar(
          { stream: this.out, format: `${p.file} [{bar}] {percentage}% | {value_h}/{total_h}`, formatValue: (v, _o, type) => (type === "value" || type === "total" ? formatBytes(v) : String(v)) },
          cliProgress.Presets.shades_classic,
        );
        this.bar.start(p.total, p.received, { value_h: formatBytes(p.received), total_h: formatBytes(p.total) });
      }
    }
    if (this.bar !== undefined) {
      this.bar.update(p.received, { value_h: formatBytes(p.received), total_h: formatBytes(p.total) });
      if (p.done !== undefined) this.stop();
      return;
    }
    const quarter = p.total === 0 ? 4 : Math.floor((p.received / p.total) * 4);
    if (p.done !== undefined) this.out.write(`${p.file}: ${p.done} (${formatBytes(p.total)}, verified)\n`);
    else if (quarter > this.lastQuarter) this.out.write(`${p.file}: ${quarter * 25}% of ${formatBytes(p.total)}\n`);
    this.lastQuarter = Math.max(this.lastQuarter, quarter);
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}

function parseWeights(value: string): WeightFormat {
  const format = weightFormatOf(value);
  if (format === undefined) throw new InvalidArgumentError(`the weights must be ${WEIGHT_FORMATS.join(" or ")}`);
  return format;
}

function parseBlockSize(value: string): number {
  const n = Number(value);
  if (!INT8_BLOCK_SIZES.includes(n)) throw new InvalidArgumentError(`the block size must be one of ${INT8_BLOCK_SIZES.join(", ")}`);
  return n;
}

/**
 * A commander parser for an integer option from `min` (up to `max` when given): anything else,
 * an empty value included, is refused with a message naming the option.
 */
function integerOption(what: string, min: number, max?: number): (value: string) => number {
  const range = max === undefined ? `a whole number from ${min}` : `an integer from ${min} to ${max}`;
  return (value) => {
    const n = Number(value);
    if (value.trim() === "" || !Number.isInteger(n) || n < min || (max !== undefined && n > max)) throw new InvalidArgumentError(`${what} must be ${range}`);
    return n;
  };
}

const parseAccuracyLevel = integerOption("the accuracy level", 0, 4);
const parseFloat32Layers = integerOption("the float32 layers", 0);
const parseSeed = integerOption("the seed", 0, 0xffffffff);

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}
