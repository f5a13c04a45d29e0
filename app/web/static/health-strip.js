// The health strip: the service's /health (connections, reasons when 503), the exchange in use, the feed's state.
import { formatAge } from "./symbols-table.js";

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// A count, or the list of stream names.
function streamCount(streams) {
  return Array.isArray(streams) ? streams.length : streams;
}

export class HealthStrip {
  constructor(root) {
    this.status = root.querySelector("#health-status");
    this.feed = root.querySelector("#feed-state");
    this.exchange = root.querySelector("#exchange-url");
    this.connections = root.querySelector("#connections");
    this.reasons = root.querySelector("#health-reasons");
    this.lastKey = "";
  }

  // health: {status, body} from the last poll, or {status: 0} when the service could not be reached.
  render(health, feed, config) {
    const key = JSON.stringify([health, feed.state, feed.retryInSeconds, config?.exchange_ws_url]);
    if (key === this.lastKey) return;
    this.lastKey = key;
    this.renderStatus(health);
    this.renderFeed(feed);
    this.exchange.textContent = config ? config.exchange_ws_url : "–";
    this.exchange.title = config ? `REST ${config.exchange_rest_url}` : "";
    const body = health?.body ?? {};
    this.connections.replaceChildren(...(body.connections ?? []).map((connection) => {
      const item = element("li", connection.connected ? "connection up" : "connection down");
      item.append(element("span", "dot"), element("span", "name", connection.name));
      const age = connection.last_frame_age_seconds;
      item.append(element("span", "detail",
        `${connection.connected ? "up" : "down"} · ${streamCount(connection.streams)} streams · last frame ` +
        `${formatAge(age)} ago · ${connection.reconnects} reconnects`));
      return item;
    }));
    const reasons = body.reasons ?? [];
    this.reasons.hidden = reasons.length === 0;
    this.reasons.replaceChildren(...reasons.map((reason) => {
      const item = element("li", "reason");
      item.append(element("code", "", reason.code), element("span", "", reason.message));
      return item;
    }));
  }

  renderStatus(health) {
    if (health === null) {
      this.setPill(this.status, "pending", "Checking…");
    } else if (health.status === 0) {
      this.setPill(this.status, "down", "Service unreachable");
    } else if (health.status === 200) {
      this.setPill(this.status, "ok", "Healthy");
    } else {
      this.setPill(this.status, "down", `Unavailable (${health.status})`);
    }
  }

  renderFeed(feed) {
    if (feed.state === "live") {
      this.setPill(this.feed, "ok", "Live");
    } else if (feed.state === "connecting") {
      this.setPill(this.feed, "pending", "Connecting…");
    } else {
      const wait = feed.retryInSeconds === null ? "" : ` in ${feed.retryInSeconds} s`;
      this.setPill(this.feed, "down", `Reconnecting${wait} (attempt ${feed.attempt})`);
    }
  }

  setPill(pill, tone, text) {
    pill.dataset.tone = tone;
    pill.textContent = text;
  }
}
