/*
 * The flashsale storefront: plain JS, no build step, no dependencies.
 *
 * Talks to the JSON API under /api/v1 (see the <meta name="flashsale-api"> tag): polls the catalog every second for
 * live stock, reserves, counts the hold down to its expiresAt, checks out and shows the order. The shopper's token,
 * holds and orders live in localStorage so a reload keeps them. Every time shown is computed against the server's
 * clock (the engine's times come from Redis), estimated from the Date header of each response.
 *
 * A sale with a waiting room shows "Join the line" instead of "Reserve"; once in line the card shows the place,
 * a progress bar and an estimate, asked again by polling (not server-sent events: a crowd of waiting pages would
 * hold one connection each, against each API process's connection cap, while a poll is one cheap script call). The
 * API says when to ask again (pollAfterSeconds: rarely far back in line, every second near the front); a failed
 * poll backs off, doubling up to 30 s. Once admitted the Reserve button comes back until the admission lapses.
 */
(() => {
  "use strict";

  const API = document.querySelector('meta[name="flashsale-api"]')?.content || "/api/v1";
  const CURRENCY = document.querySelector('meta[name="flashsale-currency"]')?.content || "USD";
  const POLL_MS = 1000;
  const POLL_BACKOFF_MS = 4000;
  // localStorage keys; holds and orders are kept per shopper, so signing in again brings them back.
  const STORE = { token: "flashsale.token", holds: (user) => `flashsale.holds.${user}`,
    orders: (user) => `flashsale.orders.${user}` };
  // The simulated gateway's methods (api/payments.py); TEST_DECLINE is a valid method that is always declined.
  const PAYMENT_METHODS = [
    { id: "CREDIT_CARD", label: "Credit card" },
    { id: "DEBIT_CARD", label: "Debit card" },
    { id: "PAYPAL", label: "PayPal" },
    { id: "APPLE_PAY", label: "Apple Pay" },
    { id: "GOOGLE_PAY", label: "Google Pay" },
    { id: "TEST_DECLINE", label: "Test card (always declined)" },
  ];

  const state = {
    token: null,
    user: null,
    products: new Map(), // skuId -> product
    cards: new Map(), // skuId -> card element
    holds: new Map(), // reservation id -> reservation
    holdCards: new Map(),
    orders: new Map(), // order id -> order
    orderCards: new Map(),
    queue: new Map(), // skuId -> the shopper's place in its waiting room (readQueue, plus firstPosition)
    queueTimers: new Map(), // skuId -> the timer of its next poll
    paymentMethods: PAYMENT_METHODS,
    clockOffsetMs: 0, // server time - local time
    pollTimer: 0,
    online: true,
    busy: new Set(), // keys of actions in flight, so a double click sends one request
  };

  const $ = (selector, root = document) => root.querySelector(selector);

  // ---------------------------------------------------------------------------------------------------------------
  // The API's shapes (api/schemas.py: camelCase, money as decimal strings, times as RFC 3339 strings or null),
  // read in one place: the rest of the page uses these objects, with integer cents and ms since the epoch.

  /** "2026-11-25T14:00:00.000Z" -> ms since the epoch; null (no bound) -> 0. */
  const toMs = (value) => {
    const parsed = value ? Date.parse(value) : NaN;
    return Number.isFinite(parsed) ? parsed : 0;
  };

  /** "19.99" -> 1999 (the schema's Money pattern: digits, then at most two decimals). */
  const toCents = (value) => {
    const match = /^(\d+)(?:\.(\d{1,2}))?$/.exec(String(value ?? ""));
    return match ? Number(match[1]) * 100 + Number((match[2] || "").padEnd(2, "0")) : 0;
  };

  const readProduct = (p) => ({
    skuId: String(p.skuId),
    name: String(p.name || p.skuId),
    priceCents: toCents(p.price),
    flashCents: toCents(p.flashSalePrice),
    total: Number(p.total) || 0,
    available: Number(p.available) || 0,
    reserved: Number(p.reserved) || 0,
    sold: Number(p.sold) || 0,
    perUserLimit: Math.max(1, Number(p.perUserLimit) || 1),
    startsAt: toMs(p.startsAt),
    endsAt: toMs(p.endsAt),
    paused: p.paused === true,
    waitingRoom: p.waitingRoom && p.waitingRoom.on === true
      ? { admitPerSecond: Number(p.waitingRoom.admitPerSecond) || 1, opensAt: toMs(p.waitingRoom.opensAt) }
      : null,
  });

  const readQueue = (q) => ({
    status: String(q.status),
    position: Number(q.position) || 0,
    ahead: Number(q.ahead) || 0,
    lineLength: Number(q.lineLength) || 0,
    estimateMs: (Number(q.estimatedWaitSeconds) || 0) * 1000,
    admittedUntil: toMs(q.admittedUntil),
    pollAfterMs: Math.max(1, Number(q.pollAfterSeconds) || 5) * 1000,
  });

  const readReservation = (r) => ({
    id: String(r.id),
    skuId: String(r.skuId),
    quantity: Number(r.quantity) || 1,
    status: String(r.status),
    createdAt: toMs(r.createdAt),
    expiresAt: toMs(r.expiresAt),
    orderId: r.orderId ?? null,
  });

  const readOrder = (o) => ({
    id: String(o.id),
    reservationId: String(o.reservationId ?? ""),
    skuId: String(o.skuId ?? ""),
    quantity: Number(o.quantity) || 1,
    totalCents: toCents(o.totalPrice),
    status: String(o.status),
    paymentMethod: String(o.paymentMethod ?? ""),
    failureReason: o.failureReason ?? null,
  });

  // ---------------------------------------------------------------------------------------------------------------
  // HTTP

  class ApiError extends Error {
    constructor(code, message, status, body) {
      super(message);
      this.code = code;
      this.status = status;
      this.body = body || {};
    }
  }

  const CODE_BY_STATUS = { 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 429: "RATE_LIMITED" };

  const newKey = () => {
    if (window.crypto?.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  };

  /** The server clock, from the Date header: only trusted when it disagrees by more than its 1 s resolution. */
  const noteServerClock = (response, sentAt) => {
    const header = response.headers.get("Date");
    if (!header) return;
    const serverMs = Date.parse(header);
    if (!Number.isFinite(serverMs)) return;
    const localMid = (sentAt + Date.now()) / 2;
    const offset = serverMs + 500 - localMid;
    state.clockOffsetMs = Math.abs(offset) > 1500 ? offset : 0;
  };
  const serverNow = () => Date.now() + state.clockOffsetMs;

  async function api(method, path, body, { idempotencyKey, auth = true } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth && state.token) headers.Authorization = `Bearer ${state.token}`;
    if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
    const init = { method, headers, body: body === undefined ? undefined : JSON.stringify(body) };
    const sentAt = Date.now();
    let response;
    try {
      response = await fetch(API + path, init);
    } catch (networkError) {
      // A reserve or checkout with an idempotency key is safe to send once more: a repeat returns the first answer.
      if (!idempotencyKey) throw new ApiError("NETWORK", "The shop cannot be reached right now.", 0);
      try {
        response = await fetch(API + path, init);
      } catch (again) {
        throw new ApiError("NETWORK", "The shop cannot be reached right now.", 0);
      }
    }
    noteServerClock(response, sentAt);
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (notJson) {
        data = null;
      }
    }
    if (!response.ok) {
      const code = data?.error || CODE_BY_STATUS[response.status] || `HTTP_${response.status}`;
      throw new ApiError(code, data?.message || response.statusText, response.status, data);
    }
    return data;
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Formatting

  const moneyFormat = new Intl.NumberFormat(undefined, { style: "currency", currency: CURRENCY });
  const money = (cents) => moneyFormat.format(cents / 100);
  const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  /** 3725000 -> "1:02:05"; over a day -> "2d 03:04:05". */
  const duration = (ms) => {
    const total = Math.max(0, Math.ceil(ms / 1000));
    const days = Math.floor(total / 86400);
    const hours = Math.floor((total % 86400) / 3600);
    const minutes = Math.floor((total % 3600) / 60);
    const seconds = total % 60;
    const two = (n) => String(n).padStart(2, "0");
    if (days > 0) return `${days}d ${two(hours)}:${two(minutes)}:${two(seconds)}`;
    if (hours > 0) return `${hours}:${two(minutes)}:${two(seconds)}`;
    return `${two(minutes)}:${two(seconds)}`;
  };

  /** The same, in words for screen readers: "1 hour 2 minutes 5 seconds". */
  const durationWords = (ms) => {
    const total = Math.max(0, Math.ceil(ms / 1000));
    const parts = [
      [Math.floor(total / 86400), "day"],
      [Math.floor((total % 86400) / 3600), "hour"],
      [Math.floor((total % 3600) / 60), "minute"],
      [total % 60, "second"],
    ].filter(([n]) => n > 0);
    if (!parts.length) return "0 seconds";
    return parts.map(([n, unit]) => `${n} ${unit}${n === 1 ? "" : "s"}`).join(" ");
  };

  const productName = (skuId) => state.products.get(skuId)?.name || skuId;

  // ---------------------------------------------------------------------------------------------------------------
  // Messages: one live region, so a screen reader hears each outcome once.

  // The region stays in the page (empty when quiet): a live region that appears together with its text is
  // not reliably announced.
  let statusTimer = 0;
  function announce(text, tone = "info", { sticky = false } = {}) {
    const box = $("#status");
    box.dataset.tone = tone;
    box.textContent = text;
    clearTimeout(statusTimer);
    if (!sticky) statusTimer = setTimeout(() => { box.textContent = ""; }, 12000);
  }

  /** What each refusal means to a shopper, and what they can do about it. */
  function explain(error, context = {}) {
    const name = context.skuId ? productName(context.skuId) : "this item";
    const limit = context.skuId ? state.products.get(context.skuId)?.perUserLimit : undefined;
    switch (error.code) {
      case "OUT_OF_STOCK":
        return `Sold out: ${name} has no units left. Units held by others come back if their holds expire.`;
      case "ALREADY_RESERVED":
        return `You already hold ${name}. Check out or release that hold before reserving more.`;
      case "ALREADY_PURCHASED":
        return `Limit reached: you have already bought ${limit ? `the maximum of ${limit}` : "all you may"} of ${name}.`;
      case "INVALID_QUANTITY":
        return limit ? `You can reserve at most ${limit} of ${name}.` : `That quantity is not allowed: ${error.message}`;
      case "SALE_NOT_ACTIVE":
        return `The sale for ${name} is not open right now.`;
      case "NOT_ADMITTED":
        return `${name} has a waiting room: join the line, and reserve when it is your turn.`;
      case "QUEUE_CLOSED":
        return `The line for ${name} is closed: ${error.message.includes("ended") ? "the sale has ended" : "it sold out"}.`;
      case "QUEUE_NOT_OPEN":
        return `The line for ${name} is not open yet. Please come back a little before the sale starts.`;
      case "RESERVATION_EXPIRED":
        return `Your hold on ${name} expired and its units went back on sale.`;
      case "CHECKOUT_IN_PROGRESS":
        return `A payment for your hold on ${name} is already being processed. Please wait a moment.`;
      case "PAYMENT_DECLINED":
        return `Payment declined for ${name}. Your hold is kept; try another payment method before the timer runs out.`;
      case "PAYMENT_PENDING":
        return `Your payment for ${name} is being confirmed. Check your order in a moment: you are charged only if it is confirmed.`;
      case "BACKLOG_FULL":
        return "The shop is catching up on orders. Please try again in a few seconds.";
      case "PAYMENT_GATEWAY_ERROR":
        return `The payment service failed and nothing was charged. Your hold on ${name} is kept; please try again.`;
      case "INVALID_STATE":
        return `That is no longer possible for ${name}: it was paid for, released or cancelled already.`;
      case "FORBIDDEN":
        return "That belongs to another shopper.";
      case "UNAUTHORIZED":
        return "Your sign-in is missing or has expired. Please sign in again.";
      case "RATE_LIMITED":
        return "Too many requests. Please wait a second and try again.";
      case "SERVICE_UNAVAILABLE":
        return "The shop is busy right now. Please try again in a moment.";
      case "NOT_FOUND":
        return context.notFound || `${name} was not found.`;
      case "NETWORK":
        return "The shop cannot be reached right now. Check your connection and try again.";
      default:
        return error.message || "Something went wrong. Please try again.";
    }
  }

  const TONE = { OUT_OF_STOCK: "warning", ALREADY_RESERVED: "warning", ALREADY_PURCHASED: "warning" };

  function refuse(error, context) {
    if (error.status === 401) signOut({ quiet: true });
    announce(explain(error, context), TONE[error.code] || "error");
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Sign-in: the shopper's token. The demo endpoint hands one out only when the server runs in demo mode.

  const tokenClaims = (token) => {
    try {
      const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, "=")));
    } catch (malformed) {
      return null;
    }
  };

  function useToken(token, { quiet = false } = {}) {
    const claims = tokenClaims(token);
    if (!claims || !claims.sub) {
      announce("That is not a valid token.", "error");
      return false;
    }
    if (claims.exp && claims.exp * 1000 <= Date.now()) {
      localStorage.removeItem(STORE.token);
      announce("Your sign-in has expired. Please sign in again.", "warning");
      return false;
    }
    const user = String(claims.sub);
    state.token = token;
    localStorage.setItem(STORE.token, token);
    if (state.user !== user) {
      state.user = user;
      recallShopper();
      for (const timer of state.queueTimers.values()) clearTimeout(timer);
      state.queue.clear();
      restoreQueues();
    }
    renderAccount();
    if (!quiet) announce(`Signed in as ${state.user}.`, "success");
    renderAllProducts();
    return true;
  }

  /** The signed-in shopper's holds and orders from localStorage; the server then confirms each hold. */
  function recallShopper() {
    state.holds.clear();
    state.orders.clear();
    if (state.user) {
      for (const hold of load(STORE.holds(state.user))) if (hold?.id) state.holds.set(hold.id, hold);
      for (const order of load(STORE.orders(state.user))) if (order?.id) state.orders.set(order.id, order);
    }
    renderHolds();
    renderOrders();
    if (state.holds.size) restoreHolds();
  }

  function signOut({ quiet = false } = {}) {
    state.token = null;
    state.user = null;
    localStorage.removeItem(STORE.token);
    recallShopper();
    renderAccount();
    renderAllProducts();
    if (!quiet) announce("Signed out.", "info");
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("#signin-name");
    const user = input.value.trim();
    if (!/^[A-Za-z0-9_.@-]{1,64}$/.test(user)) {
      input.setAttribute("aria-invalid", "true");
      announce("Please enter a name of letters, digits or -_.@ (at most 64).", "error");
      input.focus();
      return;
    }
    input.removeAttribute("aria-invalid");
    try {
      const answer = await api("POST", "/demo/token", { user }, { auth: false });
      if (useToken(String(answer?.token ?? ""))) input.value = "";
    } catch (error) {
      if (error.status === 404 || error.status === 405) {
        $(".token-entry").open = true;
        announce("Demo sign-in is off on this server. Ask for a token (flashsale token NAME) and paste it below.",
          "warning", { sticky: true });
        $("#signin-token").focus();
      } else {
        refuse(error);
      }
    }
  }

  function renderAccount() {
    const signedIn = Boolean(state.token);
    $("#signin").hidden = signedIn;
    $("#account").hidden = !signedIn;
    $("#account-name").textContent = state.user || "";
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Catalog

  /** Where a SKU's sale stands now: upcoming, live, soldout, paused or ended. */
  function phase(product, now = serverNow()) {
    if (product.endsAt > 0 && now >= product.endsAt) return "ended";
    if (now < product.startsAt) return "upcoming";
    if (product.paused) return "paused";
    if (product.available <= 0) return "soldout";
    return "live";
  }

  const hue = (text) => {
    let h = 0;
    for (const ch of text) h = (h * 31 + ch.codePointAt(0)) % 360;
    return h;
  };

  function createCard(product) {
    const node = $("#product-template").content.firstElementChild.cloneNode(true);
    node.dataset.sku = product.skuId;
    const titleId = `product-${product.skuId.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    $(".product-name", node).id = titleId;
    $("article", node).setAttribute("aria-labelledby", titleId);
    $(".product-art", node).style.setProperty("--hue", hue(product.skuId));
    $(".product-initial", node).textContent = (product.name.trim()[0] || "?").toUpperCase();
    $(".reserve-form", node).addEventListener("submit", (event) => {
      event.preventDefault();
      const current = state.products.get(product.skuId) || product;
      const place = state.queue.get(product.skuId);
      if (current.waitingRoom && !(place && place.status === "ADMITTED" && place.admittedUntil > serverNow())) {
        joinQueue(product.skuId);
        return;
      }
      reserve(product.skuId, Number($(".quantity", node).value) || 1);
    });
    return node;
  }

  function renderProduct(product) {
    let card = state.cards.get(product.skuId);
    if (!card) {
      card = createCard(product);
      state.cards.set(product.skuId, card);
    }
    const now = serverNow();
    const p = phase(product, now);
    card.dataset.phase = p;
    $(".product-name", card).textContent = product.name;
    $(".product-sku", card).textContent = `SKU ${product.skuId}`;
    $(".price-flash", card).textContent = money(product.flashCents || product.priceCents);
    const regular = $(".price-regular", card);
    regular.textContent = product.flashCents && product.priceCents > product.flashCents ? money(product.priceCents) : "";

    const badge = $(".product-badge", card);
    const badges = {
      upcoming: `Starts in ${duration(product.startsAt - now)}`,
      live: "On sale now",
      soldout: product.reserved > 0 ? "Sold out — held units may come back" : "Sold out",
      paused: "Sale paused",
      ended: "Sale ended",
    };
    badge.textContent = badges[p];
    badge.dataset.phase = p;

    const share = product.total > 0 ? product.available / product.total : 0;
    $(".stock-fill", card).style.width = `${Math.round(share * 100)}%`;
    $(".stock-bar", card).dataset.low = String(share > 0 && share <= 0.1);
    $(".stock-text", card).textContent = product.total > 0
      ? `${product.available} of ${product.total} left` + (product.reserved ? ` · ${product.reserved} on hold` : "")
      : "No stock";
    const saleWindow = $(".product-window", card);
    saleWindow.textContent = p === "upcoming"
      ? `Opens ${dateFormat.format(new Date(product.startsAt))}`
      : product.endsAt > 0 && p !== "ended" ? `Ends in ${duration(product.endsAt - now)}` : "";
    $(".product-limit", card).textContent = `Limit ${product.perUserLimit} per shopper`;

    const select = $(".quantity", card);
    // The page knows the shopper's own holds here; the server stays the judge of the limit (ALREADY_RESERVED).
    const held = [...state.holds.values()].filter((h) => h.skuId === product.skuId).reduce((n, h) => n + h.quantity, 0);
    const holdsAll = held >= product.perUserLimit;
    const most = Math.max(1, Math.min(product.perUserLimit - held, 10));
    if (select.options.length !== most) {
      const chosen = select.value;
      select.replaceChildren(...Array.from({ length: most }, (_, i) => new Option(String(i + 1), String(i + 1))));
      if (chosen && Number(chosen) <= most) select.value = chosen;
    }

    const button = $(".reserve-button", card);
    const busy = state.busy.has(`reserve:${product.skuId}`) || state.busy.has(`queue:${product.skuId}`);
    const place = state.queue.get(product.skuId);
    renderQueue(card, product, place, now);
    const mustQueue = product.waitingRoom && !(place && place.status === "ADMITTED" && place.admittedUntil > now);
    if (mustQueue && !holdsAll && ["live", "upcoming"].includes(p) && state.token) {
      const waiting = place && place.status === "WAITING";
      button.disabled = busy || waiting || now < product.waitingRoom.opensAt;
      button.textContent = busy ? "Joining…" : waiting ? "In line" : "Join the line";
    } else {
      button.disabled = p !== "live" || busy || holdsAll;
      button.textContent = busy ? "Reserving…" : holdsAll && p === "live" ? "Held for you" : {
        live: state.token ? "Reserve" : "Sign in to reserve",
        soldout: "Sold out", upcoming: "Not open yet", paused: "Paused", ended: "Sale ended" }[p];
    }
    button.setAttribute("aria-label", `${button.textContent}: ${product.name}`);
    select.disabled = button.disabled;
    $(".quantity-label", card).hidden = most <= 1 || button.disabled;
    return card;
  }

  function renderAllProducts() {
    const list = $("#products");
    const products = [...state.products.values()];
    products.sort((a, b) => a.startsAt - b.startsAt || a.name.localeCompare(b.name));
    const cards = products.map(renderProduct);
    // Re-append only when the order changed, so focus and open selects are left alone.
    const current = [...list.children];
    if (current.length !== cards.length || current.some((node, i) => node !== cards[i])) list.replaceChildren(...cards);
    for (const [skuId, card] of state.cards) if (!state.products.has(skuId)) { card.remove(); state.cards.delete(skuId); }
    list.setAttribute("aria-busy", "false");
    $("#products-empty").hidden = products.length > 0;
    renderSaleClock();
  }

  function renderSaleClock() {
    const clock = $("#sale-clock");
    const now = serverNow();
    const products = [...state.products.values()];
    if (!products.length) {
      clock.textContent = state.online ? "No sale is loaded yet." : "Waiting for the shop…";
      return;
    }
    const upcoming = products.filter((p) => phase(p, now) === "upcoming").sort((a, b) => a.startsAt - b.startsAt);
    const live = products.filter((p) => ["live", "soldout"].includes(phase(p, now)));
    if (upcoming.length && !live.length) {
      clock.textContent = `The sale starts in ${duration(upcoming[0].startsAt - now)}`;
      clock.setAttribute("aria-label", `The sale starts in ${durationWords(upcoming[0].startsAt - now)}`);
      return;
    }
    clock.removeAttribute("aria-label");
    if (live.length) {
      const ending = live.filter((p) => p.endsAt > 0).sort((a, b) => a.endsAt - b.endsAt)[0];
      const left = live.reduce((sum, p) => sum + p.available, 0);
      const held = live.reduce((sum, p) => sum + p.reserved, 0);
      if (left === 0 && !upcoming.length) {
        clock.textContent = held
          ? "Everything is sold out for now; units held by other shoppers come back if they do not pay."
          : "Everything is sold out. Thank you for shopping.";
        return;
      }
      clock.textContent = `The sale is live: ${left} unit${left === 1 ? "" : "s"} left` +
        (ending ? `, ends in ${duration(ending.endsAt - now)}` : "") +
        (upcoming.length ? `; more items open in ${duration(upcoming[0].startsAt - now)}` : "");
      return;
    }
    const paused = products.some((p) => phase(p, now) === "paused");
    clock.textContent = paused
      ? "The sale is paused. Holds stay valid; stock opens again when it resumes."
      : "The sale has ended. Thank you for shopping.";
  }

  async function refreshProducts() {
    try {
      const answer = await api("GET", "/products", undefined, { auth: false });
      const items = Array.isArray(answer) ? answer : answer?.items || answer?.products || [];
      const seen = new Set();
      for (const raw of items) {
        const product = readProduct(raw);
        seen.add(product.skuId);
        state.products.set(product.skuId, product);
      }
      for (const skuId of [...state.products.keys()]) if (!seen.has(skuId)) state.products.delete(skuId);
      setOnline(true);
      renderAllProducts();
      return true;
    } catch (error) {
      setOnline(false, error);
      return false;
    }
  }

  function setOnline(online, error) {
    const note = $("#connection");
    if (online) {
      note.hidden = true;
    } else {
      note.hidden = false;
      note.textContent = error?.code === "RATE_LIMITED"
        ? "The shop is busy; stock figures will update again in a moment."
        : "Lost contact with the shop; stock figures may be out of date. Retrying…";
    }
    state.online = online;
  }

  // Short polling: one GET a second while the page is visible, slower after a failure.
  function schedulePoll(delay) {
    clearTimeout(state.pollTimer);
    // A little jitter, so thousands of open pages do not poll in the same millisecond.
    state.pollTimer = setTimeout(poll, delay ? delay * (0.9 + Math.random() * 0.2) : 0);
  }
  async function poll() {
    if (document.hidden) return; // visibilitychange starts it again
    const ok = await refreshProducts();
    schedulePoll(ok ? POLL_MS : POLL_BACKOFF_MS);
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Waiting room: join, then poll the place with the API's suggested interval (backing off on failures)

  /** The card's line panel: the place, how far the shopper has come since joining, and the estimate. */
  function renderQueue(card, product, place, now) {
    const panel = $(".queue-panel", card);
    panel.hidden = !product.waitingRoom || !place;
    if (panel.hidden) return;
    panel.dataset.status = place.status;
    const text = $(".queue-text", panel);
    const progress = $(".queue-progress", panel);
    const estimate = $(".queue-estimate", panel);
    if (place.status === "WAITING") {
      text.textContent = `You are number ${place.position} in line` +
        (place.ahead ? ` (${place.ahead} ahead of you)` : " — you are next");
      const first = place.firstPosition || place.position;
      progress.value = first > 1 ? Math.round(((first - place.position) / (first - 1)) * 100) : 100;
      estimate.textContent = `About ${durationWords(Math.max(place.estimateMs, 1000))} to go` +
        (now < product.startsAt ? "; places among early arrivals are drawn at random when the sale opens." : ".");
    } else if (place.status === "ADMITTED" && place.admittedUntil > now) {
      text.textContent = "It is your turn: reserve now.";
      progress.value = 100;
      estimate.textContent = `Your turn lasts ${durationWords(place.admittedUntil - now)}.`;
    } else if (place.status === "SOLD_OUT") {
      text.textContent = "Sold out while you waited. Sorry!";
      estimate.textContent = "";
    } else {
      text.textContent = place.status === "ENDED" ? "The sale has ended." : "Your turn has passed: join the line again.";
      estimate.textContent = "";
    }
  }

  function noteQueue(skuId, answer) {
    const place = readQueue(answer);
    const before = state.queue.get(skuId);
    place.firstPosition = before?.firstPosition || place.position;
    state.queue.set(skuId, place);
    return place;
  }

  async function joinQueue(skuId) {
    if (!state.token) return;
    const key = `queue:${skuId}`;
    if (state.busy.has(key)) return;
    state.busy.add(key);
    renderAllProducts();
    try {
      const place = noteQueue(skuId, await api("POST", `/sales/${encodeURIComponent(skuId)}/queue`));
      announce(`You are in line for ${productName(skuId)}: number ${place.position}.`, "success");
      scheduleQueuePoll(skuId, place.pollAfterMs);
    } catch (error) {
      refuse(error, { skuId });
    } finally {
      state.busy.delete(key);
      renderAllProducts();
    }
  }

  function scheduleQueuePoll(skuId, delay) {
    clearTimeout(state.queueTimers.get(skuId));
    state.queueTimers.set(skuId, setTimeout(() => pollQueue(skuId, delay), delay * (0.9 + Math.random() * 0.2)));
  }

  async function pollQueue(skuId, lastDelay) {
    if (!state.token) return;
    try {
      const was = state.queue.get(skuId)?.status;
      const place = noteQueue(skuId, await api("GET", `/sales/${encodeURIComponent(skuId)}/queue`));
      if (place.status === "ADMITTED" && was !== "ADMITTED") {
        announce(`It is your turn for ${productName(skuId)}: reserve within ${durationWords(place.admittedUntil - serverNow())}.`, "success");
      }
      renderAllProducts();
      if (place.status === "WAITING" || place.status === "ADMITTED") scheduleQueuePoll(skuId, place.pollAfterMs);
    } catch (error) {
      if (error.code === "NOT_IN_QUEUE") {
        state.queue.delete(skuId);
        renderAllProducts();
        return;
      }
      scheduleQueuePoll(skuId, Math.min(30_000, Math.max(2000, lastDelay * 2))); // back off
    }
  }

  /** After a reload or a sign-in: the shopper's places in the waiting rooms, if any. */
  function restoreQueues() {
    for (const product of state.products.values()) {
      if (product.waitingRoom && state.token && !state.queue.has(product.skuId)) pollQueue(product.skuId, 1000);
    }
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Reserve, hold, checkout

  async function reserve(skuId, quantity) {
    if (!state.token) {
      announce("Please sign in first: enter your name at the top of the page.", "warning");
      $("#signin-name").focus();
      return;
    }
    const key = `reserve:${skuId}`;
    if (state.busy.has(key)) return;
    state.busy.add(key);
    renderAllProducts();
    try {
      const answer = await api("POST", "/reservations", { skuId, quantity }, { idempotencyKey: newKey() });
      const hold = readReservation(answer);
      state.holds.set(hold.id, hold);
      saveHolds();
      renderHolds();
      renderAllProducts();
      announce(`Reserved ${hold.quantity} × ${productName(skuId)}. It is held for you for ` +
        `${durationWords(hold.expiresAt - serverNow())}: check out below.`, "success");
      $(`[data-reservation="${CSS.escape(hold.id)}"] .checkout-button`)?.focus();
    } catch (error) {
      refuse(error, { skuId });
    } finally {
      state.busy.delete(key);
      refreshProducts();
    }
  }

  function holdEnded(hold, message, tone = "warning") {
    state.holds.delete(hold.id);
    saveHolds();
    renderHolds();
    renderAllProducts();
    if (message) announce(message, tone);
  }

  async function release(hold) {
    const key = `hold:${hold.id}`;
    if (state.busy.has(key)) return;
    state.busy.add(key);
    try {
      await api("DELETE", `/reservations/${encodeURIComponent(hold.id)}`);
      holdEnded(hold, `Released your hold on ${productName(hold.skuId)}; the units are back on sale.`, "info");
    } catch (error) {
      if (error.code === "NOT_FOUND" || error.code === "RESERVATION_EXPIRED" || error.code === "INVALID_STATE") {
        holdEnded(hold, `Your hold on ${productName(hold.skuId)} had already ended.`);
      } else {
        refuse(error, { skuId: hold.skuId });
      }
    } finally {
      state.busy.delete(key);
      renderHolds();
      refreshProducts();
    }
  }

  async function checkout(hold, paymentMethod) {
    const key = `hold:${hold.id}`;
    if (state.busy.has(key)) return;
    state.busy.add(key);
    renderHolds();
    announce(`Paying for ${productName(hold.skuId)}…`, "info", { sticky: true });
    try {
      const answer = await api("POST", "/orders/checkout", { reservationId: hold.id, paymentMethod },
        { idempotencyKey: newKey() });
      const order = readOrder(answer);
      state.orders.set(order.id, order);
      saveOrders();
      holdEnded(hold, null);
      renderOrders();
      announce(`Order confirmed: ${order.quantity} × ${productName(order.skuId)} for ${money(order.totalCents)}. ` +
        `Your order number is ${order.id}.`, "success", { sticky: true });
      $(`[data-order="${CSS.escape(order.id)}"] .order-title`)?.focus();
    } catch (error) {
      // A decline (402) or a gateway failure (502) leaves the hold as it was: the shopper may pay again.
      if (error.code === "RESERVATION_EXPIRED" || error.code === "NOT_FOUND") {
        holdEnded(hold, explain({ code: "RESERVATION_EXPIRED" }, { skuId: hold.skuId }));
      } else if (error.code === "INVALID_STATE") {
        holdEnded(hold, explain(error, { skuId: hold.skuId }));
      } else {
        refuse(error, { skuId: hold.skuId });
      }
    } finally {
      state.busy.delete(key);
      renderHolds();
      refreshProducts();
    }
  }

  function createHoldCard(hold) {
    const node = $("#hold-template").content.firstElementChild.cloneNode(true);
    node.dataset.reservation = hold.id;
    const titleId = `hold-${hold.id}`;
    $(".hold-title", node).id = titleId;
    $("article", node).setAttribute("aria-labelledby", titleId);
    const methods = $(".payment-methods", node);
    state.paymentMethods.forEach((method, i) => {
      const label = document.createElement("label");
      label.className = "payment-method";
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = `payment-${hold.id}`;
      radio.value = method.id;
      radio.checked = i === 0;
      label.append(radio, ` ${method.label}`);
      methods.append(label);
    });
    $(".checkout-form", node).addEventListener("submit", (event) => {
      event.preventDefault();
      const method = $("input[type=radio]:checked", node)?.value || state.paymentMethods[0].id;
      checkout(state.holds.get(hold.id) || hold, method);
    });
    $(".release-button", node).addEventListener("click", () => release(state.holds.get(hold.id) || hold));
    return node;
  }

  function renderHold(hold, now) {
    let card = state.holdCards.get(hold.id);
    if (!card) {
      card = createHoldCard(hold);
      state.holdCards.set(hold.id, card);
    }
    const left = hold.expiresAt - now;
    const span = hold.createdAt && hold.expiresAt > hold.createdAt ? hold.expiresAt - hold.createdAt : 0;
    $(".hold-title", card).textContent = `${hold.quantity} × ${productName(hold.skuId)}`;
    $(".hold-timer", card).textContent = duration(left);
    $(".hold-timer", card).dataset.urgent = String(left <= 60000);
    $(".hold-fill", card).style.width = span ? `${Math.max(0, Math.min(100, (left / span) * 100))}%` : "100%";
    $(".hold-text", card).textContent =
      `Held for you until ${new Date(hold.expiresAt - state.clockOffsetMs).toLocaleTimeString()} ` +
      `(${durationWords(left)} left). Choose how to pay.`;
    const busy = state.busy.has(`hold:${hold.id}`);
    $(".checkout-button", card).disabled = busy;
    $(".checkout-button", card).textContent = busy ? "Paying…" : "Pay and confirm";
    $(".release-button", card).disabled = busy;
    return card;
  }

  function renderHolds() {
    const now = serverNow();
    const cards = [...state.holds.values()].sort((a, b) => a.expiresAt - b.expiresAt).map((h) => renderHold(h, now));
    const list = $("#hold-list");
    const current = [...list.children];
    if (current.length !== cards.length || current.some((node, i) => node !== cards[i])) list.replaceChildren(...cards);
    for (const [id, card] of state.holdCards) if (!state.holds.has(id)) { card.remove(); state.holdCards.delete(id); }
    $("#holds").hidden = cards.length === 0;
  }

  const warned = new Set();
  /** Runs every second: counts holds down, and ends those whose time is up (after asking the server). */
  function tickHolds() {
    const now = serverNow();
    for (const hold of [...state.holds.values()]) {
      const left = hold.expiresAt - now;
      // Only a hold that started long enough ago deserves a "last minute" warning.
      const span = hold.expiresAt - hold.createdAt;
      if (left <= 60000 && left > 0 && span > 90000 && !warned.has(hold.id)) {
        warned.add(hold.id);
        announce(`Less than a minute left on your hold on ${productName(hold.skuId)}.`, "warning");
      }
      if (left <= 0 && !state.busy.has(`hold:${hold.id}`)) confirmHoldEnded(hold);
    }
    renderHolds();
  }

  async function confirmHoldEnded(hold) {
    const key = `hold:${hold.id}`;
    state.busy.add(key);
    try {
      const answer = readReservation(await api("GET", `/reservations/${encodeURIComponent(hold.id)}`));
      if (answer.status === "RESERVED" && answer.expiresAt > serverNow()) {
        state.holds.set(hold.id, answer); // a payment in flight extends the hold; trust the server
        saveHolds();
      } else if (answer.status === "CONFIRMED") {
        holdEnded(hold, null);
      } else {
        holdEnded(hold, explain({ code: "RESERVATION_EXPIRED" }, { skuId: hold.skuId }));
      }
    } catch (error) {
      if (error.status === 401) refuse(error);
      else holdEnded(hold, explain({ code: "RESERVATION_EXPIRED" }, { skuId: hold.skuId }));
    } finally {
      state.busy.delete(key);
    }
  }

  /** After a reload: keep only the holds the server still has. */
  async function restoreHolds() {
    for (const hold of [...state.holds.values()]) {
      try {
        const answer = readReservation(await api("GET", `/reservations/${encodeURIComponent(hold.id)}`));
        if (answer.status === "RESERVED" && answer.expiresAt > serverNow()) state.holds.set(hold.id, answer);
        else state.holds.delete(hold.id);
      } catch (error) {
        if (error.status !== 0) state.holds.delete(hold.id);
      }
    }
    saveHolds();
    renderHolds();
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Orders

  function renderOrders() {
    const list = $("#order-list");
    const cards = [...state.orders.values()].reverse().map((order) => {
      let card = state.orderCards.get(order.id);
      if (!card) {
        card = $("#order-template").content.firstElementChild.cloneNode(true);
        card.dataset.order = order.id;
        $(".order-title", card).tabIndex = -1;
        $(".order-cancel", card).addEventListener("click", () => cancelOrder(state.orders.get(order.id)));
        $(".order-dismiss", card).addEventListener("click", () => {
          state.orders.delete(order.id);
          saveOrders();
          renderOrders();
        });
        state.orderCards.set(order.id, card);
      }
      const confirmed = order.status === "CONFIRMED" || order.status === "FULFILLED";
      $(".order-title", card).textContent = confirmed ? "Order confirmed" : `Order ${order.status.toLowerCase()}`;
      card.dataset.status = order.status;
      $(".order-id", card).textContent = order.id;
      $(".order-item", card).textContent = `${order.quantity} × ${productName(order.skuId)}`;
      $(".order-total", card).textContent = money(order.totalCents);
      $(".order-status", card).textContent = order.status;
      $(".order-cancel", card).hidden = order.status !== "CONFIRMED";
      return card;
    });
    const current = [...list.children];
    if (current.length !== cards.length || current.some((node, i) => node !== cards[i])) list.replaceChildren(...cards);
    for (const [id, card] of state.orderCards) if (!state.orders.has(id)) { card.remove(); state.orderCards.delete(id); }
    $("#orders").hidden = cards.length === 0;
  }

  async function cancelOrder(order) {
    if (!order || !window.confirm(`Cancel order ${order.id}? The units go back on sale.`)) return;
    try {
      const answer = readOrder(await api("POST", `/orders/${encodeURIComponent(order.id)}/cancel`));
      state.orders.set(order.id, { ...order, status: answer.status });
      saveOrders();
      renderOrders();
      announce(`Order ${order.id} is cancelled; the units are back on sale.`, "info");
    } catch (error) {
      refuse(error, { skuId: order.skuId, notFound: `Order ${order.id} was not found.` });
    } finally {
      refreshProducts();
    }
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Storage

  const save = (key, values) => { if (state.user) localStorage.setItem(key(state.user), JSON.stringify(values)); };
  const saveHolds = () => save(STORE.holds, [...state.holds.values()]);
  const saveOrders = () => save(STORE.orders, [...state.orders.values()]);
  const load = (name) => {
    try {
      const value = JSON.parse(localStorage.getItem(name) || "[]");
      return Array.isArray(value) ? value : [];
    } catch (corrupt) {
      return [];
    }
  };

  // ---------------------------------------------------------------------------------------------------------------
  // Start

  function start() {
    $("#signin").addEventListener("submit", signIn);
    $("#signin-token-use").addEventListener("click", () => {
      const field = $("#signin-token");
      if (useToken(field.value.trim())) field.value = "";
    });
    $("#signout").addEventListener("click", () => signOut());
    document.addEventListener("visibilitychange", () => { if (!document.hidden) schedulePoll(0); });

    const token = localStorage.getItem(STORE.token);
    if (token) useToken(token, { quiet: true });
    renderAccount();
    renderHolds();
    renderOrders();
    refreshProducts().then(() => {
      renderHolds();
      renderOrders();
      restoreQueues();
      schedulePoll(POLL_MS);
    });
    // One clock for the countdowns, independent of the network.
    setInterval(() => {
      tickHolds();
      renderAllProducts();
    }, 1000);
  }

  start();
})();
