import { Argument, type Command } from "commander";

const SHELLS = ["bash", "zsh"] as const;
type Shell = (typeof SHELLS)[number];

/** What completion needs of one command: its path from the root, subcommands, flags and fixed values. */
interface CommandShape {
  path: string;
  subcommands: { name: string; description: string }[];
  /** Words offered where a command or an argument may go: subcommands, or an argument's choices. */
  words: string[];
  flags: string[];
  /** Flags that take a value: the word after one is one of its choices, or else a file name. */
  valueFlags: string[];
  choices: { flags: string[]; values: string[] }[];
}

/**
 * `aitbc completion bash|zsh`: prints a completion script made from the commands themselves (so
 * it never lists a command that is gone). Install: `aitbc completion bash > /etc/bash_completion.d/aitbc`,
 * or `source <(aitbc completion zsh)` in ~/.zshrc.
 */
export function registerCompletionCommand(program: Command): void {
  program
    .command("completion")
    .description("print a shell completion script (bash or zsh)")
    .addArgument(new Argument("<shell>", SHELLS.join(" or ")).choices(SHELLS))
    .addHelpText("after", "\nbash: aitbc completion bash > ~/.local/share/bash-completion/completions/aitbc\nzsh:  echo 'source <(aitbc completion zsh)' >> ~/.zshrc")
    .action((shell: Shell, _opts: unknown, cmd: Command) => {
      const root = cmd.parent ?? cmd;
      const shapes = shapesOf(root, root.name());
      process.stdout.write(shell === "bash" ? bashScript(root.name(), shapes) : zshScript(root.name(), shapes));
    });
}

function shapesOf(cmd: Command, path: string): CommandShape[] {
  const flagsOf = (o: Command["options"][number]): string[] => [o.long, o.short].filter((f): f is string => f !== undefined);
  const subcommands = cmd.commands.map((c) => ({ name: c.name(), description: c.description() }));
  const own: CommandShape = {
    path,
    subcommands,
    words: subcommands.length > 0 ? subcommands.map((c) => c.name) : (cmd.registeredArguments[0]?.argChoices ?? []),
    flags: [...new Set(["--help", ...cmd.options.flatMap((o) => (o.long === undefined ? [] : [o.long]))])],
    valueFlags: cmd.options.filter((o) => o.required || o.optional).flatMap(flagsOf),
    choices: cmd.options.flatMap((o) => (o.argChoices === undefined ? [] : [{ flags: flagsOf(o), values: o.argChoices }])),
  };
  return [own, ...cmd.commands.flatMap((c) => shapesOf(c, `${path} ${c.name()}`))];
}

/** Command words are plain names (letters, digits, '-'): safe inside double quotes in both shells. */
function bashScript(name: string, shapes: CommandShape[]): string {
  const fn = `_${name.replace(/[^A-Za-z0-9_]/g, "_")}`;
  const nested = shapes.filter((s) => s.path.includes(" ")).map((s) => `"${s.path}"`);
  const cases = shapes.map((s) => {
    const choices = s.choices.map((c) => `case "$prev" in ${c.flags.join("|")}) choices="${c.values.join(" ")}" ;; esac; `).join("");
    return `    "${s.path}") words="${[...s.words, ...s.flags].join(" ")}"; values="${s.valueFlags.join(" ")}"; ${choices};;`;
  });
  return `# ${name} bash completion. Install: ${name} completion bash > ~/.local/share/bash-completion/completions/${name}
${fn}() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" prev="\${COMP_WORDS[COMP_CWORD-1]}" cmdpath="${name}" words="" values="" choices="" i
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "$cmdpath \${COMP_WORDS[i]}" in
      ${nested.join("|")}) cmdpath="$cmdpath \${COMP_WORDS[i]}" ;;
    esac
  done
  case "$cmdpath" in
${cases.join("\n")}
  esac
  # The word after a flag that takes a value: its choices, else file names (complete -o default).
  if [[ -n "$choices" ]]; then COMPREPLY=($(compgen -W "$choices" -- "$cur")); return; fi
  if [[ " $values " == *" $prev "* ]]; then COMPREPLY=(); return; fi
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o default -F ${fn} ${name}
`;
}

function zshScript(name: string, shapes: CommandShape[]): string {
  const fn = `_${name.replace(/[^A-Za-z0-9_]/g, "_")}`;
  const quote = (s: string): string => `'${s.replace(/'/g, "'\\''")}'`;
  const nested = shapes.filter((s) => s.path.includes(" ")).map((s) => `"${s.path}"`);
  const cases = shapes.map(
    (s) =>
      `    ("${s.path}") cmds=(${(s.subcommands.length > 0 ? s.subcommands.map((c) => `${c.name}:${c.description}`) : s.words).map(quote).join(" ")}); flags=(${s.flags.join(" ")}); values=(${s.valueFlags.join(" ")}); ${s.choices.map((c) => `case "\${words[CURRENT-1]}" in (${c.flags.join("|")}) choices=(${c.values.join(" ")}) ;; esac; `).join("")};;`,
  );
  return `#compdef ${name}
# ${name} zsh completion. Install: echo 'source <(${name} completion zsh)' >> ~/.zshrc
${fn}() {
  local cmdpath="${name}" i
  local -a cmds flags values choices
  for ((i = 2; i < CURRENT; i++)); do
    case "$cmdpath \${words[i]}" in
      (${nested.join("|")}) cmdpath="$cmdpath \${words[i]}" ;;
    esac
  done
  case "$cmdpath" in
${cases.join("\n")}
  esac
  if (( \${#choices} )); then compadd -- $choices; return; fi
  if (( \${values[(Ie)\${words[CURRENT-1]}]} )); then _files; return; fi
  if [[ \${words[CURRENT]} == -* || \${#cmds} -eq 0 ]]; then compadd -- $flags; else _describe command cmds; fi
}
if [[ "\${funcstack[1]}" == "${fn}" ]]; then ${fn} "$@"; else compdef ${fn} ${name}; fi
`;
}
