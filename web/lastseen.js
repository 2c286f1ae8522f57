// lastseen.js: browser client for the lastseen presence server. An ES module, no dependencies.
//
//   import { login, PresenceClient } from "/static/lastseen.js";
//   const { token } = await login("", "ahmad", "password123");
//   const client = new PresenceClient({ token });
//   client.addEventListener("presence", (e) => console.log(e.detail));
//   client.connect();
//   client.subscribe([2, 3]);
//
// Token or cookie: login() also makes the server set the HttpOnly cookie `lastseen_session`.
// A page served by the server itself can therefore drop the token and pass `null` (or leave
// `token` out of PresenceClient): requests then rely on the cookie (same-origin fetch sends it),
// the socket is authenticated by the cookie on its upgrade (no `auth` message), and the SSE
// fallback is a plain EventSource. A page on another origin must keep passing the token.
//
//   await login("", "ahmad", "password123");          // sets the cookie
//   const me = await getMe("");                        // 401 (error.status) when signed out
//   const client = new PresenceClient({});             // cookie-authenticated
//
// The client keeps one WebSocket open (that alone keeps the user online), reconnects with
// jittered exponential backoff and resumes with `since`, so it only receives what changed.
// When sockets are blocked it falls back to an SSE stream (read with fetch when a token is given,
// so the bearer token stays in a header; a plain EventSource with the cookie otherwise) plus the
// classic 30 s HTTP heartbeat, and keeps retrying the socket.
//
// With `trackActivity: true` the client also reports whether the user is at the device: `idle`
// when the page is hidden or has had no input for `idleAfterMs`, `active` on the next input.
// Watchers then see `availability` follow real use rather than the open socket.
//
// Events (all CustomEvent, data in `detail`):
//   "presence"  {userId, user}   user = {id, username?, online_status, last_seen, is_online,
//                                availability, status_text, status_emoji, platforms, seq}
//   "typing"    {from, expiresInMs}
//   "status"    {state, ...}     "connecting" | "open" | "fallback" | "closed", and
//                                "reconnecting" with {retryInMs, attempt} while waiting to retry;
//                                during the fallback, socket retries do not change the state
//   "error"     {code, detail}   an error frame from the server, or a transport problem

/**
 * Logs in; resolves to {token, user, heartbeatIntervalMs}. Throws an Error with `.code`.
 * `device` is optional: {platform: "web" | "mobile" | "desktop", name}.
 */
export async function login(baseUrl, username, password, device) {
  const credentials = device ? { username, password, device } : { username, password };
  const body = await request(baseUrl, "POST", "/api/users/login/", null, credentials);
  return { token: body.access, user: body.user, heartbeatIntervalMs: body.heartbeat_interval_ms };
}

/** Registers a new user; resolves to {id, username}. */
export function register(baseUrl, username, password) {
  return request(baseUrl, "POST", "/api/users/register/", null, { username, password });
}

/**
 * Logs the token's session out (the user goes offline unless another device is live). With a
 * null token, the cookie's session; the server then clears the cookie.
 */
export function logout(baseUrl, token) {
  return request(baseUrl, "POST", "/api/users/logout/", token);
}

/** Looks a user up by name; resolves to {id, username}. */
export function lookup(baseUrl, token, username) {
  return request(baseUrl, "GET", `/api/users/lookup/?username=${encodeURIComponent(username)}`, token);
}

/** The caller's manual status: {mode, text, emoji, expires_at}. */
export function getStatus(baseUrl, token) {
  return request(baseUrl, "GET", "/api/users/me/status/", token);
}

/**
 * Sets the caller's manual status. mode: "auto" | "away" | "dnd"; text (≤ 100 characters),
 * emoji (one) and expiresAt (a Date) are optional. Resolves to the stored status.
 */
export function setStatus(baseUrl, token, { mode, text = null, emoji = null, expiresAt = null }) {
  const expires_at = expiresAt ? expiresAt.toISOString() : null;
  return request(baseUrl, "PUT", "/api/users/me/status/", token, { mode, text, emoji, expires_at });
}

/** The caller's sessions: [{id, platform, name, created_at, last_activity, live, current}]. */
export async function listSessions(baseUrl, token) {
  return (await request(baseUrl, "GET", "/api/users/me/sessions/", token)).sessions;
}

/** Revokes one of the caller's sessions (its sockets close, its token stops working). */
export function revokeSession(baseUrl, token, sessionId) {
  return request(baseUrl, "DELETE", `/api/users/me/sessions/${sessionId}/`, token);
}

/** The caller's contacts they can see online: {online: [user], online_count}. */
export function contactsOnline(baseUrl, token) {
  return request(baseUrl, "GET", "/api/users/me/contacts/online/", token);
}

/** The caller's own presence (UserPresence with id and username); rejects with status 401 when signed out. */
export function getMe(baseUrl, token) {
  return request(baseUrl, "GET", "/api/users/me/", token);
}

/** The caller's contacts: [{id, username}], ordered by id. */
export async function listContacts(baseUrl, token) {
  return (await request(baseUrl, "GET", "/api/users/me/contacts/", token)).contacts;
}

/** Adds a user to the caller's contacts; resolves to {id, username}. */
export function addContact(baseUrl, token, userId) {
  return request(baseUrl, "POST", "/api/users/me/contacts/", token, { user_id: userId });
}

/** Removes a user from the caller's contacts. */
export function removeContact(baseUrl, token, userId) {
  return request(baseUrl, "DELETE", `/api/users/me/contacts/${userId}/`, token);
}

/** The users the caller blocked: [{id, username}]. */
export async function listBlocked(baseUrl, token) {
  return (await request(baseUrl, "GET", "/api/users/me/blocked/", token)).blocked;
}

/** Blocks a user (they see none of the caller's presence; no typing either way). */
export function blockUser(baseUrl, token, userId) {
  return request(baseUrl, "POST", "/api/users/me/blocked/", token, { user_id: userId });
}

/** Unblocks a user. */
export function unblockUser(baseUrl, token, userId) {
  return request(baseUrl, "DELETE", `/api/users/me/blocked/${userId}/`, token);
}

/** The caller's privacy settings: {last_seen, except, online, invisible, invisible_since}. */
export function getPrivacy(baseUrl, token) {
  return request(baseUrl, "GET", "/api/users/me/privacy/", token);
}

/** Changes only the given privacy fields (PATCH); resolves to the whole new settings. */
export function updatePrivacy(baseUrl, token, changes) {
  return request(baseUrl, "PATCH", "/api/users/me/privacy/", token, changes);
}

async function request(baseUrl, method, path, token, json) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(baseUrl + path, {
    method,
    headers,
    body: json === undefined ? undefined : JSON.stringify(json),
  });
  const body = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.detail || response.statusText);
    error.code = body.code;
    error.status = response.status;
    throw error;
  }
  return body;
}

/** Close codes after which reconnecting cannot help. */
const FINAL_CLOSE_CODES = new Set([4401, 4429]);

export class PresenceClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} [options.token]         bearer token from login(); without it the session
   *                                          cookie authenticates (same origin only)
   * @param {string} [options.baseUrl]       "" for the page's own origin
   * @param {number} [options.heartbeatIntervalMs]  fallback heartbeat period (default 30 s)
   * @param {number} [options.maxBackoffMs]  longest wait between reconnects (default 30 s)
   * @param {number} [options.fallbackAfter] failed socket attempts before falling back (default 3)
   * @param {boolean} [options.trackActivity] report idle/active from page visibility and input
   * @param {number} [options.idleAfterMs]   input-free time before reporting idle (default 60 s)
   */
  constructor({
    token = null, baseUrl = "", heartbeatIntervalMs = 30000, maxBackoffMs = 30000, fallbackAfter = 3,
    trackActivity = false, idleAfterMs = 60000,
  } = {}) {
    super();
    this.trackActivity = trackActivity;
    this.idleAfterMs = idleAfterMs;
    /** What was last reported: "active" | "idle". A new session starts active. */
    this.activityState = "active";
    this.token = token;
    this.baseUrl = baseUrl;
    this.heartbeatIntervalMs = heartbeatIntervalMs;
    this.maxBackoffMs = maxBackoffMs;
    this.fallbackAfter = fallbackAfter;
    /** userId -> latest known presence (with seq). */
    this.users = new Map();
    this.watched = new Set();
    this.socket = null;
    this.failures = 0;
    this.stopped = true;
    this.fallback = null;
  }

  /** Opens the connection (and keeps it open until close()). */
  connect() {
    this.stopped = false;
    this.#openSocket();
    if (this.trackActivity && !this.activityListeners) this.#startTracking();
  }

  /** Reports the user as at the device ("active") or away from it ("idle"). */
  activity(state) {
    this.activityState = state;
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.#send({ type: "activity", state });
    } else if (this.fallback) {
      request(this.baseUrl, "POST", "/api/users/heartbeat/", this.token, { state }).catch(() => {});
    }
  }

  #startTracking() {
    const onInput = () => {
      clearTimeout(this.idleTimer);
      this.idleTimer = setTimeout(() => this.#report("idle"), this.idleAfterMs);
      if (document.visibilityState === "visible") this.#report("active");
    };
    const onVisibility = () => (document.visibilityState === "hidden" ? this.#report("idle") : onInput());
    const events = ["pointerdown", "pointermove", "keydown", "wheel", "touchstart"];
    events.forEach((type) => window.addEventListener(type, onInput, { passive: true }));
    document.addEventListener("visibilitychange", onVisibility);
    this.activityListeners = () => {
      events.forEach((type) => window.removeEventListener(type, onInput));
      document.removeEventListener("visibilitychange", onVisibility);
      clearTimeout(this.idleTimer);
    };
    onInput();
  }

  /** Sends a state only when it changes (input events come by the hundred). */
  #report(state) {
    if (state !== this.activityState) this.activity(state);
  }

  /** Watches these users; a snapshot (as "presence" events) follows. */
  subscribe(userIds) {
    const fresh = userIds.filter((id) => !this.watched.has(id));
    fresh.forEach((id) => this.watched.add(id));
    if (fresh.length) this.#send({ type: "subscribe", user_ids: fresh });
    if (fresh.length && this.fallback) this.#restartFallbackStream();
  }

  unsubscribe(userIds) {
    userIds.forEach((id) => {
      this.watched.delete(id);
      this.users.delete(id);
    });
    this.#send({ type: "unsubscribe", user_ids: userIds });
  }

  /** Tells `userId` that we are typing (call on input, at most a few times per second). */
  typing(userId) {
    this.#send({ type: "typing", to: userId });
  }

  /** Closes everything; the session's grace period starts on the server. */
  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.activityListeners) this.activityListeners();
    this.activityListeners = null;
    if (this.socket) this.socket.close(1000, "bye");
    this.#stopFallback();
    this.#status("closed");
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #status(state, extra = {}) {
    this.state = state;
    this.#emit("status", { state, ...extra });
  }

  #send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  #wsUrl() {
    const base = this.baseUrl || window.location.origin;
    return base.replace(/^http/, "ws") + "/api/presence/ws";
  }

  #openSocket() {
    if (this.stopped) return;
    // During the fallback the state stays "fallback" until a socket opens.
    if (!this.fallback) this.#status("connecting");
    let opened = false;
    const socket = new WebSocket(this.#wsUrl());
    this.socket = socket;
    socket.onopen = () => {
      opened = true;
      this.failures = 0;
      // Without a token the upgrade request carried the session cookie.
      if (this.token) socket.send(JSON.stringify({ type: "auth", token: this.token }));
      // A new connection counts as keep-alive only: restate an idle user's state.
      if (this.activityState === "idle") socket.send(JSON.stringify({ type: "activity", state: "idle" }));
      if (this.watched.size) {
        const since = {};
        for (const [id, user] of this.users) {
          if (this.watched.has(id) && typeof user.seq === "number") since[id] = user.seq;
        }
        socket.send(JSON.stringify({ type: "subscribe", user_ids: [...this.watched], since }));
      }
      this.#stopFallback();
      this.#status("open");
    };
    socket.onmessage = (event) => this.#handle(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (this.socket === socket) this.socket = null;
      if (this.stopped) return;
      if (FINAL_CLOSE_CODES.has(event.code)) {
        this.#emit("error", { code: `close_${event.code}`, detail: event.reason });
        this.close();
        return;
      }
      if (!opened) this.failures += 1;
      if (this.failures >= this.fallbackAfter && !this.fallback) this.#startFallback();
      this.#scheduleReconnect();
    };
  }

  #scheduleReconnect() {
    // Full jitter: a random wait up to an exponentially growing cap.
    const cap = Math.min(this.maxBackoffMs, 500 * 2 ** Math.min(this.failures, 10));
    const retryInMs = Math.round(Math.random() * cap);
    if (!this.fallback) this.#status("reconnecting", { retryInMs, attempt: this.failures + 1 });
    this.retryTimer = setTimeout(() => this.#openSocket(), retryInMs);
  }

  #handle(message) {
    switch (message.type) {
      case "snapshot":
        for (const user of message.users) this.#update(user.id, user);
        break;
      case "presence": {
        const known = this.users.get(message.user_id);
        this.#update(message.user_id, {
          ...(known || { id: message.user_id }),
          online_status: message.online_status,
          last_seen: message.last_seen,
          last_seen_approx: message.last_seen_approx,
          is_online: message.online_status === null ? null : message.online_status === "online",
          availability: message.availability,
          status_text: message.status_text,
          status_emoji: message.status_emoji,
          platforms: message.platforms,
          seq: message.seq,
        });
        break;
      }
      case "typing":
        this.#emit("typing", { from: message.from, expiresInMs: message.expires_in_ms });
        break;
      case "error":
        this.#emit("error", { code: message.code, detail: message.detail });
        break;
    }
  }

  #update(userId, user) {
    const known = this.users.get(userId);
    // seq is null where the user hides last_seen from us; then arrival order is the order.
    if (known && typeof known.seq === "number" && typeof user.seq === "number" && known.seq > user.seq) return;
    this.users.set(userId, user);
    this.#emit("presence", { userId, user });
  }

  // Fallback for networks that block WebSockets: the seed's HTTP heartbeat, and the SSE
  // stream read through fetch so that the token travels in the Authorization header.
  #startFallback() {
    this.fallback = { controller: null, source: null, timer: null, lastEventId: null };
    this.#status("fallback");
    const beat = () =>
      request(this.baseUrl, "POST", "/api/users/heartbeat/", this.token).catch(() => {});
    beat();
    this.fallback.timer = setInterval(beat, this.heartbeatIntervalMs);
    this.#restartFallbackStream();
  }

  #stopFallback() {
    if (!this.fallback) return;
    clearInterval(this.fallback.timer);
    if (this.fallback.controller) this.fallback.controller.abort();
    if (this.fallback.source) this.fallback.source.close();
    this.fallback = null;
  }

  async #restartFallbackStream() {
    const fallback = this.fallback;
    if (!fallback || !this.watched.size) return;
    if (!this.token) {
      this.#openEventSource(fallback);
      return;
    }
    if (fallback.controller) fallback.controller.abort();
    const controller = new AbortController();
    fallback.controller = controller;
    const headers = { Authorization: `Bearer ${this.token}`, Accept: "text/event-stream" };
    if (fallback.lastEventId) headers["Last-Event-ID"] = fallback.lastEventId;
    try {
      const ids = [...this.watched].join(",");
      const response = await fetch(`${this.baseUrl}/api/presence/events?user_ids=${ids}`, {
        headers,
        signal: controller.signal,
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          this.#handleSseBlock(buffer.slice(0, end), fallback);
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (error) {
      if (error.name === "AbortError") return;
    }
    if (this.fallback === fallback && !this.stopped) {
      setTimeout(() => this.#restartFallbackStream(), 1000 + Math.random() * 2000);
    }
  }

  // Cookie mode: a plain EventSource, which resends Last-Event-ID on its own reconnects. One
  // that the server refused (e.g. 401) is closed by the browser; it is reopened later.
  #openEventSource(fallback) {
    if (fallback.source) fallback.source.close();
    const ids = [...this.watched].join(",");
    const source = new EventSource(`${this.baseUrl}/api/presence/events?user_ids=${ids}`);
    fallback.source = source;
    const onEvent = (event) => this.#handle(JSON.parse(event.data));
    ["snapshot", "presence", "typing"].forEach((type) => source.addEventListener(type, onEvent));
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) return;
      setTimeout(() => {
        if (this.fallback === fallback && fallback.source === source && !this.stopped) this.#openEventSource(fallback);
      }, 1000 + Math.random() * 2000);
    };
  }

  #handleSseBlock(block, fallback) {
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("data:")) data += line.slice(5).trimStart();
      else if (line.startsWith("id:")) fallback.lastEventId = line.slice(3).trim();
    }
    if (data) this.#handle(JSON.parse(data));
  }
}

/** The dot colour of a user: "active" (green), "idle" (yellow), "dnd" (red) or "offline". */
export function availabilityOf(user) {
  if (!user || user.online_status !== "online") return "offline";
  return user.availability || "active";
}

/**
 * WhatsApp-style "last seen" text: "online" (or "online · away", "online · do not disturb"),
 * "last seen today at 10:30",
 * "last seen yesterday at 22:05", "last seen 12/03/2026 at 09:15", or "" when hidden.
 * With `{relative: true}` the last hour reads "last seen just now" / "last seen 5 min ago"
 * (re-render it as time passes).
 */
export function describePresence(user, now = new Date(), { relative = false } = {}) {
  if (!user) return "";
  if (user.online_status === "online") {
    if (user.availability === "idle") return "online · away";
    if (user.availability === "dnd") return "online · do not disturb";
    return "online";
  }
  if (!user.last_seen) {
    if (user.last_seen_approx) return `last seen ${user.last_seen_approx.replace("_", " ")}`;
    return user.online_status === "offline" ? "offline" : "";
  }
  const seen = new Date(user.last_seen);
  const minutes = Math.floor((now.getTime() - seen.getTime()) / 60000);
  if (relative && minutes < 1) return "last seen just now";
  if (relative && minutes < 60) return `last seen ${minutes} min ago`;
  const time = seen.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const day = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  const days = Math.round((day(now) - day(seen)) / 86400000);
  if (days <= 0) return `last seen today at ${time}`;
  if (days === 1) return `last seen yesterday at ${time}`;
  return `last seen ${seen.toLocaleDateString()} at ${time}`;
}
