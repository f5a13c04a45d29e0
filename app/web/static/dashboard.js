// The dashboard: reads the public API (/api/config, /api/symbols, /api/ticks, /api/candles, /health) and the
// /ws feed, and renders at most once per animation frame. Incoming data only updates bounded state (the
// latest tick per symbol, pending candle updates keyed by open time), so no work queues up however fast it comes.
//
// Test hook (documented in the README): window.marketdata.chartData() -> {symbol, interval, candles, plotted}
// (the exact candles the chart holds, oldest first, and the bars it plots), window.marketdata.feedState(),
// window.marketdata.stats() -> counters for bench/dashboard_bench.py (renders, feed messages, ticks, candles).
import { CandleBook } from "./candle-book.js";
import { CandleChart } from "./candle-chart.js";
import { fetchExact } from "./exact-json.js";
import { FeedSocket } from "./feed-socket.js";
import { HealthStrip } from "./health-strip.js";
import { SymbolsTable, formatAge } from "./symbols-table.js";

const POLL_MS = 2000;
const POLL_TIMEOUT_MS = 5000;
const HISTORY_LIMIT = 500;

const state = {
  config: null,
  // symbol -> row of /api/symbols, with the local time it was read.
  symbols: new Map(),
  // symbol -> {tick, epoch}: the newest tick; `epoch` counts feed connections (ids restart with a new replay).
  latest: new Map(),
  // symbol -> previous price, for the up/down colour.
  previousPrice: new Map(),
  // symbol -> {ageSeconds, at}: the age known at local time `at` (0 when a tick arrives on the feed).
  age: new Map(),
  // symbol -> trades per second, from ticks_received between two polls.
  rate: new Map(),
  health: null,
  feed: { state: "connecting", attempt: 0, retryAt: null },
  epoch: 0,
  selection: { symbol: null, interval: null },
  book: new CandleBook(),
  // Set while the history of the selection loads; live updates wait in `pendingCandles` meanwhile.
  loadingHistory: true,
  pendingCandles: new Map(),
  view: 0,
  stats: { renders: 0, feedMessages: 0, ticks: 0, candleUpdates: 0 },
};

let table;
let chart;
let strip;
let feed;
let frameRequested = false;

function scheduleRender() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(render);
}

function applyTick(tick, epoch) {
  const current = state.latest.get(tick.symbol);
  if (current !== undefined && current.epoch === epoch && tick.trade_id <= current.tick.trade_id) return;
  if (current !== undefined) state.previousPrice.set(tick.symbol, current.tick.price);
  state.latest.set(tick.symbol, { tick, epoch });
}

function onFeedMessage(message) {
  state.stats.feedMessages += 1;
  // Replies ({"op": "subscribed", "channel": ...}) carry no data; only refusals are worth a line.
  if (message.op !== undefined) {
    if (message.op === "error") console.warn(`feed refused a request: ${message.code}: ${message.message}`);
    return;
  }
  if (message.channel === "ticks") {
    const now = performance.now();
    // Tick frames arrive reduced to the newest tick per symbol; `count` is how many the frame held.
    state.stats.ticks += message.count ?? message.data.length;
    for (const tick of message.data) {
      applyTick(tick, state.epoch);
      state.age.set(tick.symbol, { ageSeconds: 0, at: now });
    }
    scheduleRender();
  } else if (message.channel === "candles") {
    const { symbol, interval } = state.selection;
    if (message.interval !== interval) return;
    state.stats.candleUpdates += message.data.length;
    for (const candle of message.data) {
      if (candle.symbol !== symbol) continue;
      // The last update per candle wins: at most one pending entry per open time.
      state.pendingCandles.set(candle.open_time, candle);
    }
    scheduleRender();
  }
}

function onFeedState(feedState) {
  state.feed = feedState;
  scheduleRender();
}

async function onFeedOpen() {
  state.epoch += 1;
  const epoch = state.epoch;
  // What happened while the feed was down: the latest ticks and the selection's candles again.
  loadHistory();
  const response = await fetchExact("/api/ticks").catch(() => null);
  if (response === null || !response.ok || epoch !== state.epoch) return;
  for (const tick of Object.values(response.body)) applyTick(tick, epoch);
  scheduleRender();
}

async function loadHistory() {
  const { symbol, interval } = state.selection;
  if (symbol === null) return;
  const view = ++state.view;
  state.loadingHistory = true;
  const url = `/api/candles/${encodeURIComponent(symbol)}?interval=${encodeURIComponent(interval)}&limit=${HISTORY_LIMIT}`;
  const response = await fetchExact(url).catch(() => null);
  if (view !== state.view) return;
  state.loadingHistory = false;
  const candles = response !== null && response.ok ? response.body : [];
  state.book.load(candles);
  // Updates that arrived while the history loaded are applied on top at the next frame (newer states win).
  chart.setCandles(state.book.candles);
  chart.fitScroll();
  scheduleRender();
}

function select(symbol, interval) {
  const previous = state.selection;
  if (symbol === previous.symbol && interval === previous.interval) return;
  state.selection = { symbol, interval };
  const url = new URL(location.href);
  url.searchParams.set("symbol", symbol);
  url.searchParams.set("interval", interval);
  history.replaceState(null, "", url);
  document.title = `${symbol} ${interval} · marketdata`;
  state.book = new CandleBook();
  state.pendingCandles.clear();
  chart.setInterval(interval);
  chart.setCandles([]);
  feed.unsubscribe("candles");
  feed.subscribe("candles", { channel: "candles", symbols: [symbol], interval });
  loadHistory();
  renderIntervals();
  scheduleRender();
}

function symbolOrder() {
  const symbols = new Set([...state.symbols.keys(), ...state.latest.keys()]);
  return [...symbols].sort();
}

function render() {
  frameRequested = false;
  state.stats.renders += 1;
  const now = performance.now();
  const staleAfter = state.config?.stale_after_seconds ?? 30;
  const views = symbolOrder().map((symbol) => {
    const tick = state.latest.get(symbol)?.tick ?? null;
    const row = state.symbols.get(symbol) ?? null;
    const age = state.age.get(symbol);
    const ageSeconds = age === undefined ? null : age.ageSeconds + (now - age.at) / 1000;
    const previous = state.previousPrice.get(symbol);
    const rate = state.rate.get(symbol);
    const unrepaired = row === null ? 0 : row.unrepaired_gaps.length;
    return {
      symbol,
      tradeId: tick === null ? null : tick.trade_id,
      stale: ageSeconds === null || ageSeconds > staleAfter,
      unrepaired,
      // The unrepaired gaps' trade id ranges and reasons, on hover.
      gapsTitle: row === null ? "" : row.unrepaired_gaps
        .map((gap) => `${gap.first_trade_id}..${gap.last_trade_id}: ${gap.reason}`).join("\n"),
      direction: tick === null || previous === undefined ? "" :
        Number(tick.price) > Number(previous) ? "up" : Number(tick.price) < Number(previous) ? "down" : "",
      cells: {
        symbol,
        price: tick?.price,
        quantity: tick?.quantity,
        trade_time: tick === null ? undefined : tick.timestamp.slice(11, 23),
        age: formatAge(ageSeconds),
        rate: rate === undefined ? undefined : rate.toFixed(rate < 10 ? 1 : 0),
        gaps_found: row === null ? undefined : String(row.gaps_found),
        gaps_repaired: row === null ? undefined : String(row.gaps_repaired),
        unrepaired: row === null ? undefined : String(unrepaired),
        backfilling: row === null ? undefined : row.backfilling ? "yes" : "no",
      },
    };
  });
  table.render(views, state.selection.symbol);
  if (!state.loadingHistory && state.pendingCandles.size > 0) {
    const updates = [...state.pendingCandles.values()].sort((a, b) => Date.parse(a.open_time) - Date.parse(b.open_time));
    state.pendingCandles.clear();
    let reset = false;
    for (const candle of updates) {
      const change = state.book.apply(candle);
      if (change === "reset") reset = true;
      else if (!reset && change !== "none") chart.updateCandle(candle, change === "historical");
    }
    if (reset) chart.setCandles(state.book.candles);
  }
  renderLegend();
  const retryInSeconds = state.feed.retryAt === null ? null : Math.max(0, Math.ceil((state.feed.retryAt - now) / 1000));
  strip.render(state.health, { ...state.feed, retryInSeconds }, state.config);
}

function renderLegend() {
  const legend = document.querySelector("#chart-legend");
  const last = state.book.last();
  const { symbol, interval } = state.selection;
  const fields = last === null ? [] : [
    ["O", last.open], ["H", last.high], ["L", last.low], ["C", last.close], ["V", last.volume],
    ["Trades", String(last.trade_count)],
  ];
  const key = JSON.stringify([symbol, interval, fields, last?.closed, state.loadingHistory]);
  if (legend.dataset.key === key) return;
  legend.dataset.key = key;
  const empty = document.querySelector("#chart-empty");
  empty.hidden = last !== null || symbol === null;
  empty.textContent = state.loadingHistory ? "Loading candles…" : `No ${interval} candles for ${symbol} yet`;
  const title = document.createElement("strong");
  title.textContent = symbol === null ? "" : `${symbol} · ${interval}`;
  const parts = fields.map(([label, value]) => {
    const part = document.createElement("span");
    const name = document.createElement("em");
    name.textContent = label;
    part.append(name, ` ${value}`);
    return part;
  });
  legend.replaceChildren(title, ...parts);
}

function renderIntervals() {
  const container = document.querySelector("#intervals");
  const intervals = state.config?.candle_intervals ?? [];
  if (container.childElementCount !== intervals.length) {
    container.replaceChildren(...intervals.map((interval, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = interval;
      button.dataset.interval = interval;
      button.title = `${interval} candles (key ${index + 1})`;
      button.addEventListener("click", () => select(state.selection.symbol, interval));
      return button;
    }));
  }
  for (const button of container.children) {
    const active = button.dataset.interval === state.selection.interval;
    button.classList.toggle("active", active);
    button.setAttribute("aria-pressed", String(active));
  }
}

let polling = false;
let lastPoll = null;

async function poll() {
  if (polling) return;
  polling = true;
  try {
    const signal = AbortSignal.timeout(POLL_TIMEOUT_MS);
    const [health, symbols] = await Promise.all([
      fetchExact("/health", { signal }).catch(() => ({ status: 0, body: null })),
      fetchExact("/api/symbols", { signal }).catch(() => null),
    ]);
    state.health = { status: health.status, body: health.body };
    if (symbols !== null && symbols.ok) applySymbols(symbols.body.symbols);
    ensureSelection();
    scheduleRender();
  } finally {
    polling = false;
  }
}

function applySymbols(rows) {
  const now = performance.now();
  const seen = new Set();
  for (const row of rows) {
    seen.add(row.symbol);
    const before = state.symbols.get(row.symbol);
    if (before !== undefined && lastPoll !== null && row.ticks_received >= before.ticks_received) {
      state.rate.set(row.symbol, (row.ticks_received - before.ticks_received) / ((now - lastPoll) / 1000));
    }
    state.symbols.set(row.symbol, row);
    const age = state.age.get(row.symbol);
    // The feed's own tick arrival is fresher than a poll's figure; a poll corrects a silent feed.
    if (row.last_tick_age_seconds !== null && (age === undefined || age.ageSeconds + (now - age.at) / 1000 > row.last_tick_age_seconds)) {
      state.age.set(row.symbol, { ageSeconds: row.last_tick_age_seconds, at: now });
    }
  }
  for (const symbol of [...state.symbols.keys()]) {
    if (!seen.has(symbol)) {
      state.symbols.delete(symbol);
      state.latest.delete(symbol);
      state.age.delete(symbol);
      state.rate.delete(symbol);
    }
  }
  lastPoll = now;
}

function ensureSelection() {
  if (state.selection.symbol !== null || state.config === null) return;
  const symbols = symbolOrder();
  if (symbols.length === 0) return;
  const params = new URLSearchParams(location.search);
  const wantedSymbol = (params.get("symbol") ?? "").toUpperCase();
  const wantedInterval = params.get("interval") ?? "";
  const intervals = state.config.candle_intervals;
  select(
    symbols.includes(wantedSymbol) ? wantedSymbol : symbols[0],
    intervals.includes(wantedInterval) ? wantedInterval : intervals[0],
  );
}

function onKey(event) {
  if (event.altKey || event.ctrlKey || event.metaKey || event.target.closest("input, textarea, select")) return;
  const { symbol, interval } = state.selection;
  if (symbol === null) return;
  const symbols = symbolOrder();
  const intervals = state.config.candle_intervals;
  const step = { ArrowDown: 1, j: 1, ArrowUp: -1, k: -1 }[event.key];
  if (step !== undefined) {
    const index = (symbols.indexOf(symbol) + step + symbols.length) % symbols.length;
    select(symbols[index], interval);
    event.preventDefault();
    return;
  }
  const intervalStep = { ArrowRight: 1, l: 1, ArrowLeft: -1, h: -1 }[event.key];
  if (intervalStep !== undefined) {
    const index = (intervals.indexOf(interval) + intervalStep + intervals.length) % intervals.length;
    select(symbol, intervals[index]);
    event.preventDefault();
    return;
  }
  const number = Number.parseInt(event.key, 10);
  if (number >= 1 && number <= intervals.length) {
    select(symbol, intervals[number - 1]);
    event.preventDefault();
  }
}

async function main() {
  table = new SymbolsTable(document.querySelector("#symbols"), (symbol) => select(symbol, state.selection.interval));
  chart = new CandleChart(document.querySelector("#chart"));
  strip = new HealthStrip(document.querySelector("#health"));
  const feedUrl = new URL("/ws", location.href);
  feedUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  feed = new FeedSocket(feedUrl.href, { onMessage: onFeedMessage, onState: onFeedState, onOpen: onFeedOpen });
  feed.subscribe("ticks", { channel: "ticks", symbols: "*" });
  document.addEventListener("keydown", onKey);
  window.marketdata = {
    chartData: () => ({
      symbol: state.selection.symbol,
      interval: state.selection.interval,
      candles: state.book.candles.map((candle) => ({ ...candle })),
      plotted: chart.plotted(),
    }),
    feedState: () => state.feed.state,
    stats: () => ({ ...state.stats }),
  };
  scheduleRender();
  while (state.config === null) {
    const response = await fetchExact("/api/config").catch(() => null);
    if (response !== null && response.ok) state.config = response.body;
    else await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  renderIntervals();
  feed.start();
  await poll();
  setInterval(poll, POLL_MS);
  // Ages move with the clock even when no data arrives.
  setInterval(scheduleRender, 1000);
}

main();
