// lastseen.js: browser client for the lastseen presence server. An ES module, no dependencies.
//
//   import { login, PresenceClient } from "/static/lastseen.js";
//   const { token } = await login("", "ahmad", "password123");
//   const client = new PresenceClient({ token });
//   client.addEventListener("presence", (e) => console.log(e.detail));
//   client.connect();
//   client.subscribe([2, 3]);
//
// The client keeps one WebSocket open (that alone keeps the user online), reconnects with
// jittered exponential backoff and resumes with `since`, so it only receives what changed.
// When sockets are blocked it falls back to an SSE stream read with fetch (so the bearer token
// stays in a header) plus the classic 30 s HTTP heartbeat.
//
// Events (all CustomEvent, data in `detail`):
//   "presence"  {userId, user}   user = {id, username?, online_status, last_seen, is_online, seq}
//   "typing"    {from, expiresInMs}
//   "status"    {state}          "connecting" | "open" | "fallback" | "closed"
//   "error"     {code, detail}   an error frame from the server, or a transport problem

/** Logs in; resolves to {token, user, heartbeatIntervalMs}. Throws an Error with `.code`. */
export async function login(baseUrl, username, password) {
  const body = await request(baseUrl, "POST", "/api/users/login/", null, { username, password });
  return { token: body.access, user: body.user, heartbeatIntervalMs: body.heartbeat_interval_ms };
}

/** Registers a new user; resolves to {id, username}. */
export function register(baseUrl, username, password) {
  return request(baseUrl, "POST", "/api/users/register/", null, { username, password });
}

/** Logs the token's session out (the user goes offline unless another device is live). */
export function logout(baseUrl, token) {
  return request(baseUrl, "POST", "/api/users/logout/", token);
}

/** Looks a user up by name; resolves to {id, username}. */
export function lookup(baseUrl, token, username) {
  return request(baseUrl, "GET", `/api/users/lookup/?username=${encodeURIComponent(username)}`, token);
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
  const body = await response.json().catch(() => ({}));
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
   * @param {string} options.token           bearer token from login()
   * @param {string} [options.baseUrl]       "" for the page's own origin
   * @param {number} [options.heartbeatIntervalMs]  fallback heartbeat period (default 30 s)
   * @param {number} [options.maxBackoffMs]  longest wait between reconnects (default 30 s)
   * @param {number} [options.fallbackAfter] failed socket attempts before falling back (default 3)
   */
  constructor({ token, baseUrl = "", heartbeatIntervalMs = 30000, maxBackoffMs = 30000, fallbackAfter = 3 }) {
    super();
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
    if (this.socket) this.socket.close(1000, "bye");
    this.#stopFallback();
    this.#status("closed");
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #status(state) {
    this.state = state;
    this.#emit("status", { state });
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
    this.#status("connecting");
    let opened = false;
    const socket = new WebSocket(this.#wsUrl());
    this.socket = socket;
    socket.onopen = () => {
      opened = true;
      this.failures = 0;
      socket.send(JSON.stringify({ type: "auth", token: this.token }));
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
    this.retryTimer = setTimeout(() => this.#openSocket(), Math.random() * cap);
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
          is_online: message.online_status === null ? null : message.online_status === "online",
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
    this.fallback = { controller: null, timer: null, lastEventId: null };
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
    this.fallback = null;
  }

  async #restartFallbackStream() {
    const fallback = this.fallback;
    if (!fallback || !this.watched.size) return;
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

  #handleSseBlock(block, fallback) {
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("data:")) data += line.slice(5).trimStart();
      else if (line.startsWith("id:")) fallback.lastEventId = line.slice(3).trim();
    }
    if (data) this.#handle(JSON.parse(data));
  }
}

/**
 * WhatsApp-style "last seen" text: "online", "last seen today at 10:30",
 * "last seen yesterday at 22:05", "last seen 12/03/2026 at 09:15", or "" when hidden.
 */
export function describePresence(user, now = new Date()) {
  if (!user) return "";
  if (user.online_status === "online") return "online";
  if (!user.last_seen) {
    if (user.last_seen_approx) return `last seen ${user.last_seen_approx.replace("_", " ")}`;
    return user.online_status === "offline" ? "offline" : "";
  }
  const seen = new Date(user.last_seen);
  const time = seen.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const day = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  const days = Math.round((day(now) - day(seen)) / 86400000);
  if (days <= 0) return `last seen today at ${time}`;
  if (days === 1) return `last seen yesterday at ${time}`;
  return `last seen ${seen.toLocaleDateString()} at ${time}`;
}
