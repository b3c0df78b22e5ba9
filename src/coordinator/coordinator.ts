import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import websocket from "@fastify/websocket";
import { MAX_FRAME_BYTES } from "../protocol/frames.js";
import { packageVersion } from "../common/package-info.js";
import type { Logger } from "../common/logger.js";
import { hostname } from "node:os";
import { errorMessage } from "../common/errors.js";
import { PostgresRateLimiter } from "./auth/postgres-rate-limiter.js";
import { MemoryRateLimiter } from "./auth/rate-limiter.js";
import { FleetDirectory } from "./replica/fleet-directory.js";
import { PgSignals } from "./replica/pg-signals.js";
import { PostgresJobStore } from "./store/postgres/postgres-job-store.js";
import type { CoordinatorConfig } from "./config.js";
import { NO_MINERS, NO_REPLICAS, type CoordinatorContext } from "./context.js";
import { MINER_GATEWAY_PATH, MinerGateway } from "./gateway/miner-gateway.js";
import { registerAuth } from "./http/auth-hook.js";
import { adminRoutes } from "./http/admin-routes.js";
import { dashboardRoutes } from "./http/dashboard-routes.js";
import { eventsRoute } from "./http/events-route.js";
import { fileRoutes } from "./http/file-routes.js";
import { healthRoutes } from "./http/health-routes.js";
import { jobRoutes } from "./http/job-routes.js";
import { openaiRoutes } from "./http/openai-routes.js";
import { problemRoutes } from "./http/problem-routes.js";
import { errorHandler, problem, sendProblem } from "./http/problem.js";
import { CoordinatorMetrics } from "./metrics.js";
import { S3Uploader } from "./results/s3-uploader.js";
import { RevocationWatcher } from "./auth/revocation-watcher.js";
import { RetentionSweeper } from "./results/retention.js";
import { StreamRegistry } from "./http/stream-registry.js";
import { validatorCompiler } from "./http/validator.js";
import { ObservedSpeeds } from "./observed-speeds.js";
import { SpeedFeed } from "./speed-feed.js";
import { JobEvents } from "./store/job-events.js";
import type { JobStore } from "./store/job-store.js";
import { openJobStore, openResultStore } from "./store/open-store.js";

export interface CoordinatorOptions {
  config: CoordinatorConfig;
  log: Logger;
  /** Clock, for tests. */
  now?: () => number;
}

type CoordinatorState = "created" | "starting" | "running" | "stopping" | "stopped";

/**
 * Fastify's per-request lines ("incoming request", "request completed") at info, except for
 * probes and scrapes (/healthz, /readyz, /metrics), which a load balancer or Prometheus calls
 * every few seconds: theirs are logged only at debug, and a failed one always.
 */
const PROBES = new Set(["/healthz", "/readyz", "/metrics"]);

class RequestLogs extends LogController {
  constructor(private readonly log: Logger) {
    super();
  }

  private quiet(request: FastifyRequest): boolean {
    return PROBES.has(request.url.split("?")[0]!) && !this.log.isLevelEnabled("debug");
  }

  override incomingRequest(request: FastifyRequest, reply: FastifyReply): void {
    if (!this.quiet(request)) super.incomingRequest(request, reply);
  }

  override requestCompleted(error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    if (error != null || !this.quiet(request)) super.requestCompleted(error, request, reply);
  }
}

const PUBLIC = [/^\/metrics$/, /^\/healthz$/, /^\/readyz$/, /^\/openapi\.json$/, /^\/docs(\/.*)?$/, new RegExp(`^${MINER_GATEWAY_PATH}$`)];

export { databasePath } from "./store/open-store.js";

/** `[storage] replica`, else <hostname>:<port> (the process id when the port is chosen by the system). */
export function replicaName(config: CoordinatorConfig): string {
  return config.storage.replica !== "" ? config.storage.replica : `${hostname()}:${config.server.port === 0 ? `pid${process.pid}` : config.server.port}`;
}

/** Operator keys' windows: the same lengths as clients', their own counts. */
function adminWindows(config: CoordinatorConfig): { limit: number; windowMs: number }[] {
  return [
    { limit: config.admin.perMinute, windowMs: config.limits.minuteWindowMs },
    { limit: config.admin.perHour, windowMs: config.limits.hourWindowMs },
  ];
}

/**
 * The coordinator: job store, result store, client REST API, miner gateway and scheduler in one
 * process. `start()` opens the store and listens; `stop()` is idempotent and ordered: stop taking
 * requests, tell miners to drain, stop the reaper, close the store.
 *
 *   created ─start()─▶ starting ─▶ running ─stop()─▶ stopping ─▶ stopped
 */
export class Coordinator {
  private state: CoordinatorState = "created";
  private stopping: Promise<void> | undefined;
  private appInstance: FastifyInstance | undefined;
  private ctxInstance: CoordinatorContext | undefined;
  private gatewayInstance: MinerGateway | undefined;
  private uploaderInstance: S3Uploader | undefined;
  private revocationsInstance: RevocationWatcher | undefined;
  private retentionInstance: RetentionSweeper | undefined;
  private signalsInstance: PgSignals | undefined;
  private speedFeed: SpeedFeed | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private address = "";

  constructor(private readonly options: CoordinatorOptions) {}

  get url(): string {
    return this.address;
  }

  get context(): CoordinatorContext {
    if (this.ctxInstance === undefined) throw new Error("coordinator not started");
    return this.ctxInstance;
  }

  get store(): JobStore {
    return this.context.store;
  }

  get gateway(): MinerGateway {
    if (this.gatewayInstance === undefined) throw new Error("coordinator not started");
    return this.gatewayInstance;
  }

  /** Delivers results to s3:// destinations. */
  get uploader(): S3Uploader {
    if (this.uploaderInstance === undefined) throw new Error("coordinator not started");
    return this.uploaderInstance;
  }

  get app(): FastifyInstance {
    if (this.appInstance === undefined) throw new Error("coordinator not started");
    return this.appInstance;
  }

  async start(): Promise<string> {
    if (this.state !== "created") throw new Error(`coordinator cannot start from ${this.state}`);
    this.transition("starting");
    const { config, log } = this.options;
    const events = new JobEvents();
    const replica = replicaName(config);
    const dblog = log.child({ component: "store" });
    // A replica starts without its database and answers 503 until the database is back.
    const store = await openJobStore(config, events, replica, {
      waitForDatabase: true,
      onWaiting: (why) => dblog.error({ why }, "PostgreSQL not usable: answering 503 and retrying"),
      onReady: () => dblog.info("PostgreSQL usable: migrated and serving"),
    });
    const windows = [
      { limit: config.limits.perMinute, windowMs: config.limits.minuteWindowMs },
      { limit: config.limits.perHour, windowMs: config.limits.hourWindowMs },
    ];
    const pg = store instanceof PostgresJobStore ? store : undefined;
    const now = this.options.now ?? Date.now;
    const ctx: CoordinatorContext = {
      config,
      store,
      results: openResultStore(config, now),
      events,
      miners: NO_MINERS,
      // Several replicas share their rate-limit windows in the database; one keeps them in memory.
      limiter: pg === undefined ? new MemoryRateLimiter(windows) : new PostgresRateLimiter(pg.db, windows),
      adminLimiter: pg === undefined ? new MemoryRateLimiter(adminWindows(config)) : new PostgresRateLimiter(pg.db, adminWindows(config)),
      fleetControl: NO_REPLICAS,
      streams: new StreamRegistry(config.limits.maxStreamsPerKey),
      metrics: new CoordinatorMetrics(),
      log,
      now,
      replica,
      advertisedModels: new Set(),
      speeds: new ObservedSpeeds({ weight: config.estimates.observedWeight, maxAgeMs: config.estimates.observedMaxAgeMs }),
    };
    const gateway = new MinerGateway(ctx);
    ctx.gateway = gateway;
    // One coordinator knows its miners; replicas count the whole fleet from the miners table.
    ctx.miners = pg === undefined ? gateway : new FleetDirectory(store, config.scheduler.heartbeatMs, now);
    ctx.metrics.bind({ countByState: () => store.countByState(), miners: () => gateway.miners() });
    this.ctxInstance = ctx;
    this.gatewayInstance = gateway;
    this.speedFeed = new SpeedFeed({ store, events, speeds: ctx.speeds, log: log.child({ component: "estimates" }) });
    this.speedFeed.start();
    try {
      if (pg !== undefined) {
        const signals = new PgSignals({ db: pg.db, url: config.storage.url, schema: config.storage.schema, events, replica, log: log.child({ component: "signals" }), resyncMs: 5_000 });
        signals.onMinerSession((h) => gateway.onMinerSession(h));
        signals.onMinerControl((c) => {
          if (c.kind === "drain") gateway.setDrained(c.minerId, c.drained);
          else void gateway.disconnect(c.minerId).catch((err: unknown) => log.warn({ err: errorMessage(err), minerId: c.minerId }, "disconnecting a miner failed"));
        });
        ctx.fleetControl = signals;
        this.signalsInstance = signals;
        await signals.start();
      }
      // Local files: before miners can connect, nothing is being written yet. S3 (shared by
      // replicas): only objects old enough that no replica can still be committing them.
      await this.sweepResults(ctx);
      const app = await this.buildApp(ctx, gateway);
      this.appInstance = app;
      this.address = await app.listen({ host: config.server.host, port: config.server.port });
      gateway.start();
      const revocations = new RevocationWatcher(store, [gateway, ctx.streams], config.limits.revocationCheckMs, log.child({ component: "revocations" }));
      this.revocationsInstance = revocations;
      revocations.start();
      const retention = new RetentionSweeper({
        store,
        results: ctx.results,
        retentionMs: config.results.retentionMs,
        sweepMs: config.results.retentionSweepMs,
        log: log.child({ component: "retention" }),
        now: ctx.now,
      });
      this.retentionInstance = retention;
      retention.start();
      if (config.results.backend === "s3") {
        this.sweepTimer = setInterval(() => void this.sweepResults(ctx), config.results.retentionSweepMs);
        this.sweepTimer.unref();
      }
      const uploader = new S3Uploader({ config: config.s3, store, results: ctx.results, events, log, now: ctx.now });
      this.uploaderInstance = uploader;
      await uploader.start();
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.transition("running");
    log.info({ url: this.address, replica: ctx.replica, storage: config.storage.backend, results: config.results.backend }, "coordinator listening");
    return this.address;
  }

  /** Removes result files (or objects) no committed result points to, on one replica at a time. */
  private async sweepResults(ctx: CoordinatorContext): Promise<void> {
    try {
      const swept = await ctx.store.runExclusive("result-sweep", () =>
        ctx.results.sweep(async (jobId) => {
          const job = await ctx.store.getJobById(jobId);
          // A removed result (deleted, expired) keeps its record but not its file.
          return job === null ? undefined : job.result === null || job.result.removed !== undefined ? null : job.result.location;
        }),
      );
      if (swept !== undefined && (swept.removed > 0 || swept.unknown > 0)) ctx.log.info(swept, "result files swept: removed those no committed result points to");
    } catch (err) {
      // Local files that cannot be read are a broken data dir; an S3 sweep is tried again later.
      if (this.state === "starting" && ctx.config.results.backend === "local") throw err;
      ctx.log.warn({ err: errorMessage(err) }, "result sweep failed");
    }
  }

  private async buildApp(ctx: CoordinatorContext, gateway: MinerGateway): Promise<FastifyInstance> {
    const { config, log } = ctx;
    const app = Fastify({
      loggerInstance: log as unknown as FastifyBaseLogger,
      logController: new RequestLogs(log),
      bodyLimit: config.server.bodyLimit,
      return503OnClosing: true,
      // A slow client may not hold a socket for minutes: the whole request within
      // request_timeout, its headers within headers_timeout, idle keep-alive for keep_alive_timeout.
      // (Event streams and WebSockets are answered or upgraded first; these do not cut them.)
      requestTimeout: config.server.requestTimeoutMs,
      keepAliveTimeout: config.server.keepAliveTimeoutMs,
      http: {
        // Node requires headersTimeout ≤ requestTimeout; both are enforced on this interval (30 s by default).
        headersTimeout: Math.min(config.server.headersTimeoutMs, config.server.requestTimeoutMs || Infinity),
        connectionsCheckingInterval: Math.max(250, Math.min(30_000, Math.floor(Math.min(config.server.headersTimeoutMs, config.server.requestTimeoutMs || Infinity) / 4))),
      },
      // A bad percent-encoding or an over-long path parameter is answered by the router itself;
      // without this it would be plain JSON instead of problem+json.
      frameworkErrors: (err, request, reply) => void errorHandler(log)(err, request, reply),
    });

    // TypeBox checks every request part (see validator.ts).
    app.setValidatorCompiler(validatorCompiler);
    // Problem `type`s point at GET /problems/<code>: absolute under [server] public_url when set.
    app.decorate("problemBase", config.server.publicUrl.replace(/\/+$/, ""));
    app.setErrorHandler(errorHandler(log));
    app.setNotFoundHandler((request, reply) => sendProblem(reply, problem(404, "not_found", `no route ${request.method} ${request.url.split("?")[0]}`)));
    await app.register(swagger, {
      openapi: {
        openapi: "3.0.3",
        info: {
          title: "aitbc-miner coordinator",
          version: packageVersion(),
          description:
            "Client REST API: submit, follow, cancel and download gpt2-class text generation jobs. Every request needs `Authorization: Bearer <key>` except /healthz, /readyz, /problems and these docs. Errors are application/problem+json whose `type` is this coordinator's page about the code (GET /problems lists them).",
        },
        tags: [
          { name: "jobs", description: "Submit jobs, follow them (Server-Sent Events), cancel them, download their results" },
          { name: "files", description: "Upload a long prompt once and use its file_id as a job's input" },
          { name: "openai", description: "OpenAI-compatible completions and models, for OpenAI's SDKs (errors in OpenAI's shape)" },
          { name: "admin", description: "Operator endpoints and the dashboard's session (operator keys)" },
          { name: "health", description: "Liveness and readiness probes (no key)" },
          { name: "problems", description: "What each error code means, what to do, whether to retry (no key)" },
        ],
        components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
        security: [{ bearer: [] }],
      },
    });
    await app.register(swaggerUi, { routePrefix: "/docs" });
    await app.register(websocket, { options: { maxPayload: MAX_FRAME_BYTES } });
    registerAuth(app, ctx, (url) => PUBLIC.some((re) => re.test(url)));

    await app.register(healthRoutes(ctx, () => this.state === "running"));
    await app.register(problemRoutes());
    await app.register(jobRoutes(ctx));
    await app.register(eventsRoute(ctx));
    await app.register(openaiRoutes(ctx));
    await app.register(fileRoutes(ctx));
    await app.register(adminRoutes(ctx));
    await app.register(dashboardRoutes(ctx));
    await app.register(async (scope) => gateway.register(scope));
    app.get("/metrics", { schema: { hide: true } }, async (_request, reply) =>
      reply.type(ctx.metrics.registry.contentType).send(await ctx.metrics.registry.metrics()),
    );
    app.get("/openapi.json", { schema: { hide: true } }, async () => app.swagger());
    await app.ready();
    return app;
  }

  /**
   * Applies what can change without a restart (SIGHUP): log level, rate limits, estimates and
   * the price table. Returns the sections that changed; others (ports, data dir, scheduler
   * timings) need a restart and are left as they are.
   */
  reload(next: CoordinatorConfig): string[] {
    const ctx = this.context;
    const cur = ctx.config;
    const changed: string[] = [];
    const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
    if (cur.logLevel !== next.logLevel) {
      this.options.log.level = next.logLevel;
      changed.push("log.level");
    }
    if (!same(cur.limits, next.limits)) {
      ctx.streams.setLimit(next.limits.maxStreamsPerKey);
      ctx.limiter.setWindows([
        { limit: next.limits.perMinute, windowMs: next.limits.minuteWindowMs },
        { limit: next.limits.perHour, windowMs: next.limits.hourWindowMs },
      ]);
      changed.push("limits");
    }
    if (!same(cur.admin, next.admin) || !same(cur.limits, next.limits)) {
      ctx.adminLimiter.setWindows(adminWindows(next));
      if (!same(cur.admin, next.admin)) changed.push("admin");
    }
    if (!same(cur.estimates, next.estimates)) {
      ctx.speeds.configure({ weight: next.estimates.observedWeight, maxAgeMs: next.estimates.observedMaxAgeMs });
      changed.push("estimates");
    }
    if (!same(cur.pricing, next.pricing)) changed.push("pricing");
    if (!same(cur.tenants, next.tenants)) changed.push("tenants");
    ctx.config = { ...cur, logLevel: next.logLevel, limits: next.limits, admin: next.admin, estimates: next.estimates, pricing: next.pricing, tenants: next.tenants };
    this.options.log.info({ changed }, changed.length === 0 ? "config reloaded: nothing changed" : "config reloaded");
    return changed;
  }

  /** Idempotent: later calls return the first call's promise. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.transition("stopping");
      clearInterval(this.sweepTimer);
      await this.revocationsInstance?.stop();
      await this.retentionInstance?.stop();
      await this.gatewayInstance?.stop();
      await this.appInstance?.close();
      await this.uploaderInstance?.stop();
      await this.signalsInstance?.stop();
      await this.speedFeed?.stop();
      await this.ctxInstance?.store.close();
      this.transition("stopped");
    })();
    return this.stopping;
  }

  private transition(to: CoordinatorState): void {
    const from = this.state;
    this.state = to;
    this.options.log.debug({ from, to }, "coordinator state");
  }
}
