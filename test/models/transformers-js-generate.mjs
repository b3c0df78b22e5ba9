// Child process for the format test: loads a model folder with @xenova/transformers 2.17.2
// offline and runs its text-generation pipeline greedily. Runs apart from the test process
// because transformers.js pins its own onnxruntime-node (1.14) next to our 1.30.
// argv: <modelsDir> <modelName> <maxNewTokens> <prompts as JSON array>
import { env, pipeline } from "@xenova/transformers";

const [modelsDir, name, maxNewTokens, promptsJson] = process.argv.slice(2);
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = modelsDir;

const generator = await pipeline("text-generation", name, { quantized: false, local_files_only: true });
const prompts = JSON.parse(promptsJson);
const options = { max_new_tokens: Number(maxNewTokens), do_sample: false };
// One prompt per call: 2.17.2 runs each sequence of a batch with an all-ones attention mask
// (decoderRunBeam ignores the padding mask), so a left-padded batch is not a fair reference.
const texts = [];
for (const prompt of prompts) texts.push((await generator(prompt, options))[0].generated_text);
process.stdout.write(`${JSON.stringify({ texts })}\n`);
