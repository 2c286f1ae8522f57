// The lastseen admin dashboard. Authenticated by the HttpOnly session cookie that login sets
// (nothing is kept in page storage); live through the admin event stream, which reconnects by
// itself and resumes with Last-Event-ID.

const PAGE = 25;
const $ = (id) => document.getElementById(id);

const state = {
  search: "",
  // Keyset paging: the `after` of each page shown so far (null for the first).
  pages: [null],
  next: null,
  selected: null,
  events: null,
  refreshTimer: null,
  chartTimer: null,
};

class HttpError extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code;
  }
}

async function api(method, path, json) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new HttpError(response.status, body);
  return body;
}

function showError(error) {
  $("error").textContent = error ? error.message || String(error) : "";
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

function availabilityClass(user) {
  return user.online_status === "online" ? user.availability || "active" : "offline";
}

function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

function describe(user) {
  if (user.online_status === "online") {
    const mode = { active: "online", idle: "idle", dnd: "do not disturb" }[user.availability] || "online";
    const custom = [user.status_emoji, user.status_text].filter(Boolean).join(" ");
    return custom ? `${mode} · ${custom}` : mode;
  }
  return `last seen ${ago(user.last_seen)}`;
}

// ---- sign-in -------------------------------------------------------------------------------

async function start() {
  try {
    await api("GET", "/api/admin/stats/online/");
  } catch (error) {
    if (error.status === 401) return showLogin();
    if (error.status === 403) return showLogin("This account is not an admin; sign in as one.");
    return showError(error);
  }
  const me = await api("GET", "/api/users/me/");
  showDashboard(me);
}

function showLogin(message) {
  stopLive();
  $("dashboard").classList.add("hidden");
  $("sign-out").classList.add("hidden");
  $("whoami").textContent = "";
  $("live").textContent = "signed out";
  $("live").className = "live";
  $("login").classList.remove("hidden");
  showError(message ? new Error(message) : null);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  try {
    await api("POST", "/api/users/login/", {
      username: $("username").value,
      password: $("password").value,
      device: { platform: "web", name: "admin dashboard" },
    });
    $("password").value = "";
    await start();
  } catch (error) {
    showError(error);
  }
});

$("sign-out").addEventListener("click", async () => {
  try {
    await api("POST", "/api/users/logout/");
  } catch (error) {
    if (error.status !== 401) return showError(error);
  }
  showLogin();
});

function showDashboard(me) {
  $("login").classList.add("hidden");
  $("dashboard").classList.remove("hidden");
  $("sign-out").classList.remove("hidden");
  $("whoami").textContent = me.username;
  showError(null);
  startLive();
  refreshList();
  refreshChart();
  clearInterval(state.chartTimer);
  state.chartTimer = setInterval(refreshChart, 60_000);
}

// ---- live updates --------------------------------------------------------------------------

function startLive() {
  stopLive();
  const events = new EventSource("/api/admin/events");
  state.events = events;
  events.onopen = () => {
    $("live").textContent = "live";
    $("live").className = "live on";
    scheduleRefresh();
  };
  events.onerror = () => {
    // EventSource reconnects by itself (resuming by Last-Event-ID); a signed-out session
    // ends it for good.
    if (events.readyState === EventSource.CLOSED) {
      $("live").textContent = "disconnected";
      $("live").className = "live";
      start();
    } else {
      $("live").textContent = "reconnecting…";
      $("live").className = "live retry";
    }
  };
  events.addEventListener("presence", (message) => {
    let change;
    try {
      change = JSON.parse(message.data);
    } catch {
      return;
    }
    scheduleRefresh(change.user_id);
  });
}

function stopLive() {
  if (state.events) state.events.close();
  state.events = null;
  clearInterval(state.chartTimer);
}

let pendingUsers = new Set();

// Changes arrive one by one, maybe thousands a second: refresh at most every 250 ms.
function scheduleRefresh(userId) {
  if (userId !== undefined) pendingUsers.add(userId);
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(async () => {
    state.refreshTimer = null;
    const changed = pendingUsers;
    pendingUsers = new Set();
    await refreshList();
    if (state.selected !== null && changed.has(state.selected)) await showUser(state.selected);
  }, 250);
}

// ---- list ----------------------------------------------------------------------------------

async function refreshList() {
  const after = state.pages[state.pages.length - 1];
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (after !== null) query.set("after", String(after));
  try {
    let users;
    if (state.search) {
      query.set("search", state.search);
      const found = await api("GET", `/api/admin/users/?${query}`);
      users = found.users;
      state.next = found.next_after;
      const online = await api("GET", "/api/users/admin/users/online/?limit=1");
      setCount(online.online_count);
    } else {
      const online = await api("GET", `/api/users/admin/users/online/?${query}`);
      users = online.online_users;
      state.next = online.next_after;
      setCount(online.online_count);
    }
    renderUsers(users);
  } catch (error) {
    if (error.status === 401 || error.status === 403) return showLogin();
    showError(error);
  }
}

function setCount(count) {
  $("online-count").textContent = String(count);
  state.onlineNow = count;
  drawChart();
}

function renderUsers(users) {
  const body = $("users");
  body.replaceChildren(
    ...users.map((user) => {
      const row = el(
        "tr",
        {},
        el("td", {}, el("span", { className: `dot ${availabilityClass(user)}` }), el("b", { textContent: user.username })),
        el("td", { className: "hide-narrow muted", textContent: String(user.id) }),
        el("td", { textContent: describe(user) }),
        el("td", { className: "hide-narrow muted", textContent: (user.platforms || []).join(", ") }),
      );
      row.dataset.userId = String(user.id);
      if (user.id === state.selected) row.classList.add("selected");
      row.addEventListener("click", () => showUser(user.id));
      return row;
    }),
  );
  $("empty").classList.toggle("hidden", users.length > 0);
  $("list-title").textContent = state.search ? `Users matching “${state.search}”` : "Online users";
  $("page").textContent = `page ${state.pages.length}`;
  $("prev").disabled = state.pages.length === 1;
  $("next").disabled = state.next === null || state.next === undefined;
}

let searchTimer = null;
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    state.search = $("search").value.trim();
    state.pages = [null];
    refreshList();
  }, 200);
});

$("next").addEventListener("click", () => {
  if (state.next === null || state.next === undefined) return;
  state.pages.push(state.next);
  refreshList();
});

$("prev").addEventListener("click", () => {
  if (state.pages.length > 1) state.pages.pop();
  refreshList();
});

// ---- one user ------------------------------------------------------------------------------

async function showUser(id) {
  state.selected = id;
  let detail;
  try {
    detail = await api("GET", `/api/admin/users/${id}/`);
  } catch (error) {
    if (error.status === 401 || error.status === 403) return showLogin();
    return showError(error);
  }
  const user = detail.user;
  $("detail").classList.remove("hidden");
  $("dashboard").classList.add("with-detail");
  $("detail-name").replaceChildren(
    el("span", { className: `dot ${availabilityClass(user)}` }),
    user.username,
    ...(detail.is_admin ? [el("span", { className: "badge", textContent: "admin" })] : []),
  );
  $("detail-presence").textContent = `${describe(user)} · id ${user.id}`;
  $("sessions").replaceChildren(
    ...detail.sessions.map((session) =>
      el(
        "li",
        {},
        el(
          "span",
          {},
          el("b", { textContent: session.name || session.platform }),
          el("span", {
            className: "muted",
            textContent: ` · ${session.live ? "live" : "not live"} · active ${ago(session.last_activity)}`,
          }),
        ),
        endButton(id, session.id),
      ),
    ),
  );
  if (detail.sessions.length === 0) $("sessions").append(el("li", { className: "muted", textContent: "No sessions." }));
  $("end-all").disabled = detail.sessions.length === 0;
  $("transitions").replaceChildren(
    ...detail.transitions.map((change) =>
      el(
        "li",
        {},
        el("span", {
          textContent: change.online_status === "online" ? `online${change.availability ? ` (${change.availability})` : ""}` : "offline",
        }),
        el("span", { className: "muted", textContent: new Date(change.seq / 1000).toLocaleString() }),
      ),
    ),
  );
  if (detail.transitions.length === 0) $("transitions").append(el("li", { className: "muted", textContent: "None recorded." }));
  for (const row of $("users").children) row.classList.toggle("selected", row.dataset.userId === String(id));
}

function endButton(userId, sessionId) {
  const button = el("button", { className: "danger", type: "button", textContent: "End session" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api("DELETE", `/api/admin/users/${userId}/sessions/${sessionId}/`);
      await showUser(userId);
    } catch (error) {
      showError(error);
      button.disabled = false;
    }
  });
  return button;
}

$("end-all").addEventListener("click", async () => {
  if (state.selected === null) return;
  try {
    await api("DELETE", `/api/admin/users/${state.selected}/sessions/`);
    await showUser(state.selected);
  } catch (error) {
    showError(error);
  }
});

$("close-detail").addEventListener("click", () => {
  state.selected = null;
  $("detail").classList.add("hidden");
  $("dashboard").classList.remove("with-detail");
  for (const row of $("users").children) row.classList.remove("selected");
});

// ---- chart ---------------------------------------------------------------------------------

let samples = [];

async function refreshChart() {
  try {
    const stats = await api("GET", "/api/admin/stats/online/");
    samples = stats.samples.map((s) => ({ at: Date.parse(s.at), online: s.online }));
    setCount(stats.online_count);
  } catch (error) {
    if (error.status === 401 || error.status === 403) return showLogin();
    showError(error);
  }
}

function drawChart() {
  const now = Date.now();
  const start = now - 24 * 3600 * 1000;
  const points = samples.filter((s) => s.at >= start).map((s) => [s.at, s.online]);
  if (state.onlineNow !== undefined) points.push([now, state.onlineNow]);
  const peak = Math.max(0, ...points.map(([, online]) => online));
  $("peak").textContent = String(peak);
  const since = samples.find((s) => s.at >= start);
  $("chart-note").textContent = since
    ? `one sample a minute since ${new Date(since.at).toLocaleString()}`
    : "the first sample is taken within a minute";
  if (points.length === 0) return;
  const x = (at) => (((at - start) / (now - start)) * 1440).toFixed(1);
  const y = (online) => (100 - (online / Math.max(1, peak)) * 92).toFixed(1);
  const line = points.map(([at, online], i) => `${i ? "L" : "M"}${x(at)},${y(online)}`).join(" ");
  const [first] = points[0];
  const area = `${line} L${x(now)},100 L${x(first)},100 Z`;
  const [areaPath, linePath] = $("chart").children;
  areaPath.setAttribute("d", area);
  linePath.setAttribute("d", line);
}

start();
