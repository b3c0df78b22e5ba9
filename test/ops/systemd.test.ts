import { execFile, spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/common/logger.js";
import { SystemdNotifier } from "../../src/common/systemd-notify.js";

const run = promisify(execFile);
const UNITS = ["aitbc-coordinator.service", "aitbc-miner.service"];

function unitCopy(unit: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), "aitbc-units-"));
  copyFileSync(path.join("systemd", unit), path.join(dir, unit));
  return path.join(dir, unit);
}

describe("systemd units", () => {
  it.each(UNITS)("%s passes systemd-analyze verify without a single line of output", async (unit) => {
    const { stdout, stderr } = await run("systemd-analyze", ["verify", unitCopy(unit)]);
    expect(stdout + stderr).toBe("");
  });

  it.each(UNITS)("%s is hardened: Type=notify, watchdog, restart, its own user, exposure score under 3", async (unit) => {
    const file = unitCopy(unit);
    const text = (await import("node:fs")).readFileSync(file, "utf8");
    for (const line of ["Type=notify", "WatchdogSec=", "Restart=on-failure", "User=aitbc", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "StateDirectory="]) {
      expect(text).toContain(line);
    }
    const { stdout } = await run("systemd-analyze", ["security", "--offline=yes", file]);
    const m = /Overall exposure level for \S+: (\d+(?:\.\d+)?)/.exec(stdout);
    expect(m).not.toBeNull();
    expect(Number(m![1])).toBeLessThan(3);
  });

  it("the README's install lines write the PATH's node into each unit, which then verifies clean", async () => {
    const readme = readFileSync("README.md", "utf8");
    const lines = [...readme.matchAll(/^sed "s\|\/usr\/bin\/env node\|\$\(command -v node\)\|" systemd\/(\S+) \| sudo tee \/etc\/systemd\/system\/(\S+) >\/dev\/null$/gm)];
    expect(lines.map((m) => m[1])).toEqual(["aitbc-coordinator.service", "aitbc-miner.service"]);
    const dir = mkdtempSync(path.join(tmpdir(), "aitbc-install-"));
    // A node that is not /usr/bin/node: first on the PATH, as nvm or a tarball in /opt puts it.
    const bin = path.join(dir, "bin");
    mkdirSync(bin);
    symlinkSync(process.execPath, path.join(bin, "node"));
    for (const m of lines) {
      expect(m[2]).toBe(m[1]);
      const command = m[0].replace("sudo tee /etc/systemd/system/", `tee ${dir}/`);
      await run("bash", ["-c", command], { env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ""}` } });
      const unit = path.join(dir, m[1]!);
      expect(readFileSync(unit, "utf8")).toContain(`\nExecStart=${bin}/node /opt/aitbc/dist/bin/aitbc.js `);
      const { stdout, stderr } = await run("systemd-analyze", ["verify", unit]);
      expect(stdout + stderr).toBe("");
    }
  });

  it("gives the miner only the NVIDIA devices, its key as a credential, and a stop timeout above the drain grace", async () => {
    const text = (await import("node:fs")).readFileSync("systemd/aitbc-miner.service", "utf8");
    expect(text).toContain("DevicePolicy=closed");
    const allowed = [...text.matchAll(/^DeviceAllow=(\S+)/gm)].map((m) => m[1]);
    expect(allowed.length).toBeGreaterThan(0);
    for (const d of allowed) expect(d).toMatch(/nvidia/);
    expect(text).toMatch(/^LoadCredential=miner\.key:/m);
    const stop = Number(/^TimeoutStopSec=(\d+)s$/m.exec(text)?.[1]);
    const grace = Number(/^drain_grace = "(\d+)s"/m.exec((await import("node:fs")).readFileSync("config/miner.toml", "utf8"))?.[1]);
    expect(grace).toBeGreaterThan(0);
    expect(stop).toBeGreaterThan(grace);
  });
});

describe("SystemdNotifier against a fake NOTIFY_SOCKET", () => {
  let receiver: ChildProcess | undefined;
  afterEach(() => {
    receiver?.kill();
    receiver = undefined;
  });

  async function fakeSocket(): Promise<{ path: string; messages: string[]; next: () => Promise<string> }> {
    const dir = mkdtempSync(path.join(tmpdir(), "aitbc-notify-"));
    const socketPath = path.join(dir, "notify.sock");
    const child = spawn("python3", [path.resolve("test/ops/fake-notify-socket.py"), socketPath], { stdio: ["ignore", "pipe", "inherit"] });
    receiver = child;
    const messages: string[] = [];
    const waiters: ((m: string) => void)[] = [];
    let bound: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => (bound = resolve));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const obj = JSON.parse(line) as { bound?: string; message?: string };
      if (obj.bound !== undefined) bound();
      if (obj.message !== undefined) {
        messages.push(obj.message);
        waiters.shift()?.(obj.message);
      }
    });
    await ready;
    let read = 0;
    const next = (): Promise<string> =>
      read < messages.length ? Promise.resolve(messages[read++]!) : new Promise((resolve) => waiters.push((m) => (read++, resolve(m))));
    return { path: socketPath, messages, next };
  }

  it("sends READY with a STATUS, STATUS lines, watchdog pings and STOPPING", async () => {
    const sock = await fakeSocket();
    const notifier = new SystemdNotifier(silentLogger(), { ...process.env, NOTIFY_SOCKET: sock.path, WATCHDOG_USEC: "400000", WATCHDOG_PID: String(process.pid) });
    expect(notifier.enabled).toBe(true);
    await notifier.ready("2 GPUs, 0 jobs running");
    expect(await sock.next()).toBe("READY=1\nSTATUS=2 GPUs, 0 jobs running");
    await notifier.status("2 GPUs, 1 job running");
    expect(await sock.next()).toBe("STATUS=2 GPUs, 1 job running");
    expect(notifier.startWatchdog()).toBe(200);
    expect(await sock.next()).toBe("WATCHDOG=1");
    // The timer keeps pinging from the event loop.
    expect(await sock.next()).toBe("WATCHDOG=1");
    await notifier.stopping();
    let m = await sock.next();
    while (m === "WATCHDOG=1") m = await sock.next();
    expect(m).toBe("STOPPING=1\nSTATUS=stopping");
  });

  it("does nothing without NOTIFY_SOCKET, and no watchdog for another PID", async () => {
    const off = new SystemdNotifier(silentLogger(), {});
    expect(off.enabled).toBe(false);
    await off.ready("x");
    expect(off.startWatchdog()).toBeUndefined();
    const other = new SystemdNotifier(silentLogger(), { NOTIFY_SOCKET: "/nonexistent", WATCHDOG_USEC: "1000000", WATCHDOG_PID: "1" });
    expect(other.startWatchdog()).toBeUndefined();
  });
});
