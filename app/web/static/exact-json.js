// JSON as the API writes it, with decimals kept exact: the API sends prices and quantities as JSON numbers
// with every digit the exchange gave (95234.56); JSON.parse alone would turn them into floats. The reviver's
// third argument (JSON.parse source text access) hands over the number's text, which the table shows as is.

// The decimal fields of ticks and candles (see /openapi.json); integers (ids, counts) stay numbers.
export const DECIMAL_FIELDS = new Set([
  "price", "quantity", "open", "high", "low", "close", "volume", "quote_volume",
  "taker_buy_volume", "taker_buy_quote_volume",
]);

function keepDecimalText(key, value, context) {
  if (typeof value !== "number" || !DECIMAL_FIELDS.has(key)) return value;
  // Without source text access (older browsers), the shortest round-trip text: exact for up to 15 digits.
  return context && typeof context.source === "string" ? context.source : String(value);
}

export function parseExact(text) {
  return JSON.parse(text, keepDecimalText);
}

// A /ws ticks frame reduced to the newest tick of each symbol, exact: at 10,000 trades/s a frame holds
// thousands of ticks, and the table shows only the newest per symbol. A plain parse (several times faster than
// one with a reviver) finds them; each is then parsed exactly from its own text. Should the text not be laid out
// as the feed writes it (a tick object opening with its symbol), the whole frame is parsed exactly instead.
export function parseTickFrame(text) {
  const frame = JSON.parse(text);
  const data = [];
  for (const tick of latestOf(frame.data)) {
    const exact = exactTickAt(text, tick.symbol);
    if (exact === null || exact.trade_id !== tick.trade_id) {
      return { channel: frame.channel, data: latestOf(parseExact(text).data), count: frame.data.length };
    }
    data.push(exact);
  }
  return { channel: frame.channel, data, count: frame.data.length };
}

function exactTickAt(text, symbol) {
  const start = text.lastIndexOf(`{"symbol":${JSON.stringify(symbol)},`);
  const end = start < 0 ? -1 : text.indexOf("}", start);
  if (end < 0) return null;
  try {
    return parseExact(text.slice(start, end + 1));
  } catch {
    return null;
  }
}

function latestOf(ticks) {
  const newest = new Map();
  for (const tick of ticks) newest.set(tick.symbol, tick);
  return [...newest.values()];
}

export async function fetchExact(url, { signal } = {}) {
  const response = await fetch(url, { signal, headers: { Accept: "application/json" } });
  const body = parseExact(await response.text());
  return { status: response.status, ok: response.ok, body };
}
