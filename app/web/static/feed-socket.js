// The /ws feed with reconnects: exponential backoff with jitter (0.5 s doubling to 8 s, reset once a
// connection has stayed up 10 s), the current subscriptions sent again on every new connection.
import { parseExact, parseTickFrame } from "./exact-json.js";

const TICK_FRAME_PREFIX = '{"channel":"ticks",';

export const BACKOFF_FIRST_MS = 500;
export const BACKOFF_MAX_MS = 8000;
export const HEALTHY_AFTER_MS = 10000;

// Half the delay fixed, half random: clients restarted together do not all come back at the same instant.
export function backoffDelayMs(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.max(0, attempt - 1));
  return ceiling / 2 + random() * (ceiling / 2);
}

export class FeedSocket {
  // onMessage(message) for data and replies; onState({state, attempt, retryAt}) with state one of
  // "connecting", "live", "reconnecting"; onOpen() after each (re)connect, once subscriptions are sent.
  constructor(url, { onMessage, onState, onOpen }) {
    this.url = url;
    this.onMessage = onMessage;
    this.onState = onState;
    this.onOpen = onOpen;
    // key -> subscribe request, sent again after every reconnect.
    this.subscriptions = new Map();
    this.attempt = 0;
    this.socket = null;
    this.healthyTimer = null;
    this.retryTimer = null;
  }

  start() {
    this.connect();
  }

  subscribe(key, request) {
    this.subscriptions.set(key, request);
    this.send({ op: "subscribe", ...request });
  }

  unsubscribe(key) {
    const request = this.subscriptions.get(key);
    if (request === undefined) return;
    this.subscriptions.delete(key);
    this.send({ op: "unsubscribe", ...request });
  }

  send(message) {
    if (this.socket !== null && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  connect() {
    this.retryTimer = null;
    this.onState({ state: this.attempt === 0 ? "connecting" : "reconnecting", attempt: this.attempt, retryAt: null });
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener("open", () => {
      for (const request of this.subscriptions.values()) this.send({ op: "subscribe", ...request });
      this.healthyTimer = setTimeout(() => { this.attempt = 0; }, HEALTHY_AFTER_MS);
      this.onState({ state: "live", attempt: this.attempt, retryAt: null });
      this.onOpen();
    });
    socket.addEventListener("message", (event) => {
      const text = event.data;
      this.onMessage(text.startsWith(TICK_FRAME_PREFIX) ? parseTickFrame(text) : parseExact(text));
    });
    // "close" follows "error" too: one place schedules the next attempt.
    socket.addEventListener("close", () => {
      if (this.socket !== socket) return;
      this.socket = null;
      clearTimeout(this.healthyTimer);
      this.attempt += 1;
      const delay = backoffDelayMs(this.attempt);
      this.onState({ state: "reconnecting", attempt: this.attempt, retryAt: performance.now() + delay });
      this.retryTimer = setTimeout(() => this.connect(), delay);
    });
  }
}
