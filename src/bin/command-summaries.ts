/**
 * Each command's description as its module gives it, for `aitbc --help` without loading any
 * command module (test/client/cli-usage.test.ts holds them equal). A command missing here still
 * works; the top-level help then loads its module.
 */
export const COMMAND_SUMMARIES: Record<string, string> = {
  admin: "operate the fleet: miners, jobs of every tenant, drain, retry (an operator key)",
  completion: "print a shell completion script (bash or zsh)",
  config: "check configuration files",
  coordinator: "run the coordinator: client REST API, miner gateway and scheduler",
  doctor: "check this host: GPUs, CUDA provider, models, coordinator and key, disk",
  generate: "run one generation locally through the inference engine and stream the tokens",
  gpus: "list the GPUs the miner detects on this host and which ones it would use",
  jobs: "submit, follow, list, cancel and download jobs (the client CLI)",
  keys: "create, list and revoke API keys (client keys by default, --miner for miner keys, --operator for operator keys)",
  miner: "run the miner daemon: detect GPUs, connect to the coordinator, run jobs",
  models: "build, list and pull GPT-2 models (Hugging Face optimum ONNX layout)",
  up: "run the coordinator and a local miner with tiny-gpt2 (the one-machine setup)",
};
