import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ConfigError } from "../../src/common/errors.js";
import { DEFAULT_URL, defaultClientConfigPath, resolveClientSettings } from "../../src/client/client-settings.js";

const dirs: string[] = [];
function dir(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), "aitbc-settings-"));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("resolveClientSettings", () => {
  it("takes each of url and key from flag > env > config file > defaults", () => {
    const home = dir();
    const cwd = dir();
    mkdirSync(path.join(cwd, "data"));
    writeFileSync(path.join(cwd, "data", "local-client.key"), "k-local\n");
    const env: NodeJS.ProcessEnv = { HOME: home };
    expect(resolveClientSettings({ env, cwd })).toMatchObject({ url: DEFAULT_URL, key: "k-local", sources: { url: "default", key: "default" } });

    const cfg = defaultClientConfigPath(env);
    mkdirSync(path.dirname(cfg), { recursive: true });
    writeFileSync(cfg, 'url = "http://cfg:1"\nkey = "k-cfg"\n');
    expect(resolveClientSettings({ env, cwd })).toMatchObject({ url: "http://cfg:1", key: "k-cfg", sources: { url: "config", key: "config" }, configFile: cfg });
    expect(resolveClientSettings({ env: { ...env, AITBC_KEY: "k-env" }, cwd })).toMatchObject({ url: "http://cfg:1", key: "k-env" });
    expect(resolveClientSettings({ env: { ...env, AITBC_KEY: "k-env", AITBC_URL: "http://env:2" }, cwd })).toMatchObject({
      url: "http://env:2",
      key: "k-env",
      sources: { url: "env", key: "env" },
    });
    writeFileSync(path.join(cwd, "key"), "k-file\n");
    const flags = resolveClientSettings({ url: "http://flag:3", keyFile: "key", env: { ...env, AITBC_KEY: "k-env", AITBC_URL: "http://env:2" }, cwd });
    expect(flags).toMatchObject({ url: "http://flag:3", key: "k-file", sources: { url: "flag", key: "flag" } });
    expect(resolveClientSettings({ key: "k-flag", keyFile: "key", env, cwd }).key).toBe("k-flag");
  });

  it("prefers $XDG_CONFIG_HOME for the default client config", () => {
    expect(defaultClientConfigPath({ HOME: "/h", XDG_CONFIG_HOME: "/x" })).toBe(path.join("/x", "aitbc", "client.toml"));
    expect(defaultClientConfigPath({ HOME: "/h" })).toBe(path.join("/h", ".config", "aitbc", "client.toml"));
  });

  it("fails with the file and the reason: no key, missing --client-config, bad TOML, unknown key, bad url", () => {
    const cwd = dir();
    const env: NodeJS.ProcessEnv = { HOME: cwd };
    expect(() => resolveClientSettings({ env, cwd })).toThrow(/no API key: pass --key/);
    expect(() => resolveClientSettings({ clientConfig: "missing.toml", env, cwd })).toThrow(/cannot read the client config .*missing\.toml/);
    writeFileSync(path.join(cwd, "bad.toml"), "url = \n");
    expect(() => resolveClientSettings({ clientConfig: "bad.toml", env, cwd })).toThrow(/bad\.toml: not valid TOML/);
    writeFileSync(path.join(cwd, "typo.toml"), 'kee = "x"\n');
    expect(() => resolveClientSettings({ clientConfig: "typo.toml", env, cwd })).toThrow(ConfigError);
    expect(() => resolveClientSettings({ clientConfig: "typo.toml", env, cwd })).toThrow(/typo\.toml: .*allowed keys: url, key/);
    expect(() => resolveClientSettings({ url: "ftp://x", key: "k", env, cwd })).toThrow(/must start with http/);
    expect(() => resolveClientSettings({ key: "k", keyFile: undefined, url: "http://a", env, cwd })).not.toThrow();
    // Flags for both settings make a broken default config file harmless.
    mkdirSync(path.join(cwd, ".config", "aitbc"), { recursive: true });
    writeFileSync(path.join(cwd, ".config", "aitbc", "client.toml"), "not toml at all [");
    expect(resolveClientSettings({ url: "http://a", key: "k", env, cwd }).configFile).toBeUndefined();
  });
});
