//! Wiring: [`App::build`] opens the store, restores the engine, binds the listener;
//! [`App::run`] serves until shutdown, then stops the background tasks and flushes presence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::{self, ConnectionLimits};
use crate::auth::Authenticator;
use crate::auth::jwt::{JwtConfig, JwtVerifier};
use crate::bus::Bus;
use crate::cluster::{Feed, Redis};
use crate::domain::{PresenceEvent, PrivacyChanged};
use crate::engine::PresenceEngine;
use crate::engine::local::LocalBackend;
use crate::engine::redis::{RedisBackend, RedisTiming};
use crate::history::{self, OnlineHistory};
use crate::http::{self, AppState, Shared};
use crate::integrations::webhooks::{Deliverer, WebhookClient};
use crate::integrations::{self, EventLog, FlushRequests};
use crate::persister;
use crate::presence::PresenceReader;
use crate::privacy::Privacy;
use crate::realtime::hub::{Hub, Limits};
use crate::realtime::{Realtime, RealtimeConfig};
use crate::sessions::Sessions;
use crate::settings::Settings;
use crate::store::events::WebhookPlan;
use crate::store::{self, Store};
use crate::throttle::Throttle;

/// Longest shutdown waits for open sockets to close.
const SOCKET_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// What an embedding program (or a test) may reach of a built server: its store and its event
/// channels. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    state: AppState,
}

impl Handle {
    /// The server's durable store.
    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    /// A receiver of every presence transition from now on.
    pub fn presence_events(&self) -> broadcast::Receiver<PresenceEvent> {
        self.state.engine.subscribe()
    }

    /// A receiver of every privacy change from now on.
    pub fn privacy_changes(&self) -> broadcast::Receiver<PrivacyChanged> {
        self.state.privacy.subscribe()
    }

    /// The HTTP service with every route and middleware, to drive without a socket (tests) or
    /// to nest in another server.
    pub fn service(&self) -> http::Service {
        http::service(self.state.clone())
    }
}

/// The verifier of external tokens the settings describe (`None` without a JWT key).
fn jwt_verifier(settings: &Settings) -> anyhow::Result<Option<JwtVerifier>> {
    let set = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    let public_key_pem = match settings.jwt_public_key_file() {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("while reading jwt_public_key_file {}", path.display()))?,
        ),
        None => None,
    };
    let config = JwtConfig {
        hs256_secret: set(&settings.jwt_hs256_secret),
        public_key_pem,
        issuer: set(&settings.jwt_issuer),
        audience: set(&settings.jwt_audience),
        leeway: settings.jwt_leeway,
        user_claim: settings.jwt_user_claim.clone(),
        username_claim: settings.jwt_username_claim.clone(),
    };
    Ok(JwtVerifier::new(config)?)
}

/// A server that is bound and restored, ready to run.
pub struct App {
    listener: TcpListener,
    state: AppState,
    /// Stops the tasks started while building (the Redis feed and bus), after the others.
    background: CancellationToken,
    /// The recorder's end of the event log (none when `event_retention` is zero).
    flushes: Option<FlushRequests>,
}

impl App {
    /// Opens and migrates the store, rebuilds presence from it and binds the listener.
    ///
    /// # Errors
    /// If the database cannot be opened or migrated, or the address cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = store::connect(&settings.database_url)
            .await
            .context("while opening the database")?;
        store.migrate().await.context("while applying migrations")?;
        let background = CancellationToken::new();
        let (engine, bus, redis) = presence(&settings, &background).await?;
        let throttle = redis.map_or_else(Throttle::local, Throttle::redis);
        persister::restore(&engine, store.as_ref(), settings.inactivity_timeout).await?;
        let auth = Authenticator::new(store.clone(), settings.max_sessions_per_user, bus.clone())
            .context("while preparing authentication")?
            .with_jwt(jwt_verifier(&settings)?);
        let privacy = Privacy::new(store.clone(), settings.last_seen_approx, bus.clone());
        let listener = TcpListener::bind(settings.bind)
            .await
            .with_context(|| format!("while binding {}", settings.bind))?;
        let limits = Limits {
            max_subscriptions: settings.max_subscriptions,
            max_connections_per_user: settings.max_sockets_per_user,
            send_queue: settings.send_queue,
            max_node_connections: settings.max_node_connections,
            max_node_subscriptions: settings.max_node_subscriptions,
        };
        let reader = PresenceReader::new(engine.clone(), store.clone());
        let realtime = Realtime {
            hub: Hub::new(limits, privacy.clone(), bus),
            engine: engine.clone(),
            reader: reader.clone(),
            privacy: privacy.clone(),
            auth: auth.clone(),
            connections: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            config: RealtimeConfig {
                disconnect_grace: settings.disconnect_grace,
                ping_interval: settings.ping_interval,
                typing_per_second: settings.typing_per_second,
            },
        };
        let (event_log, flushes) = if settings.event_retention.is_zero() {
            (EventLog::default(), None)
        } else {
            let (log, flushes) = EventLog::recorded();
            (log, Some(flushes))
        };
        let history = OnlineHistory::load(store.as_ref(), chrono::Utc::now())
            .await
            .context("while loading the online chart")?;
        let state = AppState::new(Shared {
            event_log,
            history,
            settings: Arc::new(settings),
            sessions: Sessions::new(auth.clone(), engine.clone(), store.clone()),
            store,
            engine,
            auth,
            reader,
            privacy,
            realtime,
            metrics: crate::telemetry::metrics_handle(),
            throttle,
        });
        Ok(Self {
            listener,
            state,
            background,
            flushes,
        })
    }

    /// The address the server listens on (the real port when bound to port 0).
    ///
    /// # Errors
    /// If the socket has no local address (should not happen once bound).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle on the server's store and event channels, for embedding and tests.
    pub fn handle(&self) -> Handle {
        Handle {
            state: self.state.clone(),
        }
    }

    /// Serves until `shutdown` is cancelled, then drains requests, stops the expiry and
    /// persister tasks and writes the last presence changes.
    ///
    /// # Errors
    /// If serving fails.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            background,
            flushes,
        } = self;
        let tasks = TaskTracker::new();
        let stop_tasks = CancellationToken::new();
        let engine = state.engine.clone();
        let token = stop_tasks.clone();
        tasks.spawn(async move { engine.maintenance().run(token).await });
        let realtime = state.realtime.clone();
        tasks.spawn(realtime.hub.clone().run(
            state.engine.subscribe(),
            state.reader.clone(),
            state.auth.revocations(),
            stop_tasks.clone(),
        ));
        tasks.spawn(state.auth.clone().listen(stop_tasks.clone()));
        tasks.spawn(state.sessions.clone().listen(stop_tasks.clone()));
        tasks.spawn(state.privacy.clone().listen(stop_tasks.clone()));
        tasks.spawn(persister::run(
            state.engine.clone(),
            state.store.clone(),
            state.settings.persist_interval,
            state.settings.inactivity_timeout,
            stop_tasks.clone(),
        ));
        tasks.spawn(history::run(
            state.history.clone(),
            state.engine.clone(),
            state.store.clone(),
            stop_tasks.clone(),
        ));
        if let Some(flushes) = flushes {
            start_integrations(&state, flushes, &tasks, &stop_tasks);
        }
        tasks.close();

        let (closing, connections) = (realtime.shutdown.clone(), realtime.connections);
        let limits = connection_limits(&state.settings);
        let service = http::service(state);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            // Sockets and SSE streams end themselves (sockets with close code 1001).
            closing.cancel();
        });
        accept::serve(listener, service, limits, shutdown).await;
        // Upgraded sockets outlive the HTTP server; let them record their close first.
        connections.close();
        if tokio::time::timeout(SOCKET_DRAIN, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sockets did not close within {SOCKET_DRAIN:?}");
        }
        stop_tasks.cancel();
        tasks.wait().await;
        background.cancel();
        Ok(())
    }
}

/// Starts the event log's recorder and pruner, and a webhook deliverer per endpoint.
fn start_integrations(
    state: &AppState,
    flushes: FlushRequests,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) {
    let settings = &state.settings;
    let endpoints = settings.webhook_urls();
    let plan = WebhookPlan {
        endpoints: endpoints.clone(),
        offline_delay_us: i64::try_from(settings.webhook_offline_delay.as_micros())
            .unwrap_or(i64::MAX),
    };
    let queued = Arc::new(Notify::new());
    tasks.spawn(integrations::record(
        state.engine.subscribe(),
        state.store.clone(),
        plan,
        queued.clone(),
        flushes,
        stop.clone(),
    ));
    tasks.spawn(integrations::prune(
        state.store.clone(),
        settings.event_retention,
        stop.clone(),
    ));
    if endpoints.is_empty() {
        return;
    }
    let client = WebhookClient::new();
    let holder = format!("node-{:016x}", rand::random::<u64>());
    for (index, endpoint) in endpoints.into_iter().enumerate() {
        let deliverer = Deliverer {
            endpoint,
            index,
            secret: settings.webhook_secret.clone().unwrap_or_default(),
            retry_for: settings.webhook_retry_for,
            holder: holder.clone(),
            store: state.store.clone(),
            client: client.clone(),
            queued: queued.clone(),
        };
        tasks.spawn(deliverer.run(stop.clone()));
    }
}

/// The accept loop's limits: `max_connections`, lowered (with a warning) to stay below the
/// process's open-file limit, so the listener never runs out of descriptors.
fn connection_limits(settings: &Settings) -> ConnectionLimits {
    let mut max_connections = settings.max_connections;
    if let Some(files) = accept::open_file_limit() {
        let room = files.saturating_sub(accept::RESERVED_FILES).max(1);
        if room < max_connections {
            tracing::warn!(
                max_connections,
                open_file_limit = files,
                using = room,
                "max_connections lowered to stay below the open-file limit (ulimit -n)"
            );
            max_connections = room;
        }
    }
    ConnectionLimits {
        max_connections,
        header_read_timeout: settings.header_read_timeout,
        idle_timeout: settings.idle_timeout,
    }
}

/// The timing of the shared presence in Redis, from the settings.
pub(crate) fn redis_timing(settings: &Settings) -> RedisTiming {
    RedisTiming {
        timeout: settings.inactivity_timeout,
        idle_after: settings.idle_after(),
        grace: settings.disconnect_grace,
        lease: settings.node_lease,
    }
}

/// The presence backend and the bus the settings ask for: in-process, or shared in Redis
/// (then also the Redis handle, for the other shared state).
async fn presence(
    settings: &Settings,
    background: &CancellationToken,
) -> anyhow::Result<(PresenceEngine, Bus, Option<Redis>)> {
    let Some(url) = settings.redis_url() else {
        let backend = LocalBackend::new(settings.inactivity_timeout, settings.idle_after());
        return Ok((PresenceEngine::new(Arc::new(backend)), Bus::local(), None));
    };
    let redis = Redis::connect(url, &settings.redis_key_prefix)
        .await
        .context("while connecting to Redis (redis_url)")?;
    let channels = [crate::engine::redis::EVENTS, crate::bus::CHANNEL];
    let feed = Feed::start(redis.clone(), &channels, background.clone());
    let bus = Bus::redis(redis.clone(), &feed, background.clone());
    let backend = RedisBackend::new(redis.clone(), feed, redis_timing(settings))
        .await
        .context("while joining the presence state in Redis")?;
    if !backend.subscribed(Duration::from_secs(5)).await {
        anyhow::bail!("cannot subscribe to Redis for presence events (redis_url)");
    }
    Ok((PresenceEngine::new(Arc::new(backend)), bus, Some(redis)))
}

/// `lastseen serve`: builds the app, prints `listening on http://ADDR` as the first line of
/// standard output, and runs until SIGINT or SIGTERM.
///
/// # Errors
/// If the app cannot be built or serving fails.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    // Held until the process ends: a second server on the same SQLite file refuses to start.
    let _lock = store::lock_data_file(&settings.database_url)?;
    let app = App::build(settings).await?;
    let addr = app.local_addr()?;
    // Installed before the address is announced: a SIGTERM sent as soon as a script has read
    // it must start a clean shutdown, not kill the process.
    let signals = ShutdownSignals::install().context("while installing signal handlers")?;
    // Scripts and tests read the bound address from this first line of standard output.
    println!("listening on http://{addr}");
    std::io::Write::flush(&mut std::io::stdout())?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signals.cancel_on_signal(shutdown.clone()));
    app.run(shutdown).await
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere), registered with the runtime.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn cancel_on_signal(mut self, shutdown: CancellationToken) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
        }
        shutdown.cancel();
        tracing::info!("shutdown signal received; draining");
    }
}
