import { execFile } from "node:child_process";
import type { Logger } from "./logger.js";

/**
 * sd_notify for services run by systemd with `Type=notify`: READY=1 once the service is
 * serving, STATUS= lines, STOPPING=1, and WATCHDOG=1 pings when the unit sets WatchdogSec.
 *
 * Node cannot send on a unix datagram socket by itself, so the messages go through
 * `systemd-notify` (part of systemd, present wherever the units can run), which needs
 * `NotifyAccess=all` in the unit. It is run in its default blocking mode: it waits on a
 * barrier until systemd has read the message, so the message is credited to this unit even
 * though the sending process exits at once. Without $NOTIFY_SOCKET everything is a no-op.
 *
 * Watchdog pings come from a timer on the event loop at half of WatchdogSec: a loop that is
 * stuck misses them, and systemd restarts the service.
 */
export class SystemdNotifier {
  private watchdog: NodeJS.Timeout | undefined;
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly log: Logger,
    private readonly env: NodeJS.ProcessEnv = process.env,
    private readonly command = "systemd-notify",
  ) {}

  get enabled(): boolean {
    return (this.env.NOTIFY_SOCKET ?? "") !== "";
  }

  /** Sends `fields` (KEY=value lines); resolves when sent, never rejects (failures are logged). */
  notify(fields: Record<string, string>): Promise<void> {
    if (!this.enabled) return Promise.resolve();
    const args = Object.entries(fields).map(([k, v]) => `${k}=${v.replace(/\n/g, " ")}`);
    // One at a time, in order: READY must not overtake an earlier STATUS.
    this.chain = this.chain.then(
      () =>
        new Promise<void>((resolve) => {
          execFile(this.command, args, { env: this.env, timeout: 10_000 }, (err) => {
            if (err !== null) this.log.warn({ err: err.message, fields: Object.keys(fields) }, "systemd notification failed");
            resolve();
          });
        }),
    );
    return this.chain;
  }

  ready(status: string): Promise<void> {
    return this.notify({ READY: "1", STATUS: status });
  }

  status(text: string): Promise<void> {
    return this.notify({ STATUS: text });
  }

  stopping(): Promise<void> {
    this.stopWatchdog();
    return this.notify({ STOPPING: "1", STATUS: "stopping" });
  }

  /** Starts WATCHDOG=1 pings when the unit asked for them (WATCHDOG_USEC, for this PID). Returns the interval in ms, or undefined. */
  startWatchdog(): number | undefined {
    const usec = Number(this.env.WATCHDOG_USEC ?? "");
    const pid = this.env.WATCHDOG_PID;
    if (!this.enabled || !Number.isFinite(usec) || usec <= 0) return undefined;
    if (pid !== undefined && pid !== "" && Number(pid) !== process.pid) return undefined;
    const every = Math.max(100, Math.floor(usec / 1000 / 2));
    this.stopWatchdog();
    this.watchdog = setInterval(() => void this.notify({ WATCHDOG: "1" }), every);
    this.watchdog.unref();
    void this.notify({ WATCHDOG: "1" });
    return every;
  }

  stopWatchdog(): void {
    if (this.watchdog !== undefined) clearInterval(this.watchdog);
    this.watchdog = undefined;
  }
}
